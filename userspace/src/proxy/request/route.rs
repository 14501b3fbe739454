//! Host and path routing. Rules are tried in config order and the first match wins; a request
//! no rule matches goes to the listener's default backend, or gets 404.
//!
//! A request only looks at the rules its host can match: rules are indexed by exact host and
//! by wildcard suffix, so thousands of Ingress hosts cost a hash lookup, not a scan.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config;
use crate::proxy::{
    request::auth::Auth, request::basic::BasicAuth, request::cors::Cors,
    request::redirect::RouteRedirect,
};

/// A rule's host, also a passthrough host's (`passthrough.rs`).
#[derive(Debug, Clone)]
pub(in crate::proxy) enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches `a.example.com`, not `example.com`.
    Suffix(String),
}

impl HostMatch {
    /// An exact host or `*.` wildcard, in any case; `None` matches every host.
    pub(in crate::proxy) fn new(host: Option<&str>) -> Self {
        match host {
            None => Self::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => Self::Suffix(suffix.to_ascii_lowercase()),
                None => Self::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    /// `host` lowercase, without a port.
    pub(in crate::proxy) fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (Self::Any, _) => true,
            (Self::Exact(e), Some(h)) => e == h,
            (Self::Suffix(s), Some(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (_, None) => false,
        }
    }
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
struct Rule<B> {
    host: HostMatch,
    path: PathMatch,
    /// Headers that must all be there with these values.
    headers: Vec<(HeaderName, HeaderValue)>,
    target: Target<B>,
    rewrite: Option<Rewrite>,
    /// Client networks the rule serves; empty: all.
    allow: Vec<ipnet::IpNet>,
    auth: Option<Arc<Auth>>,
    basic: Option<Arc<BasicAuth>>,
    cors: Option<Arc<Cors>>,
    mirror: Option<B>,
    upgrades: Upgrades,
    /// Bit `i` set: served on listener `i`; 0: on every listener.
    listeners: u64,
    /// Any of these methods; empty: every method.
    methods: Vec<http::Method>,
    /// Query parameters that must be there with these values.
    query: Vec<(String, String)>,
    request_headers: Option<Arc<crate::proxy::request::headers::Rules>>,
    response_headers: Option<Arc<crate::proxy::request::headers::Rules>>,
}

#[derive(Debug, Clone)]
enum Target<B> {
    One(B),
    /// Backends and their weights (`split`): a draw below `total` goes to the first whose
    /// cumulated weight is above it, else to `last`, so a draw always lands somewhere.
    Split {
        others: Vec<(B, u32)>,
        last: B,
        /// The weights' sum, above 0.
        total: u32,
    },
    /// No backend: a redirect answers.
    Redirect(Arc<RouteRedirect>),
}

impl<B> Target<B> {
    fn pick(&self) -> Dest<'_, B> {
        match self {
            Target::One(b) => Dest::Backend(b),
            Target::Redirect(r) => Dest::Redirect(r),
            Target::Split {
                others,
                last,
                total,
            } => {
                let mut n = crate::rng::next() % u64::from(*total);
                for (b, w) in others {
                    if n < u64::from(*w) {
                        return Dest::Backend(b);
                    }
                    n -= u64::from(*w);
                }
                Dest::Backend(last)
            }
        }
    }
}

/// Where a matched rule sends a request.
#[derive(Debug)]
pub enum Dest<'a, B> {
    Backend(&'a B),
    /// A `redirect` route: no backend, the redirect answers.
    Redirect(&'a RouteRedirect),
}

impl<B> Clone for Dest<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Dest<'_, B> {}

/// How the path changes before the request leaves.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// `rewrite-prefix`: the matched prefix replaced.
    Prefix {
        /// The route's `path-prefix`, without a trailing `/`.
        from: String,
        /// `rewrite-prefix`, without a trailing `/` (`/` becomes empty).
        to: String,
    },
    /// `rewrite-target` with `path-regex`: the whole path becomes the target, its `$1`...
    /// filled from the regex's captures (nginx's `rewrite`).
    Regex { regex: regex::Regex, target: String },
}

impl Rewrite {
    fn prefix(from: &str, to: &str) -> Self {
        Rewrite::Prefix {
            from: from.trim_end_matches('/').to_owned(),
            to: to.trim_end_matches('/').to_owned(),
        }
    }

    /// `path`, which the route matched, rewritten: with `/api` to `/`, `/api/users` becomes
    /// `/users` and `/api` becomes `/`; with `^/api/v[0-9]+/(.*)` to `/$1`, `/api/v2/users`
    /// becomes `/users`.
    pub fn apply(&self, path: &str) -> String {
        let mut out = match self {
            Rewrite::Prefix { from, to } => {
                let rest = path.get(from.len()..).unwrap_or_default();
                let mut out = String::with_capacity(to.len() + rest.len() + 1);
                out.push_str(to);
                out.push_str(rest);
                out
            }
            Rewrite::Regex { regex, target } => {
                let mut out = String::with_capacity(target.len() + path.len());
                match regex.captures(path) {
                    Some(caps) => caps.expand(target, &mut out),
                    None => out.push_str(path),
                }
                out
            }
        };
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// The prefix taken off, for `X-Forwarded-Prefix` (`/` when it was the root); none for a
    /// regex rewrite, which may take anything off.
    pub fn forwarded_prefix(&self) -> Option<&str> {
        match self {
            Rewrite::Prefix { from, .. } if from.is_empty() => Some("/"),
            Rewrite::Prefix { from, .. } => Some(from),
            Rewrite::Regex { .. } => None,
        }
    }
}

/// Where a request goes: its backend, and the path rewrite of the route that matched.
#[derive(Debug)]
pub struct Routed<'a, B> {
    pub to: Dest<'a, B>,
    pub rewrite: Option<&'a Rewrite>,
    /// The client's address is outside the route's `allow` list: the answer is 403.
    pub forbidden: bool,
    /// The route's auth service, to ask before the request goes on.
    pub auth: Option<&'a Auth>,
    /// The route's htpasswd users, checked before that.
    pub basic: Option<&'a BasicAuth>,
    pub cors: Option<&'a Cors>,
    /// The backend that gets a copy of the request.
    pub mirror: Option<&'a B>,
    /// The protocols `Upgrade` may switch to.
    pub upgrades: &'a Upgrades,
    /// The route's own header rules, applied after the backend's.
    pub request_headers: Option<&'a crate::proxy::request::headers::Rules>,
    pub response_headers: Option<&'a crate::proxy::request::headers::Rules>,
}

impl<'a, B> Routed<'a, B> {
    /// The backend, unless a redirect answers.
    pub fn backend(&self) -> Option<&'a B> {
        match self.to {
            Dest::Backend(b) => Some(b),
            Dest::Redirect(_) => None,
        }
    }
}

/// What routing looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The authority or Host header, with or without a port.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: &'a HeaderMap,
    /// The client, checked against the matching rule's `allow`.
    pub client: IpAddr,
    /// The listener's place in the config.
    pub listener: usize,
}

