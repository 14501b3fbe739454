//! Header rules from config (`request-headers`, `response-headers`): HAProxy's
//! `http-request set-header` / `del-header` and their `http-response` twins, ingress-nginx's
//! `add-headers` and `hsts`. Removals first, then sets, each set replacing every earlier value
//! of its header.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config;

// The headers floodgate adds to every request, named once: a `&str` name is validated and
// looked up among the standard names at every use, which showed in profiles of this path.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The fields this hop adds to a request (`X-Forwarded-For`, `-Proto`, `-Port`, `-Host`,
/// `-Prefix`, `X-Real-IP`, `X-Request-Id`, and a `Host` the client left out), kept beside the
/// request's header map instead of inserted into it. The direct path (`upstream::direct`)
/// writes them after the client's fields: six map inserts a request, each hashing its name,
/// were the largest part of preparing a request for its server. Whatever reads or changes the
/// map (header rules, auth's answer, a mirror) or sends a copy of it (hyper's client, HTTP/2
/// servers) gets them moved in first (`upstream::backend::Upstream`), so every path sends the
/// same fields. Each replaces the client's fields of its name, which `replace_in` removes from
/// the map.
#[derive(Clone, Debug, Default)]
pub struct Forwarding {
    pub xff: Option<HeaderValue>,
    pub proto: Option<HeaderValue>,
    pub port: Option<HeaderValue>,
    pub real_ip: Option<HeaderValue>,
    pub forwarded_host: Option<HeaderValue>,
    /// Only when the map has no `Host`.
    pub host: Option<HeaderValue>,
    /// Only when the client sent none.
    pub request_id: Option<HeaderValue>,
    pub prefix: Option<HeaderValue>,
    /// The map has a `Host` of its own.
    pub has_host: bool,
}

/// Which of the names [`Forwarding`] may add a header map already has, found in one pass over
/// its (few) names rather than a hashed lookup per name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present {
    pub xff: bool,
    pub proto: bool,
    pub port: bool,
    pub real_ip: bool,
    pub forwarded_host: bool,
    pub host: bool,
    pub request_id: bool,
    pub prefix: bool,
}

impl Present {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut p = Self::default();
        for name in headers.keys() {
            match name.as_str() {
                "x-forwarded-for" => p.xff = true,
                "x-forwarded-proto" => p.proto = true,
                "x-forwarded-port" => p.port = true,
                "x-real-ip" => p.real_ip = true,
                "x-forwarded-host" => p.forwarded_host = true,
                "host" => p.host = true,
                "x-request-id" => p.request_id = true,
                "x-forwarded-prefix" => p.prefix = true,
                _ => {}
            }
        }
        p
    }
}

impl Forwarding {
    /// In the order they are written and inserted.
    fn each(&self) -> [(HeaderName, Option<&HeaderValue>); 8] {
        [
            (X_FORWARDED_FOR, self.xff.as_ref()),
            (X_FORWARDED_PROTO, self.proto.as_ref()),
            (X_FORWARDED_PORT, self.port.as_ref()),
            (X_REAL_IP, self.real_ip.as_ref()),
            (X_FORWARDED_HOST, self.forwarded_host.as_ref()),
            (http::header::HOST, self.host.as_ref()),
            (X_REQUEST_ID, self.request_id.as_ref()),
            (X_FORWARDED_PREFIX, self.prefix.as_ref()),
        ]
    }

    /// Removes from `headers` the client's fields that these replace (`present` says which
    /// it has, so an absent one costs no lookup).
    pub fn replace_in(&self, headers: &mut HeaderMap, present: Present) {
        for (name, set, there) in [
            (X_FORWARDED_FOR, self.xff.is_some(), present.xff),
            (X_FORWARDED_PROTO, self.proto.is_some(), present.proto),
            (X_FORWARDED_PORT, self.port.is_some(), present.port),
            (X_REAL_IP, self.real_ip.is_some(), present.real_ip),
            (
                X_FORWARDED_HOST,
                self.forwarded_host.is_some(),
                present.forwarded_host,
            ),
            (X_FORWARDED_PREFIX, self.prefix.is_some(), present.prefix),
        ] {
            if set && there {
                headers.remove(name);
            }
        }
    }

