//! What a route or listener decides about a request: rate limits, header rules, auth services,
//! basic auth, redirects, mirrors, compression.

use super::*;

/// `rate-limit`: a source gets its burst, then 429 with `Retry-After`, counted; a keep-alive
/// connection is limited the same as new ones; after the wait it is served again, and
/// another listener without a limit is not affected. A reload that keeps the settings keeps
/// the source's bucket.
#[test]
fn a_source_over_its_request_rate_gets_429_until_its_bucket_refills() {
    let op = free_port();
    let _origin = origin(op, "o");
    let (limited, open, admin) = (free_port(), free_port(), free_port());
    let yaml = |extra: &str| {
        format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin}' }}
listeners:
  - {{ name: limited, bind: '127.0.0.1:{limited}', default-backend: app, rate-limit: {{ per-source: 1, burst: 4 }} }}
  - {{ name: open, bind: '127.0.0.1:{open}', default-backend: app }}
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
{extra}
"
        )
    };
    let config = temp_file("ratelimit.yaml", &yaml(""));
    let log = temp_file("ratelimit.log", "");
    let _fg = Proc::spawn(
        "floodgate",
        Command::new(bin("floodgate"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    for p in [limited, open, admin] {
        assert!(wait_for_port(at(p), Duration::from_secs(10)));
    }
    // Four requests on one keep-alive connection, then the fifth on a new one.
    let keep_alive = "GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3)
        + "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (first, _, rest) = floodgate_tests::http_raw(at(limited), keep_alive.as_bytes()).unwrap();
    assert_eq!(first, 200);
    assert_eq!(rest.matches("HTTP/1.1 200").count(), 3, "{rest}");
    let (status, head, body) = floodgate_tests::http_raw(
        at(limited),
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 429, "burst of 4 spent: {head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(body, "429 Too Many Requests\n");
    for _ in 0..3 {
        assert_eq!(
            http_get(at(open), "t", "/").unwrap().0,
            200,
            "no limit there"
        );
    }
    // 1 per second: after the advertised second, one more goes through.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(http_get(at(limited), "t", "/").unwrap().0, 200);
    let m = http_get(at(admin), "t", "/metrics").unwrap().1;
    assert_eq!(
        floodgate_tests::metric(
            &m,
            r#"floodgate_http_errors_total{backend="",kind="rate_limited",listener="limited"}"#
        ),
        Some(1.0),
        "{m}"
    );
    // A reload (a route added, the limit the same) keeps the bucket: emptied just before, it
    // gets one token back per second of the reload, where a fresh table would let all 4 of a
    // new burst through.
    assert!(
        (0..10).any(|_| http_get(at(limited), "t", "/").unwrap().0 == 429),
        "emptied"
    );
    write_atomically(&config, &yaml("routes: [{ path: /x, backend: app }]"));
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("config reloaded"))
        }),
        "no reload"
    );
    let after: Vec<u16> = (0..4)
        .map(|_| http_get(at(limited), "t", "/").unwrap().0)
        .collect();
    assert!(
        after.contains(&429),
        "the bucket survived the reload: {after:?}"
    );
}

/// Header rules: a backend's `request-headers` reach its server, its `response-headers` the
/// client; a listener's `response-headers` (HSTS here) are on every response it sends,
/// floodgate's own 404 included.
#[test]
fn header_rules_apply_to_requests_responses_and_errors() {
    let op = free_port();
    let _origin = origin(op, "o");
    let port = free_port();
    let page = temp_file("notfound.html", "<h1>Nothing here</h1>\n");
    let config = temp_file(
        "headers.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
error-pages: {{ 404: '{}' }}
listeners:
  - name: http
    bind: '127.0.0.1:{port}'
    response-headers: {{ set: {{ Strict-Transport-Security: max-age=31536000 }} }}
routes: [{{ path-prefix: /app, backend: app }}]
backends:
  - name: app
    request-headers: {{ set: {{ X-Forwarded-Prefix: /mounted }}, remove: [X-Forwarded-For] }}
    response-headers: {{ set: {{ X-Frame-Options: DENY }} }}
    servers: ['127.0.0.1:{op}']
",
            page.display()
        ),
    );
    let _fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    let (status, head, body) = floodgate_tests::http_raw(
        addr,
        b"GET /app HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "o /app xff=- prefix=/mounted\n", "request rules");
    assert!(head.contains("x-frame-options: DENY"), "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let (status, head, body) = floodgate_tests::http_raw(
        addr,
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 404);
    // `error-pages`: floodgate's own 404 wears the configured page.
    assert_eq!(body, "<h1>Nothing here</h1>\n");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    assert!(
        !head.contains("x-frame-options"),
        "backend rules only on its responses: {head}"
    );
}

