//! HTTP/2 to servers (`proto: h2`, HAProxy's `proto h2`): gRPC and other servers that speak
//! only HTTP/2; in clear with prior knowledge, or over TLS with ALPN `h2`.
//!
//! Each worker thread keeps one connection per server and multiplexes every request to that
//! server over it, as streams. The server's SETTINGS_MAX_CONCURRENT_STREAMS bounds the streams
//! of one connection; floodgate's per-server maxconn still bounds the requests a server gets
//! (`pool.rs`), whatever the protocol. Trailers (gRPC's status) come back as body frames and
//! pass to the client untouched.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response, header};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::proxy::{
    body::UpstreamBody, error::ProxyError, upstream::connect::Dial, worker::PerWorker,
};

/// While a connection has requests open, a PING this often, and no answer within
/// `PING_TIMEOUT` closes it: a server whose host vanished sends no RST, and without this every
/// request on the connection would wait out `timeouts.server` (TCP gives up after ~15 min).
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One server's connection on one worker. The async lock is held while connecting, so the
/// requests that arrive meanwhile wait for that connection instead of each opening one.
type Slot = Arc<tokio::sync::Mutex<Option<Shared>>>;

/// One backend's HTTP/2 connections, one map per worker thread so a connection is driven by
/// the runtime its requests run on.
pub struct Conns {
    per_worker: PerWorker<HashMap<SocketAddr, Slot>>,
    dial: Dial,
    /// `timeouts.server-keep-alive`: a connection unused this long is let go.
    idle_timeout: Duration,
    /// Connections kept as of the last sweep, for metrics.
    open: AtomicUsize,
}

struct Shared {
    sender: http2::SendRequest<UpstreamBody>,
    last_used: Instant,
}

impl Conns {
    pub fn new(workers: usize, dial: Dial, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_worker: PerWorker::new(workers),
            dial,
            idle_timeout,
            open: AtomicUsize::new(0),
        })
    }

    /// Connections kept, as of the last sweep.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A handle on this worker's connection to `server`, and whether that connection was
    /// already open; a new connection when there is none, the last one closed (GOAWAY,
    /// server gone) or sat idle too long, or `fresh` asks for one.
    async fn sender(
        &self,
        worker: usize,
        server: SocketAddr,
        fresh: bool,
    ) -> Result<(http2::SendRequest<UpstreamBody>, bool), ProxyError> {
        let slot = self
            .per_worker
            .get(worker)
            .entry(server)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if !fresh
            && let Some(s) = slot.as_mut()
            && !s.sender.is_closed()
            && s.last_used.elapsed() < self.idle_timeout
        {
            s.last_used = Instant::now();
            return Ok((s.sender.clone(), true));
        }
        // Dropped here, the old handle lets its connection close after its last stream.
        *slot = None;
        let stream = self.dial.connect(server).await?;
        if !stream.speaks_h2() {
            return Err(ProxyError::Connect {
                server: server.to_string(),
                reason: "the server did not agree to HTTP/2 (ALPN h2)".into(),
            });
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect {
                server: server.to_string(),
                reason: format!("HTTP/2 handshake: {e}"),
            })?;
        // The connection's own task reads frames for every stream; it ends when the server
        // closes or every handle on it (the map's and in-flight requests') is gone.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%server, error = %e, "HTTP/2 server connection ended");
            }
        });
        *slot = Some(Shared {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        Ok((sender, false))
    }

    /// Sends `req` (its URI carrying the client's authority and the path) to `server`.
    pub async fn send(
        &self,
        worker: usize,
        server: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut sender, reused) = self.sender(worker, server, false).await?;
        let failed = |e: hyper::Error| {
            if e.is_canceled() {
                // Never sent (the connection went away first): safe to try elsewhere, which
                // the retry loop does only for requests without a body.
                ProxyError::Connect {
                    server: server.to_string(),
                    reason: format!("HTTP/2 connection closed before the request was sent: {e}"),
                }
            } else {
                ProxyError::Upstream {
                    server: server.to_string(),
                    reason: e.to_string(),
                }
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                // The kept connection went away before the request left (the server restarted,
                // its close not yet seen): once more on a new connection, body and all, since
                // nothing of it was sent.
                Some(req) if reused => {
                    let (mut sender, _) = self.sender(worker, server, true).await?;
                    sender
                        .try_send_request(req)
                        .await
                        .map_err(|e| failed(e.into_error()))
                }
                _ => Err(failed(e.into_error())),
            },
        }
    }

    /// Lets go of connections that closed or sat idle past `server-keep-alive`; each one
    /// closes when its last request is done.
    pub fn reap(&self) {
        let mut open = 0;
        for map in self.per_worker.each() {
            for slot in map.values() {
                // A slot in use is connecting or handing out its sender: kept, next sweep.
                let Ok(mut s) = slot.try_lock() else {
                    open += 1;
                    continue;
                };
                if s.as_ref().is_some_and(|s| {
                    s.sender.is_closed() || s.last_used.elapsed() >= self.idle_timeout
                }) {
                    *s = None;
                }
                open += usize::from(s.is_some());
            }
        }
        self.open.store(open, Ordering::Relaxed);
    }
}

/// `parts` as an HTTP/2 request: the client's host becomes `:authority` (HTTP/2 has no Host
/// header), the server's address when the client gave none; `te: trailers`, which gRPC
/// servers ask for, is the one TE value HTTP/2 carries.
pub fn request(
    mut parts: http::request::Parts,
    body: UpstreamBody,
    server: &http::uri::Authority,
    te_trailers: bool,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| server.clone());
    parts.uri = super::pooled::absolute_uri(authority, &parts.uri)?;
    parts.version = http::Version::HTTP_2;
    // Upgrade is HTTP/1.1's; the server answers such a request as a plain one.
    parts.headers.remove(header::CONNECTION);
    parts.headers.remove(header::UPGRADE);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Empty};

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = Request::builder().uri(uri).header("connection", "upgrade");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn empty() -> UpstreamBody {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    #[test]
    fn the_client_host_becomes_the_authority() {
        let server = http::uri::Authority::from_static("10.0.0.7:50051");
        let r = request(
            parts("/pkg.Svc/Call?x=1", Some("grpc.example")),
            empty(),
            &server,
            true,
        )
        .expect("request");
        assert_eq!(r.uri(), "http://grpc.example/pkg.Svc/Call?x=1");
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert!(r.headers().get("host").is_none());
        assert!(r.headers().get("connection").is_none());
        assert_eq!(
            r.headers().get("te").map(HeaderValue::as_bytes),
            Some(&b"trailers"[..])
        );

        let r = request(parts("/", None), empty(), &server, false).expect("request");
        assert_eq!(r.uri(), "http://10.0.0.7:50051/");
        assert!(r.headers().get("te").is_none());
    }
}
