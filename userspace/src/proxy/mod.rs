//! The L7 proxy: accept -> HTTP (h1, h2c) -> route -> backend -> response.
//!
//! Request phases, in order (each is one function below):
//! 1. `route`: host and path select a backend (`route.rs`), else the listener's default, else 404.
//! 2. `upstream_request`: hop-by-hop headers stripped, `X-Forwarded-*` and `X-Request-Id` added.
//! 3. `forward`: a slot on a server is taken from the backend's pool (`pool.rs`: balancing,
//!    per-server maxconn, FIFO queue with `timeout queue`); a connect failure is retried on
//!    another server when the request has no body, so it can be sent again safely, and feeds
//!    passive health (`health.rs`).
//! 4. `downstream_response`: hop-by-hop headers stripped from the response.
//!
//! Errors from any phase are `ProxyError`s, turned into a status in one place (`error.rs`).

pub mod backend;
pub mod error;
pub mod health;
pub mod pool;
pub mod route;
pub mod server;
pub mod timeout;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use tracing::debug;

use self::{
    backend::{UpstreamBody, UpstreamClient},
    error::ProxyError,
    pool::{Pool, Slot},
    route::Router,
};
use crate::config::{self, Config};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

thread_local! {
    /// Index of the worker thread running this code (0 on the main runtime).
    pub static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many servers one request may try when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Everything a request needs, built once per config generation. In-flight requests keep the
/// generation they started on; new ones take the current one.
pub struct Routing {
    router: Router,
    pools: Vec<Arc<Pool>>,
    /// One upstream client per worker thread, so pooled connections stay on the thread that
    /// uses them (no cross-thread wakeups per request).
    clients: Vec<UpstreamClient>,
    server_timeout: Duration,
    passive: Vec<config::Passive>,
    /// Health checks and DNS discovery of this generation, stopped with it.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Routing {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Routing {
    /// Resolves servers and starts health checks and discovery. A backend of `previous` with
    /// the same name and queue settings keeps its pool (in-flight counts, queue, health).
    pub async fn build(cfg: &Config, previous: Option<&Routing>, workers: usize) -> Self {
        let t = &cfg.global.timeouts;
        let mut pools = Vec::with_capacity(cfg.backends.len());
        let mut tasks = Vec::new();
        for b in &cfg.backends {
            let reusable = previous.and_then(|p| {
                p.pools
                    .iter()
                    .find(|x| x.same_settings(&b.name, b.balance, t.queue.0, b.queue_max))
            });
            let old = reusable.map(|p| p.servers()).unwrap_or_default();
            let servers = health::resolve(b, &old).await;
            let pool = match reusable {
                Some(p) => {
                    p.set_servers(servers);
                    p.clone()
                }
                None => Pool::new(&b.name, b.balance, t.queue.0, b.queue_max, servers),
            };
            if b.servers.iter().any(|s| s.socket_addr().is_none()) {
                tasks.push(health::spawn_discovery(pool.clone(), b.clone()));
            }
            if let Some(check) = &b.health_check {
                tasks.push(health::spawn_checks(pool.clone(), check.clone()));
            }
            pools.push(pool);
        }
        let router = Router::new(&cfg.routes, |name| {
            pools.iter().position(|p| p.name == name)
        });
        Self {
            router,
            passive: cfg.backends.iter().map(|b| b.passive.clone()).collect(),
            pools,
            clients: (0..workers.max(1))
                .map(|_| backend::client(t.connect.0, t.client.0))
                .collect(),
            server_timeout: t.server.0,
            tasks,
        }
    }

    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    fn client(&self) -> &UpstreamClient {
        let w = WORKER.with(std::cell::Cell::get);
        &self.clients[w % self.clients.len()]
    }
}

/// Per-listener request context.
pub struct ListenerCtx {
    /// The current config generation and this listener's default backend in it. A reload
    /// swaps it; a request reads it once when it starts and keeps that generation to its end.
    current: std::sync::RwLock<Generation>,
    pub scheme: &'static str,
    request_ids: AtomicU64,
    limits: config::Limits,
    /// The listener's name, for metrics labels.
    pub name: String,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

#[derive(Clone)]
struct Generation {
    routing: Arc<Routing>,
    default_backend: Option<usize>,
}

impl ListenerCtx {
    pub fn new(
        routing: Arc<Routing>,
        default_backend: Option<&str>,
        scheme: &'static str,
        limits: config::Limits,
        name: &str,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        let default_backend = default_backend.and_then(|n| routing.backend_index(n));
        Self {
            current: std::sync::RwLock::new(Generation {
                routing,
                default_backend,
            }),
            scheme,
            request_ids: AtomicU64::new(0),
            limits,
            name: name.to_owned(),
            metrics,
        }
    }

    /// The current generation's routing (for metrics).
    pub fn routing(&self) -> Arc<Routing> {
        self.generation().routing
    }

    /// Makes `routing` the generation new requests use (config reload).
    pub fn swap(&self, routing: Arc<Routing>, default_backend: Option<&str>) {
        let default_backend = default_backend.and_then(|n| routing.backend_index(n));
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cur = Generation {
            routing,
            default_backend,
        };
    }

    /// The backends a request on this listener may reach: every route's and the default.
    pub fn backends_behind(&self) -> Vec<Arc<Pool>> {
        let g = self.generation();
        let mut idx: Vec<usize> = g.routing.router.backends().collect();
        idx.extend(g.default_backend);
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .filter_map(|i| g.routing.pools.get(i).cloned())
            .collect()
    }

    fn generation(&self) -> Generation {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub async fn handle(
    ctx: Arc<ListenerCtx>,
    peer: SocketAddr,
    inflight: Arc<timeout::InFlight>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // In flight until the response body is sent (see timeout.rs).
    let guard = inflight.start();
    let started = std::time::Instant::now();
    let generation = ctx.generation();
    let mut backend_name = "";
    let result = async {
        check_limits(&ctx.limits, &req)?;
        let backend = route(&generation, &req)?;
        backend_name = generation
            .routing
            .pools
            .get(backend)
            .map_or("", |p| p.name.as_str());
        let req = upstream_request(&ctx, peer, req)?;
        forward(&generation.routing, backend, req, &inflight).await
    }
    .await;
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            debug!(error = %e, %peer, "request failed");
            error_response(&e)
        }
    };
    if let Some(m) = &ctx.metrics {
        m.observe(
            &ctx.name,
            backend_name,
            resp.status().as_u16(),
            started.elapsed(),
        );
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        Hold {
            body,
            _guard: guard,
        }
        .boxed(),
    ))
}

/// 414 and 413 here; 431 (too many or too large headers) is hyper's, from the same limits.
fn check_limits(l: &config::Limits, req: &Request<Incoming>) -> Result<(), ProxyError> {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > l.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            len,
            max: l.max_uri_bytes,
        });
    }
    if l.max_body_bytes > 0
        && let Some(len) = body_hint(req.headers()).filter(|n| *n > l.max_body_bytes)
    {
        return Err(ProxyError::BodyTooLarge {
            len,
            max: l.max_body_bytes,
        });
    }
    Ok(())
}

