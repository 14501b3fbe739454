//! The floor of a proxy's CPU per request on this machine, for `cargo xtask bench floor`: two
//! proxies that do nothing a production ingress must do, measured against HAProxy and floodgate
//! with the same load (see docs/benchmarks.md, "What any proxy costs here").
//!
//! - `relay`: tokio, one server connection per client connection, the request head read with
//!   httparse and written on unchanged, the response read up to its Content-Length and written
//!   back. Four syscalls per request and almost no user time: the kernel's share alone.
//! - `hyper`: the same, but the client side served by hyper's HTTP/1.1 server (the issue's
//!   "HTTP on hyper 1.x"), the request head re-encoded from hyper's parts, the response handed
//!   to hyper as a full body. What hyper's server costs on top of the kernel.
//!
//! Neither routes, pools, rewrites headers, times out, counts or logs anything; both handle only
//! body-less requests and Content-Length responses and close the connection on anything else.
//! Never a proxy to run: a yardstick.
//!
//! Usage: `fg-floor relay|hyper LISTEN ORIGIN[,ORIGIN...]` (origins taken round robin per client
//! connection), one current-thread runtime, as each floodgate worker is.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

/// floodgate's allocator, so the floor is measured with what floodgate runs on.
#[global_allocator]
static GLOBAL: floodgate::allocator::Mimalloc = floodgate::allocator::Mimalloc;

const BUF: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, listen, origins] = args.as_slice() else {
        bail!("usage: fg-floor relay|hyper LISTEN ORIGIN[,ORIGIN...]");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN")?;
    let origins: Vec<SocketAddr> = origins
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("ORIGIN")?;
    if origins.is_empty() {
        bail!("no origin");
    }
    let hyper_side = match mode.as_str() {
        "relay" => false,
        "hyper" => true,
        other => bail!("unknown mode `{other}` (relay or hyper)"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let next = AtomicUsize::new(0);
        loop {
            let (client, _) = listener.accept().await?;
            let origin = origins[next.fetch_add(1, Ordering::Relaxed) % origins.len()];
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(server) = TcpStream::connect(origin).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                if hyper_side {
                    serve_hyper(client, server).await;
                } else {
                    let _ = relay(client, server).await;
                }
            });
        }
    })
}

/// Reads from `s` into `buf[..*n]` until `done` says how many bytes make the message.
async fn read_message(
    s: &mut TcpStream,
    buf: &mut [u8],
    done: impl Fn(&[u8]) -> Option<usize>,
) -> std::io::Result<Option<usize>> {
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            return Ok(None);
        }
        n += k;
        if let Some(len) = done(&buf[..n]) {
            return if len == n {
                Ok(Some(n))
            } else {
                Err(std::io::ErrorKind::InvalidData.into())
            };
        }
    }
}

fn request_end(b: &[u8]) -> Option<usize> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut h).parse(b) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        _ => None,
    }
}

/// The response's head length, its status and Content-Length, once the head is complete.
fn response_head(b: &[u8]) -> Option<(usize, u16, usize)> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut h);
    let Ok(httparse::Status::Complete(head)) = resp.parse(b) else {
        return None;
    };
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())?;
    Some((head, resp.code?, len))
}

fn response_end(b: &[u8]) -> Option<usize> {
    response_head(b)
        .map(|(head, _, len)| head + len)
        .filter(|end| *end <= b.len())
}

async fn relay(mut client: TcpStream, mut server: TcpStream) -> std::io::Result<()> {
    let (mut req, mut resp) = (vec![0u8; BUF], vec![0u8; BUF]);
    while let Some(n) = read_message(&mut client, &mut req, request_end).await? {
        server.write_all(&req[..n]).await?;
        let Some(m) = read_message(&mut server, &mut resp, response_end).await? else {
            return Ok(());
        };
        client.write_all(&resp[..m]).await?;
    }
    Ok(())
}

async fn serve_hyper(client: TcpStream, server: TcpStream) {
    let server = Arc::new(Mutex::new((server, vec![0u8; BUF])));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let server = server.clone();
        async move { exchange(&server, &req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(client), svc)
        .await;
}

async fn exchange(
    server: &Mutex<(TcpStream, Vec<u8>)>,
    req: &Request<Incoming>,
) -> std::io::Result<Response<Full<Bytes>>> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut guard = server.lock().await;
    let (stream, buf) = &mut *guard;
    stream.write_all(&head).await?;
    let Some(m) = read_message(stream, buf, response_end).await? else {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    };
    let (start, status, _) = response_head(&buf[..m]).ok_or(std::io::ErrorKind::InvalidData)?;
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut h);
    parsed
        .parse(&buf[..m])
        .map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut resp = Response::builder().status(status);
    for h in parsed.headers.iter() {
        // hyper writes its own framing and connection headers.
        if !h.name.eq_ignore_ascii_case("content-length")
            && !h.name.eq_ignore_ascii_case("connection")
        {
            resp = resp.header(h.name, h.value);
        }
    }
    resp.body(Full::new(Bytes::copy_from_slice(&buf[start..m])))
        .map_err(|_| std::io::ErrorKind::InvalidData.into())
}
