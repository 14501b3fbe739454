//! The CLI as users meet it: `check` names bad keys, `stats` explains when nothing runs, and
//! `run` with XDP disabled proxies without privileges.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{net::SocketAddr, process::Command, time::Duration};

use floodgate_tests::{
    bin, free_port, http_get, spawn_floodgate, spawn_origin, temp_file, wait_for_port,
};

fn check(name: &str, yaml: &str) -> (bool, String, String) {
    let path = temp_file(name, yaml);
    let out = Command::new(bin("floodgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run floodgate check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = "
listeners: [{ name: http, bind: '127.0.0.1:18080', default-backend: app }]
backends: [{ name: app, servers: ['127.0.0.1:19101'] }]
xdp: { enabled: false }
";

#[test]
fn check_accepts_the_quickstart_and_a_minimal_config() {
    for example in ["quickstart.yaml", "ingress.yaml"] {
        let path = format!("{}/../examples/{example}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(bin("floodgate"))
            .args(["check", "--config", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every key of the HAProxy section is one floodgate applies.
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ignored"),
            "{example}"
        );
    }
    let (ok, stdout, _) = check("good.yaml", GOOD);
    assert!(ok && stdout.contains("ok"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
}

/// A private key other users can read is said out loud, naming the key; 0400 is quiet.
#[test]
fn check_warns_of_a_private_key_readable_by_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("fg-keymode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) =
        floodgate_tests::self_signed(&dir, "k", "ec", "a.example", "DNS:a.example", false);
    let yaml = GOOD.replace(
        "default-backend: app }",
        &format!(
            "default-backend: app, tls: {{ certificates: [{{ cert: {}, key: {} }}] }} }}",
            crt.display(),
            key.display()
        ),
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, stdout, stderr) = check("key-644.yaml", &yaml);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("warning: listeners[0].tls.certificates[0]") && stdout.contains("mode 644"),
        "{stdout}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let (ok, stdout, _) = check("key-400.yaml", &yaml);
    assert!(ok && !stdout.contains("warning"), "{stdout}");
}

/// A PROXY protocol header believed from anyone lets a client name any address as its own:
/// valid (HAProxy's `use-proxy-protocol` means it), but said out loud.
#[test]
fn check_warns_of_a_proxy_protocol_header_believed_from_anyone() {
    let open = GOOD.replace(
        "default-backend: app }",
        "default-backend: app, proxy-protocol: {} }",
    );
    let (ok, stdout, _) = check("pp-open.yaml", &open);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("warning: listeners[0].proxy-protocol") && stdout.contains("set `from`"),
        "{stdout}"
    );
    let scoped = GOOD.replace(
        "default-backend: app }",
        "default-backend: app, proxy-protocol: { from: [10.0.0.0/8] } }",
    );
    let (ok, stdout, _) = check("pp-scoped.yaml", &scoped);
    assert!(ok && !stdout.contains("warning"), "{stdout}");
}

#[test]
fn check_refuses_bad_configs_naming_the_key() {
    for (yaml, key) in [
        (
            GOOD.replace("default-backend: app", "default-backend: nope"),
            "listeners[0].default-backend",
        ),
        (
            GOOD.replace("127.0.0.1:19101", "not-an-address"),
            "backends",
        ),
        (
            format!("{GOOD}global: {{ timeouts: {{ queue: 5 parsecs }} }}"),
            "global.timeouts.queue",
        ),
        (format!("{GOOD}frontend: x"), "frontend"),
        (
            GOOD.replace(
                "enabled: false",
                "enabled: true, interfaces: [lo], mode: turbo",
            ),
            "xdp.mode",
        ),
        ("listeners: [".to_string(), "bad.yaml"),
    ] {
        let (ok, _, stderr) = check("bad.yaml", &yaml);
        assert!(!ok, "accepted: {yaml}");
        assert!(
            stderr.contains(key),
            "error for {yaml:?} does not name {key}: {stderr}"
        );
    }
    let out = Command::new(bin("floodgate"))
        .args(["check", "--config", "/nonexistent/floodgate.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/floodgate.yaml"));
}

#[test]
fn an_haproxy_ingress_configmap_is_accepted_as_it_is() {
    // The production ConfigMap's keys, inline and as a mounted directory (one file per key).
    let inline = format!(
        "{GOOD}haproxy:\n  maxconn-global: 100000\n  maxconn-server: \"10000\"\n  nbthread: \"4\"\n  \
         timeout-client: 50s\n  timeout-connect: 5s\n  timeout-queue: 5s\n  timeout-http-request: 10s\n  \
         timeout-http-keep-alive: 1s\n  timeout-tunnel: 1h\n  ssl-options: no-sslv3 no-tls-tickets no-tlsv10 no-tlsv11\n  \
         ssl-ciphers: ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256\n  syslog-endpoint: 10.0.0.1:514\n"
    );
    let (ok, stdout, stderr) = check("configmap.yaml", &inline);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ignored): syslog-endpoint\n"),
        "unknown keys are reported, known ones are not: {stdout}"
    );

    let dir = temp_file("cm/maxconn-global", "5000")
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::write(dir.join("timeout-queue"), "not-a-duration").unwrap();
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    let path = temp_file("cm.yaml", GOOD);
    let out = Command::new(bin("floodgate"))
        .args(["check", "--config"])
        .arg(&path)
        .arg("--haproxy-configmap")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("haproxy.timeout-queue"),
        "a bad value names its key"
    );
    std::fs::write(dir.join("timeout-queue"), "2500").unwrap();
    let out = Command::new(bin("floodgate"))
        .args(["check", "--config"])
        .arg(&path)
        .arg("--haproxy-configmap")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stats_explains_when_nothing_is_pinned() {
    let out = Command::new(bin("floodgate"))
        .args(["stats", "--pin-dir", "/sys/fs/bpf/floodgate-not-running"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is floodgate running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_without_xdp_proxies_routes_and_exits_on_sigterm() {
    let (origin_port, other_port, fg_port) = (free_port(), free_port(), free_port());
    let mut origin = spawn_origin(origin_port, "web");
    let mut api = spawn_origin(other_port, "api");
    let config = temp_file(
        "run.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{fg_port}', default-backend: web }}]
routes:
  - {{ host: '*.example.com', path-prefix: /api, backend: api }}
  - {{ path: /exact, backend: api }}
  - {{ path-prefix: /shop/, rewrite-prefix: /, backend: api }}
  - {{ path: /office, allow: [10.0.0.0/8], backend: api }}
  - {{ path: /local, allow: [127.0.0.0/8, '::1/128'], backend: api }}
  - {{ path: /canary, headers: {{ X-Canary: always }}, backend: api }}
  - {{ path: /split, split: [{{ backend: web, weight: 0 }}, {{ backend: api, weight: 5 }}] }}
  - {{ path-regex: '^/v[0-9]+/items/([0-9]+)$', rewrite-target: '/item/$1', backend: api }}
backends:
  - {{ name: web, servers: ['127.0.0.1:{origin_port}'] }}
  - {{ name: api, servers: ['127.0.0.1:{other_port}'] }}
"
        ),
    );
    let mut fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{fg_port}").parse().unwrap();
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "floodgate did not listen"
    );
    let origin_addr: SocketAddr = format!("127.0.0.1:{origin_port}").parse().unwrap();
    assert!(wait_for_port(origin_addr, Duration::from_secs(5)));

    let (status, body) = http_get(addr, "www.example.com", "/api/users").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "api /api/users xff=127.0.0.1\n")
    );
    let (status, body) = http_get(addr, "other.org", "/api/users").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "web /api/users xff=127.0.0.1\n"),
        "host rule not met: default backend"
    );
    let (status, body) = http_get(addr, "other.org", "/exact").unwrap();
    assert_eq!((status, body.as_str()), (200, "api /exact xff=127.0.0.1\n"));
    // `rewrite-prefix` strips the prefix, keeps the query and says what it took off, on the
    // direct path (GET) and hyper's (POST); `/shopping` is not under `/shop/`.
    let (status, body) = http_get(addr, "other.org", "/shop/cart?id=3").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "api /cart?id=3 xff=127.0.0.1 prefix=/shop\n")
    );
    let (status, _, body) = floodgate_tests::http_raw(
        addr,
        b"POST /shop/ HTTP/1.1\r\nHost: other.org\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "api / xff=127.0.0.1 body=2 prefix=/shop\n")
    );
    let (status, body) = http_get(addr, "other.org", "/shopping").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "web /shopping xff=127.0.0.1\n")
    );
    // `allow`: a client outside the list gets 403 from the matching route (not the default
    // backend); one inside is served.
    let (status, body) = http_get(addr, "other.org", "/office").unwrap();
    assert_eq!((status, body.as_str()), (403, "403 Forbidden\n"));
    let (status, body) = http_get(addr, "other.org", "/local").unwrap();
    assert_eq!((status, body.as_str()), (200, "api /local xff=127.0.0.1\n"));
    // A header match sends canary traffic to its backend, the rest falls through; a split
    // follows its weights (0 never).
    let (status, _, body) = floodgate_tests::http_raw(
        addr,
        b"GET /canary HTTP/1.1\r\nHost: o\r\nX-Canary: always\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "api /canary xff=127.0.0.1\n")
    );
    assert!(
        http_get(addr, "other.org", "/canary")
            .unwrap()
            .1
            .starts_with("web ")
    );
    for _ in 0..5 {
        assert!(
            http_get(addr, "other.org", "/split")
                .unwrap()
                .1
                .starts_with("api ")
        );
    }
    // A regex path, its capture in the rewritten path, the query kept.
    let (status, body) = http_get(addr, "other.org", "/v2/items/42?full=1").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "api /item/42?full=1 xff=127.0.0.1\n")
    );
    let (_, body) = http_get(addr, "other.org", "/v2/items/x").unwrap();
    assert!(
        body.starts_with("web "),
        "no match: the default backend: {body}"
    );
    // A client's own X-Forwarded-For is extended with its address, not replaced.
    let (status, _, body) = floodgate_tests::http_raw(
        addr,
        b"GET /exact HTTP/1.1\r\nHost: other.org\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "api /exact xff=203.0.113.7, 127.0.0.1\n")
    );

    api.stop();
    let (status, body) = http_get(addr, "www.example.com", "/api/down").unwrap();
    assert_eq!(status, 502, "a refused backend is a 502: {body}");
    assert!(
        !body.contains("127.0.0.1"),
        "error bodies leak no addresses: {body}"
    );

    fg.stop();
    assert!(
        fg.status.is_some_and(|s| s.success()),
        "SIGTERM is a clean exit: {:?}",
        fg.status
    );
    let served = origin.stop();
    // `/api/users` from other.org, `/shopping`, `/canary` without its header and
    // `/v2/items/x`.
    assert!(served.contains("requests=4 "), "{served}");
}

