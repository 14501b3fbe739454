//! floodgate's own HTTP/1.1 server side (the engine), Pingora's answer to the same wall: hyper's
//! server alone, doing nothing, cost 0.87x HAProxy's CPU per request (docs/benchmarks.md), so
//! a proxy built on it could not be cheaper than HAProxy.
//!
//! One connection: the request head is parsed by `httparse` from a buffer the connection
//! keeps (`head.rs`); the request is built over the head's own bytes (no copy of the target or
//! the field values); its body, `Content-Length` or chunked (`chunked.rs`), is read from the
//! same buffer as the backend takes it (`body.rs`), with `100 Continue` sent when the body is
//! first asked for; the phases in `session.rs` run unchanged; the response goes out with its
//! head, and small bodies, in one write (`write.rs`). Requests on a connection are served in
//! order, so pipelined requests are answered in order.
//!
//! An upgrade (WebSocket) the backend accepts is answered 101 and the connection, with any
//! bytes read past the head, goes to the tunnel (`proxy::upgrade`).
//!
//! What the engine does not serve it hands over, at a request boundary with nothing owed to
//! the client, to hyper with the bytes it has read (`Ended::Hyper`): HTTP/1.0, transfer codings
//! other than `chunked` alone, upgrade requests with a body, CONNECT, and every head that is
//! malformed or too large, which hyper answers as it always has (400, 431). The client-side
//! timeouts are the connection's IO's (`timeout.rs`), the same under both.

pub mod body;
pub mod chunked;
#[cfg(any(test, feature = "fuzz"))]
pub mod differential;
pub mod head;
pub mod write;

use std::{io, sync::Arc};

use bytes::BytesMut;
use http::{Request, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::{oneshot, watch},
};
use tracing::debug;

use head::{BodyLength, Handoff};

use super::{
    generation::ListenerCtx,
    prefixed::Prefixed,
    session::{self, Conn},
    upgrade::FromEngine,
};

/// The interim answer to `Expect: 100-continue`, hyper's bytes.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Bytes asked of the socket at a time for request heads.
const READ: usize = 4 * 1024;
/// The response head buffer's first capacity.
const OUT: usize = 512;

/// A request body the proxy did not read (an early answer) is read and dropped up to this
/// many bytes so the connection stays open; past it the connection closes after the answer.
const DRAIN: u64 = 64 * 1024;

/// The request-head limits (`global.limits`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_headers: usize,
    pub max_head_bytes: usize,
}

