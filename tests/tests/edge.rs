//! Edge hardening: no request means one thing to floodgate and another to the backend, and a
//! client cannot walk around a route's `allow`, `basic-auth` or `auth` by spelling its host or
//! path differently. Hostile requests are written byte for byte (curl would normalise them).
//! XDP is off here: these need no root.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{net::SocketAddr, time::Duration};

use floodgate_tests::{
    Proc, free_port, http_raw, spawn_floodgate, spawn_origin, temp_file, wait_for_port,
};

/// floodgate on a free port with `routes` and `global`, in front of one origin `app`.
fn edge(name: &str, global: &str, routes: &str) -> (Proc, Proc, SocketAddr) {
    let op = free_port();
    let origin = spawn_origin(op, "app");
    let port = free_port();
    let config = temp_file(
        name,
        &format!(
            "
global: {{ {global} }}
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}' }}]
routes:
{routes}
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    (fg, origin, addr)
}

fn raw(addr: SocketAddr, req: &str) -> (u16, String, String) {
    http_raw(addr, req.as_bytes()).unwrap()
}

/// Every spelling of a protected host and path meets the protected route, and what the
/// backend gets is the spelling floodgate decided on.
#[test]
fn every_spelling_of_a_protected_path_meets_its_rules() {
    let (_fg, _origin, addr) = edge(
        "edge-paths.yaml",
        "",
        "  - { host: shop.example.com, path-prefix: /admin, allow: [10.0.0.0/8], backend: app }
  - { host: admin.example.com, allow: [10.0.0.0/8], backend: app }
  - { path-prefix: /, backend: app }",
    );
    let get = |target: &str, host: &str| {
        raw(
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    // The control: the plain spelling is refused, another path is served.
    assert_eq!(get("/admin/x", "shop.example.com").0, 403);
    assert_eq!(get("/public", "shop.example.com").0, 200);
    for (target, host) in [
        ("/%61dmin/x", "shop.example.com"),
        ("/%61%64%6d%69%6e/x", "shop.example.com"),
        ("//admin/x", "shop.example.com"),
        ("/x/../admin/x", "shop.example.com"),
        ("/./admin/x", "shop.example.com"),
        ("/public/%2e%2e/admin/x", "shop.example.com"),
        ("/admin/x", "shop.example.com."),
        ("/admin/x", "SHOP.Example.Com"),
        ("/admin/x", "shop.example.com.:80"),
        // Absolute form: the target's authority is the request's, whatever Host says.
        ("http://shop.example.com/admin/x", "public.example"),
        ("http://admin.example.com/", "shop.example.com"),
        ("http://ADMIN.example.com./", "public.example"),
    ] {
        let (status, head, _) = get(target, host);
        assert_eq!(status, 403, "{target} Host: {host}: {head}");
    }
    // What the backend gets is what was routed: the normalised path and the one host.
    let (status, _, body) = get("/public/x/..//%68eaders", "Shop.Example.Com.");
    assert_eq!(status, 200);
    assert!(body.contains("host: shop.example.com\n"), "{body}");
    assert!(
        body.contains("x-forwarded-host: shop.example.com\n"),
        "{body}"
    );
    let (status, _, body) = get("http://shop.example.com/public/headers", "evil.example");
    assert_eq!(status, 200);
    assert!(body.contains("host: shop.example.com\n"), "{body}");
    assert!(!body.contains("evil"), "{body}");
}

/// RFC 9112 section 3.2: an HTTP/1.1 request names one host.
#[test]
fn a_request_without_one_host_is_refused() {
    let (_fg, mut origin, addr) = edge("edge-host.yaml", "", "  - { backend: app }");
    for (req, what) in [
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "two Hosts",
        ),
        (
            "GET / HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n",
            "userinfo",
        ),
        (
            "GET http://a.example/ HTTP/1.1\r\nConnection: close\r\n\r\n",
            "absolute form without Host",
        ),
        (
            "GET /%zz HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            "bad escape",
        ),
    ] {
        assert_eq!(raw(addr, req).0, 400, "{what}");
    }
    assert_eq!(
        raw(addr, "GET / HTTP/1.0\r\n\r\n").0,
        200,
        "HTTP/1.0 may go without Host"
    );
    let served = origin.stop();
    assert!(
        served.contains("requests=1 "),
        "only the HTTP/1.0 one: {served}"
    );
}

/// `forward-path: as-received` hands the backend the client's bytes; routing still decides
/// on the normalised path.
#[test]
fn forward_path_as_received_keeps_the_clients_bytes_for_the_backend() {
    let (_fg, _origin, addr) = edge(
        "edge-received.yaml",
        "forward-path: as-received",
        "  - { path-prefix: /admin, allow: [10.0.0.0/8], backend: app }
  - { backend: app }",
    );
    let get = |target: &str| {
        raw(
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("/x/../%61dmin").0, 403);
    let (status, _, body) = get("/a//b/%2e/x?q=1");
    assert_eq!(status, 200);
    assert!(body.contains("/a//b/%2e/x?q=1"), "{body}");
}

/// Only the upgrades a route allows open a tunnel (WebSocket by default), `h2c` and its
/// `HTTP2-Settings` never reach a backend, and a route's `allow` is decided before a tunnel.
#[test]
fn only_allowed_upgrades_open_a_tunnel_and_rules_come_first() {
    let (_fg, _origin, addr) = edge(
        "edge-upgrades.yaml",
        "",
        "  - { path-prefix: /echo, upgrades: [echo], backend: app }
  - { path-prefix: /private, allow: [10.0.0.0/8], backend: app }
  - { backend: app }",
    );
    let upgrade = |path: &str, protocol: &str| {
        raw(
            addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {protocol}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
        )
    };
    // Allowed: the server switches (101), and the connection is its tunnel.
    let s101 = |path: &str, protocol: &str| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    };
    assert_eq!(s101("/ws", "websocket"), "HTTP/1.1 101");
    assert_eq!(s101("/echo", "echo"), "HTTP/1.1 101");
    // Not allowed: served as plain HTTP, the Upgrade dropped on the way.
    for (path, protocol) in [
        ("/headers", "echo"),
        ("/headers", "h2c"),
        ("/echo/headers", "h2c"),
    ] {
        let (status, head, body) = upgrade(path, protocol);
        assert_eq!(status, 200, "{path} {protocol}: {head}");
        let lower = body.to_ascii_lowercase();
        assert!(
            !lower.contains("upgrade") && !lower.contains("http2-settings"),
            "{path} {protocol}: {body}"
        );
    }
    // A route's allow list answers before any tunnel opens.
    assert_eq!(upgrade("/private/ws", "websocket").0, 403);
}

/// A WebSocket tunnel is still its client's connection: it counts against
/// `max-connections-per-source` and `global.maxconn` until it closes (HAProxy keeps an upgraded
/// connection under both), on either HTTP/1.1 server side. Before, the places were released
/// when the 101 went out, and a client could hold any number of tunnels past its limit.
#[test]
fn a_websocket_tunnel_holds_its_connection_places_until_it_closes() {
    use std::io::{Read as _, Write as _};
    // None when the connection is closed at accept: the place of a connection that just
    // ended may not be free yet.
    let try_tunnel = |addr: SocketAddr| -> Option<std::net::TcpStream> {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).ok()?;
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // The tunnel carries bytes both ways (the origin echoes them).
        s.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
        Some(s)
    };
    let open_tunnel = |addr: SocketAddr| {
        for _ in 0..50 {
            if let Some(s) = try_tunnel(addr) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no tunnel opened in 50 tries");
    };
    let get = |addr: SocketAddr| {
        floodgate_tests::http_raw_within(
            addr,
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .map(|(status, _, _)| status)
        .unwrap_or(0)
    };
    // Once the tunnel closes, its places are free again: a request is served.
    let served_within = |addr: SocketAddr, wait: Duration| {
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until {
            if get(addr) == 200 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    for (name, global, listener) in [
        ("engine, per source", "", "max-connections-per-source: 1"),
        (
            "hyper, per source",
            "http1-engine: hyper",
            "max-connections-per-source: 1",
        ),
        ("engine, global maxconn", "maxconn: 1", ""),
    ] {
        let op = free_port();
        let _origin = spawn_origin(op, "app");
        let port = free_port();
        let config = temp_file(
            "edge-tunnel-places.yaml",
            &format!(
                "
global: {{ {global} }}
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}', default-backend: app, {listener} }}]
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
            ),
        );
        let _fg = spawn_floodgate(&config);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(wait_for_port(addr, Duration::from_secs(10)), "{name}");
        // wait_for_port's probe may still hold the source's place for a moment.
        assert!(
            served_within(addr, Duration::from_secs(10)),
            "{name}: not served before any tunnel"
        );
        let tunnel = open_tunnel(addr);
        // Past the limit while the tunnel lives: closed at accept (per source) or left in the
        // backlog (global maxconn); either way, not served.
        assert_eq!(
            get(addr),
            0,
            "{name}: a second connection was served beside the tunnel"
        );
        drop(tunnel);
        assert!(
            served_within(addr, Duration::from_secs(10)),
            "{name}: the places were not released when the tunnel closed"
        );
    }
}

/// A raw HTTP/2 client: frames written and read byte for byte, so a test can do what no
/// well-behaved client library does (reset every stream, ping forever).
struct H2 {
    s: std::net::TcpStream,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl H2 {
    fn connect(addr: SocketAddr) -> Self {
        use std::io::Write as _;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(PREFACE).unwrap();
        let mut h = Self { s };
        h.frame(4, 0, 0, &[]);
        h
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        use std::io::Write as _;
        let _ = self.s.write_all(&Self::bytes(kind, flags, stream, payload));
    }

    fn bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A GET's HEADERS frame (HPACK literals without indexing, static names).
    fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        for (name_index, value) in [(1u8, "a.example"), (4, path)] {
            block.push(name_index);
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value.as_bytes());
        }
        Self::bytes(1, 0x5, stream, &block) // END_STREAM | END_HEADERS
    }

    fn rst(stream: u32) -> Vec<u8> {
        Self::bytes(3, 0, stream, &8u32.to_be_bytes()) // CANCEL
    }

    /// The next frame: (type, flags, stream, payload); `None` at the connection's end.
    fn read(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        use std::io::Read as _;
        let mut head = [0u8; 9];
        self.s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Reads until a GOAWAY (true) or the end of the connection (false).
    fn until_goaway(&mut self) -> bool {
        while let Some((kind, ..)) = self.read() {
            if kind == 7 {
                return true;
            }
        }
        false
    }
}

fn errors_of_kind(admin: SocketAddr, kind: &str) -> f64 {
    let m = floodgate_tests::http_get(admin, "t", "/metrics").unwrap().1;
    floodgate_tests::metric(
        &m,
        &format!(r#"floodgate_http_errors_total{{backend="",kind="{kind}",listener="http"}}"#),
    )
    .unwrap_or(0.0)
}

fn edge_with_admin(name: &str, global: &str) -> (Proc, Proc, SocketAddr, SocketAddr) {
    let op = free_port();
    let origin = spawn_origin(op, "app");
    let (port, admin) = (free_port(), free_port());
    let config = temp_file(
        name,
        &format!(
            "
global: {{ {global} }}
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin}' }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}', default-backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    (fg, origin, addr, admin)
}

/// HTTP/2 connections get HAProxy's bounds (100 streams, 64 KiB windows), and a client that
/// cancels streams faster than `max-resets` allows (rapid reset, CVE-2023-44487) gets GOAWAY,
/// counted, whether h2 or floodgate catches it.
#[test]
fn http2_connections_are_bounded_and_rapid_reset_gets_goaway() {
    let (_fg, _origin, addr, admin) = edge_with_admin("edge-h2.yaml", "");
    let mut h = H2::connect(addr);
    let (kind, _, _, settings) = h.read().expect("the server's SETTINGS");
    assert_eq!(kind, 4);
    let param = |id: u16| {
        settings.chunks(6).find_map(|p| {
            (u16::from_be_bytes([p[0], p[1]]) == id)
                .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
        })
    };
    assert_eq!(param(3), Some(100), "MAX_CONCURRENT_STREAMS: {settings:?}");
    // INITIAL_WINDOW_SIZE left at the protocol's 65,535 (absent) or said to be it.
    assert!(matches!(param(4), None | Some(65_535)), "{settings:?}");
    // Streams the server took, then cancelled while their answers wait: floodgate's count.
    let mut id = 1;
    for _ in 0..5 {
        let mut batch = Vec::new();
        for i in 0..50 {
            batch.extend(H2::get(id + 2 * i, "/delay/3000"));
        }
        h.s.set_nodelay(true).unwrap();
        {
            use std::io::Write as _;
            let _ = h.s.write_all(&batch);
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut resets = Vec::new();
        for i in 0..50 {
            resets.extend(H2::rst(id + 2 * i));
        }
        {
            use std::io::Write as _;
            let _ = h.s.write_all(&resets);
        }
        id += 100;
    }
    assert!(h.until_goaway(), "GOAWAY after 250 cancelled streams");
    assert_eq!(errors_of_kind(admin, "http2_rapid_reset"), 1.0);
    // HEADERS and RST_STREAM back to back, as the original attack sends them.
    let mut h = H2::connect(addr);
    let mut burst = Vec::new();
    for i in 0..300u32 {
        burst.extend(H2::get(1 + 2 * i, "/delay/3000"));
        burst.extend(H2::rst(1 + 2 * i));
    }
    {
        use std::io::Write as _;
        let _ = h.s.write_all(&burst);
    }
    assert!(h.until_goaway(), "GOAWAY after 300 streams reset at once");
    assert_eq!(errors_of_kind(admin, "http2_rapid_reset"), 2.0);
    // A client that plays by the rules is served.
    let mut h = H2::connect(addr);
    {
        use std::io::Write as _;
        h.s.write_all(&H2::get(1, "/fine")).unwrap();
    }
    let got =
        std::iter::from_fn(|| h.read()).find(|(kind, _, stream, _)| *kind == 1 && *stream == 1);
    assert!(got.is_some(), "an answer to a well-behaved stream");
}

/// PING frames are not requests: an HTTP/2 connection with nothing in flight closes after
/// `timeout http-keep-alive` however often its client pings.
#[test]
fn pings_do_not_keep_an_idle_http2_connection_open() {
    let (_fg, _origin, addr, admin) =
        edge_with_admin("edge-ping.yaml", "timeouts: { http-keep-alive: 1s }");
    let mut h = H2::connect(addr);
    {
        use std::io::Write as _;
        h.s.write_all(&H2::get(1, "/x")).unwrap();
    }
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut writer = h.s.try_clone().unwrap();
    let pinger = std::thread::spawn(move || {
        use std::io::Write as _;
        for i in 0..20u64 {
            if rx.try_recv().is_ok() {
                break;
            }
            let ping = H2::bytes(6, 0, 0, &i.to_be_bytes());
            if writer.write_all(&ping).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    h.until_goaway();
    while h.read().is_some() {}
    let took = started.elapsed();
    let _ = tx.send(());
    pinger.join().unwrap();
    assert!(
        took < Duration::from_millis(3500),
        "closed {took:?} after its last request, pings every 200 ms notwithstanding"
    );
    assert!(errors_of_kind(admin, "keep_alive_timeout") >= 1.0);
}

/// A client that asks for a large answer and stops reading is cut after `timeout client`,
/// instead of holding its connection and buffers forever.
#[test]
fn a_client_that_stops_reading_is_cut_after_timeout_client() {
    use std::io::{Read as _, Write as _};
    let (_fg, _origin, addr, admin) =
        edge_with_admin("edge-stall.yaml", "timeouts: { client: 1s }");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /big/200000000 HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(
        total < 200_000_000,
        "the connection was cut, not served to the end ({total} bytes read)"
    );
    assert!(errors_of_kind(admin, "client_timeout") >= 1.0);
}

/// The same in HTTP/2, where the client keeps the connection busy with PINGs while it reads
/// nothing: only a deadline on the writes themselves cuts it.
#[test]
fn an_http2_client_that_pings_but_stops_reading_is_cut_after_timeout_client() {
    use std::io::Write as _;
    let (_fg, _origin, addr, admin) =
        edge_with_admin("edge-stall2.yaml", "timeouts: { client: 1s }");
    let h = H2::connect(addr);
    let mut w = h.s.try_clone().unwrap();
    // Windows wide open, then a large answer that the client never reads.
    let open = 0x7fff_0000u32.to_be_bytes();
    let mut start = H2::bytes(8, 0, 0, &open);
    start.extend(H2::get(1, "/big/200000000"));
    start.extend(H2::bytes(8, 0, 1, &open));
    w.write_all(&start).unwrap();
    let started = std::time::Instant::now();
    // PINGs every 200 ms for up to 8 s; the client's writes fail once the server has cut it.
    let mut cut = None;
    for i in 0..40u64 {
        std::thread::sleep(Duration::from_millis(200));
        if w.write_all(&H2::bytes(6, 0, 0, &i.to_be_bytes())).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        if errors_of_kind(admin, "client_timeout") >= 1.0 {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("the connection was never cut");
    assert!(cut < Duration::from_secs(6), "cut after {cut:?}");
    drop(h);
}

/// The admin listener answers only its allowed networks, holds a bounded number of
/// connections, and closes a client that dawdles over its header.
#[test]
fn the_admin_listener_is_bounded_and_answers_only_its_networks() {
    use std::io::{Read as _, Write as _};
    let spawn = |name: &str, admin_extra: &str| {
        let op = free_port();
        let origin = spawn_origin(op, "app");
        let (port, admin) = (free_port(), free_port());
        let config = temp_file(
            name,
            &format!(
                "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin}'{admin_extra} }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}', default-backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
            ),
        );
        let fg = spawn_floodgate(&config);
        let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        assert!(wait_for_port(admin, Duration::from_secs(10)));
        (fg, origin, admin)
    };
    // Closed at once, without an answer, when the client is not in `allow`.
    let (_fg, _o, admin) = spawn("edge-admin-allow.yaml", ", allow: [10.0.0.0/8]");
    // Both tries say what came back: a CI run once saw an answer here (2026-12-08, not
    // reproduced in the runs since).
    for _ in 0..2 {
        let got = floodgate_tests::http_get(admin, "t", "/healthz");
        assert!(
            got.as_ref().is_err() || got.as_ref().is_ok_and(|(s, _)| *s == 0),
            "a client outside admin.allow gets no answer; got {got:?} from {admin}"
        );
    }
    // The defaults let loopback in; two connections at most; a slow header is cut.
    let (_fg, _o, admin) = spawn(
        "edge-admin-bounds.yaml",
        ", max-connections: 2, header-timeout: 1s",
    );
    assert_eq!(
        floodgate_tests::http_get(admin, "t", "/healthz").unwrap().0,
        200
    );
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(admin).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = std::net::TcpStream::connect(admin).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "a third connection is closed while two are held"
    );
    // The two held ones never finished their header: closed after header-timeout.
    let started = std::time::Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow headers cut after 1 s, took {:?}",
        started.elapsed()
    );
    // Room again.
    assert_eq!(
        floodgate_tests::http_get(admin, "t", "/healthz").unwrap().0,
        200
    );
}
