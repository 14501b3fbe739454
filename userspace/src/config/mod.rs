//! The configuration: a serde schema with documented defaults (docs/configuration.md), the
//! HAProxy ingress ConfigMap names as aliases, and validation that names the offending key.

pub mod haproxy;
mod load;
pub mod reload;
mod validate;

use std::{
    collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: yaml_serde::Error,
    },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub global: Global,
    #[serde(default)]
    pub xdp: Xdp,
    /// The TLS policy of every TLS listener.
    #[serde(default)]
    pub tls: TlsPolicy,
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub backends: Vec<Backend>,
    /// The admin listener (/healthz, /readyz, /metrics); off when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// One structured log line per request (off by default).
    #[serde(default)]
    pub access_log: AccessLog,
    /// Files served as the body of floodgate's own error answers, by status (HAProxy's
    /// `errorfile`): `{ 503: /etc/floodgate/errors/503.html }`.
    #[serde(default)]
    pub error_pages: BTreeMap<u16, PathBuf>,
    /// The HAProxy ingress ConfigMap's keys as they are (see `haproxy.rs`); they override the
    /// equivalent settings above.
    #[serde(default, deserialize_with = "scalar_map")]
    pub haproxy: std::collections::BTreeMap<String, String>,
    /// Routing from the Kubernetes API: the claimed Ingresses become routes, their Services'
    /// ready endpoints servers, their TLS Secrets certificates (docs/kubernetes.md). Off when
    /// absent.
    #[serde(default)]
    pub kubernetes: Option<Kubernetes>,
    /// HAProxy keys floodgate does not implement, reported by `check` and at start.
    #[serde(skip)]
    pub ignored_haproxy_keys: Vec<String>,
}

/// A ConfigMap's values are strings, but YAML reads `100000` as a number: take any scalar.
fn scalar_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let raw = std::collections::BTreeMap::<String, yaml_serde::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                yaml_serde::Value::String(s) => s,
                yaml_serde::Value::Number(n) => n.to_string(),
                yaml_serde::Value::Bool(b) => b.to_string(),
                _ => return Err(de::Error::custom(format!("haproxy.{k}: expected a string"))),
            };
            Ok((k, s))
        })
        .collect()
}

/// The `kubernetes` section: where the cluster's routing comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Kubernetes {
    /// A kubeconfig file. Absent: the pod's service account inside a cluster, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The IngressClass `spec.controller` floodgate claims: Ingresses whose class names an
    /// IngressClass with this controller are served.
    pub controller: String,
    /// The GatewayClass `spec.controllerName` floodgate claims (the Gateway API, when its CRDs
    /// are installed).
    pub gateway_controller: String,
    /// Namespaces whose Ingresses, Services, EndpointSlices and Secrets are watched; empty:
    /// every namespace.
    pub namespaces: Vec<String>,
    /// `namespace/name` of a ConfigMap whose keys are HAProxy ConfigMap keys (the global
    /// settings, as the `haproxy:` section and `--haproxy-configmap`).
    pub settings: Option<String>,
    /// Quiet time after a change before routing is rebuilt: an endpoint storm becomes one
    /// rebuild.
    pub debounce: HDuration,
    /// Longest a change waits while changes keep coming.
    pub max_delay: HDuration,
    /// What served Ingresses' `status.loadBalancer` says: IPs or host names. Empty: the
    /// addresses of the nodes floodgate's ready pods run on (`pod-selector`).
    pub status_addresses: Vec<String>,
    /// The label selector of floodgate's own pods, in its namespace.
    pub pod_selector: String,
    /// The Lease, in floodgate's namespace, whose holder writes status and events: one pod of
    /// all, while every pod serves.
    pub lease: String,
}

/// The controller name of floodgate's IngressClass.
pub const DEFAULT_CONTROLLER: &str = "floodgate.io/ingress-controller";

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            controller: DEFAULT_CONTROLLER.to_owned(),
            gateway_controller: "floodgate.io/gateway-controller".to_owned(),
            namespaces: Vec::new(),
            settings: None,
            debounce: HDuration(Duration::from_millis(100)),
            max_delay: HDuration(Duration::from_millis(500)),
            status_addresses: Vec::new(),
            pod_selector: "app.kubernetes.io/name=floodgate".to_owned(),
            lease: "floodgate".to_owned(),
        }
    }
}

impl Kubernetes {
    /// `settings` as (namespace, name).
    pub fn settings_ref(&self) -> Option<(&str, &str)> {
        self.settings.as_deref().and_then(|s| s.split_once('/'))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.controller.is_empty() || !self.controller.contains('/') {
            return Err(invalid(
                "kubernetes.controller",
                "a domain-prefixed path such as `floodgate.io/ingress-controller`",
            ));
        }
        if let Some(s) = &self.settings
            && !s
                .split_once('/')
                .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        {
            return Err(invalid(
                "kubernetes.settings",
                format!("`{s}`: expected namespace/name"),
            ));
        }
        if self.lease.is_empty() {
            return Err(invalid("kubernetes.lease", "a Lease name is required"));
        }
        if let Some(a) = self
            .status_addresses
            .iter()
            .find(|a| a.is_empty() || a.contains([' ', '/']))
        {
            return Err(invalid(
                "kubernetes.status-addresses",
                format!("`{a}`: an IP address or a host name"),
            ));
        }
        if self.debounce.0.is_zero() || self.max_delay.0 < self.debounce.0 {
            return Err(invalid(
                "kubernetes.debounce",
                "must be above 0 and at most kubernetes.max-delay",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Global {
    /// Connections the whole process holds at once; past it, connections wait in the kernel
    /// backlog (HAProxy's `maxconn`).
    #[serde(alias = "maxconn-global")]
    pub maxconn: u32,
    /// Worker threads; 0 means one per CPU.
    pub nbthread: usize,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// The path backends get: normalised (as routing and auth saw it) or as received.
    pub forward_path: ForwardPath,
    /// Bounds on each client HTTP/2 connection.
    pub http2: Http2,
    /// What serves client HTTP/1.1: floodgate's own engine, or hyper for every request.
    pub http1_engine: Http1Engine,
    /// Which worker a new connection goes to.
    pub worker_balance: WorkerBalance,
}

/// `global.worker-balance`: which worker thread accepts a new connection on a listener with a socket
/// per worker (`proxy::listener::balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerBalance {
    /// The worker with the fewest active connections, chosen in the kernel by floodgate's
    /// `SO_REUSEPORT` program (ties by the kernel's hash).
    #[default]
    Load,
    /// The kernel's hash of the connection: even in connections, blind to how long they stay.
    Hash,
}

/// `global.http1-engine`: what serves client HTTP/1.1 connections (`proxy::h1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Http1Engine {
    /// floodgate's own, which leaves to hyper what it does not serve (HTTP/1.0, chunked request
    /// bodies, upgrades, `Expect`, malformed heads).
    #[default]
    Floodgate,
    /// hyper for every request, as before the engine: a way back without a new build.
    Hyper,
}

/// `global.http2`: what one client HTTP/2 connection may hold. HAProxy's defaults (100
/// streams, 64 KiB windows, 16 KiB buffers) keep a busy connection within the ~64 KiB that
/// `limits::check_memory` counts per connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Http2 {
    /// Streams open at once (`tune.h2.max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one stream before floodgate reads them
    /// (`tune.h2.initial-window-size`).
    pub stream_window: u32,
    /// Bytes a client may send on the whole connection before floodgate reads them.
    pub connection_window: u32,
    /// Bytes of response queued per stream for a client that does not read.
    pub max_send_buffer: u32,
    /// Streams the client may cancel within 10 s before the connection gets GOAWAY (rapid
    /// reset, CVE-2023-44487).
    pub max_resets: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_window: 65_535,
            connection_window: 65_535,
            max_send_buffer: 16_384,
            max_resets: 200,
        }
    }
}

/// `global.forward-path`: what path a backend gets (see `proxy::request::normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardPath {
    /// The path routing, `allow`, `auth` and the access log saw: one meaning end to end.
    #[default]
    Normalized,
    /// The client's bytes, for backends that tell `/a%2Fb` from `/a/b` or keep `//`.
    AsReceived,
}

/// Request limits; past them a request gets 431, 414 or 413 with the reason.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Limits {
    /// Headers per request (HAProxy's `tune.http.maxhdr`); more is 431.
    pub max_header_count: usize,
    /// Bytes of request line and headers together (HAProxy's `tune.bufsize`); more is 431.
    pub max_header_bytes: usize,
    /// Bytes of the request target; more is 414.
    pub max_uri_bytes: usize,
    /// A declared `Content-Length` above this is 413; 0 is no limit.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_count: 101,
            max_header_bytes: 16_384,
            max_uri_bytes: 8_192,
            max_body_bytes: 0,
        }
    }
}

