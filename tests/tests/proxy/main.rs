//! The L7 proxy's HAProxy semantics with real sockets on 127.0.0.1 and real origins, one
//! test binary with a module per topic:
//! - `pool`: per-server maxconn, the queue and `timeout queue`, health, retries, sticky sessions
//! - `lifecycle`: reloads and drains
//! - `client_side`: client timeouts, request and connection limits, upgrades, h2c, Expect
//! - `server_side`: server connection reuse and framing, `timeout server`, HTTP/2 backends
//! - `rules`: rate limits, header rules, auth, basic auth, redirects, mirrors, compression
//! - `carried`: `mode: tcp` and `send-proxy`
//!
//! The helpers below are shared by them. XDP is disabled here (these need no root); every load
//! is bounded in count and time.

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

/// Sends one keep-alive GET on `s` and reads its response (content-length framed).
fn keepalive_get(s: &mut std::net::TcpStream, path: &str) -> std::io::Result<String> {
    use std::io::Write as _;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")?;
    read_response(s)
}

/// Reads one response (content-length framed) from `s`.
fn read_response(s: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::Read as _;
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

fn listener_maxconn_case(threads: u32, reuseport: bool) {
    use std::io::{Read as _, Write as _};
    let (p, port) = (free_port(), free_port());
    let _o = origin(p, "o");
    let (admin_yaml, admin) = admin_listener();
    let config = temp_file(
        &format!("lmax-{threads}.yaml"),
        &format!(
            "
global: {{ nbthread: {threads} }}
xdp: {{ enabled: false }}
{admin_yaml}
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
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    assert!(wait_for_connections(admin, "http", 0));
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    assert!(wait_for_connections(admin, "http", 2), "both held");
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
                        // No answer at all for longer than `timeout server`.
                        "/silent" => {
                            std::thread::sleep(Duration::from_secs(3));
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

/// An admin listener on a free port: its YAML, and its address.
fn admin_listener() -> (String, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (format!("admin: {{ bind: '{addr}' }}"), addr)
}

/// The sample `sample` on `admin`'s /metrics; `None` while absent or unreachable.
fn scrape(admin: SocketAddr, sample: &str) -> Option<f64> {
    floodgate_tests::metric(&http_get(admin, "a", "/metrics").ok()?.1, sample)
}

/// Waits (10 s at most) until the file `log` holds `needle` `count` times.
fn wait_for_log(log: &std::path::Path, needle: &str, count: usize) -> bool {
    floodgate_tests::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.matches(needle).count() >= count)
    })
}

/// Waits (5 s at most) until `listener` holds `n` connections: a probe of `wait_for_port`
/// counts until floodgate sees it closed.
fn wait_for_connections(admin: SocketAddr, listener: &str, n: u32) -> bool {
    let sample = format!("floodgate_listener_active_connections{{listener=\"{listener}\"}}");
    floodgate_tests::wait_until(Duration::from_secs(5), || {
        scrape(admin, &sample) == Some(f64::from(n))
    })
}

mod carried;
mod client_side;
mod lifecycle;
mod pool;
mod rules;
mod server_side;
