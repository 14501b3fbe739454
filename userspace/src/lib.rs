//! floodgate's userspace, as a library so the integration tests and benchmarks drive the same
//! code the binary runs. The binary (`main.rs`) is the CLI around it.
//!
//! The data path, in module order: `xdp` (the XDP program's loading, maps, counters and
//! pressure policy) -> `proxy::listener::server` (accept, limits) -> `proxy::session` (one
//! request's phases) -> `proxy::request` (what they decide with) -> `proxy::upstream` (the
//! backend side); `config` feeds all of them, `metrics` and `admin` report them. docs/architecture.md draws it.

pub mod access;
pub mod admin;
pub mod allocator;
pub mod cluster;
pub mod config;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod limits;
pub mod metrics;
pub mod privileges;
pub mod proxy;
pub mod rng;
pub mod tls;
pub mod xdp;
