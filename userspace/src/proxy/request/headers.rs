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