impl Default for Global {
    fn default() -> Self {
        Self {
            maxconn: 100_000,
            nbthread: 0,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            forward_path: ForwardPath::default(),
            http2: Http2::default(),
            http1_engine: Http1Engine::default(),
            worker_balance: WorkerBalance::default(),
        }
    }
}

/// HAProxy's timeouts, with the production ingress defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Timeouts {
    #[serde(alias = "timeout-client")]
    pub client: HDuration,
    #[serde(alias = "timeout-connect")]
    pub connect: HDuration,
    #[serde(alias = "timeout-queue")]
    pub queue: HDuration,
    #[serde(alias = "timeout-http-request")]
    pub http_request: HDuration,
    #[serde(alias = "timeout-http-keep-alive")]
    pub http_keep_alive: HDuration,
    #[serde(alias = "timeout-server")]
    pub server: HDuration,
    /// How long an idle server connection is kept for reuse. Below the 5 s keep-alive timeout
    /// of Node.js, uvicorn and Apache by default: a connection the server closes just as a
    /// request is written to it fails that request (a 502 when it cannot be resent).
    pub server_keep_alive: HDuration,
    /// How long an upgraded connection (WebSocket) may go without a byte either way
    /// (HAProxy's `timeout tunnel`); it replaces `client` and `server` once the server has
    /// answered 101.
    #[serde(alias = "timeout-tunnel")]
    pub tunnel: HDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client: HDuration::secs(50),
            connect: HDuration::secs(5),
            queue: HDuration::secs(5),
            http_request: HDuration::secs(10),
            http_keep_alive: HDuration::secs(1),
            server: HDuration::secs(50),
            server_keep_alive: HDuration::secs(4),
            // haproxy-ingress's default: WebSockets idle for minutes are common.
            tunnel: HDuration::secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Driver mode, falling back to generic (SKB) mode when the driver refuses.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Xdp {
    /// false runs the proxy without XDP and without privileges (development).
    pub enabled: bool,
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
    pub pin_dir: PathBuf,
    pub syn_rate: SynRate,
    pub deny: Vec<IpNet>,
    /// When not empty, only these sources may open connections.
    pub allow: Vec<IpNet>,
    /// Sources never SYN rate limited (health checkers, partners, the office).
    pub trusted: Vec<IpNet>,
    /// When the SYN rate limits apply.
    pub pressure: Pressure,
    /// Whether SYNs over the global budget are answered with SYN cookies from XDP under
    /// pressure (`auto`: floodgate sets `net.ipv4.tcp_syncookies` to 2 meanwhile) or dropped.
    pub syn_cookies: SynCookies,
    /// Keep floodgate's own flow table.
    pub flow_table: bool,
    pub flow_table_size: u32,
    /// Flows idle longer than this are removed from the flow table.
    pub flow_idle_timeout: HDuration,
    /// Drop SYNs to a listener that cannot take another connection.
    pub capacity_admission: bool,
    /// A heartbeat older than this makes capacity admission fail open.
    pub fail_open_after: HDuration,
    /// How long a source the proxy accepted a connection from skips the global SYN budget;
    /// 0 turns the bypass off.
    pub verified_ttl: HDuration,
    pub verified_table_size: u32,
    /// Leave the program attached (pinned links and maps) when floodgate exits, so a restart
    /// replaces it atomically and the node is never without admission.
    pub keep_attached_on_exit: bool,
    /// Install NOTRACK rules so listener flows skip netfilter conntrack.
    pub conntrack_bypass: bool,
    /// The nftables table (family inet) floodgate owns for those rules.
    pub nft_table: String,
}

impl Default for Xdp {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            mode: XdpMode::Auto,
            pin_dir: PathBuf::from(floodgate_common::PIN_DIR),
            syn_rate: SynRate::default(),
            deny: Vec::new(),
            allow: Vec::new(),
            trusted: Vec::new(),
            pressure: Pressure::default(),
            syn_cookies: SynCookies::Auto,
            flow_table: true,
            flow_table_size: floodgate_common::DEFAULT_FLOWS,
            flow_idle_timeout: HDuration::secs(300),
            capacity_admission: true,
            fail_open_after: HDuration::secs(2),
            verified_ttl: HDuration::secs(600),
            verified_table_size: floodgate_common::DEFAULT_VERIFIED,
            keep_attached_on_exit: false,
            conntrack_bypass: true,
            nft_table: crate::xdp::conntrack::TABLE.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SynRate {
    /// SYNs per second per source prefix; 0 turns per-source limiting off.
    pub per_source: u32,
    pub per_source_burst: u32,
    pub source_prefix_v4: u32,
    pub source_prefix_v6: u32,
    pub source_table_size: u32,
    /// SYNs per second for the whole node under pressure: `auto` (twice, at the busiest
    /// second of the minute before, the connections from new sources, or all connections when
    /// verified sources do not skip the budget), a number, or 0 (off).
    pub global: Budget,
    /// The bucket of a fixed `global` budget; `auto` takes one second's worth.
    pub global_burst: u32,
}

/// `xdp.syn-rate.global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Follows what the node accepts (`xdp/pressure.rs`).
    Auto,
    /// SYNs per second; 0 is no global budget.
    Fixed(u32),
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Budget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or SYNs per second")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Budget, E> {
                u32::try_from(v)
                    .map(Budget::Fixed)
                    .map_err(|_| E::custom(format!("{v} is over {}", u32::MAX)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Budget, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a budget cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Budget, E> {
                match v {
                    "auto" => Ok(Budget::Auto),
                    other => other
                        .parse::<u32>()
                        .map(Budget::Fixed)
                        .map_err(|_| E::custom(format!("`{other}` is not `auto` or a number"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `xdp.pressure`: when the SYN rate limits apply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Pressure {
    pub mode: PressureMode,
    /// SYNs per second admitted but never completed into a connection (spoofed, or refused by
    /// the kernel) above which the limits engage; half the accepted rate counts too, whichever
    /// is larger.
    pub unanswered_syn_rate: u32,
    /// How long the limits stay engaged after the last sign of pressure.
    pub hold: HDuration,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            mode: PressureMode::Auto,
            unanswered_syn_rate: 1000,
            hold: HDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SynCookies {
    /// Under pressure, SYNs over the global budget get an XDP SYN-cookie SYN-ACK, and
    /// floodgate holds `net.ipv4.tcp_syncookies` at 2 (restored after; a 2 found at start
    /// outside pressure is reset to 1).
    #[default]
    Auto,
    /// They are dropped; floodgate never touches the sysctl.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PressureMode {
    /// Engage under SYN pressure that the proxy measures, disengage after `hold`.
    #[default]
    Auto,
    /// Always enforce the limits (floodgate before 0.2).
    Always,
    /// Never enforce them.
    Never,
}

impl Default for SynRate {
    fn default() -> Self {
        Self {
            per_source: 100,
            per_source_burst: 200,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            source_table_size: floodgate_common::DEFAULT_SRC_BUCKETS,
            global: Budget::Auto,
            global_burst: 400_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    /// Backend for requests no route matches; without it they get 404.
    #[serde(default)]
    pub default_backend: Option<String>,
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// One socket per worker thread with SO_REUSEPORT (the kernel spreads connections over
    /// them), or, when false, one socket whose single accept queue all workers share (strict
    /// arrival order across workers, at the cost of workers contending for it).
    #[serde(default = "default_true")]
    pub reuseport: bool,
    /// Connections this listener holds at once, within the global maxconn; none by default.
    #[serde(default)]
    pub maxconn: Option<u32>,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Answer every plain HTTP request with a redirect to HTTPS (not on TLS listeners).
    #[serde(default)]
    pub redirect_to_https: Option<RedirectToHttps>,
    /// Requests per client source; past it, 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Header rules for every response this listener sends, floodgate's own included (HSTS,
    /// security headers).
    #[serde(default)]
    pub response_headers: HeaderRules,
    /// Connections open with a PROXY protocol header naming the client (behind a load balancer
    /// that replaces client addresses).
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Forwarding headers believed from these peers (a CDN, an L7 load balancer).
    #[serde(default)]
    pub forwarded_headers: Option<ForwardedHeaders>,
    /// Hosts whose TLS connections go to their backend as they are, not terminated here.
    #[serde(default)]
    pub passthrough: Vec<PassthroughHost>,
    /// `http` (the default) or `tcp`: every connection carried to `default-backend` as bytes.
    #[serde(default)]
    pub mode: Mode,
    /// Connections one client address may hold at once; past it, new ones are closed.
    #[serde(default)]
    pub max_connections_per_source: Option<u32>,
}

/// What a listener speaks (HAProxy's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Http,
    /// Connections carried to the default backend's servers as they are (after TLS, when
    /// the listener has `tls`): databases, MQTT, anything over TCP.
    Tcp,
}

/// One `listeners[].passthrough` entry: connections whose ClientHello names `host` are carried
/// to `backend` without being terminated (ingress-nginx's `ssl-passthrough`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PassthroughHost {
    /// Exact (`vault.example.com`) or wildcard (`*.example.com`).
    pub host: String,
    pub backend: String,
}

/// `listeners[].forwarded-headers`: ingress-nginx's `use-forwarded-headers` with
/// `proxy-real-ip-cidr` and `forwarded-for-header`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ForwardedHeaders {
    /// Peers whose forwarding headers are believed; required.
    pub from: Vec<IpNet>,
    /// The header naming the client, a list of addresses with the nearest hop last.
    #[serde(default = "default_client_header")]
    pub client_header: String,
}

fn default_client_header() -> String {
    "X-Forwarded-For".into()
}

/// `listeners[].proxy-protocol`: HAProxy's `accept-proxy`, or with `from`, its
/// `tcp-request connection expect-proxy layer4 if { src ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ProxyProtocol {
    /// Peers that must send the header; connections from others are their own clients.
    pub from: Vec<IpNet>,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self {
            from: vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
        }
    }
}

impl ProxyProtocol {
    /// Whether a connection from `peer` must start with the header.
    pub fn expected_from(&self, peer: std::net::IpAddr) -> bool {
        cidrs_contain(&self.from, peer)
    }
}

/// Whether one of `nets` holds `ip`; an IPv4 client of a dual-stack socket (`::ffff:a.b.c.d`)
/// is looked up as its IPv4 address.
pub fn cidrs_contain(nets: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// Headers to remove, then headers to set (each replacing every earlier value), then headers
/// to add (each appended after the values already there: the Gateway API's `add`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl HeaderRules {
    /// Names that parse, values that parse, and none that floodgate itself must own (framing
    /// and hop-by-hop headers).
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        const OWNED: [&str; 9] = [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "content-length",
            "proxy-authenticate",
            "proxy-authorization",
        ];
        let names = self
            .set
            .keys()
            .map(|n| (format!("{key}.set"), n))
            .chain(self.add.keys().map(|n| (format!("{key}.add"), n)))
            .chain(self.remove.iter().map(|n| (format!("{key}.remove"), n)));
        for (k, n) in names {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                return Err(invalid(k, format!("`{n}` is not a header name")));
            }
            if OWNED.contains(&n.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    k,
                    format!("`{n}` describes the connection or the framing; floodgate sets it"),
                ));
            }
        }
        for (n, v, part) in self
            .set
            .iter()
            .map(|(n, v)| (n, v, "set"))
            .chain(self.add.iter().map(|(n, v)| (n, v, "add")))
        {
            if http::HeaderValue::from_str(v).is_err() {
                return Err(invalid(
                    format!("{key}.{part}.{n}"),
                    "not a header value (visible ASCII, spaces and tabs)",
                ));
            }
        }
        Ok(())
    }
}

/// Requests per client source (`listeners[].rate-limit`): a token bucket per source prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RateLimit {
    /// Sustained requests per second one source may send.
    pub per_source: u32,
    /// Requests a source may send at once after being idle; 0 is `per-source`.
    pub burst: u32,
    /// Sources are counted per prefix of this length.
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
    /// Sources tracked at most.
    pub table_size: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_source: 0,
            burst: 0,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            table_size: 65_536,
        }
    }
}

