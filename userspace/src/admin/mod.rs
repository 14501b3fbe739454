//! The admin listener: `/healthz` (the process is alive), `/readyz` (config loaded, listeners
//! bound, XDP attached as configured; 503 once draining), `/metrics` (Prometheus text format).
//!
//! It runs on a thread of its own, so a scrape's rendering or a flood of admin connections
//! never takes time from a proxy worker. Clients outside `admin.allow` are closed at accept, at
//! most `admin.max-connections` are open at once, and a request header (or an idle keep-alive
//! wait) gets `admin.header-timeout`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, info, warn};

pub mod exposition;

use self::exposition::Sources;
use crate::{config, metrics::Metrics};

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub sources: Sources,
    /// True while serving; false before start-up completes and once draining.
    pub ready: Arc<AtomicBool>,
    /// In cluster mode: the API connection, reported by `/readyz`.
    pub cluster: Option<Arc<crate::cluster::Health>>,
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn answer(
    admin: Arc<Admin>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            // Serving the last state read while the API is away is still ready: the detail
            // line says so.
            let detail = admin.cluster.as_ref().and_then(|c| c.detail());
            let (status, word) = if admin.ready.load(Ordering::Relaxed) {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready")
            };
            let body = match detail {
                Some(d) => format!("{word}\n{d}\n"),
                None => format!("{word}\n"),
            };
            reply(status, "text/plain", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            exposition::render(&admin.metrics, &admin.sources),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// No admin connection lives longer than this, whatever it does: a scrape takes milliseconds.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// Serves until the process ends; `listener` is bound by the caller (bind errors are fatal).
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>, cfg: config::Admin) {
    info!(addr = ?listener.local_addr().ok(), "admin listening (/healthz /readyz /metrics)");
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections as usize));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !config::cidrs_contain(&cfg.allow, peer.ip()) {
            debug!(%peer, "admin connection from outside admin.allow closed");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin.max-connections reached: connection closed");
            continue;
        };
        let admin = admin.clone();
        let header_timeout = cfg.header_timeout.0;
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| answer(admin.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(MAX_CONNECTION_LIFE, conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "admin connection ended with an error"),
                Err(_) => debug!(%peer, "admin connection closed at its maximum life"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Binds the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the admin listener on a thread and runtime of its own.
pub fn spawn(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    cfg: config::Admin,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("floodgate-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, admin, cfg).await,
                    Err(e) => warn!(error = %e, "cannot serve the admin listener"),
                }
            });
        })?;
    Ok(())
}