/// The protocols a route lets clients switch to (`routes[].upgrades`).
#[derive(Debug, Clone)]
pub struct Upgrades(Vec<String>);

impl Upgrades {
    pub fn new(names: &[String]) -> Self {
        Self(names.iter().map(|n| n.to_ascii_lowercase()).collect())
    }

    /// Whether an `Upgrade` value names one protocol, and an allowed one.
    pub fn allows(&self, upgrade: &HeaderValue) -> bool {
        upgrade.to_str().is_ok_and(|v| {
            let v = v.trim();
            !v.contains(',') && self.0.iter().any(|a| a.eq_ignore_ascii_case(v))
        })
    }
}

/// WebSocket only: the routes' default, and requests no route matches.
pub static DEFAULT_UPGRADES: std::sync::LazyLock<Upgrades> =
    std::sync::LazyLock::new(|| Upgrades::new(&config::default_upgrades()));

/// `B` is what a rule leads to: the running generation's `Arc<Backend>` (`proxy::Routing`);
/// a backend's index in tests.
#[derive(Debug, Clone)]
pub struct Router<B> {
    rules: Vec<Rule<B>>,
    /// Indices of the rules for an exact host, each list ascending (config order).
    exact: HashMap<String, Vec<usize>>,
    /// Indices of the `*.example.com` rules, keyed `.example.com`.
    suffix: HashMap<String, Vec<usize>>,
    /// Indices of the rules without a host.
    any: Vec<usize>,
}