#[test]
fn admin_endpoints_and_metrics_match_the_traffic() {
    let (origin_port, fg_port, admin_port) = (free_port(), free_port(), free_port());
    let _origin = spawn_origin(origin_port, "origin");
    let config = temp_file(
        "admin.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
listeners: [{{ name: web, bind: '127.0.0.1:{fg_port}', default-backend: app }}]
routes: [{{ path: /missing, backend: nope-not-here }}]
backends: [{{ name: app, servers: ['127.0.0.1:{origin_port}'] }}]
"
        ),
    );
    // A route to an unknown backend is refused; the check names it.
    let out = Command::new(bin("floodgate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].backend"));
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("routes: [{ path: /missing, backend: nope-not-here }]\n", ""),
    )
    .unwrap();
    let mut fg = spawn_floodgate(&config);
    let (addr, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{fg_port}").parse().unwrap(),
        format!("127.0.0.1:{admin_port}").parse().unwrap(),
    );
    assert!(
        wait_for_port(addr, Duration::from_secs(10))
            && wait_for_port(admin, Duration::from_secs(5))
    );
    assert!(wait_for_port(
        format!("127.0.0.1:{origin_port}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    assert_eq!(http_get(admin, "a", "/healthz").unwrap().0, 200);
    assert_eq!(http_get(admin, "a", "/readyz").unwrap().0, 200);
    for i in 0..7 {
        assert_eq!(http_get(addr, "t", &format!("/m{i}")).unwrap().0, 200);
    }
    let (status, metrics) = http_get(admin, "a", "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "floodgate_http_requests_total{backend=\"app\",code=\"2xx\",listener=\"web\",method=\"GET\"} 7"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "floodgate_http_request_duration_seconds_count{backend=\"app\",listener=\"web\"} 7"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "floodgate_server_up{{backend=\"app\",server=\"127.0.0.1:{origin_port}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("floodgate_config_reloads_total{result=\"ok\"} 0"));
    fg.stop();
}

/// A memory cgroup of its own (v2 `memory.max`, or v1 `memory.limit_in_bytes`), removed when
/// dropped.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> Self {
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, file) = if v2.exists() {
            // The memory controller has to be enabled for children of the root.
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            (
                std::path::Path::new("/sys/fs/cgroup").join(name),
                "memory.max",
            )
        } else {
            (
                std::path::Path::new("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
            )
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(dir.join(file), limit.to_string()).unwrap();
        Self(dir)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now; a cgroup is removed with rmdir.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// In a cgroup whose memory limit cannot hold `global.maxconn` busy connections, floodgate says
/// so at start, with how many it can hold; with room for them, it says the limit covers them.
#[test]
fn a_memory_limit_too_small_for_maxconn_is_reported_at_start() {
    if !floodgate_tests::require_root("a_memory_limit_too_small_for_maxconn_is_reported_at_start") {
        return;
    }
    // (limit, what the log must say): 256 MiB holds (256 - 64) MiB / 64 KiB = 3072 busy
    // connections, fewer than maxconn 9000; 2 GiB holds 31744.
    for (limit, expected) in [
        (256u64 << 20, "\"connections_within_limit\":3072"),
        (2 << 30, "memory limit covers maxconn"),
    ] {
        let port = free_port();
        let config = temp_file(
            "memory.yaml",
            &format!(
                "
global: {{ maxconn: 9000 }}
xdp: {{ enabled: false }}
listeners: [{{ name: web, bind: '127.0.0.1:{port}', default-backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:9'] }}]
"
            ),
        );
        let cgroup = MemoryCgroup::new(&format!("floodgate-test-{}", std::process::id()), limit);
        let log_path = temp_file("memory.log", "");
        let mut fg = floodgate_tests::Proc::spawn(
            "floodgate",
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec {} --log-format json run --config {}",
                    cgroup.0.display(),
                    bin("floodgate").display(),
                    config.display()
                ))
                .stderr(std::fs::File::create(&log_path).unwrap()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(wait_for_port(addr, Duration::from_secs(10)));
        fg.stop();
        drop(cgroup);
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains(expected), "limit {limit}: {log}");
        if limit < 1 << 30 {
            assert!(log.contains("may be OOM-killed"), "{log}");
        } else {
            assert!(!log.contains("OOM"), "{log}");
        }
    }
}
