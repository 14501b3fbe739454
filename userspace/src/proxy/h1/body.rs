//! A request body, `Content-Length` or chunked, read from the connection as the backend takes
//! it. It holds the connection's read half while it is read and gives it back, with the bytes
//! read past its end (a pipelined request), when it ends or is dropped.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use hyper::body::{Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, ReadHalf},
    sync::oneshot,
};

use super::chunked::{self, Decoded};

/// Bytes read from the socket at a time for a body.
const READ: usize = 16 * 1024;

/// How the body ends.
#[derive(Debug)]
pub enum Framing {
    /// This many bytes still to come.
    Length(u64),
    Chunked(chunked::Decoder),
}

/// Where the connection stands when the body gives its read half back.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// The body was read to its end: the buffer starts at the next request.
    Nothing,
    /// This many body bytes were not read (they can be drained).
    Length(u64),
    /// A chunked body not read to its end, or one that broke: where the next request starts
    /// is unknown, so the connection closes.
    Unknown,
}

/// The read half and what is left of the body, back to the connection.
pub struct Returned<T> {
    pub io: ReadHalf<T>,
    pub buf: BytesMut,
    pub left: Left,
}

/// A request's body: empty, or still to come from the connection.
pub struct Body<T> {
    reading: Option<Reading<T>>,
}

struct Reading<T> {
    io: ReadHalf<T>,
    buf: BytesMut,
    framing: Framing,
    /// Reading or decoding failed.
    broken: bool,
    back: oneshot::Sender<Returned<T>>,
    /// The client sent `Expect: 100-continue`: told when the body is first asked for, so the
    /// connection writes `100 Continue` then, as hyper does (a request refused before its body
    /// is needed is answered without the client sending it).
    wants_continue: Option<oneshot::Sender<()>>,
}

impl<T> Body<T> {
    pub fn empty() -> Self {
        Self { reading: None }
    }

    /// A body framed by `framing`, the first of its bytes in `buf`; the connection gets `io`
    /// back on the receiver. `wants_continue`: see [`Reading`].
    pub fn new(
        io: ReadHalf<T>,
        buf: BytesMut,
        framing: Framing,
        wants_continue: Option<oneshot::Sender<()>>,
    ) -> (Self, oneshot::Receiver<Returned<T>>) {
        let (back, rx) = oneshot::channel();
        let body = Self {
            reading: Some(Reading {
                io,
                buf,
                framing,
                broken: false,
                back,
                wants_continue,
            }),
        };
        (body, rx)
    }

