//! The admin listener: `/healthz` (the process is alive), `/readyz` (config loaded, listeners
//! bound, XDP attached as configured; 503 once draining), `/metrics` (Prometheus text format).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use crate::metrics::{self, Metrics, Sources};

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub sources: Sources,
    /// True while serving; false before start-up completes and once draining.
    pub ready: Arc<AtomicBool>,
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
        "/readyz" if admin.ready.load(Ordering::Relaxed) => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(&admin.metrics, &admin.sources),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Serves until the process ends; `listener` is bound by the caller (bind errors are fatal).
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    info!(addr = ?listener.local_addr().ok(), "admin listening (/healthz /readyz /metrics)");
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(admin.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
