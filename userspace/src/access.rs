//! The access log: one event per request, written when its response body ends (so it carries
//! the bytes sent and the whole duration, as HAProxy's log line does). Events go through
//! `tracing` with target `floodgate::access`, so they follow the process's log format.

use std::{net::SocketAddr, time::Instant};

use crate::config::{ACCESS_LOG_FIELDS, AccessLog};

/// The configured fields, as a bit set over [`ACCESS_LOG_FIELDS`].
#[derive(Debug, Clone, Copy)]
struct Fields(u32);

impl Fields {
    fn has(self, name: &str) -> bool {
        ACCESS_LOG_FIELDS
            .iter()
            .position(|f| *f == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// A connection carried as bytes (a `mode: tcp` listener, TLS passthrough) that ended.
pub struct CarriedLine<'a> {
    pub listener: &'a str,
    pub client: Client,
    /// The name a passthrough connection's ClientHello asked for.
    pub host: Option<&'a str>,
    pub backend: &'a str,
    pub server: Option<SocketAddr>,
    /// `floodgate_tcp_connections_total`'s `result`.
    pub result: &'static str,
    pub duration: std::time::Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The access log policy of one config generation.
#[derive(Debug, Clone)]
pub struct Policy {
    fields: Fields,
    /// `sample` scaled to the range of the random numbers drawn.
    threshold: u64,
    always_log_errors: bool,
}

impl Policy {
    /// `None` when the access log is off.
    pub fn new(cfg: &AccessLog) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        let bits = cfg
            .fields
            .iter()
            .filter_map(|f| ACCESS_LOG_FIELDS.iter().position(|k| k == f))
            .fold(0u32, |b, i| b | (1 << i));
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let threshold = if cfg.sample >= 1.0 {
            u64::MAX
        } else {
            (cfg.sample * u64::MAX as f64) as u64
        };
        Some(Self {
            fields: Fields(bits),
            threshold,
            always_log_errors: cfg.always_log_errors,
        })
    }

    /// Whether this request or connection falls in the `sample`.
    fn sampled(&self) -> bool {
        self.threshold == u64::MAX || crate::rng::next() <= self.threshold
    }

    /// Writes the line of a carried connection when it ends (HAProxy's `option tcplog`), with
    /// the message `connection`: `result` stands for `status` (and is an error unless
    /// `closed`), `bytes` is what went to the client and `bytes_in` what came from it.
    pub fn carried(&self, c: &CarriedLine<'_>) {
        let sampled = self.sampled();
        if !(sampled || (self.always_log_errors && c.result != "closed")) {
            return;
        }
        let on = |name| self.fields.has(name);
        tracing::info!(
            target: "floodgate::access",
            listener = on("listener").then_some(c.listener),
            client = on("client").then_some(tracing::field::display(c.client)),
            host = c.host.filter(|_| on("host")),
            result = on("status").then_some(c.result),
            backend = on("backend").then_some(c.backend),
            server = c.server.filter(|_| on("server")).map(tracing::field::display),
            duration_ms = on("duration_ms").then_some(round3(c.duration.as_secs_f64() * 1000.0)),
            bytes = on("bytes").then_some(c.bytes_out),
            bytes_in = on("bytes").then_some(c.bytes_in),
            "connection"
        );
    }

    /// Starts an entry for a request, or `None` when it cannot be logged whatever its status.
    pub fn begin<B>(
        &self,
        listener: &str,
        client: Client,
        req: &http::Request<B>,
    ) -> Option<Box<Entry>> {
        let sampled = self.sampled();
        if !sampled && !self.always_log_errors {
            return None;
        }
        let f = self.fields;
        let header = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Some(Box::new(Entry {
            fields: f,
            sampled,
            started: Instant::now(),
            listener: listener.to_owned(),
            client,
            method: req.method().clone(),
            host: if f.has("host") {
                req.uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| header(http::header::HOST))
            } else {
                None
            },
            path: if f.has("path") {
                req.uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
            } else {
                String::new()
            },
            protocol: req.version(),
            user_agent: if f.has("user_agent") {
                header(http::header::USER_AGENT)
            } else {
                None
            },
            request_id: None,
            status: 0,
            backend: String::new(),
            server: None,
            retries: 0,
            queue_ms: 0.0,
        }))
    }
}

/// The `client` field: the address and port of the connection's client, or only the address
/// of a client a trusted proxy's header named (its port there is unknown).
#[derive(Clone, Copy)]
pub struct Client {
    pub ip: std::net::IpAddr,
    pub port: Option<u16>,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// What is known of one request so far; logged on drop of the response body.
pub struct Entry {
    fields: Fields,
    sampled: bool,
    started: Instant,
    listener: String,
    client: Client,
    method: http::Method,
    host: Option<String>,
    path: String,
    protocol: http::Version,
    user_agent: Option<String>,
    pub request_id: Option<String>,
    pub status: u16,
    pub backend: String,
    pub server: Option<SocketAddr>,
    pub retries: u32,
    pub queue_ms: f64,
}

impl Entry {
    /// Writes the line, if sampling or the status says so. `bytes` is the response body sent.
    pub fn emit(&self, bytes: u64) {
        let error = self.status >= 400;
        if !(self.sampled || error) {
            return;
        }
        let f = self.fields;
        let on = |name| f.has(name);
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "floodgate::access",
            listener = on("listener").then_some(self.listener.as_str()),
            client = on("client").then_some(tracing::field::display(self.client)),
            method = on("method").then_some(self.method.as_str()),
            host = self.host.as_deref(),
            path = on("path").then_some(self.path.as_str()),
            protocol = on("protocol").then(|| protocol_name(self.protocol)),
            status = on("status").then_some(self.status),
            backend = on("backend").then_some(self.backend.as_str()),
            server = self.server.filter(|_| on("server")).map(tracing::field::display),
            duration_ms = on("duration_ms").then_some(round3(duration_ms)),
            queue_ms = on("queue_ms").then_some(round3(self.queue_ms)),
            bytes = on("bytes").then_some(bytes),
            retries = on("retries").then_some(self.retries),
            request_id = self.request_id.as_deref().filter(|_| on("request_id")),
            user_agent = self.user_agent.as_deref(),
            "access"
        );
    }
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(sample: f64, always: bool) -> Policy {
        Policy::new(&AccessLog {
            enabled: true,
            sample,
            always_log_errors: always,
            ..AccessLog::default()
        })
        .unwrap()
    }

