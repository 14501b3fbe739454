//! A response written to the client: its head serialised once into the connection's write
//! buffer, the body framed by its length or chunked, small frames gathered with the head so a
//! typical response leaves in one write (one syscall, one TLS record).

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::Poll,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::proxy::{body::BoxError, fields::Answer};

/// Body frames up to this size are copied behind the head (or the previous frame); larger
/// ones are written from their own buffer.
const GATHER: usize = 16 * 1024;

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
}

/// Why a response could not be written whole; the connection closes.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing to the client: {0}")]
    Io(#[from] io::Error),
    #[error("the response body failed: {0}")]
    Body(crate::proxy::body::BoxError),
    #[error("the response body is {sent} bytes where its Content-Length said {declared}")]
    Length { declared: u64, sent: u64 },
}

/// Writes `resp` to `io`; `head_only`: the request was HEAD; `close`: tell the client the
/// connection closes after it. `out` is the connection's write buffer, left empty. Not an
/// `async fn`, which would keep the answer twice in a future copied once per response
/// (`session::handle_raw`).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
pub fn response<W: AsyncWrite + Unpin, B: Body<Data = Bytes, Error = BoxError> + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    answer: Answer<B>,
    head_only: bool,
    close: bool,
) -> impl Future<Output = Result<(), WriteError>> {
    async move {
        // A server's fields as it sent them, less what only this hop sends (`proxy::fields`); the
        // map then holds only what this hop adds.
        let (resp, raw) = answer.into_raw_parts();
        let (mut parts, mut body) = resp.into_parts();
        let status = parts.status;
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = match &raw {
            Some(r) => r.content_length,
            None => parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        };
        let framing = if bodiless {
            Framing::None
        } else {
            // The framing is this hop's: a server's own Transfer-Encoding never passes, nor a
            // Content-Length that is not one.
            parts.headers.remove(header::TRANSFER_ENCODING);
            if declared.is_none() {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            match declared.or_else(|| body.size_hint().exact()) {
                Some(n) => {
                    if declared.is_none() {
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                    }
                    Framing::Length(n)
                }
                None => {
                    parts.headers.insert(
                        header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                    Framing::Chunked
                }
            }
        };
        if close {
            // Written below, not inserted: the first insert into a map that holds nothing (a
            // server's fields are raw) allocates it, on every response that closes.
            parts.headers.remove(header::CONNECTION);
        }
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(r) = &raw {
            r.write(out);
        }
        fields(out, &parts.headers);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !raw.as_ref().is_some_and(|r| r.has_date) && !parts.headers.contains_key(header::DATE) {
            // As hyper did: clients and caches expect one from an origin-facing server.
            out.extend_from_slice(b"date: ");
            date(out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if framing == Framing::None {
            io.write_all(out).await?;
            io.flush().await?;
            out.clear();
            return Ok(());
        }
        let mut sent: u64 = 0;
        loop {
            // A frame not ready yet: what is gathered goes out first, so a slow body never holds
            // back the head or the bytes before it.
            let next = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(f) => Poll::Ready(Some(f)),
            })
            .await;
            let Some(frame) = next else {
                io.write_all(out).await?;
                io.flush().await?;
                out.clear();
                continue;
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(WriteError::Body)?;
            // Trailers are dropped, as hyper's HTTP/1.1 server did for clients that did not ask
            // for them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sent = sent.saturating_add(data.len() as u64);
            if let Framing::Length(n) = framing
                && sent > n
            {
                return Err(WriteError::Length { declared: n, sent });
            }
            if framing == Framing::Chunked {
                chunk_size(out, data.len());
            }
            put(io, out, data).await?;
            if framing == Framing::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Framing::Length(n) = framing
            && sent != n
        {
            return Err(WriteError::Length { declared: n, sent });
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        io.write_all(out).await?;
        io.flush().await?;
        out.clear();
        Ok(())
    }
}

/// `headers` as HTTP/1.1 field lines, the way both sides write a head (the upstream request
/// in `upstream/direct.rs` too).
pub fn fields(out: &mut Vec<u8>, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `data` after what `out` holds: copied when small, else both written now.
async fn put<W: AsyncWrite + Unpin>(io: &mut W, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if data.len() <= GATHER {
        out.extend_from_slice(&data);
        if out.len() >= 4 * GATHER {
            io.write_all(out).await?;
            out.clear();
        }
        return Ok(());
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.write_all(&data).await
}

fn chunk_size(out: &mut Vec<u8>, n: usize) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n:x}\r\n");
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per worker.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
            }
            *at = secs;
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use http::Response;
    use http_body_util::{BodyExt as _, Full, StreamBody};

    use super::*;
    use crate::proxy::body::ProxyBody;

    async fn written(resp: Response<ProxyBody>, head_only: bool, close: bool) -> String {
        let mut io = Vec::new();
        let mut out = Vec::new();
        response(&mut io, &mut out, resp.into(), head_only, close)
            .await
            .expect("written");
        assert!(out.is_empty());
        String::from_utf8(io).expect("text")
    }

    fn full(b: &'static str) -> ProxyBody {
        Full::new(Bytes::from_static(b.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    }

    fn streamed(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<hyper::body::Frame<Bytes>, crate::proxy::body::BoxError>> = parts
            .iter()
            .map(|p| Ok(hyper::body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_known_length_is_declared_and_the_body_follows_the_head() {
        let w = written(Response::new(full("hello")), false, false).await;
        assert!(
            w.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "),
            "{w}"
        );
        assert!(w.ends_with("GMT\r\n\r\nhello"), "{w}");
    }

    #[tokio::test]
    async fn an_unknown_length_is_chunked() {
        let w = written(Response::new(streamed(&["ab", "", "cde"])), false, true).await;
        assert!(
            w.contains("transfer-encoding: chunked\r\nconnection: close\r\n"),
            "{w}"
        );
        assert!(
            w.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{w}"
        );
    }

    /// A closing answer says so once, whatever `Connection` a rule left in the map.
    #[tokio::test]
    async fn a_closing_answer_carries_one_connection_field() {
        let mut r = Response::new(full("hello"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let w = written(r, false, true).await;
        assert_eq!(w.matches("connection: ").count(), 1, "{w}");
        assert!(w.contains("connection: close\r\n"), "{w}");
        let w = written(Response::new(full("hello")), false, false).await;
        assert!(!w.contains("connection: "), "{w}");
    }

    #[tokio::test]
    async fn head_and_no_content_answers_carry_no_body() {
        let mut r = Response::new(full("hello"));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(5));
        let w = written(r, true, false).await;
        assert!(
            w.ends_with("GMT\r\n\r\n") && w.contains("content-length: 5\r\n"),
            "{w}"
        );
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::NO_CONTENT;
        let w = written(r, false, false).await;
        assert!(w.starts_with("HTTP/1.1 204 No Content\r\n") && !w.contains("content-length"));
    }

    #[tokio::test]
    async fn a_body_longer_than_declared_fails_the_write() {
        let mut r = Response::new(streamed(&["abc", "def"]));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(4));
        let mut io = Vec::new();
        let e = response(&mut io, &mut Vec::new(), r.into(), false, false).await;
        assert!(
            matches!(
                e,
                Err(WriteError::Length {
                    declared: 4,
                    sent: 6
                })
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_servers_transfer_encoding_is_replaced_by_this_hops_framing() {
        let mut r = Response::new(full("abc"));
        r.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let w = written(r, false, false).await;
        assert!(
            !w.contains("transfer-encoding") && w.contains("content-length: 3\r\n"),
            "{w}"
        );
    }
}