/// Rule lists one request merges; a host with more labels than this scans every rule.
const MAX_LISTS: usize = 8;

impl<B: Clone> Router<B> {
    /// A router without basic auth users (tests).
    #[cfg(test)]
    pub fn new(routes: &[config::Route], backend: impl Fn(&str) -> Option<B>) -> Self {
        Self::with_users(routes, &[], backend, |_| None)
    }

    /// `backend` resolves a backend name (validated by config); `basic` is each route's
    /// `basic-auth`, loaded (`basic::load`). A rule naming an unknown backend or listener is
    /// left out (validation refuses such a config first).
    pub fn with_users(
        routes: &[config::Route],
        basic: &[Option<Arc<BasicAuth>>],
        backend: impl Fn(&str) -> Option<B>,
        listener_index: impl Fn(&str) -> Option<usize>,
    ) -> Self {
        let rules = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let host = HostMatch::new(r.host.as_deref());
                let path = match (&r.path, &r.path_prefix, &r.path_regex) {
                    (Some(p), _, _) => PathMatch::Exact(p.clone()),
                    (None, Some(p), _) => PathMatch::Prefix(p.clone()),
                    (None, None, Some(re)) => PathMatch::Regex(regex::Regex::new(re).ok()?),
                    (None, None, None) => PathMatch::Any,
                };
                let target = if let Some(d) = &r.redirect {
                    Target::Redirect(Arc::new(RouteRedirect::new(d, r.path_prefix.as_deref())?))
                } else if r.split.is_empty() {
                    Target::One(backend(&r.backend)?)
                } else {
                    let mut others = r
                        .split
                        .iter()
                        .map(|s| Some((backend(&s.backend)?, s.weight)))
                        .collect::<Option<Vec<_>>>()?;
                    let total = others
                        .iter()
                        .try_fold(0u32, |sum, (_, w)| sum.checked_add(*w))?;
                    let (last, _) = others.pop()?;
                    (total > 0).then_some(Target::Split {
                        others,
                        last,
                        total,
                    })?
                };
                let headers = r
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        Some((
                            HeaderName::from_bytes(n.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect::<Option<Vec<_>>>()?;
                let rewrite = match (&r.path_prefix, &r.rewrite_prefix, &path, &r.rewrite_target) {
                    (Some(from), Some(to), _, _) => Some(Rewrite::prefix(from, to)),
                    (_, _, PathMatch::Regex(re), Some(target)) => Some(Rewrite::Regex {
                        regex: re.clone(),
                        target: target.clone(),
                    }),
                    _ => None,
                };
                Some(Rule {
                    host,
                    path,
                    headers,
                    target,
                    rewrite,
                    allow: r.allow.clone(),
                    auth: match &r.auth {
                        Some(a) => Some(Arc::new(Auth::new(a)?)),
                        None => None,
                    },
                    basic: basic.get(i).cloned().flatten(),
                    cors: match &r.cors {
                        Some(c) => Some(Arc::new(Cors::new(c)?)),
                        None => None,
                    },
                    mirror: match &r.mirror {
                        Some(m) => Some(backend(m)?),
                        None => None,
                    },
                    upgrades: Upgrades::new(&r.upgrades),
                    listeners: r
                        .listeners
                        .iter()
                        .map(|l| 1u64.checked_shl(u32::try_from(listener_index(l)?).ok()?))
                        .try_fold(0u64, |acc, bit| Some(acc | bit?))?,
                    methods: r
                        .methods
                        .iter()
                        .map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                        .collect::<Option<Vec<_>>>()?,
                    query: r
                        .query
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    request_headers: crate::proxy::request::headers::Rules::new(&r.request_headers)
                        .map(Arc::new),
                    response_headers: crate::proxy::request::headers::Rules::new(
                        &r.response_headers,
                    )
                    .map(Arc::new),
                })
            })
            .collect::<Vec<Rule<B>>>();
        let (mut exact, mut suffix, mut any) = (HashMap::new(), HashMap::new(), Vec::new());
        for (i, r) in rules.iter().enumerate() {
            match &r.host {
                HostMatch::Any => any.push(i),
                HostMatch::Exact(h) => exact.entry(h.clone()).or_insert_with(Vec::new).push(i),
                HostMatch::Suffix(s) => suffix.entry(s.clone()).or_insert_with(Vec::new).push(i),
            }
        }
        Self {
            rules,
            exact,
            suffix,
            any,
        }
    }

    /// The rule lists `host` can match: rules without a host, its exact ones, and those of
    /// each of its wildcard suffixes; `None` when there are more than `MAX_LISTS`.
    fn lists<'r>(&'r self, host: Option<&str>) -> Option<([&'r [usize]; MAX_LISTS], usize)> {
        let mut lists: [&[usize]; MAX_LISTS] = [&[]; MAX_LISTS];
        let mut n = 0;
        let mut push = |l: &'r [usize]| {
            if l.is_empty() {
                return true;
            }
            if n == MAX_LISTS {
                return false;
            }
            lists[n] = l;
            n += 1;
            true
        };
        push(&self.any);
        if let Some(h) = host {
            if let Some(l) = self.exact.get(h)
                && !push(l)
            {
                return None;
            }
            if !self.suffix.is_empty() {
                // `a.b.example.com`: `.b.example.com`, `.example.com`, `.com` (never the
                // whole host: a wildcard needs a label before it).
                for (i, _) in h.match_indices('.').filter(|(i, _)| *i > 0) {
                    if let Some(l) = self.suffix.get(&h[i..])
                        && !push(l)
                    {
                        return None;
                    }
                }
            }
        }
        Some((lists, n))
    }

