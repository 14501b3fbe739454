//! A test and demo origin: answers every request with 200 and a body naming itself and the
//! path, records its peak concurrency, and on SIGTERM prints `requests=N peak=M` and exits.
//!
//! `/delay/<ms>` waits that long before answering (for timeout, queue and maxconn tests);
//! `/big/<bytes>` answers that many bytes.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

#[derive(Parser)]
struct Args {
    /// Address to listen on (127.0.0.1 or a test namespace's address).
    #[arg(long)]
    listen: SocketAddr,
    /// Name put in each response body.
    #[arg(long, default_value = "origin")]
    name: String,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    /// Request body bytes received, over all requests.
    body_bytes: AtomicU64,
    current: AtomicU64,
    peak: AtomicU64,
}

async fn answer(
    c: Arc<Counters>,
    name: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // `Upgrade: echo` or `websocket`: switch protocols, then echo every byte back (no
    // WebSocket framing: the tests look at the tunnel, not at the protocol inside).
    let upgrade = req.headers().get("upgrade").cloned();
    if let Some(protocol) = upgrade.filter(|v| v == "echo" || v == "websocket") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert("upgrade", protocol);
        resp.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        return Ok(resp);
    }
    c.requests.fetch_add(1, Ordering::Relaxed);
    // `.../headers`: the request's headers as the origin got them, a line each, sorted.
    if req.uri().path().ends_with("/headers") {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        lines.sort();
        return Ok(Response::new(Full::new(Bytes::from(lines.concat()))));
    }
    // `/text/N`: N bytes of HTML (at most 16 MiB) with a strong ETag, for compression tests.
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/text/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let line = b"<p>floodgate compresses what its servers send</p>\n";
        let body: Vec<u8> = line.iter().copied().cycle().take(n.min(16 << 20)).collect();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        let h = resp.headers_mut();
        h.insert(
            "content-type",
            hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert("etag", hyper::header::HeaderValue::from_static("\"t1\""));
        return Ok(resp);
    }
    // `/big/<bytes>`: that many bytes (up to 256 MiB), for clients that stop reading.
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/big/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Ok(Response::new(Full::new(Bytes::from(vec![
            b'x';
            n.min(256 << 20)
        ]))));
    }
    let now = c.current.fetch_add(1, Ordering::Relaxed) + 1;
    c.peak.fetch_max(now, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    // What the application was asked for: the path and query as they arrived.
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    let prefix = req
        .headers()
        .get("x-forwarded-prefix")
        .and_then(|v| v.to_str().ok())
        .map(|p| format!(" prefix={p}"))
        .unwrap_or_default();
    let cookies: Vec<&str> = req
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let cookie = if cookies.is_empty() {
        String::new()
    } else {
        format!(" cookie={}", cookies.join("; "))
    };
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    c.current.fetch_sub(1, Ordering::Relaxed);
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // Read the whole body before answering, as a real application does: a body that breaks
    // off (a proxy cutting it at its limit) gets no answer.
    let body = match http_body_util::BodyExt::collect(req.into_body()).await {
        Ok(b) => {
            let n = b.to_bytes().len();
            c.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
            n
        }
        Err(_) => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"broken body\n")));
            *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
    };
    let body = if body > 0 {
        format!(" body={body}")
    } else {
        String::new()
    };
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{name} {target} xff={xff}{body}{prefix}{cookie}\n"
    )))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let counters = Arc::new(Counters::default());
    let name: Arc<str> = args.name.into();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    eprintln!("fg-origin listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let (c, n) = (counters.clone(), name.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(c.clone(), n.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
    println!(
        "requests={} peak={} body_bytes={}",
        counters.requests.load(Ordering::Relaxed),
        counters.peak.load(Ordering::Relaxed),
        counters.body_bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
