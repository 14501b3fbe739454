//! One meaning per request: the authority and path floodgate routes, authorises, logs and
//! forwards are the same, decided here once, before anything reads the request.
//!
//! The policy (Envoy's `normalize_path: true` with `merge_slashes: true` is the reference):
//! - **Authority** (RFC 9112 section 3.2, RFC 9110 section 7.2): an HTTP/1.1 request without
//!   `Host`, or with more than one, is 400. A request target in absolute form names the
//!   authority, which replaces `Host`. In HTTP/2, `:authority` and `host` must agree. The host is
//!   lowercased and a trailing dot dropped (`Shop.Example.COM.` is `shop.example.com`); an
//!   authority with userinfo (`user@host`) is 400. The result is the one `Host` the request
//!   carries, and the URI's authority when it has one.
//! - **Path** (RFC 3986 section 6.2.2): percent-encoded unreserved characters are decoded
//!   (`/%61dmin` is `/admin`), other escapes uppercased, dot segments removed (`/x/../admin`),
//!   and repeated slashes merged (`//admin`). An escape that is not `%` and two hex digits is
//!   400. `%2F` stays encoded: decoding it would join segments the client kept apart. The
//!   query is not touched.
//!
//! `global.forward-path` says what reaches the backend: the normalised path (the default), or
//! the path as received, for backends that need the client's bytes. Routing, `allow`, `auth`,
//! `basic-auth` and the access log always see the normalised one.

use std::borrow::Cow;

use http::{HeaderValue, Request, Uri, header, uri::PathAndQuery};

use crate::proxy::error::ProxyError;

/// The path and query the client sent, kept in the request's extensions when
/// `forward-path: as-received` forwards them instead of the normalised ones.
#[derive(Debug, Clone)]
pub struct Received(pub PathAndQuery);

fn bad(reason: &str) -> ProxyError {
    ProxyError::BadRequest(reason.to_owned())
}

/// Puts `req` in its one canonical form (see the module doc). `keep_received`: remember the
/// path as received when normalisation changes it. A request already in canonical form (most
/// of them) is left untouched: no allocation, no rebuilt URI, no header written.
pub fn request<B>(req: &mut Request<B>, keep_received: bool) -> Result<(), ProxyError> {
    let authority = authority(req)?
        .filter(|a| {
            let header_same = req
                .headers()
                .get(header::HOST)
                .is_some_and(|h| h.as_bytes() == a.as_bytes());
            let uri_same = req
                .uri()
                .authority()
                .is_none_or(|u| u.as_str() == a.as_ref());
            !(header_same && uri_same)
        })
        .map(Cow::into_owned);
    let path = match req.uri().path_and_query() {
        Some(pq) => normalize_path(pq.path())?.map(|mut p| {
            if let Some(q) = pq.query() {
                p.push('?');
                p.push_str(q);
            }
            p
        }),
        None => None,
    };
    if authority.is_none() && path.is_none() {
        return Ok(());
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let (Some(a), Some(canonical)) = (&parts.authority, &authority)
        && a.as_str() != canonical
    {
        parts.authority = Some(
            canonical
                .parse()
                .map_err(|_| bad("the request's authority is not valid"))?,
        );
    }
    if let Some(normalized) = path {
        let normalized = PathAndQuery::try_from(normalized)
            .map_err(|_| bad("the request target is not valid"))?;
        let received = parts.path_and_query.replace(normalized);
        if keep_received && let Some(received) = received {
            req.extensions_mut().insert(Received(received));
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| bad("the request target is not valid"))?;
    if let Some(a) = authority {
        let value = HeaderValue::try_from(a).map_err(|_| bad("the host is not valid"))?;
        req.headers_mut().insert(header::HOST, value);
    }
    Ok(())
}

/// The request's canonical authority: `None` only for an HTTP/1.0 (or 0.9) request without
/// one, which routes as a request without a host.
fn authority<B>(req: &Request<B>) -> Result<Option<Cow<'_, str>>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host"));
    }
    let target = req.uri().authority();
    let chosen = match (target, host) {
        (Some(t), Some(h)) if req.version() == http::Version::HTTP_2 => {
            // RFC 9113 section 8.3.1: both name the same origin, or the request is malformed.
            let h = h.to_str().map_err(|_| bad("the Host is not valid"))?;
            if !canonical_host(t.as_str())?.eq(&canonical_host(h)?) {
                return Err(bad(":authority and Host disagree"));
            }
            t.as_str()
        }
        // Absolute form: the target's authority wins over any Host (RFC 9112 section 3.2.2).
        (Some(t), _) => t.as_str(),
        (None, Some(h)) => h.to_str().map_err(|_| bad("the Host is not valid"))?,
        (None, None) if req.version() == http::Version::HTTP_11 => {
            return Err(bad("an HTTP/1.1 request without Host"));
        }
        (None, None) => return Ok(None),
    };
    if req.version() == http::Version::HTTP_11 && host.is_none() {
        return Err(bad("an HTTP/1.1 request without Host"));
    }
    canonical_host(chosen).map(Some)
}

