//! The L7 proxy: accept -> HTTP (h1, h2c) -> route -> backend -> response.
//!
//! Request phases, in order (each is one function below):
//! 0. `redirect`: a listener with `redirect-to-https` answers plain HTTP with a redirect; a
//!    listener with `rate-limit` answers 429 to a source over its rate (`ratelimit.rs`).
//! 1. `route`: host, path and headers select a backend (`route.rs`), else the listener's
//!    default, else 404; the route's `allow` list (403), `cors` (a preflight is answered here,
//!    `cors.rs`) and `auth` service (`auth.rs`) decide whether the request goes on.
//! 2. `upstream_request`: hop-by-hop headers stripped, `X-Forwarded-*` and `X-Request-Id` added,
//!    the path rewritten when the route has `rewrite-prefix` or `rewrite-target`, then the
//!    backend's `request-headers` (`headers.rs`); a copy goes to the route's `mirror`
//!    backend (`mirror`).
//! 3. `forward`: a slot on a server is taken from the backend's pool (`pool.rs`: balancing,
//!    per-server maxconn, FIFO queue with `timeout queue`; the server a `sticky` cookie names,
//!    `sticky.rs`); `attempt` sends the request there:
//!    over HTTP/2 for a `proto: h2` backend (`h2c.rs`); else over the direct path (`direct.rs`)
//!    for an idempotent request without a body, else over hyper's pooled client
//!    (`backend.rs`); a connect failure is retried on another server when
//!    the request has no body, so it can be sent again safely, and feeds passive health
//!    (`health.rs`).
//! 4. `downstream_response`: hop-by-hop headers stripped from the response; then the backend's
//!    `response-headers`, the `sticky` cookie, and the listener's `response-headers`.
//!
//! Errors from any phase are `ProxyError`s, turned into a status in one place (`error.rs`).
//! Metrics are recorded at the response headers; bytes sent and the access log line when the
//! response body ends (`Done`).

pub mod error;
pub mod listener;
pub mod request;
pub mod timeout;
pub mod upstream;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use tracing::debug;

use self::{
    error::ProxyError,
    request::route::Router,
    upstream::backend::{Backend, Reply, Upstream, empty_body},
    upstream::pool::{Pool, Slot},
};
use crate::{
    access,
    config::{self, Config},
    metrics::{self, Metrics},
};

pub type ProxyBody = BoxBody<Bytes, upstream::pooled::BoxError>;

thread_local! {
    /// Index of the worker thread running this code (0 on the main runtime).
    pub static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many servers one request may try when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Everything a request needs, built once per config generation. In-flight requests keep the
/// generation they started on; new ones take the current one.
pub struct Routing {
    router: Router<Arc<Backend>>,
    /// In config order.
    backends: Vec<Arc<Backend>>,
    /// `error-pages`, read.
    error_pages: error::Pages,
    /// Health checks, DNS discovery and the idle-connection reaper of this generation,
    /// stopped with it. They start at `commit`.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Server lists for pools carried over from the previous generation, applied at `commit`:
    /// a reload refused after this generation was built leaves the running pools as they were.
    pending: std::sync::Mutex<PendingServers>,
    /// Opens when the generation is committed; its tasks wait for it.
    gate: tokio::sync::watch::Sender<bool>,
}

/// Pools carried over from the previous generation, with the server lists they get at commit.
type PendingServers = Vec<(Arc<Pool>, Vec<Arc<upstream::pool::Server>>)>;

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
    /// Fails when a backend's `tls` files or an `error-pages` file cannot be used.
    pub async fn build(
        cfg: &Config,
        previous: Option<&Routing>,
        workers: usize,
        metrics: Option<&Metrics>,
    ) -> Result<Self, BuildError> {
        let t = &cfg.global.timeouts;
        let tls = client_tls(cfg)?;
        let error_pages = error::Pages::load(&cfg.error_pages)?;
        let basic = basic_auth(cfg)?;
        let mut backends = Vec::with_capacity(cfg.backends.len());
        let mut tasks = Vec::new();
        let mut pending = Vec::new();
        let (gate, opened) = tokio::sync::watch::channel(false);
        for (index, (b, tls)) in cfg.backends.iter().zip(tls).enumerate() {
            let reusable = previous.and_then(|p| {
                p.backends
                    .iter()
                    .map(|x| &x.pool)
                    .find(|x| x.same_settings(&b.name, b.balance, b.queue_timeout(t), b.queue_max))
            });
            let old = reusable.map(|p| p.servers()).unwrap_or_default();
            let servers = upstream::health::resolve(b, &old).await;
            let pool = match reusable {
                Some(p) => {
                    pending.push((p.clone(), servers));
                    p.clone()
                }
                None => Pool::new(&b.name, b.balance, b.queue_timeout(t), b.queue_max, servers),
            };
            if b.servers.iter().any(|s| s.socket_addr().is_none()) {
                tasks.push(upstream::health::spawn_discovery(
                    pool.clone(),
                    b.clone(),
                    opened.clone(),
                ));
            }
            if let Some(check) = &b.health_check {
                tasks.push(upstream::health::spawn_checks(
                    pool.clone(),
                    check.clone(),
                    tls.clone(),
                    opened.clone(),
                ));
            }
            let dial = upstream::connect::Dial {
                timeout: b.connect_timeout(t),
                connect_time: metrics.map(|m| m.connect_histogram(&b.name)),
                tls,
            };
            backends.push(Arc::new(Backend::new(b, index, pool, dial, workers, t)));
        }
        tasks.push(spawn_reaper(backends.clone()));
        let router = Router::with_users(
            &cfg.routes,
            &basic,
            |name| backends.iter().find(|b| b.name() == name).cloned(),
            |name| cfg.listeners.iter().position(|l| l.name == name),
        );
        Ok(Self {
            router,
            backends,
            error_pages,
            tasks,
            pending: std::sync::Mutex::new(pending),
            gate,
        })
    }

    /// Makes this generation's changes to pools it shares with the previous one (their server
    /// lists), and starts its health checks and discovery: the last step of a reload, once
    /// nothing else can refuse it.
    pub fn commit(&self) {
        let pending = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (pool, servers) in pending {
            pool.set_servers(servers);
        }
        self.gate.send_replace(true);
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// Every backend, in config order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }
}

/// Files a config names that cannot be used: the config is refused.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Page(#[from] error::PageError),
    #[error(transparent)]
    BasicAuth(#[from] request::basic::BasicAuthError),
}

/// Every route's `basic-auth`, its users file read. `floodgate check` reads them too.
pub fn basic_auth(
    cfg: &Config,
) -> Result<Vec<Option<Arc<request::basic::BasicAuth>>>, request::basic::BasicAuthError> {
    cfg.routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.basic_auth
                .as_ref()
                .map(|b| {
                    request::basic::BasicAuth::load(&format!("routes[{i}].basic-auth"), b)
                        .map(Arc::new)
                })
                .transpose()
        })
        .collect()
}

