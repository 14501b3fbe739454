//! The client's side: HAProxy's client timeouts, request limits, listener and per-source connection
//! limits, upgrades, h2c and Expect.

use super::*;

#[test]
fn keep_alive_and_client_timeouts_have_haproxys_meaning() {
    let p = free_port();
    let _o = origin(p, "o");
    let (_fg, addr) = floodgate(
        "ka.yaml",
        "timeouts: { http-keep-alive: 1s, client: 50s }",
        &format!("    servers: ['127.0.0.1:{p}']"),
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let connect = || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Idle 0.5 s between requests: under http-keep-alive, the connection is reused.
    let mut s = connect();
    assert!(keepalive_get(&mut s, "/1").unwrap().contains("o /1"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        keepalive_get(&mut s, "/2").unwrap().contains("o /2"),
        "reused within the keep-alive timeout"
    );
    // Idle 1.5 s: closed without a response.
    std::thread::sleep(Duration::from_millis(1500));
    let mut closed = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut s, &mut closed).unwrap(),
        0,
        "closed after http-keep-alive"
    );
    // A response that takes 2 s is in flight: the 1 s keep-alive timeout does not apply.
    let mut s = connect();
    assert!(keepalive_get(&mut s, "/warm").unwrap().contains("o /warm"));
    let t = Instant::now();
    assert!(
        keepalive_get(&mut s, "/delay/2000")
            .unwrap()
            .contains("o /delay/2000"),
        "a slow response is not cut"
    );
    assert!(t.elapsed() >= Duration::from_millis(1900));
}

/// A WebSocket-like upgrade passes through; once upgraded, `timeout tunnel` replaces the
/// keep-alive and client timeouts: the tunnel outlives both, and is closed after the tunnel
/// timeout without a byte either way, counted.
#[test]
fn upgrade_passes_through_and_the_tunnel_outlives_the_keep_alive_timeout() {
    use std::io::{Read as _, Write as _};
    let p = free_port();
    let _o = origin(p, "o");
    let admin = free_port();
    let (_fg, addr) = floodgate_with(
        "ws.yaml",
        "timeouts: { http-keep-alive: 1s, client: 1s, tunnel: 3s }",
        &format!("    servers: ['127.0.0.1:{p}']"),
        &format!("admin: {{ bind: '127.0.0.1:{admin}' }}"),
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "response head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let echo = |s: &mut std::net::TcpStream, msg: &[u8]| {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        got
    };
    assert_eq!(echo(&mut s, b"hello"), b"hello");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        echo(&mut s, b"still there"),
        b"still there",
        "a tunnel: no keep-alive or client timeout"
    );
    // Silent both ways: closed after `timeout tunnel` (3 s), not before.
    let quiet = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "closed");
    let took = quiet.elapsed();
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(6)).contains(&took),
        "closed after {took:?}"
    );
    let m = http_get(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        "t",
        "/metrics",
    )
    .unwrap()
    .1;
    assert_eq!(
        floodgate_tests::metric(
            &m,
            r#"floodgate_http_errors_total{backend="app",kind="tunnel_timeout",listener="http"}"#
        ),
        Some(1.0)
    );
    // floodgate's HTTP/1.1 engine served the upgrades; none went to hyper.
    assert!(!m.contains("floodgate_http1_engine_handoffs_total{"), "{m}");
    // The tunnel's bytes each way ("hello" and "still there", echoed), as body bytes.
    for family in [
        "floodgate_http_request_body_bytes_total",
        "floodgate_http_response_body_bytes_total",
    ] {
        assert_eq!(
            floodgate_tests::metric(&m, &format!(r#"{family}{{backend="app",listener="http"}}"#)),
            Some(16.0),
            "{m}"
        );
    }
    // Bytes sent with the head, before the 101, reach the server through the tunnel.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly",
    )
    .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"early") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&got)
        );
        got.push(b[0]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    drop(s);
}

