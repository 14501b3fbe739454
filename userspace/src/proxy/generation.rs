//! A config generation as the proxy runs it: `Routing` (the router, one `Backend` runtime value
//! per backend, error pages, and the tasks the generation owns), and per listener the
//! `ListenerCtx` whose current `Generation` a reload swaps. A request reads the generation
//! once when it starts and keeps it to its end; a connection carried as bytes keeps the one it
//! was accepted under.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, OnceLock, atomic::AtomicU64},
    time::Duration,
};

use http::HeaderValue;

use super::{
    error::{self},
    listener,
    request::{self, route::Router},
    upstream::{self, backend::Backend, pool::Pool},
};
use crate::{
    access,
    config::{self, Config},
    metrics::{self, Metrics},
};

/// Everything a request needs, built once per config generation. In-flight requests keep the
/// generation they started on; new ones take the current one.
pub struct Routing {
    pub(super) router: Router<Arc<Backend>>,
    /// In config order.
    backends: Vec<Arc<Backend>>,
    /// `error-pages`, read.
    pub(super) error_pages: error::Pages,
    /// Health checks, DNS discovery and the idle-connection reaper of this generation,
    /// stopped with it. They start at `commit`.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Server lists for pools carried over from the previous generation, applied at `commit`:
    /// a reload refused after this generation was built leaves the running pools as they were.
    pending: std::sync::Mutex<PendingServers>,
    /// Opens when the generation is committed; its tasks wait for it.
    gate: tokio::sync::watch::Sender<bool>,
    /// Mirror copies in flight, aborted with the generation. (A passive-health ejection timer
    /// belongs to its pool instead, which outlives generations: cancelling it would leave the
    /// server out for good.)
    pub(super) mirrors: upstream::mirror::Copies,
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
        // By name: with thousands of backends (cluster mode) a scan per backend or per route
        // would be quadratic in every rebuild.
        let previous_pools: HashMap<&str, &Arc<Pool>> = previous
            .map(|p| p.backends.iter().map(|b| (b.name(), &b.pool)).collect())
            .unwrap_or_default();
        for (index, (b, tls)) in cfg.backends.iter().zip(tls).enumerate() {
            let reusable = previous_pools
                .get(b.name.as_str())
                .copied()
                .filter(|p| p.same_settings(&b.name, b.balance, b.queue_timeout(t), b.queue_max));
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
        let by_name: HashMap<&str, &Arc<Backend>> =
            backends.iter().map(|b| (b.name(), b)).collect();
        let router = Router::with_users(
            &cfg.routes,
            &basic,
            |name| by_name.get(name).map(|b| Arc::clone(b)),
            |name| cfg.listeners.iter().position(|l| l.name == name),
        );
        Ok(Self {
            router,
            backends,
            error_pages,
            tasks,
            pending: std::sync::Mutex::new(pending),
            gate,
            mirrors: upstream::mirror::Copies::default(),
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

/// Per-listener request context.
pub struct ListenerCtx {
    /// The current config generation and this listener's default backend in it. A reload
    /// swaps it; a request reads it once when it starts and keeps that generation to its end.
    pub(super) current: std::sync::RwLock<Generation>,
    pub scheme: &'static str,
    /// The listener's port, for `X-Forwarded-Port`.
    pub(super) port: HeaderValue,
    /// The same, as a number (redirects built from the request's URL).
    pub(super) port_number: u16,
    pub(super) request_ids: AtomicU64,
    /// The pid part of generated request ids, formatted once: getpid() is a real syscall, and
    /// it was one of five per proxied request.
    pub(super) request_id_prefix: String,
    pub(super) limits: config::Limits,
    /// `global.forward-path: as-received`: the path as the client sent it goes to backends.
    pub(super) forward_received: bool,
    /// `global.http2.max-resets`.
    pub h2_max_resets: u32,
    /// The listener's name, for metrics labels.
    pub name: String,
    pub metrics: Option<Arc<Metrics>>,
}

#[derive(Clone)]
pub(super) struct Generation {
    pub(super) routing: Arc<Routing>,
    pub(super) default_backend: Option<Arc<Backend>>,
    pub(super) redirect: Option<Arc<config::RedirectToHttps>>,
    pub(super) rate_limit: Option<Arc<request::ratelimit::Limiter>>,
    /// The listener's `response-headers`, for every response it sends.
    pub(super) response_headers: Option<Arc<request::headers::Rules>>,
    pub(super) access: Option<Arc<access::Policy>>,
    /// Who opens connections with a PROXY protocol header.
    pub(super) proxy_protocol: Option<Arc<config::ProxyProtocol>>,
    /// Whose forwarding headers name the client.
    pub(super) forwarded: Option<Arc<request::forwarded::Trust>>,
    /// Hosts whose TLS connections are carried to a backend as they are.
    pub(super) passthrough: Option<Arc<listener::passthrough::Passthrough>>,
    /// `mode: tcp`: every connection is carried to the default backend.
    pub(super) tcp: bool,
    /// `max-connections-per-source`: the connections each client address holds.
    pub(super) per_source: Option<Arc<listener::connlimit::PerSource>>,
    /// Per backend of `routing`, this listener's metric handles, made on first use.
    pub(super) handles: Arc<[OnceLock<metrics::Handles>]>,
    /// This listener's place in the config (routes' `listeners`).
    pub(super) listener: usize,
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
            passthrough: listener::passthrough::Passthrough::new(&listener.passthrough, |n| {
                routing.backend(n).cloned()
            })
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
    pub(super) fn handles<'g>(
        &self,
        g: &'g Generation,
        backend: &Backend,
    ) -> Option<&'g metrics::Handles> {
        let m = self.metrics.as_ref()?;
        // `handles` has one cell per backend of `g.routing`, which `backend` is one of.
        let cell = g.handles.get(backend.index)?;
        Some(cell.get_or_init(|| m.handles(&self.name, backend.name())))
    }

    pub(super) fn generation(&self) -> Generation {
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
}
