//! One error type for the request path, and the one place that maps it to a status code.

use http::StatusCode;

/// Where a failure came from: it decides the status and whether a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("the client's address is not in the route's allow list")]
    Forbidden,
    /// The auth service answered 401: 401 with its challenge, or a redirect to sign in.
    #[error("the auth service asks the client to sign in")]
    Unauthorized {
        challenge: Option<http::HeaderValue>,
        signin: Option<http::HeaderValue>,
    },
    #[error("the auth service refused the request")]
    AuthForbidden,
    #[error("the auth service failed: {0}")]
    AuthFailed(String),
    #[error("backend `{backend}` has no server available")]
    NoServer { backend: String },
    #[error("backend `{backend}`: queue full")]
    QueueFull { backend: String },
    #[error("backend `{backend}`: no server slot within the queue timeout")]
    QueueTimeout { backend: String },
    #[error("connecting to {server} failed: {reason}")]
    Connect { server: String, reason: String },
    #[error("connecting to {server} timed out")]
    ConnectTimeout { server: String },
    #[error("{server} did not answer within the server timeout")]
    ServerTimeout { server: String },
    #[error("{server} failed: {reason}")]
    Upstream { server: String, reason: String },
    /// The server's connection closed or reset before any byte of a response: the request
    /// may be sent again elsewhere when its method is idempotent (HAProxy's `retry-on
    /// empty-response`, Envoy's `retry_on: reset`).
    #[error("{server} closed the connection before any response")]
    EmptyResponse { server: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request target of {len} bytes, over the {max} allowed")]
    UriTooLong { len: usize, max: usize },
    #[error("request body of {len} bytes, over the {max} allowed")]
    BodyTooLarge { len: u64, max: u64 },
    #[error("chunked request body over max-body-bytes")]
    BodyOverLimit,
    #[error("internal error: {0}")]
    Internal(String),
    /// The client's source is over `rate-limit.per-source`; it may try again after this long.
    #[error("over the request rate of this source; next in {retry_after:?}")]
    RateLimited { retry_after: std::time::Duration },
}

/// The statuses floodgate answers by itself, which `error-pages` may dress.
pub const OWN_STATUSES: [u16; 12] = [302, 400, 401, 403, 404, 413, 414, 429, 500, 502, 503, 504];

/// A page file is refused: the config naming it is refused with it.
#[derive(Debug, thiserror::Error)]
#[error("error-pages.{status}: {reason}")]
pub struct PageError {
    status: u16,
    reason: String,
}

/// `error-pages`, read: per status, the body and its content type.
#[derive(Debug, Default)]
pub struct Pages(std::collections::HashMap<u16, (bytes::Bytes, http::HeaderValue)>);

/// Pages are read into memory once; a bigger file is not a page.
const MAX_PAGE: u64 = 64 * 1024;

impl Pages {
    pub fn load(
        pages: &std::collections::BTreeMap<u16, std::path::PathBuf>,
    ) -> Result<Self, PageError> {
        let mut out = std::collections::HashMap::new();
        for (&status, path) in pages {
            let fail = |reason: String| PageError { status, reason };
            if !OWN_STATUSES.contains(&status) {
                return Err(fail(format!(
                    "floodgate never answers {status} by itself; it can dress {OWN_STATUSES:?}"
                )));
            }
            let meta =
                std::fs::metadata(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            if meta.len() > MAX_PAGE {
                return Err(fail(format!("{}: over {MAX_PAGE} bytes", path.display())));
            }
            let body = std::fs::read(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("html" | "htm") => "text/html; charset=utf-8",
                Some("json") => "application/json",
                _ => "text/plain; charset=utf-8",
            };
            out.insert(status, (body.into(), http::HeaderValue::from_static(kind)));
        }
        Ok(Self(out))
    }

    /// The page for `status`, if one was configured.
    pub fn get(&self, status: StatusCode) -> Option<&(bytes::Bytes, http::HeaderValue)> {
        self.0.get(&status.as_u16())
    }
}

impl From<super::upstream::pool::PoolError> for ProxyError {
    fn from(e: super::upstream::pool::PoolError) -> Self {
        use super::upstream::pool::PoolError;
        match e {
            PoolError::NoServer(backend) => ProxyError::NoServer { backend },
            PoolError::QueueFull(backend) => ProxyError::QueueFull { backend },
            PoolError::QueueTimeout { backend, .. } => ProxyError::QueueTimeout { backend },
        }
    }
}

impl ProxyError {
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoRoute
            | ProxyError::Forbidden
            | ProxyError::Unauthorized { .. }
            | ProxyError::AuthForbidden
            | ProxyError::BadRequest(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyOverLimit
            | ProxyError::RateLimited { .. } => Origin::Client,
            ProxyError::NoServer { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. }
            | ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ServerTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::EmptyResponse { .. }
            | ProxyError::AuthFailed(_) => Origin::Upstream,
            ProxyError::Internal(_) => Origin::Internal,
        }
    }

