//! `floodgate run`: bind, attach, start the workers, then the control loop until a signal, and
//! the drain. Each step is a function of its own, in that order; the control loop is `Control`:
//! `upkeep` (capacity and heartbeat for XDP, flow aging, verified sources, SYN pressure) every
//! 250 ms, and `apply` for each change (a file, SIGHUP, the cluster's objects).

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, watch},
};
use tracing::{error, info, warn};

use floodgate::{
    cluster::{
        Health,
        objects::Problem,
        translate::{Translation, translate},
        watch::{Settled, Watches},
    },
    config::{Config, reload},
    limits,
    proxy::{
        generation::{ListenerCtx, Routing},
        listener::{balance, server},
    },
    tls,
    xdp::{
        conntrack,
        dataplane::{Dataplane, ListenerLoad, VerifiedSources},
    },
};

/// How often listener capacity and the heartbeat are written for the XDP program.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// Flow-table aging runs every this many publish ticks (10 s).
const FLOW_AGING_TICKS: u64 = 40;
/// XDP drop counters are checked every second (4 ticks) for the drop-burst log event.
const DROP_CHECK_TICKS: u64 = 4;
/// How often the config file is checked for new content.
const RELOAD_POLL: Duration = Duration::from_secs(1);
/// A config rebuild (file or cluster) longer than this is logged with where the time went.
const SLOW_REBUILD: Duration = Duration::from_millis(250);
/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

pub fn run(path: &Path, haproxy_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = Config::load_with(path, haproxy_dir)?;
    if !cfg.ignored_haproxy_keys.is_empty() {
        warn!(keys = ?cfg.ignored_haproxy_keys, "HAProxy ConfigMap keys floodgate does not implement are ignored");
    }
    for w in cfg.warnings() {
        warn!("{w}");
    }
    let maxconn = limits::effective_maxconn(cfg.global.maxconn, cfg.listeners.len());
    limits::check_memory(maxconn, limits::cgroup_memory_limit());
    // Every thread runs tokio's current-thread scheduler, as HAProxy runs one event loop per
    // thread: no work stealing, no cross-thread wakeups on the request path. Measured: 33-38 us
    // of CPU per proxied request against 62 with a one-worker multi-thread runtime.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(path, haproxy_dir, cfg, maxconn))
}