/// Every backend's `tls`, in order: built once per generation, shared by its connections and
/// health checks. `floodgate check` builds them too, so bad files are found before a reload.
pub fn client_tls(
    cfg: &Config,
) -> Result<Vec<Option<Arc<crate::tls::ClientTls>>>, crate::tls::TlsError> {
    cfg.backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Ok(crate::tls::ClientTls::new(&format!("backends[{i}].tls"), b)?.map(Arc::new))
        })
        .collect()
}

/// Every 2 s, closes idle server connections that expired or that their server closed.
fn spawn_reaper(backends: Vec<Arc<Backend>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for b in &backends {
                b.transport.reap();
            }
        }
    })
}

/// One value per worker thread, so server connections stay on the runtime that drives them.
/// Each lock is taken by its own thread and by the 2 s sweep only, so it is never contended
/// for long, and a poisoned one still holds consistent connection lists.
pub struct PerWorker<T>(Vec<std::sync::Mutex<T>>);

impl<T: Default> PerWorker<T> {
    fn new(workers: usize) -> Self {
        Self((0..workers.max(1)).map(|_| Default::default()).collect())
    }
}

impl<T> PerWorker<T> {
    fn get(&self, worker: usize) -> std::sync::MutexGuard<'_, T> {
        let i = worker % self.0.len().max(1);
        self.0[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every worker's value in turn, for the sweep.
    fn each(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, T>> {
        (0..self.0.len()).map(|w| self.get(w))
    }
}

/// Per-listener request context.
pub struct ListenerCtx {
    /// The current config generation and this listener's default backend in it. A reload
    /// swaps it; a request reads it once when it starts and keeps that generation to its end.
    current: std::sync::RwLock<Generation>,
    pub scheme: &'static str,
    /// The listener's port, for `X-Forwarded-Port`.
    port: HeaderValue,
    /// The same, as a number (redirects built from the request's URL).
    port_number: u16,
    request_ids: AtomicU64,
    /// The pid part of generated request ids, formatted once: getpid() is a real syscall, and
    /// it was one of five per proxied request.
    request_id_prefix: String,
    limits: config::Limits,
    /// `global.forward-path: as-received`: the path as the client sent it goes to backends.
    forward_received: bool,
    /// `global.http2.max-resets`.
    pub h2_max_resets: u32,
    /// The listener's name, for metrics labels.
    pub name: String,
    pub metrics: Option<Arc<Metrics>>,
}

#[derive(Clone)]
struct Generation {
    routing: Arc<Routing>,
    default_backend: Option<Arc<Backend>>,
    redirect: Option<Arc<config::RedirectToHttps>>,
    rate_limit: Option<Arc<request::ratelimit::Limiter>>,
    /// The listener's `response-headers`, for every response it sends.
    response_headers: Option<Arc<request::headers::Rules>>,
    access: Option<Arc<access::Policy>>,
    /// Who opens connections with a PROXY protocol header.
    proxy_protocol: Option<Arc<config::ProxyProtocol>>,
    /// Whose forwarding headers name the client.
    forwarded: Option<Arc<request::forwarded::Trust>>,
    /// Hosts whose TLS connections are carried to a backend as they are.
    passthrough: Option<Arc<listener::passthrough::Passthrough>>,
    /// `mode: tcp`: every connection is carried to the default backend.
    tcp: bool,
    /// `max-connections-per-source`: the connections each client address holds.
    per_source: Option<Arc<listener::connlimit::PerSource>>,
    /// Per backend of `routing`, this listener's metric handles, made on first use.
    handles: Arc<[OnceLock<metrics::Handles>]>,
    /// This listener's place in the config (routes' `listeners`).
    listener: usize,
}

impl Generation {
    /// `previous`: the generation being replaced, whose rate-limit table (every source's
    /// bucket) carries over when its settings are unchanged.
    fn new(
        routing: Arc<Routing>,
        listener: &config::Listener,
        cfg: &Config,
        previous: Option<&Generation>,
    ) -> Self {
        let rate_limit = listener.rate_limit.as_ref().map(|r| {
            previous
                .and_then(|p| p.rate_limit.clone())
                .filter(|l| l.same_settings(r))
                .unwrap_or_else(|| Arc::new(request::ratelimit::Limiter::new(r)))
        });
        Self {
            rate_limit,
            response_headers: request::headers::Rules::new(&listener.response_headers)
                .map(Arc::new),
            default_backend: listener
                .default_backend
                .as_deref()
                .and_then(|n| routing.backend(n))
                .cloned(),
            redirect: listener.redirect_to_https.clone().map(Arc::new),
            access: access::Policy::new(&cfg.access_log).map(Arc::new),
            proxy_protocol: listener.proxy_protocol.clone().map(Arc::new),
            passthrough: listener::passthrough::Passthrough::new(&listener.passthrough, &routing)
                .map(Arc::new),
            tcp: listener.mode == config::Mode::Tcp,
            per_source: listener.max_connections_per_source.map(|max| {
                previous
                    .and_then(|p| p.per_source.clone())
                    .filter(|t| t.same_settings(max))
                    .unwrap_or_else(|| listener::connlimit::PerSource::new(max))
            }),
            forwarded: listener
                .forwarded_headers
                .as_ref()
                .and_then(request::forwarded::Trust::new)
                .map(Arc::new),
            handles: routing.backends.iter().map(|_| OnceLock::new()).collect(),
            listener: cfg
                .listeners
                .iter()
                .position(|l| l.name == listener.name)
                .unwrap_or(usize::MAX),
            routing,
        }
    }
}

impl ListenerCtx {
    pub fn new(
        routing: Arc<Routing>,
        listener: &config::Listener,
        cfg: &Config,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            current: std::sync::RwLock::new(Generation::new(routing, listener, cfg, None)),
            scheme: if listener.tls.is_some() {
                "https"
            } else {
                "http"
            },
            port: HeaderValue::from(listener.bind.port()),
            port_number: listener.bind.port(),
            request_ids: AtomicU64::new(0),
            request_id_prefix: format!("{:08x}", std::process::id()),
            limits: cfg.global.limits.clone(),
            forward_received: cfg.global.forward_path == config::ForwardPath::AsReceived,
            h2_max_resets: cfg.global.http2.max_resets,
            name: listener.name.clone(),
            metrics,
        }
    }

    /// The current generation's routing (for metrics).
    pub fn routing(&self) -> Arc<Routing> {
        self.generation().routing
    }

    /// Makes `routing` (and the listener's settings of `cfg`) the generation new requests use
    /// (config reload).
    pub fn swap(&self, routing: Arc<Routing>, listener: &config::Listener, cfg: &Config) {
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cur = Generation::new(routing, listener, cfg, Some(&cur));
    }

    /// What a new connection needs of the current generation, read once at accept.
    pub fn on_accept(&self) -> Accepting {
        let g = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tcp = g.default_backend.clone().filter(|_| g.tcp);
        Accepting {
            proxy_protocol: g.proxy_protocol.clone(),
            per_source: g.per_source.clone(),
            carry: (tcp.is_some() || g.passthrough.is_some()).then(|| Carry {
                routing: g.routing.clone(),
                tcp,
                passthrough: g.passthrough.clone(),
                access: g.access.clone(),
            }),
        }
    }

    /// The listener's connection timeout counters (None without metrics).
    pub fn timeout_counters(&self) -> Option<crate::metrics::TimeoutCounters> {
        self.metrics.as_ref().map(|m| m.timeouts(&self.name))
    }

    /// The backends a connection to this listener may reach: every route's, the default, and
    /// the passthrough hosts'.
    pub fn backends_behind(&self) -> Vec<Arc<Pool>> {
        let g = self.generation();
        // A TCP listener's connections all go to its default backend.
        let mut behind: Vec<&Arc<Backend>> = if g.tcp {
            Vec::new()
        } else {
            g.routing.router.backends().collect()
        };
        behind.extend(&g.default_backend);
        if let Some(p) = &g.passthrough {
            behind.extend(p.backends());
        }
        behind.sort_unstable_by_key(|b| b.index);
        behind.dedup_by_key(|b| b.index);
        behind.into_iter().map(|b| b.pool.clone()).collect()
    }

    /// This listener's metric handles for `backend` of generation `g` (`None` without
    /// metrics).
    fn handles<'g>(&self, g: &'g Generation, backend: &Backend) -> Option<&'g metrics::Handles> {
        let m = self.metrics.as_ref()?;
        // `handles` has one cell per backend of `g.routing`, which `backend` is one of.
        let cell = g.handles.get(backend.index)?;
        Some(cell.get_or_init(|| m.handles(&self.name, backend.name())))
    }

    fn generation(&self) -> Generation {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A listener's settings for one new connection (`ListenerCtx::on_accept`).
pub struct Accepting {
    /// Who must open with a PROXY protocol header.
    pub proxy_protocol: Option<Arc<config::ProxyProtocol>>,
    /// `max-connections-per-source`.
    pub per_source: Option<Arc<listener::connlimit::PerSource>>,
    /// Set when connections may be carried as bytes rather than served as HTTP.
    pub carry: Option<Carry>,
}

impl Accepting {
    /// A place for one more connection from `client` under `max-connections-per-source`:
    /// `Ok(None)` without a limit.
    pub fn admit(
        &self,
        client: IpAddr,
    ) -> Result<Option<listener::connlimit::Held>, listener::connlimit::OverLimit> {
        match &self.per_source {
            None => Ok(None),
            Some(t) => t
                .admit(client)
                .map(Some)
                .ok_or(listener::connlimit::OverLimit),
        }
    }
}

/// Where carried connections go, in the routing generation they were accepted under.
pub struct Carry {
    pub routing: Arc<Routing>,
    /// `mode: tcp`: the backend every connection goes to.
    pub tcp: Option<Arc<Backend>>,
    /// The listener's passthrough hosts.
    pub passthrough: Option<Arc<listener::passthrough::Passthrough>>,
    /// The access log policy, for the line each carried connection gets when it ends.
    pub access: Option<Arc<access::Policy>>,
}

/// One client connection, shared by the requests on it.
pub struct Conn {
    /// The client: the TCP peer, or the one its PROXY protocol header names.
    pub peer: SocketAddr,
    /// The peer's address as a header value, formatted once per connection rather than per
    /// request (formatting was about 3% of the CPU per proxied request).
    peer_ip: HeaderValue,
    /// The port the client connected to when a PROXY protocol header named it (the load
    /// balancer's), for `X-Forwarded-Port`; otherwise the listener's.
    port: Option<HeaderValue>,
    pub inflight: Arc<timeout::InFlight>,
}

impl Conn {
    pub fn new(peer: SocketAddr, port: Option<u16>, inflight: Arc<timeout::InFlight>) -> Arc<Self> {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Arc::new(Self {
            peer,
            peer_ip,
            port: port.map(HeaderValue::from),
            inflight,
        })
    }
}

pub async fn handle(
    ctx: Arc<ListenerCtx>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (peer, inflight) = (conn.peer, &conn.inflight);
    // In flight until the response body is sent (see timeout.rs).
    let guard = inflight.start();
    let started = Instant::now();
    let generation = ctx.generation();
    let method = metrics::method_index(req.method());
    // The client: the connection's, or the one a trusted proxy's forwarding header names.
    let trusted = generation
        .forwarded
        .as_deref()
        .filter(|t| t.trusts(peer.ip()));
    let named = trusted.and_then(|t| t.client(req.headers()));
    let client = Client {
        ip: named.as_ref().map_or(peer.ip(), |c| c.ip),
        value: named.as_ref().map_or(&conn.peer_ip, |c| &c.value),
        trusted: trusted.is_some(),
    };
    // Before anything reads the request, so routing, auth, the log and the backend see one.
    let normalized = request::normalize::request(&mut req, ctx.forward_received);
    let mut log = generation.access.as_ref().and_then(|a| {
        let port = named.is_none().then_some(peer.port());
        a.begin(
            &ctx.name,
            access::Client {
                ip: client.ip,
                port,
            },
            &req,
        )
    });
    let mut trace = Trace::default();
    let mut chosen: Option<&Backend> = None;
    // This listener's metric handles for the chosen backend, looked up once per request.
    let mut handles: Option<&metrics::Handles> = None;
    // The route's CORS settings and the request's origin if allowed, for the answer's headers.
    let mut cors: Option<(&request::cors::Cors, Option<HeaderValue>)> = None;
    let result = async {
        normalized?;
        let mut req = req;
        if let Some(r) = &generation.redirect
            && let Some(resp) = request::redirect::to_https(r, &req)
        {
            if let Some(m) = &ctx.metrics {
                m.redirect(&ctx.name);
            }
            return Ok(resp);
        }
        if let Some(l) = &generation.rate_limit {
            l.check(client.ip, Instant::now())
                .map_err(|retry_after| ProxyError::RateLimited { retry_after })?;
        }
        check_limits(&ctx.limits, &req)?;
        let routed = route(&generation, &req, client.ip)?;
        if routed.forbidden {
            return Err(ProxyError::Forbidden);
        }
        let (route_request_rules, route_response_rules) =
            (routed.request_headers, routed.response_headers);
        let backend = match routed.to {
            request::route::Dest::Backend(b) => b,
            request::route::Dest::Redirect(d) => {
                let host = req.uri().host().map(str::to_owned).or_else(|| {
                    req.headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .and_then(|h| h.parse::<http::uri::Authority>().ok())
                        .map(|a| a.host().to_owned())
                });
                return d.answer(
                    req.uri(),
                    request::redirect::Origin {
                        host: host.as_deref(),
                        scheme: ctx.scheme,
                        port: ctx.port_number,
                    },
                );
            }
        };
        chosen = Some(backend);
        if let Some(c) = routed.cors {
            cors = Some((c, c.allowed(&req)));
            if request::cors::Cors::is_preflight(&req) {
                // Answered here: the backend never sees a preflight, and it carries no
                // credentials an auth service could check.
                let mut resp = Response::new(empty_body());
                *resp.status_mut() = http::StatusCode::NO_CONTENT;
                if let Some((c, origin)) = cors.take() {
                    c.apply(resp.headers_mut(), origin.as_ref(), true);
                }
                return Ok(resp);
            }
        }
        if let Some(b) = routed.basic {
            b.check(req.headers()).await?;
        }
        let authorized = match routed.auth {
            Some(a) => {
                // The backend believes these headers because only the auth service sets them:
                // a client's own copies go before anyone reads them.
                a.strip(req.headers_mut());
                a.check(&req, ctx.scheme, client.value).await?
            }
            None => Vec::new(),
        };
        handles = ctx.handles(&generation, backend);
        let h2 = backend.is_h2();
        let compress = backend.compress.as_ref();
        let gzip = compress.is_some_and(|_| request::compress::accepts_gzip(req.headers()));
        let head = req.method() == http::Method::HEAD;
        let mut up = upstream_request(&ctx, &conn, &client, req, h2, &routed)?;
        if compress.is_some_and(|c| c.offload) {
            up.parts.headers.remove(header::ACCEPT_ENCODING);
        }
        for (n, v) in authorized {
            // What the auth service says of the client replaces anything the client sent.
            up.parts.headers.insert(n, v);
        }
        if let Some(m) = routed.mirror
            && up.upgrade.is_none()
        {
            up.body = upstream::mirror::copy(m, &up.parts, up.body.take(), ctx.metrics.clone());
        }
        let persist = backend.sticky.as_ref();
        if let Some(p) = persist {
            up.sticky = p.take(&mut up.parts.headers);
        }
        let asked_for = up.sticky;
        if let Some(r) = &backend.request_rules {
            r.apply(&mut up.parts.headers);
        }
        if let Some(r) = route_request_rules {
            r.apply(&mut up.parts.headers);
        }
        if let Some(e) = log.as_mut() {
            e.request_id = up
                .parts
                .headers
                .get(request::headers::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        if let Some(h) = handles {
            let counter = h.bytes_in.clone();
            up.body = up.body.map(|body| {
                Hold {
                    body,
                    guard: Count { counter, n: 0 },
                }
                .boxed()
            });
        }
        let body_timeouts = handles.map(metrics::Handles::body_timeouts);
        let upgrading = up.upgrade.is_some();
        let tunnel_counters = handles.filter(|_| upgrading).map(metrics::Handles::tunnel);
        // Boxed: hyper keeps one allocation of this function's future per connection, sized
        // for its largest state, for the connection's whole life; the exchange with the
        // server (4 KB of state) is allocated per request instead, and only while it runs.
        let mut resp = Box::pin(forward(
            backend,
            up,
            inflight,
            (body_timeouts, tunnel_counters),
            &mut trace,
        ))
        .await?;
        if let Some(r) = &backend.response_rules {
            r.apply(resp.headers_mut());
        }
        if let Some(r) = route_response_rules {
            r.apply(resp.headers_mut());
        }
        if let Some(c) = compress {
            let (r, compressed) = c.apply(gzip, head, resp);
            resp = r;
            if compressed && let Some(h) = handles {
                h.compressed().inc();
            }
        }
        if let (Some(p), Some(s)) = (persist, &trace.server)
            && asked_for != Some(s.cookie)
        {
            p.set(resp.headers_mut(), s.cookie, ctx.scheme == "https");
        }
        Ok::<_, ProxyError>(resp)
    }
    .await;
    let backend = chosen.map_or("", Backend::name);
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            debug!(error = %e, %peer, "request failed");
            if let Some(m) = &ctx.metrics {
                m.error(&ctx.name, backend, e.kind());
            }
            let mut resp = error_response(&e);
            if let Some((body, kind)) = generation.routing.error_pages.get(resp.status()) {
                *resp.body_mut() = Full::new(body.clone())
                    .map_err(|never| match never {})
                    .boxed();
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, kind.clone());
            }
            resp
        }
    };
    if let Some((c, origin)) = &cors {
        c.apply(resp.headers_mut(), origin.as_ref(), false);
    }
    if let Some(r) = &generation.response_headers {
        r.apply(resp.headers_mut());
    }
    let status = resp.status().as_u16();
    let bytes_out = ctx.metrics.as_ref().map(|m| {
        if let Some(q) = trace.queued
            && let Some(h) = handles
        {
            h.queue.observe(q.as_secs_f64());
        }
        if let Some(s) = &trace.server {
            m.server_response(backend, &s.label, status);
        }
        if trace.retries > 0 {
            m.retries(backend, trace.retries);
        }
        match handles {
            Some(h) => {
                h.observe(method, status, started.elapsed());
                h.bytes_out.clone()
            }
            None => {
                m.observe(&ctx.name, backend, method, status, started.elapsed());
                m.bytes_out(&ctx.name, backend)
            }
        }
    });
    if let Some(e) = log.as_mut() {
        e.status = status;
        backend.clone_into(&mut e.backend);
        e.server = trace.server.as_ref().map(|s| s.addr);
        e.retries = trace.retries;
        e.queue_ms = trace.queued.map_or(0.0, |q| q.as_secs_f64() * 1000.0);
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        Hold {
            body,
            guard: Done {
                _inflight: guard,
                bytes_out,
                log,
                sent: 0,
            },
        }
        .boxed(),
    ))
}

