//! `/metrics` against a known workload: every count checked against what was sent, the
//! exposition validated by `promtool check metrics`, and the access log read back.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use floodgate_tests::{
    free_port, http_get, http_raw, metric, promtool_check_metrics, spawn_origin, temp_file,
    wait_for_port,
};

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[test]
fn metrics_and_access_log_match_a_known_workload() {
    let (origin_port, web, redir, admin_port, dead) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _origin = spawn_origin(origin_port, "origin");
    let config = temp_file(
        "observability.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
global:
  timeouts: {{ http-keep-alive: 300ms, http-request: 500ms }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
access-log: {{ enabled: true, fields: [listener, client, method, path, status, backend, server, bytes, request_id, duration_ms, queue_ms, retries] }}
listeners:
  - {{ name: web, bind: '127.0.0.1:{web}' }}
  - {{ name: plain, bind: '127.0.0.1:{redir}', default-backend: app, redirect-to-https: {{ port: 8443 }} }}
routes:
  - {{ path-prefix: /app/, backend: app }}
  - {{ path-prefix: /dead/, backend: dead }}
backends:
  - {{ name: app, servers: ['127.0.0.1:{origin_port}'] }}
  - {{ name: dead, servers: ['127.0.0.1:{dead}'] }}
"
        ),
    );
    let log_path = temp_file("observability.log", "");
    let mut fg = floodgate_tests::spawn_floodgate_logging(&config, &log_path);
    let admin = addr(admin_port);
    assert!(wait_for_port(addr(web), Duration::from_secs(10)));
    assert!(wait_for_port(admin, Duration::from_secs(5)));
    assert!(wait_for_port(addr(origin_port), Duration::from_secs(5)));

    // The workload.
    let mut body_bytes_out = 0;
    for i in 0..7 {
        let (status, body) = http_get(addr(web), "t", &format!("/app/{i}")).unwrap();
        assert_eq!(status, 200);
        body_bytes_out += body.len();
    }
    for _ in 0..3 {
        let (status, _, body) = http_raw(
            addr(web),
            format!(
                "POST /app/post HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{}",
                "x".repeat(100)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200);
        body_bytes_out += body.len();
    }
    // No route: 404; a backend whose only server refuses: 502.
    for _ in 0..2 {
        assert_eq!(http_get(addr(web), "t", "/nowhere").unwrap().0, 404);
    }
    assert_eq!(http_get(addr(web), "t", "/dead/x").unwrap().0, 502);
    // Redirect to HTTPS, except the ACME challenge path.
    let (status, head, _) = http_raw(
        addr(redir),
        b"GET /login?next=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 308, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://shop.example:8443/login?next=1"),
        "{head}"
    );
    assert_eq!(
        http_get(
            addr(redir),
            "shop.example",
            "/.well-known/acme-challenge/tok"
        )
        .unwrap()
        .0,
        200
    );
    // A keep-alive connection left idle: closed by timeout http-keep-alive, counted.
    let mut idle = TcpStream::connect(addr(web)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(b"GET /app/ka HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server closes: the response, then EOF after 300 ms of silence.
    loop {
        match idle.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    body_bytes_out += text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    // A header that never completes: 408 after timeout http-request, counted.
    let (status, _, _) = http_raw(addr(web), b"GET /app/slow HTTP/1.1\r\nHost").unwrap();
    assert_eq!(status, 408);

    let (status, m) = http_get(admin, "a", "/metrics").unwrap();
    assert_eq!(status, 200);
    let v = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("no sample {s} in\n{m}"));
    assert_eq!(
        v(r#"floodgate_http_requests_total{backend="app",code="2xx",listener="web",method="GET"}"#),
        8.0
    );
    assert_eq!(
        v(
            r#"floodgate_http_requests_total{backend="app",code="2xx",listener="web",method="POST"}"#
        ),
        3.0
    );
    assert_eq!(
        v(r#"floodgate_http_requests_total{backend="",code="4xx",listener="web",method="GET"}"#),
        2.0
    );
    assert_eq!(
        v(
            r#"floodgate_http_requests_total{backend="dead",code="5xx",listener="web",method="GET"}"#
        ),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_http_requests_total{backend="",code="3xx",listener="plain",method="GET"}"#),
        1.0
    );
    assert_eq!(
        v(
            r#"floodgate_http_requests_total{backend="app",code="2xx",listener="plain",method="GET"}"#
        ),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_http_redirects_total{listener="plain"}"#),
        1.0
    );
    // Per server: 8 GET + 3 POST via web, 1 via plain, all on the one app server; the dead
    // server's 502.
    assert_eq!(
        v(&format!(
            r#"floodgate_server_responses_total{{backend="app",code="2xx",server="127.0.0.1:{origin_port}"}}"#
        )),
        12.0
    );
    assert_eq!(
        v(&format!(
            r#"floodgate_server_responses_total{{backend="dead",code="5xx",server="127.0.0.1:{dead}"}}"#
        )),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_http_errors_total{backend="",kind="no_route",listener="web"}"#),
        2.0
    );
    assert_eq!(
        v(r#"floodgate_http_errors_total{backend="dead",kind="connect",listener="web"}"#),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_http_errors_total{backend="",kind="keep_alive_timeout",listener="web"}"#),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_http_errors_total{backend="",kind="http_request_timeout",listener="web"}"#),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_http_request_body_bytes_total{backend="app",listener="web"}"#),
        300.0
    );
    assert_eq!(
        v(r#"floodgate_http_response_body_bytes_total{backend="app",listener="web"}"#),
        body_bytes_out as f64
    );
    // Every request that asked for a server slot (11 on app via web, 1 on dead).
    assert_eq!(
        v(r#"floodgate_backend_queue_duration_seconds_count{backend="app"}"#),
        12.0
    );
    assert_eq!(
        v(r#"floodgate_backend_queue_duration_seconds_count{backend="dead"}"#),
        1.0
    );
    // New connections only: at least one to app, none succeeded to dead.
    assert!(v(r#"floodgate_backend_connect_duration_seconds_count{backend="app"}"#) >= 1.0);
    assert_eq!(
        metric(
            &m,
            r#"floodgate_backend_connect_duration_seconds_count{backend="dead"}"#
        )
        .unwrap_or(0.0),
        0.0
    );
    assert!(v("process_resident_memory_bytes") > 0.0);
    promtool_check_metrics(&m).unwrap_or_else(|e| panic!("promtool: {e}\n{m}"));
    let undocumented = floodgate_tests::undocumented_families(&m);
    assert!(
        undocumented.is_empty(),
        "not in docs/observability.md: {undocumented:?}"
    );

    fg.stop();
    assert!(fg.status.is_some_and(|s| s.success()), "{:?}", fg.status);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let access = floodgate_tests::access_lines(&log);
    // Every answered request: 7 + 3 + 2 + 1 + 2 + 1 (408 is hyper's, before any request).
    assert_eq!(access.len(), 16, "{log}");
    let post = access
        .iter()
        .find(|j| j["method"] == "POST")
        .expect("a POST line");
    let f = post;
    assert_eq!(f["status"], 200);
    assert_eq!(f["listener"], "web");
    assert_eq!(f["path"], "/app/post");
    assert_eq!(f["backend"], "app");
    assert_eq!(f["server"], format!("127.0.0.1:{origin_port}"));
    assert!(
        f["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{f}"
    );
    assert!(f["bytes"].as_u64().is_some_and(|b| b > 0), "{f}");
    assert!(f["duration_ms"].as_f64().is_some(), "{f}");
    assert!(f.get("user_agent").is_none(), "not configured: {f}");
    let dead_line = access
        .iter()
        .find(|j| j["backend"] == "dead")
        .expect("the 502 line");
    assert_eq!(dead_line["status"], 502);
}
