//! Listeners: bind, accept under the global and per-listener connection limits, serve HTTP/1.1
//! and HTTP/2 (prior knowledge) on each connection, and drain on shutdown.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, watch},
};
use tracing::{debug, info, warn};

use crate::config::{self, Timeouts};
use crate::proxy::{
    generation::{Carry, ListenerCtx},
    h1,
    listener::{lazy, passthrough},
    prefixed::Prefixed,
    session::{Conn, handle},
};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds with the configured backlog; SO_REUSEADDR so a restart is not refused by TIME_WAIT.
pub fn bind(cfg: &config::Listener, reuseport: bool) -> Result<std::net::TcpListener, ListenError> {
    let err = |source| ListenError::Bind {
        addr: cfg.bind,
        source,
    };
    let sock = if cfg.bind.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    // Linux copies TCP_NODELAY to every accepted socket: set once here instead of one
    // setsockopt per connection (a syscall in every TLS handshake's budget).
    sock.set_nodelay(true).map_err(err)?;
    // One socket per worker thread: the kernel spreads connections over them, and each worker
    // accepts on its own without contention.
    if reuseport {
        sock.set_reuseport(true).map_err(err)?;
    }
    sock.bind(cfg.bind).map_err(err)?;
    sock.listen(cfg.backlog)
        .map_err(err)?
        .into_std()
        .map_err(err)
}

/// Connections open on one listener, read by the capacity publisher.
#[derive(Debug, Default)]
pub struct Active(AtomicU32);

