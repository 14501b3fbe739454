//! The request-path metrics: counters and latency histograms updated as requests pass, through
//! per-listener and per-backend handles looked up once. What is read only when `/metrics` is
//! scraped, and the exposition itself, are in `admin::exposition`.

use std::{sync::OnceLock, time::Duration};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

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
    handoffs: IntCounterVec,
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

/// One server's `floodgate_server_responses_total` per status class, found once: finding a
/// labelled series hashes its labels and takes a lock, on every request before.
#[derive(Debug, Default)]
pub struct ServerResponses([OnceLock<IntCounter>; STATUS_CLASSES.len()]);

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
            handoffs: counter(
                &r,
                "floodgate_http1_engine_handoffs_total",
                "HTTP/1.1 connections floodgate's engine left to hyper at a request, by reason (http_1_0, transfer_encoding, upgrade, connect, malformed, head_too_large, ...)",
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
    /// An answer of server `server` of `backend`; `cache`, the server's own handles.
    pub fn server_response(
        &self,
        cache: &ServerResponses,
        backend: &str,
        server: &str,
        status: u16,
    ) {
        let s = status_index(status);
        cache.0[s]
            .get_or_init(|| {
                self.server_responses
                    .with_label_values(&[backend, server, STATUS_CLASSES[s]])
            })
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

    /// A connection the HTTP/1.1 engine left to hyper, for `reason`.
    pub fn handoff(&self, listener: &str, reason: &str) {
        self.handoffs.with_label_values(&[listener, reason]).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

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
