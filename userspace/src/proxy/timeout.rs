//! Client-side timeouts with HAProxy's meaning, enforced on the connection's IO:
//! - `timeout http-request`: how long a request header may take to arrive once its first byte
//!   has; then an HTTP/1.1 client gets 408 and the connection closes;
//! - `timeout http-keep-alive`: how long a connection with no request in flight may stay silent
//!   before the next request starts; then it closes without a response;
//! - `timeout client`: how long the client may stay silent while a request is in flight.
//!
//! A request is in flight from when hyper hands it over until its response body has been sent,
//! so a slowly streamed response is never cut by the keep-alive timer.
//!
//! Once a connection is upgraded (WebSocket), `timeout tunnel` replaces them all: [`splice`]
//! closes it when no byte has passed either way for that long.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// Requests in flight on one connection, and how many it has served.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicU32,
    served: AtomicU32,
    /// Upgraded: `timeout tunnel`, enforced by [`splice`], replaces the client timeouts.
    tunneled: std::sync::atomic::AtomicBool,
    /// The connection's task, woken when the last request in flight ends: a read polled while
    /// a response was still going out set its timer to `timeout client`, and without a wake
    /// nothing would move it to the keep-alive (the connection then stayed idle 50 s, not 1).
    idle: atomic_waker::AtomicWaker,
}

impl InFlight {
    /// Counts a request until the guard (held by its response body) drops.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.now.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    fn in_flight(&self) -> bool {
        self.now.load(Ordering::Relaxed) > 0
    }

    fn served(&self) -> u32 {
        self.served.load(Ordering::Relaxed)
    }
}

pub struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    /// The connection became a tunnel: the client timeouts no longer apply to it.
    pub fn tunnel(&self) {
        self.0.tunneled.store(true, Ordering::Relaxed);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.now.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.wake();
        }
    }
}

/// The timeouts of one connection, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keep_alive: Duration,
    pub client: Duration,
    pub http_request: Duration,
}

/// Far enough to never fire: a tunnel's own timeout is `splice`'s.
const TUNNELED: Duration = Duration::from_secs(100 * 365 * 86_400);

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 20\r\nconnection: close\r\n\r\n408 Request Timeout\n";

/// Which timeout ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    HttpRequest,
    /// No byte of a first request within `timeout http-request`: closed without a 408, as
    /// the client may be a probe or a preconnect, and not counted (as before the HTTP/1.1
    /// engine, when hyper's own header timer closed these).
    FirstRequest,
    KeepAlive,
    Client,
}

/// A connection's IO, closed with `TimedOut` when a timeout above passes.
pub struct Timed<T> {
    io: T,
    inflight: Arc<InFlight>,
    limits: Limits,
    counters: Option<crate::metrics::TimeoutCounters>,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
    /// A request header is arriving: since when, and how many requests had been served then.
    header: Option<(Instant, u32)>,
    /// Whether the connection speaks HTTP/2 (its preface), known from its first bytes.
    h2: Option<bool>,
    /// Since when a write has been waiting for the client to read: a client that stops reading
    /// is cut after `timeout client`, as one that stops writing is.
    write_stalled: Option<Instant>,
    /// HTTP/2: since when the connection has had no request start or end, and the (served, in
    /// flight) it had then. Only requests count as activity, so PING and empty frames do not
    /// keep an idle connection open.
    h2_idle: (Instant, u32, bool),
}

