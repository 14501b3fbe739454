//! Talking to a running floodgate: ports, plain HTTP/1.1 and HTTP/2 requests, waiting for a
//! condition, reading /metrics and the access log.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::*;

/// Waits until `addr` accepts TCP connections, from the namespace the test runs in.
pub fn wait_for_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `f` until it returns true or `within` passes.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A port for a listener a test starts, free on 127.0.0.1 right now. Taken below the kernel's
/// ephemeral range (`ip_local_port_range`), so none of the test's own outgoing connections (a
/// load loop opens thousands) can be given it between this call and the bind, and never handed
/// out twice by one test process. (floodgate binds its listeners itself, so the test cannot
/// hold the socket for it; this makes the gap one no other part of the test can fall into.)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // 10000 up to the ephemeral range; each test binary starts at its own offset, so binaries
    // run one after another do not walk the same ports while the last one's are in TIME_WAIT.
    let (low, span) = (10_000, ephemeral_low.saturating_sub(10_000).max(1));
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Relaxed);
        let Ok(port) = u16::try_from(low + (start + n) % span) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {ephemeral_low}")
}

/// A plain HTTP/1.1 GET on a new connection (`Connection: close`); returns status and body.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    // One write, as real clients send a request: `write!` on the socket would send it in
    // pieces, and Nagle would hold the second until the server's delayed ACK (40 ms against
    // HAProxy, which does not ACK a partial request at once).
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sends `request` as it is on a new connection and reads until the server closes; returns
/// the status, the header block and the body.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String, String)> {
    http_raw_within(addr, request, Duration::from_secs(10))
}

/// [`http_raw`], waiting up to `wait` for each read.
pub fn http_raw_within(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(request)?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The value of the sample `name{labels}` in a Prometheus exposition (labels as written,
/// sorted by name); `None` when absent.
pub fn metric(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Runs `promtool check metrics` on an exposition; Err with promtool's complaint. promtool
/// missing is an error too: `cargo xtask setup` installs it.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (run `cargo xtask setup`): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The access log's events (target `floodgate::access`) in a JSON log.
pub fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["target"] == "floodgate::access")
        .collect()
}

/// Metric families of an exposition that docs/observability.md does not name (as `name`).
pub fn undocumented_families(exposition: &str) -> Vec<String> {
    let docs = std::fs::read_to_string(repo_root().join("docs/observability.md"))
        .expect("docs/observability.md");
    let mut missing: Vec<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !docs.contains(&format!("`{name}`")))
        .map(str::to_owned)
        .collect();
    missing.dedup();
    missing
}

/// An HTTP/2 client connection to `addr` (prior knowledge, in clear), driven by a task on the
/// current runtime.
pub async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to floodgate");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}
