//! Opening a connection to a server, for every upstream path (direct, hyper's pooled client,
//! HTTP/2, health checks): TCP within `timeout connect`, then the TLS handshake when the
//! backend has `tls` (HAProxy's server `ssl`), within the same timeout.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus::Histogram;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::proxy::error::ProxyError;
use crate::tls::ClientTls;

/// How a backend opens server connections, on every upstream path.
#[derive(Clone)]
pub struct Dial {
    /// `timeouts.connect`, for the TCP connect and the TLS handshake together.
    pub timeout: Duration,
    /// New connections' connect time, TLS handshake included (reused ones cost none).
    pub connect_time: Option<Histogram>,
    /// The backend's `tls`; `None` speaks in clear.
    pub tls: Option<Arc<ClientTls>>,
}

impl Dial {
    /// A new connection to `server` within `timeout connect`, its connect time observed.
    pub async fn connect(&self, server: SocketAddr) -> Result<ServerStream, ProxyError> {
        let start = Instant::now();
        let stream = match tokio::time::timeout(self.timeout, self.open(server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(reason)) => {
                return Err(ProxyError::Connect {
                    server: server.to_string(),
                    reason,
                });
            }
            Err(_) => {
                return Err(ProxyError::ConnectTimeout {
                    server: server.to_string(),
                });
            }
        };
        if let Some(h) = &self.connect_time {
            h.observe(start.elapsed().as_secs_f64());
        }
        Ok(stream)
    }

    async fn open(&self, server: SocketAddr) -> Result<ServerStream, String> {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        // Heads are written whole; Nagle would only hold them back.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(ServerStream::Tcp(tcp)),
            Some(tls) => match tls.handshake(tcp, server).await {
                Ok(s) => Ok(ServerStream::Tls(Box::new(s))),
                Err(e) => Err(format!("TLS handshake: {e}")),
            },
        }
    }
}

/// A connection to a server, in clear or in TLS.
pub enum ServerStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ServerStream {
    /// An idle connection is still usable while reading it would block: nothing has arrived,
    /// not even the server's FIN or close_notify. Over TLS, what the server may send unasked
    /// (TLS 1.3 session tickets) is taken in by rustls and does not count.
    pub fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            ServerStream::Tcp(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            ServerStream::Tls(s) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(s.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// Reads what is there into `buf`'s spare room (grown when short); 0 is the end.
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(chunk);
        }
        match self {
            // Straight into the spare capacity, no zeroing.
            ServerStream::Tcp(s) => loop {
                match s.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(s.poll_read_ready(cx))?;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            // rustls copies out of its own buffer: one chunk's room, zeroed (safe code only).
            ServerStream::Tls(s) => {
                let start = buf.len();
                buf.resize((start + chunk).min(buf.capacity()), 0);
                let mut rb = ReadBuf::new(&mut buf[start..]);
                let r = Pin::new(s.as_mut()).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                buf.truncate(start + n);
                ready!(r)?;
                Poll::Ready(Ok(n))
            }
        }
    }

    /// The server agreed to HTTP/2 by ALPN (always true in clear: prior knowledge).
    pub fn speaks_h2(&self) -> bool {
        match self {
            ServerStream::Tcp(_) => true,
            ServerStream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tcp(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// For hyper's pooled client (`backend.rs`).
impl Connection for ServerStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
