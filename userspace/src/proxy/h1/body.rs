//! A request body with a `Content-Length`, read from the connection as the backend takes it.
//! It holds the connection's read half while it is read and gives it back, with the bytes
//! read past its end (a pipelined request), when it ends or is dropped.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, ReadHalf},
    sync::oneshot,
};

/// Bytes read from the socket at a time for a body.
const READ: usize = 16 * 1024;

/// The read half and what is left of the body, back to the connection.
pub struct Returned<T> {
    pub io: ReadHalf<T>,
    pub buf: BytesMut,
    /// Body bytes not read: 0 when the body was read to its end.
    pub left: u64,
}

/// A request's body: empty, or `left` bytes still to come from the connection.
pub struct Body<T> {
    reading: Option<(Returned<T>, oneshot::Sender<Returned<T>>)>,
}

impl<T> Body<T> {
    pub fn empty() -> Self {
        Self { reading: None }
    }

    /// `len` bytes, the first of them in `buf`; the connection gets `io` back on `back`.
    pub fn new(io: ReadHalf<T>, buf: BytesMut, len: u64) -> (Self, oneshot::Receiver<Returned<T>>) {
        let (tx, rx) = oneshot::channel();
        let body = Self {
            reading: Some((Returned { io, buf, left: len }, tx)),
        };
        (body, rx)
    }

    fn give_back(&mut self) {
        if let Some((r, tx)) = self.reading.take() {
            // The connection gone: nothing to give back to.
            let _ = tx.send(r);
        }
    }
}

impl<T> Drop for Body<T> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<T: AsyncRead> hyper::body::Body for Body<T> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let Some((r, _)) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        if r.left == 0 {
            this.give_back();
            return Poll::Ready(None);
        }
        if r.buf.is_empty() {
            r.buf.reserve(READ);
            let read = std::pin::pin!(r.io.read_buf(&mut r.buf));
            match read.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection in the middle of the request body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = usize::try_from(r.left).map_or(r.buf.len(), |l| l.min(r.buf.len()));
        let data = r.buf.split_to(n).freeze();
        r.left -= n as u64;
        if r.left == 0 {
            this.give_back();
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(|(r, _)| r.left == 0)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.reading.as_ref().map_or(0, |(r, _)| r.left))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn a_body_reads_its_length_and_gives_back_what_follows() {
        let (client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = Body::new(rd, BytesMut::from(&b"hel"[..]), 11);
        let mut client = client;
        client.write_all(b"lo worldGET /next").await.expect("write");
        let got = body.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"hello world");
        let r = back.await.expect("given back");
        assert_eq!(r.left, 0);
        assert!(b"GET /next".starts_with(&r.buf[..]) && !r.buf.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_body_says_how_much_was_left() {
        let (_client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, back) = Body::new(rd, BytesMut::from(&b"abc"[..]), 10);
        drop(body);
        let r = back.await.expect("given back");
        assert_eq!((r.left, &r.buf[..]), (10, &b"abc"[..]));
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_an_error() {
        let (client, server) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(server);
        let (body, _back) = Body::new(rd, BytesMut::new(), 10);
        drop(client);
        assert!(body.collect().await.is_err());
    }
}
