//! The Kubernetes API as floodgate's source of routing (`kubernetes:` in the config): watches
//! of the cluster's objects (`watch.rs`), their translation into the same config a file gives
//! (`translate.rs`), applied by the control loop through the reload path (`run.rs`), so every
//! feature works from either source and a change never drops a connection.
//!
//! Nothing here runs on a serving thread: the watches, the debounce and the translation run on
//! the control thread's runtime.

mod annotations;
pub mod gateway;
pub mod leader;
pub mod objects;
mod resolve;
pub mod status;
pub mod translate;
pub mod watch;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubernetes.kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error(
        "no Kubernetes credentials: {0} (set kubernetes.kubeconfig, or run in a pod with a service account)"
    )]
    Infer(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("Kubernetes metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How the API connection is, for `/readyz`, the log and the metrics.
pub struct Health {
    /// Every watch has listed its objects once and the result was applied.
    synced: AtomicBool,
    /// The API is unreachable (a watch failed and has not recovered) since then, and why.
    down: Mutex<Option<(Instant, String)>>,
    pub metrics: ClusterMetrics,
}

impl Health {
    pub fn new(registry: &Registry) -> Result<Self, ClusterError> {
        Ok(Self {
            synced: AtomicBool::new(false),
            down: Mutex::new(None),
            metrics: ClusterMetrics::new(registry)?,
        })
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// A watch failed: true when this is the first failure since the API was last reachable.
    pub fn failed(&self, error: &str) -> bool {
        self.metrics.watch_errors.inc();
        self.metrics.api_up.set(0);
        let mut down = self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = down.is_none();
        match down.as_mut() {
            Some((_, e)) => error.clone_into(e),
            None => *down = Some((Instant::now(), error.to_owned())),
        }
        first
    }

    /// A watch got an answer: how long the API was unreachable, if it was.
    pub fn answered(&self) -> Option<std::time::Duration> {
        let mut down = self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was = down.take().map(|(since, _)| since.elapsed());
        self.metrics.api_up.set(1);
        was
    }

    /// A line for `/readyz` when something is wrong but floodgate still serves.
    pub fn detail(&self) -> Option<String> {
        let down = self
            .down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*down, self.synced()) {
            (Some((since, e)), true) => Some(format!(
                "kubernetes: API unreachable for {}s ({e}); serving the last state read",
                since.elapsed().as_secs()
            )),
            (Some((since, e)), false) => Some(format!(
                "kubernetes: API unreachable for {}s ({e}); nothing read yet",
                since.elapsed().as_secs()
            )),
            (None, false) => Some("kubernetes: first read of the cluster in progress".into()),
            (None, true) => None,
        }
    }
}

/// The control plane's metrics (docs/metrics.md).
pub struct ClusterMetrics {
    pub api_up: IntGauge,
    pub watch_errors: IntCounter,
    pub syncs: IntCounterVec,
    /// From the first change of a batch to its routing serving.
    pub sync_latency: Histogram,
    /// Objects by kind, as the watches hold them.
    pub objects: IntGaugeVec,
    /// Ingresses served and rejected.
    pub ingresses: IntGaugeVec,
    /// Writes to the cluster by the Lease holder, by kind (`status`, `event`).
    pub writes: IntCounterVec,
}

impl ClusterMetrics {
    fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let api_up = IntGauge::new(
            "floodgate_kubernetes_api_up",
            "1 while every watch of the Kubernetes API is answered, 0 while one fails",
        )?;
        let watch_errors = IntCounter::new(
            "floodgate_kubernetes_watch_errors_total",
            "Failed list or watch requests to the Kubernetes API (each is retried with backoff)",
        )?;
        let syncs = IntCounterVec::new(
            Opts::new(
                "floodgate_kubernetes_syncs_total",
                "Routing rebuilt from the cluster's objects, by result (ok, refused)",
            ),
            &["result"],
        )?;
        let sync_latency = Histogram::with_opts(
            HistogramOpts::new(
                "floodgate_kubernetes_sync_seconds",
                "From a change seen on a watch to the routing that includes it serving",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let objects = IntGaugeVec::new(
            Opts::new(
                "floodgate_kubernetes_objects",
                "Objects the watches hold, by kind",
            ),
            &["kind"],
        )?;
        let ingresses = IntGaugeVec::new(
            Opts::new(
                "floodgate_kubernetes_ingresses",
                "Ingresses of floodgate's classes, by state (served, rejected)",
            ),
            &["state"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "floodgate_kubernetes_writes_total",
                "Writes to the API by the Lease holder, by kind (status, event)",
            ),
            &["kind"],
        )?;
        r.register(Box::new(writes.clone()))?;
        r.register(Box::new(api_up.clone()))?;
        r.register(Box::new(watch_errors.clone()))?;
        r.register(Box::new(syncs.clone()))?;
        r.register(Box::new(sync_latency.clone()))?;
        r.register(Box::new(objects.clone()))?;
        r.register(Box::new(ingresses.clone()))?;
        Ok(Self {
            api_up,
            watch_errors,
            syncs,
            sync_latency,
            objects,
            ingresses,
            writes,
        })
    }
}
