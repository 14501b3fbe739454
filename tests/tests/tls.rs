//! TLS termination with real clients (`openssl s_client`, curl): the production policy,
//! resumption through the session cache, SNI and ECDSA/RSA selection, ALPN, and certificates
//! replaced on disk while connections stay open. No root needed.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use floodgate_tests::{
    Proc, free_port, http_get, metric, promtool_check_metrics, spawn_floodgate, spawn_origin,
    temp_file, wait_for_port, wait_until,
};

/// A self-signed certificate (a CA, as `openssl req -x509` makes): (cert, key).
fn cert(dir: &Path, name: &str, kind: &str, cn: &str, san: &str) -> (PathBuf, PathBuf) {
    floodgate_tests::self_signed(dir, name, kind, cn, san, true)
}

/// `openssl s_client` with `args`; returns its whole output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Send a request so the session (and any ticket) is fully established, then close.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Setup {
    _origin: Proc,
    _fg: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

fn setup() -> Setup {
    // Each setup gets its own directory: tests may run in parallel.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let sub = format!(
        "tls-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let dir = temp_file(&format!("{sub}/x"), "")
        .parent()
        .unwrap()
        .to_path_buf();
    cert(
        &dir,
        "ec",
        "ec",
        "a.example.com",
        "DNS:a.example.com,DNS:*.wild.example.com",
    );
    cert(
        &dir,
        "rsa",
        "rsa",
        "a.example.com",
        "DNS:a.example.com,DNS:*.wild.example.com",
    );
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (c, k) = cert(&dir, "b", "ec", "b.example.org", "DNS:b.example.org");
    std::fs::rename(c, other.join("tls.crt")).unwrap();
    std::fs::rename(k, other.join("tls.key")).unwrap();
    let (op, port, admin_port) = (free_port(), free_port(), free_port());
    let origin = spawn_origin(op, "origin");
    let d = dir.display();
    let config = temp_file(
        &format!("{sub}/fg.yaml"),
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
tls: {{ ssl-options: 'no-sslv3 no-tls-tickets no-tlsv10 no-tlsv11', ssl-ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256' }}
listeners:
  - name: https
    bind: 127.0.0.1:{port}
    default-backend: app
    tls:
      certificates:
        - {{ cert: {d}/ec.crt, key: {d}/ec.key }}
        - {{ cert: {d}/rsa.crt, key: {d}/rsa.key }}
        - {d}/other
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)));
    assert!(wait_for_port(admin, Duration::from_secs(5)));
    assert!(wait_for_port(
        format!("127.0.0.1:{op}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    Setup {
        _origin: origin,
        _fg: fg,
        addr,
        admin,
        dir,
    }
}

/// A signed OCSP response saying `good` for the self-signed `name.crt`, made with
/// `openssl ocsp` acting as its own responder; written where floodgate looks for it.
fn ocsp_response(dir: &Path, name: &str) -> PathBuf {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    let index = dir.join("index.txt");
    std::fs::write(
        &index,
        format!("V\t351231235959Z\t\t{serial}\tunknown\t/CN=a.example.com\n"),
    )
    .unwrap();
    let req = dir.join("req.der");
    let st = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&crt)
        .arg("-cert")
        .arg(&crt)
        .arg("-reqout")
        .arg(&req)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl ocsp request");
    let tmp = dir.join("resp.der");
    let st = Command::new("openssl")
        .arg("ocsp")
        .arg("-index")
        .arg(&index)
        .arg("-rsigner")
        .arg(&crt)
        .arg("-rkey")
        .arg(&key)
        .arg("-CA")
        .arg(&crt)
        .arg("-reqin")
        .arg(&req)
        .arg("-respout")
        .arg(&tmp)
        .args(["-ndays", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl ocsp response");
    let path = dir.join(format!("{name}.crt.ocsp"));
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn has(out: &str, needle: &str) -> bool {
    out.contains(needle)
}

#[test]
fn the_production_policy_with_real_clients() {
    let s = setup();
    let a = s.addr;
    for old in ["-tls1", "-tls1_1"] {
        let out = s_client(a, &[old]);
        assert!(
            has(&out, "Cipher is (NONE)"),
            "{old} must be refused:\n{out}"
        );
    }
    let out = s_client(a, &["-tls1_2", "-cipher", "AES256-SHA"]);
    assert!(
        has(&out, "Cipher is (NONE)"),
        "a cipher outside the list is refused:\n{out}"
    );
    // floodgate's order decides, as HAProxy's does (no `prefer-client-ciphers`).
    let out = s_client(
        a,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        ],
    );
    assert!(
        has(&out, "Cipher is TLS_AES_128_GCM_SHA256"),
        "the server's first TLS 1.3 suite:\n{out}"
    );
    for (args, cipher) in [
        (
            ["-tls1_2", "-sigalgs", "ECDSA+SHA256"],
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            ["-tls1_2", "-sigalgs", "RSA+SHA256"],
            "ECDHE-RSA-AES128-GCM-SHA256",
        ),
    ] {
        let out = s_client(
            a,
            &[args[0], args[1], args[2], "-servername", "a.example.com"],
        );
        assert!(
            has(&out, &format!("Cipher is {cipher}")),
            "{args:?}:\n{out}"
        );
        assert!(
            !has(&out, "TLS session ticket:"),
            "no session ticket with tickets off:\n{out}"
        );
    }
    // Resumption through the server's session cache (TLS 1.2 session id).
    let sess = s.dir.join("sess.pem");
    let first = s_client(a, &["-tls1_2", "-sess_out", sess.to_str().unwrap()]);
    assert!(has(&first, "New, TLSv1.2"), "{first}");
    let second = s_client(a, &["-tls1_2", "-sess_in", sess.to_str().unwrap()]);
    assert!(
        has(&second, "Reused, TLSv1.2"),
        "resumed from the session cache:\n{second}"
    );
    let out = s_client(a, &["-tls1_3"]);
    assert!(has(&out, "TLSv1.3"), "{out}");
}

#[test]
fn sni_alpn_and_http_versions() {
    let s = setup();
    let subject = |name: &str| {
        let out = s_client(s.addr, &["-servername", name]);
        out.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or("")
            .to_owned()
    };
    assert!(subject("a.example.com").contains("a.example.com"));
    assert!(
        subject("x.wild.example.com").contains("a.example.com"),
        "wildcard"
    );
    assert!(
        subject("b.example.org").contains("b.example.org"),
        "Kubernetes secret layout"
    );
    assert!(
        subject("unknown.test").contains("a.example.com"),
        "default certificate"
    );
    let alpn = s_client(s.addr, &["-alpn", "h2,http/1.1"]);
    assert!(has(&alpn, "ALPN protocol: h2"), "{alpn}");
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args([
                "-sk",
                flag,
                "-w",
                " %{http_version}",
                &format!("https://{}/v", s.addr),
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.starts_with("origin /v xff=127.0.0.1") && out.ends_with(&format!(" {want}")),
            "{flag}: {out}"
        );
    }
}

#[test]
fn a_certificate_replaced_on_disk_serves_new_connections_and_open_ones_continue() {
    let s = setup();
    // An open TLS connection (h2 keep-alive through curl would close; openssl keeps it open).
    let mut open = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &s.addr.to_string(),
            "-servername",
            "b.example.org",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let other = s.dir.join("other");
    let (c, k) = cert(
        &s.dir,
        "b2",
        "ec",
        "b.example.org",
        "DNS:b.example.org,DNS:renewed.example.org",
    );
    std::fs::rename(k, other.join("tls.key")).unwrap();
    std::fs::rename(c, other.join("tls.crt")).unwrap();
    let renewed = wait_until(Duration::from_secs(5), || {
        let out = s_client(s.addr, &["-servername", "renewed.example.org"]);
        out.lines()
            .any(|l| l.starts_with("subject=") && l.contains("b.example.org"))
    });
    assert!(
        renewed,
        "the new certificate (with a new name) is served to new connections"
    );
    let mut stdin = open.stdin.take().unwrap();
    stdin
        .write_all(b"GET /still-open HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    drop(stdin);
    let out = open.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("origin /still-open"),
        "the connection opened before the swap still works"
    );
    // A broken certificate is refused and the last good one keeps serving.
    std::fs::write(other.join("tls.crt"), "not a certificate").unwrap();
    let refused = r#"floodgate_tls_certificate_reloads_total{listener="https",result="failed"}"#;
    assert!(
        wait_until(Duration::from_secs(10), || {
            http_get(s.admin, "a", "/metrics")
                .is_ok_and(|(_, m)| metric(&m, refused).is_some_and(|n| n >= 1.0))
        }),
        "the broken certificate was not read"
    );
    let out = s_client(s.addr, &["-servername", "renewed.example.org"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("subject=") && l.contains("b.example.org")),
        "{out}"
    );
}

#[test]
fn ocsp_is_stapled_from_a_file_and_handshakes_are_counted() {
    let s = setup();
    let a = s.addr;
    let ecdsa12 = [
        "-tls1_2",
        "-sigalgs",
        "ECDSA+SHA256",
        "-servername",
        "a.example.com",
    ];
    let before = s_client(a, &[&ecdsa12[..], &["-status"]].concat());
    assert!(has(&before, "OCSP response: no response sent"), "{before}");
    // The response appears beside the certificate while floodgate runs: picked up like a
    // renewed certificate.
    ocsp_response(&s.dir, "ec");
    let stapled = wait_until(Duration::from_secs(5), || {
        has(
            &s_client(a, &[&ecdsa12[..], &["-status"]].concat()),
            "OCSP Response Status: successful",
        )
    });
    assert!(stapled, "the OCSP response is stapled after it appears");
    let out = s_client(a, &[&ecdsa12[..], &["-status"]].concat());
    assert!(has(&out, "Cert Status: good"), "{out}");
    // A garbage response is refused; the good one keeps being stapled.
    std::fs::write(s.dir.join("ec.crt.ocsp"), b"garbage").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = s_client(a, &[&ecdsa12[..], &["-status"]].concat());
    assert!(has(&out, "Cert Status: good"), "{out}");

    // Handshakes by result, version and cipher.
    for _ in 0..2 {
        assert!(has(&s_client(a, &["-tls1_1"]), "Cipher is (NONE)"));
    }
    let tls13 = s_client(a, &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]);
    assert!(has(&tls13, "TLSv1.3"), "{tls13}");
    let (status, m) = http_get(s.admin, "a", "/metrics").unwrap();
    assert_eq!(status, 200);
    let v = |k: &str| metric(&m, k).unwrap_or_else(|| panic!("no {k} in\n{m}"));
    // 1 before + at least 1 while waiting + 1 checked + 1 after the garbage.
    assert!(
        v(
            r#"floodgate_tls_handshakes_total{cipher="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",listener="https",result="ok",version="TLSv1.2"}"#
        ) >= 4.0
    );
    assert_eq!(
        v(
            r#"floodgate_tls_handshakes_total{cipher="TLS13_AES_128_GCM_SHA256",listener="https",result="ok",version="TLSv1.3"}"#
        ),
        1.0
    );
    // The two TLS 1.1 attempts, and setup's readiness probe (a TCP connect, then close).
    assert_eq!(
        v(
            r#"floodgate_tls_handshakes_total{cipher="",listener="https",result="failed",version=""}"#
        ),
        3.0
    );
    assert!(v(r#"floodgate_tls_handshake_duration_seconds_count{listener="https"}"#) >= 5.0);
    assert_eq!(
        v(r#"floodgate_tls_ocsp_stapled{key="ecdsa",listener="https",name="a.example.com"}"#),
        1.0
    );
    // The RSA sibling of the same name is its own series, without a staple.
    assert_eq!(
        v(r#"floodgate_tls_ocsp_stapled{key="rsa",listener="https",name="a.example.com"}"#),
        0.0
    );
    assert_eq!(
        v(r#"floodgate_tls_certificate_reloads_total{listener="https",result="ok"}"#),
        1.0
    );
    assert_eq!(
        v(r#"floodgate_tls_certificate_reloads_total{listener="https",result="failed"}"#),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = v(
        r#"floodgate_tls_certificate_expiry_timestamp_seconds{key="ecdsa",listener="https",name="b.example.org"}"#,
    );
    // The test certificates are made for 2 days.
    assert!(
        expiry > now + 86_400.0 && expiry < now + 3.0 * 86_400.0,
        "{expiry}"
    );
    promtool_check_metrics(&m).unwrap_or_else(|e| panic!("promtool: {e}\n{m}"));
    let undocumented = floodgate_tests::undocumented_families(&m);
    assert!(
        undocumented.is_empty(),
        "not in docs/observability.md: {undocumented:?}"
    );
}

/// `listeners[].passthrough`: a ClientHello naming a passthrough host reaches the backend's own
/// TLS server untouched (its certificate, its answer); other names are terminated here, on the
/// same port; a backend that cannot be reached closes the connection, counted.
#[test]
fn passthrough_hosts_reach_their_own_tls_server() {
    let dir = temp_file("passthrough/x", "")
        .parent()
        .unwrap()
        .to_path_buf();
    let (ours, our_key) = cert(&dir, "ours", "ec", "a.example.com", "DNS:a.example.com");
    let (theirs, their_key) = cert(
        &dir,
        "theirs",
        "ec",
        "vault.example.com",
        "DNS:vault.example.com",
    );
    let sni_port = free_port();
    let (vault_port, dead_port, port, admin_port, op) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _vault = Proc::spawn(
        "openssl s_server",
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(vault_port.to_string())
            .arg("-cert")
            .arg(&theirs)
            .arg("-key")
            .arg(&their_key)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let _origin = spawn_origin(op, "origin");
    let config = temp_file(
        "passthrough/fg.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
listeners:
  - name: https
    bind: 127.0.0.1:{port}
    default-backend: app
    tls: {{ certificates: [{{ cert: {}, key: {} }}] }}
    passthrough:
      - {{ host: vault.example.com, backend: vault }}
      - {{ host: '*.gone.example.com', backend: gone }}
  # No certificates: only carries TLS by SNI.
  - name: sni
    bind: 127.0.0.1:{sni_port}
    passthrough: [{{ host: vault.example.com, backend: vault }}]
backends:
  - {{ name: app, servers: ['127.0.0.1:{op}'] }}
  - {{ name: vault, servers: ['127.0.0.1:{vault_port}'] }}
  - {{ name: gone, servers: ['127.0.0.1:{dead_port}'] }}
",
            ours.display(),
            our_key.display()
        ),
    );
    let _fg = spawn_floodgate(&config);
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (addr, admin) = (at(port), at(admin_port));
    for a in [addr, admin, at(vault_port), at(op), at(sni_port)] {
        assert!(
            wait_for_port(a, Duration::from_secs(10)),
            "{a} is not listening"
        );
    }

    // The backend's own server answers, with its own certificate.
    let out = s_client(addr, &["-servername", "vault.example.com"]);
    assert!(
        has(&out, "CN = vault.example.com") || has(&out, "CN=vault.example.com"),
        "{out}"
    );
    // s_client may quit at its input's end before the page arrives: curl reads the page.
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&theirs)
        .args(["--resolve", &format!("vault.example.com:{port}:127.0.0.1")])
        .arg(format!("https://vault.example.com:{port}/"))
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(String::from_utf8_lossy(&curl.stdout).contains("s_server"));

    // Another name on the same port is terminated here and proxied.
    let out = s_client(addr, &["-servername", "a.example.com"]);
    assert!(
        has(&out, "CN = a.example.com") || has(&out, "CN=a.example.com"),
        "{out}"
    );
    let (status, _) = http_get_tls(addr, &ours, "a.example.com", port);
    assert_eq!(status, 200);

    // A listener without certificates carries its host, and closes on any other name.
    let out = s_client(at(sni_port), &["-servername", "vault.example.com"]);
    assert!(
        has(&out, "CN = vault.example.com") || has(&out, "CN=vault.example.com"),
        "{out}"
    );
    let out = s_client(at(sni_port), &["-servername", "a.example.com"]);
    assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");

    // A passthrough host whose server is gone: the connection closes, counted.
    let out = s_client(addr, &["-servername", "x.gone.example.com"]);
    assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");

    let scrape = || http_get(admin, "a", "/metrics").unwrap().1;
    let closed =
        r#"floodgate_tcp_connections_total{backend="vault",listener="https",result="closed"}"#;
    let failed = r#"floodgate_tcp_connections_total{backend="gone",listener="https",result="connect_failed"}"#;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = scrape();
            let unknown = r#"floodgate_tcp_connections_total{backend="",listener="sni",result="unknown_host"}"#;
            metric(&m, closed) == Some(2.0)
                && metric(&m, failed) == Some(1.0)
                // The other name, and wait_for_port's probe, which sent none.
                && metric(&m, unknown) == Some(2.0)
        }),
        "{}",
        scrape()
    );
}

/// An HTTPS GET of `/` with curl, trusting `ca`, for `host` resolved to `addr`.
fn http_get_tls(addr: SocketAddr, ca: &Path, host: &str, port: u16) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:{}", addr.ip())])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}