    fn give_back(&mut self) {
        if let Some(r) = self.reading.take() {
            let left = match r.framing {
                _ if r.broken => Left::Unknown,
                Framing::Length(0) => Left::Nothing,
                Framing::Length(n) => Left::Length(n),
                Framing::Chunked(d) if d.is_done() => Left::Nothing,
                Framing::Chunked(_) => Left::Unknown,
            };
            // The connection gone: nothing to give back to.
            let _ = r.back.send(Returned {
                io: r.io,
                buf: r.buf,
                left,
            });
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<bytes::Bytes>, io::Error>>> {
        if let Some(r) = self.reading.as_mut() {
            r.broken = true;
        }
        self.give_back();
        Poll::Ready(Some(Err(e)))
    }
}

impl<T> Drop for Body<T> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<T: AsyncRead> hyper::body::Body for Body<T> {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(r) = this.reading.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(tx) = r.wants_continue.take() {
                // The connection gone: no one to write it.
                let _ = tx.send(());
            }
            match &mut r.framing {
                Framing::Length(0) => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !r.buf.is_empty() => {
                    let n = usize::try_from(*left).map_or(r.buf.len(), |l| l.min(r.buf.len()));
                    let data = r.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) => {}
                Framing::Chunked(d) => match d.decode(&mut r.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    // The last frame: a consumer may stop here without asking for the end.
                    Ok(Decoded::Trailers(t)) => {
                        this.give_back();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        this.give_back();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => {}
                    Err(e) => return this.fail(io::Error::new(io::ErrorKind::InvalidData, e)),
                },
            }
            if r.buf.capacity() - r.buf.len() < READ / 4 {
                r.buf.reserve(READ);
            }
            let read = std::pin::pin!(r.io.read_buf(&mut r.buf));
            match read.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Ready(Ok(0)) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection in the middle of the request body",
                    ));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(|r| match &r.framing {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) => d.is_done(),
        })
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading.as_ref().map(|r| &r.framing) {
            None => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(*n),
            Some(Framing::Chunked(_)) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn length(
        rd: ReadHalf<tokio::io::DuplexStream>,
        buf: &[u8],
        n: u64,
    ) -> (
        Body<tokio::io::DuplexStream>,
        oneshot::Receiver<Returned<tokio::io::DuplexStream>>,
    ) {
        Body::new(rd, BytesMut::from(buf), Framing::Length(n), None)
    }

    #[tokio::test]
    async fn a_body_reads_its_length_and_gives_back_what_follows() {
        let (client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = length(rd, b"hel", 11);
        let mut client = client;
        client.write_all(b"lo worldGET /next").await.expect("write");
        let got = body.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"hello world");
        let r = back.await.expect("given back");
        assert_eq!(r.left, Left::Nothing);
        assert!(b"GET /next".starts_with(&r.buf[..]) && !r.buf.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_body_says_how_much_was_left() {
        let (_client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = length(rd, b"abc", 10);
        drop(body);
        let r = back.await.expect("given back");
        assert_eq!((r.left, &r.buf[..]), (Left::Length(10), &b"abc"[..]));
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_an_error() {
        let (client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = length(rd, b"", 10);
        drop(client);
        assert!(body.collect().await.is_err());
        assert_eq!(back.await.expect("given back").left, Left::Unknown);
    }

    #[tokio::test]
    async fn a_chunked_body_reads_to_its_last_chunk_and_keeps_its_trailers() {
        let (mut client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = Body::new(
            rd,
            BytesMut::from(&b"5\r\nhel"[..]),
            Framing::Chunked(chunked::Decoder::new(101)),
            None,
        );
        client
            .write_all(b"lo\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next")
            .await
            .expect("write");
        let got = body.collect().await.expect("body");
        assert_eq!(
            got.trailers()
                .and_then(|t| t.get("x-t"))
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(&got.to_bytes()[..], b"hello world");
        let r = back.await.expect("given back");
        assert_eq!(r.left, Left::Nothing);
        assert!(b"GET /next".starts_with(&r.buf[..]) && !r.buf.is_empty());
    }

    #[tokio::test]
    async fn a_broken_or_unfinished_chunked_body_leaves_the_framing_unknown() {
        let (_client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = Body::new(
            rd,
            BytesMut::from(&b"5\r\nhelloX"[..]),
            Framing::Chunked(chunked::Decoder::new(101)),
            None,
        );
        assert!(body.collect().await.is_err());
        assert_eq!(back.await.expect("given back").left, Left::Unknown);
        let (_client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = Body::new(
            rd,
            BytesMut::from(&b"5\r\nhello\r\n"[..]),
            Framing::Chunked(chunked::Decoder::new(101)),
            None,
        );
        drop(body);
        assert_eq!(back.await.expect("given back").left, Left::Unknown);
    }

    #[tokio::test]
    async fn continue_is_asked_for_when_the_body_is() {
        let (mut client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (tx, mut rx) = oneshot::channel();
        let (mut body, _back) = Body::new(rd, BytesMut::new(), Framing::Length(2), Some(tx));
        assert!(rx.try_recv().is_err(), "not before the body is read");
        client.write_all(b"ok").await.expect("write");
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"ok"[..]));
        assert!(rx.try_recv().is_ok());
    }
}
