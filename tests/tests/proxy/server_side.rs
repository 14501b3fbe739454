//! The server's side: connection reuse and every response framing, idle connections, `timeout
//! server`, HTTP/2 backends and gRPC health.

use super::*;

/// Requests without a body take the direct path (`direct.rs`): its response framing, its
/// reuse of server connections and its recovery from a server that closed one.
#[test]
fn bodiless_requests_reuse_server_connections_and_read_every_framing() {
    use floodgate_tests::http_raw;
    use std::sync::atomic::Ordering::SeqCst;
    let (origin, accepted, heads) = scripted_origin();
    let (_fg, addr) = floodgate_before(origin, "direct.yaml", "");
    let get = |path: &str| {
        http_raw(
            addr,
            format!(
                "GET {path} HTTP/1.0\r\nHost: t.example\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap()
    };

    // Three requests on three client connections, one server connection.
    for _ in 0..3 {
        let (status, _, body) = get("/echo?q=1");
        assert_eq!(status, 200);
        assert!(body.starts_with("GET /echo?q=1 HTTP/1.1\r\n"), "{body}");
        let lower = body.to_ascii_lowercase();
        assert!(lower.contains("\r\nhost: t.example"), "{body}");
        assert!(lower.contains("\r\nx-forwarded-for: 127.0.0.1"), "{body}");
        assert!(
            !lower.contains("x-hop") && !lower.contains("connection:"),
            "{body}"
        );
    }
    assert_eq!(accepted.load(SeqCst), 1, "server connection not reused");

    let (status, _, body) = get("/chunked");
    assert_eq!((status, body.as_str()), (200, "hello world"));
    let (status, head, body) = get("/interim");
    assert_eq!((status, body.as_str()), (200, "ok"), "{head}");
    let (status, head, body) = http_raw(addr, b"HEAD /x HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(status, 200);
    assert!(body.is_empty(), "{body:?}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 9"),
        "{head}"
    );
    assert_eq!(accepted.load(SeqCst), 1, "server connection not reused");

    // The server closes after this response without saying so; the next request finds the
    // kept connection dead before any byte of response and is sent again on a new one.
    let (status, _, body) = get("/then-close");
    assert_eq!((status, body.as_str()), (200, "once"));
    let (status, _, _) = get("/echo");
    assert_eq!(status, 200, "a stale kept connection failed a request");
    assert_eq!(accepted.load(SeqCst), 2);

    let (status, _, body) = get("/until-close");
    assert_eq!((status, body.as_str()), (200, "until close"));
    let (status, _, _) = get("/conflicting");
    assert_eq!(status, 502, "conflicting lengths must not be forwarded");
    let (status, _, _) = get("/echo");
    assert_eq!(status, 200);
    assert!(
        heads.lock().unwrap().len() >= 10,
        "the origin saw {:?}",
        heads.lock().unwrap()
    );
}

/// A kept server connection that its server closes is closed by floodgate's sweep within a
/// few seconds, not left in CLOSE_WAIT until the server is chosen again.
#[test]
fn idle_server_connections_closed_by_the_server_are_swept() {
    use floodgate_tests::{http_raw, wait_until};
    let (origin, accepted, _) = scripted_origin();
    let (_fg, addr) = floodgate_before(origin, "sweep.yaml", "");
    let (status, _, body) = http_raw(addr, b"GET /then-close HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!((status, body.as_str()), (200, "once"));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Kept for reuse (the response did not say close), then closed by the server.
    assert!(
        wait_until(Duration::from_secs(1), || close_wait_to(origin) == 1),
        "the kept connection never reached CLOSE_WAIT"
    );
    assert!(
        wait_until(Duration::from_secs(5), || close_wait_to(origin) == 0),
        "the connection its server closed is still open after 5 s"
    );
}

/// An idle server connection is reused within `timeouts.server-keep-alive`, then closed by
/// floodgate (before a backend's own, shorter keep-alive timeout can race a request).
#[test]
fn idle_server_connections_close_after_server_keep_alive() {
    use floodgate_tests::{http_raw, wait_until};
    use std::sync::atomic::Ordering::SeqCst;
    let (origin, accepted, _) = scripted_origin();
    let (_fg, addr) = floodgate_before(
        origin,
        "server-keep-alive.yaml",
        "timeouts: { server-keep-alive: 1s }",
    );
    let get = || {
        http_raw(addr, b"GET /echo HTTP/1.0\r\nHost: t\r\n\r\n")
            .unwrap()
            .0
    };
    assert_eq!((get(), get()), (200, 200));
    assert_eq!(accepted.load(SeqCst), 1, "reused within server-keep-alive");
    assert_eq!(sockets_to("established", origin), 1);
    // Expired after 1 s, closed by the next 2 s sweep.
    assert!(
        wait_until(Duration::from_secs(5), || sockets_to("established", origin)
            == 0),
        "an idle server connection is still open 5 s after server-keep-alive (1 s)"
    );
    assert_eq!(get(), 200);
    assert_eq!(accepted.load(SeqCst), 2, "an expired connection was reused");
}

/// `timeout server` bounds the server's silence mid-body too (HAProxy's server-side
/// inactivity), not only the wait for the response header.
#[test]
fn a_server_silent_mid_body_is_cut_at_timeout_server() {
    let (origin, _, _) = scripted_origin();
    let (_fg, addr) = floodgate_before(origin, "stall.yaml", "timeouts: { server: 1s }");
    assert_stall_cut_after_1s(addr, "timeout server");
}

/// A server silent before its response head is answered 504 at `timeout server`, on a kept
/// connection whose timer already fired while it was idle as on a new one; that fired timer
/// fails no request that is answered in time.
#[test]
fn a_server_silent_before_its_head_gets_504_at_timeout_server() {
    use floodgate_tests::http_raw;
    use std::sync::atomic::Ordering::SeqCst;
    let (origin, accepted, _) = scripted_origin();
    let (_fg, addr) = floodgate_before(
        origin,
        "silent.yaml",
        "timeouts: { server: 1s, server-keep-alive: 30s }",
    );
    let get = |path: &str| {
        let start = Instant::now();
        let req = format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n");
        let status = http_raw(addr, req.as_bytes()).unwrap().0;
        (status, start.elapsed())
    };
    assert_eq!(get("/echo").0, 200);
    // Past `timeout server` while the connection is idle: its timer fires unheeded.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, took) = get("/echo");
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(800), "answered after {took:?}");
    assert_eq!(
        accepted.load(SeqCst),
        1,
        "the kept connection was not reused"
    );
    for (round, connections) in [("kept", 1), ("new", 2)] {
        let (status, took) = get("/silent");
        assert_eq!(status, 504, "on a {round} connection");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "504 after {took:?} on a {round} connection, not at timeout server (1 s)"
        );
        assert_eq!(
            accepted.load(SeqCst),
            connections,
            "on a {round} connection"
        );
    }
}

/// A backend's own `timeouts.server` wins over the global one (HAProxy sets timeouts per
/// backend): 1 s on this backend cuts the stalled body although the global one is 30 s.
#[test]
fn a_backends_own_timeout_server_applies_to_it() {
    let (origin, _, _) = scripted_origin();
    let (_fg, addr) = floodgate(
        "stall-backend.yaml",
        "nbthread: 1, timeouts: { server: 30s }",
        &format!("    timeouts: {{ server: 1s }}\n    servers: ['{origin}']"),
    );
    assert_stall_cut_after_1s(addr, "the backend's timeout server");
}

/// `proto: h2` (gRPC) backends: requests reach the server over HTTP/2 with the client's host
/// as `:authority` and `te: trailers`, multiplexed on one connection, and the server's
/// trailers reach the client; an HTTP/1.1 client's request is translated too.
#[test]
fn h2_backends_get_http2_and_their_trailers_reach_the_client() {
    use http_body_util::{BodyExt as _, Full};
    use std::sync::atomic::Ordering::SeqCst;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (origin, accepted, seen, _) = h2_origin(&rt, None);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_fg, addr) = floodgate_with(
        "h2-backend.yaml",
        "nbthread: 1",
        &format!("    proto: h2\n    servers: ['{origin}']"),
        &format!("admin: {{ bind: '{admin}' }}"),
    );

    // An HTTP/2 client, 20 calls at once on one connection.
    rt.block_on(async {
        let sender = floodgate_tests::h2_client::<Full<bytes::Bytes>>(addr).await;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..20 {
            let mut sender = sender.clone();
            calls.spawn(async move {
                let req = hyper::Request::post("http://grpc.example/pkg.Svc/Call")
                    .header("te", "trailers")
                    .header("content-type", "application/grpc")
                    .body(Full::new(bytes::Bytes::from(format!("call {i}"))))
                    .unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
                    .await
                    .expect("no answer in 10 s")
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let got = resp.into_body().collect().await.unwrap();
                let trailers = got.trailers().cloned();
                assert_eq!(got.to_bytes(), format!("call {i}").as_bytes());
                assert_eq!(
                    trailers.and_then(|t| t.get("grpc-status").cloned()),
                    Some("0".parse().unwrap()),
                    "the server's trailers did not reach the client"
                );
            });
        }
        while let Some(r) = calls.join_next().await {
            r.unwrap();
        }
    });
    assert_eq!(
        accepted.load(SeqCst),
        1,
        "calls not multiplexed on one connection"
    );
    // The gauge counts it once the 2 s sweep has run.
    let h2_conns = || {
        let (_, m) = http_get(admin, "a", "/metrics").unwrap();
        floodgate_tests::metric(&m, "floodgate_backend_h2_connections{backend=\"app\"}")
    };
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || h2_conns() == Some(1.0)),
        "floodgate_backend_h2_connections is {:?}",
        h2_conns()
    );
    for (version, authority, te) in seen.lock().unwrap().iter() {
        assert_eq!(*version, hyper::Version::HTTP_2);
        assert_eq!(authority, "grpc.example");
        assert_eq!(te, "trailers");
    }

    // An HTTP/1.1 client: the same backend, over the same HTTP/2 connection.
    let (status, _, body) = floodgate_tests::http_raw(
        addr,
        b"POST /h1 HTTP/1.1\r\nHost: web.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    // Chunked (HTTP/2 declares no length); the trailers stay out, as the client did not
    // send `TE: trailers`.
    assert_eq!((status, body.as_str()), (200, "5\r\nhello\r\n0\r\n\r\n"));
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.0, last.1.as_str(), last.2.as_str()),
        (hyper::Version::HTTP_2, "web.example", "")
    );
    assert_eq!(accepted.load(SeqCst), 1);
}