/// `auth`: the auth service gets the client's headers and the original URL; its 2xx lets the
/// request through with the user it names, 401 redirects to sign-in (or answers 401), 403
/// answers 403, and a dead service answers 500; the backend sees only allowed requests.
#[test]
fn an_auth_service_decides_before_the_backend_sees_a_request() {
    use std::sync::{Arc, Mutex};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let auth = listener.local_addr().unwrap();
    let s = seen.clone();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    s.lock()
                        .unwrap()
                        .push((h("x-original-url"), h("x-original-method")));
                    let resp = hyper::Response::builder();
                    let resp = match h("cookie").as_str() {
                        "session=alice" => resp
                            .status(200)
                            .header("x-auth-request-user", "alice")
                            .header("x-other", "not copied"),
                        "session=mallory" => resp.status(403),
                        // Signed in, but the service names no user.
                        "session=anonymous" => resp.status(204),
                        _ => resp
                            .status(401)
                            .header("www-authenticate", "Bearer realm=\"shop\""),
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            resp.body(http_body_util::Empty::<bytes::Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    let op = free_port();
    let mut origin = origin(op, "o");
    let port = free_port();
    let config = temp_file(
        "auth.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}' }}]
routes:
  - path-prefix: /app
    auth: {{ url: 'http://{auth}/check', signin: 'https://login.example/start?rd={{url}}', response-headers: [X-Auth-Request-User] }}
    backend: app
  - path-prefix: /api
    auth: {{ url: 'http://{auth}/check', response-headers: [X-Auth-Request-User] }}
    cors: {{ allow-origins: ['https://app.example'], expose-headers: [X-Total] }}
    backend: app
  - path-prefix: /dead
    auth: {{ url: 'http://127.0.0.1:1/check', timeout: 1s }}
    backend: app
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    let get = |path: &str, cookie: &str| {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: shop.example\r\nCookie: {cookie}\r\nX-Auth-Request-User: forged\r\nConnection: close\r\n\r\n"
        );
        floodgate_tests::http_raw(addr, req.as_bytes()).unwrap()
    };
    let (status, _, body) = get("/app/headers", "session=alice");
    assert_eq!(status, 200);
    assert!(body.contains("x-auth-request-user: alice\n"), "{body}");
    assert!(
        !body.contains("forged") && !body.contains("x-other"),
        "{body}"
    );
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(("http://shop.example/app/headers".into(), "GET".into()))
    );
    // A header named in response-headers never comes from the client, even when the auth
    // service's answer does not carry it.
    let (status, _, body) = get("/app/headers", "session=anonymous");
    assert_eq!(status, 200);
    assert!(
        !body.contains("forged") && !body.contains("x-auth-request-user"),
        "{body}"
    );
    let (status, head, _) = get("/app/x?a=1", "session=none");
    assert_eq!(status, 302, "{head}");
    assert!(
        head.contains(
            "location: https://login.example/start?rd=http%3A%2F%2Fshop.example%2Fapp%2Fx%3Fa%3D1"
        ),
        "{head}"
    );
    let (status, head, _) = get("/api/x", "session=none");
    assert_eq!(status, 401);
    assert!(
        head.contains("www-authenticate: Bearer realm=\"shop\""),
        "{head}"
    );
    assert_eq!(get("/api/x", "session=mallory").0, 403);
    assert_eq!(get("/dead/x", "session=alice").0, 500);
    // CORS on /api: the preflight is answered here, before auth (it carries no cookie); the
    // allowed origin's answers, an error included, carry the headers; another origin's not.
    let asked = seen.lock().unwrap().len();
    let (status, head, _) = floodgate_tests::http_raw(
        addr,
        b"OPTIONS /api/x HTTP/1.1\r\nHost: shop.example\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 204, "{head}");
    for h in [
        "access-control-allow-origin: https://app.example",
        "access-control-allow-credentials: true",
        "access-control-max-age: 1728000",
        "vary: Origin",
    ] {
        assert!(head.contains(h), "{h}: {head}");
    }
    assert!(
        head.contains("access-control-allow-methods: GET, PUT, POST"),
        "{head}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        asked,
        "no auth call for a preflight"
    );
    let cors_get = |origin: &str, cookie: &str| {
        let req = format!(
            "GET /api/headers HTTP/1.1\r\nHost: shop.example\r\nOrigin: {origin}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        floodgate_tests::http_raw(addr, req.as_bytes()).unwrap()
    };
    let (status, head, _) = cors_get("https://app.example", "session=alice");
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-expose-headers: X-Total"),
        "{head}"
    );
    let (status, head, _) = cors_get("https://app.example", "session=none");
    assert_eq!(status, 401);
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    let (status, head, _) = cors_get("https://evil.example", "session=alice");
    assert_eq!(status, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    assert!(
        head.contains("vary: Origin"),
        "one answer per origin in caches: {head}"
    );
    let served = origin.stop();
    assert!(
        served.contains("requests=4 "),
        "only the allowed requests: {served}"
    );
}

/// `mirror`: a copy of each body-less GET goes to the mirror backend and its answer is
/// dropped; the client gets the route's backend's answer; a request with a body is not
/// copied; a dead mirror changes nothing for the client.
#[test]
fn a_mirror_backend_gets_copies_of_requests_and_their_bodies() {
    let (p1, p2) = (free_port(), free_port());
    let mut live = origin(p1, "live");
    let mut shadow = origin(p2, "shadow");
    let (port, admin) = (free_port(), free_port());
    let config = temp_file(
        "mirror.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin}' }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}' }}]
routes:
  - {{ path-prefix: /m, mirror: shadow, backend: live }}
  - {{ path-prefix: /dead, mirror: dead, backend: live }}
backends:
  - {{ name: live, servers: ['127.0.0.1:{p1}'] }}
  - {{ name: shadow, servers: ['127.0.0.1:{p2}'] }}
  - {{ name: dead, servers: ['127.0.0.1:1'] }}
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    assert!(wait_for_port(at(port), Duration::from_secs(10)));
    for i in 0..3 {
        let (status, body) = http_get(at(port), "t", &format!("/m/{i}")).unwrap();
        assert_eq!((status, body.split(' ').next()), (200, Some("live")));
    }
    let (status, _, body) = floodgate_tests::http_raw(
        at(port),
        b"POST /m/post HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!((status, body.split(' ').next()), (200, Some("live")));
    // Over mirror::MAX_BODY (1 MiB): the backend gets it, the mirror does not.
    let big = vec![b'x'; (1 << 20) + 1];
    let req = [
        format!(
            "POST /m/big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        )
        .into_bytes(),
        big,
    ]
    .concat();
    let (status, _, body) = floodgate_tests::http_raw(at(port), &req).unwrap();
    assert_eq!((status, body.split(' ').next()), (200, Some("live")));
    assert_eq!(
        http_get(at(port), "t", "/dead/x").unwrap().0,
        200,
        "a dead mirror"
    );
    let sample = |result: &str| {
        let m = http_get(at(admin), "t", "/metrics").unwrap().1;
        floodgate_tests::metric(
            &m,
            &format!("floodgate_mirror_requests_total{{backend=\"shadow\",result=\"{result}\"}}"),
        )
    };
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || sample("sent") == Some(4.0)),
        "four copies answered: {:?}",
        sample("sent")
    );
    assert_eq!(sample("skipped"), Some(1.0), "the big body");
    let m = http_get(at(admin), "t", "/metrics").unwrap().1;
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || {
            let m = http_get(at(admin), "t", "/metrics").unwrap().1;
            floodgate_tests::metric(
                &m,
                r#"floodgate_mirror_requests_total{backend="dead",result="failed"}"#,
            ) == Some(1.0)
        }),
        "{m}"
    );
    let (live, shadow) = (live.stop(), shadow.stop());
    assert!(live.contains("requests=6 "), "{live}");
    assert!(
        shadow.contains("requests=4 ") && shadow.contains("body_bytes=2"),
        "the small POST and its body were copied, the big one not: {shadow}"
    );
}

/// Basic auth against an htpasswd file with hashes made by real tools; the file replaced on
/// disk (a Secret updated) takes effect without a reload signal.
#[test]
fn basic_auth_lets_the_files_users_through_and_follows_the_file() {
    let op = free_port();
    let _origin = origin(op, "o");
    // apr1 is `htpasswd`'s default; bcrypt is OpenBSD's test vector (bob, `U*U`).
    let users = temp_file(
        "basic/htpasswd",
        &format!(
            "alice:{}\nbob:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n",
            openssl_passwd(&["-apr1"], "alice-pw")
        ),
    );
    let (admin_yaml, admin) = admin_listener();
    let (_fg, addr) = floodgate_with(
        "basic.yaml",
        "",
        &format!("    servers: ['127.0.0.1:{op}']"),
        &format!(
            "{admin_yaml}\nroutes: [{{ path-prefix: /admin, basic-auth: {{ users-file: {}, realm: Staff }}, backend: app }}]",
            users.display()
        ),
    );
    let challenge = "Basic realm=\"Staff\"";
    assert_eq!(curl_as(addr, "/admin/x", None), (401, challenge.into()));
    assert_eq!(
        curl_as(addr, "/admin/x", Some("alice:wrong")),
        (401, challenge.into())
    );
    assert_eq!(curl_as(addr, "/admin/x", Some("mallory:alice-pw")).0, 401);
    assert_eq!(curl_as(addr, "/admin/x", Some("alice:alice-pw")).0, 200);
    // Twice: the second is answered from the remembered pass.
    assert_eq!(curl_as(addr, "/admin/x", Some("bob:U*U")).0, 200);
    assert_eq!(curl_as(addr, "/admin/x", Some("bob:U*U")).0, 200);
    assert_eq!(
        curl_as(addr, "/elsewhere", None).0,
        200,
        "other routes are open"
    );

    // alice is removed and carol added (SHA-512-crypt): no signal, the file is watched.
    write_atomically(
        &users,
        &format!(
            "bob:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\ncarol:{}\n",
            openssl_passwd(&["-6"], "carol-pw")
        ),
    );
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(10), || {
            curl_as(addr, "/admin/x", Some("carol:carol-pw")).0 == 200
        }),
        "the new users file was not applied"
    );
    assert_eq!(curl_as(addr, "/admin/x", Some("alice:alice-pw")).0, 401);
    assert_eq!(curl_as(addr, "/admin/x", Some("bob:U*U")).0, 200);

    // A broken file is refused and the last good users keep working.
    write_atomically(&users, "carol\n");
    let refused = r#"floodgate_config_reloads_total{result="failed"}"#;
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(10), || scrape(admin, refused)
            == Some(1.0)),
        "the broken users file was not read"
    );
    assert_eq!(curl_as(addr, "/admin/x", Some("carol:carol-pw")).0, 200);
}