fn route(ctx: &Generation, req: &Request<Incoming>) -> Result<usize, ProxyError> {
    let host = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
    ctx.routing
        .router
        .route(host, req.uri().path())
        .or(ctx.default_backend)
        .ok_or(ProxyError::NoRoute)
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

/// A request prepared for a backend; kept as parts so it can be rebuilt for a retry.
struct Upstream {
    parts: http::request::Parts,
    body: Option<Incoming>,
    /// The client's side of an HTTP/1.1 Upgrade (WebSocket), resolved once the backend agrees.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// An HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header: its protocol.
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    let wants = req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn upstream_request(
    ctx: &ListenerCtx,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Upstream, ProxyError> {
    let protocol = upgrade_protocol(&req);
    let upgrade = protocol.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = protocol {
        // The one hop-by-hop exchange that must reach the backend.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, p);
    }
    let h = &mut parts.headers;
    let peer_ip = peer.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {peer_ip}"),
        None => peer_ip,
    };
    let hv = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ProxyError::BadRequest("unrepresentable header".into()))
    };
    h.insert("x-forwarded-for", hv(&xff)?);
    h.insert("x-forwarded-proto", HeaderValue::from_static(ctx.scheme));
    if let Some(host) = &host {
        h.insert("x-forwarded-host", hv(host)?);
        // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
        if !h.contains_key(header::HOST) {
            h.insert(header::HOST, hv(host)?);
        }
    }
    if !h.contains_key("x-request-id") {
        let id = ctx.request_ids.fetch_add(1, Ordering::Relaxed);
        h.insert(
            "x-request-id",
            hv(&format!("{:08x}-{id:x}", std::process::id()))?,
        );
    }
    // Backends speak HTTP/1.1 whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    // A body-less request (no length, not chunked) can be replayed on another server.
    let has_body = !matches!(body_hint(&parts.headers), Some(0));
    Ok(Upstream {
        parts,
        body: has_body.then_some(body),
        upgrade,
    })
}

