//! Per-server maxconn, the queue and `timeout queue`, health checks, passive ejection, retries and
//! sticky sessions.

use super::*;

#[test]
fn maxconn_server_is_never_exceeded_by_1000_concurrent_clients() {
    let (p1, p2) = (free_port(), free_port());
    let (mut o1, mut o2) = (origin(p1, "o1"), origin(p2, "o2"));
    let (_fg, addr) = floodgate(
        "maxconn.yaml",
        "timeouts: { queue: 60s }",
        &format!(
            "    balance: leastconn\n    maxconn-server: 10\n    servers: ['127.0.0.1:{p1}', '127.0.0.1:{p2}']"
        ),
    );
    let t = Instant::now();
    let statuses = concurrent_gets(addr, "/delay/20", 1000);
    let took = t.elapsed();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let (peak1, peak2) = (peak(&o1.stop()), peak(&o2.stop()));
    eprintln!(
        "1000 clients in {took:?}: {ok} answered 200; origin peaks {peak1} and {peak2} (maxconn-server 10)"
    );
    assert_eq!(
        ok, 1000,
        "every request waited its turn and was served: {statuses:?}"
    );
    assert!(
        peak1 <= 10 && peak2 <= 10,
        "maxconn-server exceeded: {peak1}, {peak2}"
    );
    assert!(
        peak1 == 10 && peak2 == 10,
        "the limit was reached, so the test measured something: {peak1}, {peak2}"
    );
}

#[test]
fn a_request_queued_past_timeout_queue_gets_503() {
    let p = free_port();
    let _o = origin(p, "slow");
    let (admin_yaml, admin) = admin_listener();
    let (_fg, addr) = floodgate_with(
        "queue.yaml",
        "timeouts: { queue: 500ms }",
        &format!("    maxconn-server: 1\n    servers: ['127.0.0.1:{p}']"),
        &admin_yaml,
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    let busy = std::thread::spawn(move || http_get(addr, "t", "/delay/2000"));
    let holding = r#"floodgate_backend_active_requests{backend="app"}"#;
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || scrape(admin, holding)
            == Some(1.0)),
        "the first request holds the only slot"
    );
    let t = Instant::now();
    let (status, body) = http_get(addr, "t", "/queued").unwrap();
    let waited = t.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1500),
        "waited {waited:?} for a 500ms queue timeout"
    );
    assert_eq!(
        busy.join().unwrap().unwrap().0,
        200,
        "the request holding the slot still completes"
    );
}

#[test]
fn active_health_checks_take_a_dead_server_out_and_bring_it_back() {
    let (p1, p2) = (free_port(), free_port());
    let _o1 = origin(p1, "alive");
    let mut o2 = origin(p2, "flaky");
    let (admin_yaml, admin) = admin_listener();
    let (_fg, addr) = floodgate_with(
        "health.yaml",
        "",
        &format!(
            "    health-check: {{ type: http, path: /healthz, interval: 100ms, timeout: 200ms, rise: 2, fall: 2 }}\n    \
             passive: {{ fall: 0 }}\n    servers: ['127.0.0.1:{p1}', '127.0.0.1:{p2}']"
        ),
        &admin_yaml,
    );
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    let bodies = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| http_get(addr, "t", "/").map(|(_, b)| b).unwrap_or_default())
            .collect()
    };
    assert!(
        bodies(10).iter().any(|b| b.starts_with("flaky")),
        "both servers serve at first"
    );
    o2.stop();
    let up = format!("floodgate_server_up{{backend=\"app\",server=\"127.0.0.1:{p2}\"}}");
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || scrape(admin, &up) == Some(0.0)),
        "2 failed checks take the server out"
    );
    let after = bodies(20);
    assert!(
        after.iter().all(|b| b.starts_with("alive")),
        "a server down for 2 checks gets no traffic: {after:?}"
    );
    let _o2 = origin(p2, "flaky");
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || bodies(6)
            .iter()
            .any(|b| b.starts_with("flaky"))),
        "the server comes back after 2 good checks"
    );
}

