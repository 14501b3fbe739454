//! Answers that are redirects, decided before any backend: a plain listener's
//! `redirect-to-https`, and a route's `redirect`.

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};

use crate::config;
use crate::proxy::{body::ProxyBody, error::ProxyError};

fn answer(code: u16, location: HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// The listener's `redirect-to-https`: the same host and target on `https://`; `None` for the
/// paths it leaves alone (ACME challenges) or a request without a usable host.
pub fn to_https<B>(r: &config::RedirectToHttps, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let path = req.uri().path();
    if r.except_prefixes
        .iter()
        .any(|p| path.starts_with(p.as_str()))
    {
        return None;
    }
    let host = host(req)?;
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = if r.port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{}{target}", r.port)
    };
    Some(answer(r.code, HeaderValue::from_str(&location).ok()?))
}

/// A route's `redirect`, ready to answer.
#[derive(Debug)]
pub struct RouteRedirect {
    to: To,
    code: u16,
}

#[derive(Debug)]
enum To {
    Location(HeaderValue),
    /// Without a trailing `/`: the request's path brings its own.
    Prefix {
        prefix: String,
        drop_query: bool,
    },
    /// The request's own URL with these parts changed (the Gateway API's RequestRedirect).
    Parts {
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: PathChange,
    },
}

#[derive(Debug)]
enum PathChange {
    Keep,
    Replace(String),
    /// `from` (the route's prefix, without a trailing `/`) becomes `to`.
    Prefix {
        from: String,
        to: String,
    },
}

/// The request's host without its port: the absolute-form target's, else the Host header's.
pub fn host<B>(req: &Request<B>) -> Option<String> {
    req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().to_owned())
    })
}

/// Where the request came in, for a redirect built from its own URL.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The request's host, without its port.
    pub host: Option<&'a str>,
    /// `http` or `https`: the listener's.
    pub scheme: &'static str,
    /// The listener's port.
    pub port: u16,
}

impl RouteRedirect {
    /// `None` for a config that validation refuses; `route_prefix` is the route's
    /// `path-prefix`, which `replace-prefix` replaces.
    pub fn new(cfg: &config::Redirect, route_prefix: Option<&str>) -> Option<Self> {
        let to = match (&cfg.location, &cfg.prefix) {
            (Some(l), None) => To::Location(HeaderValue::from_str(l).ok()?),
            (None, Some(p)) => To::Prefix {
                prefix: p.trim_end_matches('/').to_owned(),
                drop_query: cfg.drop_query,
            },
            (None, None) => To::Parts {
                scheme: cfg.scheme.clone(),
                hostname: cfg.hostname.clone(),
                port: cfg.port,
                path: match (&cfg.replace_path, &cfg.replace_prefix) {
                    (Some(p), _) => PathChange::Replace(p.clone()),
                    (None, Some(to)) => PathChange::Prefix {
                        from: route_prefix?.trim_end_matches('/').to_owned(),
                        to: to.trim_end_matches('/').to_owned(),
                    },
                    (None, None) => PathChange::Keep,
                },
            },
            _ => return None,
        };
        Some(Self { to, code: cfg.code })
    }