async fn serve(
    path: &std::path::Path,
    haproxy_dir: Option<&std::path::Path>,
    cfg: Config,
    maxconn: u32,
) -> anyhow::Result<()> {
    // The file's config; `cfg` is what serves (the same, or with the cluster's objects on top).
    let base = cfg.clone();
    // Handlers first: a SIGTERM while starting (a pod deleted right after it was created) is
    // kept and answered with a clean shutdown once serving starts, instead of the default
    // action killing the process with XDP attached and its maps pinned.
    let sigterm = signal(SignalKind::terminate())?;
    let sigint = signal(SignalKind::interrupt())?;
    let sighup = signal(SignalKind::hangup())?;
    let workers = match cfg.global.nbthread {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let sockets = bind(&cfg, workers)?;
    // Loaded while privileges last (XDP's attach drops them).
    let (_balancer, loads) = balance(&cfg, &sockets, workers);
    // Bound with the listeners, before privileges are dropped (a port under 1024 needs them):
    // an admin address in use is a start-up error, not a silent gap.
    let admin_listener = match &cfg.admin {
        Some(a) => {
            Some(floodgate::admin::bind(a.bind).with_context(|| format!("admin.bind {}", a.bind))?)
        }
        None => None,
    };
    let binds: Vec<_> = cfg.listeners.iter().map(|l| l.bind).collect();
    let (bypass, dp) = attach(&cfg, &binds)?;

    let metrics = Arc::new(floodgate::metrics::Metrics::new()?);
    metrics
        .registry()
        .register(Box::new(balance::LoadCollector::new(loads.clone())?))?;
    let cluster = match &cfg.kubernetes {
        Some(k) => Some(ClusterSource::start(k, &metrics).await?),
        None => None,
    };
    let routing = Arc::new(Routing::build(&cfg, None, workers, Some(&metrics)).await?);
    routing.commit();
    let reloads = Arc::new(reload::Counts::default());
    let mut ctxs = Vec::new();
    let mut acceptors: Vec<Arc<tls::Acceptor>> = Vec::new();
    let permits = Arc::new(Semaphore::new(maxconn as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut actives = Vec::new();
    let (verified, verified_tx) = match dp
        .as_ref()
        .and_then(|_| VerifiedSources::new(cfg.xdp.verified_ttl.0))
    {
        Some((v, tx)) => (Some(v), Some(tx)),
        None => (None, None),
    };
    let mut shared = Vec::new();
    for l in &cfg.listeners {
        let tls = match &l.tls {
            Some(t) => Some(Arc::new(tls::Acceptor::new(&l.name, &cfg.tls, t)?)),
            None => None,
        };
        let ctx = Arc::new(ListenerCtx::new(
            routing.clone(),
            l,
            &cfg,
            Some(metrics.clone()),
        ));
        acceptors.extend(tls.clone());
        ctxs.push(ctx.clone());
        let active = Arc::new(server::Active::default());
        actives.push(active.clone());
        info!(listener = %l.name, bind = %l.bind, "listening");
        let own = l.maxconn.map(|m| Arc::new(Semaphore::new(m as usize)));
        shared.push((ctx, active, tls, own));
    }
    let worker_done = spawn_workers(
        sockets,
        &shared,
        &cfg,
        (&permits, &loads),
        verified_tx.as_ref(),
        &stop_rx,
    )?;
    info!(maxconn, workers, "floodgate ready");

    let flows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(a), Some(listener)) = (&cfg.admin, admin_listener) {
        let sources = floodgate::admin::exposition::Sources {
            listeners: cfg
                .listeners
                .iter()
                .zip(&shared)
                .map(
                    |(l, (ctx, active, _, _))| floodgate::admin::exposition::ListenerSource {
                        name: l.name.clone(),
                        source: Arc::new(floodgate::proxy::listener::server::Scrape {
                            ctx: ctx.clone(),
                            active: active.clone(),
                        }),
                        maxconn: l.maxconn.unwrap_or(0),
                    },
                )
                .collect(),
            maxconn,
            flows: flows.clone(),
            reloads: reloads.clone(),
            tls: acceptors.clone(),
            pin_dir: cfg.xdp.enabled.then(|| cfg.xdp.pin_dir.clone()),
        };
        let admin = Arc::new(floodgate::admin::Admin {
            metrics: metrics.clone(),
            sources,
            ready: ready.clone(),
            cluster: cluster.as_ref().map(|c| c.health.clone()),
        });
        floodgate::admin::spawn(listener, admin, a.clone()).context("admin thread")?;
    }
    // In cluster mode, ready once the cluster's routing serves.
    ready.store(cluster.is_none(), std::sync::atomic::Ordering::Relaxed);
    let monitor = dp
        .as_ref()
        .and_then(|_| floodgate::xdp::pressure::Monitor::new(&cfg.xdp.pressure));
    let mut control = Control {
        path,
        haproxy_dir,
        workers,
        maxconn,
        watcher: reload::Watcher::new(watched(path, haproxy_dir, &cfg)),
        base,
        cfg,
        routing,
        ctxs,
        actives,
        acceptors,
        dp,
        cluster,
        reloads,
        metrics,
        ready,
        kernel: KernelUpkeep {
            ticks: 0,
            monitor,
            flows,
            drops: floodgate::xdp::stats::DropBursts::default(),
            verified,
        },
    };
    control
        .run(Signals {
            term: sigterm,
            int: sigint,
            hup: sighup,
        })
        .await;
    let Control {
        cfg,
        dp,
        cluster,
        ready,
        ..
    } = control;
    if let Some(c) = cluster {
        // Bounded: a stuck API server must not hold up the drain.
        let (client, ns, me) = c.release;
        let release = floodgate::cluster::leader::release(client, &ns, &c.k.lease, &me);
        let _ = tokio::time::timeout(Duration::from_secs(2), release).await;
    }
    drain(
        &ready,
        &stop_tx,
        worker_done,
        dp,
        &cfg,
        bypass,
        &permits,
        maxconn,
    )
    .await;
    Ok(())
}

/// The files a config reloads from: the config file, the ConfigMap directory, and the files the
/// config names.
fn watched(path: &Path, haproxy_dir: Option<&Path>, cfg: &Config) -> Vec<std::path::PathBuf> {
    std::iter::once(path)
        .chain(haproxy_dir)
        .map(Path::to_path_buf)
        .chain(cfg.files())
        .collect()
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// The control loop's state: what serves now, and what the loop watches for a change.
struct Control<'a> {
    path: &'a Path,
    haproxy_dir: Option<&'a Path>,
    workers: usize,
    maxconn: u32,
    /// The file's config; `cfg` is what serves (the same, or with the cluster's objects on top).
    base: Config,
    cfg: Config,
    routing: Arc<Routing>,
    ctxs: Vec<Arc<ListenerCtx>>,
    actives: Vec<Arc<server::Active>>,
    acceptors: Vec<Arc<tls::Acceptor>>,
    dp: Option<Dataplane>,
    cluster: Option<ClusterSource>,
    reloads: Arc<reload::Counts>,
    metrics: Arc<floodgate::metrics::Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    watcher: reload::Watcher,
    kernel: KernelUpkeep,
}

/// What the control loop keeps up in the kernel every `PUBLISH_INTERVAL` when XDP is on.
struct KernelUpkeep {
    ticks: u64,
    monitor: Option<floodgate::xdp::pressure::Monitor>,
    /// Entries in the flow table, as of the last aging (for /metrics).
    flows: Arc<std::sync::atomic::AtomicU64>,
    drops: floodgate::xdp::stats::DropBursts,
    verified: Option<VerifiedSources>,
}

impl Control<'_> {
    /// Until SIGTERM or SIGINT: the kernel upkeep, certificate and config file checks, and
    /// each change (a file, SIGHUP, the cluster's objects) applied all or nothing.
    async fn run(&mut self, mut signals: Signals) {
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        let mut watch_tick = tokio::time::interval(RELOAD_POLL);
        loop {
            let change = tokio::select! {
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
                _ = signals.hup.recv() => Change::File,
                Some(s) = async { match self.cluster.as_mut() { Some(c) => c.settled.recv().await, None => std::future::pending().await } } => Change::Cluster(s),
                _ = watch_tick.tick() => {
                    for a in &self.acceptors {
                        // Logged inside; a refused certificate leaves the previous one serving.
                        let _ = a.reload_if_changed();
                    }
                    if self.watcher.changed() { Change::File } else { Change::Nothing }
                }
                _ = tick.tick() => {
                    self.upkeep();
                    Change::Nothing
                }
            };
            self.apply(change).await;
        }
    }

    /// Capacity and the heartbeat, flow aging, drop bursts, the listeners' addresses, verified
    /// sources and SYN pressure, each at its own pace.
    fn upkeep(&mut self) {
        let Some(dp) = self.dp.as_mut() else { return };
        let (cfg, k) = (&self.cfg, &mut self.kernel);
        k.ticks += 1;
        let own: Vec<Option<u32>> = cfg.listeners.iter().map(|l| l.maxconn).collect();
        if let Err(e) = publish_capacity(dp, &self.actives, &self.ctxs, &own, self.maxconn) {
            error!(error = %e, "cannot publish capacity to XDP");
        }
        if cfg.xdp.flow_table && (k.ticks == 1 || k.ticks.is_multiple_of(FLOW_AGING_TICKS)) {
            match dp.age_flows(cfg.xdp.flow_idle_timeout.0) {
                Ok(aged) => {
                    k.flows
                        .store(aged.live, std::sync::atomic::Ordering::Relaxed);
                    if aged.removed > 0 {
                        info!(
                            removed = aged.removed,
                            live = aged.live,
                            "idle flows aged out of the flow table"
                        );
                    }
                }
                Err(e) => error!(error = %e, "cannot age the flow table"),
            }
        }
        if k.ticks.is_multiple_of(DROP_CHECK_TICKS) {
            k.drops.check(&cfg.xdp.pin_dir);
            // Wildcard listeners follow the node's addresses (a pod IP moved, an address
            // added) within a second.
            if let Err(e) = dp.sync_dests() {
                error!(error = %e, "cannot publish the listeners' addresses to XDP");
            }
        }
        if let Some(Err(e)) = k.verified.as_mut().map(|v| v.flush(dp)) {
            error!(error = %e, "cannot publish verified sources to XDP");
        }
        if let Some(m) = k.monitor.as_mut() {
            let new_sources = k.verified.as_ref().map(VerifiedSources::new_sources);
            watch_pressure(m, dp, new_sources, &self.metrics);
        }
    }

    /// One change: the file read again (a refused file keeps the running config), the
    /// cluster's objects put on top, the result applied all or nothing.
    async fn apply(&mut self, change: Change) {
        let settled = match change {
            Change::Nothing => return,
            Change::File => {
                match Config::load_with(self.path, self.haproxy_dir) {
                    Ok(b) => self.base = b,
                    Err(e) => {
                        self.reloads.record::<(), _>(&Err(()));
                        error!(error = %e, failed = self.reloads.failed.load(std::sync::atomic::Ordering::Relaxed), "config reload refused; the running config keeps serving");
                        return;
                    }
                }
                None
            }
            Change::Cluster(s) => Some(s),
        };
        // The file's config, with the cluster's objects on top in cluster mode.
        let t0 = std::time::Instant::now();
        let (next, from_cluster) = match &mut self.cluster {
            Some(c) => match c.translate(&self.base) {
                Ok((next, t)) => (next, Some(t)),
                Err(e) => {
                    c.health.metrics.syncs.with_label_values(&["refused"]).inc();
                    error!(error = %e, "the cluster's objects make no valid config; the running config keeps serving");
                    return;
                }
            },
            None => (self.base.clone(), None),
        };
        let t1 = std::time::Instant::now();
        let applied = apply_reload(
            self.workers,
            next,
            &self.cfg,
            &self.routing,
            &self.ctxs,
            self.dp.as_mut(),
        )
        .await;
        if t0.elapsed() > SLOW_REBUILD {
            warn!(
                translate_ms = (t1 - t0).as_millis(),
                build_ms = t1.elapsed().as_millis(),
                "slow config rebuild"
            );
        }
        if settled.is_none() {
            self.reloads.record(&applied);
        }
        match applied {
            Ok((new_cfg, new_routing)) => {
                for w in new_cfg.warnings() {
                    warn!("{w}");
                }
                self.cfg = new_cfg;
                self.routing = new_routing;
                self.watcher
                    .watch(watched(self.path, self.haproxy_dir, &self.cfg));
                if let (Some(c), Some(t)) = (&mut self.cluster, from_cluster) {
                    for a in &self.acceptors {
                        a.set_cluster(&t.certs);
                    }
                    c.applied(&t, settled);
                    self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if settled.is_none() {
                    info!(
                        ok = self.reloads.ok.load(std::sync::atomic::Ordering::Relaxed),
                        "config reloaded: new requests use it"
                    );
                }
            }
            Err(e) => {
                if let Some(c) = &self.cluster {
                    c.health.metrics.syncs.with_label_values(&["refused"]).inc();
                }
                error!(
                    error = %e,
                    failed = self.reloads.failed.load(std::sync::atomic::Ordering::Relaxed),
                    "config refused; the running config keeps serving"
                );
            }
        }
    }
}

/// What woke the control loop for a new config.
enum Change {
    Nothing,
    /// The file (or a file it names) changed, or SIGHUP.
    File,
    /// The cluster's objects changed and settled.
    Cluster(Settled),
}

/// The Kubernetes API as a source of routing: its watches, and what the last applied
/// translation reported (so a problem is logged once, not at every endpoint change).
struct ClusterSource {
    k: floodgate::config::Kubernetes,
    watches: Watches,
    settled: tokio::sync::mpsc::Receiver<Settled>,
    health: Arc<Health>,
    reported: std::collections::HashSet<Problem>,
    /// The certificates the TLS listeners serve from the cluster.
    certs: Vec<floodgate::tls::CertPair>,
    /// The status writer's input (it writes only while this pod holds the Lease).
    status: tokio::sync::watch::Sender<Arc<floodgate::cluster::status::Report>>,
    /// What giving up the Lease at exit needs: the client, the namespace, this pod's identity.
    release: (kube::Client, String, String),
}

impl ClusterSource {
    async fn start(
        k: &floodgate::config::Kubernetes,
        metrics: &floodgate::metrics::Metrics,
    ) -> anyhow::Result<Self> {
        let health = Arc::new(Health::new(metrics.registry())?);
        let (watches, settled, client) =
            floodgate::cluster::watch::start(k, health.clone()).await?;
        let ns = floodgate::cluster::watch::own_namespace(&client);
        let identity = floodgate::cluster::leader::identity();
        let leader = floodgate::cluster::leader::spawn(
            client.clone(),
            ns.clone(),
            k.lease.clone(),
            identity.clone(),
        );
        let status = floodgate::cluster::status::spawn(
            client.clone(),
            k,
            ns.clone(),
            watches.ingress_stores(),
            leader,
            health.metrics.writes.clone(),
        );
        info!(controller = %k.controller, namespaces = ?k.namespaces, lease = %format!("{ns}/{}", k.lease), %identity, "watching the Kubernetes API");
        Ok(Self {
            k: k.clone(),
            watches,
            settled,
            health,
            reported: Default::default(),
            certs: Vec::new(),
            status,
            release: (client, ns, identity),
        })
    }

    fn translate(
        &mut self,
        base: &Config,
    ) -> Result<(Config, Translation), floodgate::config::ConfigError> {
        let objs = self.watches.objects();
        let m = &self.health.metrics;
        for (kind, n) in [
            ("IngressClass", objs.classes.len()),
            ("Ingress", objs.ingresses.len()),
            ("Service", objs.services.len()),
            ("EndpointSlice", objs.slices.len()),
            ("Secret", objs.secrets.len()),
        ] {
            m.objects
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        translate(base, &self.k, &objs, &self.certs)
    }

    /// The translation serves: count it and log what is new among its problems.
    fn applied(&mut self, t: &Translation, settled: Option<Settled>) {
        let m = &self.health.metrics;
        m.syncs.with_label_values(&["ok"]).inc();
        if let Some(s) = settled {
            m.sync_latency.observe(s.since.elapsed().as_secs_f64());
        }
        let rejected = t
            .problems
            .iter()
            .filter(|p| p.rejected && p.kind == "Ingress")
            .count();
        m.ingresses
            .with_label_values(&["served"])
            .set(i64::try_from(t.served.len()).unwrap_or(i64::MAX));
        m.ingresses
            .with_label_values(&["rejected"])
            .set(i64::try_from(rejected).unwrap_or(i64::MAX));
        let now: std::collections::HashSet<Problem> = t.problems.iter().cloned().collect();
        for p in now.difference(&self.reported) {
            if p.rejected {
                warn!(kind = p.kind, namespace = %p.namespace, name = %p.name, reason = %p.reason, "object rejected; the others are served");
            } else {
                warn!(kind = p.kind, namespace = %p.namespace, name = %p.name, reason = %p.reason, "object served in part");
            }
        }
        // Once, at the first sync: later ones are counted, and their problems logged above.
        if !self.health.synced() {
            info!(
                ingresses = t.served.len(),
                rejected, "routing from the cluster serves"
            );
        }
        self.health.set_synced();
        self.reported = now;
        self.certs.clone_from(&t.certs);
        self.status
            .send_replace(Arc::new(floodgate::cluster::status::Report {
                served: t.served.clone(),
                problems: t.problems.clone(),
                statuses: t.statuses.clone(),
            }));
    }
}

/// Binds every listener, before anything touches the kernel's XDP state (a port taken fails
/// the start cleanly). Each worker thread gets its own socket per listener (SO_REUSEPORT when
/// there are several), or, with `reuseport: false`, a duplicate of one socket: one accept
/// queue shared by all workers.
fn bind(cfg: &Config, workers: usize) -> anyhow::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for l in &cfg.listeners {
        if l.reuseport {
            for s in &mut sockets {
                s.push(server::bind(l, workers > 1)?);
            }
        } else {
            let shared = server::bind(l, false)?;
            for s in sockets.iter_mut().skip(1) {
                s.push(
                    shared.try_clone().with_context(|| {
                        format!("listeners `{}`: duplicating the socket", l.name)
                    })?,
                );
            }
            if let Some(first) = sockets.first_mut() {
                first.push(shared);
            }
        }
    }
    Ok(sockets)
}

/// The `SO_REUSEPORT` program that gives each new connection to the least loaded worker, on
/// the listeners with a socket per worker (`global.worker-balance: load`, more than one worker). A
/// kernel or privileges that refuse it leave the kernel's hash in place, said at start.
fn balance(
    cfg: &Config,
    sockets: &[Vec<std::net::TcpListener>],
    workers: usize,
) -> (Option<balance::Balancer>, Arc<balance::Loads>) {
    let owned = || Arc::new(balance::Loads::owned(workers));
    if workers < 2 || cfg.global.worker_balance != floodgate::config::WorkerBalance::Load {
        return (None, owned());
    }
    // Indexed as the config lists them (the program's per-socket counts are): a listener
    // with one shared socket (`reuseport: false`) has none here.
    let groups: Vec<Vec<&std::net::TcpListener>> = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| match l.reuseport {
            true => sockets.iter().filter_map(|s| s.get(i)).collect(),
            false => Vec::new(),
        })
        .collect();
    if groups.iter().all(Vec::is_empty) {
        return (None, owned());
    }
    match balance::attach(&groups, workers) {
        Ok((b, loads)) => {
            info!(
                workers,
                "new connections go to the least loaded worker (global.worker-balance: load)"
            );
            (Some(b), loads)
        }
        Err(e) => {
            warn!(error = %e, "cannot balance workers by load: the kernel's hash spreads connections");
            (None, owned())
        }
    }
}

/// The kernel side, in order: conntrack bypass, then XDP (so an attached program means
/// everything is in place), then every capability not needed any more is dropped, before any
/// other thread starts (threads inherit the capabilities of the one that creates them).
fn attach(
    cfg: &Config,
    binds: &[std::net::SocketAddr],
) -> anyhow::Result<(Option<conntrack::Bypass>, Option<Dataplane>)> {
    let bypass = if cfg.xdp.enabled && cfg.xdp.conntrack_bypass {
        Some(conntrack::Bypass::install(
            &cfg.xdp.nft_table,
            binds,
            &cfg.xdp.interfaces,
        )?)
    } else {
        None
    };
    let dp = if cfg.xdp.enabled {
        Some(Dataplane::start(&cfg.xdp, binds)?)
    } else {
        info!("xdp.enabled is false: running the proxy alone");
        None
    };
    let keep = floodgate::privileges::needed_after_start(cfg.xdp.enabled);
    match floodgate::privileges::drop_all_but(&keep) {
        Ok(kept) => info!(kept = ?kept, "capabilities dropped but those kept"),
        Err(e) => warn!(error = %e, "cannot drop capabilities; running with those it started with"),
    }

    Ok((bypass, dp))
}

/// The listener state every worker serves: context, connection count, TLS acceptor, and the
/// listener's own maxconn.
type Shared = (
    Arc<ListenerCtx>,
    Arc<server::Active>,
    Option<Arc<tls::Acceptor>>,
    Option<Arc<Semaphore>>,
);

/// One thread per worker, each with its own current-thread runtime serving its sockets: the
/// control loop (XDP publishing, flow aging, verified sources, reloads), whose work grows with
/// a flood, never takes time from one that serves connections. Returns one receiver per worker
/// that resolves when the worker has drained.
fn spawn_workers(
    sockets: Vec<Vec<std::net::TcpListener>>,
    shared: &[Shared],
    cfg: &Config,
    (permits, loads): (&Arc<Semaphore>, &Arc<balance::Loads>),
    verified_tx: Option<&tokio::sync::mpsc::Sender<std::net::IpAddr>>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::sync::oneshot::Receiver<()>>> {
    let mut worker_done = Vec::new();
    for (w, socks) in sockets.into_iter().enumerate() {
        let serves: Vec<server::Serve> = socks
            .into_iter()
            .zip(shared)
            .enumerate()
            .map(|(l, (listener, (ctx, active, tls, own)))| server::Serve {
                listener,
                ctx: ctx.clone(),
                maxconn: permits.clone(),
                listener_maxconn: own.clone(),
                active: active.clone(),
                timeouts: cfg.global.timeouts.clone(),
                limits: cfg.global.limits.clone(),
                http2: cfg.global.http2.clone(),
                http1_engine: cfg.global.http1_engine == floodgate::config::Http1Engine::Floodgate,
                verified: verified_tx.cloned(),
                tls: tls.clone(),
                load: balance::Seat {
                    loads: loads.clone(),
                    worker: w,
                    listener: l,
                },
            })
            .collect();
        let (stop, (done_tx, done_rx)) = (stop_rx.clone(), tokio::sync::oneshot::channel::<()>());
        worker_done.push(done_rx);
        std::thread::Builder::new()
            .name(format!("floodgate-w{w}"))
            .spawn(move || {
                floodgate::proxy::worker::WORKER.with(|c| c.set(w));
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(async move {
                        // Ends with the runtime, when every listener has drained.
                        tokio::spawn(floodgate::proxy::worker::timer_floor());
                        let mut set = tokio::task::JoinSet::new();
                        for s in serves {
                            set.spawn(server::serve(s, stop.clone(), DRAIN_GRACE));
                        }
                        while set.join_next().await.is_some() {}
                    }),
                    Err(e) => error!(worker = w, error = %e, "cannot start a worker runtime"),
                }
                let _ = done_tx.send(());
            })?;
    }
    Ok(worker_done)
}

/// SIGTERM or SIGINT: not ready any more, workers stop accepting and finish what they hold
/// (within `DRAIN_GRACE`), then XDP is detached (or left, `keep-attached-on-exit`) and the
/// conntrack rules removed.
#[allow(
    clippy::too_many_arguments,
    reason = "the state of `serve`, handed over once at exit"
)]
async fn drain(
    ready: &std::sync::atomic::AtomicBool,
    stop_tx: &watch::Sender<bool>,
    worker_done: Vec<tokio::sync::oneshot::Receiver<()>>,
    dp: Option<Dataplane>,
    cfg: &Config,
    bypass: Option<conntrack::Bypass>,
    permits: &Semaphore,
    maxconn: u32,
) {
    info!("shutting down: draining connections");
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for done in worker_done {
        let _ = done.await;
    }
    if let Some(dp) = dp {
        dp.stop(cfg.xdp.keep_attached_on_exit);
    }
    drop(bypass);
    if permits.available_permits() != maxconn as usize {
        warn!("connections were still open at exit");
    }
}

