//! Connections carried as bytes: `mode: tcp` listeners and `send-proxy` backends.

use super::*;

/// `mode: tcp`: connections are carried to the backend as bytes (no request is read: the origin
/// sees the client's request as sent, without floodgate's headers), within the backend's
/// maxconn, and counted when they end.
#[test]
fn tcp_listeners_carry_bytes_to_their_backend() {
    use floodgate_tests::metric;
    use std::io::{Read as _, Write as _};
    let (op, port, admin_port) = (free_port(), free_port(), free_port());
    let _origin = origin(op, "o");
    let config = temp_file(
        "tcp.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
access-log: {{ enabled: true }}
listeners: [{{ name: db, bind: '127.0.0.1:{port}', mode: tcp, default-backend: app }}]
backends: [{{ name: app, maxconn-server: 1, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let log_path = temp_file("tcp.log", "");
    let mut fg = floodgate_tests::spawn_floodgate_logging(&config, &log_path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    let first_request: &[u8] =
        b"GET /headers HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: as-sent\r\nConnection: close\r\n\r\n";
    let (status, _, body) = floodgate_tests::http_raw(addr, first_request).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-forwarded-for: as-sent\n"), "{body}");
    assert!(!body.contains("x-request-id"), "no HTTP processing: {body}");

    // maxconn-server 1: a second connection waits in the queue while the first is open.
    let mut first = std::net::TcpStream::connect(addr).unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let waiting = std::thread::spawn(move || {
        let t = Instant::now();
        let r = floodgate_tests::http_raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        (r.map(|r| r.0).unwrap_or(0), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(first);
    let (status, waited) = waiting.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(400),
        "it did not wait: {waited:?}"
    );

    // The three above and `wait_for_port`'s probe, each carried to the origin.
    let sample = r#"floodgate_tcp_connections_total{backend="app",listener="db",result="closed"}"#;
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || {
            metric(&http_get(admin, "a", "/metrics").unwrap().1, sample) == Some(4.0)
        }),
        "{}",
        http_get(admin, "a", "/metrics").unwrap().1
    );
    // Every byte the clients sent, counted when each connection closed; answers came back.
    let sent = first_request.len()
        + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".len()
        + b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".len();
    let m = http_get(admin, "a", "/metrics").unwrap().1;
    assert_eq!(
        metric(
            &m,
            r#"floodgate_tcp_bytes_total{backend="app",direction="in",listener="db"}"#
        ),
        Some(sent as f64),
        "{m}"
    );
    let out = metric(
        &m,
        r#"floodgate_tcp_bytes_total{backend="app",direction="out",listener="db"}"#,
    )
    .unwrap_or(0.0);
    assert!(out > 200.0, "three answers: {m}");

    // One access log line per connection, as HAProxy's tcplog.
    fg.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines = floodgate_tests::access_lines(&log);
    assert_eq!(lines.len(), 4, "{log}");
    let first = lines
        .iter()
        .find(|j| j["bytes_in"] == first_request.len())
        .unwrap_or_else(|| panic!("the first connection's line: {log}"));
    let f = first;
    assert_eq!(f["message"], "connection");
    assert_eq!(f["listener"], "db");
    assert_eq!(f["backend"], "app");
    assert_eq!(f["result"], "closed");
    assert_eq!(f["server"], format!("127.0.0.1:{op}"));
    assert!(f["bytes"].as_u64().is_some_and(|b| b > 100), "{f}");
    assert!(f["duration_ms"].as_f64().is_some(), "{f}");
    assert!(
        f["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{f}"
    );
}

/// `send-proxy` on a TCP listener's backend: the server (here floodgate's own listener with
/// `proxy-protocol`) learns the client and the port it connected to, in both versions.
#[test]
fn carried_connections_name_their_client_to_send_proxy_backends() {
    let (op, admin_port) = (free_port(), free_port());
    let (v1_port, v2_port, inner_port) = (free_port(), free_port(), free_port());
    let _origin = origin(op, "o");
    let config = temp_file(
        "send-proxy.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
listeners:
  - {{ name: v1, bind: '127.0.0.1:{v1_port}', mode: tcp, default-backend: inner-v1 }}
  - {{ name: v2, bind: '127.0.0.1:{v2_port}', mode: tcp, default-backend: inner-v2 }}
  - {{ name: inner, bind: '127.0.0.1:{inner_port}', default-backend: app, proxy-protocol: {{}} }}
backends:
  - {{ name: app, servers: ['127.0.0.1:{op}'] }}
  - {{ name: inner-v1, send-proxy: v1, servers: ['127.0.0.1:{inner_port}'] }}
  - {{ name: inner-v2, send-proxy: v2, servers: ['127.0.0.1:{inner_port}'] }}
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    for p in [v1_port, v2_port, admin_port] {
        assert!(wait_for_port(at(p), Duration::from_secs(10)));
    }
    for port in [v1_port, v2_port] {
        let (status, _, body) = floodgate_tests::http_raw(
            at(port),
            b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("x-forwarded-port: {port}\n")),
            "{body}"
        );
        assert!(body.contains("x-real-ip: 127.0.0.1\n"), "{body}");
    }
    let scrape = || http_get(at(admin_port), "a", "/metrics").unwrap().1;
    let sample = r#"floodgate_proxy_protocol_headers_total{listener="inner",result="proxied"}"#;
    // The two requests, and wait_for_port's probes of v1 and v2, carried with their headers.
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || {
            floodgate_tests::metric(&scrape(), sample) == Some(4.0)
        }),
        "{}",
        scrape()
    );
}