impl<T> Timed<T> {
    pub fn new(
        io: T,
        inflight: Arc<InFlight>,
        limits: Limits,
        counters: Option<crate::metrics::TimeoutCounters>,
    ) -> Self {
        let now = Instant::now();
        Self {
            io,
            inflight,
            limits,
            counters,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + limits.client)),
            header: None,
            h2: None,
            write_stalled: None,
            h2_idle: (now, 0, false),
        }
    }

    fn on_bytes(&mut self, first: &[u8]) {
        let now = Instant::now();
        self.last = now;
        if self.h2.is_none() {
            self.h2 = Some(first.starts_with(b"PRI "));
        }
        if self.header.is_none() && !self.inflight.in_flight() {
            self.header = Some((now, self.inflight.served()));
        }
    }

    /// The deadline that applies now, and which timeout it is.
    fn deadline(&mut self) -> (Instant, Expired) {
        if let Some((_, served)) = self.header
            && (self.inflight.served() != served || self.inflight.in_flight())
        {
            // hyper handed the request over: its header is complete.
            self.header = None;
        }
        let l = self.limits;
        if self.inflight.tunneled.load(Ordering::Relaxed) {
            // `splice` watches a tunnel's silence, both ways.
            return (self.last + TUNNELED, Expired::Client);
        }
        let (served, in_flight) = (self.inflight.served(), self.inflight.in_flight());
        let due = match self.header {
            Some((start, _)) if self.h2 != Some(true) => {
                (start + l.http_request, Expired::HttpRequest)
            }
            _ if self.h2 == Some(true) && !in_flight => {
                if (self.h2_idle.1, self.h2_idle.2) != (served, in_flight) {
                    self.h2_idle = (Instant::now(), served, in_flight);
                }
                // Before the first request, as long as a request header may take.
                let wait = if served == 0 {
                    l.http_request
                } else {
                    l.keep_alive
                };
                (self.h2_idle.0 + wait, Expired::KeepAlive)
            }
            // Before the first request's first byte: as long as a request header may take
            // (HAProxy's `timeout http-request` runs from the accept), then a silent close,
            // as hyper's header timer closed it. After a request, the keep-alive.
            _ if !in_flight && served == 0 => (self.last + l.http_request, Expired::FirstRequest),
            _ if !in_flight => (self.last + l.keep_alive, Expired::KeepAlive),
            _ => (self.last + l.client, Expired::Client),
        };
        if self.h2 == Some(true) && in_flight {
            self.h2_idle = (Instant::now(), served, in_flight);
        }
        match self.write_stalled {
            Some(since) if since + l.client < due.0 => (since + l.client, Expired::Client),
            _ => due,
        }
    }

    /// A write's outcome: progress clears the stall, waiting starts it; a stall past `timeout
    /// client` fails the write.
    fn on_write<R>(
        &mut self,
        r: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
        wrote: bool,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(Ok(v)) => {
                self.write_stalled = None;
                if wrote {
                    // A response going out is activity: the keep-alive wait starts after it.
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(v))
            }
            Poll::Pending => {
                if self.write_stalled.is_none() {
                    self.write_stalled = Some(Instant::now());
                }
                match self.expired(cx) {
                    Some(_) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "timeout client: the client stopped reading",
                    ))),
                    None => Poll::Pending,
                }
            }
            other => other,
        }
    }

    /// The timeout that has passed, if any; counted once here.
    ///
    /// The timer is only ever moved earlier here. Every request pushes the deadline later
    /// (`last` moves), and moving a tokio timer is a removal and an insertion in its wheel;
    /// instead a timer left at an earlier deadline fires, finds the deadline not reached and is
    /// moved then: about once per keep-alive period per connection, not once per request.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if self.inflight.in_flight() {
            // The deadline below may be `timeout client`: be polled again when that ends.
            self.inflight.idle.register(cx.waker());
        }
        let (deadline, which) = self.deadline();
        if deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        if Instant::now() < deadline {
            self.sleep.as_mut().reset(deadline);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        if let Some(c) = &self.counters {
            match which {
                Expired::HttpRequest => c.http_request.inc(),
                Expired::FirstRequest => {}
                Expired::KeepAlive => c.keep_alive.inc(),
                Expired::Client => c.client.inc(),
            }
        }
        Some(which)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let filled = buf.filled();
                if filled.len() > before {
                    let head: [u8; 4] =
                        std::array::from_fn(|i| filled.get(before + i).copied().unwrap_or(0));
                    self.on_bytes(&head);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.expired(cx) {
                Some(Expired::HttpRequest) => {
                    // Best effort: a client stalled mid-header is told why, as with HAProxy.
                    let _ = Pin::new(&mut self.io).poll_write(cx, REQUEST_TIMEOUT);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "timeout http-request",
                    )))
                }
                Some(Expired::KeepAlive) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timeout http-keep-alive",
                ))),
                Some(Expired::FirstRequest) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timeout http-request: no request",
                ))),
                Some(Expired::Client) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timeout client",
                ))),
                None => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        let wrote = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.on_write(r, cx, wrote)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let wrote = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.on_write(r, cx, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS writes its records out on flush: a flush waiting on the client is a stall too.
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.on_write(r, cx, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body under `timeout server` (HAProxy's server-side inactivity): when the server
/// sends nothing for `idle` while the body streams, the body fails, which closes the client's
/// connection (the status has been sent), and the failure is counted. The timer is made only
/// when the body first has to wait: a body that came with its head, most of them, costs none.
pub struct ServerIdle<B> {
    body: B,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Data came since the timer was last set.
    progressed: bool,
    expired: Option<prometheus::IntCounter>,
}

impl<B> ServerIdle<B> {
    pub fn new(body: B, idle: Duration, expired: Option<prometheus::IntCounter>) -> Self {
        Self {
            body,
            idle,
            sleep: None,
            progressed: false,
            expired,
        }
    }
}

impl<B> hyper::body::Body for ServerIdle<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<super::body::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            self.progressed = true;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = self.idle;
        let progressed = std::mem::take(&mut self.progressed);
        let sleep = match &mut self.sleep {
            Some(s) => {
                if progressed {
                    s.as_mut().reset(Instant::now() + idle);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(idle))),
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let Some(c) = &self.expired {
            c.inc();
        }
        Poll::Ready(Some(Err(
            "timeout server: the server fell silent mid-body".into()
        )))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How a [`splice`] ended, and the bytes read from each side (each one was written to the
/// other, but for what a failed write lost).
#[derive(Debug)]
pub struct Spliced {
    /// `timeout tunnel` passed with no byte either way.
    pub timed_out: bool,
    /// A side failed (a reset, a TLS error); `None` when one closed or the timeout passed.
    pub error: Option<io::Error>,
    pub from_a: u64,
    pub from_b: u64,
}

/// Copies both ways between the two sides of an upgraded connection until either closes,
/// or until no byte has passed either way for `idle` (`timeout tunnel`).
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let base = Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let (mut a, mut b) = (
        Active {
            io: a,
            base,
            last: &last,
            read: 0,
        },
        Active {
            io: b,
            base,
            last: &last,
            read: 0,
        },
    );
    let watch = async {
        loop {
            let Some(deadline) = base
                .checked_add(Duration::from_millis(last.load(Ordering::Relaxed)))
                .and_then(|t| t.checked_add(idle))
            else {
                // Too far to represent: never.
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let (timed_out, error) = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => (false, r.err()),
        () = watch => (true, None),
    };
    Spliced {
        timed_out,
        error,
        from_a: a.read,
        from_b: b.read,
    }
}

/// One side of a tunnel, noting when bytes last passed and how many were read from it.
struct Active<'a, T> {
    io: &'a mut T,
    base: Instant,
    /// Milliseconds since `base`.
    last: &'a std::sync::atomic::AtomicU64,
    read: u64,
}

impl<T> Active<'_, T> {
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read += n as u64;
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const LIMITS: Limits = Limits {
        keep_alive: Duration::from_secs(1),
        client: Duration::from_secs(50),
        http_request: Duration::from_secs(10),
    };

    /// A body whose server sends a frame after each of `gaps`, then falls silent for good.
    struct Trickle {
        gaps: std::collections::VecDeque<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl hyper::body::Body for Trickle {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
            let Some(gap) = self.gaps.front().copied() else {
                return Poll::Pending;
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            self.gaps.pop_front();
            Poll::Ready(Some(Ok(hyper::body::Frame::data(
                bytes::Bytes::from_static(b"x"),
            ))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_server_bounds_the_servers_silence_mid_body() {
        use http_body_util::BodyExt as _;
        let expired = prometheus::IntCounter::new("t", "t").unwrap();
        let gaps = [0, 900, 900, 900].map(Duration::from_millis).into();
        let mut body = ServerIdle::new(
            Trickle { gaps, sleep: None },
            Duration::from_secs(1),
            Some(expired.clone()),
        );
        let start = Instant::now();
        // Gaps under the timeout add up past it: the timer restarts with each frame.
        for _ in 0..4 {
            let f = body.frame().await.unwrap().unwrap();
            assert!(f.is_data());
        }
        assert_eq!(start.elapsed(), Duration::from_millis(2700));
        assert_eq!(expired.get(), 0);
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("timeout server"), "{e}");
        assert_eq!(start.elapsed(), Duration::from_millis(3700));
        assert_eq!(expired.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_applies_between_requests_and_client_timeout_while_in_flight() {
        let (a, mut b) = tokio::io::duplex(256);
        let inflight = Arc::new(InFlight::default());
        let mut t = Timed::new(a, inflight.clone(), LIMITS, None);
        let mut buf = [0u8; 8];
        drop(inflight.start());
        // Between requests: the keep-alive timeout applies.
        let start = Instant::now();
        let e = t.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // A request in flight: the client timeout applies instead.
        let guard = inflight.start();
        b.write_all(b"x").await.unwrap();
        assert_eq!(t.read(&mut buf).await.unwrap(), 1);
        let start = Instant::now();
        let e = t.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(50));
        drop(guard);
    }

    /// A read polled while the response is still in flight gets `timeout client`; when the
    /// request ends afterwards, with nothing else to wake the connection, the keep-alive must
    /// apply from then, not the 50 s.
    #[tokio::test(start_paused = true)]
    async fn the_keep_alive_applies_when_a_request_ends_after_the_read_was_polled() {
        let (a, _b) = tokio::io::duplex(256);
        let inflight = Arc::new(InFlight::default());
        let mut t = Timed::new(a, inflight.clone(), LIMITS, None);
        let guard = inflight.start();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let start = Instant::now();
            let e = t.read(&mut buf).await.unwrap_err();
            (e.kind(), start.elapsed())
        });
        // The read is pending under the client timeout; the request ends 100 ms later.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(guard);
        let (kind, took) = reader.await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(
            took < Duration::from_secs(2),
            "closed by the keep-alive, not the client timeout: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_header_gets_408_after_http_request() {
        let (a, mut b) = tokio::io::duplex(256);
        let inflight = Arc::new(InFlight::default());
        let mut t = Timed::new(a, inflight, LIMITS, None);
        b.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(t.read(&mut buf).await.unwrap() > 0);
        let start = Instant::now();
        let e = t.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        let mut answer = vec![0u8; REQUEST_TIMEOUT.len()];
        b.read_exact(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408"));
    }
}
