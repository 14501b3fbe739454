//! A request head, parsed by `httparse` from the connection's buffer and taken by the engine
//! only when its framing is one the engine serves (no body, one `Content-Length`, or
//! `Transfer-Encoding: chunked` alone): anything else is `Decline`d, and hyper, which floodgate
//! served every HTTP/1.1 request with before, answers it exactly as it did (its 400s and 431s,
//! upgrades, other transfer codings, HTTP/1.0).
//!
//! So the engine is never less strict than hyper: it accepts a subset of what hyper accepts,
//! with the same meaning (`httparse` with hyper's request settings, the same `http` types
//! built from the same bytes), and `tests` plus the differential fuzz target check that.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri, Version, header};

/// Header slots on the stack; a config allowing more parses on the heap.
const STACK_HEADERS: usize = 128;

/// What the buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// A complete head the engine serves, `len` bytes long.
    Head(Head),
    /// Not yet a complete head.
    Partial,
    /// A head (or bytes) the engine leaves to hyper, and why.
    Decline(Handoff),
}

/// Why the engine left a connection to hyper: the `reason` of
/// `floodgate_http1_engine_handoffs_total`, so an operator sees what traffic takes the dearer
/// path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Not HTTP/1.1 as hyper's settings read it; hyper answers 400.
    Malformed,
    Http10,
    BadMethod,
    Connect,
    BadFieldName,
    /// A coding other than `chunked` alone, or with a `Content-Length`.
    TransferEncoding,
    /// An upgrade request with a body.
    Upgrade,
    RepeatedContentLength,
    BadContentLength,
    /// The head passed `max-header-bytes`; hyper answers 431.
    HeadTooLarge,
    /// A target or field value the `http` types refuse.
    Unrepresentable,
}

impl Handoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Http10 => "http_1_0",
            Self::BadMethod => "bad_method",
            Self::Connect => "connect",
            Self::BadFieldName => "bad_field_name",
            Self::TransferEncoding => "transfer_encoding",
            Self::Upgrade => "upgrade",
            Self::RepeatedContentLength => "repeated_content_length",
            Self::BadContentLength => "bad_content_length",
            Self::HeadTooLarge => "head_too_large",
            Self::Unrepresentable => "unrepresentable",
        }
    }
}

/// A request head: where its parts are in the buffer, so the request is built from the same
/// bytes without copying them (`into_parts`).
#[derive(Debug)]
pub struct Head {
    pub len: usize,
    method: Method,
    target: Range<usize>,
    headers: Vec<(HeaderName, Range<usize>)>,
    pub body: BodyLength,
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
    /// `Expect: 100-continue` (the last `Expect` field decides, as in hyper).
    pub expect_continue: bool,
    /// An `Upgrade` field: the connection may become a tunnel after a 101.
    pub upgrade: bool,
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body (no framing field, or `Content-Length: 0`).
    Empty,
    /// `Content-Length`, more than 0.
    Bytes(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Parses the head at the start of `buf`, at most `max_headers` fields.
pub fn parse(buf: &[u8], max_headers: usize) -> Parsed {
    // Slots httparse fills, left uninitialised: zeroing 101 of them (3 KB) showed per request.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap = vec![MaybeUninit::uninit(); max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    // hyper's request settings are httparse's defaults: no obs-fold, no spaces before the
    // colon, single spaces in the request line.
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Decline(Handoff::Malformed),
    };
    if req.version != Some(1) {
        return Parsed::Decline(Handoff::Http10);
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Decline(Handoff::Malformed);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Decline(Handoff::BadMethod);
    };
    if method == Method::CONNECT {
        return Parsed::Decline(Handoff::Connect);
    }
    let mut head = Head {
        len,
        method,
        target: offset(buf, path.as_bytes()),
        headers: Vec::with_capacity(req.headers.len()),
        body: BodyLength::Empty,
        close: false,
        expect_continue: false,
        upgrade: false,
    };
    let mut length_seen = false;
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Decline(Handoff::BadFieldName);
        };
        match name {
            // Chunked alone, in one field, without a length: any other coding, a list, or
            // both framings (a smuggling shape, RFC 9112 section 6.3) stay with hyper.
            header::TRANSFER_ENCODING => {
                if length_seen || !h.value.eq_ignore_ascii_case(b"chunked") {
                    return Parsed::Decline(Handoff::TransferEncoding);
                }
                length_seen = true;
                head.body = BodyLength::Chunked;
            }
            // hyper's rule: any Upgrade field on HTTP/1.1 may switch; the route decides.
            header::UPGRADE => head.upgrade = true,
            header::EXPECT => {
                head.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            }
            header::CONTENT_LENGTH => {
                if head.body == BodyLength::Chunked {
                    return Parsed::Decline(Handoff::TransferEncoding);
                }
                if length_seen {
                    return Parsed::Decline(Handoff::RepeatedContentLength);
                }
                length_seen = true;
                match content_length(h.value) {
                    Some(0) => {}
                    Some(n) => head.body = BodyLength::Bytes(n),
                    None => return Parsed::Decline(Handoff::BadContentLength),
                }
            }
            header::CONNECTION => {
                head.close |= h
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            _ => {}
        }
        head.headers.push((name, offset(buf, h.value)));
    }
    if head.upgrade && head.body != BodyLength::Empty {
        // A body before the switch: rare, and hyper's to serve.
        return Parsed::Decline(Handoff::Upgrade);
    }
    Parsed::Head(head)
}