/// One reading of SYN pressure; engages or releases the XDP rate limits on a change.
fn watch_pressure(
    m: &mut floodgate::xdp::pressure::Monitor,
    dp: &mut Dataplane,
    new_sources: Option<u64>,
    metrics: &floodgate::metrics::Metrics,
) {
    use floodgate::xdp::pressure::{Change, Sample};
    let syns = match dp.syn_admitted() {
        Ok(n) => n,
        Err(e) => {
            error!(error = %e, "cannot read XDP's admitted SYNs");
            return;
        }
    };
    let over_budget = match dp.syn_over_budget() {
        Ok(n) => n,
        Err(e) => {
            error!(error = %e, "cannot read XDP's over-budget SYNs");
            return;
        }
    };
    let sample = Sample {
        at: std::time::Instant::now(),
        syns,
        accepted: server::ACCEPTED.load(std::sync::atomic::Ordering::Relaxed),
        kernel: floodgate::xdp::pressure::kernel_signs(dp.kernel_cookies_held()),
        over_budget,
        new_sources,
    };
    let state = match m.tick(sample) {
        None => return,
        Some(Change::Engaged(p)) => p,
        Some(Change::Released) => floodgate::xdp::dataplane::Pressured::default(),
    };
    metrics.pressure(state.engaged);
    if let Err(e) = dp.set_pressure(state) {
        error!(error = %e, "cannot publish SYN pressure to XDP");
    }
}

