//! Prometheus metrics. Request counters and latency histograms are updated on the request path;
//! everything else (backends, servers, listeners, XDP counters from the pinned maps, conntrack,
//! reloads) is read when `/metrics` is scraped, so it costs nothing between scrapes.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, atomic::AtomicU64},
    time::Duration,
};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{config::reload, xdp::stats};

/// Buckets from 1 ms to 10 s, fine enough for P95/P99 in between.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Connect and queue times and TLS handshakes live well under a millisecond when healthy.
const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    server_responses: IntCounterVec,
    duration: HistogramVec,
    queue: HistogramVec,
    connect: HistogramVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    tls_handshakes: IntCounterVec,
    tls_duration: HistogramVec,
    redirects: IntCounterVec,
    mirrors: IntCounterVec,
    proxy_headers: IntCounterVec,
    passthrough: IntCounterVec,
    tcp_bytes: IntCounterVec,
    compressed: IntCounterVec,
    rejected: IntCounterVec,
    pressure: prometheus::IntGauge,
    pressure_engagements: prometheus::IntCounter,
}

/// The connection-level timeouts of one listener, resolved once so the IO path only bumps an
/// atomic.
#[derive(Clone)]
pub struct TimeoutCounters {
    pub http_request: IntCounter,
    pub keep_alive: IntCounter,
    pub client: IntCounter,
    /// Not a timeout, but the other way a client connection is cut by floodgate.
    pub rapid_reset: IntCounter,
}

/// The method classes requests are counted by; anything else is `other`.
/// The `method` label values, indexed by `method_index`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// The `code` label values, indexed by `status_index`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: u16) -> usize {
    match status / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// What the tunnel of an upgraded (WebSocket) connection counts: `timeout tunnel` expiries,
/// and its bytes each way as body bytes of its listener and backend (HAProxy counts a
/// tunnel's bytes in its `bytes_in` and `bytes_out` too).
pub struct TunnelCounters {
    pub timeouts: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
}

/// One listener's metric handles for one backend, made on its first request. Finding a
/// labelled metric hashes every label value and takes a lock: that was five times per request.
pub struct Handles {
    requests_vec: IntCounterVec,
    listener: String,
    backend: String,
    requests: [[OnceLock<IntCounter>; STATUS_CLASSES.len()]; METHODS.len()],
    errors_vec: IntCounterVec,
    body_timeouts: OnceLock<IntCounter>,
    duration: Histogram,
    pub queue: Histogram,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    compressed_vec: IntCounterVec,
    compressed: OnceLock<IntCounter>,
}

impl Handles {
    /// `floodgate_http_compressed_responses_total`, made on first use (only backends with
    /// `compression` have the series).
    pub fn compressed(&self) -> &IntCounter {
        self.compressed.get_or_init(|| {
            self.compressed_vec
                .with_label_values(&[self.listener.as_str(), self.backend.as_str()])
        })
    }

    /// `floodgate_http_errors_total{kind="server_body_timeout"}`, for a response body to count
    /// itself into if its server falls silent (made on first use).
    pub fn body_timeouts(&self) -> IntCounter {
        self.body_timeouts
            .get_or_init(|| {
                self.errors_vec.with_label_values(&[
                    self.listener.as_str(),
                    self.backend.as_str(),
                    "server_body_timeout",
                ])
            })
            .clone()
    }

    /// `floodgate_http_errors_total{kind="tunnel_timeout"}`, for an upgraded connection cut by
    /// `timeout tunnel` (rare: made when used).
    pub fn tunnel(&self) -> TunnelCounters {
        TunnelCounters {
            timeouts: self.errors_vec.with_label_values(&[
                self.listener.as_str(),
                self.backend.as_str(),
                "tunnel_timeout",
            ]),
            bytes_in: self.bytes_in.clone(),
            bytes_out: self.bytes_out.clone(),
        }
    }

