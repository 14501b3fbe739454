//! TLS to servers (`backends[].tls`): real rustls origins on 127.0.0.1 with certificates made
//! by the openssl CLI, and floodgate in front with XDP off (no root needed).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use floodgate_tests::{
    Proc, free_port, http_get, http_raw, metric, spawn_floodgate, temp_file, wait_for_port,
    wait_until,
};

fn openssl(args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// `openssl req` for a new P-256 key in `key`, CN `name`: a signing request in `out`, or with
/// `-x509` a self-signed certificate.
fn new_key(extra: &[&str], name: &str, key: &str, out: &str) {
    let subject = format!("/CN={name}");
    let mut args = vec![
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-subj",
        &subject,
        "-keyout",
        key,
        "-out",
        out,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}

/// A CA, and certificates it signed: (dir, ca.crt). `leaf(name, san)` makes `<name>.crt` and
/// `<name>.key`, usable by servers and by clients.
struct Ca {
    dir: PathBuf,
    name: &'static str,
}

impl Ca {
    fn new(dir: &Path, name: &'static str) -> Self {
        let ca = Self {
            dir: dir.to_path_buf(),
            name,
        };
        let (crt, key) = (
            ca.path(&format!("{name}.crt")),
            ca.path(&format!("{name}.key")),
        );
        new_key(&["-x509", "-days", "2"], name, &key, &crt);
        ca
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn crt(&self) -> String {
        self.path(&format!("{}.crt", self.name))
    }

    fn leaf(&self, name: &str, san: &str) -> (String, String) {
        let (crt, key, csr, ext) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.csr")),
            self.path(&format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        new_key(&[], name, &key, &csr);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.crt(),
            "-CAkey",
            &self.path(&format!("{}.key", self.name)),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        (crt, key)
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    temp_file(&format!("{tag}-{}/x", N.fetch_add(1, SeqCst)), "")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One TLS connection to an origin, as it saw it.
#[derive(Clone, Debug)]
struct Handshake {
    sni: Option<String>,
    alpn: Option<String>,
    client_cert: bool,
}

/// What a TLS origin saw: its connections, and each request's HTTP version.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    handshakes: Mutex<Vec<Handshake>>,
    versions: Mutex<Vec<hyper::Version>>,
    /// gRPC health: SERVING while true.
    healthy: AtomicBool,
}

/// An HTTP/1.1 and HTTP/2 (by ALPN) origin over TLS with `cert`, asking for (not requiring) a
/// client certificate signed by `client_ca`. It answers every request with its body (or
/// `tls-origin` for an empty one) and a `grpc-status: 0` trailer, and the gRPC health
/// service from `Seen::healthy`.
fn tls_origin(
    rt: &tokio::runtime::Runtime,
    cert: &str,
    key: &str,
    client_ca: &str,
) -> (SocketAddr, Arc<Seen>) {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let pem = |p: &str| std::fs::read(p).unwrap();
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem(cert))
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&pem(key)).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem(client_ca)) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen {
        healthy: AtomicBool::new(true),
        ..Seen::default()
    });
    let s = seen.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            s.accepted.fetch_add(1, SeqCst);
            let (s, acceptor) = (s.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let c = tls.get_ref().1;
                s.handshakes.lock().unwrap().push(Handshake {
                    sni: c.server_name().map(str::to_owned),
                    alpn: c
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                    client_cert: c.peer_certificates().is_some_and(|p| !p.is_empty()),
                });
                let s2 = s.clone();
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s2.clone();
                        async move {
                            s.versions.lock().unwrap().push(req.version());
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let data = if req.uri().path() == "/grpc.health.v1.Health/Check" {
                                let status = if s.healthy.load(SeqCst) { 1 } else { 2 };
                                bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])
                            } else {
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                if body.is_empty() {
                                    bytes::Bytes::from_static(b"tls-origin")
                                } else {
                                    body
                                }
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(data)
                                    .map_err(|never| match never {})
                                    .with_trailers(async move { Some(Ok(trailers)) }),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// floodgate on a free port with one listener routing `Host: <backend name>` to each of
/// `backends` (YAML, each a list item), and an admin listener.
fn floodgate(dir: &Path, backends: &str, routes: &str) -> (Proc, SocketAddr, SocketAddr) {
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("fg.yaml");
    std::fs::write(
        &config,
        format!(
            "
global: {{ nbthread: 1 }}
xdp: {{ enabled: false }}
admin: {{ bind: '127.0.0.1:{admin}' }}
listeners: [{{ name: http, bind: '127.0.0.1:{port}' }}]
routes:
{routes}
backends:
{backends}
"
        ),
    )
    .unwrap();
    let fg = spawn_floodgate(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "floodgate did not listen"
    );
    (fg, addr, format!("127.0.0.1:{admin}").parse().unwrap())
}

fn post(addr: SocketAddr, host: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_raw(addr, req.as_bytes()).unwrap();
    (status, body)
}

/// Over TLS, floodgate checks the server's certificate against `ca-file` and the server name,
/// sends that name as SNI, keeps connections for reuse on both HTTP/1.1 paths (the direct
/// one for GET, hyper's pool for POST), and presents a client certificate when configured.
/// A certificate from another CA is refused (502), unless `verify: none`.
#[test]
fn servers_over_tls_are_verified_reused_and_named() {
    let dir = fresh_dir("server-tls");
    let (ca, other) = (Ca::new(&dir, "ca"), Ca::new(&dir, "other-ca"));
    let (crt, key) = ca.leaf("api", "DNS:api.internal,IP:127.0.0.1");
    let (client_crt, client_key) = ca.leaf("floodgate-client", "DNS:floodgate.client");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (origin, seen) = tls_origin(&rt, &crt, &key, &ca.crt());
    let backends = format!(
        "
  - name: named
    tls: {{ ca-file: '{ca}', server-name: api.internal }}
    servers: ['{origin}']
  - name: by-address
    tls: {{ ca-file: '{ca}', cert: '{client_crt}', key: '{client_key}' }}
    servers: ['{origin}']
  - name: wrong-ca
    tls: {{ ca-file: '{other}', server-name: api.internal }}
    passive: {{ fall: 0 }}
    servers: ['{origin}']
  - name: unverified
    tls: {{ verify: none, server-name: elsewhere.example }}
    servers: ['{origin}']
",
        ca = ca.crt(),
        other = other.crt()
    );
    let routes = "
  - { host: named, backend: named }
  - { host: by-address, backend: by-address }
  - { host: wrong-ca, backend: wrong-ca }
  - { host: unverified, backend: unverified }
";
    let (_fg, addr, admin) = floodgate(&dir, &backends, routes);

    // `named`: 5 GETs (direct path) and 3 POSTs (pooled path), each from a new client
    // connection, over 2 server connections.
    for i in 0..5 {
        assert_eq!(
            http_get(addr, "named", "/").unwrap(),
            (200, "tls-origin".into()),
            "GET {i}"
        );
    }
    for i in 0..3 {
        assert_eq!(
            post(addr, "named", &format!("p{i}")),
            (200, format!("p{i}"))
        );
    }
    assert_eq!(seen.accepted.load(SeqCst), 2, "server connections reused");
    // Past the 2 s sweep, which must not take a kept TLS connection for a closed one.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(http_get(addr, "named", "/").unwrap().0, 200);
    assert_eq!(post(addr, "named", "again"), (200, "again".into()));
    assert_eq!(
        seen.accepted.load(SeqCst),
        2,
        "kept connections survive the sweep"
    );
    for h in seen.handshakes.lock().unwrap().iter() {
        assert_eq!(h.sni.as_deref(), Some("api.internal"));
        assert_eq!(h.alpn.as_deref(), Some("http/1.1"));
        assert!(!h.client_cert);
    }

    // `by-address`: the certificate is checked against the address (IP SAN), no SNI goes out,
    // and the client certificate is presented.
    seen.handshakes.lock().unwrap().clear();
    assert_eq!(http_get(addr, "by-address", "/").unwrap().0, 200);
    assert_eq!(post(addr, "by-address", "x"), (200, "x".into()));
    let hs = seen.handshakes.lock().unwrap().clone();
    assert!(!hs.is_empty());
    for h in &hs {
        assert_eq!(h.sni, None, "no SNI for an address");
        assert!(h.client_cert, "client certificate presented");
    }

    // `wrong-ca`: refused on both paths; `verify: none` takes the same certificate even
    // under another name.
    assert_eq!(http_get(addr, "wrong-ca", "/").unwrap().0, 502);
    assert_eq!(post(addr, "wrong-ca", "x").0, 502);
    assert_eq!(http_get(addr, "unverified", "/").unwrap().0, 200);
    let m = http_get(admin, "x", "/metrics").unwrap().1;
    let refused = metric(
        &m,
        r#"floodgate_http_errors_total{backend="wrong-ca",kind="connect",listener="http"}"#,
    );
    assert_eq!(refused, Some(2.0), "counted as connect errors");
    assert!(http_get(addr, "named", "/").unwrap().0 == 200);
    drop(rt);
}

/// `proto: h2` over TLS: ALPN h2, gRPC trailers back to an HTTP/2 client, and gRPC health
/// checks over the same TLS.
#[test]
fn h2_servers_over_tls_get_alpn_h2_and_grpc_checks() {
    use http_body_util::BodyExt as _;
    let dir = fresh_dir("server-tls-h2");
    let ca = Ca::new(&dir, "ca");
    let (crt, key) = ca.leaf("grpc", "DNS:grpc.internal");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (origin, seen) = tls_origin(&rt, &crt, &key, &ca.crt());
    let backends = format!(
        "
  - name: grpc
    proto: h2
    tls: {{ ca-file: '{}', server-name: grpc.internal }}
    health-check: {{ type: grpc, interval: 200ms, rise: 1, fall: 1 }}
    servers: ['{origin}']
",
        ca.crt()
    );
    let (_fg, addr, _) = floodgate(&dir, &backends, "  - { backend: grpc }");
    let call = || {
        rt.block_on(async {
            let mut send = floodgate_tests::h2_client(addr).await;
            let req = hyper::Request::post("http://grpc.example/pkg.Svc/Call")
                .header("te", "trailers")
                .header("content-type", "application/grpc")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"hello",
                )))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap();
            let grpc = body
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_owned());
            (status, body.to_bytes(), grpc)
        })
    };
    let (status, body, grpc) = call();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello");
    assert_eq!(grpc.as_deref(), Some("0"), "trailers pass");
    assert!(
        seen.versions
            .lock()
            .unwrap()
            .contains(&hyper::Version::HTTP_2)
    );
    let hs = seen.handshakes.lock().unwrap().clone();
    assert!(!hs.is_empty());
    for h in &hs {
        assert_eq!(h.sni.as_deref(), Some("grpc.internal"));
        assert_eq!(h.alpn.as_deref(), Some("h2"));
    }
    // The checks speak TLS too: NOT_SERVING takes the server out, SERVING brings it back.
    seen.healthy.store(false, SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || http_get(addr, "x", "/")
            .unwrap()
            .0
            == 503),
        "a NOT_SERVING server is taken out"
    );
    seen.healthy.store(true, SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || call().0 == 200),
        "SERVING brings it back"
    );
}

/// A `ca-file` without a certificate refuses the config: `floodgate check` names the key.
#[test]
fn a_backend_ca_file_without_certificates_is_refused_by_check() {
    let dir = fresh_dir("server-tls-check");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let config = dir.join("fg.yaml");
    std::fs::write(
        &config,
        format!(
            "
xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:1', default-backend: app }}]
backends:
  - name: app
    tls: {{ ca-file: '{}' }}
    servers: ['127.0.0.1:2']
",
            empty.display()
        ),
    )
    .unwrap();
    let out = Command::new(floodgate_tests::bin("floodgate"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("backends[0].tls.ca-file"), "{text}");
}