    #[test]
    fn off_means_no_policy() {
        assert!(Policy::new(&AccessLog::default()).is_none());
    }

    #[test]
    fn sampling_keeps_about_the_configured_fraction() {
        let p = policy(0.1, false);
        let req = http::Request::new(());
        let client = Client {
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port: Some(1),
        };
        assert_eq!(client.to_string(), "127.0.0.1:1");
        let named = Client {
            ip: "2001:db8::7".parse().unwrap(),
            port: None,
        };
        assert_eq!(named.to_string(), "2001:db8::7");
        let kept = (0..20_000)
            .filter(|_| p.begin("l", client, &req).is_some())
            .count();
        // 2000 expected; five standard deviations is about 210.
        assert!((1_790..=2_210).contains(&kept), "kept {kept} of 20000");
        assert_eq!(
            (0..1000)
                .filter(|_| policy(0.0, false).begin("l", client, &req).is_some())
                .count(),
            0
        );
    }

    #[test]
    fn errors_are_kept_when_sampling_drops_them() {
        let p = policy(0.0, true);
        let req = http::Request::new(());
        let e = p
            .begin(
                "l",
                Client {
                    ip: std::net::Ipv4Addr::LOCALHOST.into(),
                    port: Some(1),
                },
                &req,
            )
            .expect("an entry is started in case the answer is an error");
        assert!(!e.sampled);
        assert!(e.fields.has("status") && !e.fields.has("user_agent"));
    }
}
