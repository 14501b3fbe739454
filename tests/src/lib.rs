//! Test support, by what a test touches: `process` (child processes that clean up after
//! themselves even when a test panics), `xdp` (a `BPF_PROG_TEST_RUN` harness), `netns`
//! (network namespaces and veth pairs), `http` (requests, waiting, metrics), `tls`
//! (certificates), `packet` (frame builders) and `k8s` (the API server emulator). Everything
//! is re-exported at the crate root, so a test names `floodgate_tests::http_get`.

pub mod http;
pub mod k8s;
pub mod netns;
pub mod packet;
pub mod process;
pub mod tls;
pub mod xdp;

pub use http::*;
pub use netns::*;
pub use process::*;
pub use tls::*;
pub use xdp::*;
