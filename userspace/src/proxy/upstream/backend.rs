//! One backend as a running generation holds it: everything a request needs of its backend in
//! one value, built once per config generation and handed out by routing as an `Arc`. A route,
//! a listener's default, a passthrough host or a mirror names a backend by this value, never by
//! a number to look up, so "no such backend" is not a state a request can meet.
//!
//! The transport is chosen here once per backend (`Transport`): HTTP/2 for `proto: h2`,
//! otherwise HTTP/1.1 over the direct path or hyper's pooled client, chosen per request by
//! whether it can be replayed (`Transport::send`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;

use super::{
    connect::Dial,
    direct, h2c,
    pool::{Pool, Server},
    pooled::{UpstreamClient, absolute_uri},
    sticky::Persist,
};
use crate::config;
use crate::proxy::{
    body::UpstreamBody,
    error::ProxyError,
    request::{
        compress::Compress,
        headers::{Forwarding, Rules},
    },
    worker::WORKER,
};

/// How many servers one request may try when connecting fails.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// A backend of one config generation.
pub struct Backend {
    /// Its place in the config's `backends`, for per-listener metric handles.
    pub index: usize,
    /// Servers, slots and queue; shared with the next generation when its settings stay.
    pub pool: Arc<Pool>,
    /// How its servers are connected to (timeout, TLS, connect-time histogram).
    pub dial: Dial,
    pub transport: Transport,
    /// `timeouts.server`.
    pub server_timeout: Duration,
    /// `timeouts.tunnel`.
    pub tunnel_timeout: Duration,
    /// Cookie persistence (`sticky`).
    pub sticky: Option<Persist>,
    /// The PROXY protocol header its carried connections start with (`send-proxy`).
    pub send_proxy: Option<config::ProxyVersion>,
    pub compress: Option<Compress>,
    /// `request-headers`, applied before the route's own.
    pub request_rules: Option<Rules>,
    /// `response-headers`, applied before the route's own.
    pub response_rules: Option<Rules>,
    /// Passive health (`passive`).
    pub passive: config::Passive,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.pool.name)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// `pool` is the backend's pool (new, or carried over from the previous generation);
    /// `workers` the worker threads, each with its own idle server connections.
    pub fn new(
        b: &config::Backend,
        index: usize,
        pool: Arc<Pool>,
        dial: Dial,
        workers: usize,
        timeouts: &config::Timeouts,
    ) -> Self {
        let keep_alive = timeouts.server_keep_alive.0;
        let transport = match b.proto {
            config::Proto::H2 => Transport::H2(h2c::Conns::new(workers, dial.clone(), keep_alive)),
            config::Proto::H1 => Transport::Http1 {
                direct: direct::Conns::new(workers, dial.clone(), keep_alive),
                pooled: (0..workers.max(1))
                    .map(|_| super::pooled::client(dial.clone(), keep_alive))
                    .collect(),
            },
        };
        Self {
            index,
            pool,
            dial,
            transport,
            server_timeout: b.server_timeout(timeouts),
            tunnel_timeout: b.tunnel_timeout(timeouts),
            sticky: b.sticky.as_ref().map(Persist::new),
            send_proxy: b.send_proxy,
            compress: b.compression.as_ref().map(Compress::new),
            request_rules: Rules::new(&b.request_headers),
            response_rules: Rules::new(&b.response_headers),
            passive: b.passive.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.pool.name
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.transport, Transport::H2(_))
    }
}

/// How requests reach a backend's servers.
pub enum Transport {
    /// `proto: h2`: multiplexed HTTP/2 connections, per worker (`h2c.rs`).
    H2(Arc<h2c::Conns>),
    /// HTTP/1.1: the direct path (`direct.rs`) for requests that can be sent again, hyper's
    /// pooled client (one per worker, so its connections stay on the thread using them) for
    /// the rest: bodies, upgrades, non-idempotent methods.
    Http1 {
        direct: Arc<direct::Conns>,
        pooled: Vec<UpstreamClient>,
    },
}

/// A request prepared for a backend; kept as parts so it can be rebuilt for a retry.
pub struct Upstream {
    parts: http::request::Parts,
    /// The fields this hop adds, while they are not in `parts.headers` (`Forwarding`): only
    /// the direct path writes them from here; every other use of the map moves them in first.
    forwarding: Option<Forwarding>,
    pub body: Option<UpstreamBody>,
    /// The client's side of an HTTP/1.1 Upgrade (WebSocket), resolved once the backend agrees.
    pub upgrade: Option<crate::proxy::upgrade::ClientUpgrade>,
    /// The client sent `TE: trailers` (gRPC does): passed on to HTTP/2 servers only, the one
    /// TE value HTTP/2 carries; hop-by-hop for HTTP/1.1.
    pub te_trailers: bool,
    /// The server the client's `sticky` cookie names.
    pub sticky: Option<u64>,
}

impl Upstream {
    pub fn new(
        parts: http::request::Parts,
        forwarding: Option<Forwarding>,
        body: Option<UpstreamBody>,
        upgrade: Option<crate::proxy::upgrade::ClientUpgrade>,
        te_trailers: bool,
    ) -> Self {
        Self {
            parts,
            forwarding,
            body,
            upgrade,
            te_trailers,
            sticky: None,
        }
    }

    pub fn method(&self) -> &http::Method {
        &self.parts.method
    }

    /// The request's fields, the forwarding ones among them, to read or change.
    pub fn headers_mut(&mut self) -> &mut http::HeaderMap {
        self.materialize();
        &mut self.parts.headers
    }

