//! The body types the proxy passes around: what goes to a server and what goes back to the
//! client, both boxed so every path (hyper's client, the direct path, HTTP/2, error pages,
//! compression) yields one type.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies on their way to a server: the client's body, maybe cut at `max-body-bytes`.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
/// Response bodies on their way to the client.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A client's request body as the proxy takes it: hyper's (HTTP/2, and HTTP/1.1 where the
/// engine hands a connection to hyper) or the HTTP/1.1 engine's (`proxy/h1`).
pub trait ClientBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<T> ClientBody for T where
    T: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}