    /// The answer to a request for `uri`, which came in at `origin`.
    pub fn answer(&self, uri: &Uri, origin: Origin<'_>) -> Result<Response<ProxyBody>, ProxyError> {
        let location = match &self.to {
            To::Parts {
                scheme,
                hostname,
                port,
                path,
            } => {
                let scheme = scheme.as_deref().unwrap_or(origin.scheme);
                let host = hostname
                    .as_deref()
                    .or(origin.host)
                    .ok_or_else(|| ProxyError::BadRequest("no host to redirect to".into()))?;
                // The Gateway API: an explicit port, else the scheme's when it changes, else the
                // listener's; the scheme's well-known port is left out.
                let port = match (port, scheme == origin.scheme) {
                    (Some(p), _) => *p,
                    (None, false) => {
                        if scheme == "https" {
                            443
                        } else {
                            80
                        }
                    }
                    (None, true) => origin.port,
                };
                let well_known =
                    (scheme == "https" && port == 443) || (scheme == "http" && port == 80);
                let authority = if well_known {
                    host.to_owned()
                } else {
                    format!("{host}:{port}")
                };
                let p = uri.path();
                let new_path = match path {
                    PathChange::Keep => p.to_owned(),
                    PathChange::Replace(r) => r.clone(),
                    PathChange::Prefix { from, to } => {
                        let rest = p.strip_prefix(from.as_str()).unwrap_or(p);
                        match (to.as_str(), rest) {
                            ("", "") => "/".to_owned(),
                            ("", r) => r.to_owned(),
                            (t, r) => format!("{t}{r}"),
                        }
                    }
                };
                let query = uri.query().map_or(String::new(), |q| format!("?{q}"));
                HeaderValue::from_str(&format!("{scheme}://{authority}{new_path}{query}"))
                    .map_err(|_| ProxyError::BadRequest("unrepresentable redirect".into()))?
            }
            To::Location(l) => l.clone(),
            To::Prefix { prefix, drop_query } => {
                let path = if *drop_query {
                    uri.path()
                } else {
                    uri.path_and_query()
                        .map_or(uri.path(), http::uri::PathAndQuery::as_str)
                };
                HeaderValue::from_str(&format!("{prefix}{path}"))
                    .map_err(|_| ProxyError::BadRequest("unrepresentable redirect".into()))?
            }
        };
        Ok(answer(self.code, location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(location: Option<&str>, prefix: Option<&str>, drop_query: bool) -> RouteRedirect {
        RouteRedirect::new(
            &config::Redirect {
                location: location.map(Into::into),
                prefix: prefix.map(Into::into),
                drop_query,
                code: 301,
                ..config::Redirect::default()
            },
            None,
        )
        .unwrap()
    }

    const ORIGIN: Origin<'static> = Origin {
        host: Some("shop.example.com"),
        scheme: "http",
        port: 8080,
    };

    fn location(r: &RouteRedirect, uri: &str) -> String {
        let resp = r.answer(&uri.parse().unwrap(), ORIGIN).unwrap();
        assert_eq!(resp.status(), 301);
        resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn locations_are_fixed_or_keep_the_path() {
        let fixed = route(Some("/app/"), None, false);
        assert_eq!(location(&fixed, "/?a=1"), "/app/");
        let moved = route(None, Some("https://new.example.com/"), false);
        assert_eq!(
            location(&moved, "/a/b?x=1"),
            "https://new.example.com/a/b?x=1"
        );
        assert_eq!(location(&moved, "/"), "https://new.example.com/");
        let no_query = route(None, Some("https://new.example.com"), true);
        assert_eq!(location(&no_query, "/a?x=1"), "https://new.example.com/a");
    }

    #[test]
    fn redirects_from_parts_follow_the_gateway_api() {
        let parts = |f: &dyn Fn(&mut config::Redirect), prefix: Option<&str>| {
            let mut cfg = config::Redirect {
                code: 301,
                ..config::Redirect::default()
            };
            f(&mut cfg);
            RouteRedirect::new(&cfg, prefix).unwrap()
        };
        let https = parts(&|c| c.scheme = Some("https".into()), None);
        assert_eq!(
            location(&https, "/a?x=1"),
            "https://shop.example.com/a?x=1",
            "the scheme's port, left out"
        );
        let host = parts(&|c| c.hostname = Some("new.example.com".into()), None);
        assert_eq!(
            location(&host, "/a"),
            "http://new.example.com:8080/a",
            "the listener's port"
        );
        let port = parts(
            &|c| {
                c.scheme = Some("https".into());
                c.port = Some(8443);
            },
            None,
        );
        assert_eq!(location(&port, "/"), "https://shop.example.com:8443/");
        let full = parts(&|c| c.replace_path = Some("/moved".into()), None);
        assert_eq!(
            location(&full, "/a/b?q"),
            "http://shop.example.com:8080/moved?q"
        );
        let prefix = parts(&|c| c.replace_prefix = Some("/v2".into()), Some("/v1"));
        assert_eq!(
            location(&prefix, "/v1/users"),
            "http://shop.example.com:8080/v2/users"
        );
        assert_eq!(location(&prefix, "/v1"), "http://shop.example.com:8080/v2");
        let root = parts(&|c| c.replace_prefix = Some("/".into()), Some("/v1"));
        assert_eq!(
            location(&root, "/v1/users"),
            "http://shop.example.com:8080/users"
        );
        assert_eq!(location(&root, "/v1"), "http://shop.example.com:8080/");
    }

    #[test]
    fn https_redirects_keep_host_and_target() {
        let cfg = config::RedirectToHttps {
            port: 8443,
            ..config::RedirectToHttps::default()
        };
        let req = Request::get("/x?y=1")
            .header(header::HOST, "shop.example:80")
            .body(())
            .unwrap();
        let resp = to_https(&cfg, &req).unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "https://shop.example:8443/x?y=1"
        );
        let acme = Request::get("/.well-known/acme-challenge/t")
            .header(header::HOST, "shop.example")
            .body(())
            .unwrap();
        assert!(to_https(&cfg, &acme).is_none());
    }
}