/// What `forward` learnt, for metrics and the access log.
#[derive(Debug, Default)]
struct Trace {
    /// The last server tried.
    server: Option<Arc<upstream::pool::Server>>,
    retries: u32,
    /// Time spent waiting for server slots, when a slot was asked for.
    queued: Option<Duration>,
}

/// `redirect-to-https`: the same host and target on `https://`, unless the path is exempt.
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

fn route<'g>(
    ctx: &'g Generation,
    req: &Request<Incoming>,
    client: std::net::IpAddr,
) -> Result<request::route::Routed<'g, Arc<Backend>>, ProxyError> {
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
        .ask(&request::route::Ask {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
            client,
            listener: ctx.listener,
        })
        .or(ctx
            .default_backend
            .as_ref()
            .map(|b| request::route::Routed {
                to: request::route::Dest::Backend(b),
                rewrite: None,
                forbidden: false,
                auth: None,
                basic: None,
                cors: None,
                mirror: None,
                upgrades: &request::route::DEFAULT_UPGRADES,
                request_headers: None,
                response_headers: None,
            }))
        .ok_or(ProxyError::NoRoute)
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    // Only meaningful with an h2c upgrade, which never reaches a backend.
    request::headers::HTTP2_SETTINGS,
    request::headers::KEEP_ALIVE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for h in &named {
            headers.remove(h);
        }
    }
    // One pass over the (few) fields instead of a lookup per hop-by-hop name, most of which
    // are absent.
    let hop = |n: &HeaderName| *n == header::UPGRADE || HOP_BY_HOP.contains(n);
    if headers.keys().any(hop) {
        for h in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            headers.remove(h);
        }
    }
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

