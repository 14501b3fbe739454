//! Answers that are redirects, decided before any backend: a plain listener's
//! `redirect-to-https`, and a route's `redirect`.

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};

use crate::config;
use crate::proxy::{ProxyBody, error::ProxyError};

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
    let host = req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().to_owned())
    })?;
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
}

impl RouteRedirect {
    /// `None` for a config that validation refuses.
    pub fn new(cfg: &config::Redirect) -> Option<Self> {
        let to = match (&cfg.location, &cfg.prefix) {
            (Some(l), None) => To::Location(HeaderValue::from_str(l).ok()?),
            (None, Some(p)) => To::Prefix {
                prefix: p.trim_end_matches('/').to_owned(),
                drop_query: cfg.drop_query,
            },
            _ => return None,
        };
        Some(Self { to, code: cfg.code })
    }

    /// The answer to a request for `uri`.
    pub fn answer(&self, uri: &Uri) -> Result<Response<ProxyBody>, ProxyError> {
        let location = match &self.to {
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
        RouteRedirect::new(&config::Redirect {
            location: location.map(Into::into),
            prefix: prefix.map(Into::into),
            drop_query,
            code: 301,
        })
        .unwrap()
    }

    fn location(r: &RouteRedirect, uri: &str) -> String {
        let resp = r.answer(&uri.parse().unwrap()).unwrap();
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
