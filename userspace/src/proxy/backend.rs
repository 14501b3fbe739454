//! Backend pools: servers, balancing, and the upstream HTTP client with keep-alive reuse.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::config;

pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backend {
    pub fn new(cfg: &config::Backend) -> Self {
        Self {
            name: cfg.name.clone(),
            servers: cfg.servers.clone(),
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin; `skip` servers already tried for this request are passed over.
    pub fn pick(&self, skip: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| self.servers[(start + i) % n])
            .find(|s| !skip.contains(s))
    }
}

/// One client for every backend: hyper pools idle connections per server address.
pub fn client(connect_timeout: Duration, idle_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(1024)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_tried_servers() {
        let cfg = config::Backend {
            name: "b".into(),
            balance: config::Balance::Roundrobin,
            servers: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
        };
        let b = Backend::new(&cfg);
        let first = b.pick(&[]);
        let second = b.pick(&[]);
        assert_ne!(first, second);
        let only = b.pick(&[cfg.servers[0]]);
        assert_eq!(only, Some(cfg.servers[1]));
        assert_eq!(b.pick(&cfg.servers), None);
    }
}
