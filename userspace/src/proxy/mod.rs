//! The L7 proxy, in the order a connection meets it:
//!
//! - `listener/`: accept, connection limits, PROXY protocol, TLS passthrough and `mode: tcp`
//!   (`server.rs` drives each connection).
//! - `h1/`: floodgate's own HTTP/1.1 server side; hyper serves HTTP/2 and what `h1` leaves
//!   to it (HTTP/1.0, transfer codings other than chunked, malformed heads).
//! - `session.rs`: one request's phases over its per-request context (`Session`):
//!   `request_filter` -> `upstream_request` -> `forward` -> `response_filter` -> `logging`.
//!   The module doc lists what each phase decides.
//! - `request/`: what the phases use to decide: routing, redirects, rate limits, CORS, auth,
//!   basic auth, forwarding headers, header rules, normalisation, compression.
//! - `upstream/`: the backend side: the `Backend` runtime value and its transports, pools with
//!   maxconn and queue, health, connecting, mirroring, sticky sessions.
//! - `generation.rs`: a config generation (`Routing`) and each listener's current one
//!   (`ListenerCtx`); `timeout.rs`: HAProxy's client-side timeouts; `error.rs`: errors as
//!   statuses; `body.rs`, `worker.rs`, `prefixed.rs` (a stream with bytes read ahead),
//!   `upgrade.rs` (a client connection after a 101, from either server side): shared types.

pub mod body;
pub mod error;
pub mod fields;
pub mod generation;
pub mod h1;
pub mod listener;
pub mod prefixed;
pub mod request;
pub mod session;
pub mod timeout;
pub mod upgrade;
pub mod upstream;
pub mod worker;