/// `h2`: the backend is `proto: h2` (`TE: trailers` is kept for it). `rewrite`: the matched
/// route's `rewrite-prefix`.
/// Who a request is from, for everything that looks at its client.
struct Client<'a> {
    ip: IpAddr,
    /// `ip` as a header value.
    value: &'a HeaderValue,
    /// The connection's peer is a trusted proxy (`forwarded-headers`): its `X-Forwarded-Proto`,
    /// `-Host` and `-Port` stand.
    trusted: bool,
}

fn upstream_request(
    ctx: &ListenerCtx,
    conn: &Conn,
    client: &Client<'_>,
    mut req: Request<Incoming>,
    h2: bool,
    routed: &request::route::Routed<'_, Arc<Backend>>,
) -> Result<Upstream, ProxyError> {
    let rewrite = routed.rewrite;
    // An upgrade the route does not allow is ignored (RFC 9110 section 7.8 lets a server do
    // so): the request is served as plain HTTP and its Upgrade dropped as hop-by-hop.
    let protocol = upgrade_protocol(&req).filter(|p| routed.upgrades.allows(p));
    let upgrade = protocol.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let hv = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ProxyError::BadRequest("unrepresentable header".into()))
    };
    let host = match parts.uri.authority() {
        Some(a) => Some(hv(a.as_str())?),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // Only an HTTP/2 backend gets it: no header lookup on the HTTP/1.1 path.
    let te_trailers = h2
        && parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut parts.headers);
    if !h2 {
        request::headers::join_cookies(&mut parts.headers);
    }
    if let Some(p) = protocol {
        // The one hop-by-hop exchange that must reach the backend.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, p);
    }
    let h = &mut parts.headers;
    // Room for the headers added below at once, not a regrowth per insert.
    h.reserve(8);
    let xff = match h
        .get(request::headers::X_FORWARDED_FOR)
        .map(HeaderValue::to_str)
    {
        Some(Ok(prior)) => hv(&format!(
            "{prior}, {}",
            conn.peer_ip.to_str().unwrap_or_default()
        ))?,
        // A prior value that is not text is replaced, not extended.
        Some(Err(_)) | None => conn.peer_ip.clone(),
    };
    h.insert(request::headers::X_FORWARDED_FOR, xff);
    // A trusted proxy's word on how the client reached it stands (it may have terminated TLS).
    let keep = |h: &HeaderMap, name: &HeaderName| client.trusted && h.contains_key(name);
    if !keep(h, &request::headers::X_FORWARDED_PROTO) {
        h.insert(
            request::headers::X_FORWARDED_PROTO,
            HeaderValue::from_static(ctx.scheme),
        );
    }
    if !keep(h, &request::headers::X_FORWARDED_PORT) {
        h.insert(
            request::headers::X_FORWARDED_PORT,
            conn.port.as_ref().unwrap_or(&ctx.port).clone(),
        );
    }
    // ingress-nginx sets it, and applications behind it read it.
    h.insert(request::headers::X_REAL_IP, client.value.clone());
    if let Some(host) = &host {
        if !keep(h, &request::headers::X_FORWARDED_HOST) {
            h.insert(request::headers::X_FORWARDED_HOST, host.clone());
        }
        // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
        if !h.contains_key(header::HOST) {
            h.insert(header::HOST, host.clone());
        }
    }
    if !h.contains_key(request::headers::X_REQUEST_ID) {
        let id = ctx.request_ids.fetch_add(1, Ordering::Relaxed);
        h.insert(
            request::headers::X_REQUEST_ID,
            request_id(&ctx.request_id_prefix, id)?,
        );
    }
    if let Some(rw) = rewrite {
        // Tells the application where it is mounted, for the links it makes (as Traefik's
        // StripPrefix does).
        if let Some(p) = rw.forwarded_prefix() {
            h.insert(request::headers::X_FORWARDED_PREFIX, hv(p)?);
        }
        parts.uri = rewritten(&parts.uri, rw)?;
    } else if let Some(request::normalize::Received(received)) = parts.extensions.remove() {
        // `forward-path: as-received`: the backend gets the client's bytes; everything before
        // it decided on the normalised path.
        let mut target = std::mem::take(&mut parts.uri).into_parts();
        target.path_and_query = Some(received);
        parts.uri = Uri::from_parts(target)
            .map_err(|e| ProxyError::BadRequest(format!("bad target: {e}")))?;
    }
    // Backends speak HTTP/1.1 whatever the client spoke (`proto: h2` ones: `upstream::h2c::request`).
    parts.version = http::Version::HTTP_11;
    // A body-less request (no length, not chunked) can be replayed on another server.
    // Asked of the body itself: the headers say nothing once Transfer-Encoding (hop-by-hop)
    // is stripped, and an HTTP/2 request may carry a body without Content-Length.
    let has_body = !hyper::body::Body::is_end_stream(&body);
    // A chunked body has no declared length to check up front: it is cut where it passes
    // `max-body-bytes`, which fails the exchange with a LengthLimitError (413 below).
    let max = ctx.limits.max_body_bytes;
    Ok(Upstream {
        parts,
        body: has_body.then(|| match usize::try_from(max) {
            Ok(m) if m > 0 => http_body_util::Limited::new(body, m).boxed(),
            _ => body.map_err(Into::into).boxed(),
        }),
        upgrade,
        te_trailers,
        sticky: None,
    })
}