    /// The backends some rule leads to.
    pub fn backends(&self) -> impl Iterator<Item = &B> + '_ {
        self.rules.iter().flat_map(|r| match &r.target {
            Target::One(b) => vec![b],
            Target::Split { others, last, .. } => others
                .iter()
                .map(|(b, _)| b)
                .chain(std::iter::once(last))
                .collect(),
            Target::Redirect(_) => Vec::new(),
        })
    }

    /// `host` is the request's authority or Host header, with or without a port; `client`
    /// the peer's address, checked against the matching rule's `allow` list.
    #[cfg(test)]
    pub fn route(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Option<Routed<'_, B>> {
        self.ask(&Ask {
            host,
            path,
            query: None,
            method: &http::Method::GET,
            headers,
            client,
            listener: 0,
        })
    }

    /// The rule that serves `a`: the first in config order that matches.
    pub fn ask(&self, a: &Ask<'_>) -> Option<Routed<'_, B>> {
        let Ask {
            host,
            path,
            headers,
            client,
            ..
        } = *a;
        let host = host.map(strip_port).map(str::to_ascii_lowercase);
        let bit = u32::try_from(a.listener)
            .ok()
            .and_then(|i| 1u64.checked_shl(i))
            .unwrap_or(0);
        let matches = |r: &Rule<B>| {
            r.host.matches(host.as_deref())
                && (r.listeners == 0 || r.listeners & bit != 0)
                && path_matches(&r.path, path)
                && (r.methods.is_empty() || r.methods.contains(a.method))
                && r.headers
                    .iter()
                    .all(|(n, v)| headers.get_all(n).iter().any(|h| h == v))
                && r.query
                    .iter()
                    .all(|(k, v)| query_value(a.query, k) == Some(v.as_str()))
        };
        let found = match self.lists(host.as_deref()) {
            // The lists merged in config order: the first rule that matches wins.
            Some((lists, n)) => {
                let mut at = [0usize; MAX_LISTS];
                loop {
                    let next = (0..n)
                        .filter_map(|k| lists[k].get(at[k]).map(|i| (*i, k)))
                        .min();
                    let Some((i, k)) = next else { break None };
                    at[k] += 1;
                    if let Some(r) = self.rules.get(i).filter(|r| matches(r)) {
                        break Some(r);
                    }
                }
            }
            None => self.rules.iter().find(|r| matches(r)),
        };
        found.map(|r| Routed {
            to: r.target.pick(),
            rewrite: r.rewrite.as_ref(),
            forbidden: !r.allow.is_empty() && !config::cidrs_contain(&r.allow, client),
            auth: r.auth.as_deref(),
            basic: r.basic.as_deref(),
            cors: r.cors.as_deref(),
            mirror: r.mirror.as_ref(),
            upgrades: &r.upgrades,
            request_headers: r.request_headers.as_deref(),
            response_headers: r.response_headers.as_deref(),
        })
    }
}