    /// A request answered: `floodgate_http_requests_total` and its duration.
    pub fn observe(&self, method: usize, status: u16, took: Duration) {
        let m = method.min(METHODS.len() - 1);
        let s = status_index(status);
        self.requests[m][s]
            .get_or_init(|| {
                self.requests_vec.with_label_values(&[
                    self.listener.as_str(),
                    self.backend.as_str(),
                    METHODS[m],
                    STATUS_CLASSES[s],
                ])
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// The registry, for metrics a subsystem owns (the Kubernetes control plane's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let pressure = prometheus::IntGauge::new(
            "floodgate_xdp_pressure",
            "1 while the XDP SYN rate limits are engaged (SYN pressure), 0 otherwise",
        )?;
        r.register(Box::new(pressure.clone()))?;
        let pressure_engagements = prometheus::IntCounter::new(
            "floodgate_xdp_pressure_engagements_total",
            "Times SYN pressure engaged the XDP SYN rate limits",
        )?;
        r.register(Box::new(pressure_engagements.clone()))?;
        Ok(Self {
            pressure,
            pressure_engagements,
            requests: counter(
                &r,
                "floodgate_http_requests_total",
                "HTTP requests answered, by listener, backend, method class and status class",
                &["listener", "backend", "method", "code"],
            )?,
            server_responses: counter(
                &r,
                "floodgate_server_responses_total",
                "Answers to requests sent to a server, by backend, server and status class",
                &["backend", "server", "code"],
            )?,
            duration: histogram(
                &r,
                "floodgate_http_request_duration_seconds",
                "Time from the request's arrival to its response headers, by listener and backend",
                &["listener", "backend"],
                BUCKETS,
            )?,
            queue: histogram(
                &r,
                "floodgate_backend_queue_duration_seconds",
                "Time a request waited for a server slot (HAProxy Tw), by backend",
                &["backend"],
                FAST_BUCKETS,
            )?,
            connect: histogram(
                &r,
                "floodgate_backend_connect_duration_seconds",
                "Time to open a new TCP connection to a server (HAProxy Tc), by backend",
                &["backend"],
                FAST_BUCKETS,
            )?,
            errors: counter(
                &r,
                "floodgate_http_errors_total",
                "Requests and connections that ended in an error or a timeout, by kind",
                &["listener", "backend", "kind"],
            )?,
            retries: counter(
                &r,
                "floodgate_backend_retries_total",
                "Requests sent again to another server after a connect failure or an empty response",
                &["backend"],
            )?,
            bytes_in: counter(
                &r,
                "floodgate_http_request_body_bytes_total",
                "Request body bytes received from clients and sent on to backends",
                &["listener", "backend"],
            )?,
            bytes_out: counter(
                &r,
                "floodgate_http_response_body_bytes_total",
                "Response body bytes sent to clients",
                &["listener", "backend"],
            )?,
            tls_handshakes: counter(
                &r,
                "floodgate_tls_handshakes_total",
                "TLS handshakes by result (ok, failed, timeout), version and cipher suite",
                &["listener", "result", "version", "cipher"],
            )?,
            tls_duration: histogram(
                &r,
                "floodgate_tls_handshake_duration_seconds",
                "Time from accept to a completed TLS handshake",
                &["listener"],
                FAST_BUCKETS,
            )?,
            redirects: counter(
                &r,
                "floodgate_http_redirects_total",
                "Plain HTTP requests redirected to HTTPS",
                &["listener"],
            )?,
            rejected: counter(
                &r,
                "floodgate_connections_rejected_total",
                "Accepted connections closed at once, by reason (per_source: max-connections-per-source)",
                &["listener", "reason"],
            )?,
            compressed: counter(
                &r,
                "floodgate_http_compressed_responses_total",
                "Responses compressed with gzip by floodgate (backends[].compression)",
                &["listener", "backend"],
            )?,
            passthrough: counter(
                &r,
                "floodgate_tcp_connections_total",
                "Connections carried to a backend as bytes (mode: tcp listeners, TLS passthrough), by how they ended (closed, tunnel_timeout, no_server, connect_failed; unknown_host, backend empty, on a passthrough listener without certificates)",
                &["listener", "backend", "result"],
            )?,
            tcp_bytes: counter(
                &r,
                "floodgate_tcp_bytes_total",
                "Bytes of connections carried as bytes (mode: tcp listeners, TLS passthrough), counted when each closes: in from clients (a passthrough ClientHello included), out to them",
                &["listener", "backend", "direction"],
            )?,
            proxy_headers: counter(
                &r,
                "floodgate_proxy_protocol_headers_total",
                "PROXY protocol headers read at accept, by result (proxied, local, invalid, timeout, closed)",
                &["listener", "result"],
            )?,
            mirrors: counter(
                &r,
                "floodgate_mirror_requests_total",
                "Copies of requests sent to a route's mirror backend, by result (sent, failed, skipped)",
                &["backend", "result"],
            )?,
            registry: r,
        })
    }

    /// Records one answered request (at its response headers). `backend` is empty when no route
    /// matched.
    /// A request answered, for requests no backend was chosen for (see `Handles`).
    pub fn observe(
        &self,
        listener: &str,
        backend: &str,
        method: usize,
        status: u16,
        took: Duration,
    ) {
        let m = method.min(METHODS.len() - 1);
        self.requests
            .with_label_values(&[listener, backend, METHODS[m], status_class(status)])
            .inc();
        self.duration
            .with_label_values(&[listener, backend])
            .observe(took.as_secs_f64());
    }

    pub fn handles(&self, listener: &str, backend: &str) -> Handles {
        Handles {
            requests_vec: self.requests.clone(),
            listener: listener.to_owned(),
            backend: backend.to_owned(),
            requests: Default::default(),
            errors_vec: self.errors.clone(),
            body_timeouts: OnceLock::new(),
            duration: self.duration.with_label_values(&[listener, backend]),
            queue: self.queue.with_label_values(&[backend]),
            bytes_in: self.bytes_in(listener, backend),
            bytes_out: self.bytes_out(listener, backend),
            compressed_vec: self.compressed.clone(),
            compressed: OnceLock::new(),
        }
    }

    /// The answer to a request a server was chosen for (its own, or floodgate's 502/504).
    pub fn server_response(&self, backend: &str, server: &str, status: u16) {
        self.server_responses
            .with_label_values(&[backend, server, status_class(status)])
            .inc();
    }

    pub fn error(&self, listener: &str, backend: &str, kind: &str) {
        self.errors
            .with_label_values(&[listener, backend, kind])
            .inc();
    }

    pub fn retries(&self, backend: &str, n: u32) {
        self.retries
            .with_label_values(&[backend])
            .inc_by(u64::from(n));
    }

    /// The connect-time histogram of one backend, for its upstream connector.
    pub fn connect_histogram(&self, backend: &str) -> Histogram {
        self.connect.with_label_values(&[backend])
    }

    pub fn bytes_in(&self, listener: &str, backend: &str) -> IntCounter {
        self.bytes_in.with_label_values(&[listener, backend])
    }

    pub fn bytes_out(&self, listener: &str, backend: &str) -> IntCounter {
        self.bytes_out.with_label_values(&[listener, backend])
    }

    pub fn tls_handshake(
        &self,
        listener: &str,
        result: &str,
        version: &str,
        cipher: &str,
        took: Option<Duration>,
    ) {
        self.tls_handshakes
            .with_label_values(&[listener, result, version, cipher])
            .inc();
        if let Some(t) = took {
            self.tls_duration
                .with_label_values(&[listener])
                .observe(t.as_secs_f64());
        }
    }

    /// One PROXY protocol header read on `listener`: `proxied`, `local` (the sender's own
    /// connection), or why the connection was closed (`invalid`, `timeout`, `closed`).
    pub fn proxy_header(&self, listener: &str, result: &str) {
        self.proxy_headers
            .with_label_values(&[listener, result])
            .inc();
    }

    /// One connection carried to `backend` as bytes ended with `result`.
    pub fn carried(&self, listener: &str, backend: &str, result: &str) {
        self.passthrough
            .with_label_values(&[listener, backend, result])
            .inc();
    }

    /// Bytes a carried connection passed: `from_client` to its server, `to_client` back.
    pub fn carried_bytes(&self, listener: &str, backend: &str, from_client: u64, to_client: u64) {
        self.tcp_bytes
            .with_label_values(&[listener, backend, "in"])
            .inc_by(from_client);
        self.tcp_bytes
            .with_label_values(&[listener, backend, "out"])
            .inc_by(to_client);
    }

    /// A connection closed at accept for `reason`.
    pub fn rejected(&self, listener: &str, reason: &str) {
        self.rejected.with_label_values(&[listener, reason]).inc();
    }

    pub fn redirect(&self, listener: &str) {
        self.redirects.with_label_values(&[listener]).inc();
    }

    /// One copy of a request for `backend`'s mirror: `sent` (it answered), `failed`, or
    /// `skipped` (no server had room).
    pub fn mirror(&self, backend: &str, result: &str) {
        self.mirrors.with_label_values(&[backend, result]).inc();
    }

    /// The SYN rate limits were engaged (`true`) or released.
    pub fn pressure(&self, engaged: bool) {
        self.pressure.set(i64::from(engaged));
        if engaged {
            self.pressure_engagements.inc();
        }
    }

    pub fn timeouts(&self, listener: &str) -> TimeoutCounters {
        let c = |kind| self.errors.with_label_values(&[listener, "", kind]);
        TimeoutCounters {
            http_request: c("http_request_timeout"),
            keep_alive: c("keep_alive_timeout"),
            client: c("client_timeout"),
            rapid_reset: c("http2_rapid_reset"),
        }
    }
}

/// What the proxy shows `/metrics` at scrape time. Implemented by the proxy (`proxy::Scrape`),
/// so that this module, which the proxy reports to, needs none of its types.
pub trait ScrapeSource: Send + Sync {
    /// Connections the listener holds.
    fn active_connections(&self) -> u32;
    /// The backends of the routing this listener serves (every listener shares one).
    fn backends(&self) -> Vec<BackendGauges>;
}

/// A backend's gauges at scrape time.
pub struct BackendGauges {
    pub name: String,
    pub active: u32,
    pub queued: u32,
    pub queue_max: u32,
    /// Sum of the up servers' maxconn, 0 when unlimited.
    pub maxconn: u32,
    pub idle_connections: usize,
    /// For a `proto: h2` backend.
    pub h2_connections: Option<usize>,
    pub servers: Vec<ServerGauges>,
}

pub struct ServerGauges {
    pub addr: std::net::SocketAddr,
    pub active: u32,
    pub maxconn: u32,
    pub up: bool,
}

pub struct ListenerSource {
    pub name: String,
    pub source: Arc<dyn ScrapeSource>,
    /// `listeners[].maxconn`, 0 when only the global one applies.
    pub maxconn: u32,
}

/// What `/metrics` reads at scrape time.
pub struct Sources {
    pub listeners: Vec<ListenerSource>,
    pub maxconn: u32,
    /// Entries in the XDP flow table, counted by the control loop when it ages the table (a
    /// walk of the whole table is too slow for every scrape).
    pub flows: Arc<AtomicU64>,
    pub reloads: Arc<reload::Counts>,
    /// The TLS listeners' acceptors (certificates, certificate reloads).
    pub tls: Vec<Arc<crate::tls::Acceptor>>,
    /// The pin directory when XDP is enabled.
    pub pin_dir: Option<PathBuf>,
}

/// The families computed at scrape time, as the `prometheus` crate's vectors in a registry made
/// for one scrape: names, HELP and TYPE lines and label escaping come from the library, as for
/// the request-path metrics (`Metrics::registry`).
struct ScrapeRegistry(Registry);

impl ScrapeRegistry {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

/// A count as a gauge's value (counts here are far below `i64::MAX`; saturate if not).
fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The whole exposition: the registry, then the scrape-time families.
pub fn render(m: &Metrics, src: &Sources) -> String {
    let mut families = m.registry.gather();
    match scrape_families(src) {
        Ok(f) => families.extend(f),
        // Only a programming error (two families of one name) gets here: say so, and still
        // serve the request-path metrics.
        Err(e) => tracing::error!(error = %e, "scrape-time metrics left out"),
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

fn scrape_families(src: &Sources) -> prometheus::Result<Vec<prometheus::proto::MetricFamily>> {
    use std::sync::atomic::Ordering::Relaxed;
    let r = ScrapeRegistry(Registry::new());
    r.gauge(
        "floodgate_build_info",
        "Always 1, labelled with the version",
        &["version"],
    )?
    .with_label_values(&[env!("CARGO_PKG_VERSION")])
    .set(1);
    r.gauge(
        "floodgate_maxconn",
        "The effective global maxconn (after the fd limit)",
        &[],
    )?
    .with_label_values::<&str>(&[])
    .set(i64::from(src.maxconn));
    let active = r.gauge(
        "floodgate_listener_active_connections",
        "Connections held per listener",
        &["listener"],
    )?;
    let maxconn = r.gauge(
        "floodgate_listener_maxconn",
        "The listener's own connection limit (HAProxy slim), 0 when only the global one applies",
        &["listener"],
    )?;
    for l in &src.listeners {
        active
            .with_label_values(&[&l.name])
            .set(i64::from(l.source.active_connections()));
        maxconn
            .with_label_values(&[&l.name])
            .set(i64::from(l.maxconn));
    }
    let reloads = r.counter(
        "floodgate_config_reloads_total",
        "Config reloads by result",
        &["result"],
    )?;
    reloads
        .with_label_values(&["ok"])
        .inc_by(src.reloads.ok.load(Relaxed));
    reloads
        .with_label_values(&["failed"])
        .inc_by(src.reloads.failed.load(Relaxed));

    if !src.tls.is_empty() {
        let cert_reloads = r.counter(
            "floodgate_tls_certificate_reloads_total",
            "Certificate reloads from disk by result; a failed one leaves the previous in use",
            &["listener", "result"],
        )?;
        let expiry = r.gauge(
            "floodgate_tls_certificate_expiry_timestamp_seconds",
            "notAfter of each certificate in use, by listener, its first name and key type",
            &["listener", "name", "key"],
        )?;
        let stapled = r.gauge(
            "floodgate_tls_ocsp_stapled",
            "1 when an OCSP response is stapled for the certificate",
            &["listener", "name", "key"],
        )?;
        for a in &src.tls {
            for (result, n) in [("ok", &a.reloads.ok), ("failed", &a.reloads.failed)] {
                cert_reloads
                    .with_label_values(&[a.listener.as_str(), result])
                    .inc_by(n.load(Relaxed));
            }
            for c in a.certificates() {
                let labels = [a.listener.as_str(), c.name.as_str(), c.key];
                expiry.with_label_values(&labels).set(c.not_after);
                stapled
                    .with_label_values(&labels)
                    .set(i64::from(c.ocsp_stapled));
            }
        }
    }

    if let Some(l) = src.listeners.first() {
        let b_labels = &["backend"];
        let active = r.gauge(
            "floodgate_backend_active_requests",
            "Requests in flight per backend (HAProxy scur)",
            b_labels,
        )?;
        let queued = r.gauge(
            "floodgate_backend_queued_requests",
            "Requests waiting in the backend's queue (HAProxy qcur)",
            b_labels,
        )?;
        let queue_max = r.gauge(
            "floodgate_backend_queue_max",
            "Requests the backend's queue holds at most (queue-max)",
            b_labels,
        )?;
        let maxconn = r.gauge(
            "floodgate_backend_maxconn",
            "Sum of the backend's up servers' maxconn, 0 when unlimited",
            b_labels,
        )?;
        let idle = r.gauge(
            "floodgate_backend_idle_connections",
            "Idle keep-alive connections to the backend's servers, kept for reuse (HAProxy idle_conn_cur), as of the last 2 s sweep",
            b_labels,
        )?;
        let h2 = r.gauge(
            "floodgate_backend_h2_connections",
            "HTTP/2 connections open to the servers of a proto h2 backend, one per server and worker, as of the last 2 s sweep",
            b_labels,
        )?;
        let s_labels = &["backend", "server"];
        let s_active = r.gauge(
            "floodgate_server_active_requests",
            "Requests in flight per server",
            s_labels,
        )?;
        let s_maxconn = r.gauge(
            "floodgate_server_maxconn",
            "Per-server limit, 0 for none (HAProxy slim)",
            s_labels,
        )?;
        let s_up = r.gauge(
            "floodgate_server_up",
            "1 when the server is up (health)",
            s_labels,
        )?;
        for b in l.source.backends() {
            let name = [b.name.as_str()];
            active.with_label_values(&name).set(i64::from(b.active));
            queued.with_label_values(&name).set(i64::from(b.queued));
            queue_max
                .with_label_values(&name)
                .set(i64::from(b.queue_max));
            maxconn.with_label_values(&name).set(i64::from(b.maxconn));
            idle.with_label_values(&name).set(int(b.idle_connections));
            if let Some(n) = b.h2_connections {
                h2.with_label_values(&name).set(int(n));
            }
            for s in &b.servers {
                let addr = s.addr.to_string();
                let labels = [b.name.as_str(), addr.as_str()];
                s_active.with_label_values(&labels).set(i64::from(s.active));
                s_maxconn
                    .with_label_values(&labels)
                    .set(i64::from(s.maxconn));
                s_up.with_label_values(&labels).set(i64::from(s.up));
            }
        }
    }

    if let Some(dir) = &src.pin_dir
        && let Ok(snap) = stats::read_counters(dir)
    {
        let labels = &["interface", "mode", "reason", "action"];
        let packets = r.counter(
            "floodgate_xdp_packets_total",
            "Packets seen by the XDP program, by interface (with its attach mode), reason and action",
            labels,
        )?;
        let bytes = r.counter(
            "floodgate_xdp_bytes_total",
            "Bytes seen by the XDP program, by interface (with its attach mode), reason and action",
            labels,
        )?;
        let mode_of = |iface: &str| {
            snap.interfaces
                .iter()
                .find(|a| a.interface == iface)
                .map_or("", |a| a.mode.as_str())
        };
        for (iface, reasons) in &snap.per_interface {
            for (reason, c) in reasons {
                let labels = [iface.as_str(), mode_of(iface), reason, c.verdict];
                packets.with_label_values(&labels).inc_by(c.packets);
                bytes.with_label_values(&labels).inc_by(c.bytes);
            }
        }
        let attached = r.gauge(
            "floodgate_xdp_attached",
            "1 per interface the program is attached to, with the mode in use and the mode asked for",
            &["interface", "mode", "requested"],
        )?;
        for a in &snap.interfaces {
            attached
                .with_label_values(&[a.interface.as_str(), a.mode.as_str(), a.requested.as_str()])
                .set(1);
        }
        r.gauge(
            "floodgate_flows",
            "Flows in floodgate's own flow table",
            &[],
        )?
        .with_label_values::<&str>(&[])
        .set(int(src.flows.load(Relaxed)));
        r.counter(
            "floodgate_conntrack_bypassed_flows_total",
            "Flows that skipped netfilter conntrack and entered floodgate's flow table",
            &[],
        )?
        .with_label_values::<&str>(&[])
        .inc_by(snap.reasons.get("flows_inserted").map_or(0, |c| c.packets));
    }
    if let Some(c) = crate::xdp::conntrack::usage() {
        r.gauge(
            "floodgate_conntrack_entries",
            "nf_conntrack_count of this network namespace",
            &[],
        )?
        .with_label_values::<&str>(&[])
        .set(int(c.count));
        r.gauge(
            "floodgate_conntrack_max",
            "nf_conntrack_max of this network namespace",
            &[],
        )?
        .with_label_values::<&str>(&[])
        .set(int(c.max));
    }
    Ok(r.0.gather())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A label value from outside floodgate's config (a certificate's name, an interface's)
    /// is escaped as the text format requires, by the library.
    #[test]
    fn label_values_from_outside_are_escaped() {
        let r = ScrapeRegistry(Registry::new());
        r.gauge("t", "t", &["name"])
            .unwrap()
            .with_label_values(&["a\"b\\c\nd"])
            .set(1);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&r.0.gather(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(r#"t{name="a\"b\\c\nd"} 1"#), "{text}");
    }

    #[test]
    fn classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(METHODS[method_index(&http::Method::GET)], "GET");
        assert_eq!(
            METHODS[method_index(&http::Method::from_bytes(b"PROPFIND").unwrap())],
            "other"
        );
    }
}