/// Connections accepted since start, every listener and worker: XDP's admitted SYNs that never
/// become one are how `xdp/pressure.rs` sees a spoofed flood.
pub static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Active {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

struct ActiveGuard(Arc<Active>);

impl ActiveGuard {
    fn new(a: &Arc<Active>) -> Self {
        a.0.fetch_add(1, Ordering::Relaxed);
        Self(a.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Serve {
    /// Made into a tokio listener on the worker's own runtime.
    pub listener: std::net::TcpListener,
    pub ctx: Arc<ListenerCtx>,
    /// Global maxconn: a connection is accepted only once it holds a permit, so past the limit
    /// new connections wait in the kernel backlog, as with HAProxy.
    pub maxconn: Arc<Semaphore>,
    /// `listeners[].maxconn`, shared by every worker's socket of this listener.
    pub listener_maxconn: Option<Arc<Semaphore>>,
    pub active: Arc<Active>,
    pub timeouts: Timeouts,
    pub limits: crate::config::Limits,
    pub http2: crate::config::Http2,
    /// HTTP/1.1 served by `proxy::h1` (else by hyper).
    pub http1_engine: bool,
    /// Peers of accepted connections, for the XDP verified-source table (None without XDP).
    pub verified: Option<tokio::sync::mpsc::Sender<std::net::IpAddr>>,
    /// TLS termination, for TLS listeners.
    pub tls: Option<Arc<crate::tls::Acceptor>>,
    /// This worker's socket of this listener in the workers' loads: each connection counts in
    /// its worker's load while it is open (what `global.worker-balance: load` balances).
    pub load: super::balance::Seat,
}

/// What serving a connection as HTTP takes besides the connection, for `serve_carried`.
struct Http {
    stop: watch::Receiver<bool>,
    builder: auto::Builder<TokioExecutor>,
    ctx: Arc<ListenerCtx>,
    conn: Arc<Conn>,
    limits: crate::proxy::timeout::Limits,
    counters: Option<crate::metrics::TimeoutCounters>,
    /// `Some` when `proxy::h1` serves HTTP/1.1 (not for a TLS connection that chose `h2`).
    h1: Option<h1::Limits>,
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection, plain or TLS, under the client-side
/// timeouts (`Timed`) until it ends, the drain (`stop`) closes it, or, in HTTP/2, the client
/// cancels more streams than `global.http2.max-resets` allows (rapid reset): then it gets
/// GOAWAY, counted as `http2_rapid_reset`.
async fn serve_http<I>(
    io: I,
    stop: watch::Receiver<bool>,
    builder: &auto::Builder<TokioExecutor>,
    ctx: Arc<ListenerCtx>,
    conn: Arc<Conn>,
    (limits, counters): (
        crate::proxy::timeout::Limits,
        Option<crate::metrics::TimeoutCounters>,
    ),
    h1: Option<h1::Limits>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let rapid_reset = counters.as_ref().map(|c| c.rapid_reset.clone());
    let io = crate::proxy::timeout::Timed::new(io, conn.inflight.clone(), limits, counters);
    // hyper's connection state is boxed, so a connection the engine serves does not carry
    // its size: every connection's task is allocated (and moved into place at spawn, a copy
    // of its whole size) at the size of its largest state.
    let Some(h1) = h1 else {
        return Box::pin(serve_hyper(io, stop, builder, ctx, conn, rapid_reset)).await;
    };
    match h1::serve(io, &stop, &ctx, &conn, h1).await? {
        h1::Ended::Closed => Ok(()),
        h1::Ended::Hyper { io, read } => {
            let io = Prefixed::new(read.to_vec(), io);
            Box::pin(serve_hyper(io, stop, builder, ctx, conn, rapid_reset)).await
        }
    }
}

/// hyper serving the connection: HTTP/2, and HTTP/1.1 where the engine is off or left it.
async fn serve_hyper<I>(
    io: I,
    mut stop: watch::Receiver<bool>,
    builder: &auto::Builder<TokioExecutor>,
    ctx: Arc<ListenerCtx>,
    conn: Arc<Conn>,
    rapid_reset: Option<prometheus::IntCounter>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let io = TokioIo::new(io);
    let resets = Arc::new(Resets::new(ctx.h2_max_resets));
    let r = resets.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // Only HTTP/2 streams: an HTTP/1.1 request is only ever abandoned with its connection.
        let mut watch = Cancelled((req.version() == http::Version::HTTP_2).then(|| r.clone()));
        let answer = handle(ctx.clone(), conn.clone(), req);
        async move {
            let resp = answer.await;
            watch.answered();
            resp
        }
    });
    let served = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(served);
    let (mut draining, mut cut) = (false, false);
    loop {
        tokio::select! {
            r = served.as_mut() => {
                // h2's own guard (streams reset before hyper took them) ends the connection
                // with GOAWAY ENHANCE_YOUR_CALM: the same attack, counted the same.
                if !cut
                    && let Err(e) = &r
                    && calmed(e.as_ref())
                    && let Some(c) = &rapid_reset
                {
                    c.inc();
                }
                return r;
            }
            changed = stop.changed(), if !draining => {
                if changed.is_err() || *stop.borrow() {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            () = resets.over.notified(), if !cut => {
                cut = true;
                if let Some(c) = &rapid_reset {
                    c.inc();
                }
                debug!(%peer, "too many HTTP/2 streams reset: GOAWAY");
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Whether `e` is h2 telling the client to calm down (GOAWAY ENHANCE_YOUR_CALM).
fn calmed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = err.source();
    }
    false
}

/// Streams a client cancelled (reset before their answer was sent) in the current 10 s window.
struct Resets {
    budget: u32,
    window: std::sync::Mutex<(std::time::Instant, u32)>,
    over: tokio::sync::Notify,
}

/// The window over which `global.http2.max-resets` counts.
const RESET_WINDOW: Duration = Duration::from_secs(10);

impl Resets {
    fn new(budget: u32) -> Self {
        Self {
            budget,
            window: std::sync::Mutex::new((std::time::Instant::now(), 0)),
            over: tokio::sync::Notify::new(),
        }
    }

    fn reset(&self) {
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.0.elapsed() > RESET_WINDOW {
            *w = (std::time::Instant::now(), 0);
        }
        w.1 = w.1.saturating_add(1);
        if w.1 > self.budget {
            self.over.notify_one();
        }
    }
}

/// Counts a stream whose answer was dropped before it completed: hyper drops it when the
/// client resets the stream.
struct Cancelled(Option<Arc<Resets>>);

impl Cancelled {
    fn answered(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.reset();
        }
    }
}

/// Whether the client chose HTTP/2 by ALPN: hyper serves it.
fn chose_h2<S>(stream: &tokio_rustls::server::TlsStream<S>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// The TLS handshake under `handshake-timeout`, counted by result, version and cipher; `None`
/// when it failed (the connection is dropped).
async fn handshake<S>(
    tls: &crate::tls::Acceptor,
    stream: S,
    ctx: &ListenerCtx,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = std::time::Instant::now();
    let shaken = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await;
    let record = |result, version, cipher, took| {
        if let Some(m) = &ctx.metrics {
            m.tls_handshake(&ctx.name, result, version, cipher, took);
        }
    };
    match shaken {
        Ok(Ok(stream)) => {
            let conn = &stream.get_ref().1;
            record(
                "ok",
                tls_version(conn.protocol_version()),
                conn.negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or("unknown"),
                Some(started.elapsed()),
            );
            Some(stream)
        }
        Ok(Err(e)) => {
            record("failed", "", "", None);
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            record("timeout", "", "", None);
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        _ => "other",
    }
}

/// Counts a carried connection that ended, and writes its access log line.
fn count_carried(
    ctx: &ListenerCtx,
    carry: &Carry,
    backend: &crate::proxy::upstream::backend::Backend,
    (client, sni): (SocketAddr, Option<&str>),
    started: std::time::Instant,
    carried: &crate::proxy::listener::passthrough::Carried,
) {
    let pool = &backend.pool;
    let result = carried.outcome.label();
    if let Some(m) = &ctx.metrics {
        m.carried(&ctx.name, &pool.name, result);
        m.carried_bytes(
            &ctx.name,
            &pool.name,
            carried.from_client,
            carried.to_client,
        );
    }
    if let Some(a) = &carry.access {
        a.carried(&crate::access::CarriedLine {
            listener: &ctx.name,
            client: crate::access::Client {
                ip: client.ip(),
                port: Some(client.port()),
            },
            host: sni,
            backend: &pool.name,
            server: carried.server,
            result,
            duration: started.elapsed(),
            bytes_in: carried.from_client,
            bytes_out: carried.to_client,
        });
    }
}

/// A connection of a listener that carries some connections as bytes (`mode: tcp`,
/// `passthrough`): carried to its backend, or, for a passthrough listener's other names,
/// terminated and served as HTTP.
async fn serve_carried(
    mut stream: TcpStream,
    tls: Option<Arc<crate::tls::Acceptor>>,
    carry: Carry,
    (peer, client, destination): (SocketAddr, SocketAddr, Option<SocketAddr>),
    http: Http,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Http {
        stop,
        builder,
        ctx,
        conn,
        limits,
        counters,
        h1,
    } = http;
    // The client's address and the one it connected to, for `send-proxy`.
    let ends = match destination.or_else(|| stream.local_addr().ok()) {
        Some(d) => (client, d),
        None => return Ok(()),
    };
    let started = std::time::Instant::now();
    if let Some(backend) = &carry.tcp {
        let carried = match tls {
            None => passthrough::carry(backend, stream, &[], ends).await,
            Some(tls) => match handshake(&tls, stream, &ctx, peer).await {
                Some(s) => passthrough::carry(backend, s, &[], ends).await,
                None => return Ok(()),
            },
        };
        count_carried(&ctx, &carry, backend, (client, None), started, &carried);
        return Ok(());
    }
    let Some(pass) = carry.passthrough.clone() else {
        return Ok(());
    };
    let wait = tls
        .as_ref()
        .map_or(limits.http_request, |t| t.handshake_timeout);
    let (hello, sni) = match passthrough::read_hello(&mut stream, wait).await {
        Ok(h) => h,
        Err(e) => {
            debug!(%peer, error = %e, "no ClientHello");
            if let Some(m) = &ctx.metrics {
                m.tls_handshake(&ctx.name, e.label(), "", "", None);
            }
            return Ok(());
        }
    };
    if let Some(backend) = sni.as_deref().and_then(|s| pass.backend_for(s)) {
        let carried = passthrough::carry(backend, stream, &hello, ends).await;
        let who = (client, sni.as_deref());
        count_carried(&ctx, &carry, backend, who, started, &carried);
        return Ok(());
    }
    // Another name: terminated here, or closed on a listener without certificates of its own.
    let Some(tls) = tls else {
        if let Some(m) = &ctx.metrics {
            m.carried(&ctx.name, "", "unknown_host");
        }
        debug!(%peer, sni = ?sni, "no passthrough host for this name");
        return Ok(());
    };
    let stream = Prefixed::new(hello, stream);
    match handshake(&tls, stream, &ctx, peer).await {
        Some(stream) => {
            let h1 = h1.filter(|_| !chose_h2(&stream));
            serve_http(stream, stop, &builder, ctx, conn, (limits, counters), h1).await
        }
        None => Ok(()),
    }
}

/// The connection's client: the peer, or the client its PROXY protocol header names when
/// `proxy_protocol` expects one from the peer (read within `timeout`, HAProxy's `timeout
/// http-request` being the budget for a connection's first bytes), with the address that
/// client connected to. `None` when the header is missing or bad: the connection is closed,
/// as HAProxy's `accept-proxy` does.
async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    ctx: &ListenerCtx,
    proxy_protocol: Option<&config::ProxyProtocol>,
    timeout: Duration,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let expected = proxy_protocol.is_some_and(|p| p.expected_from(peer.ip()));
    if !expected {
        return Some((peer, None));
    }
    let read = crate::proxy::listener::proxyproto::read_header(stream, timeout).await;
    let count = |result| {
        if let Some(m) = &ctx.metrics {
            m.proxy_header(&ctx.name, result);
        }
    };
    match read {
        Ok(crate::proxy::listener::proxyproto::Header::Proxied {
            source,
            destination,
        }) => {
            count("proxied");
            Some((source, Some(destination)))
        }
        Ok(crate::proxy::listener::proxyproto::Header::Local) => {
            count("local");
            Some((peer, None))
        }
        Err(e) => {
            count(e.label());
            debug!(%peer, error = %e, "closing a connection without a usable PROXY protocol header");
            None
        }
    }
}

/// Accepts until `shutdown` flips, then waits up to `grace` for open connections to finish.
pub async fn serve(s: Serve, mut shutdown: watch::Receiver<bool>, grace: Duration) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // timeout.rs answers 408 at http-request; hyper's own timer is the backstop.
        .header_read_timeout(s.timeouts.http_request.0 + Duration::from_secs(1))
        .keep_alive(true)
        // hyper answers 431 past either limit.
        .max_headers(s.limits.max_header_count)
        .max_buf_size(s.limits.max_header_bytes);
    let h2 = &s.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(None)
        .max_header_list_size(u32::try_from(s.limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_send_buf_size(usize::try_from(h2.max_send_buffer).unwrap_or(usize::MAX))
        // h2's own guard for streams reset before hyper took them (its default, said here);
        // `Resets` counts those reset after.
        .max_pending_accept_reset_streams(20);
    let addr = s.listener.local_addr().ok();
    let counters = s.ctx.timeout_counters();
    let listener = match lazy::listener(s.listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(listener = ?addr, error = %e, "cannot register the listener with this worker");
            return;
        }
    };
    loop {
        // A connection is waiting before a `maxconn` place is taken for it: every worker has a
        // socket of its own (SO_REUSEPORT), and one that held a place while idle would keep it
        // from a connection waiting at another's (with `maxconn: 1` and two workers, forever).
        let mut ready = tokio::select! {
            r = lazy::pending(&listener) => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "waiting for connections failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Past the limit, connections wait in the kernel's backlog, as with HAProxy.
        let permit = tokio::select! {
            p = s.maxconn.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        // The listener's own maxconn, if any: held with the global one, before accept.
        let listener_permit = match &s.listener_maxconn {
            None => None,
            Some(sem) => tokio::select! {
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            },
        };
        let (stream, peer) = match lazy::try_accept(&mut ready) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // The queue is empty (a client that gave up while the places were taken, or the
            // last of a batch): what the program counted as waiting here has been accepted or
            // will never be.
            None => {
                s.load.drained();
                continue;
            }
        };
        drop(ready);
        ACCEPTED.fetch_add(1, Ordering::Relaxed);
        if let Some(v) = &s.verified {
            // Full channel: the source is already queued or will be on its next connection.
            let _ = v.try_send(peer.ip());
        }
        let guard = (ActiveGuard::new(&s.active), s.load.accepted());
        let ctx = s.ctx.clone();
        let limits = crate::proxy::timeout::Limits {
            keep_alive: s.timeouts.http_keep_alive.0,
            client: s.timeouts.client.0,
            http_request: s.timeouts.http_request.0,
        };
        let (stop, builder, tls) = (shutdown.clone(), builder.clone(), s.tls.clone());
        let h1 = s.http1_engine.then_some(h1::Limits {
            max_headers: s.limits.max_header_count,
            max_head_bytes: s.limits.max_header_bytes,
        });
        let counters = counters.clone();
        // Boxed before the spawn: tokio moves a task's future whole into its cell and writes
        // its whole stage again when it completes (six copies of the connection's full state,
        // about 3,800 instructions of `memcpy` a connection); a box is one copy and one
        // allocation.
        tokio::spawn(Box::pin(async move {
            // Held here until the connection is made a `Conn`, which then holds them.
            let held = (permit, listener_permit, guard);
            let accepting = ctx.on_accept();
            let pp = accepting.proxy_protocol.as_deref();
            // A PROXY header is peeked, and a carried connection copied, on tokio's stream;
            // HTTP, plain or TLS, starts on the socket itself (`lazy`).
            let (stream, client, destination) =
                if accepting.carry.is_none() && !pp.is_some_and(|p| p.expected_from(peer.ip())) {
                    (lazy::LazyStream::new(stream), peer, None)
                } else {
                    let Ok(mut stream) = TcpStream::from_std(stream) else {
                        return;
                    };
                    let Some((client, destination)) =
                        client_of(&mut stream, peer, &ctx, pp, limits.http_request).await
                    else {
                        return;
                    };
                    (lazy::LazyStream::from(stream), client, destination)
                };
            let Ok(per_source) = accepting.admit(client.ip()) else {
                if let Some(m) = &ctx.metrics {
                    m.rejected(&ctx.name, "per_source");
                }
                debug!(%client, "closing a connection over max-connections-per-source");
                return;
            };
            let conn = Conn::new(
                client,
                destination.map(|d| d.port()),
                Arc::new(crate::proxy::timeout::InFlight::default()),
                Box::new((held, per_source)),
            );
            let timed = (limits, counters);
            let served = match (tls, accepting.carry) {
                (None, None) => serve_http(stream, stop, &builder, ctx, conn, timed, h1).await,
                // Boxed, as the carried path below: the TLS state would otherwise size
                // every connection's task, plain ones included.
                (Some(tls), None) => {
                    Box::pin(async move {
                        match handshake(&tls, stream, &ctx, peer).await {
                            Some(stream) => {
                                let h1 = h1.filter(|_| !chose_h2(&stream));
                                serve_http(stream, stop, &builder, ctx, conn, timed, h1).await
                            }
                            None => Ok(()),
                        }
                    })
                    .await
                }
                (tls, Some(carry)) => {
                    // Boxed: this path's state (the ClientHello buffer above all) would
                    // otherwise size every connection's task, HTTP ones included.
                    let Ok(stream) = stream.into_registered() else {
                        return;
                    };
                    let addrs = (peer, client, destination);
                    let (limits, counters) = timed;
                    let http = Http {
                        stop,
                        builder,
                        ctx,
                        conn,
                        limits,
                        counters,
                        h1,
                    };
                    Box::pin(serve_carried(stream, tls, carry, addrs, http)).await
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        }));
    }
    drop(listener);
    info!(listener = ?addr, "stopped accepting; draining");
    // Every connection, HTTP or carried, is counted in `active`; HTTP ones got GOAWAY or
    // `Connection: close` from the stop signal and end once their requests are answered.
    let drained = async {
        while s.active.get() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = drained => info!(listener = ?addr, "drained"),
        () = tokio::time::sleep(grace) => warn!(listener = ?addr, "drain grace period over; closing remaining connections"),
    }
}

/// A listener as `/metrics` reads it at scrape time (`admin::exposition::ScrapeSource`).
pub struct Scrape {
    pub ctx: Arc<ListenerCtx>,
    pub active: Arc<Active>,
}

impl crate::admin::exposition::ScrapeSource for Scrape {
    fn active_connections(&self) -> u32 {
        self.active.get()
    }

    fn backends(&self) -> Vec<crate::admin::exposition::BackendGauges> {
        let routing = self.ctx.routing();
        routing
            .backends()
            .iter()
            .map(|b| {
                let p = &b.pool;
                let load = p.load();
                crate::admin::exposition::BackendGauges {
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
                        .map(|s| crate::admin::exposition::ServerGauges {
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
    use super::*;

    /// `serve` no longer sets TCP_NODELAY per connection: this kernel must hand it down.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let cfg: config::Listener =
            yaml_serde::from_str("{name: t, bind: '127.0.0.1:0'}").expect("a minimal listener");
        let listener = tokio::net::TcpListener::from_std(bind(&cfg, false).expect("bind"))
            .expect("register the listener");
        let addr = listener.local_addr().expect("bound address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
    }
}
