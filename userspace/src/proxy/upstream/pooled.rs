//! The upstream HTTP client: one for every backend, keeping idle connections per server so
//! requests reuse them (HAProxy's `http-reuse`).

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tower_service::Service;

use crate::proxy::{
    body::UpstreamBody,
    error::ProxyError,
    upstream::connect::{Dial, ServerStream},
};

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

/// `uri`'s path and query on `http://authority`, built from parts (no formatting, no parsing).
pub fn absolute_uri(authority: http::uri::Authority, uri: &Uri) -> Result<Uri, ProxyError> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(authority);
    target.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(target).map_err(|e| ProxyError::BadRequest(format!("bad target: {e}")))
}