/// How a connection's time with the engine ended.
pub enum Ended<T> {
    /// Closed: the client left or asked to, or the drain closed it.
    Closed,
    /// Left to hyper at a request boundary, with the bytes read and not yet served.
    Hyper { io: T, read: BytesMut },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading a request: {0}")]
    Read(io::Error),
    #[error(transparent)]
    Write(#[from] write::WriteError),
}

/// Serves HTTP/1.1 requests on `io` until the connection ends or is left to hyper. `stop`
/// flips at the drain: an idle connection closes then, a busy one after its answer (sent with
/// `Connection: close`).
///
/// Not an `async fn`: an `async fn`'s future keeps each argument twice, as passed and as the
/// body's local (the stream twice in every connection's task; `session::handle_raw`).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
pub fn serve<T>(
    mut io: T,
    stop: &watch::Receiver<bool>,
    ctx: &Arc<ListenerCtx>,
    conn: &Arc<Conn>,
    limits: Limits,
) -> impl Future<Output = Result<Ended<T>, Error>>
where
    // Sync: the body holding the read half crosses into the phases, which share it by reference.
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    async move {
        let mut buf = BytesMut::new();
        // A response head's usual size: grown from empty it was reallocated four or five times
        // on every new connection.
        let mut out = Vec::with_capacity(OUT);
        // Registered once per connection, not once per request.
        let mut watcher = stop.clone();
        let mut stopped = std::pin::pin!(watcher.changed());
        let mut draining = *stop.borrow();
        loop {
            let head = loop {
                if buf.is_empty() {
                    if draining {
                        return Ok(Ended::Closed);
                    }
                } else {
                    match head::parse(&buf, limits.max_headers) {
                        head::Parsed::Head(h) => break h,
                        head::Parsed::Decline(why) => {
                            handoff(ctx, conn, why);
                            return Ok(Ended::Hyper { io, read: buf });
                        }
                        head::Parsed::Partial if buf.len() >= limits.max_head_bytes => {
                            // hyper answers 431 once its own limit is passed.
                            handoff(ctx, conn, Handoff::HeadTooLarge);
                            return Ok(Ended::Hyper { io, read: buf });
                        }
                        head::Parsed::Partial => {}
                    }
                }
                if buf.capacity() - buf.len() < READ / 4 {
                    buf.reserve(READ);
                }
                let n = tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => r.map_err(Error::Read)?,
                    _ = &mut stopped, if !draining && buf.is_empty() => {
                        draining = true;
                        continue;
                    }
                };
                if n == 0 {
                    return Ok(Ended::Closed);
                }
            };
            let raw = buf.split_to(head.len).freeze();
            let (close, length, head_only) = (head.close, head.body, head.is_head());
            let (expect_continue, upgrade) = (head.expect_continue, head.upgrade);
            let Some(mut parts) = head.into_parts(&raw) else {
                handoff(ctx, conn, Handoff::Unrepresentable);
                let mut read = BytesMut::from(&raw[..]);
                read.extend_from_slice(&buf);
                return Ok(Ended::Hyper { io, read });
            };
            // The drain began while this request was read: it is answered, then the connection
            // closes. An atomic load per request; the lock is taken only when it changed.
            draining |= stop.has_changed().unwrap_or(true) && *stop.borrow();
            let framing = match length {
                BodyLength::Empty => None,
                BodyLength::Bytes(n) => Some(body::Framing::Length(n)),
                BodyLength::Chunked => Some(body::Framing::Chunked(chunked::Decoder::new(
                    limits.max_headers,
                ))),
            };
            match framing {
                None => {
                    // An upgrade request carries where the tunnel gets the connection after a 101.
                    let tunnel = upgrade.then(|| {
                        let (from, tx) = FromEngine::new();
                        parts.extensions.insert(from);
                        tx
                    });
                    let req = Request::from_parts(parts, body::Body::<T>::empty());
                    // Boxed: inline, the phases' state would size the connection's task for its
                    // whole life, idle or not (and be copied whole when the task is spawned).
                    let resp = Box::pin(session::handle_raw(ctx.clone(), conn.clone(), req)).await;
                    let resp = resp.unwrap_or_else(|never| match never {});
                    let tunnel =
                        tunnel.filter(|_| resp.status() == StatusCode::SWITCHING_PROTOCOLS);
                    let close = tunnel.is_none() && (close || draining);
                    write::response(&mut io, &mut out, resp, head_only, close).await?;
                    if let Some(tx) = tunnel {
                        // The tunnel takes the connection, with what the client sent after the
                        // head (its first frames may have come with it).
                        let io = Prefixed::new(buf.to_vec(), io);
                        // The tunnel gone (the server's side failed): the connection closes.
                        let _ = tx.send(Box::new(io));
                        return Ok(Ended::Closed);
                    }
                }
                Some(framing) => {
                    let (rd, mut wr) = tokio::io::split(io);
                    let (wants_continue, asked) = match expect_continue {
                        true => {
                            let (tx, rx) = oneshot::channel();
                            (Some(tx), Some(rx))
                        }
                        false => (None, None),
                    };
                    let (body, mut back) =
                        body::Body::new(rd, std::mem::take(&mut buf), framing, wants_continue);
                    let req = Request::from_parts(parts, body);
                    let mut serving = Box::pin(session::handle_raw(ctx.clone(), conn.clone(), req));
                    // `100 Continue` goes out when the phases first ask for the body, as hyper
                    // sends it; a request answered before that is answered without it.
                    let mut continued = false;
                    let resp = match asked {
                        None => serving.await,
                        Some(asked) => tokio::select! {
                            biased;
                            resp = &mut serving => resp,
                            Ok(()) = asked => {
                                wr.write_all(CONTINUE).await.map_err(write::WriteError::Io)?;
                                wr.flush().await.map_err(write::WriteError::Io)?;
                                continued = true;
                                serving.await
                            }
                        },
                    };
                    let resp = resp.unwrap_or_else(|never| match never {});
                    write::response(&mut wr, &mut out, resp, head_only, close || draining).await?;
                    // The body was read to its end or dropped by now; if something still holds
                    // it, where the next request starts is unknown: close.
                    let Ok(r) = back.try_recv() else {
                        return Ok(Ended::Closed);
                    };
                    io = r.io.unsplit(wr);
                    buf = r.buf;
                    match r.left {
                        body::Left::Nothing => {}
                        body::Left::Unknown => return Ok(Ended::Closed),
                        // The client may be waiting for a `100 Continue` it will not get, and
                        // never send the body: what it sent already is drained, nothing is
                        // waited for (hyper's rule).
                        body::Left::Length(n) if expect_continue && !continued => {
                            if n > buf.len() as u64 || close || draining {
                                return Ok(Ended::Closed);
                            }
                            drain(&mut io, &mut buf, n).await.map_err(Error::Read)?;
                        }
                        body::Left::Length(n) => {
                            if n > DRAIN || close || draining {
                                return Ok(Ended::Closed);
                            }
                            drain(&mut io, &mut buf, n).await.map_err(Error::Read)?;
                        }
                    }
                }
            }
            if close || draining {
                return Ok(Ended::Closed);
            }
            if out.capacity() > 64 * 1024 {
                // A large head once does not keep its buffer for the connection's life.
                out = Vec::with_capacity(OUT);
            }
        }
    }
}

/// Counts and logs a connection left to hyper.
fn handoff(ctx: &ListenerCtx, conn: &Conn, why: Handoff) {
    debug!(peer = %conn.peer, why = why.as_str(), "HTTP/1.1 request left to hyper");
    if let Some(m) = &ctx.metrics {
        m.handoff(&ctx.name, why.as_str());
    }
}

/// Reads and drops `left` body bytes, the first of them in `buf`.
async fn drain<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    mut left: u64,
) -> io::Result<()> {
    loop {
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let _ = buf.split_to(n);
        left -= n as u64;
        if left == 0 {
            return Ok(());
        }
        buf.reserve(READ);
        if io.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}
