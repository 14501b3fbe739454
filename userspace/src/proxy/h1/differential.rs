//! The engine against hyper on the same bytes: a head the engine takes must be one hyper
//! takes too, with the same method, target, version and fields, so serving it with the engine
//! never accepts what floodgate refused before, or reads it differently. (What the engine
//! declines, hyper serves: no comparison needed there.) Run by the `request_head` fuzz target
//! and, over a fixed set of inputs, by the unit tests.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use super::head::{self, Parsed};

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
    let Some(theirs) = hyper_reads(&raw) else {
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
    let their_length = theirs
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length != their_length {
        return Err(format!(
            "body length: engine {length:?}, hyper {their_length:?}"
        ));
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

/// The request head hyper's HTTP/1.1 server hands to its service for `head`, with
/// floodgate's settings; `None` when it refuses it.
fn hyper_reads(head: &[u8]) -> Option<http::request::Parts> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let seen: Arc<Mutex<Option<http::request::Parts>>> = Arc::default();
    let to = seen.clone();
    let head = head.to_vec();
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            if let Ok(mut s) = to.lock() {
                *s = Some(req.into_parts().0);
            }
            async { Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new())) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_headers(MAX_HEADERS)
            .max_buf_size(16_384)
            .serve_connection(TokioIo::new(server), svc);
        let write = async move {
            let _ = client.write_all(&head).await;
            let _ = client.shutdown().await;
            client
        };
        // The client half is kept until hyper is done, so it reads EOF, not a reset.
        let (_, _client) = tokio::join!(
            tokio::time::timeout(std::time::Duration::from_secs(5), conn),
            write
        );
    });
    seen.lock().ok()?.take()
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
}