    /// The `kind` label of `floodgate_http_errors_total`: bounded, stable, no details.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Forbidden => "forbidden",
            ProxyError::Unauthorized { .. } => "unauthorized",
            ProxyError::AuthForbidden => "auth_forbidden",
            ProxyError::AuthFailed(_) => "auth_failed",
            ProxyError::NoServer { .. } => "no_server",
            ProxyError::QueueFull { .. } => "queue_full",
            ProxyError::QueueTimeout { .. } => "queue_timeout",
            ProxyError::Connect { .. } => "connect",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::ServerTimeout { .. } => "server_timeout",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::EmptyResponse { .. } => "empty_response",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit => "body_too_large",
            ProxyError::Internal(_) => "internal",
            ProxyError::RateLimited { .. } => "rate_limited",
        }
    }

    /// True when sending the request to another server is safe: it never reached a server,
    /// or (`idempotent` requests only) the server closed without answering a byte.
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } => true,
            ProxyError::EmptyResponse { .. } => idempotent,
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Forbidden | ProxyError::AuthForbidden => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized {
                signin: Some(_), ..
            } => StatusCode::FOUND,
            ProxyError::Unauthorized { signin: None, .. } => StatusCode::UNAUTHORIZED,
            ProxyError::AuthFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::NoServer { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::EmptyResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::ServerTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A short body that names the status, never internals (addresses, causes).
    pub fn body(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "404 Not Found\n",
            StatusCode::FORBIDDEN => "403 Forbidden\n",
            StatusCode::UNAUTHORIZED => "401 Unauthorized\n",
            StatusCode::FOUND => "302 Found\n",
            StatusCode::BAD_REQUEST => "400 Bad Request\n",
            StatusCode::URI_TOO_LONG => "414 URI Too Long\n",
            StatusCode::PAYLOAD_TOO_LARGE => "413 Content Too Large\n",
            StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
            StatusCode::BAD_GATEWAY => "502 Bad Gateway\n",
            StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
            StatusCode::TOO_MANY_REQUESTS => "429 Too Many Requests\n",
            _ => "500 Internal Server Error\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("fg-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let html = dir.join("503.html");
        std::fs::write(&html, "<h1>back soon</h1>").expect("write");
        let big = dir.join("big.txt");
        std::fs::write(&big, vec![b'x'; 70 * 1024]).expect("write");
        let pages = |p: &[(u16, &std::path::Path)]| {
            Pages::load(&p.iter().map(|(s, f)| (*s, f.to_path_buf())).collect())
        };
        let p = pages(&[(503, &html)]).expect("a page");
        let (body, kind) = p.get(StatusCode::SERVICE_UNAVAILABLE).expect("503");
        assert_eq!(
            (&body[..], kind.as_bytes()),
            (&b"<h1>back soon</h1>"[..], &b"text/html; charset=utf-8"[..])
        );
        assert!(p.get(StatusCode::BAD_GATEWAY).is_none());
        for (status, path, why) in [
            (200, html.as_path(), "never answers 200"),
            (503, dir.join("missing.html").as_path(), "missing.html"),
            (503, big.as_path(), "over 65536 bytes"),
        ] {
            let e = pages(&[(status, path)]).expect_err(why).to_string();
            assert!(
                e.starts_with(&format!("error-pages.{status}: ")) && e.contains(why),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn statuses_and_retryability() {
        let s = || "10.0.0.1:80".to_string();
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(
            ProxyError::NoServer {
                backend: "a".into()
            }
            .status(),
            503
        );
        assert_eq!(
            ProxyError::Connect {
                server: s(),
                reason: "refused".into()
            }
            .status(),
            502
        );
        assert_eq!(ProxyError::ConnectTimeout { server: s() }.status(), 504);
        assert_eq!(ProxyError::ServerTimeout { server: s() }.status(), 504);
        assert!(
            ProxyError::Connect {
                server: s(),
                reason: String::new()
            }
            .retryable(false)
        );
        assert!(!ProxyError::ServerTimeout { server: s() }.retryable(true));
        // A server that closed without a byte: again elsewhere, for idempotent methods only.
        let empty = ProxyError::EmptyResponse { server: s() };
        assert!(empty.retryable(true) && !empty.retryable(false));
        assert_eq!(empty.status(), 502);
        assert!(
            !ProxyError::Upstream {
                server: s(),
                reason: String::new()
            }
            .body()
            .contains("10.0.0.1")
        );
    }
}
