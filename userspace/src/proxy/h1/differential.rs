//! The engine against hyper on the same bytes: a head the engine takes must be one hyper
//! takes too, with the same method, target, version, fields and body framing, and the body
//! that follows (length or chunked, with its trailers) must be the same bytes, or refused by
//! both; so serving it with the engine never accepts what floodgate refused before, or reads
//! it differently. (What the engine declines, hyper serves: no comparison needed there.) Run
//! by the `request_head` fuzz target and, over a fixed set of inputs, by the unit tests.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use super::{
    chunked::{self, Decoded},
    head::{self, BodyLength, Parsed},
};

/// A body as read: its bytes and trailers, or `Err` when it is refused or incomplete.
type ReadBody = Result<(Bytes, Option<HeaderMap>), ()>;

/// The field limit both sides get (floodgate's default `max-header-count`).
const MAX_HEADERS: usize = 101;

/// `Err` with what differs when the engine takes a head from `data` that hyper refuses or
/// reads differently.
pub fn check(data: &[u8]) -> Result<(), String> {
    let Parsed::Head(h) = head::parse(data, MAX_HEADERS) else {
        return Ok(());
    };
    let raw = Bytes::copy_from_slice(data.get(..h.len).unwrap_or_default());
    let (length, close) = (h.body, h.close);
    let Some(ours) = h.into_parts(&raw) else {
        // Declined at build time: hyper serves it.
        return Ok(());
    };
    let Some((theirs, their_body)) = hyper_reads(data) else {
        return Err(format!("the engine takes a head hyper refuses: {ours:?}"));
    };
    if (&ours.method, &ours.uri, ours.version) != (&theirs.method, &theirs.uri, theirs.version) {
        return Err(format!(
            "request line: engine {} {} {:?}, hyper {} {} {:?}",
            ours.method, ours.uri, ours.version, theirs.method, theirs.uri, theirs.version
        ));
    }
    if ours.headers != theirs.headers {
        return Err(format!(
            "fields: engine {:?}, hyper {:?}",
            ours.headers, theirs.headers
        ));
    }
    let fields = &theirs.headers;
    let their_length = if fields.contains_key(http::header::TRANSFER_ENCODING) {
        BodyLength::Chunked
    } else {
        match fields
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            None | Some(0) => BodyLength::Empty,
            Some(n) => BodyLength::Bytes(n),
        }
    };
    if length != their_length {
        return Err(format!(
            "body length: engine {length:?}, hyper {their_length:?}"
        ));
    }
    let our_body = engine_reads(length, data.get(raw.len()..).unwrap_or_default());
    match (&our_body, &their_body) {
        (Err(()), Err(())) => {}
        (Ok(a), Ok(b)) if a == b => {}
        _ => {
            return Err(format!("body: engine {our_body:?}, hyper {their_body:?}"));
        }
    }
    let their_close = theirs
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
    if close != their_close {
        return Err(format!("close: engine {close}, hyper {their_close}"));
    }
    Ok(())
}

/// The body the engine reads from `rest`, the bytes after the head, the client sending
/// nothing more.
fn engine_reads(length: BodyLength, rest: &[u8]) -> ReadBody {
    match length {
        BodyLength::Empty => Ok((Bytes::new(), None)),
        BodyLength::Bytes(n) => {
            let n = usize::try_from(n).map_err(|_| ())?;
            rest.get(..n)
                .map(|b| (Bytes::copy_from_slice(b), None))
                .ok_or(())
        }
        BodyLength::Chunked => {
            let mut d = chunked::Decoder::new(MAX_HEADERS);
            let mut buf = BytesMut::from(rest);
            let (mut data, mut trailers) = (BytesMut::new(), None);
            loop {
                match d.decode(&mut buf).map_err(|_| ())? {
                    Decoded::Data(b) => data.extend_from_slice(&b),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => return Ok((data.freeze(), trailers)),
                    // The end of the input: the client closed within the body.
                    Decoded::More => return Err(()),
                }
            }
        }
    }
}

