//! The upstream HTTP client: one for every backend, keeping idle connections per server so
//! requests reuse them (HAProxy's `http-reuse`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use prometheus::Histogram;
use tower_service::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies on their way to a server: the client's body, maybe cut at `max-body-bytes`.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// `connect_timeout` is `timeout connect`; idle pooled connections close after `idle_timeout`.
/// New connections' connect time goes to `connect_time` (reused ones cost none).
pub fn client(
    connect_timeout: Duration,
    idle_timeout: Duration,
    connect_time: Option<Histogram>,
) -> UpstreamClient {
    let mut inner = HttpConnector::new();
    inner.set_connect_timeout(Some(connect_timeout));
    inner.set_nodelay(true);
    inner.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(Connector {
            inner,
            connect_time,
        })
}

/// hyper's connector, timed.
#[derive(Clone)]
pub struct Connector {
    inner: HttpConnector,
    connect_time: Option<Histogram>,
}

type Inner = <HttpConnector as Service<Uri>>::Future;
type Connected = <Inner as Future>::Output;

impl Service<Uri> for Connector {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Connected> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timer = self.connect_time.clone();
        let start = Instant::now();
        Box::pin(async move {
            let r = connecting.await;
            if let (Ok(_), Some(h)) = (&r, timer) {
                h.observe(start.elapsed().as_secs_f64());
            }
            r
        })
    }
}
