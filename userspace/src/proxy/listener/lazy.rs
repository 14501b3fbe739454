//! Accepting without tokio, and a new connection's socket read and written directly until it
//! would block: only then is it registered with the worker's event loop.
//!
//! Why: tokio registers every accepted socket at once (`epoll_ctl ADD`, and `DEL` at close) and
//! then waits for the event loop to report it readable before the first read, even when the
//! request arrived with the handshake, as it almost always does. A client that sends one
//! request and closes (`Connection: close`, health checkers, many API clients) is served by a
//! read, a write and a close that never need the event loop: two syscalls and a turn of the
//! loop saved per connection, the gap `perf` showed to HAProxy (9 syscalls per new connection
//! to floodgate's 10, docs/benchmarks.md). A connection that must wait is registered at its
//! first `EAGAIN` and is then tokio's like any other.

use std::{
    io::{self, Write as _},
    mem::MaybeUninit,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{
        AsyncRead, AsyncWrite, Interest, ReadBuf,
        unix::{AsyncFd, AsyncFdReadyGuard},
    },
    net::TcpStream,
};

/// `listener` once a connection waits in its accept queue, not yet accepted: the caller takes
/// its `maxconn` places first, then [`try_accept`]s.
pub async fn pending(
    listener: &AsyncFd<std::net::TcpListener>,
) -> io::Result<AsyncFdReadyGuard<'_, std::net::TcpListener>> {
    listener.readable().await
}

/// Accepts one connection, its socket non-blocking and not registered with the event loop;
/// `None` when none was left (the readiness is then cleared, and [`pending`] waits again).
pub fn try_accept(
    ready: &mut AsyncFdReadyGuard<'_, std::net::TcpListener>,
) -> Option<io::Result<(std::net::TcpStream, SocketAddr)>> {
    ready
        .try_io(|l| {
            // accept4 with SOCK_NONBLOCK: no fcntl afterwards.
            let (socket, addr) = socket2::SockRef::from(l.get_ref())
                .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
            let peer = addr
                .as_socket()
                .ok_or_else(|| io::Error::other("an accepted connection without an IP peer"))?;
            Ok((std::net::TcpStream::from(socket), peer))
        })
        .ok()
}

/// The listener, registered for accepts only.
pub fn listener(l: std::net::TcpListener) -> io::Result<AsyncFd<std::net::TcpListener>> {
    l.set_nonblocking(true)?;
    // SAFETY: the `TcpListener` owns its fd, open and the same for as long as the `AsyncFd`
    // holds it; nothing else closes or replaces it.
    Ok(unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }?)
}

/// An accepted connection's socket.
pub struct LazyStream(State);

enum State {
    /// Not registered: read and written directly until a call would block.
    Raw(std::net::TcpStream),
    Registered(TcpStream),
    /// Registration failed; the socket is closed and every call fails.
    Failed,
}

impl LazyStream {
    pub fn new(s: std::net::TcpStream) -> Self {
        Self(State::Raw(s))
    }

    /// tokio's stream, registering the socket now if it is not yet.
    pub fn into_registered(self) -> io::Result<TcpStream> {
        match self.0 {
            State::Raw(s) => TcpStream::from_std(s),
            State::Registered(s) => Ok(s),
            State::Failed => Err(failed()),
        }
    }

    /// Registers a raw socket: a call would block, so the event loop must say when it can go on.
    fn register(&mut self) -> io::Result<()> {
        if let State::Raw(s) = std::mem::replace(&mut self.0, State::Failed) {
            self.0 = State::Registered(TcpStream::from_std(s)?);
        }
        Ok(())
    }
}

impl From<TcpStream> for LazyStream {
    fn from(s: TcpStream) -> Self {
        Self(State::Registered(s))
    }
}

fn failed() -> io::Error {
    io::Error::other("the connection could not be registered with the event loop")
}

/// Runs `op` on the raw socket until it does not block; `None` once the socket is registered
/// (the caller then polls tokio's stream).
fn direct<T>(
    state: &mut LazyStream,
    mut op: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
) -> Option<io::Result<T>> {
    loop {
        let State::Raw(s) = &state.0 else {
            return None;
        };
        match op(s) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = state.register() {
                    return Some(Err(e));
                }
                return None;
            }
            r => return Some(r),
        }
    }
}

impl AsyncRead for LazyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let State::Raw(_) = this.0 {
            // SAFETY: `recv` only writes to the slice; the bytes it reports written are then
            // marked initialised, as tokio's own stream does.
            let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
            let read = direct(this, |s| socket2::SockRef::from(s).recv(unfilled));
            if let Some(r) = read {
                let n = r?;
                // SAFETY: `recv` wrote these `n` bytes.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
        }
        match &mut this.0 {
            State::Registered(s) => Pin::new(s).poll_read(cx, buf),
            State::Raw(_) | State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

impl AsyncWrite for LazyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // std's write on a TCP socket is send(2) with MSG_NOSIGNAL.
        if let Some(r) = direct(this, |mut s| s.write(buf)) {
            return Poll::Ready(r);
        }
        match &mut this.0 {
            State::Registered(s) => Pin::new(s).poll_write(cx, buf),
            State::Raw(_) | State::Failed => Poll::Ready(Err(failed())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(r) = direct(this, |mut s| s.write_vectored(bufs)) {
            return Poll::Ready(r);
        }
        match &mut this.0 {
            State::Registered(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            State::Raw(_) | State::Failed => Poll::Ready(Err(failed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            // Nothing is buffered above the socket.
            State::Raw(_) => Poll::Ready(Ok(())),
            State::Registered(s) => Pin::new(s).poll_flush(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            State::Raw(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn pair() -> (LazyStream, TcpStream) {
        let l = listener(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).expect("fd");
        let addr = l.get_ref().local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let mut ready = pending(&l).await.expect("pending");
        let (s, peer) = try_accept(&mut ready)
            .expect("a connection is pending")
            .expect("accept");
        assert_eq!(peer, client.local_addr().expect("addr"));
        (LazyStream::new(s), client)
    }

    fn registered(s: &LazyStream) -> bool {
        matches!(s.0, State::Registered(_))
    }

    #[tokio::test]
    async fn bytes_already_there_are_read_without_registering() {
        let (mut s, mut client) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        // Loopback delivers at once; wait until the bytes are in the socket.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut buf = Vec::with_capacity(64);
        s.read_buf(&mut buf).await.expect("read");
        assert_eq!(buf, b"GET / HTTP/1.1\r\n\r\n");
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        assert!(!registered(&s), "nothing had to wait");
        s.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn a_read_that_must_wait_registers_and_is_woken() {
        let (mut s, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            (s, buf)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(b"hello").await.expect("write");
        let (s, buf) = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(&buf, b"hello");
        assert!(registered(&s));
        assert!(s.into_registered().is_ok());
    }
}