/// The request head hyper's HTTP/1.1 server hands to its service for the request at the start
/// of `data`, with floodgate's settings, and the body it reads; `None` when it refuses the head.
fn hyper_reads(data: &[u8]) -> Option<(http::request::Parts, ReadBody)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    type Seen = Option<(http::request::Parts, Option<ReadBody>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let to = seen.clone();
    let data = data.to_vec();
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (parts, body) = req.into_parts();
            // The first request only: what follows it is not compared.
            let first = to.lock().is_ok_and(|mut s| {
                let first = s.is_none();
                s.get_or_insert((parts, None));
                first
            });
            let to = to.clone();
            async move {
                if first {
                    let body = match body.collect().await {
                        Ok(c) => {
                            let trailers = c.trailers().cloned();
                            Ok((c.to_bytes(), trailers))
                        }
                        Err(_) => Err(()),
                    };
                    if let Ok(mut s) = to.lock()
                        && let Some((_, b)) = s.as_mut()
                    {
                        *b = Some(body);
                    }
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_headers(MAX_HEADERS)
            .max_buf_size(16_384)
            // The client sends everything and shuts its side: hyper keeps reading the body
            // then, rather than dropping the request at the end of its input.
            .half_close(true)
            .serve_connection(TokioIo::new(server), svc);
        let write = async move {
            let _ = client.write_all(&data).await;
            let _ = client.shutdown().await;
            client
        };
        // The client half is kept until hyper is done, so it reads EOF, not a reset.
        let (_, _client) = tokio::join!(
            tokio::time::timeout(std::time::Duration::from_secs(5), conn),
            write
        );
    });
    let (parts, body) = seen.lock().ok()?.take()?;
    Some((parts, body.unwrap_or(Err(()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a%2Fb/../c?x=%00 HTTP/1.1\r\nHost: A.example.:080\r\nX: \t v \t\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0012\r\nConnection: Close\r\n\r\n",
        b"GET http://a.example/x HTTP/1.1\r\nHost: b\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\nx: 2\r\nX: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\x00: b\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive,close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\nExpect: 100-continue\r\n\r\n\
          5;a=b\r\nhello\r\n00A  ;x\r\n0123456789\r\n0\r\nX-T: 1\r\nx-t: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX y\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        // Found by the fuzz target: a trailer line ended by a bare LF (hyper 1.13 refuses it).
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n\r\n",
    ];

    #[test]
    fn the_engine_reads_what_hyper_reads() {
        for s in SAMPLES {
            check(s).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(s)));
        }
    }

    /// Every one-byte change of a typical request (each position, a set of bytes that matter
    /// to a parser) is read the same by both, or left to hyper.
    #[test]
    fn one_byte_changes_are_read_the_same_or_declined() {
        let base =
            b"POST /a/b?c=d HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nX-A: v\r\n\r\n";
        for i in 0..base.len() {
            for b in [
                b'\0', b'\t', b'\n', b'\r', b' ', b':', b',', b'0', b'A', 0x7f, 0xff,
            ] {
                let mut m = base.to_vec();
                m[i] = b;
                check(&m).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&m)));
            }
        }
    }

    /// The same over a chunked request with an extension and a trailer: every byte of the head
    /// and of the framing changed, and each one removed.
    #[test]
    fn one_byte_changes_of_a_chunked_body_are_read_the_same() {
        let base = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;e=1\r\nabc\r\n2 \r\nde\r\n0\r\nX-T: v\r\n\r\n";
        for i in 0..base.len() {
            for b in [
                b'\0', b'\t', b'\n', b'\r', b' ', b';', b':', b'0', b'f', b'G', 0x7f, 0xff,
            ] {
                let mut m = base.to_vec();
                m[i] = b;
                check(&m).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&m)));
            }
            let mut m = base.to_vec();
            m.remove(i);
            check(&m).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&m)));
        }
    }
}