/// Builds the next generation and switches listeners to it; XDP maps get the new CIDRs and
/// rates. Backends with unchanged settings keep their pools (in-flight counts, queue, health).
async fn apply_reload(
    workers: usize,
    new: Config,
    current: &Config,
    routing: &Arc<Routing>,
    ctxs: &[Arc<ListenerCtx>],
    dp: Option<&mut Dataplane>,
) -> anyhow::Result<(Config, Arc<Routing>)> {
    reload::check(&new, current)?;
    let metrics = ctxs.first().and_then(|c| c.metrics.clone());
    // First, as it can still refuse the config (a backend's TLS files) before XDP changes.
    let next = Arc::new(Routing::build(&new, Some(routing), workers, metrics.as_deref()).await?);
    if let Some(dp) = dp {
        let binds: Vec<_> = new.listeners.iter().map(|l| l.bind).collect();
        if let Err(e) = dp.configure(&new.xdp, &binds) {
            // All or nothing: the maps go back to the running config.
            let old: Vec<_> = current.listeners.iter().map(|l| l.bind).collect();
            if let Err(restore) = dp.configure(&current.xdp, &old) {
                error!(error = %restore, "cannot restore the XDP maps of the running config");
            }
            return Err(e.into());
        }
    }
    // Nothing can refuse the reload past this point.
    next.commit();
    for (ctx, l) in ctxs.iter().zip(&new.listeners) {
        ctx.swap(next.clone(), l, &new);
    }
    Ok((new, next))
}

