//! Client-side inactivity timeouts with HAProxy's meaning, enforced on the connection's IO:
//! - `timeout http-keep-alive`: how long a connection with no request in flight may stay silent
//!   before the next request starts (then it is closed without a response);
//! - `timeout client`: how long the client may stay silent while a request is in flight.
//!
//! (`timeout http-request`, the time to receive a whole request header, is hyper's header read
//! timer.) A request counts as in flight from its first header byte until its response body has
//! been sent, so a slowly streamed response is never cut by the keep-alive timer.

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

/// Requests in flight on one connection, and whether it has served one yet.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicU32,
    served: AtomicU32,
}

impl InFlight {
    /// Counts a request until the guard (held by its response body) drops.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.now.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// Between requests of a keep-alive connection (not before its first: there hyper's
    /// `timeout http-request` governs).
    fn between_requests(&self) -> bool {
        self.now.load(Ordering::Relaxed) == 0 && self.served.load(Ordering::Relaxed) > 0
    }
}

pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's IO, closed with `TimedOut` after too long a silence from the client.
pub struct Timed<T> {
    io: T,
    inflight: Arc<InFlight>,
    keep_alive: Duration,
    client: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<T> Timed<T> {
    pub fn new(io: T, inflight: Arc<InFlight>, keep_alive: Duration, client: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            inflight,
            keep_alive,
            client,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + client)),
        }
    }

    /// Whether the silence since the last byte exceeds the timeout that applies now.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = if self.inflight.between_requests() {
            self.keep_alive
        } else {
            self.client
        };
        let deadline = self.last + limit;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client inactivity timeout",
            ))),
            Poll::Pending => Poll::Pending,
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
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            // A response going out is activity: the keep-alive wait starts after it.
            self.last = Instant::now();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last = Instant::now();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keep_alive_applies_when_idle_and_client_timeout_while_in_flight() {
        let (a, mut b) = tokio::io::duplex(64);
        let inflight = Arc::new(InFlight::default());
        let mut t = Timed::new(
            a,
            inflight.clone(),
            Duration::from_secs(1),
            Duration::from_secs(50),
        );
        let mut buf = [0u8; 8];
        // Before the first request, the client timeout applies (hyper's header timer is shorter).
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
}
