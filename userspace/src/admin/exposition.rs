//! The `/metrics` exposition: the request-path metrics (`crate::metrics`, updated as requests
//! pass) followed by the families computed when `/metrics` is scraped (backends, servers,
//! listeners, certificates, the XDP counters from the pinned maps, conntrack, reloads), so those
//! cost nothing between scrapes. Both are the `prometheus` crate's metrics, so names, HELP and
//! TYPE lines and label escaping come from the library.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
};

use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{config::reload, metrics::Metrics, xdp::stats};

/// What the proxy shows `/metrics` at scrape time. Implemented by the proxy
/// (`proxy::listener::server::Scrape`), so that this module needs none of its types.
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
    let mut families = m.registry().gather();
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
    #![allow(clippy::unwrap_used)]
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
}