/// Publishes what XDP admission needs: per listener, whether it can take another connection
/// (global maxconn not reached, and some backend behind it has a server with room or queue
/// room); and the heartbeat.
fn publish_capacity(
    dp: &mut Dataplane,
    actives: &[Arc<server::Active>],
    ctxs: &[Arc<ListenerCtx>],
    listener_maxconn: &[Option<u32>],
    maxconn: u32,
) -> Result<(), floodgate::xdp::dataplane::DataplaneError> {
    let total: u32 = actives.iter().map(|a| a.get()).sum();
    let loads: Vec<ListenerLoad> = ctxs
        .iter()
        .enumerate()
        .map(|(i, ctx)| {
            let behind = ctx.backends_behind();
            // A listener with no backend only answers 404: nothing behind it can fill up.
            let queue_room = behind
                .iter()
                .map(|p| p.load().queue_room())
                .max()
                .unwrap_or(u32::MAX);
            // The binding limit: the listener's own when it is reached, else the global one.
            let own = listener_maxconn.get(i).copied().flatten();
            let mine = actives.get(i).map_or(0, |a| a.get());
            let (active, maxconn) = match own {
                Some(m) if mine >= m => (mine, m),
                _ => (total, maxconn),
            };
            ListenerLoad {
                id: u32::try_from(i).unwrap_or(u32::MAX),
                active,
                maxconn,
                queue_room,
            }
        })
        .collect();
    dp.publish(&loads)
}