impl Head {
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// The request's parts, built over `raw` (the head's bytes, split off the buffer): the
    /// target and the field values are slices of it. `None` when a part is not what the
    /// `http` types accept (the caller then hands the connection to hyper, which answers it).
    pub fn into_parts(self, raw: &Bytes) -> Option<http::request::Parts> {
        let target = raw.get(self.target.clone())?;
        let uri = Uri::from_maybe_shared(raw.slice_ref(target)).ok()?;
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method;
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        // Sized once for the client's fields; the ones this hop adds are written beside the
        // map on the direct path (`request::headers::Forwarding`), not inserted.
        parts.headers.reserve(self.headers.len());
        for (name, at) in self.headers {
            let value = raw.get(at)?;
            // Unchecked, as Pingora does after httparse: checking again cost 1.5% of a proxied
            // request.
            // SAFETY: httparse has checked every byte of the value by HeaderValue's own rule
            // (HTAB, SP, visible ASCII, obs-text); `values_are_what_header_value_accepts`
            // compares the two over all 256 bytes, so an httparse that changed it fails there.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(raw.slice_ref(value)) };
            parts.headers.append(name, value);
        }
        Some(parts)
    }
}

/// Where `part` (a slice of `base`) is in `base`: how a parsed field is found again in the
/// bytes split off the buffer it was parsed from.
pub fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start.saturating_add(part.len())
}

/// A `Content-Length` value: digits only (no sign, no list, no spaces, as hyper requires of a
/// single field), at most 19 of them so it fits a u64 without overflow.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Head {
        match parse(raw, 101) {
            Parsed::Head(h) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    /// What `into_parts` takes unchecked: a head parses only with values HeaderValue accepts.
    #[test]
    fn values_are_what_header_value_accepts() {
        for b in (0..=255u8).filter(|b| !matches!(b, b'\r' | b'\n')) {
            let value = [b'a', b, b'b'];
            let mut raw = b"GET / HTTP/1.1\r\nhost: a\r\nx-v: ".to_vec();
            raw.extend_from_slice(&value);
            raw.extend_from_slice(b"\r\n\r\n");
            let parsed = parse(&raw, 101);
            assert_eq!(
                matches!(parsed, Parsed::Head(_)),
                HeaderValue::from_bytes(&value).is_ok(),
                "byte {b:#04x}: {parsed:?}"
            );
        }
    }

    fn declined(raw: &[u8]) -> Handoff {
        match parse(raw, 101) {
            Parsed::Decline(why) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn a_plain_request_is_built_from_its_own_bytes() {
        let raw = b"GET /a/b?c=d HTTP/1.1\r\nHost: x.test\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next";
        let h = head(raw);
        assert_eq!(h.len, raw.len() - b"GET /next".len());
        assert_eq!((h.body, h.close), (BodyLength::Empty, false));
        let bytes = Bytes::copy_from_slice(&raw[..h.len]);
        let p = h.into_parts(&bytes).expect("parts");
        assert_eq!(p.method, Method::GET);
        assert_eq!(p.uri, "/a/b?c=d");
        assert_eq!(p.headers["host"], "x.test");
        let xa: Vec<_> = p.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
    }

    #[test]
    fn a_length_and_close_are_read() {
        let h = head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\nConnection: keep-alive, Close\r\n\r\n");
        assert_eq!(
            (h.body, h.close, h.expect_continue),
            (BodyLength::Bytes(42), true, false)
        );
        let h = head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.body, BodyLength::Empty);
        let h = head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n");
        assert_eq!((h.body, h.expect_continue), (BodyLength::Chunked, true));
        // hyper reads the last Expect field only, and ignores expectations it does not know.
        let h = head(
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: x\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(!h.expect_continue);
        let h = head(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(h.upgrade && h.body == BodyLength::Empty);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", 101),
            Parsed::Partial
        ));
    }

    #[test]
    fn what_hyper_answers_is_left_to_hyper() {
        for (raw, why) in [
            (&b"GET / HTTP/1.0\r\n\r\n"[..], Handoff::Http10),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Handoff::Malformed),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Handoff::TransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Handoff::TransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Handoff::TransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                Handoff::TransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Handoff::RepeatedContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                Handoff::BadContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
                Handoff::BadContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Handoff::BadContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\n",
                Handoff::Upgrade,
            ),
            (b"CONNECT x:443 HTTP/1.1\r\n\r\n", Handoff::Connect),
            (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Handoff::Malformed),
            (b"GET / HTTP/1.1\r\nX : a\r\n\r\n", Handoff::Malformed),
            (b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", Handoff::Malformed),
            (b"GET / HTTP/1.1\rX: a\r\n\r\n", Handoff::Malformed),
            (b"GET  / HTTP/1.1\r\n\r\n", Handoff::Malformed),
        ] {
            assert_eq!(declined(raw), why, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn more_fields_than_allowed_are_declined() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..5 {
            raw.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&raw, 5), Parsed::Head(_)));
        assert!(matches!(parse(&raw, 4), Parsed::Decline(_)));
        assert!(matches!(parse(&raw, 200), Parsed::Head(_)));
    }

    #[test]
    fn content_length_is_digits_that_fit() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"18446744073709551615"), None);
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"1 "), None);
    }
}
