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