#[test]
fn request_limits_answer_431_414_413() {
    let p = free_port();
    let _o = origin(p, "o");
    let (_fg, addr) = floodgate(
        "limits.yaml",
        "limits: { max-header-count: 20, max-header-bytes: 8192, max-uri-bytes: 1024, max-body-bytes: 1000 }",
        &format!("    servers: ['127.0.0.1:{p}']"),
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let ok = raw_status(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ok, 200);
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        raw_status(
            addr,
            format!("GET / HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n").as_bytes()
        ),
        431,
        "too many headers"
    );
    let big = "a".repeat(9000);
    assert_eq!(
        raw_status(
            addr,
            format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
                .as_bytes()
        ),
        431,
        "headers too large"
    );
    let long = format!("/{}", "u".repeat(2000));
    assert_eq!(
        raw_status(
            addr,
            format!("GET {long} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()
        ),
        414
    );
    let body = "b".repeat(2000);
    assert_eq!(
        raw_status(addr, format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}").as_bytes()),
        413
    );
    let small = "b".repeat(500);
    assert_eq!(raw_status(addr, format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{small}").as_bytes()), 200);
    // Chunked bodies have no length to check up front: cut where they pass the limit.
    let chunked = |chunks: usize| {
        let mut r = String::from(
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        for _ in 0..chunks {
            r.push_str(&format!("1f4\r\n{}\r\n", "c".repeat(500)));
        }
        r.push_str("0\r\n\r\n");
        r
    };
    assert_eq!(
        raw_status(addr, chunked(4).as_bytes()),
        413,
        "2000 chunked bytes"
    );
    let (status, _, body) = floodgate_tests::http_raw(addr, chunked(2).as_bytes()).unwrap();
    assert_eq!(status, 200, "1000 chunked bytes");
    assert!(
        body.contains("body=1000"),
        "the chunked body reaches the server whole: {body}"
    );
}

#[test]
fn a_listeners_own_maxconn_makes_connections_wait_in_the_backlog() {
    // One worker; two sharing one accept queue (`reuseport: false`); two with a queue each
    // (SO_REUSEPORT), where a worker takes a place only for a connection at its own socket:
    // one idle worker holding a place kept a connection waiting at the other's while a place
    // was free (before 2026-12-07, which is why this case was left out).
    for (threads, reuseport) in [(1, true), (2, false), (2, true)] {
        listener_maxconn_case(threads, reuseport);
    }
}

#[test]
fn a_request_header_stalled_past_http_request_gets_408() {
    use std::io::{Read as _, Write as _};
    let p = free_port();
    let _o = origin(p, "o");
    let (_fg, addr) = floodgate(
        "408.yaml",
        "timeouts: { http-request: 500ms }",
        &format!("    servers: ['127.0.0.1:{p}']"),
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Half: ")
        .unwrap();
    let t = Instant::now();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let waited = t.elapsed();
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1400),
        "{waited:?}"
    );
}

#[test]
fn h2c_prior_knowledge_and_expect_100_continue() {
    let p = free_port();
    let _o = origin(p, "o");
    let (_fg, addr) = floodgate("h2c.yaml", "", &format!("    servers: ['127.0.0.1:{p}']"));
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            &format!("http://{addr}/h2c"),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("o /h2c") && out.ends_with(" 2"), "{out}");
    // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for the 100.
    let body = "x".repeat(5000);
    let out = Command::new("curl")
        .args([
            "-s",
            "-v",
            "--expect100-timeout",
            "5",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &body,
            &format!("http://{addr}/post"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("o /post"));
}

/// `max-connections-per-source`: a third connection of one client is closed at once while two
/// are open, and taken again once one closes.
#[test]
fn a_source_holds_at_most_its_connections() {
    let (op, port, admin_port) = (free_port(), free_port(), free_port());
    let _origin = origin(op, "o");
    let config = temp_file(
        "per-source.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
global: {{ timeouts: {{ http-keep-alive: 30s }} }}
listeners:
  - {{ name: web, bind: '127.0.0.1:{port}', default-backend: app, max-connections-per-source: 2 }}
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    assert!(wait_for_connections(admin, "web", 0));
    let open = || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = keepalive_get(&mut s, "/");
        (s, r)
    };
    let (first, r) = open();
    assert!(r.unwrap().starts_with("HTTP/1.1 200"));
    let (mut second, r) = open();
    assert!(r.unwrap().starts_with("HTTP/1.1 200"));
    let (_third, r) = open();
    assert!(
        r.is_err() || r.unwrap().is_empty(),
        "the third is closed unanswered"
    );
    // The two kept ones still serve; closing one makes room.
    assert!(
        keepalive_get(&mut second, "/")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    drop(first);
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || {
            let (_s, r) = open();
            r.is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        }),
        "no room after a connection closed"
    );
    drop(second);
    let m = http_get(admin, "a", "/metrics").unwrap().1;
    let rejected = floodgate_tests::metric(
        &m,
        r#"floodgate_connections_rejected_total{listener="web",reason="per_source"}"#,
    );
    assert!(rejected >= Some(1.0), "{m}");
}

/// floodgate's HTTP/1.1 engine answers pipelined requests in order, reads a body to its
/// `Content-Length` or its last chunk and goes on with the request right after it.
#[test]
fn pipelined_requests_and_bodies_are_answered_in_order() {
    use std::io::{Read as _, Write as _};
    let p = free_port();
    let _o = origin(p, "o");
    let (_fg, addr) = floodgate("pipe.yaml", "", &format!("    servers: ['127.0.0.1:{p}']"));
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /3 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 5, "{text}");
    let mut at = 0;
    for want in [
        "o /1 xff=127.0.0.1\n",
        "o /2 xff=127.0.0.1 body=5\n",
        "o /3 xff=127.0.0.1\n",
        "o /4 xff=127.0.0.1 body=3\n",
        "o /5 xff=127.0.0.1\n",
    ] {
        let found = text[at..]
            .find(want)
            .unwrap_or_else(|| panic!("{want:?} after {at}: {text}"));
        at += found + want.len();
    }
}

/// The engine serves chunked bodies (extensions, trailers) and `Expect: 100-continue` itself:
/// `100 Continue` when the body is needed, none when the request is answered without it (and
/// then the connection closes, as hyper does); no connection is handed to hyper for either.
#[test]
fn the_engine_serves_chunked_bodies_and_expect_100_continue() {
    use std::io::{Read as _, Write as _};
    let (op, port, admin_port) = (free_port(), free_port(), free_port());
    let _origin = origin(op, "o");
    let config = temp_file(
        "engine-bodies.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
listeners:
  - {{ name: web, bind: '127.0.0.1:{port}', default-backend: app }}
routes: [{{ path-prefix: /deny, allow: [10.0.0.0/8], backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    let connect = || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };

    let mut s = connect();
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let c = text.find("o /c xff=127.0.0.1 body=11\n").expect(&text);
    assert!(text[c..].contains("o /after xff=127.0.0.1\n"), "{text}");

    // The body is asked for: `100 Continue`, then the answer, and the connection goes on.
    let mut s = connect();
    s.write_all(b"PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let r = read_response(&mut s).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("o /e xff=127.0.0.1 body=5"),
        "{r}"
    );
    let r = keepalive_get(&mut s, "/again").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // Refused by the route's `allow`: answered at once, no `100 Continue`, and closed (the
    // client may never send the body it was not asked for).
    let mut s = connect();
    s.write_all(
        b"PUT /deny HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");

    let m = http_get(admin, "a", "/metrics").unwrap().1;
    assert!(
        !m.contains("floodgate_http1_engine_handoffs_total{"),
        "nothing left to hyper: {m}"
    );
    // A request the engine does not serve is counted.
    let r = raw_status(addr, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(r, 200);
    let m = http_get(admin, "a", "/metrics").unwrap().1;
    let handed = floodgate_tests::metric(
        &m,
        r#"floodgate_http1_engine_handoffs_total{listener="web",reason="http_1_0"}"#,
    );
    assert_eq!(handed, Some(1.0), "{m}");
}
