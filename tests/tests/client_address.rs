//! Who the client is, through the real binary. `listeners[].proxy-protocol`: clients named by
//! PROXY protocol v1 and v2 headers become the connection's client for the forwarding headers
//! and route `allow` lists; a header is read before TLS; connections without a usable header
//! are closed and counted, and peers outside `from` cannot name another client.
//! `listeners[].forwarded-headers`: a trusted proxy's `X-Forwarded-For` names the client for
//! the same, and for rate limits. No root.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::Arc,
    time::Duration,
};

use floodgate_tests::{
    free_port, http_get, http_raw, metric, spawn_floodgate, spawn_origin, temp_file, wait_for_port,
    wait_until,
};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY (or LOCAL) block for a TCP client, with some TLV bytes after the addresses.
fn v2(local: bool, source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    let mut b = V2_SIGNATURE.to_vec();
    b.push(if local { 0x20 } else { 0x21 });
    b.push(family);
    let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&addresses);
    b.extend_from_slice(tlvs);
    b
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `header` then `request` on one new connection: the status and the body.
fn proxied(addr: SocketAddr, header: &[u8], request: &[u8]) -> (u16, String) {
    let (status, _, body) = http_raw(addr, &[header, request].concat()).unwrap();
    (status, body)
}

fn has(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

/// A v1 header naming `source`, then an HTTPS GET of `/headers` with rustls over the same
/// connection, trusting `crt`: the body.
fn tls_after_header(addr: SocketAddr, crt: &Path, source: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(crt).unwrap();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("a.example.com").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(sock, "PROXY TCP4 {source} 10.0.0.1 40000 443\r\n").unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(&get("/headers")).unwrap();
    let mut out = Vec::new();
    // The server's close may come without close_notify; what was read is what counts.
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn clients_named_by_proxy_headers_are_the_clients() {
    let (op, port, direct_port, tls_port, admin_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _origin = spawn_origin(op, "o");
    let dir = temp_file("pp/x", "").parent().unwrap().to_path_buf();
    let (crt, key) = floodgate_tests::self_signed(
        &dir,
        "pp",
        "ec",
        "a.example.com",
        "DNS:a.example.com",
        false,
    );
    let config = temp_file(
        "pp/fg.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin_port}' }}
listeners:
  - {{ name: lb, bind: '127.0.0.1:{port}', default-backend: app, proxy-protocol: {{}} }}
  - name: direct
    bind: '127.0.0.1:{direct_port}'
    default-backend: app
    proxy-protocol: {{ from: [10.0.0.0/8] }}
  - name: lb-tls
    bind: '127.0.0.1:{tls_port}'
    default-backend: app
    proxy-protocol: {{ from: [127.0.0.0/8] }}
    tls: {{ certificates: [{{ cert: {}, key: {} }}] }}
routes:
  - {{ path-prefix: /office, allow: [192.0.2.0/24], backend: app }}
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
",
            crt.display(),
            key.display()
        ),
    );
    let _fg = spawn_floodgate(&config);
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (addr, direct, tls, admin) = (at(port), at(direct_port), at(tls_port), at(admin_port));
    for a in [addr, direct, tls, admin, at(op)] {
        assert!(
            wait_for_port(a, Duration::from_secs(10)),
            "{a} is not listening"
        );
    }

    // v1: the client and the port it connected to on the load balancer.
    let (status, body) = proxied(
        addr,
        b"PROXY TCP4 192.0.2.7 203.0.113.1 51000 8443\r\n",
        &get("/headers"),
    );
    assert_eq!(status, 200, "{body}");
    for line in [
        "x-forwarded-for: 192.0.2.7",
        "x-real-ip: 192.0.2.7",
        "x-forwarded-port: 8443",
    ] {
        assert!(has(&body, line), "{line}: {body}");
    }

    // v2 over IPv6, with TLVs (cloud load balancers add some), and two requests on the
    // connection: both are the named client's.
    let source = SocketAddr::new("2001:db8::7".parse::<Ipv6Addr>().unwrap().into(), 40000);
    let destination = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 443);
    let tlvs = [0x04, 0x00, 0x05, 1, 2, 3, 4, 5]; // PP2_TYPE_NOOP
    let keep = b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    let two = [v2(false, source, destination, &tlvs), keep, get("/headers")].concat();
    let (status, _, body) = http_raw(addr, &two).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.matches("x-real-ip: 2001:db8::7\n").count(),
        2,
        "{body}"
    );
    assert_eq!(body.matches("x-forwarded-port: 443\n").count(), 2, "{body}");

    // Route `allow` lists see the named client, not the load balancer.
    let (status, _) = proxied(
        addr,
        b"PROXY TCP4 192.0.2.9 10.0.0.1 1 80\r\n",
        &get("/office/x"),
    );
    assert_eq!(status, 200);
    let (status, _) = proxied(
        addr,
        b"PROXY TCP4 198.51.100.1 10.0.0.1 1 80\r\n",
        &get("/office/x"),
    );
    assert_eq!(status, 403);

    // LOCAL (a load balancer's health check): the connection's own address stands.
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let (status, body) = proxied(
        addr,
        &v2(true, unspecified, unspecified, &[]),
        &get("/headers"),
    );
    assert_eq!(status, 200);
    assert!(has(&body, "x-real-ip: 127.0.0.1"), "{body}");

    // No header, or a bad one: closed without an answer, whatever the request.
    for (header, request) in [
        (&b""[..], get("/headers")),
        (
            b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 80\r\n",
            get("/headers"),
        ),
    ] {
        // Closed with the request unread, the kernel may answer a reset rather than a FIN.
        match http_raw(addr, &[header, &request].concat()) {
            Ok((status, head, _)) => assert_eq!((status, head.as_str()), (0, ""), "{header:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    // A peer outside `from` is its own client, and cannot name another one: its header is
    // not a request.
    let (status, body) = http_get(direct, "t", "/headers").unwrap();
    assert_eq!(status, 200);
    assert!(has(&body, "x-real-ip: 127.0.0.1"), "{body}");
    let (status, _) = proxied(direct, b"PROXY TCP4 192.0.2.7 10.0.0.1 1 80\r\n", &get("/"));
    assert_eq!(status, 400);

    // The header comes before TLS: rustls after a v1 header, and curl's own PROXY header.
    let body = tls_after_header(tls, &crt, "192.0.2.44");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(has(&body, "x-forwarded-for: 192.0.2.44"), "{body}");
    assert!(has(&body, "x-forwarded-proto: https"), "{body}");
    let curl = Command::new("curl")
        .args(["-sS", "--http2", "--haproxy-protocol", "--cacert"])
        .arg(&crt)
        .args(["--resolve", &format!("a.example.com:{tls_port}:127.0.0.1")])
        .arg(format!("https://a.example.com:{tls_port}/headers"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(has(&out, "x-real-ip: 127.0.0.1"), "{out}");
    // Without the header, the handshake never starts.
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&crt)
        .args(["--resolve", &format!("a.example.com:{tls_port}:127.0.0.1")])
        .arg(format!("https://a.example.com:{tls_port}/headers"))
        .output()
        .unwrap();
    assert!(!curl.status.success());

    // Every header is counted by result.
    let sample = |result: &str| {
        format!("floodgate_proxy_protocol_headers_total{{listener=\"lb\",result=\"{result}\"}}")
    };
    let scrape = || http_get(admin, "a", "/metrics").unwrap().1;
    assert!(
        wait_until(Duration::from_secs(5), || {
            metric(&scrape(), &sample("invalid")) == Some(2.0)
        }),
        "{}",
        scrape()
    );
    let m = scrape();
    assert_eq!(metric(&m, &sample("proxied")), Some(4.0), "{m}");
    assert_eq!(metric(&m, &sample("local")), Some(1.0), "{m}");
    let tls_proxied =
        "floodgate_proxy_protocol_headers_total{listener=\"lb-tls\",result=\"proxied\"}";
    assert_eq!(metric(&m, tls_proxied), Some(2.0), "{m}");
}

/// A GET of `/headers` (or `path`) with `extra` header lines; the status and the body.
fn get_with(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
    let (status, _, body) = http_raw(addr, req.as_bytes()).unwrap();
    (status, body)
}

#[test]
fn a_trusted_proxys_forwarded_for_names_the_client() {
    let (op, port, other_port) = (free_port(), free_port(), free_port());
    let _origin = spawn_origin(op, "o");
    let config = temp_file(
        "fwd/fg.yaml",
        &format!(
            "
xdp: {{ enabled: false }}
listeners:
  - name: cdn
    bind: '127.0.0.1:{port}'
    default-backend: app
    forwarded-headers: {{ from: [127.0.0.0/8, 10.0.0.0/8] }}
    rate-limit: {{ per-source: 1, burst: 1 }}
  - name: open
    bind: '127.0.0.1:{other_port}'
    default-backend: app
    forwarded-headers: {{ from: [10.0.0.0/8] }}
routes:
  - {{ path-prefix: /office, allow: [192.0.2.0/24], backend: app }}
backends: [{{ name: app, servers: ['127.0.0.1:{op}'] }}]
"
        ),
    );
    let _fg = spawn_floodgate(&config);
    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (addr, open) = (at(port), at(other_port));
    for a in [addr, open, at(op)] {
        assert!(
            wait_for_port(a, Duration::from_secs(10)),
            "{a} is not listening"
        );
    }

    // The rightmost address that is not a trusted proxy is the client; what the client wrote
    // at the left is passed on but not believed. The proxy's scheme and host stand.
    let (status, body) = get_with(
        addr,
        "/headers",
        "X-Forwarded-For: 198.51.100.1, 192.0.2.7, 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example.com\r\n",
    );
    assert_eq!(status, 200, "{body}");
    for line in [
        "x-real-ip: 192.0.2.7",
        "x-forwarded-for: 198.51.100.1, 192.0.2.7, 10.9.9.9, 127.0.0.1",
        "x-forwarded-proto: https",
        "x-forwarded-host: shop.example.com",
    ] {
        assert!(has(&body, line), "{line}: {body}");
    }

    // Rate limits count the named client: 192.0.2.7 spent its one request above.
    let (status, _) = get_with(addr, "/", "X-Forwarded-For: 192.0.2.7\r\n");
    assert_eq!(status, 429);
    let (status, _) = get_with(addr, "/", "X-Forwarded-For: 192.0.2.8\r\n");
    assert_eq!(status, 200);

    // Route `allow` lists too.
    let (status, _) = get_with(addr, "/office/x", "X-Forwarded-For: 192.0.2.9\r\n");
    assert_eq!(status, 200);
    let (status, _) = get_with(addr, "/office/x", "X-Forwarded-For: 203.0.113.5\r\n");
    assert_eq!(status, 403);

    // A peer that is not a trusted proxy is the client, whatever its headers say.
    let (status, body) = get_with(
        open,
        "/headers",
        "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n",
    );
    assert_eq!(status, 200, "{body}");
    for line in [
        "x-real-ip: 127.0.0.1",
        "x-forwarded-for: 192.0.2.7, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: t",
    ] {
        assert!(has(&body, line), "{line}: {body}");
    }
}