/// A `proto: h2` server that drops its connection (a restart) costs no request: the next one
/// goes out on a new connection.
#[test]
fn h2_backends_survive_a_server_dropping_its_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (origin, accepted, _, _) = h2_origin(&rt, Some(Duration::from_millis(300)));
    let (_fg, addr) = floodgate(
        "h2-restart.yaml",
        "nbthread: 1",
        &format!("    proto: h2\n    servers: ['{origin}']"),
    );
    for round in 1..=3 {
        let (status, _, body) = floodgate_tests::http_raw(
            addr,
            b"POST /call HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "2\r\nhi\r\n0\r\n\r\n"),
            "round {round}"
        );
        assert_eq!(accepted.load(SeqCst), round, "one connection per round");
        // Past the origin's 300 ms: it has dropped this round's connection.
        std::thread::sleep(Duration::from_millis(600));
    }
}

/// `health-check: { type: grpc }`: a server answering NOT_SERVING to the gRPC health protocol
/// gets no traffic (its backend, with no other server, answers 503) until it serves again.
#[test]
fn grpc_health_checks_follow_the_servers_serving_status() {
    use floodgate_tests::{http_raw, wait_until};
    use std::sync::atomic::Ordering::SeqCst;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (origin, _, _, healthy) = h2_origin(&rt, None);
    let (_fg, addr) = floodgate(
        "grpc-check.yaml",
        "nbthread: 1",
        &format!(
            "    proto: h2\n    health-check: {{ type: grpc, service: pkg.Svc, interval: 200ms, rise: 1, fall: 1 }}\n    servers: ['{origin}']"
        ),
    );
    let call = || {
        http_raw(
            addr,
            b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        .unwrap()
        .0
    };
    assert!(wait_until(Duration::from_secs(5), || call() == 200));
    healthy.store(false, SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || call() == 503),
        "a NOT_SERVING server still gets traffic"
    );
    healthy.store(true, SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || call() == 200),
        "a server serving again does not come back"
    );
}