/// `authority` lowercased, without a trailing dot on its host, checked to be a host (a DNS
/// name, an IPv4 address, or an IPv6 literal in brackets) with an optional port, and no
/// userinfo. Stricter than RFC 3986's reg-name on purpose: a host that no DNS name can be
/// would only ever be a way to miss a route (found by the `request` fuzz target, which fed
/// `http`'s lenient authority parser brackets in the middle of a name).
fn canonical_host(authority: &str) -> Result<Cow<'_, str>, ProxyError> {
    if already_canonical(authority) {
        return Ok(Cow::Borrowed(authority));
    }
    canonicalize(authority)
}

/// `canonical_host` for every authority, the common ones included (see `already_canonical`).
fn canonicalize(authority: &str) -> Result<Cow<'_, str>, ProxyError> {
    let invalid = || bad("the Host is not a valid authority");
    if authority.is_empty() {
        return Err(bad("an empty Host"));
    }
    if authority.contains('@') {
        return Err(bad("userinfo in the authority"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or_else(invalid)?;
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| invalid())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(invalid)?),
        };
        (literal, port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| !label.is_empty())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(invalid());
        }
        (host, port)
    };
    let port = match port {
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let n: u16 = p.parse().map_err(|_| invalid())?;
            Some((p, n))
        }
        None => None,
    };
    // Already canonical (most requests): the authority itself, without an allocation.
    let bracketed = authority.starts_with('[');
    let same = !host.bytes().any(|b| b.is_ascii_uppercase())
        && (bracketed || !host.ends_with('.'))
        && port.is_none_or(|(p, _)| p == "0" || !p.starts_with('0'));
    if same {
        return Ok(Cow::Borrowed(authority));
    }
    let host = host
        .strip_suffix('.')
        .filter(|_| !bracketed)
        .unwrap_or(host);
    let mut out = String::with_capacity(authority.len() + 2);
    if bracketed {
        out.push('[');
    }
    out.push_str(&host.to_ascii_lowercase());
    if bracketed {
        out.push(']');
    }
    if let Some((_, n)) = port {
        out.push(':');
        out.push_str(&n.to_string());
    }
    Ok(Cow::Owned(out))
}

/// The common authority, a lower-case name or IPv4 address without a trailing dot and with an
/// optional port without leading zeros, recognised in one pass over its bytes: exactly inputs
/// that `canonical_host` would return as they are (a test checks every short string over the
/// bytes that matter), so a request's Host costs one scan instead of six.
fn already_canonical(authority: &str) -> bool {
    let b = authority.as_bytes();
    let (host, port) = match b.iter().rposition(|&c| c == b':') {
        Some(i) => (&b[..i], b.get(i + 1..)),
        None => (b, None),
    };
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    // A dot may not start the name, follow another, or end it.
    let mut after_dot = true;
    for &c in host {
        match c {
            b'.' if after_dot => return false,
            b'.' => after_dot = true,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => after_dot = false,
            _ => return false,
        }
    }
    if after_dot {
        return false;
    }
    match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && (p == b"0" || p.first() != Some(&b'0'))
                && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
        }
    }
}

