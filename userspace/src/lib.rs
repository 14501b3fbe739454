//! floodgate's userspace, as a library so the integration tests and benchmarks drive the same
//! code the binary runs. The binary (`main.rs`) is the CLI around it.
//!
//! The data path, in module order: `dataplane` (XDP load, attach, maps) -> `proxy::server`
//! (accept, limits) -> `proxy` (HTTP phases) -> `proxy::route` -> `proxy::backend`; `config`
//! feeds all of them, `stats` reads the kernel counters.

pub mod access;
pub mod admin;
pub mod batch;
pub mod config;
pub mod conntrack;
pub mod dataplane;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod limits;
pub mod metrics;
pub mod pressure;
pub mod privileges;
pub mod proxy;
pub mod rng;
pub mod stats;
pub mod syncookies;
pub mod tls;