/// `uri` with its path rewritten by `rw`; the query, and scheme and authority when present,
/// are kept.
fn rewritten(uri: &Uri, rw: &request::route::Rewrite) -> Result<Uri, ProxyError> {
    let mut path = rw.apply(uri.path());
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path)
            .map_err(|e| ProxyError::BadRequest(format!("rewritten path: {e}")))?,
    );
    Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(format!("rewritten target: {e}")))
}

/// `<pid>-<n>` in hex, written without the formatting machinery (it showed in profiles).
fn request_id(prefix: &str, n: u64) -> Result<HeaderValue, ProxyError> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(prefix.len() + 1 + digits.len() - i);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'-');
    out.extend_from_slice(&digits[i..]);
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .map_err(|_| ProxyError::Internal("unrepresentable request id".into()))
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
    backend: &Backend,
    mut up: Upstream,
    inflight: &Arc<timeout::InFlight>,
    (body_timeouts, tunnel_counters): (
        Option<prometheus::IntCounter>,
        Option<metrics::TunnelCounters>,
    ),
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (pool, passive) = (&backend.pool, &backend.passive);
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    let replayable = up.body.is_none();
    let server_timeout = backend.server_timeout;
    loop {
        // Waits in the backend's FIFO queue when every server is at its maxconn.
        let asked = Instant::now();
        let slot = pool.acquire_sticky(&tried, up.sticky).await;
        trace.queued = Some(trace.queued.unwrap_or_default() + asked.elapsed());
        let slot = slot.map_err(ProxyError::from)?;
        let server = slot.server.addr;
        trace.server = Some(slot.server.clone());
        tried.push(server);
        let sent = tokio::time::timeout(
            server_timeout,
            backend.transport.send(&mut up, &slot.server),
        );
        let err = match sent.await {
            Ok(Ok(reply)) => {
                upstream::health::observe(pool, &slot.server, true, passive);
                // The server's place is held until its response body is done, as HAProxy
                // counts a connection until the response ends.
                return Ok(match reply {
                    Reply::Pooled(resp)
                        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                            && up.upgrade.is_some() =>
                    {
                        let idle = backend.tunnel_timeout;
                        tunnel(
                            resp,
                            up.upgrade.take(),
                            slot,
                            inflight.start(),
                            idle,
                            tunnel_counters,
                        )
                    }
                    Reply::Pooled(resp) => {
                        downstream_response(resp, slot, server_timeout, body_timeouts)
                    }
                    Reply::Direct(resp) => {
                        downstream_response(resp, slot, server_timeout, body_timeouts)
                    }
                });
            }
            Ok(Err(e)) => e,
            Err(_) => ProxyError::ServerTimeout {
                server: server.to_string(),
            },
        };
        let retryable = err.retryable(up.parts.method.is_idempotent());
        if retryable {
            upstream::health::observe(pool, &slot.server, false, passive);
        }
        drop(slot);
        let servers = pool.servers().len();
        if !(retryable && replayable && tried.len() < MAX_CONNECT_ATTEMPTS.min(servers)) {
            return Err(err);
        }
        trace.retries += 1;
        debug!(error = %err, "retrying on another server");
    }
}