/// HAProxy's `redirect scheme https`: the same host and path on `https://`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RedirectToHttps {
    /// The HTTPS port in the `Location`; 443 is left out of the URL.
    pub port: u16,
    /// 301, 302, 303, 307 or 308. 308 keeps the method and body, so a POST is not lost.
    pub code: u16,
    /// Paths starting with one of these are proxied instead (ACME HTTP-01 challenges must be
    /// answered over plain HTTP).
    pub except_prefixes: Vec<String>,
}

impl Default for RedirectToHttps {
    fn default() -> Self {
        Self {
            port: 443,
            code: 308,
            except_prefixes: vec!["/.well-known/acme-challenge/".into()],
        }
    }
}

/// The fields an access log line can carry.
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "listener",
    "client",
    "method",
    "host",
    "path",
    "protocol",
    "status",
    "backend",
    "server",
    "duration_ms",
    "queue_ms",
    "bytes",
    "retries",
    "request_id",
    "user_agent",
];

/// Access log settings. Lines go through the process's log (target `floodgate::access`, level
/// info), so they follow `--log-format` (text or JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AccessLog {
    pub enabled: bool,
    /// Fraction of requests logged, 0.0 to 1.0.
    pub sample: f64,
    /// Log every 4xx and 5xx answer whatever the sampling.
    pub always_log_errors: bool,
    /// Which fields each line carries, from [`ACCESS_LOG_FIELDS`].
    pub fields: Vec<String>,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: false,
            sample: 1.0,
            always_log_errors: true,
            fields: ACCESS_LOG_FIELDS
                .iter()
                .filter(|f| **f != "user_agent")
                .map(|f| (*f).to_owned())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerTls {
    /// Certificates; the first (with its ECDSA/RSA sibling) is the default without SNI.
    pub certificates: Vec<CertSource>,
    /// Refuse the handshake when no certificate matches the SNI name (or there is none).
    #[serde(default)]
    pub strict_sni: bool,
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

/// A certificate: a directory in the Kubernetes TLS secret layout (`tls.crt`, `tls.key`), one
/// PEM file holding both, or separate files. An OCSP response (DER) next to the certificate as
/// `<certificate file>.ocsp` (HAProxy's convention), or at `ocsp`, is stapled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CertSource {
    Path(PathBuf),
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[serde(default)]
        ocsp: Option<PathBuf>,
    },
}

