//! The upstream HTTP client: one for every backend, keeping idle connections per server so
//! requests reuse them (HAProxy's `http-reuse`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// `connect_timeout` is `timeout connect`; idle pooled connections close after `idle_timeout`.
pub fn client(connect_timeout: Duration, idle_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(connector)
}