/// The backend agreed to switch protocols: answer 101 and splice the two upgraded connections.
/// The tunnel holds the server slot and counts as in flight until either side closes, or until
/// `timeout tunnel` passes without a byte either way (which replaces the client timeouts).
fn tunnel(
    mut resp: Response<Incoming>,
    client: Option<hyper::upgrade::OnUpgrade>,
    slot: Slot,
    guard: timeout::InFlightGuard,
    idle: Duration,
    counters: Option<metrics::TunnelCounters>,
) -> Response<ProxyBody> {
    let server = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (_slot, guard) = (slot, guard);
        let Some(client) = client else { return };
        match tokio::try_join!(client, server) {
            Ok((c, s)) => {
                guard.tunnel();
                let (mut c, mut s) = (
                    hyper_util::rt::TokioIo::new(c),
                    hyper_util::rt::TokioIo::new(s),
                );
                let spliced = timeout::splice(&mut c, &mut s, idle).await;
                if let Some(t) = &counters {
                    t.bytes_in.inc_by(spliced.from_a);
                    t.bytes_out.inc_by(spliced.from_b);
                    if spliced.timed_out {
                        t.timeouts.inc();
                    }
                }
                if spliced.timed_out {
                    debug!(?idle, "upgraded connection closed by timeout tunnel");
                }
                if let Some(e) = spliced.error {
                    debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}

/// `idle` is `timeout server`, which also bounds the server's silence while the body streams.
fn downstream_response<B>(
    resp: Response<B>,
    slot: Slot,
    idle: Duration,
    timeouts: Option<prometheus::IntCounter>,
) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<upstream::pooled::BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = timeout::ServerIdle::new(body, idle, timeouts);
    Response::from_parts(parts, Hold { body, guard: slot }.boxed())
}

/// A body that keeps `G` alive until the body ends or is dropped, and tells it the data bytes
/// that pass.
struct Hold<B, G> {
    body: B,
    guard: G,
}

/// What a [`Hold`] keeps: told of each data frame's size.
trait Sink {
    fn data(&mut self, _bytes: usize) {}
}

/// A response body holds its server slot until it ends, as HAProxy counts a connection until
/// the response ends.
impl Sink for Slot {}

/// Counts a request body into a counter when the body is done.
struct Count {
    counter: prometheus::IntCounter,
    n: u64,
}

impl Sink for Count {
    fn data(&mut self, bytes: usize) {
        self.n += bytes as u64;
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.counter.inc_by(self.n);
    }
}

/// The end of a response to the client: the request stops being in flight, the bytes sent
/// are counted and the access log line is written.
struct Done {
    _inflight: timeout::InFlightGuard,
    bytes_out: Option<prometheus::IntCounter>,
    log: Option<Box<access::Entry>>,
    sent: u64,
}

impl Sink for Done {
    fn data(&mut self, bytes: usize) {
        self.sent += bytes as u64;
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(c) = &self.bytes_out {
            c.inc_by(self.sent);
        }
        if let Some(e) = &self.log {
            e.emit(self.sent);
        }
    }
}

impl<B, G> hyper::body::Body for Hold<B, G>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    G: Sink + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            let n = d.len();
            self.guard.data(n);
        }
        polled
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
    if let ProxyError::Unauthorized { challenge, signin } = e {
        let h = resp.headers_mut();
        if let Some(c) = challenge {
            h.insert(header::WWW_AUTHENTICATE, c.clone());
        }
        if let Some(s) = signin {
            h.insert(header::LOCATION, s.clone());
        }
    }
    if let ProxyError::RateLimited { retry_after } = e {
        // Whole seconds (RFC 9110), rounded up so a client that waits is let through.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

/// A listener as `/metrics` reads it at scrape time (`metrics::ScrapeSource`).
pub struct Scrape {
    pub ctx: Arc<ListenerCtx>,
    pub active: Arc<listener::server::Active>,
}

impl crate::metrics::ScrapeSource for Scrape {
    fn active_connections(&self) -> u32 {
        self.active.get()
    }

    fn backends(&self) -> Vec<crate::metrics::BackendGauges> {
        let routing = self.ctx.routing();
        routing
            .backends()
            .iter()
            .map(|b| {
                let p = &b.pool;
                let load = p.load();
                crate::metrics::BackendGauges {
                    name: p.name.clone(),
                    active: load.active,
                    queued: load.queued,
                    queue_max: load.queue_max,
                    maxconn: load.maxconn,
                    idle_connections: b.transport.idle_connections(),
                    h2_connections: b.transport.h2_connections(),
                    servers: p
                        .servers()
                        .iter()
                        .map(|s| crate::metrics::ServerGauges {
                            addr: s.addr,
                            active: s.active(),
                            maxconn: s.maxconn,
                            up: s.is_up(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// A reload's new generation changes the pools it shares with the running one only when
    /// committed: a reload refused after building leaves the running server lists alone.
    #[tokio::test]
    async fn a_built_generation_changes_shared_pools_only_when_committed() {
        let cfg = |port: u16| -> crate::config::Config {
            yaml_serde::from_str(&format!(
                "
listeners: [{{ name: http, bind: '127.0.0.1:8080', default-backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:{port}'] }}]
xdp: {{ enabled: false }}
"
            ))
            .expect("config")
        };
        let ports = |r: &super::Routing| -> Vec<u16> {
            r.backends()[0]
                .pool
                .servers()
                .iter()
                .map(|s| s.addr.port())
                .collect()
        };
        let running = super::Routing::build(&cfg(9101), None, 1, None)
            .await
            .expect("build");
        running.commit();
        assert_eq!(ports(&running), [9101]);
        let next = super::Routing::build(&cfg(9102), Some(&running), 1, None)
            .await
            .expect("build");
        assert!(
            Arc::ptr_eq(&running.backends()[0].pool, &next.backends()[0].pool),
            "the pool is shared"
        );
        assert_eq!(ports(&running), [9101], "built, not committed: unchanged");
        drop(next);
        assert_eq!(ports(&running), [9101], "a refused reload changed nothing");
        let next = super::Routing::build(&cfg(9102), Some(&running), 1, None)
            .await
            .expect("build");
        next.commit();
        assert_eq!(ports(&running), [9102]);
    }

    use std::sync::Arc;

    #[test]
    fn request_ids_are_the_pid_and_a_hex_counter() {
        let id = |n| super::request_id("0000abcd", n).ok();
        assert_eq!(
            id(0).as_ref().map(|v| v.as_bytes()),
            Some(&b"0000abcd-0"[..])
        );
        assert_eq!(
            id(0x1f).as_ref().map(|v| v.as_bytes()),
            Some(&b"0000abcd-1f"[..])
        );
        assert_eq!(
            id(u64::MAX).as_ref().map(|v| v.as_bytes()),
            Some(&b"0000abcd-ffffffffffffffff"[..])
        );
    }
}