impl CertSource {
    /// (certificate chain file, private key file)
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        match self {
            CertSource::Path(p) if p.is_dir() => (p.join("tls.crt"), p.join("tls.key")),
            CertSource::Path(p) => (p.clone(), p.clone()),
            CertSource::Pair { cert, key, .. } => (cert.clone(), key.clone()),
        }
    }

    /// Where a stapled OCSP response is looked for.
    pub fn ocsp_path(&self) -> PathBuf {
        match self {
            CertSource::Pair {
                ocsp: Some(path), ..
            } => path.clone(),
            _ => {
                let mut p = self.paths().0.into_os_string();
                p.push(".ocsp");
                PathBuf::from(p)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.trim_start_matches("TLSv").trim_start_matches("tlsv") {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(de::Error::custom(format!(
                "`{s}` is not a supported TLS version (1.2 or 1.3)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Admin {
    pub bind: SocketAddr,
    /// Clients the admin listener answers; others are closed at once. On a hostNetwork pod
    /// the bind address is the node's, so by default only private networks (where Prometheus
    /// and the kubelet's probes come from) are let in, never the internet.
    #[serde(default = "default_admin_allow")]
    pub allow: Vec<IpNet>,
    /// Admin connections open at once; more are closed at accept.
    #[serde(default = "default_admin_connections")]
    pub max_connections: u32,
    /// How long a request header, and an idle keep-alive connection, may take.
    #[serde(default = "default_admin_header_timeout")]
    pub header_timeout: HDuration,
}

/// Loopback, RFC 1918, carrier-grade NAT (pod networks), IPv6 ULA and link-local.
fn default_admin_allow() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
}

fn default_admin_connections() -> u32 {
    64
}

fn default_admin_header_timeout() -> HDuration {
    HDuration::secs(5)
}

/// The TLS policy, defaulting to the production HAProxy ingress's: TLS 1.2 and 1.3, no session
/// tickets (resumption through the server's session cache), ECDHE AES-128-GCM for TLS 1.2.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TlsPolicy {
    pub min_version: TlsVersion,
    pub tickets: bool,
    /// TLS 1.2 suites, colon-separated, OpenSSL (`ECDHE-ECDSA-AES128-GCM-SHA256`) or IANA names.
    #[serde(alias = "ssl-ciphers")]
    pub ciphers: String,
    /// TLS 1.3 suites, colon-separated.
    pub ciphersuites: String,
    /// Follow the client's order of suites instead of ours (HAProxy's `prefer-client-ciphers`;
    /// off, as in HAProxy: the first suite of our lists that the client offers is chosen).
    pub prefer_client_ciphers: bool,
    /// Sessions kept for resumption.
    pub session_cache: usize,
    pub handshake_timeout: HDuration,
    /// HAProxy's `ssl-options` as it is, e.g. `no-sslv3 no-tls-tickets no-tlsv10 no-tlsv11`.
    pub ssl_options: Option<String>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::V1_2,
            tickets: false,
            ciphers: "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256".into(),
            ciphersuites:
                "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256".into(),
            prefer_client_ciphers: false,
            session_cache: 20_000,
            handshake_timeout: HDuration::secs(10),
            ssl_options: None,
        }
    }
}

impl TlsPolicy {
    /// Applies `ssl-options`. floodgate never offers SSLv3, TLS 1.0 or 1.1, so the options that
    /// turn those off are accepted and change nothing.
    fn apply_ssl_options(&mut self) -> Result<(), ConfigError> {
        let Some(opts) = self.ssl_options.clone() else {
            return Ok(());
        };
        for o in opts.split_whitespace() {
            match o {
                "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "force-tlsv12" => {}
                "no-tls-tickets" => self.tickets = false,
                "prefer-client-ciphers" => self.prefer_client_ciphers = true,
                "no-tlsv12" | "force-tlsv13" => self.min_version = TlsVersion::V1_3,
                other => {
                    return Err(invalid(
                        "tls.ssl-options",
                        format!("`{other}` is not supported"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_true() -> bool {
    true
}

fn default_backlog() -> u32 {
    4096
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Route {
    /// Exact host or `*.example.com`; absent matches every host.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// A regular expression the path must match (ingress-nginx's `use-regex`).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Replaces the matched `path-prefix` before the request goes to the backend (HAProxy's
    /// `http-request replace-path`, ingress-nginx's `rewrite-target`): `/` strips it.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    /// With `path-regex`: the path sent to the backend, `$1`... standing for the captures
    /// (ingress-nginx's `rewrite-target` with `use-regex`).
    #[serde(default)]
    pub rewrite_target: Option<String>,
    /// Client addresses this route serves; others get 403 (ingress-nginx's
    /// `whitelist-source-range`). Empty: everyone.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Request headers that must all be present with these exact values (names are
    /// case-insensitive): ingress-nginx's `canary-by-header`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// An auth service asked before each request goes on (ingress-nginx's `auth-url`).
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Basic authentication against an htpasswd file (ingress-nginx's `auth-type: basic`).
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// CORS: preflights answered here, allowed origins' answers marked (`enable-cors`).
    #[serde(default)]
    pub cors: Option<Cors>,
    /// A backend that gets a copy of each request (bodies up to 1 MiB), its answer ignored
    /// (ingress-nginx's `mirror-target`).
    #[serde(default)]
    pub mirror: Option<String>,
    /// The backend, or `split` or `redirect` instead.
    #[serde(default)]
    pub backend: String,
    /// Requests shared among backends by weight, each request drawn at random (ingress-nginx's
    /// `canary-weight`).
    #[serde(default)]
    pub split: Vec<SplitTo>,
    /// Answer with a redirect instead of going to a backend.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Protocols a client may switch to with `Upgrade` on this route (its connection then
    /// becomes a tunnel to the server); other upgrades are ignored and the request is served
    /// as plain HTTP. `h2c` is refused: requests inside such a tunnel would pass routing.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    /// Listeners (by name) this route serves on; empty: every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Methods the request must have (any of them); empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Query parameters the request must have with these exact values (the first occurrence
    /// of a name counts).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Header rules for requests of this route on their way to the backend, after the
    /// backend's own (the Gateway API's RequestHeaderModifier).
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Header rules for the answers to this route's requests, after the backend's own.
    #[serde(default)]
    pub response_headers: HeaderRules,
}

impl Route {
    /// A route to `backend` matching every request, every other setting at its default.
    pub fn to(backend: String) -> Self {
        Self {
            host: None,
            path: None,
            path_prefix: None,
            path_regex: None,
            rewrite_prefix: None,
            rewrite_target: None,
            allow: Vec::new(),
            headers: BTreeMap::new(),
            auth: None,
            basic_auth: None,
            cors: None,
            mirror: None,
            backend,
            split: Vec::new(),
            redirect: None,
            upgrades: default_upgrades(),
            listeners: Vec::new(),
            methods: Vec::new(),
            query: BTreeMap::new(),
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
        }
    }
}

/// WebSocket, which browsers need; nothing else unless a route names it.
pub fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

/// A route's redirect: HAProxy's `http-request redirect location|prefix ... code N`,
/// ingress-nginx's `permanent-redirect`, `temporal-redirect` and `app-root`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Redirect {
    /// The `Location`, as it is.
    #[serde(default)]
    pub location: Option<String>,
    /// The `Location` is this followed by the request's path (and query).
    #[serde(default)]
    pub prefix: Option<String>,
    /// With `prefix`: leave the query out.
    #[serde(default)]
    pub drop_query: bool,
    /// Instead of `location` or `prefix`, the request's own URL with parts changed (the Gateway
    /// API's RequestRedirect): `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// The whole path replaced.
    #[serde(default)]
    pub replace_path: Option<String>,
    /// The route's `path-prefix` replaced with this.
    #[serde(default)]
    pub replace_prefix: Option<String>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_code")]
    pub code: u16,
}

fn default_redirect_code() -> u16 {
    302
}

/// ingress-nginx's `enable-cors` and `cors-*` annotations, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Cors {
    /// `https://app.example.com` (scheme, host, port), or `*`.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight's answer.
    pub max_age: HDuration,
}

impl Default for Cors {
    fn default() -> Self {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        Self {
            allow_origins: Vec::new(),
            allow_methods: v(&["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]),
            allow_headers: v(&[
                "DNT",
                "Keep-Alive",
                "User-Agent",
                "X-Requested-With",
                "If-Modified-Since",
                "Cache-Control",
                "Content-Type",
                "Range",
                "Authorization",
            ]),
            expose_headers: Vec::new(),
            allow_credentials: true,
            max_age: HDuration::secs(1_728_000),
        }
    }
}

/// Basic authentication: users and password hashes in an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BasicAuth {
    /// `user:hash` lines, as `htpasswd` writes them (a Kubernetes Secret's `auth` key).
    pub users_file: PathBuf,
    /// Shown by browsers in the sign-in prompt.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_realm() -> String {
    "Authentication Required".into()
}

/// External authentication: a GET to `url` with the client's headers decides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Auth {
    /// `http://host:port/path` of the auth service.
    pub url: String,
    /// Where a client the service answered 401 is redirected (302); `{url}` is replaced by
    /// the URL it asked for, percent-encoded. Absent: the 401 itself.
    #[serde(default)]
    pub signin: Option<String>,
    /// Headers of the service's 2xx answer added to the request for the backend.
    #[serde(default)]
    pub response_headers: Vec<String>,
    #[serde(default = "default_auth_timeout")]
    pub timeout: HDuration,
}

fn default_auth_timeout() -> HDuration {
    HDuration::secs(5)
}

/// One backend of a route's `split`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SplitTo {
    pub backend: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    Roundrobin,
    /// The server with the fewest requests in flight per unit of weight.
    Leastconn,
    /// Two servers at random, the less loaded of them.
    RandomTwoChoices,
}

/// Per-backend overrides of `global.timeouts`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendTimeouts {
    #[serde(default)]
    pub server: Option<HDuration>,
    #[serde(default)]
    pub tunnel: Option<HDuration>,
    #[serde(default)]
    pub connect: Option<HDuration>,
    #[serde(default)]
    pub queue: Option<HDuration>,
}

impl Backend {
    /// `timeouts.server` for this backend.
    pub fn server_timeout(&self, global: &Timeouts) -> Duration {
        self.timeouts.server.unwrap_or(global.server).0
    }

    /// `timeouts.tunnel` for this backend.
    pub fn tunnel_timeout(&self, global: &Timeouts) -> Duration {
        self.timeouts.tunnel.unwrap_or(global.tunnel).0
    }

    /// `timeouts.connect` for this backend.
    pub fn connect_timeout(&self, global: &Timeouts) -> Duration {
        self.timeouts.connect.unwrap_or(global.connect).0
    }

    /// `timeouts.queue` for this backend.
    pub fn queue_timeout(&self, global: &Timeouts) -> Duration {
        self.timeouts.queue.unwrap_or(global.queue).0
    }
}

/// The protocol spoken to a backend's servers (HAProxy's server `proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// HTTP/1.1 with keep-alive, whatever the client spoke.
    #[default]
    H1,
    /// HTTP/2 in clear with prior knowledge (h2c), one multiplexed connection per server and
    /// worker thread: gRPC and other HTTP/2-only servers. Trailers pass both ways.
    H2,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Backend {
    pub name: String,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub proto: Proto,
    /// This backend's own `timeout server`, `connect` and `queue` (HAProxy sets them per
    /// backend too); each absent one is `global.timeouts`'.
    #[serde(default)]
    pub timeouts: BackendTimeouts,
    /// Requests one server takes at once; 0 is no limit (HAProxy's server `maxconn`).
    #[serde(default = "default_maxconn_server")]
    pub maxconn_server: u32,
    /// Requests that may wait for a server slot; past it they get 503 at once.
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// How often DNS names among the servers are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: HDuration,
    /// Active health checks; none by default (passive ejection still applies).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub passive: Passive,
    /// TLS to the servers (HAProxy's server `ssl`); absent, they are spoken to in clear.
    #[serde(default)]
    pub tls: Option<BackendTls>,
    /// Cookie persistence: a client keeps going to the server it was first sent to.
    #[serde(default)]
    pub sticky: Option<Sticky>,
    /// Compress this backend's responses for clients that accept gzip.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Open each connection carried as bytes (`mode: tcp`, passthrough) with a PROXY protocol
    /// header naming the client.
    #[serde(default)]
    pub send_proxy: Option<ProxyVersion>,
    /// Header rules for requests on their way to this backend's servers.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Header rules for this backend's servers' responses.
    #[serde(default)]
    pub response_headers: HeaderRules,
    pub servers: Vec<ServerSpec>,
}

/// The PROXY protocol version `send-proxy` writes: HAProxy's `send-proxy` (v1, text) and
/// `send-proxy-v2` (binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyVersion {
    V1,
    V2,
}

/// `backends[].compression`: HAProxy's `compression algo gzip`, ingress-nginx's `use-gzip`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Compression {
    /// Media types compressed (`text/html`, without parameters).
    pub types: Vec<String>,
    /// Responses that declare a smaller length are left alone.
    pub min_size: u64,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Remove `Accept-Encoding` from requests, so servers never compress themselves.
    pub offload: bool,
}

impl Default for Compression {
    fn default() -> Self {
        // ingress-nginx's `gzip-types`, and text/html, which nginx always compresses.
        let types = [
            "text/html",
            "application/atom+xml",
            "application/javascript",
            "application/x-javascript",
            "application/json",
            "application/rss+xml",
            "application/vnd.ms-fontobject",
            "application/x-font-ttf",
            "application/x-web-app-manifest+json",
            "application/xhtml+xml",
            "application/xml",
            "font/opentype",
            "image/svg+xml",
            "image/x-icon",
            "text/css",
            "text/javascript",
            "text/plain",
            "text/x-component",
        ];
        Self {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            min_size: 256,
            level: 1,
            offload: false,
        }
    }
}

/// HAProxy's `cookie <name> insert indirect nocache`, ingress-nginx's `affinity: cookie`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Sticky {
    /// The cookie's name.
    pub cookie: String,
    /// How long the browser keeps it; absent, until it closes (a session cookie).
    pub max_age: Option<HDuration>,
    pub path: String,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl Default for Sticky {
    fn default() -> Self {
        Self {
            cookie: String::new(),
            max_age: None,
            path: "/".into(),
            http_only: true,
            same_site: SameSite::Lax,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

/// TLS to a backend's servers: HAProxy's server `ssl verify required ca-file <f> sni <n>
/// crt <f>`. HTTP/2 backends ask for `h2` by ALPN, HTTP/1.1 ones for `http/1.1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendTls {
    /// Whether the server's certificate must chain to `ca-file` and carry its name.
    #[serde(default)]
    pub verify: Verify,
    /// PEM file of the CAs server certificates must chain to; required with `verify:
    /// required`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and looked for in the certificate. Default: the servers' DNS
    /// name when they share one; for servers given as addresses, the address (no SNI).
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate and its key (PEM), for servers that ask for one (mutual TLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// The certificate must chain to `ca-file` and carry the server's name.
    #[default]
    Required,
    /// Any certificate is accepted: encryption without authentication, as ingress-nginx
    /// does by default and HAProxy's `verify none`.
    None,
}

impl Backend {
    /// The name TLS connections to this backend's servers present and verify: `None` means
    /// each connection's own address.
    pub fn tls_server_name(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        if let Some(n) = &tls.server_name {
            return Some(n.clone());
        }
        let mut hosts = self
            .servers
            .iter()
            .filter(|s| s.socket_addr().is_none())
            .filter_map(|s| split_host_port(s.address()).ok().map(|(h, _)| h.to_owned()));
        hosts.next()
    }
}

impl Backend {
    /// A backend with every setting at its documented default (the cluster's Services).
    pub fn new(name: String, servers: Vec<ServerSpec>) -> Self {
        Self {
            name,
            balance: Balance::default(),
            proto: Proto::default(),
            timeouts: BackendTimeouts::default(),
            maxconn_server: default_maxconn_server(),
            queue_max: default_queue_max(),
            resolve_interval: default_resolve_interval(),
            health_check: None,
            passive: Passive::default(),
            tls: None,
            sticky: None,
            compression: None,
            send_proxy: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            servers,
        }
    }
}

fn default_maxconn_server() -> u32 {
    10_000
}

fn default_queue_max() -> usize {
    65_536
}

fn default_resolve_interval() -> HDuration {
    HDuration::secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// `GET <path>`; a 2xx or 3xx status is healthy.
    Http,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check` for `service`) over HTTP/2 in
    /// clear: healthy when the server answers SERVING. For `proto: h2` backends.
    Grpc,
}

/// HAProxy's `check inter rise fall`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    pub path: String,
    /// The service a `grpc` check asks about; empty asks about the server as a whole.
    pub service: String,
    pub interval: HDuration,
    pub timeout: HDuration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            path: "/".into(),
            service: String::new(),
            interval: HDuration::secs(2),
            timeout: HDuration::secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Passive health: consecutive connect failures on live traffic eject a server for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Passive {
    /// Consecutive connect failures that eject a server; 0 turns passive ejection off.
    pub fall: u32,
    /// How long an ejected server stays out.
    pub eject: HDuration,
}

impl Default for Passive {
    fn default() -> Self {
        Self {
            fall: 3,
            eject: HDuration::secs(10),
        }
    }
}

/// A server: `"address:port"` (an IP, or a DNS name resolved to all its A/AAAA records), or the
/// same with a weight and its own maxconn.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ServerSpec {
    Address(String),
    Detailed(ServerDetail),
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerDetail {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Overrides the backend's `maxconn-server`.
    #[serde(default)]
    pub maxconn: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

impl ServerSpec {
    pub fn address(&self) -> &str {
        match self {
            ServerSpec::Address(a) => a,
            ServerSpec::Detailed(d) => &d.address,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            ServerSpec::Address(_) => 1,
            ServerSpec::Detailed(d) => d.weight,
        }
    }

    pub fn maxconn(&self, backend_default: u32) -> u32 {
        match self {
            ServerSpec::Detailed(ServerDetail {
                maxconn: Some(m), ..
            }) => *m,
            _ => backend_default,
        }
    }

    /// The address when it is a literal IP; `None` for a DNS name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address().parse().ok()
    }
}

/// Splits `host:port`, checking the port; the host is an IP or a DNS name.
/// A route's or passthrough entry's host: a DNS name (`shop.example.com`) or a `*.` wildcard
/// over one (`*.example.com`), in ASCII, as requests' hosts are compared after
/// normalisation (`proxy::request::normalize`): no port, no trailing dot.
fn host_pattern(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if !h.is_ascii() {
        return Err(format!(
            "`{h}` is not ASCII: write an internationalised name in its `xn--` form"
        ));
    }
    if name.ends_with('.') {
        return Err(format!(
            "`{h}` ends with a dot: write it without (requests' trailing dots are dropped)"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{h}` is not a host name or `*.` followed by a domain"
        ));
    }
    Ok(())
}

fn split_host_port(a: &str) -> Result<(&str, u16), String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("`{a}` has no port (expected host:port)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{a}` has an invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if port == 0 || !name_ok {
        return Err(format!("`{a}` is not a valid host:port"));
    }
    Ok((host, port))
}

impl Config {
    /// The files this config names that are read when it is applied (routes' users files,
    /// error pages, backends' CA, certificate and key): a change of one reloads the config like
    /// a change of the config file. Listener certificates reload on their own (`tls.rs`).
    pub fn files(&self) -> Vec<PathBuf> {
        let users = self
            .routes
            .iter()
            .filter_map(|r| r.basic_auth.as_ref().map(|b| b.users_file.clone()));
        let pages = self.error_pages.values().cloned();
        let tls = self
            .backends
            .iter()
            .filter_map(|b| b.tls.as_ref())
            .flat_map(|t| [&t.ca_file, &t.cert, &t.key])
            .flatten()
            .cloned();
        let mut files: Vec<PathBuf> = users.chain(pages).chain(tls).collect();
        files.sort();
        files.dedup();
        files
    }
}

impl Xdp {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.interfaces.is_empty() {
            return Err(invalid(
                "xdp.interfaces",
                "at least one interface is required when xdp.enabled is true",
            ));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                return Err(invalid(
                    format!("xdp.interfaces[{i}]"),
                    format!("`{name}` is not an interface name"),
                ));
            }
        }
        let s = &self.syn_rate;
        if !(1..=32).contains(&s.source_prefix_v4) {
            return Err(invalid(
                "xdp.syn-rate.source-prefix-v4",
                "must be between 1 and 32",
            ));
        }
        if !(1..=128).contains(&s.source_prefix_v6) {
            return Err(invalid(
                "xdp.syn-rate.source-prefix-v6",
                "must be between 1 and 128",
            ));
        }
        if s.per_source != 0 && s.per_source_burst == 0 {
            return Err(invalid(
                "xdp.syn-rate.per-source-burst",
                "must be at least 1 when per-source is set",
            ));
        }
        if matches!(s.global, Budget::Fixed(n) if n != 0) && s.global_burst == 0 {
            return Err(invalid(
                "xdp.syn-rate.global-burst",
                "must be at least 1 when global is set",
            ));
        }
        if s.source_table_size == 0 {
            return Err(invalid(
                "xdp.syn-rate.source-table-size",
                "must be at least 1",
            ));
        }
        if self.pressure.hold.0.is_zero() {
            return Err(invalid("xdp.pressure.hold", "must be greater than 0"));
        }
        if self.nft_table.is_empty()
            || !self
                .nft_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "xdp.nft-table",
                "letters, digits, `_` and `-` only",
            ));
        }
        if self.verified_table_size == 0 {
            return Err(invalid("xdp.verified-table-size", "must be at least 1"));
        }
        if self.verified_ttl.0.as_secs() > u64::from(u32::MAX) {
            return Err(invalid("xdp.verified-ttl", "must be under 136 years"));
        }
        if self.flow_table_size == 0 {
            return Err(invalid("xdp.flow-table-size", "must be at least 1"));
        }
        let max = floodgate_common::MAX_CIDRS as usize;
        for (key, list) in [
            ("xdp.deny", &self.deny),
            ("xdp.allow", &self.allow),
            ("xdp.trusted", &self.trusted),
        ] {
            if list.len() > max {
                return Err(invalid(key, format!("at most {max} entries per list")));
            }
        }
        Ok(())
    }
}

