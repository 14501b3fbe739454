//! Host and path routing. Rules are tried in config order and the first match wins; a request
//! no rule matches goes to the listener's default backend, or gets 404.

use crate::config;

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches `a.example.com`, not `example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
struct Rule {
    host: HostMatch,
    path: PathMatch,
    backend: usize,
}

#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
}

impl Router {
    /// `backend_index` resolves a backend name (validated by config) to its index.
    pub fn new(routes: &[config::Route], backend_index: impl Fn(&str) -> Option<usize>) -> Self {
        let rules = routes
            .iter()
            .filter_map(|r| {
                let host = match r.host.as_deref() {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                        None => HostMatch::Exact(h.to_ascii_lowercase()),
                    },
                };
                let path = match (&r.path, &r.path_prefix) {
                    (Some(p), _) => PathMatch::Exact(p.clone()),
                    (None, Some(p)) => PathMatch::Prefix(p.clone()),
                    (None, None) => PathMatch::Any,
                };
                Some(Rule {
                    host,
                    path,
                    backend: backend_index(&r.backend)?,
                })
            })
            .collect();
        Self { rules }
    }

    /// The backends some rule leads to.
    pub fn backends(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().map(|r| r.backend)
    }

    /// `host` is the request's authority or Host header, with or without a port.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port).map(str::to_ascii_lowercase);
        self.rules
            .iter()
            .find(|r| host_matches(&r.host, host.as_deref()) && path_matches(&r.path, path))
            .map(|r| r.backend)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

fn host_matches(m: &HostMatch, host: Option<&str>) -> bool {
    match (m, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(e), Some(h)) => e == h,
        (HostMatch::Suffix(s), Some(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
        (_, None) => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Any => true,
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            // `/api` matches `/api` and `/api/x`, not `/apix`.
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.ends_with('/'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        host: Option<&str>,
        path: Option<&str>,
        prefix: Option<&str>,
        backend: &str,
    ) -> config::Route {
        config::Route {
            host: host.map(Into::into),
            path: path.map(Into::into),
            path_prefix: prefix.map(Into::into),
            backend: backend.into(),
        }
    }

    #[test]
    fn matrix() {
        let names = ["exact", "wild", "api", "login", "any"];
        let r = Router::new(
            &[
                route(Some("www.example.com"), None, None, "exact"),
                route(Some("*.example.com"), None, Some("/api"), "api"),
                route(Some("*.example.com"), None, None, "wild"),
                route(None, Some("/login"), None, "login"),
            ],
            |n| names.iter().position(|x| *x == n),
        );
        let name = |h: Option<&str>, p: &str| r.route(h, p).map(|i| names[i]);
        assert_eq!(
            name(Some("www.example.com"), "/api/x"),
            Some("exact"),
            "first match wins"
        );
        assert_eq!(
            name(Some("WWW.Example.com:8080"), "/"),
            Some("exact"),
            "case and port ignored"
        );
        assert_eq!(name(Some("a.example.com"), "/api"), Some("api"));
        assert_eq!(name(Some("a.example.com"), "/api/v1"), Some("api"));
        assert_eq!(
            name(Some("a.example.com"), "/apix"),
            Some("wild"),
            "prefix is per segment"
        );
        assert_eq!(
            name(Some("example.com"), "/"),
            None,
            "wildcard needs a label"
        );
        assert_eq!(name(Some("other.org"), "/login"), Some("login"));
        assert_eq!(name(Some("other.org"), "/login/x"), None, "exact path");
        assert_eq!(name(None, "/login"), Some("login"));
        assert_eq!(name(Some("[::1]:80"), "/x"), None);
    }
}
