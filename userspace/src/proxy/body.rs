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