/// A duration in HAProxy's notation: a number with `us`, `ms`, `s`, `m`, `h` or `d`; a bare
/// number is milliseconds, as in HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HDuration(pub Duration);

impl HDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl fmt::Display for HDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// The longest duration any key takes: far past any timeout, far below what a deadline can
/// hold.
const MAX_DURATION_DAYS: u64 = 3650;

impl FromStr for HDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (expected e.g. 50s, 500ms, 1m)"))?;
        let too_long = || format!("`{s}` is longer than {MAX_DURATION_DAYS} days");
        let secs = |per: u64| {
            n.checked_mul(per)
                .map(Duration::from_secs)
                .ok_or_else(too_long)
        };
        let d = match unit {
            "us" => Duration::from_micros(n),
            "" | "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => secs(60)?,
            "h" => secs(3600)?,
            "d" => secs(86_400)?,
            _ => {
                return Err(format!(
                    "`{s}` has an unknown unit `{unit}` (use us, ms, s, m, h or d)"
                ));
            }
        };
        // Deadlines are `now + d`: a duration near u64::MAX seconds would overflow the clock
        // (a panic in std's Instant) instead of meaning "never".
        if d > Duration::from_secs(MAX_DURATION_DAYS * 86_400) {
            return Err(too_long());
        }
        Ok(Self(d))
    }
}

