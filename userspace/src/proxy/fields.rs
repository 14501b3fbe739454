//! A server's HTTP/1.1 response fields carried as the bytes it sent, for the common response no
//! rule reads or changes: written to an HTTP/1.1 client line by line from those bytes, never
//! decoded into a header map and encoded again (half of the response path's instructions).
//!
//! The response's `HeaderMap` holds only what this hop adds; the server's fields are in a
//! [`RawFields`] extension, already without what only this hop may send (hop-by-hop fields,
//! those its `Connection` names, and a `Content-Length` that a `Transfer-Encoding` overrides).
//! One rule keeps that one meaning: anything that reads or changes a response's fields calls
//! [`materialize`] first, which moves them into the map; the session does so before any
//! response rule, compression, sticky cookie or CORS runs, and before a response leaves through
//! hyper. Only the HTTP/1.1 engine's writer (`h1/write.rs`) reads [`RawFields`] itself.

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

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
    fn append_to(self, headers: &mut HeaderMap) {
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

/// Moves a response's raw fields, if it has any, into its header map: after this the map is
/// the response's whole set of fields.
pub fn materialize<B>(resp: &mut Response<B>) {
    if let Some(raw) = resp.extensions_mut().remove::<RawFields>() {
        raw.append_to(resp.headers_mut());
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
    fn materialize_moves_the_fields_into_the_map_once() {
        let mut resp = Response::new(());
        resp.headers_mut()
            .insert("x-added", HeaderValue::from_static("here"));
        resp.extensions_mut().insert(sample());
        materialize(&mut resp);
        assert!(resp.extensions().get::<RawFields>().is_none());
        assert_eq!(resp.headers().len(), 5);
        assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
        materialize(&mut resp);
        assert_eq!(resp.headers().len(), 5);
    }
}
