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

impl From<super::pool::PoolError> for ProxyError {
    fn from(e: super::pool::PoolError) -> Self {
        use super::pool::PoolError;
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
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyOverLimit => "body_too_large",
            ProxyError::Internal(_) => "internal",
            ProxyError::RateLimited { .. } => "rate_limited",
        }
    }

    /// True when the request never reached a server, so sending it to another is safe.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. }
        )
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
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
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
            .retryable()
        );
        assert!(!ProxyError::ServerTimeout { server: s() }.retryable());
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
