//! The upstream HTTP client: one for every backend, keeping idle connections per server so
//! requests reuse them (HAProxy's `http-reuse`).

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tower_service::Service;

use crate::proxy::{
    error::ProxyError,
    upstream::connect::{Dial, ServerStream},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies on their way to a server: the client's body, maybe cut at `max-body-bytes`.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// Idle pooled connections close after `idle_timeout`; new ones are opened by `dial`.
pub fn client(dial: Dial, idle_timeout: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(Connector { dial })
}

/// hyper's connector: the request target's authority is always the server's address
/// (`pool::Server::authority`), so there is nothing to resolve; `Dial` connects, times and
/// speaks TLS when the backend asks for it.
#[derive(Clone)]
pub struct Connector {
    dial: Dial,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<ServerStream>, ProxyError>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<ServerStream>;
    type Error = ProxyError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let dial = self.dial.clone();
        Box::pin(async move {
            let authority = dst.authority().map_or("", http::uri::Authority::as_str);
            let server: SocketAddr = authority
                .parse()
                .map_err(|_| ProxyError::Internal(format!("`{authority}` is not an address")))?;
            dial.connect(server).await.map(TokioIo::new)
        })
    }
}
