//! The backend side: a backend's servers, slots and queue (`pool`, with HAProxy's maxconn and
//! queue), their health (`health`), connecting (`connect`), the three transports (`direct`,
//! hyper's pooled client in `backend`, HTTP/2 in `h2c`), mirroring and sticky sessions.

pub mod backend;
pub mod connect;
pub mod direct;
pub mod h2c;
pub mod health;
pub mod mirror;
pub mod pool;
pub mod pooled;
pub mod sticky;
