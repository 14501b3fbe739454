//! External authentication (`routes[].auth`), ingress-nginx's `auth-url`: before a request
//! goes to its backend, a GET with the client's headers asks an auth service (oauth2-proxy,
//! Authelia, a team's own) whether it may. 2xx lets it through, with the auth response's
//! chosen headers (the user's name, say) added for the backend; 401 answers 401, or redirects
//! to the sign-in page when one is configured; 403 answers 403; anything else, or no answer
//! within the timeout, is the auth service's failure and answers 500, as ingress-nginx does.
//! No request goes to the backend unless the auth service said yes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::config;
use crate::proxy::error::ProxyError;

/// Request headers never sent to the auth service: they describe the client's connection
/// or body, and the auth request is a body-less GET on a connection of its own.
const NOT_FORWARDED: [HeaderName; 8] = [
    header::CONNECTION,
    crate::proxy::request::headers::KEEP_ALIVE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

pub struct Auth {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: Uri,
    /// The sign-in URL, `{url}` standing for the original URL, percent-encoded.
    signin: Option<String>,
    copy: Vec<HeaderName>,
    timeout: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `None` when `url` does not parse; config validation refused that already.
    pub fn new(cfg: &config::Auth) -> Option<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.timeout.0));
        connector.set_nodelay(true);
        Some(Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_timer(TokioTimer::new())
                .build(connector),
            url: cfg.url.parse().ok()?,
            signin: cfg.signin.clone(),
            copy: cfg
                .response_headers
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            timeout: cfg.timeout.0,
        })
    }

    /// Removes the headers the auth service's answer hands to the backend
    /// (`response-headers`) from the client's request, whether or not the answer carries them.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for n in &self.copy {
            headers.remove(n);
        }
    }

    /// Asks the auth service about `req` (`scheme` is the listener's, `client` the peer's
    /// address as a header value). `Ok`: let it through, with these headers for the backend.
    pub async fn check<B>(
        &self,
        req: &Request<B>,
        scheme: &str,
        client: &HeaderValue,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
        let original = original_url(req.uri(), req.headers(), scheme);
        let parts = req;
        let mut req = Request::get(self.url.clone())
            .body(Empty::new())
            .map_err(|e| ProxyError::AuthFailed(e.to_string()))?;
        let h = req.headers_mut();
        for (n, v) in parts.headers() {
            if !NOT_FORWARDED.contains(n) && n != header::HOST {
                h.append(n.clone(), v.clone());
            }
        }
        let value = |s: &str| {
            HeaderValue::from_str(s)
                .map_err(|_| ProxyError::BadRequest("unrepresentable URL".into()))
        };
        // The request goes in HTTP/1.1, with one Cookie line.
        crate::proxy::request::headers::join_cookies(h);
        h.insert("x-original-url", value(&original)?);
        h.insert("x-original-method", value(parts.method().as_str())?);
        h.insert("x-auth-request-redirect", value(&original)?);
        h.insert(
            crate::proxy::request::headers::X_FORWARDED_FOR,
            client.clone(),
        );
        h.insert(
            crate::proxy::request::headers::X_FORWARDED_PROTO,
            value(scheme)?,
        );
        if let Some(host) = host_of(parts.uri(), parts.headers()) {
            h.insert(
                crate::proxy::request::headers::X_FORWARDED_HOST,
                value(host)?,
            );
        }
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| ProxyError::AuthFailed("no answer within the timeout".into()))?
            .map_err(|e| ProxyError::AuthFailed(e.to_string()))?;
        let status = resp.status();
        let headers = resp.headers();
        if status.is_success() {
            let add = self
                .copy
                .iter()
                .flat_map(|n| headers.get_all(n).iter().map(|v| (n.clone(), v.clone())))
                .collect();
            return Ok(add);
        }
        match status {
            StatusCode::UNAUTHORIZED => Err(ProxyError::Unauthorized {
                challenge: headers.get(header::WWW_AUTHENTICATE).cloned(),
                signin: self.signin.as_deref().and_then(|s| {
                    HeaderValue::from_str(&s.replace("{url}", &encode(&original))).ok()
                }),
            }),
            StatusCode::FORBIDDEN => Err(ProxyError::AuthForbidden),
            s => Err(ProxyError::AuthFailed(format!(
                "the auth service answered {s}"
            ))),
        }
    }
}

fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The URL the client asked for, as its browser would show it.
fn original_url(uri: &Uri, headers: &HeaderMap, scheme: &str) -> String {
    let target = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    format!(
        "{scheme}://{}{target}",
        host_of(uri, headers).unwrap_or_default()
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a URL inside a query.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_url_is_rebuilt_and_encoded() {
        let req = Request::get("/app/x?a=1&b=2")
            .header("host", "shop.example")
            .body(())
            .expect("request");
        let url = original_url(req.uri(), req.headers(), "https");
        assert_eq!(url, "https://shop.example/app/x?a=1&b=2");
        assert_eq!(
            encode(&url),
            "https%3A%2F%2Fshop.example%2Fapp%2Fx%3Fa%3D1%26b%3D2"
        );
    }
}
