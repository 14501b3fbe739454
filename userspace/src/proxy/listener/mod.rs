//! The accept side: binding and accepting under the connection limits (`server`), a new
//! socket served before it is registered with the event loop (`lazy`), connections per client
//! address (`connlimit`), the PROXY protocol (`proxyproto`) and TLS passthrough
//! (`passthrough`), before any HTTP is read.

pub mod balance;
pub mod connlimit;
pub mod lazy;
pub mod passthrough;
pub mod proxyproto;
pub mod server;