impl<'de> Deserialize<'de> for HDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 50s, 500ms or 1m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HDuration, E> {
                Ok(HDuration(Duration::from_millis(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
listeners: [{ name: http, bind: '127.0.0.1:8080', default-backend: app }]
backends: [{ name: app, servers: ['127.0.0.1:9101'] }]
xdp: { enabled: false }
";

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let cfg: Config = yaml_serde::from_str(s).map_err(|source| ConfigError::Parse {
            path: "t.yaml".into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn backend_tls_is_checked_and_names_its_server() {
        let with = |servers: &str, tls: &str| {
            parse(&MINIMAL.replace(
                "servers: ['127.0.0.1:9101']",
                &format!("servers: {servers}, tls: {tls}"),
            ))
        };
        let err = |servers: &str, tls: &str| with(servers, tls).expect_err(tls).to_string();
        let name =
            |servers: &str, tls: &str| with(servers, tls).expect(tls).backends[0].tls_server_name();
        let ips = "['10.0.0.1:443', '10.0.0.2:443']";
        assert!(err(ips, "{}").contains("backends[0].tls.ca-file"));
        assert!(err(ips, "{ verify: none, cert: c.pem }").contains("backends[0].tls.cert"));
        assert!(err(ips, "{ verify: none, server-name: 'a b' }").contains("tls.server-name"));
        assert!(err(ips, "{ verify: maybe }").contains("verify"));
        // One name for every connection, or the address of each.
        assert_eq!(name(ips, "{ ca-file: ca.pem }"), None);
        assert_eq!(
            name("['api.ns.svc:443']", "{ ca-file: ca.pem }").as_deref(),
            Some("api.ns.svc")
        );
        assert_eq!(
            name(ips, "{ verify: none, server-name: api.internal }").as_deref(),
            Some("api.internal")
        );
        let mixed = "['api.ns.svc:443', '10.0.0.1:443']";
        assert!(err(mixed, "{ ca-file: ca.pem }").contains("backends[0].tls.server-name"));
        assert!(err("['a.svc:443', 'b.svc:443']", "{ ca-file: ca.pem }").contains("server-name"));
        with(mixed, "{ ca-file: ca.pem, server-name: api.internal }").expect("named");
        assert!(parse(MINIMAL).expect("minimal").backends[0].tls.is_none());
    }

    #[test]
    fn names_are_plain_because_they_become_label_values() {
        let e = parse(&MINIMAL.replace("name: app,", r#"name: 'a"pp',"#))
            .expect_err("a quote in a backend name");
        assert!(e.to_string().contains("backends[0].name"), "{e}");
        let e = parse(&MINIMAL.replace("name: http,", "name: '',")).expect_err("empty");
        assert!(e.to_string().contains("listeners[0].name"), "{e}");
        parse(&MINIMAL.replace("app", "shop-api_v2.eu")).expect("letters, digits, `-`, `_`, `.`");
    }

    #[test]
    fn defaults_are_the_production_haproxy_settings() {
        let c = parse(MINIMAL).expect("minimal config");
        let t = &c.global.timeouts;
        assert_eq!(c.global.maxconn, 100_000);
        assert_eq!(t.client.0, Duration::from_secs(50));
        assert_eq!(t.connect.0, Duration::from_secs(5));
        assert_eq!(t.queue.0, Duration::from_secs(5));
        assert_eq!(t.http_request.0, Duration::from_secs(10));
        assert_eq!(t.http_keep_alive.0, Duration::from_secs(1));
        assert_eq!(t.server.0, Duration::from_secs(50));
        // floodgate's own: below the common 5 s keep-alive timeout of backends.
        assert_eq!(t.server_keep_alive.0, Duration::from_secs(4));
        assert_eq!(
            t.tunnel.0,
            Duration::from_secs(3600),
            "haproxy-ingress's timeout-tunnel"
        );
        let e = parse(&format!(
            "{MINIMAL}global: {{ timeouts: {{ server-keep-alive: 0s }} }}"
        ))
        .expect_err("zero");
        assert!(
            e.to_string().contains("global.timeouts.server-keep-alive"),
            "{e}"
        );
    }

    #[test]
    fn checks_match_the_backend_protocol() {
        let h2 = MINIMAL.replace("name: app,", "name: app, proto: h2,");
        assert_eq!(parse(&h2).expect("proto h2").backends[0].proto, Proto::H2);
        let e = parse(&h2.replace("name: app,", "name: app, health-check: { type: http },"))
            .expect_err("http check on h2");
        assert!(
            e.to_string().contains("backends[0].health-check.type"),
            "{e}"
        );
        let grpc = h2.replace(
            "name: app,",
            "name: app, health-check: { type: grpc, service: pkg.Svc },",
        );
        let c = parse(&grpc).expect("grpc check on h2");
        let check = c.backends[0].health_check.as_ref().expect("a check");
        assert_eq!(
            (check.kind, check.service.as_str()),
            (CheckKind::Grpc, "pkg.Svc")
        );
        let e = parse(&MINIMAL.replace("name: app,", "name: app, health-check: { type: grpc },"))
            .expect_err("grpc check on h1");
        assert!(e.to_string().contains("proto: h2"), "{e}");
        let own = parse(&MINIMAL.replace(
            "name: app,",
            "name: app, timeouts: { server: 1h, queue: 500 },",
        ))
        .expect("backend timeouts");
        let (b, g) = (&own.backends[0], &own.global.timeouts);
        assert_eq!(b.server_timeout(g), Duration::from_secs(3600));
        assert_eq!(b.queue_timeout(g), Duration::from_millis(500));
        assert_eq!(
            b.connect_timeout(g),
            Duration::from_secs(5),
            "the global one"
        );
        let e = parse(&MINIMAL.replace("name: app,", "name: app, timeouts: { connect: 0 },"))
            .expect_err("zero");
        assert!(
            e.to_string().contains("backends[0].timeouts.connect"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("name: app,", "name: app, timeouts: { client: 1s },"))
            .expect_err("not a backend timeout");
        assert!(e.to_string().contains("client"), "{e}");
        let e = parse(&MINIMAL.replace("name: app,", "name: app, proto: h3,"))
            .expect_err("unknown proto");
        assert!(e.to_string().contains("h3"), "{e}");
    }

    #[test]
    fn haproxy_names_are_accepted() {
        let c = parse(&format!(
            "{MINIMAL}global: {{ maxconn-global: 9900, timeouts: {{ timeout-client: 30s, timeout-queue: 2500 }} }}"
        ))
        .expect("haproxy keys");
        assert_eq!(c.global.maxconn, 9900);
        assert_eq!(c.global.timeouts.client.0, Duration::from_secs(30));
        assert_eq!(
            c.global.timeouts.queue.0,
            Duration::from_millis(2500),
            "bare numbers are ms"
        );
        let mut c = parse(MINIMAL).expect("minimal");
        let keys = |k: &[(&str, &str)]| {
            k.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let ignored = haproxy::apply(
            &mut c,
            &keys(&[("use-proxy-protocol", "\"true\""), ("ssl-dh-param", "x")]),
        )
        .expect("a ConfigMap's keys");
        assert_eq!(
            c.listeners[0].proxy_protocol,
            Some(ProxyProtocol::default())
        );
        assert_eq!(ignored, ["ssl-dh-param"]);
        let e = haproxy::apply(&mut c, &keys(&[("use-proxy-protocol", "yes")]))
            .expect_err("not a boolean");
        assert!(e.to_string().contains("haproxy.use-proxy-protocol"), "{e}");
    }

    #[test]
    fn haproxy_ssl_options_map_onto_the_policy() {
        let mut p = TlsPolicy {
            ssl_options: Some(
                "no-sslv3 no-tls-tickets no-tlsv10 no-tlsv11 prefer-client-ciphers".into(),
            ),
            tickets: true,
            ..TlsPolicy::default()
        };
        p.apply_ssl_options().expect("known options");
        assert!(!p.tickets && p.prefer_client_ciphers);
        assert!(
            !TlsPolicy::default().prefer_client_ciphers,
            "server order, as HAProxy"
        );
        p.ssl_options = Some("no-sslv3 strict-sni".into());
        let e = p.apply_ssl_options().expect_err("unknown option");
        assert!(e.to_string().contains("strict-sni"), "{e}");
    }

    #[test]
    fn durations() {
        for (s, d) in [
            ("50s", Duration::from_secs(50)),
            ("1m", Duration::from_secs(60)),
            ("250us", Duration::from_micros(250)),
            ("10", Duration::from_millis(10)),
        ] {
            assert_eq!(s.parse::<HDuration>().expect(s).0, d);
        }
        for bad in ["", "s", "5x", "-1s", "1.5s"] {
            assert!(bad.parse::<HDuration>().is_err(), "{bad}");
        }
    }

    fn error_of(s: &str) -> String {
        parse(s).expect_err("must be refused").to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = error_of(&MINIMAL.replace("default-backend: app", "default-backend: nope"));
        assert!(
            e.contains("listeners[0].default-backend") && e.contains("nope"),
            "{e}"
        );
        let e = error_of(&format!(
            "{MINIMAL}global: {{ timeouts: {{ client: 5parsecs }} }}"
        ));
        assert!(
            e.contains("timeouts.client") && e.contains("unknown unit"),
            "{e}"
        );
        let e = error_of(&format!("{MINIMAL}global: {{ maxconn: 0 }}"));
        assert!(e.contains("global.maxconn"), "{e}");
        let e = error_of(&format!("{MINIMAL}bogus: 1"));
        assert!(e.contains("bogus"), "{e}");
        let e = error_of(&MINIMAL.replace("enabled: false", "enabled: true"));
        assert!(e.contains("xdp.interfaces"), "{e}");
        let e = error_of(&MINIMAL.replace(
            "enabled: false",
            "enabled: true, interfaces: [lo], deny: [10.0.0.0/33]",
        ));
        assert!(e.contains("xdp.deny"), "{e}");
        // Bad hosts are refused with the key, never a panic (a non-ASCII first character
        // once sliced a str in the middle of a char).
        for host in [
            "a*.b",
            "é.example",
            "shop.éxample",
            "*.",
            "a..b",
            "a.b.",
            "*",
            "a b",
            "**.b",
        ] {
            let e = error_of(&format!(
                "{MINIMAL}routes: [{{ host: '{host}', backend: app }}]"
            ));
            assert!(e.contains("routes[0].host"), "{host}: {e}");
        }
        for d in [
            "213503982334601m",
            "5124095576030432h",
            "213503982334601d",
            "3651d",
        ] {
            let e = error_of(&format!(
                "{MINIMAL}global: {{ timeouts: {{ client: {d} }} }}"
            ));
            assert!(e.contains("longer than"), "{d}: {e}");
        }
        for (route, why) in [
            (
                "{ path: /a, rewrite-prefix: /, backend: app }",
                "needs `path-prefix`",
            ),
            (
                "{ path-prefix: /a, rewrite-prefix: b, backend: app }",
                "must start with",
            ),
            (
                "{ path-prefix: /a, rewrite-prefix: '/b?c', backend: app }",
                "not a URL path",
            ),
            (
                "{ path-prefix: /a, rewrite-prefix: '/b c', backend: app }",
                "not a URL path",
            ),
        ] {
            let e = error_of(&format!("{MINIMAL}routes: [{route}]"));
            assert!(
                e.contains("routes[0].rewrite-prefix") && e.contains(why),
                "{e}"
            );
        }
        parse(&format!(
            "{MINIMAL}routes: [{{ path-prefix: /a, rewrite-prefix: /v2/b, backend: app }}]"
        ))
        .expect("a prefix rewrite");
        for (route, key) in [
            ("{ path: /a }", "routes[0].backend"),
            (
                "{ backend: app, split: [{ backend: app, weight: 1 }] }",
                "one of `backend`, `split` and `redirect`",
            ),
            (
                "{ backend: app, redirect: { location: /x } }",
                "one of `backend`, `split` and `redirect`",
            ),
            ("{ redirect: { code: 301 } }", "routes[0].redirect"),
            (
                "{ redirect: { location: /x, prefix: /y } }",
                "one of `location`, `prefix`, or parts",
            ),
            (
                "{ path-prefix: /a, redirect: { scheme: ftp } }",
                "redirect.scheme: `ftp`",
            ),
            (
                "{ redirect: { replace-prefix: /b } }",
                "only with the route's `path-prefix`",
            ),
            ("{ methods: ['GE T'], backend: b }", "routes[0].methods"),
            (
                "{ listeners: [nope], backend: b }",
                "no listener named `nope`",
            ),
            ("{ redirect: { location: /x, code: 200 } }", "redirect.code"),
            (
                "{ redirect: { location: /x, drop-query: true } }",
                "drop-query",
            ),
            ("{ redirect: { location: \"/a\\nb\" } }", "Location"),
            (
                "{ path-prefix: /a, rewrite-prefix: /, redirect: { location: /x } }",
                "routes[0].rewrite-prefix",
            ),
            (
                "{ mirror: app, redirect: { location: /x } }",
                "routes[0].mirror",
            ),
            (
                "{ split: [{ backend: nope, weight: 1 }] }",
                "routes[0].split[0].backend",
            ),
            (
                "{ split: [{ backend: app, weight: 0 }] }",
                "routes[0].split",
            ),
            (
                "{ split: [{ backend: app, weight: 1001 }] }",
                "routes[0].split[0].weight",
            ),
            (
                "{ headers: { 'a b': x }, backend: app }",
                "routes[0].headers",
            ),
            (
                "{ auth: { url: 'https://a/b' }, backend: app }",
                "routes[0].auth.url",
            ),
            (
                "{ auth: { url: /check }, backend: app }",
                "routes[0].auth.url",
            ),
            (
                "{ auth: { url: 'http://a/b', signin: /x }, backend: app }",
                "auth.signin",
            ),
            (
                "{ auth: { url: 'http://a/b', timeout: 0s }, backend: app }",
                "auth.timeout",
            ),
            (
                "{ auth: { url: 'http://a/b', response-headers: ['a b'] }, backend: app }",
                "auth.response-headers",
            ),
            (
                "{ auth: { url: 'http://a/b', cache: 1m }, backend: app }",
                "cache",
            ),
            ("{ cors: {}, backend: app }", "routes[0].cors.allow-origins"),
            (
                "{ upgrades: [h2c], backend: app }",
                "routes[0].upgrades: `h2c`",
            ),
            ("{ upgrades: ['a b'], backend: app }", "routes[0].upgrades"),
            (
                "{ cors: { allow-origins: ['*'] }, backend: app }",
                "routes[0].cors.allow-origins: `*` with allow-credentials",
            ),
            (
                "{ path-regex: '^/(a', backend: app }",
                "routes[0].path-regex",
            ),
            (
                "{ path: /a, path-regex: '^/a', backend: app }",
                "set one of",
            ),
            (
                "{ path-prefix: /a, rewrite-target: /b, backend: app }",
                "rewrite-target",
            ),
            (
                "{ path-regex: '^/(.*)', rewrite-target: 'b/$1', backend: app }",
                "rewrite-target",
            ),
            (
                "{ cors: { allow-origins: ['https://a.example/'] }, backend: app }",
                "allow-origins",
            ),
            (
                "{ cors: { allow-origins: ['https://a.example/x'] }, backend: app }",
                "allow-origins",
            ),
            (
                "{ cors: { allow-origins: [a.example] }, backend: app }",
                "allow-origins",
            ),
            (
                "{ cors: { allow-origins: ['https://a.example'], allow-methods: ['G T'] }, backend: app }",
                "allow-methods",
            ),
            (
                "{ cors: { allow-origins: ['https://a.example'], allow-headers: ['a b'] }, backend: app }",
                "routes[0].cors",
            ),
        ] {
            let e = error_of(&format!("{MINIMAL}routes: [{route}]"));
            assert!(e.contains(key), "{route}: {e}");
        }
        parse(&format!(
            "{MINIMAL}routes: [{{ headers: {{ X-Canary: always }}, split: [{{ backend: app, weight: 3 }}] }}]"
        ))
        .expect("a header match and a split");
        let limited = |r: &str| {
            MINIMAL.replace(
                "default-backend: app",
                &format!("default-backend: app, rate-limit: {r}"),
            )
        };
        for (r, key) in [
            ("{ burst: 5 }", "rate-limit.per-source"),
            (
                "{ per-source: 5, source-prefix-v4: 33 }",
                "rate-limit.source-prefix-v4",
            ),
            (
                "{ per-source: 5, source-prefix-v6: 0 }",
                "rate-limit.source-prefix-v6",
            ),
            ("{ per-source: 5, table-size: 0 }", "rate-limit.table-size"),
            ("{ per-source: 5, rate: 1 }", "rate"),
        ] {
            let e = error_of(&limited(r));
            assert!(e.contains(key), "{r}: {e}");
        }
        let proxied = |p: &str| {
            MINIMAL.replace(
                "default-backend: app",
                &format!("default-backend: app, proxy-protocol: {p}"),
            )
        };
        for (p, key) in [
            ("{ from: [] }", "proxy-protocol.from"),
            ("{ from: [10.0.0.300/8] }", "proxy-protocol"),
            ("{ version: 2 }", "version"),
        ] {
            let e = error_of(&proxied(p));
            assert!(e.contains(key), "{p}: {e}");
        }
        let trusting = |p: &str| {
            MINIMAL.replace(
                "default-backend: app",
                &format!("default-backend: app, forwarded-headers: {p}"),
            )
        };
        for (p, key) in [
            ("{}", "from"),
            ("{ from: [] }", "forwarded-headers.from"),
            (
                "{ from: [10.0.0.0/8], client-header: 'a b' }",
                "client-header",
            ),
        ] {
            let e = error_of(&trusting(p));
            assert!(e.contains(key), "{p}: {e}");
        }
        let passing = |p: &str, tls: &str| {
            MINIMAL.replace(
                "default-backend: app",
                &format!("default-backend: app, {tls} passthrough: [{p}]"),
            )
        };
        let tls = "tls: { certificates: [/nonexistent] },";
        for (p, tls, key) in [
            (
                "{ host: a.example.com, backend: app }",
                "",
                "listeners[0].default-backend: is for HTTP; this listener has `passthrough` and no `tls`",
            ),
            ("{ host: 'a b', backend: app }", tls, "passthrough[0].host"),
            (
                "{ host: '*.*.example.com', backend: app }",
                tls,
                "passthrough[0].host",
            ),
            (
                "{ host: a.example.com, backend: nope }",
                tls,
                "passthrough[0].backend",
            ),
            ("{ host: a.example.com }", tls, "backend"),
        ] {
            let e = error_of(&passing(p, tls));
            assert!(e.contains(key), "{p}: {e}");
        }
        parse(&passing("{ host: '*.example.com', backend: app }", tls)).expect("a passthrough");
        let tcp = |extra: &str| {
            MINIMAL.replace(
                "default-backend: app",
                &format!("default-backend: app, mode: tcp{extra}"),
            )
        };
        parse(&tcp("")).expect("a TCP listener");
        let e = error_of(&MINIMAL.replace("servers:", "send-proxy: v2, servers:"));
        assert!(
            e.contains("listeners[0].default-backend") && e.contains("send-proxy"),
            "{e}"
        );
        let e = error_of(&tcp("").replace(
            "servers:",
            "send-proxy: v1, health-check: { type: http }, servers:",
        ));
        assert!(e.contains("backends[0].health-check.type"), "{e}");
        parse(&tcp("").replace("servers:", "send-proxy: v1, servers:")).expect("send-proxy on TCP");
        let e = error_of(&tcp("").replace("servers:", "send-proxy: v3, servers:"));
        assert!(e.contains("v3"), "{e}");
        for (extra, key) in [
            (", rate-limit: { per-source: 1 }", "listeners[0].rate-limit"),
            (
                ", response-headers: { remove: [Server] }",
                "response-headers",
            ),
            (
                ", forwarded-headers: { from: [10.0.0.0/8] }",
                "forwarded-headers",
            ),
        ] {
            let e = error_of(&tcp(extra));
            assert!(e.contains(key) && e.contains("mode: tcp"), "{extra}: {e}");
        }
        let e = error_of(&MINIMAL.replace("default-backend: app", "mode: tcp"));
        assert!(e.contains("listeners[0].default-backend"), "{e}");
        let e = error_of(&MINIMAL.replace("default-backend: app", "mode: udp"));
        assert!(e.contains("udp"), "{e}");
        let c = parse(&trusting("{ from: [10.0.0.0/8] }")).expect("a trusted network");
        assert_eq!(
            c.listeners[0]
                .forwarded_headers
                .as_ref()
                .map(|f| f.client_header.as_str()),
            Some("X-Forwarded-For")
        );
        let c = parse(&proxied("{}")).expect("from every peer");
        let p = c.listeners[0].proxy_protocol.as_ref().expect("set");
        for peer in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"] {
            assert!(p.expected_from(peer.parse().unwrap()), "{peer}");
        }
        let c = parse(&proxied("{ from: [10.0.0.0/8] }")).expect("from one network");
        let p = c.listeners[0].proxy_protocol.as_ref().expect("set");
        assert!(p.expected_from("10.1.2.3".parse().unwrap()));
        assert!(p.expected_from("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.expected_from("192.0.2.1".parse().unwrap()));
        let sticky = |s: &str| MINIMAL.replace("servers:", &format!("sticky: {s}, servers:"));
        for (s, key) in [
            ("{ max-age: 1h }", "sticky.cookie"),
            ("{ cookie: 'a b' }", "sticky.cookie"),
            ("{ cookie: 'a;b' }", "sticky.cookie"),
            ("{ cookie: SRV, path: x }", "sticky.path"),
            ("{ cookie: SRV, same-site: sometimes }", "same-site"),
        ] {
            let e = error_of(&sticky(s));
            assert!(e.contains(key), "{s}: {e}");
        }
        let rules =
            |r: &str| MINIMAL.replace("servers:", &format!("request-headers: {r}, servers:"));
        for (r, key) in [
            ("{ set: { 'a b': x } }", "request-headers.set"),
            ("{ set: { X-A: \"x\\ny\" } }", "request-headers.set.X-A"),
            ("{ remove: [Transfer-Encoding] }", "request-headers.remove"),
            ("{ set: { Content-Length: '1' } }", "request-headers.set"),
            ("{ add: { Connection: x } }", "request-headers.add"),
        ] {
            let e = error_of(&rules(r));
            assert!(e.contains(key), "{r}: {e}");
        }
        parse(&rules("{ set: { X-Env: prod }, remove: [X-Request-Id] }")).expect("rules");
        let c = parse(&sticky("{ cookie: SRV }")).expect("sticky");
        assert_eq!(
            c.backends[0].sticky,
            Some(Sticky {
                cookie: "SRV".into(),
                ..Sticky::default()
            })
        );
        let c = parse(&limited("{ per-source: 100 }")).expect("a rate limit");
        let r = c.listeners[0].rate_limit.as_ref().expect("set");
        assert_eq!(
            (
                r.burst,
                r.source_prefix_v4,
                r.source_prefix_v6,
                r.table_size
            ),
            (0, 32, 64, 65_536)
        );
    }
}
