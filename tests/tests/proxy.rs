//! The L7 proxy's HAProxy semantics with real sockets on 127.0.0.1 and real origins:
//! per-server maxconn, the queue and `timeout queue`, health checks, passive ejection, retries.
//! XDP is disabled here (these need no root); every load is bounded in count and time.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use floodgate_tests::{
    Proc, bin, free_port, http_get, spawn_floodgate, spawn_origin, temp_file, wait_for_port,
};

fn origin(port: u16, name: &str) -> Proc {
    spawn_origin(port, name)
}

/// floodgate with XDP off on a free port; `backend` is the YAML of one backend named `app`.
fn floodgate(name: &str, global: &str, backend: &str) -> (Proc, SocketAddr) {
    floodgate_with(name, global, backend, "")
}

/// [`floodgate`] with `extra` top-level YAML (an `admin` listener, say).
fn floodgate_with(name: &str, global: &str, backend: &str, extra: &str) -> (Proc, SocketAddr) {
    let port = free_port();
    let yaml = format!(
        "
global: {{ {global} }}
xdp: {{ enabled: false }}
{extra}
listeners: [{{ name: http, bind: '127.0.0.1:{port}', default-backend: app }}]
backends:
  - name: app
{backend}
"
    );
    let config = temp_file(name, &yaml);
    let fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "floodgate did not listen"
    );
    (fg, addr)
}

fn peak(out: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("peak="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {out:?}"))
}

/// `n` concurrent clients, one GET each on its own connection; returns the statuses.
fn concurrent_gets(addr: SocketAddr, path: &'static str, n: usize) -> Vec<u16> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let attempt = async {
                    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let req =
                        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                    s.write_all(req.as_bytes()).await.ok()?;
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.ok()?;
                    String::from_utf8_lossy(&buf)
                        .split(' ')
                        .nth(1)?
                        .parse::<u16>()
                        .ok()
                };
                tokio::time::timeout(Duration::from_secs(60), attempt)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    })
}

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
    let (_fg, addr) = floodgate(
        "queue.yaml",
        "timeouts: { queue: 500ms }",
        &format!("    maxconn-server: 1\n    servers: ['127.0.0.1:{p}']"),
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let busy = std::thread::spawn(move || http_get(addr, "t", "/delay/2000"));
    std::thread::sleep(Duration::from_millis(200));
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
    let (_fg, addr) = floodgate(
        "health.yaml",
        "",
        &format!(
            "    health-check: {{ type: http, path: /healthz, interval: 100ms, timeout: 200ms, rise: 2, fall: 2 }}\n    \
             passive: {{ fall: 0 }}\n    servers: ['127.0.0.1:{p1}', '127.0.0.1:{p2}']"
        ),
    );
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
    std::thread::sleep(Duration::from_millis(600));
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

/// Clients on new connections, in a loop until `until`: (answered 200, failed, bodies seen).
fn load(
    addr: SocketAddr,
    until: Instant,
    threads: usize,
) -> std::thread::JoinHandle<(u64, u64, Vec<String>)> {
    std::thread::spawn(move || {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut seen) = (0, 0, Vec::new());
                    while Instant::now() < until {
                        match http_get(addr, "t", "/") {
                            Ok((200, b)) => {
                                ok += 1;
                                let name = b.split(' ').next().unwrap_or_default().to_owned();
                                if seen.last() != Some(&name) {
                                    seen.push(name);
                                }
                            }
                            _ => failed += 1,
                        }
                    }
                    (ok, failed, seen)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0, Vec::new()), |mut a, b| {
                a.2.extend(b.2);
                (a.0 + b.0, a.1 + b.1, a.2)
            })
    })
}

