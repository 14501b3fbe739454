//! A server's HTTP/1.1 response fields carried as the bytes it sent, for the common response no
//! rule reads or changes: written to an HTTP/1.1 client line by line from those bytes, never
//! decoded into a header map and encoded again (half of the response path's instructions).
//!
//! An [`Answer`] is a response on its way to the client: its `HeaderMap` holds what this hop
//! adds, and the server's fields may still be a [`RawFields`] beside it, already without what
//! only this hop may send (hop-by-hop fields, those its `Connection` names, and a
//! `Content-Length` that a `Transfer-Encoding` overrides). The type keeps that one meaning:
//! its fields are reached only through [`Answer::headers_mut`], which moves the raw ones into
//! the map first, and a whole response leaves it only with every field in the map
//! ([`Answer::into_response`]: compression, hyper). Only the HTTP/1.1 engine's writer
//! (`h1/write.rs`) takes the two apart ([`Answer::into_raw_parts`]). Carried beside the
//! response rather than in its extensions: an extension is a map and two allocations per
//! response, about 600 instructions a request.

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::proxy::body::ProxyBody;

/// Field lines of a response head, as slices of the head's bytes.
#[derive(Clone, Debug)]
pub struct RawFields {
    head: Bytes,
    /// Each field's name and value within `head`, in the server's order.
    lines: Vec<(Range<usize>, Range<usize>)>,
    /// The value of a kept `Content-Length` field.
    pub content_length: Option<u64>,
    /// A `Date` field is among them.
    pub has_date: bool,
}

impl RawFields {
    /// `lines` index `head`; every name is an RFC 9110 token and every value a valid field value
    /// (checked by the parser that found them), so each becomes a `HeaderName` and a
    /// `HeaderValue` without failing.
    pub fn new(
        head: Bytes,
        lines: Vec<(Range<usize>, Range<usize>)>,
        content_length: Option<u64>,
        has_date: bool,
    ) -> Self {
        Self {
            head,
            lines,
            content_length,
            has_date,
        }
    }

    /// The fields as HTTP/1.1 field lines, names lower-cased as a header map would write them.
    pub fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.lines {
            let (Some(name), Some(value)) =
                (self.head.get(name.clone()), self.head.get(value.clone()))
            else {
                continue;
            };
            let at = out.len();
            out.extend_from_slice(name);
            if let Some(written) = out.get_mut(at..) {
                written.make_ascii_lowercase();
            }
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The fields appended to `headers`, their values slices of the head (no copy).
    pub fn append_to(self, headers: &mut HeaderMap) {
        headers.reserve(self.lines.len());
        for (name, value) in self.lines {
            let (Some(n), Some(v)) = (self.head.get(name), self.head.get(value)) else {
                continue;
            };
            // Cannot fail (see `new`); a field that did would be dropped, not forwarded raw.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n),
                HeaderValue::from_maybe_shared(self.head.slice_ref(v)),
            ) {
                headers.append(n, v);
            }
        }
    }
}

/// A response on its way to the client, the server's fields possibly still raw (see the
/// module's doc). `B`, its body: the phases' boxed one, then (`session::handle_raw`) that
/// body with what ends the request when it ends, unboxed.
pub struct Answer<B = ProxyBody> {
    resp: Response<B>,
    raw: Option<RawFields>,
}

impl<B> Answer<B> {
    /// `resp` with `raw`, the server's fields, beside its map.
    pub fn new(resp: Response<B>, raw: Option<RawFields>) -> Self {
        Self { resp, raw }
    }

    pub fn status(&self) -> StatusCode {
        self.resp.status()
    }

    /// Every field of the answer, the server's moved into the map first.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        if let Some(raw) = self.raw.take() {
            raw.append_to(self.resp.headers_mut());
        }
        self.resp.headers_mut()
    }

    /// The response with every field in its map.
    pub fn into_response(mut self) -> Response<B> {
        self.headers_mut();
        self.resp
    }

    /// The response, its map without the server's fields when they are still raw, and those.
    pub fn into_raw_parts(self) -> (Response<B>, Option<RawFields>) {
        (self.resp, self.raw)
    }

    /// The same answer with its body replaced by `f` of it.
    pub fn map_body<C>(self, f: impl FnOnce(B) -> C) -> Answer<C> {
        Answer {
            resp: self.resp.map(f),
            raw: self.raw,
        }
    }
}

impl<B> From<Response<B>> for Answer<B> {
    fn from(resp: Response<B>) -> Self {
        Self { resp, raw: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawFields {
        let head = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 12\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        );
        let at = |s: &str| {
            let i = head
                .windows(s.len())
                .position(|w| w == s.as_bytes())
                .unwrap_or_default();
            i..i + s.len()
        };
        let lines = vec![
            (at("Server"), at("nginx")),
            (at("Content-Length"), at("12")),
            (at("X-A"), at("1")),
            (at("x-a"), at("2")),
        ];
        RawFields::new(head.clone(), lines, Some(12), false)
    }

    #[test]
    fn raw_fields_are_written_as_a_header_map_would_write_them() {
        let raw = sample();
        let mut direct = Vec::new();
        raw.write(&mut direct);
        let mut map = HeaderMap::new();
        raw.append_to(&mut map);
        let mut through_map = Vec::new();
        crate::proxy::h1::write::fields(&mut through_map, &map);
        assert_eq!(
            String::from_utf8_lossy(&direct),
            "server: nginx\r\ncontent-length: 12\r\nx-a: 1\r\nx-a: 2\r\n"
        );
        assert_eq!(direct, through_map);
    }

    #[test]
    fn an_answer_moves_the_fields_into_its_map_once() {
        use http_body_util::{BodyExt as _, Empty};
        let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        resp.headers_mut()
            .insert("x-added", HeaderValue::from_static("here"));
        let mut answer: Answer = Answer::new(resp, Some(sample()));
        assert_eq!(answer.headers_mut().len(), 5);
        assert_eq!(answer.headers_mut().get_all("x-a").iter().count(), 2);
        let (resp, raw) = answer.into_raw_parts();
        assert!(raw.is_none());
        assert_eq!(resp.headers().len(), 5);
        let resp = Response::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let whole = Answer::new(resp, Some(sample())).into_response();
        assert_eq!(whole.headers().len(), 4);
    }
}
