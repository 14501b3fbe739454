//! What a request is and what it may do, before and after a backend: its one meaning
//! (`normalize`), redirects, rate limits, CORS, external and basic auth, forwarded headers,
//! header rules, routing to a backend (`route`), and response compression. The folder is not
//! named `http`: in `proxy/` that name is the `http` crate's.

pub mod auth;
pub mod basic;
pub mod compress;
pub mod cors;
pub mod forwarded;
pub mod headers;
pub mod normalize;
pub mod ratelimit;
pub mod redirect;
pub mod route;
