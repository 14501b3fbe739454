//! Header rules from config (`request-headers`, `response-headers`): HAProxy's
//! `http-request set-header` / `del-header` and their `http-response` twins, ingress-nginx's
//! `add-headers` and `hsts`. Removals first, then sets, each set replacing every earlier value
//! of its header.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config;

#[derive(Debug, Default)]
pub struct Rules {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Rules {
    /// `None` when there is nothing to do. The config was validated, so a name or value that
    /// does not parse cannot happen; it would be skipped.
    pub fn new(cfg: &config::HeaderRules) -> Option<Self> {
        let set: Vec<_> = cfg
            .set
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        let remove: Vec<_> = cfg
            .remove
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        (!set.is_empty() || !remove.is_empty()).then_some(Self { set, remove })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_then_sets() {
        let cfg = config::HeaderRules {
            set: [("X-Frame-Options".to_owned(), "DENY".to_owned())].into(),
            remove: vec!["server".into(), "x-frame-options".into()],
        };
        let rules = Rules::new(&cfg).expect("rules");
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("nginx"));
        h.append("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        h.append("x-frame-options", HeaderValue::from_static("ALLOW-FROM x"));
        rules.apply(&mut h);
        assert!(!h.contains_key("server"));
        let xfo: Vec<_> = h.get_all("x-frame-options").iter().collect();
        assert_eq!(xfo, ["DENY"], "replaces every earlier value");
        assert!(Rules::new(&config::HeaderRules::default()).is_none());
    }
}