/// A `proto: h2` server that stops answering, PINGs included (its host vanished: no RST), has
/// its connection closed by floodgate's keep-alive PING (10 s, 5 s to answer), not kept for
/// every request until `timeouts.server` or TCP's own timeout of about 15 minutes.
#[test]
fn h2_connections_to_a_silent_server_are_closed_by_ping() {
    use std::io::Read as _;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    };
    // Accepts and reads everything, answers nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            a.fetch_add(1, SeqCst);
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    let (_fg, addr) = floodgate(
        "h2-silent.yaml",
        "nbthread: 1, timeouts: { server: 60s }",
        &format!("    proto: h2\n    servers: ['{origin}']"),
    );
    let start = Instant::now();
    let (status, _, _) = floodgate_tests::http_raw_within(
        addr,
        b"GET /hang HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(40),
    )
    .unwrap();
    let took = start.elapsed();
    assert_eq!(status, 502, "the dead connection's request");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "closed after {took:?}, not by the PING (10 s + 5 s) nor timeouts.server (60 s)"
    );
    assert_eq!(accepted.load(SeqCst), 1);
}

/// An HTTP/2 client's cookies, one field each as browsers send them, reach an HTTP/1.1
/// server as one `Cookie` line (RFC 9113 section 8.2.3).
#[test]
fn http2_cookie_fields_reach_http1_servers_as_one_line() {
    use http_body_util::BodyExt as _;
    let op = free_port();
    let _origin = origin(op, "o");
    let (_fg, addr) = floodgate(
        "cookies.yaml",
        "",
        &format!("    servers: ['127.0.0.1:{op}']"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt.block_on(async {
        let mut send = floodgate_tests::h2_client(addr).await;
        let req = hyper::Request::get("http://t/headers")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("cookie: a=1; b=2\n"), "{body}");
    assert_eq!(body.matches("cookie:").count(), 1, "{body}");
    // The forwarding headers ingress-nginx users' applications read.
    for h in [
        "x-forwarded-for: 127.0.0.1\n".to_owned(),
        "x-real-ip: 127.0.0.1\n".to_owned(),
        "x-forwarded-proto: http\n".to_owned(),
        format!("x-forwarded-port: {}\n", addr.port()),
        "x-forwarded-host: t\n".to_owned(),
    ] {
        assert!(body.contains(&h), "{h}: {body}");
    }
}

/// The fields floodgate adds reach the server the same whichever way the request goes: written
/// after the client's by the direct path (a GET), moved into the header map for hyper's client
/// (a POST), and on both each replaces what the client sent under its name (a client cannot
/// name its own address or scheme) or extends it (`X-Forwarded-For`).
#[test]
fn forwarding_fields_are_the_same_on_the_direct_and_the_pooled_path() {
    use floodgate_tests::http_raw;
    let (origin, _, _) = scripted_origin();
    let (_fg, addr) = floodgate_before(origin, "forwarding-paths.yaml", "");
    let send = |method: &str| {
        let (status, _, body) = http_raw(
            addr,
            format!(
                "{method} /echo HTTP/1.1\r\nHost: t.example\r\nX-Real-IP: 203.0.113.9\r\n\
                 X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\
                 X-Forwarded-Host: evil.example\r\nX-Request-Id: client-id\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{method}: {body}");
        let mut fields: Vec<String> = body
            .lines()
            .skip(1)
            .map(str::to_ascii_lowercase)
            .filter(|l| l.starts_with("x-") || l.starts_with("host:"))
            .collect();
        fields.sort();
        fields
    };
    let expected = [
        "host: t.example".to_owned(),
        "x-forwarded-for: 198.51.100.1, 127.0.0.1".to_owned(),
        "x-forwarded-host: t.example".to_owned(),
        format!("x-forwarded-port: {}", addr.port()),
        "x-forwarded-proto: http".to_owned(),
        "x-real-ip: 127.0.0.1".to_owned(),
        "x-request-id: client-id".to_owned(),
    ];
    assert_eq!(send("GET"), expected, "the direct path");
    assert_eq!(send("POST"), expected, "hyper's client");
}