fn body_hint(h: &HeaderMap) -> Option<u64> {
    if h.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    match h.get(header::CONTENT_LENGTH) {
        None => Some(0),
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()),
    }
}

async fn forward(
    routing: &Routing,
    backend: usize,
    mut up: Upstream,
    inflight: &Arc<timeout::InFlight>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let pool = routing
        .pools
        .get(backend)
        .ok_or_else(|| ProxyError::Internal("unknown backend".into()))?;
    let passive = routing.passive.get(backend).cloned().unwrap_or_default();
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    let replayable = up.body.is_none();
    loop {
        // Waits in the backend's FIFO queue when every server is at its maxconn.
        let slot = pool.acquire(&tried).await.map_err(ProxyError::from)?;
        let server = slot.server.addr;
        tried.push(server);
        let mut parts = up.parts.clone();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        parts.uri = Uri::try_from(format!("http://{server}{path}"))
            .map_err(|e| ProxyError::BadRequest(format!("bad target: {e}")))?;
        let body: UpstreamBody = match up.body.take() {
            Some(b) => b.boxed(),
            None => Empty::new().map_err(|never| match never {}).boxed(),
        };
        let sent = tokio::time::timeout(
            routing.server_timeout,
            routing.client().request(Request::from_parts(parts, body)),
        );
        let err = match sent.await {
            Ok(Ok(resp))
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    && up.upgrade.is_some() =>
            {
                health::observe(pool, &slot.server, true, &passive);
                return Ok(tunnel(resp, up.upgrade.take(), slot, inflight.start()));
            }
            Ok(Ok(resp)) => {
                health::observe(pool, &slot.server, true, &passive);
                // The server's place is held until its response body is done, as HAProxy
                // counts a connection until the response ends.
                return Ok(downstream_response(resp, slot));
            }
            Ok(Err(e)) => classify(server, &e),
            Err(_) => ProxyError::ServerTimeout {
                server: server.to_string(),
            },
        };
        if err.retryable() {
            health::observe(pool, &slot.server, false, &passive);
        }
        drop(slot);
        let servers = pool.servers().len();
        if !(err.retryable() && replayable && tried.len() < MAX_CONNECT_ATTEMPTS.min(servers)) {
            return Err(err);
        }
        debug!(error = %err, "retrying on another server");
    }
}

fn classify(server: SocketAddr, e: &hyper_util::client::legacy::Error) -> ProxyError {
    let server = server.to_string();
    if e.is_connect() {
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return ProxyError::ConnectTimeout { server };
            }
            src = s.source();
        }
        let reason =
            std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string);
        return ProxyError::Connect { server, reason };
    }
    ProxyError::Upstream {
        server,
        reason: e.to_string(),
    }
}

/// The backend agreed to switch protocols: answer 101 and splice the two upgraded connections.
/// The tunnel holds the server slot and counts as in flight (so `timeout client`, not the
/// keep-alive timeout, bounds its silence) until either side closes.
fn tunnel(
    mut resp: Response<Incoming>,
    client: Option<hyper::upgrade::OnUpgrade>,
    slot: Slot,
    guard: timeout::InFlightGuard,
) -> Response<ProxyBody> {
    let server = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (_slot, _guard) = (slot, guard);
        let Some(client) = client else { return };
        match tokio::try_join!(client, server) {
            Ok((c, s)) => {
                let (mut c, mut s) = (
                    hyper_util::rt::TokioIo::new(c),
                    hyper_util::rt::TokioIo::new(s),
                );
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                    debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}

fn downstream_response(resp: Response<Incoming>, slot: Slot) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Guarded { body, _guard: slot }.boxed())
}

/// A response body that holds its server slot until the body ends or is dropped.
type Guarded = Hold<Incoming, Slot>;

/// A body that keeps `G` alive until the body ends or is dropped.
struct Hold<B, G> {
    body: B,
    _guard: G,
}

impl<B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin, G: Unpin> hyper::body::Body
    for Hold<B, G>
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(e.body().as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = e.status();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