    /// The whole request head, forwarding fields in its map.
    pub fn parts(&mut self) -> &http::request::Parts {
        self.materialize();
        &self.parts
    }

    /// The `X-Request-Id` the server gets.
    pub fn request_id(&self) -> Option<&http::HeaderValue> {
        match self.forwarding.as_ref().and_then(|f| f.request_id.as_ref()) {
            Some(id) => Some(id),
            None => self
                .parts
                .headers
                .get(crate::proxy::request::headers::X_REQUEST_ID),
        }
    }

    fn materialize(&mut self) {
        if let Some(f) = self.forwarding.take() {
            f.insert_into(&mut self.parts.headers);
        }
    }

    /// A copy of the head for the paths that take one (hyper's client, HTTP/2 servers).
    fn to_send(&self) -> http::request::Parts {
        let mut parts = self.parts.clone();
        if let Some(f) = &self.forwarding {
            f.insert_into(&mut parts.headers);
        }
        parts
    }
}

/// A server's response head, from either kind of upstream connection.
pub enum Reply {
    /// With the server's fields apart, raw (`proxy::fields`).
    Direct(
        Response<direct::DirectBody>,
        crate::proxy::fields::RawFields,
    ),
    Pooled(Response<Incoming>),
}

impl Transport {
    /// One try of `up` on `server`. Only idempotent requests without a body or upgrade take
    /// the direct path: it resends a request whose kept connection died before any response
    /// byte, and the server may have acted on it meanwhile.
    /// `server_timeout` bounds the exchange up to the response head (`timeout server`).
    pub async fn send(
        &self,
        up: &mut Upstream,
        server: &Server,
        server_timeout: Duration,
    ) -> Result<Reply, ProxyError> {
        let worker = WORKER.with(std::cell::Cell::get);
        match self {
            Transport::H2(h2) => {
                // No HTTP/1.1 Upgrade over HTTP/2: the request goes as a plain one.
                up.upgrade = None;
                let body = up.body.take().unwrap_or_else(empty_body);
                let req = h2c::request(up.to_send(), body, &server.authority, up.te_trailers)?;
                // Boxed: inline, the HTTP/2 sender's state (most of this future's 4 KB) sized
                // every request's exchange, HTTP/1.1 ones included, and was copied whole into
                // each request's box (`session::Session::proxy`).
                let sent = Box::pin(h2.send(worker, server.addr, req));
                within(server_timeout, server, sent)
                    .await
                    .map(Reply::Pooled)
            }
            Transport::Http1 { direct, .. }
                if up.body.is_none() && up.upgrade.is_none() && up.parts.method.is_idempotent() =>
            {
                let head = direct::RequestHead {
                    parts: &up.parts,
                    forwarding: up.forwarding.as_ref(),
                    authority: &server.authority,
                };
                direct::exchange(direct, worker, server.addr, head, server_timeout)
                    .await
                    .map(|(resp, fields)| Reply::Direct(resp, fields))
            }
            Transport::Http1 { pooled, .. } => {
                let Some(client) = pooled.get(worker % pooled.len().max(1)) else {
                    // `pooled` has one client per worker, at least one: never empty.
                    return Err(ProxyError::Internal("no upstream client".into()));
                };
                let mut parts = up.to_send();
                parts.uri = absolute_uri(server.authority.clone(), &parts.uri)?;
                let body = up.body.take().unwrap_or_else(empty_body);
                let sent = async {
                    client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(|e| classify(server.addr, &e))
                };
                within(server_timeout, server, sent)
                    .await
                    .map(Reply::Pooled)
            }
        }
    }

    /// HTTP/2 connections kept to the servers (as of the last reap), for a `proto: h2` backend.
    pub fn h2_connections(&self) -> Option<usize> {
        match self {
            Transport::H2(c) => Some(c.open()),
            Transport::Http1 { .. } => None,
        }
    }

    /// Idle server connections the direct path keeps (as of the last reap).
    pub fn idle_connections(&self) -> usize {
        match self {
            Transport::H2(_) => 0,
            Transport::Http1 { direct, .. } => direct.idle(),
        }
    }

    /// Closes idle connections that expired or that their server closed.
    pub fn reap(&self) {
        match self {
            Transport::H2(c) => {
                c.reap();
            }
            Transport::Http1 { direct, .. } => {
                direct.reap();
            }
        }
    }
}

/// `sent` under `timeout server`.
async fn within<T>(
    limit: Duration,
    server: &Server,
    sent: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    tokio::time::timeout(limit, sent).await.unwrap_or_else(|_| {
        Err(ProxyError::ServerTimeout {
            server: server.addr.to_string(),
        })
    })
}

pub fn empty_body() -> UpstreamBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn classify(server: SocketAddr, e: &hyper_util::client::legacy::Error) -> ProxyError {
    let server = server.to_string();
    if e.is_connect() {
        // `upstream::connect::Dial` said what went wrong.
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            match s.downcast_ref::<ProxyError>() {
                Some(ProxyError::ConnectTimeout { .. }) => {
                    return ProxyError::ConnectTimeout { server };
                }
                Some(ProxyError::Connect { reason, .. }) => {
                    return ProxyError::Connect {
                        server,
                        reason: reason.clone(),
                    };
                }
                _ => {}
            }
            src = s.source();
        }
        let reason =
            std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string);
        return ProxyError::Connect { server, reason };
    }
    // A request body cut at `max-body-bytes` fails the exchange with its LengthLimitError
    // somewhere in the chain: the client's fault, 413.
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyOverLimit;
        }
        src = s.source();
    }
    ProxyError::Upstream {
        server,
        reason: e.to_string(),
    }
}