/// Routes that answer with a redirect: a whole host moved (path and query kept), an app root,
/// and the route's `allow` list still deciding first.
#[test]
fn redirect_routes_answer_without_a_backend() {
    let op = free_port();
    let _origin = origin(op, "o");
    let (_fg, addr) = floodgate_with(
        "redirects.yaml",
        "",
        &format!("    servers: ['127.0.0.1:{op}']"),
        "routes:
  - { host: old.example.com, redirect: { prefix: 'https://new.example.com/', code: 301 } }
  - { host: t, path: /, redirect: { location: /app/ } }
  - { path-prefix: /internal, allow: [10.0.0.0/8], redirect: { location: /x } }",
    );
    let get = |host: &str, target: &str| {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, head, _) = floodgate_tests::http_raw(addr, req.as_bytes()).unwrap();
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_default()
            .to_owned();
        (status, location)
    };
    assert_eq!(
        get("old.example.com", "/a/b?x=1"),
        (301, "https://new.example.com/a/b?x=1".into())
    );
    assert_eq!(get("t", "/"), (302, "/app/".into()));
    assert_eq!(get("t", "/internal/y"), (403, String::new()));
    assert_eq!(
        get("t", "/app/"),
        (200, String::new()),
        "to the default backend"
    );
}

/// `backends[].compression` with curl as the client: gzip when asked for (and the body is the
/// same once decoded), none otherwise, none for small bodies.
#[test]
fn responses_are_gzipped_for_clients_that_accept_it() {
    let op = free_port();
    let _origin = origin(op, "o");
    let (_fg, addr) = floodgate(
        "gzip.yaml",
        "",
        &format!(
            "    compression: {{ min-size: 1024, offload: true }}\n    servers: ['127.0.0.1:{op}']"
        ),
    );
    let curl = |args: &[&str], path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-D", "/dev/stderr"])
            .args(args)
            .arg(format!("http://{addr}{path}"))
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
            out.stdout,
        )
    };
    let (plain_head, plain) = curl(&[], "/text/100000");
    assert_eq!(plain.len(), 100_000);
    assert!(!plain_head.contains("content-encoding"), "{plain_head}");
    let (head, raw) = curl(&["-H", "Accept-Encoding: gzip"], "/text/100000");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert!(head.contains("etag: w/\"t1\""), "{head}");
    assert!(raw.len() < 10_000, "compressed to {} bytes", raw.len());
    let (_, decoded) = curl(&["--compressed"], "/text/100000");
    assert_eq!(decoded, plain, "the same body once decoded");
    let (head, small) = curl(&["-H", "Accept-Encoding: gzip"], "/text/500");
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(small.len(), 500);
    // `offload`: the server never sees the client's Accept-Encoding.
    let (_, headers) = curl(&["-H", "Accept-Encoding: gzip"], "/headers");
    let headers = String::from_utf8_lossy(&headers);
    assert!(!headers.contains("accept-encoding"), "{headers}");
}
