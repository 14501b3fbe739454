//! Reloads and drains: no request lost, a bad config keeps the last good one serving.

use super::*;

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
    assert!(
        wait_for_log(&log, "config reloaded", 1),
        "the change was not applied"
    );
    // A broken file, then a SIGHUP: both refused, green keeps serving.
    write_atomically(&config, "listeners: [");
    assert!(
        wait_for_log(&log, "config reload refused", 1),
        "the broken file was not read"
    );
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
    let (admin_yaml, admin) = admin_listener();
    let (mut fg, addr) = floodgate_with(
        "drain.yaml",
        "",
        &format!("    servers: ['127.0.0.1:{p}']"),
        &admin_yaml,
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{p}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    let inflight = std::thread::spawn(move || concurrent_gets(addr, "/delay/1500", 50));
    let all_in = r#"floodgate_backend_active_requests{backend="app"}"#;
    assert!(
        floodgate_tests::wait_until(Duration::from_secs(5), || {
            scrape(admin, all_in).is_some_and(|n| n >= 40.0)
        }),
        "the requests are in flight (each holds its server 1.5 s)"
    );
    let pid = i32::try_from(fg.child.as_ref().unwrap().id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let refused = floodgate_tests::wait_until(Duration::from_secs(1), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
    });
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