/// The first value of parameter `name` in `query`, as written (no percent-decoding: the
/// Gateway API matches query values exactly).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
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

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Any => true,
        PathMatch::Exact(p) => p == path,
        PathMatch::Regex(re) => re.is_match(path),
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
            ..config::Route::to(backend.into())
        }
    }

    #[test]
    fn methods_query_and_listeners_narrow_a_rule() {
        let routes = [
            config::Route {
                methods: vec!["POST".into()],
                ..route(None, None, Some("/api"), "0")
            },
            config::Route {
                query: [("v".to_owned(), "2".to_owned())].into(),
                ..route(None, None, Some("/api"), "1")
            },
            config::Route {
                listeners: vec!["https".into()],
                ..route(None, None, Some("/api"), "2")
            },
            route(None, None, Some("/api"), "3"),
        ];
        let r = Router::with_users(
            &routes,
            &[],
            |name| name.parse().ok(),
            |l| ["http", "https"].iter().position(|n| *n == l),
        );
        let headers = HeaderMap::new();
        let ask = |method: &http::Method, query: Option<&'static str>, listener: usize| {
            r.ask(&Ask {
                host: None,
                path: "/api/x",
                query,
                method,
                headers: &headers,
                client: IpAddr::from([192, 0, 2, 1]),
                listener,
            })
            .and_then(|x| x.backend().copied())
        };
        assert_eq!(ask(&http::Method::POST, None, 0), Some(0));
        assert_eq!(ask(&http::Method::GET, Some("a=1&v=2"), 0), Some(1));
        assert_eq!(
            ask(&http::Method::GET, Some("v=2&v=3"), 0),
            Some(1),
            "the first value counts"
        );
        assert_eq!(ask(&http::Method::GET, Some("v=3&v=2"), 1), Some(2));
        assert_eq!(ask(&http::Method::GET, Some("v=20"), 1), Some(2));
        assert_eq!(
            ask(&http::Method::GET, None, 0),
            Some(3),
            "not on listener 0"
        );
    }

    #[test]
    fn upgrades_name_one_allowed_protocol() {
        let u = Upgrades::new(&["websocket".into(), "TLS/1.0".into()]);
        for (v, ok) in [
            ("websocket", true),
            ("WebSocket", true),
            (" websocket ", true),
            ("tls/1.0", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("echo", false),
        ] {
            assert_eq!(u.allows(&HeaderValue::from_static(v)), ok, "{v}");
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
        let any = IpAddr::from([192, 0, 2, 1]);
        let name = |h: Option<&str>, p: &str| {
            r.route(h, p, &HeaderMap::new(), any)
                .and_then(|i| i.backend().copied())
                .map(|b| names[b])
        };
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

    #[test]
    fn rewrites_replace_the_matched_prefix_by_segment() {
        let cases = [
            // (path-prefix, rewrite-prefix, path, rewritten)
            ("/api", "/", "/api", "/"),
            ("/api", "/", "/api/", "/"),
            ("/api", "/", "/api/users/7", "/users/7"),
            ("/api/", "/", "/api/users", "/users"),
            ("/api", "/v2", "/api/users", "/v2/users"),
            ("/api", "/v2/", "/api", "/v2"),
            ("/api", "/v2/", "/api/", "/v2/"),
            ("/", "/app", "/x", "/app/x"),
            ("/", "/app", "/", "/app/"),
        ];
        for (from, to, path, want) in cases {
            let r = Router::new(
                &[config::Route {
                    rewrite_prefix: Some(to.into()),
                    ..route(None, None, Some(from), "b")
                }],
                |_| Some(0),
            );
            let routed = r
                .route(None, path, &HeaderMap::new(), IpAddr::from([192, 0, 2, 1]))
                .expect("the prefix matches");
            let rw = routed.rewrite.expect("a rewrite");
            assert_eq!(rw.apply(path), want, "{from} -> {to} on {path}");
        }
        let r = Router::new(&[route(None, None, Some("/api"), "b")], |_| Some(0));
        let any = IpAddr::from([192, 0, 2, 1]);
        assert!(
            r.route(None, "/api/x", &HeaderMap::new(), any)
                .unwrap()
                .rewrite
                .is_none()
        );
        assert_eq!(
            Rewrite::prefix("/api/", "/").forwarded_prefix(),
            Some("/api")
        );
        assert_eq!(Rewrite::prefix("/", "/app").forwarded_prefix(), Some("/"));
    }

    /// The host index gives the same answer as trying every rule in order, on a mix of exact,
    /// wildcard and host-less rules, deep hosts included.
    #[test]
    fn the_host_index_answers_as_a_scan_of_every_rule() {
        let hosts = [
            Some("a.example.com"),
            Some("*.example.com"),
            Some("*.y.example.com"),
            Some("x.y.example.com"),
            Some("*.j.y.example.com"),
            None,
        ];
        let paths = [(None, None), (None, Some("/api")), (Some("/login"), None)];
        let mut routes = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..60 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let (h, p) = (
                hosts[(seed % 6) as usize],
                paths[((seed >> 8) % 3) as usize],
            );
            // Backend `i` for rule `i`: the answer names the rule.
            routes.push(route(h, p.0, p.1, &i.to_string()));
        }
        let r = Router::new(&routes, |name| name.parse().ok());
        let any = IpAddr::from([192, 0, 2, 1]);
        let mut hits = 0;
        for host in [
            Some("a.example.com"),
            Some("A.Example.COM:8443"),
            Some("x.y.example.com"),
            Some("z.y.example.com"),
            Some("example.com"),
            Some("other.org"),
            Some("a.b.c.d.e.f.g.h.i.j.y.example.com"),
            None,
        ] {
            for path in ["/", "/api", "/api/x", "/login", "/apix"] {
                let got = r
                    .route(host, path, &HeaderMap::new(), any)
                    .and_then(|x| x.backend().copied());
                let lower = host.map(strip_port).map(str::to_ascii_lowercase);
                let scan = r.rules.iter().position(|rule| {
                    rule.host.matches(lower.as_deref()) && path_matches(&rule.path, path)
                });
                assert_eq!(got, scan, "{host:?} {path}");
                hits += usize::from(got.is_some());
            }
        }
        assert!(hits > 10, "the rules match something: {hits}");
    }

    #[test]
    fn regex_paths_and_their_rewrites() {
        let r = Router::new(
            &[config::Route {
                path_regex: Some("^/api/v[0-9]+/(.*)$".into()),
                rewrite_target: Some("/$1".into()),
                ..route(None, None, None, "b")
            }],
            |_| Some(0),
        );
        let any = IpAddr::from([192, 0, 2, 1]);
        let rewritten = |path: &str| {
            r.route(None, path, &HeaderMap::new(), any)
                .map(|routed| routed.rewrite.map(|rw| rw.apply(path)))
        };
        assert_eq!(rewritten("/api/v2/users/7"), Some(Some("/users/7".into())));
        assert_eq!(
            rewritten("/api/v10/"),
            Some(Some("/".into())),
            "an empty path is `/`"
        );
        assert_eq!(rewritten("/api/vx/users"), None, "no match, no route");
        assert_eq!(rewritten("/x/api/v1/a"), None, "anchored by `^`");
        let named = Rewrite::Regex {
            regex: regex::Regex::new("^/(?P<team>[a-z]+)/(?P<rest>.*)").unwrap(),
            target: "/teams/${team}/${rest}".into(),
        };
        assert_eq!(named.apply("/blue/a/b"), "/teams/blue/a/b");
        assert_eq!(named.forwarded_prefix(), None);
    }

    #[test]
    fn redirect_rules_have_no_backend() {
        let r = Router::new(
            &[
                config::Route {
                    redirect: Some(config::Redirect {
                        location: Some("/app/".into()),
                        code: 302,
                        ..config::Redirect::default()
                    }),
                    ..route(None, Some("/"), None, "")
                },
                route(None, None, None, "b"),
            ],
            |n| (n == "b").then_some(7),
        );
        let any = IpAddr::from([192, 0, 2, 1]);
        let root = r.route(None, "/", &HeaderMap::new(), any).unwrap();
        assert!(root.backend().is_none() && matches!(root.to, Dest::Redirect(_)));
        let other = r.route(None, "/x", &HeaderMap::new(), any).unwrap();
        assert_eq!(
            (
                other.backend().copied(),
                matches!(other.to, Dest::Backend(_))
            ),
            (Some(7), true)
        );
        assert_eq!(r.backends().copied().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn allow_lists_forbid_other_clients_of_the_matching_rule() {
        let r = Router::new(
            &[
                config::Route {
                    allow: vec![
                        "10.0.0.0/8".parse().unwrap(),
                        "2001:db8::/32".parse().unwrap(),
                    ],
                    ..route(None, None, Some("/admin"), "admin")
                },
                route(None, None, None, "web"),
            ],
            |n| Some(usize::from(n == "web")),
        );
        let forbidden = |ip: &str, path: &str| {
            let routed = r
                .route(None, path, &HeaderMap::new(), ip.parse().unwrap())
                .unwrap();
            (*routed.backend().unwrap(), routed.forbidden)
        };
        assert_eq!(forbidden("10.1.2.3", "/admin"), (0, false));
        assert_eq!(
            forbidden("::ffff:10.1.2.3", "/admin"),
            (0, false),
            "mapped IPv4"
        );
        assert_eq!(forbidden("2001:db8::7", "/admin/x"), (0, false));
        assert_eq!(
            forbidden("192.0.2.1", "/admin"),
            (0, true),
            "403, not the next rule"
        );
        assert_eq!(forbidden("192.0.2.1", "/"), (1, false));
    }

    #[test]
    fn canaries_by_header_and_by_weight() {
        let names = ["stable", "canary"];
        let index = |n: &str| names.iter().position(|x| *x == n);
        let r = Router::new(
            &[
                config::Route {
                    headers: [("X-Canary".to_owned(), "always".to_owned())].into(),
                    ..route(None, None, None, "canary")
                },
                config::Route {
                    backend: String::new(),
                    split: vec![
                        config::SplitTo {
                            backend: "stable".into(),
                            weight: 90,
                        },
                        config::SplitTo {
                            backend: "canary".into(),
                            weight: 10,
                        },
                    ],
                    ..route(None, None, None, "")
                },
            ],
            index,
        );
        let any = IpAddr::from([192, 0, 2, 1]);
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("always"));
        for _ in 0..100 {
            assert_eq!(
                r.route(None, "/", &h, any).unwrap().backend().copied(),
                Some(1)
            );
        }
        h.insert("x-canary", HeaderValue::from_static("never"));
        let n = 20_000;
        let canary = (0..n)
            .filter(|_| r.route(None, "/", &h, any).unwrap().backend() == Some(&1))
            .count();
        // 10% of 20,000 is 2,000, with a standard deviation of about 42.
        assert!(
            (1_700..=2_300).contains(&canary),
            "{canary} of {n} to the canary"
        );
        let mut both: Vec<usize> = r.backends().copied().collect();
        both.sort_unstable();
        both.dedup();
        assert_eq!(both, [0, 1]);
    }
}