    /// The fields moved into `headers` (each replacing its name), for what reads the map.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.each() {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
    }

    /// The fields as HTTP/1.1 field lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.each() {
            if let Some(v) = value {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// A `Host` goes to the server, the client's or this one.
    pub fn has_host(&self) -> bool {
        self.has_host || self.host.is_some()
    }
}

/// Several `Cookie` fields made one, as RFC 9113 section 8.2.3 requires before an HTTP/2
/// request goes on in HTTP/1.1: browsers send each cookie as its own field over HTTP/2, and
/// many HTTP/1.1 servers read only the first `Cookie` line.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(http::header::COOKIE).iter();
    if all.nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(http::header::COOKIE, v);
    }
}

#[derive(Debug, Default)]
pub struct Rules {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Rules {
    /// `None` when there is nothing to do. The config was validated, so a name or value that
    /// does not parse cannot happen; it would be skipped.
    pub fn new(cfg: &config::HeaderRules) -> Option<Self> {
        let pairs = |m: &std::collections::BTreeMap<String, String>| -> Vec<_> {
            m.iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        let (set, add) = (pairs(&cfg.set), pairs(&cfg.add));
        let remove: Vec<_> = cfg
            .remove
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        (!set.is_empty() || !add.is_empty() || !remove.is_empty()).then_some(Self {
            set,
            add,
            remove,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_fields_are_joined() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1"]);
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.append("cookie", HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(
            h.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
    }

    #[test]
    fn removals_then_sets() {
        let cfg = config::HeaderRules {
            set: [("X-Frame-Options".to_owned(), "DENY".to_owned())].into(),
            remove: vec!["server".into(), "x-frame-options".into()],
            add: [("Vary".to_owned(), "Origin".to_owned())].into(),
        };
        let rules = Rules::new(&cfg).expect("rules");
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("nginx"));
        h.append("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        h.append("x-frame-options", HeaderValue::from_static("ALLOW-FROM x"));
        h.insert("vary", HeaderValue::from_static("Accept-Encoding"));
        rules.apply(&mut h);
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(
            vary,
            ["Accept-Encoding", "Origin"],
            "added after the values there"
        );
        assert!(!h.contains_key("server"));
        let xfo: Vec<_> = h.get_all("x-frame-options").iter().collect();
        assert_eq!(xfo, ["DENY"], "replaces every earlier value");
        assert!(Rules::new(&config::HeaderRules::default()).is_none());
    }
}

#[cfg(test)]
mod forwarding_tests {
    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    /// Written and inserted, the fields say the same; each replaces the client's of its name.
    #[test]
    fn written_and_inserted_fields_agree() {
        let mut h = map(&[
            ("host", "a"),
            ("x-real-ip", "203.0.113.9"),
            ("x-real-ip", "203.0.113.10"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "c"),
            ("accept", "*/*"),
        ]);
        let present = Present::of(&h);
        assert_eq!(
            present,
            Present {
                real_ip: true,
                proto: true,
                host: true,
                request_id: true,
                ..Present::default()
            }
        );
        let f = Forwarding {
            xff: Some(HeaderValue::from_static("192.0.2.1")),
            proto: Some(HeaderValue::from_static("http")),
            real_ip: Some(HeaderValue::from_static("192.0.2.1")),
            has_host: present.host,
            ..Forwarding::default()
        };
        f.replace_in(&mut h, present);
        let mut written = Vec::new();
        crate::proxy::h1::write::fields(&mut written, &h);
        f.write(&mut written);
        let mut inserted = h.clone();
        f.insert_into(&mut inserted);
        let mut from_map = Vec::new();
        crate::proxy::h1::write::fields(&mut from_map, &inserted);
        let lines = |b: &[u8]| {
            let mut l: Vec<String> = String::from_utf8_lossy(b)
                .lines()
                .map(str::to_owned)
                .collect();
            l.sort();
            l
        };
        assert_eq!(lines(&written), lines(&from_map));
        assert_eq!(
            lines(&written),
            [
                "accept: */*",
                "host: a",
                "x-forwarded-for: 192.0.2.1",
                "x-forwarded-proto: http",
                "x-real-ip: 192.0.2.1",
                "x-request-id: c",
            ]
        );
        assert!(f.has_host());
    }
}
