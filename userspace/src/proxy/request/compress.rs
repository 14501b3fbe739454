//! Response compression (`backends[].compression`): HAProxy's `compression algo gzip` with
//! `compression type`, ingress-nginx's `use-gzip` with `gzip-types`, `gzip-level` and
//! `gzip-min-length`.
//!
//! A response is compressed only when nothing is lost by it: the client accepts gzip, the
//! server did not encode it itself, its type is listed, it is not marked `no-transform`, it is
//! big enough when its length is known, and it is a full 200. The body is compressed as it
//! streams, and each chunk the server sends is flushed out compressed, so a response streamed
//! slowly (server-sent HTML, long polls) still reaches the client as it is produced.

use std::{
    io::Write as _,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use flate2::{Compression as Level, write::GzEncoder};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};

use crate::config;
use crate::proxy::body::{BoxError, ProxyBody};

/// One backend's compression settings.
#[derive(Debug)]
pub struct Compress {
    /// Media types, lowercase, without parameters.
    types: Vec<String>,
    min_size: u64,
    level: Level,
    /// Strip `Accept-Encoding` from requests, so servers never compress (HAProxy's
    /// `compression offload`).
    pub offload: bool,
}

impl Compress {
    pub fn new(cfg: &config::Compression) -> Self {
        Self {
            types: cfg.types.iter().map(|t| t.to_ascii_lowercase()).collect(),
            min_size: cfg.min_size,
            level: Level::new(cfg.level),
            offload: cfg.offload,
        }
    }

    /// Compresses `resp` when the client accepts gzip and the response qualifies; otherwise
    /// returns it as it is. Returns whether it did.
    pub fn apply(
        &self,
        accepts_gzip: bool,
        head: bool,
        resp: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, bool) {
        if !accepts_gzip || head || !self.qualifies(resp.status(), resp.headers()) {
            return (resp, false);
        }
        let (mut parts, body) = resp.into_parts();
        let h = &mut parts.headers;
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        // The bytes differ from the server's: a strong validator no longer holds (RFC 9110
        // section 8.8.1), a weak one does.
        if let Some(tag) = h.get(header::ETAG).and_then(|v| v.to_str().ok())
            && !tag.starts_with("W/")
            && let Ok(weak) = HeaderValue::from_str(&format!("W/{tag}"))
        {
            h.insert(header::ETAG, weak);
        }
        let body = Gzip {
            inner: body,
            encoder: Some(GzEncoder::new(Vec::new(), self.level)),
            trailers: None,
        };
        (
            Response::from_parts(parts, http_body_util::BodyExt::boxed(body)),
            true,
        )
    }

    fn qualifies(&self, status: StatusCode, h: &HeaderMap) -> bool {
        if status != StatusCode::OK || h.contains_key(header::CONTENT_ENCODING) {
            return false;
        }
        let no_transform = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
        if no_transform {
            return false;
        }
        let small = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n < self.min_size);
        if small {
            return false;
        }
        let Some(kind) = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        self.types.contains(&kind)
    }
}

/// Whether a request's `Accept-Encoding` takes gzip: listed (or `*`) with a weight above 0
/// (RFC 9110 section 12.5.3).
pub fn accepts_gzip(h: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in h
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight > 0.0);
        } else if coding == "*" {
            any = Some(weight > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// A body compressed as it streams.
struct Gzip {
    inner: ProxyBody,
    /// `None` once finished.
    encoder: Option<GzEncoder<Vec<u8>>>,
    /// The server's trailers, sent after the gzip footer.
    trailers: Option<Frame<Bytes>>,
}

impl Body for Gzip {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(Ok));
            };
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        encoder.write_all(&data)?;
                        // What the server sent so far goes out now, not when a buffer fills.
                        encoder.flush()?;
                        let out = std::mem::take(encoder.get_mut());
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    // Trailers end the data: the gzip footer goes first.
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        let Some(enc) = this.encoder.take() else {
                            return Poll::Ready(this.trailers.take().map(Ok));
                        };
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(enc.finish()?)))));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let Some(enc) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    let tail = enc.finish()?;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use http_body_util::{BodyExt as _, Full};

    use super::*;

    fn policy() -> Compress {
        Compress::new(&config::Compression::default())
    }

    fn response(kind: &str, body: &'static [u8]) -> Response<ProxyBody> {
        let mut r = Response::new(
            Full::new(Bytes::from_static(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_str(kind).unwrap());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len() as u64));
        r
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    const PAGE: &[u8] = b"<html><body>hello hello hello hello hello hello hello hello hello hello hello \
        hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello \
        hello hello hello hello hello hello hello hello hello hello hello hello hello hello</body></html>";

    #[tokio::test]
    async fn listed_types_are_compressed_with_their_headers_fixed() {
        let mut r = response("text/html; charset=utf-8", PAGE);
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let (r, done) = policy().apply(true, false, r);
        assert!(done);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::VARY], "Accept-Encoding");
        assert_eq!(h[header::ETAG], "W/\"v1\"");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() < PAGE.len(), "{} of {}", body.len(), PAGE.len());
        assert_eq!(gunzip(&body), PAGE);
    }

    #[test]
    fn other_responses_pass_as_they_are() {
        let p = policy();
        let cases: Vec<(bool, bool, Response<ProxyBody>)> = vec![
            (false, false, response("text/html", PAGE)),
            (true, true, response("text/html", PAGE)),
            (true, false, response("image/png", PAGE)),
            (true, false, response("text/html", b"tiny")),
            (true, false, {
                let mut r = response("text/html", PAGE);
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
                r
            }),
            (true, false, {
                let mut r = response("text/html", PAGE);
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, no-transform"),
                );
                r
            }),
            (true, false, {
                let mut r = response("text/html", PAGE);
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r
            }),
        ];
        for (i, (accepts, head, r)) in cases.into_iter().enumerate() {
            let (r, done) = p.apply(accepts, head, r);
            assert!(!done, "case {i}");
            assert!(r.headers().contains_key(header::CONTENT_LENGTH), "case {i}");
        }
    }

    /// Each chunk the server sends is flushed out: a streamed page reaches the client as it
    /// is produced, not when a compression buffer fills.
    #[tokio::test]
    async fn streamed_chunks_go_out_as_they_come() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let body = Chan(rx).boxed();
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let (r, done) = policy().apply(true, false, r);
        assert!(done);
        let mut body = r.into_body();
        tx.send(Bytes::from_static(b"<p>first</p>")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(
            !first.is_empty(),
            "the first chunk is out before the second exists"
        );
        tx.send(Bytes::from_static(b"<p>second</p>")).await.unwrap();
        drop(tx);
        let mut all = first.to_vec();
        while let Some(f) = body.frame().await {
            all.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(gunzip(&all), b"<p>first</p><p>second</p>");
    }

    /// A body whose chunks arrive when the test sends them.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip, deflate, br"));
        assert!(h("br;q=1.0, gzip;q=0.8"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br, *;q=0"));
        assert!(!h("identity"));
        assert!(!h("*, gzip;q=0"), "an explicit gzip;q=0 wins over *");
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