#[test]
fn connect_failures_are_retried_elsewhere_and_eject_the_server() {
    let (p1, dead) = (free_port(), free_port());
    let _o1 = origin(p1, "alive");
    let (_fg, addr) = floodgate(
        "passive.yaml",
        "",
        &format!(
            "    passive: {{ fall: 2, eject: 30s }}\n    servers: ['127.0.0.1:{p1}', '127.0.0.1:{dead}']"
        ),
    );
    // Round robin sends every other request to the dead server: each is retried on the live
    // one, so no client sees an error; after two failures the dead server is ejected.
    for i in 0..20 {
        let (status, body) = http_get(addr, "t", &format!("/r{i}")).unwrap();
        assert_eq!(
            (status, body.starts_with("alive")),
            (200, true),
            "request {i}: {status} {body}"
        );
    }
}

/// A server SIGKILLed while requests are in flight on it: each GET it swallowed is sent again
/// to another server (its connection closed before a response byte), as HAProxy's `retry-on
/// conn-failure empty-response` does, so no client sees an error.
#[test]
fn a_server_killed_under_load_costs_no_get() {
    let ports = [free_port(), free_port(), free_port()];
    let mut origins: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| origin(*p, &format!("o{i}")))
        .collect();
    let servers = ports
        .iter()
        .map(|p| format!("'127.0.0.1:{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let (_fg, addr) = floodgate("killed.yaml", "", &format!("    servers: [{servers}]"));
    for p in ports {
        assert!(wait_for_port(
            format!("127.0.0.1:{p}").parse().unwrap(),
            Duration::from_secs(5)
        ));
    }
    let until = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while Instant::now() < until {
                    // 30 ms at the server: requests are in flight on it when it dies.
                    match http_get(addr, "t", "/delay/30") {
                        Ok((200, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    origins[1].kill();
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 100, "the load ran: {ok} answered");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
}

/// A server that takes each request and dies before answering it (the connection closes
/// without a byte): every GET is answered by another server, a POST is not resent.
#[test]
fn a_get_swallowed_by_a_dying_server_is_answered_by_another() {
    use std::io::Read as _;
    let p1 = free_port();
    let _alive = origin(p1, "alive");
    let dying = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dp = dying.local_addr().unwrap().port();
    let swallowed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s = swallowed.clone();
    std::thread::spawn(move || {
        for mut c in dying.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            s.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(c);
        }
    });
    let (_fg, addr) = floodgate(
        "dying.yaml",
        "",
        &format!(
            "    passive: {{ fall: 1000 }}
    servers: ['127.0.0.1:{dp}', '127.0.0.1:{p1}']"
        ),
    );
    for i in 0..10 {
        let (status, body) = http_get(addr, "t", &format!("/g{i}")).unwrap();
        assert_eq!(
            (status, body.starts_with("alive")),
            (200, true),
            "GET {i}: {body}"
        );
    }
    assert!(
        swallowed.load(std::sync::atomic::Ordering::Relaxed) >= 4,
        "the dying server took its share first"
    );
    // Not idempotent: the server may have acted on it, so it is not sent again.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _, _) = floodgate_tests::http_raw(
            addr,
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        statuses.push(status);
    }
    assert!(
        statuses.contains(&502),
        "a swallowed POST is not resent: {statuses:?}"
    );
}

/// `sticky`: the first answer sets a cookie naming its server; requests with it go back to
/// that server (round robin would alternate), and the server never sees it; when that server
/// dies, the request goes to another and the cookie is set anew.
#[test]
fn a_sticky_cookie_keeps_a_client_on_its_server() {
    let (p1, p2) = (free_port(), free_port());
    let mut origins = [origin(p1, "o1"), origin(p2, "o2")];
    let (_fg, addr) = floodgate(
        "sticky.yaml",
        "",
        &format!(
            "    sticky: {{ cookie: SRV, max-age: 1h }}\n    servers: ['127.0.0.1:{p1}', '127.0.0.1:{p2}']"
        ),
    );
    let get = |cookie: &str| {
        let req = format!("GET /p HTTP/1.1\r\nHost: t\r\n{cookie}Connection: close\r\n\r\n");
        let (status, head, body) = floodgate_tests::http_raw(addr, req.as_bytes()).unwrap();
        assert_eq!(status, 200, "{head}");
        let set = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .map(str::to_owned);
        (
            body.split(' ').next().unwrap_or_default().to_owned(),
            set,
            head,
            body,
        )
    };
    let (first, set, head, _) = get("");
    let set = set.unwrap_or_else(|| panic!("no cookie set: {head}"));
    assert!(
        set.starts_with("SRV=") && set.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"),
        "{set}"
    );
    assert!(head.contains("cache-control: private"), "nocache: {head}");
    let pair = set.split(';').next().unwrap().to_owned();
    for _ in 0..6 {
        let (server, set, _, body) = get(&format!("Cookie: theme=dark; {pair}\r\n"));
        assert_eq!(server, first, "back to its server");
        assert_eq!(set, None, "the cookie is not set again");
        assert!(body.ends_with(" cookie=theme=dark\n"), "taken out: {body}");
    }
    // Without the cookie, round robin alternates.
    let servers: std::collections::HashSet<String> = (0..4).map(|_| get("").0).collect();
    assert_eq!(servers.len(), 2);
    // Its server dies: another answers, and the client is moved there.
    let i = usize::from(first == "o2");
    origins[i].stop();
    let (server, set, head, _) = get(&format!("Cookie: {pair}\r\n"));
    assert_ne!(server, first);
    let set = set.unwrap_or_else(|| panic!("moved without a new cookie: {head}"));
    assert_ne!(set.split(';').next(), Some(pair.as_str()));
}

/// A sticky client whose server is at its maxconn waits for that server, as in HAProxy,
/// although the other server is idle; a client without the cookie goes to the idle one.
#[test]
fn a_sticky_client_waits_for_its_full_server() {
    let (p1, p2) = (free_port(), free_port());
    let _origins = [origin(p1, "o1"), origin(p2, "o2")];
    let (_fg, addr) = floodgate(
        "sticky-full.yaml",
        "timeouts: { queue: 10s }",
        &format!(
            "    sticky: {{ cookie: SRV }}\n    maxconn-server: 1\n    servers: ['127.0.0.1:{p1}', '127.0.0.1:{p2}']"
        ),
    );
    // Learn each server's cookie.
    let mut cookies = std::collections::HashMap::new();
    for _ in 0..4 {
        let (_, head, body) = floodgate_tests::http_raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let name = body.split(' ').next().unwrap().to_owned();
        let cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .and_then(|c| c.split(';').next())
            .unwrap()
            .to_owned();
        cookies.insert(name, cookie);
    }
    let o1 = cookies["o1"].clone();
    let get = move |cookie: String| {
        std::thread::spawn(move || {
            let t = Instant::now();
            let req =
                format!("GET /delay/600 HTTP/1.1\r\nHost: t\r\n{cookie}Connection: close\r\n\r\n");
            let (status, _, body) = floodgate_tests::http_raw(addr, req.as_bytes()).unwrap();
            (
                status,
                body.split(' ').next().unwrap().to_owned(),
                t.elapsed(),
            )
        })
    };
    let first = get(format!("Cookie: {o1}\r\n"));
    std::thread::sleep(Duration::from_millis(150));
    let second = get(format!("Cookie: {o1}\r\n"));
    std::thread::sleep(Duration::from_millis(150));
    let other = get(String::new());
    let (first, second, other) = (
        first.join().unwrap(),
        second.join().unwrap(),
        other.join().unwrap(),
    );
    assert_eq!((first.0, first.1.as_str()), (200, "o1"));
    assert_eq!(
        (second.0, second.1.as_str()),
        (200, "o1"),
        "stayed on its server"
    );
    assert!(
        second.2 >= Duration::from_millis(1000),
        "waited for the first to finish: {:?}",
        second.2
    );
    assert_eq!((other.0, other.1.as_str()), (200, "o2"), "the idle server");
    assert!(
        other.2 < second.2,
        "not held behind the sticky waiter: {:?} against {:?}",
        other.2,
        second.2
    );
}