/// `path` normalised, or `None` when it already is (the common case costs one scan and no
/// allocation). Paths not starting with `/` (`*`, an authority-form CONNECT) are left alone.
fn normalize_path(path: &str) -> Result<Option<String>, ProxyError> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let mut out = String::with_capacity(decoded.len());
    // RFC 3986 section 5.2.4 over segments, with empty segments (repeated slashes) merged.
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    // A trailing slash, `/.` or `/..` leaves the path naming a directory.
    let last = decoded.rsplit('/').next().unwrap_or_default();
    let dir = matches!(last, "" | "." | "..");
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if dir || segments.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// True when `path` has no escape, no empty segment (but a trailing slash) and no dot segment.
fn is_normal(path: &str) -> bool {
    if path.contains('%') {
        return false;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(s) = segments.next() {
        if s == "." || s == ".." || (s.is_empty() && segments.peek().is_some()) {
            return false;
        }
    }
    true
}

/// Decodes escapes of unreserved characters and uppercases the others; 400 for a `%` not
/// followed by two hex digits.
fn decode_unreserved(path: &str) -> Result<String, ProxyError> {
    let b = path.as_bytes();
    // Bytes, not chars: a path may hold UTF-8, which passes through untouched.
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |j: usize| {
            b.get(j)
                .and_then(|c| char::from(*c).to_digit(16))
                .ok_or_else(|| bad("a `%` in the path not followed by two hex digits"))
        };
        let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
        // Two hex digits make a value below 256.
        let v = u8::try_from(hi * 16 + lo).map_err(|_| bad("bad escape"))?;
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v);
        } else {
            out.extend_from_slice(format!("%{v:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was put in place of escapes, so the UTF-8 around them is intact.
    String::from_utf8(out).map_err(|_| bad("the path is not UTF-8"))
}

/// `crate::fuzz::request`: the bytes as `host\npath`, normalised twice.
#[cfg(feature = "fuzz")]
pub fn fuzz(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (host, target) = text.split_once('\n').unwrap_or(("a.example", &text));
    let Ok(req) = Request::get(target).header(header::HOST, host).body(()) else {
        return;
    };
    let mut req = req;
    if request(&mut req, true).is_err() {
        return;
    }
    let once = (req.uri().clone(), req.headers().get(header::HOST).cloned());
    let path = req.uri().path();
    if path.starts_with('/') {
        assert!(is_normal(path) || path.contains('%'), "{path}");
        assert!(!path.split('/').any(|s| s == "." || s == ".."), "{path}");
    }
    request(&mut req, true).expect("a normal request stays valid");
    let twice = (req.uri().clone(), req.headers().get(header::HOST).cloned());
    assert_eq!(once, twice, "normalisation is idempotent");
}

#[cfg(test)]
mod tests {

    /// Every string of up to five of the bytes that matter: where the one-pass check says
    /// "already canonical", the full check (without it) returns the authority itself.
    #[test]
    fn the_one_pass_check_agrees_with_the_full_one() {
        const BYTES: &[u8] = b"aA0.:-_[@9]";
        let mut s = Vec::new();
        let mut checked = 0;
        fn walk(s: &mut Vec<u8>, depth: usize, checked: &mut usize) {
            if let Ok(a) = std::str::from_utf8(s)
                && already_canonical(a)
            {
                *checked += 1;
                assert!(
                    matches!(canonicalize(a), Ok(Cow::Borrowed(b)) if b == a),
                    "{a:?}: {:?}",
                    canonicalize(a).ok()
                );
            }
            if depth == 5 {
                return;
            }
            for &b in BYTES {
                s.push(b);
                walk(s, depth + 1, checked);
                s.pop();
            }
        }
        walk(&mut s, 0, &mut checked);
        assert!(checked > 5_000, "{checked}");
        for a in ["example.com", "127.0.0.1:28190", "a-b_c.d:0", "x:65535"] {
            assert!(already_canonical(a), "{a}");
        }
        for a in [
            "Example.com",
            "x.:80",
            "x:080",
            "x:65536",
            "[::1]:80",
            "a..b",
            ".a",
            "a:",
        ] {
            assert!(!already_canonical(a), "{a}");
        }
    }

    use super::*;

    fn norm(p: &str) -> String {
        normalize_path(p)
            .expect("valid")
            .unwrap_or_else(|| p.to_owned())
    }

    #[test]
    fn paths_that_mean_admin_are_admin() {
        for p in [
            "/admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "///admin",
            "/x/../admin",
            "/./admin",
            "/x/y/../../admin",
            "/../admin",
            "/%2e%2e/admin",
            "/x/%2E%2E/admin",
            "/x//..//admin",
        ] {
            assert_eq!(norm(p), "/admin", "{p}");
        }
        assert_eq!(norm("/admin/"), "/admin/");
        assert_eq!(norm("/admin/."), "/admin/");
        assert_eq!(norm("/admin/x/.."), "/admin/");
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("//"), "/");
        // Reserved escapes stay, uppercased; an encoded slash never becomes a separator.
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/a%2a"), "/a%2A");
        assert_eq!(norm("/caf%C3%A9/%7euser"), "/caf%C3%A9/~user");
        assert_eq!(norm("/a%3f"), "/a%3F");
        assert_eq!(normalize_path("*").expect("ok"), None);
        assert_eq!(normalize_path("/plain/path").expect("ok"), None);
        assert_eq!(normalize_path("/dir/").expect("ok"), None);
        for p in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert!(normalize_path(p).is_err(), "{p}");
        }
    }

    fn req(version: http::Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(target).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    fn host_of(r: &Request<()>) -> Option<&str> {
        r.headers().get(header::HOST).and_then(|h| h.to_str().ok())
    }

    #[test]
    fn one_authority_per_request() {
        use http::Version;
        let mut r = req(Version::HTTP_11, "/x", &["Shop.Example.COM."]);
        request(&mut r, false).expect("ok");
        assert_eq!(host_of(&r), Some("shop.example.com"));
        let mut r = req(Version::HTTP_11, "/x", &["shop.example.com.:8080"]);
        request(&mut r, false).expect("ok");
        assert_eq!(host_of(&r), Some("shop.example.com:8080"));
        // Absolute form: the target's authority replaces Host, in the URI and the header.
        let mut r = req(
            Version::HTTP_11,
            "http://Admin.Example/x/../y",
            &["public.example"],
        );
        request(&mut r, false).expect("ok");
        assert_eq!(host_of(&r), Some("admin.example"));
        assert_eq!(r.uri().to_string(), "http://admin.example/y");
        for (target, hosts) in [
            ("/x", &[][..]),
            ("/x", &["a.example", "b.example"][..]),
            ("/x", &[""][..]),
            ("/x", &["a b"][..]),
            ("/x", &["user@a.example"][..]),
            ("http://user@a.example/x", &["a.example"][..]),
            ("http://a.example/x", &[][..]),
            // Not a host a DNS name or an address can be.
            ("/x", &["a[b]c"][..]),
            ("/x", &["a..b"][..]),
            ("/x", &["a.example:"][..]),
            ("/x", &["a.example:99999"][..]),
            ("/x", &["[zz]"][..]),
            ("/x", &["[::1]x"][..]),
            ("/x", &["a;b"][..]),
        ] {
            let mut r = req(Version::HTTP_11, target, hosts);
            assert!(request(&mut r, false).is_err(), "{target} {hosts:?}");
        }
        let mut r = req(Version::HTTP_11, "/x", &["[::1]:0080"]);
        request(&mut r, false).expect("an IPv6 literal with a port");
        assert_eq!(host_of(&r), Some("[::1]:80"));
        // HTTP/1.0 may go without Host.
        let mut r = req(Version::HTTP_10, "/x", &[]);
        request(&mut r, false).expect("ok");
        assert_eq!(host_of(&r), None);
        // HTTP/2: :authority and host must agree, in any case and with a trailing dot.
        let mut r = req(Version::HTTP_2, "https://a.example/x", &["A.example."]);
        request(&mut r, false).expect("agree");
        assert_eq!(host_of(&r), Some("a.example"));
        let mut r = req(Version::HTTP_2, "https://a.example/x", &["b.example"]);
        assert!(request(&mut r, false).is_err());
        let mut r = req(Version::HTTP_2, "https://a.example/x", &[]);
        request(&mut r, false).expect("no host header");
        assert_eq!(host_of(&r), Some("a.example"));
    }

    #[test]
    fn a_canonical_authority_is_itself_and_others_are_rewritten() {
        for a in [
            "a.example",
            "a.example:8080",
            "a.example:0",
            "[::1]",
            "[::1]:443",
            "10.0.0.1:80",
        ] {
            assert!(
                matches!(canonical_host(a), Ok(Cow::Borrowed(b)) if b == a),
                "{a}"
            );
        }
        for (a, c) in [
            ("A.example", "a.example"),
            ("a.example.", "a.example"),
            ("a.example.:080", "a.example:80"),
            ("[::ABCD]:00443", "[::abcd]:443"),
            ("a.example:00", "a.example:0"),
        ] {
            assert!(
                matches!(canonical_host(a), Ok(Cow::Owned(ref o)) if o == c),
                "{a}"
            );
        }
        for a in ["", "a..b", "[::1]x", "a:", "a:65536", "u@a", "a b"] {
            assert!(canonical_host(a).is_err(), "{a}");
        }
    }

    #[test]
    fn the_received_path_is_kept_only_when_asked_and_changed() {
        let mut r = req(http::Version::HTTP_11, "/%61dmin?q=%61", &["a.example"]);
        request(&mut r, true).expect("ok");
        assert_eq!(
            r.uri().path_and_query().map(|p| p.as_str()),
            Some("/admin?q=%61")
        );
        assert_eq!(
            r.extensions().get::<Received>().map(|p| p.0.as_str()),
            Some("/%61dmin?q=%61")
        );
        let mut r = req(http::Version::HTTP_11, "/%61dmin", &["a.example"]);
        request(&mut r, false).expect("ok");
        assert!(r.extensions().get::<Received>().is_none());
    }
}