/// Replaces a file in one step, as a ConfigMap update does (the watcher never sees half a file).
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn hot_reload_under_load_loses_no_request_and_a_bad_config_keeps_serving() {
    let (pa, pb) = (free_port(), free_port());
    let (_a, _b) = (origin(pa, "blue"), origin(pb, "green"));
    let port = free_port();
    let yaml = |default: &str| {
        format!(
            "
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}', default-backend: {default} }}]
backends:
  - {{ name: blue, servers: ['127.0.0.1:{pa}'] }}
  - {{ name: green, servers: ['127.0.0.1:{pb}'] }}
"
        )
    };
    let config = temp_file("reload.yaml", &yaml("blue"));
    let log = temp_file("reload.log", "");
    let mut fg = Proc::spawn(
        "floodgate",
        Command::new(bin("floodgate"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(
        format!("127.0.0.1:{pb}").parse().unwrap(),
        Duration::from_secs(5)
    ));

    let clients = load(addr, Instant::now() + Duration::from_secs(5), 4);
    std::thread::sleep(Duration::from_millis(1000));
    // A file change (as when Kubernetes remounts a ConfigMap) switches the default backend.
    write_atomically(&config, &yaml("green"));
    std::thread::sleep(Duration::from_millis(2000));
    // A broken file, then a SIGHUP: both refused, green keeps serving.
    write_atomically(&config, "listeners: [");
    std::thread::sleep(Duration::from_millis(1200));
    let pid = i32::try_from(fg.child.as_ref().unwrap().id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let (ok, failed, seen) = clients.join().unwrap();
    let (status, body) = http_get(addr, "t", "/").unwrap();
    fg.stop();
    let log = std::fs::read_to_string(&log).unwrap();
    eprintln!("{ok} requests answered, {failed} failed, during two reloads and two refused ones");
    assert_eq!(failed, 0, "no request fails across reloads");
    assert!(ok > 50);
    assert!(
        seen.iter().any(|s| s == "blue") && seen.iter().any(|s| s == "green"),
        "{seen:?}"
    );
    assert_eq!(
        (status, body.starts_with("green")),
        (200, true),
        "after the bad config: {body}"
    );
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    assert_eq!(
        log.matches("config reload refused").count(),
        2,
        "file change and SIGHUP: {log}"
    );
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let p = free_port();
    let _o = origin(p, "slow");
    let (mut fg, addr) = floodgate("drain.yaml", "", &format!("    servers: ['127.0.0.1:{p}']"));
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let inflight = std::thread::spawn(move || concurrent_gets(addr, "/delay/1500", 50));
    std::thread::sleep(Duration::from_millis(500));
    let pid = i32::try_from(fg.child.as_ref().unwrap().id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err();
    let statuses = inflight.join().unwrap();
    fg.stop();
    assert!(refused, "no new connections once draining");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        50,
        "every request in flight finished: {statuses:?}"
    );
    assert!(fg.status.is_some_and(|s| s.success()));
}

/// Sends one keep-alive GET on `s` and reads its response (content-length framed).
fn keepalive_get(s: &mut std::net::TcpStream, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(text);
            }
        }
    }
}

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
}

/// Sends `raw` on a new connection and returns the status of the response.
fn raw_status(addr: SocketAddr, raw: &[u8]) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
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
    // One worker; then two sharing one accept queue (`reuseport: false`). With SO_REUSEPORT
    // each worker has its own queue: the limit still holds, but which waiting connection is
    // accepted next is up to the kernel's hash.
    for (threads, reuseport) in [(1, true), (2, false)] {
        listener_maxconn_case(threads, reuseport);
    }
}

fn listener_maxconn_case(threads: u32, reuseport: bool) {
    use std::io::{Read as _, Write as _};
    let (p, port) = (free_port(), free_port());
    let _o = origin(p, "o");
    let config = temp_file(
        &format!("lmax-{threads}.yaml"),
        &format!(
            "
global: {{ nbthread: {threads} }}
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}', default-backend: app, maxconn: 2, reuseport: {reuseport} }}]
backends: [{{ name: app, servers: ['127.0.0.1:{p}'] }}]
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    // wait_for_port's probe connection may still hold a slot for a moment.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = std::net::TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let early = third.read(&mut buf);
    assert!(
        early.is_err(),
        "{threads} threads: the third connection waits in the backlog, unanswered: {early:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = String::new();
    third.read_to_string(&mut out).unwrap();
    assert!(out.contains("o /third"), "served once a slot freed: {out}");
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

/// A scripted HTTP/1.1 origin answering by path with responses framed every way a server may
/// frame them; counts the connections it accepted and keeps the request heads it saw.
fn scripted_origin() -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, h) = (accepted.clone(), heads.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let h = h.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    h.lock().unwrap().push(head.clone());
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let (reply, close): (Vec<u8>, bool) = match path.as_str() {
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec(),
                            false,
                        ),
                        "/until-close" => (b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec(), true),
                        "/interim" => (
                            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                            false,
                        ),
                        // Closes without saying so: the connection floodgate keeps is stale.
                        "/then-close" => (
                            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce".to_vec(),
                            true,
                        ),
                        // Part of the body, then silence longer than `timeout server`.
                        "/stall" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
                            std::thread::sleep(Duration::from_secs(6));
                            return;
                        }
                        "/conflicting" => (
                            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(),
                            true,
                        ),
                        _ if head.starts_with("HEAD ") => (
                            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n".to_vec(),
                            false,
                        ),
                        _ => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                head.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(head.as_bytes());
                            (r, false)
                        }
                    };
                    if s.write_all(&reply).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, heads)
}

