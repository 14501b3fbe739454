//! Prometheus metrics. Request counters and latency histograms are updated on the request path;
//! everything else (backends, servers, listeners, XDP counters from the pinned maps, conntrack,
//! reloads) is read when `/metrics` is scraped, so it costs nothing between scrapes.

use std::{fmt::Write as _, path::PathBuf, sync::Arc, time::Duration};

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::{proxy::ListenerCtx, reload, stats};

/// Buckets from 1 ms to 10 s, fine enough for P95/P99 in between.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "floodgate_http_requests_total",
                "HTTP requests answered, by listener, backend and status class",
            ),
            &["listener", "backend", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "floodgate_http_request_duration_seconds",
                "Time from the request's arrival to its response headers, by listener and backend",
            )
            .buckets(BUCKETS.to_vec()),
            &["listener", "backend"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
        })
    }

    /// Records one answered request. `backend` is empty when no route matched.
    pub fn observe(&self, listener: &str, backend: &str, status: u16, took: Duration) {
        let code = match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[listener, backend, code])
            .inc();
        self.duration
            .with_label_values(&[listener, backend])
            .observe(took.as_secs_f64());
    }
}

/// What `/metrics` reads at scrape time.
pub struct Sources {
    pub listeners: Vec<(String, Arc<ListenerCtx>, Arc<crate::proxy::server::Active>)>,
    pub maxconn: u32,
    pub reloads: Arc<reload::Counts>,
    /// The pin directory when XDP is enabled.
    pub pin_dir: Option<PathBuf>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition: the registry, then the scrape-time families.
pub fn render(m: &Metrics, src: &Sources) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut buf);
    let mut out = String::from_utf8(buf).unwrap_or_default();

    family(
        &mut out,
        "floodgate_build_info",
        "gauge",
        "Always 1, labelled with the version",
    );
    let _ = writeln!(
        out,
        "floodgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "floodgate_maxconn",
        "gauge",
        "The effective global maxconn (after the fd limit)",
    );
    let _ = writeln!(out, "floodgate_maxconn {}", src.maxconn);
    family(
        &mut out,
        "floodgate_listener_active_connections",
        "gauge",
        "Connections held per listener",
    );
    for (name, _, active) in &src.listeners {
        let _ = writeln!(
            out,
            "floodgate_listener_active_connections{{listener=\"{name}\"}} {}",
            active.get()
        );
    }
    family(
        &mut out,
        "floodgate_config_reloads_total",
        "counter",
        "Config reloads by result",
    );
    let (ok, failed) = (
        src.reloads.ok.load(std::sync::atomic::Ordering::Relaxed),
        src.reloads
            .failed
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "floodgate_config_reloads_total{{result=\"ok\"}} {ok}\nfloodgate_config_reloads_total{{result=\"failed\"}} {failed}"
    );

    if let Some((_, ctx, _)) = src.listeners.first() {
        let routing = ctx.routing();
        family(
            &mut out,
            "floodgate_backend_active_requests",
            "gauge",
            "Requests in flight per backend (HAProxy scur)",
        );
        let loads: Vec<_> = routing
            .pools()
            .iter()
            .map(|p| (p.name.clone(), p.load(), p.servers()))
            .collect();
        for (b, l, _) in &loads {
            let _ = writeln!(
                out,
                "floodgate_backend_active_requests{{backend=\"{b}\"}} {}",
                l.active
            );
        }
        family(
            &mut out,
            "floodgate_backend_queued_requests",
            "gauge",
            "Requests waiting in the backend's queue (HAProxy qcur)",
        );
        for (b, l, _) in &loads {
            let _ = writeln!(
                out,
                "floodgate_backend_queued_requests{{backend=\"{b}\"}} {}",
                l.queued
            );
        }
        family(
            &mut out,
            "floodgate_server_active_requests",
            "gauge",
            "Requests in flight per server",
        );
        family(
            &mut out,
            "floodgate_server_maxconn",
            "gauge",
            "Per-server limit, 0 for none (HAProxy slim)",
        );
        family(
            &mut out,
            "floodgate_server_up",
            "gauge",
            "1 when the server is up (health)",
        );
        for (b, _, servers) in &loads {
            for s in servers {
                let labels = format!("backend=\"{b}\",server=\"{}\"", s.addr);
                let _ = writeln!(
                    out,
                    "floodgate_server_active_requests{{{labels}}} {}",
                    s.active()
                );
                let _ = writeln!(out, "floodgate_server_maxconn{{{labels}}} {}", s.maxconn);
                let _ = writeln!(
                    out,
                    "floodgate_server_up{{{labels}}} {}",
                    u8::from(s.is_up())
                );
            }
        }
    }

    if let Some(dir) = &src.pin_dir
        && let Ok(snap) = stats::read(dir)
    {
        family(
            &mut out,
            "floodgate_xdp_packets_total",
            "counter",
            "Packets seen by the XDP program, by reason and action",
        );
        for (reason, r) in &snap.reasons {
            let _ = writeln!(
                out,
                "floodgate_xdp_packets_total{{reason=\"{reason}\",action=\"{}\"}} {}",
                r.verdict, r.packets
            );
        }
        family(
            &mut out,
            "floodgate_xdp_bytes_total",
            "counter",
            "Bytes seen by the XDP program, by reason and action",
        );
        for (reason, r) in &snap.reasons {
            let _ = writeln!(
                out,
                "floodgate_xdp_bytes_total{{reason=\"{reason}\",action=\"{}\"}} {}",
                r.verdict, r.bytes
            );
        }
        family(
            &mut out,
            "floodgate_xdp_attached",
            "gauge",
            "1 per interface the program is attached to, with the mode in use",
        );
        for a in &snap.interfaces {
            let _ = writeln!(
                out,
                "floodgate_xdp_attached{{interface=\"{}\",mode=\"{}\"}} 1",
                a.interface, a.mode
            );
        }
        family(
            &mut out,
            "floodgate_flows",
            "gauge",
            "Flows in floodgate's own flow table",
        );
        let _ = writeln!(out, "floodgate_flows {}", snap.flows);
    }
    if let Some(c) = crate::conntrack::usage() {
        family(
            &mut out,
            "floodgate_conntrack_entries",
            "gauge",
            "nf_conntrack_count of this network namespace",
        );
        let _ = writeln!(out, "floodgate_conntrack_entries {}", c.count);
        family(
            &mut out,
            "floodgate_conntrack_max",
            "gauge",
            "nf_conntrack_max of this network namespace",
        );
        let _ = writeln!(out, "floodgate_conntrack_max {}", c.max);
    }
    out
}