/// floodgate with one worker (so one list of idle server connections) in front of `origin`
/// alone; `global` adds settings.
fn floodgate_before(origin: SocketAddr, name: &str, global: &str) -> (Proc, SocketAddr) {
    let global = if global.is_empty() {
        "nbthread: 1".to_owned()
    } else {
        format!("nbthread: 1, {global}")
    };
    floodgate(name, &global, &format!("    servers: ['{origin}']"))
}

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

/// Sockets of this host in CLOSE_WAIT towards `server` (their peer closed; ours not yet).
fn close_wait_to(server: SocketAddr) -> usize {
    sockets_to("close-wait", server)
}

/// Sockets of this host in TCP `state` whose peer is `server`.
fn sockets_to(state: &str, server: SocketAddr) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", state, "dst", &server.to_string()])
        .output()
        .expect("ss (iproute2, installed by cargo xtask setup)");
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout).lines().count()
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

/// `/stall` of the scripted origin (3 of 10 body bytes, then 6 s of silence) reaches the
/// client as those 3 bytes, cut by a 1 s `what`.
fn assert_stall_cut_after_1s(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    let (status, _, body) =
        floodgate_tests::http_raw(addr, b"GET /stall HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    let took = start.elapsed();
    assert_eq!((status, body.as_str()), (200, "abc"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}, not at {what} (1 s)"
    );
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

/// A response body of one data frame then trailers, as a gRPC server sends.
struct WithTrailers {
    data: Option<bytes::Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for WithTrailers {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(d) => Some(hyper::body::Frame::data(d)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(hyper::Version, String, String)>>>;

/// An HTTP/2 (h2c) origin on `rt` that echoes the request body and ends with a
/// `grpc-status: 0` trailer. It counts the connections it accepts and records (version,
/// authority, te) of every request. It answers the gRPC health protocol's Check with SERVING
/// or NOT_SERVING as the returned flag says (not recorded). With `close_after`, each
/// connection is dropped that long after it was accepted, as by a server that restarts.
fn h2_origin(
    rt: &tokio::runtime::Runtime,
    close_after: Option<Duration>,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    Seen,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    };
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen: Seen = Arc::default();
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let origin = listener.local_addr().unwrap();
    let (a, s) = (accepted.clone(), seen.clone());
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, SeqCst);
            let (s, h) = (s.clone(), h.clone());
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (s, h) = (s.clone(), h.clone());
                    async move {
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        if req.uri().path() == "/grpc.health.v1.Health/Check" {
                            // HealthCheckResponse { status: SERVING (1) or NOT_SERVING (2) }
                            let status = if h.load(SeqCst) { 1 } else { 2 };
                            return Ok(hyper::Response::new(WithTrailers {
                                data: Some(bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])),
                                trailers: Some(trailers),
                            }));
                        }
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        s.lock().unwrap().push((
                            req.version(),
                            req.uri()
                                .authority()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            header("te"),
                        ));
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(WithTrailers {
                            data: Some(body),
                            trailers: Some(trailers),
                        }))
                    }
                });
            let serving = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::spawn(async move {
                match close_after {
                    None => drop(serving.await),
                    Some(d) => drop(tokio::time::timeout(d, serving).await),
                }
            });
        }
    });
    (origin, accepted, seen, healthy)
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

/// `curl -u user:password` to `path`: the status and the `WWW-Authenticate` it got.
fn curl_as(addr: SocketAddr, path: &str, user: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "10"]);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    let out = c.arg(format!("http://{addr}{path}")).output().unwrap();
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let challenge = head
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    (status, challenge)
}

fn openssl_passwd(args: &[&str], password: &str) -> String {
    let out = Command::new("openssl")
        .arg("passwd")
        .args(args)
        .arg(password)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl passwd");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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
    let (_fg, addr) = floodgate_with(
        "basic.yaml",
        "",
        &format!("    servers: ['127.0.0.1:{op}']"),
        &format!(
            "routes: [{{ path-prefix: /admin, basic-auth: {{ users-file: {}, realm: Staff }}, backend: app }}]",
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
    std::thread::sleep(Duration::from_millis(2500));
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
    // wait_for_port's probe connection is held until floodgate sees it close.
    std::thread::sleep(Duration::from_millis(300));
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
