//! Server health and discovery, per backend: active checks (TCP connect, HTTP GET, or the gRPC
//! health protocol) with
//! HAProxy's `inter`/`rise`/`fall`, passive ejection after consecutive connect failures, and DNS
//! names re-resolved to all their A/AAAA records. Each runs as a task owned by the config
//! generation that started it, and stops with it.

use std::{net::SocketAddr, sync::Arc};

use tokio::{io::AsyncWriteExt as _, task::JoinHandle};
use tracing::{info, warn};

use crate::proxy::{
    upstream::connect::{Dial, ServerStream},
    upstream::pool::{Pool, Server},
};
use crate::{
    config::{self, CheckKind},
    tls::ClientTls,
};

/// Passive health: called by the request path after a connect attempt.
pub fn observe(pool: &Pool, server: &Arc<Server>, connected: bool, passive: &config::Passive) {
    if passive.fall == 0 {
        return;
    }
    if let Some(false) = server
        .streak
        .record(connected, 1, passive.fall, server.is_up())
    {
        server.set_up(false);
        warn!(backend = %pool.name, server = %server.addr, fails = passive.fall, eject = ?passive.eject.0, "server ejected after consecutive connect failures");
        let (server, eject, backend) = (server.clone(), passive.eject.0, pool.name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(eject).await;
            // Active checks, when configured, may have decided otherwise meanwhile; with none,
            // the server gets traffic again and the next failures eject it again.
            server.streak.reset_failures();
            server.set_up(true);
            info!(backend, server = %server.addr, "ejected server back in rotation");
        });
    }
}

/// `dial` connects as requests do: over TLS when the backend has `tls` (HAProxy checks a
/// server with `ssl` over SSL too), so a TCP check then passes once the handshake does.
async fn check_once(addr: SocketAddr, check: &config::HealthCheck, dial: &Dial) -> bool {
    let attempt = async {
        let mut stream = dial.connect(addr).await.ok()?;
        match &check.kind {
            CheckKind::Tcp => Some(true),
            CheckKind::Http => {
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: floodgate-health\r\nConnection: close\r\n\r\n",
                    check.path
                );
                stream.write_all(req.as_bytes()).await.ok()?;
                stream.flush().await.ok()?;
                let mut buf = [0u8; 16];
                let mut n = 0;
                while n < 12 {
                    use tokio::io::AsyncReadExt as _;
                    let r = stream.read(&mut buf[n..]).await.ok()?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                // "HTTP/1.1 200": 2xx and 3xx are healthy, as in HAProxy.
                Some(n >= 12 && matches!(buf[9], b'2' | b'3'))
            }
            CheckKind::Grpc => grpc_serving(stream, addr, &check.service).await,
        }
    };
    matches!(
        tokio::time::timeout(check.timeout.0, attempt).await,
        Ok(Some(true))
    )
}

/// The gRPC health protocol's Check call (`grpc.health.v1`) over HTTP/2: `Some(true)` when
/// the server answers SERVING with grpc-status 0; `None` when it does not answer.
async fn grpc_serving(stream: ServerStream, addr: SocketAddr, service: &str) -> Option<bool> {
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    if !stream.speaks_h2() {
        return None;
    }
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    // Ends when `send` is dropped and the call is done, or with the check's timeout.
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "floodgate-health")
        .body(Full::new(grpc_health_request(service)))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?;
    conn.abort();
    // A call that fails at once may answer in headers only ("trailers-only").
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"));
    Some(
        parts.status == http::StatusCode::OK
            && status.is_some_and(|s| s == "0")
            && grpc_health_serving(&body.to_bytes()),
    )
}

/// A gRPC message (uncompressed, length-prefixed) holding `HealthCheckRequest { service = 1 }`.
fn grpc_health_request(service: &str) -> bytes::Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0); // not compressed
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

/// Whether a gRPC response body is one uncompressed `HealthCheckResponse` whose `status`
/// (field 1) is SERVING (1). Anything else, unknown or malformed, is not healthy.
fn grpc_health_serving(body: &[u8]) -> bool {
    let Some((&0, rest)) = body.split_first() else {
        return false;
    };
    let Some((len, msg)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let Some(msg) = msg.get(..u32::from_be_bytes(*len) as usize) else {
        return false;
    };
    let mut fields = msg;
    let mut status = 0; // UNKNOWN when absent
    while !fields.is_empty() {
        let Some((tag, rest)) = varint(fields) else {
            return false;
        };
        fields = rest;
        match tag & 7 {
            0 => {
                let Some((v, rest)) = varint(fields) else {
                    return false;
                };
                if tag >> 3 == 1 {
                    status = v;
                }
                fields = rest;
            }
            2 => {
                let Some((n, rest)) = varint(fields) else {
                    return false;
                };
                let Some(rest) = usize::try_from(n).ok().and_then(|n| rest.get(n..)) else {
                    return false;
                };
                fields = rest;
            }
            _ => return false,
        }
    }
    status == 1
}

/// A protobuf varint and what follows it.
fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

/// Active checks of every server of `pool`, forever (the caller aborts the task).
pub fn spawn_checks(
    pool: Arc<Pool>,
    check: config::HealthCheck,
    tls: Option<Arc<ClientTls>>,
    mut committed: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Checks are not connects of live traffic: no connect-time histogram.
    let dial = Dial {
        timeout: check.timeout.0,
        connect_time: None,
        tls,
    };
    tokio::spawn(async move {
        // Not before the generation is committed: a refused reload's checks never run.
        if committed.wait_for(|c| *c).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(check.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let servers = pool.servers();
            // Checked together, a round takes at most one timeout.
            let mut set = tokio::task::JoinSet::new();
            for (i, s) in servers.iter().enumerate() {
                let (addr, check, dial) = (s.addr, check.clone(), dial.clone());
                set.spawn(async move { (i, check_once(addr, &check, &dial).await) });
            }
            let mut results = vec![false; servers.len()];
            while let Some(Ok((i, ok))) = set.join_next().await {
                results[i] = ok;
            }
            for (s, ok) in servers.iter().zip(results) {
                if let Some(up) = s.streak.record(ok, check.rise, check.fall, s.is_up()) {
                    s.set_up(up);
                    if up {
                        info!(backend = %pool.name, server = %s.addr, "server UP (health check)");
                    } else {
                        warn!(backend = %pool.name, server = %s.addr, "server DOWN (health check)");
                    }
                }
            }
        }
    })
}

/// Resolves every server spec: literal addresses as they are, DNS names to all their records.
/// A name that fails to resolve keeps its previous addresses (`previous`), so a DNS outage does
/// not empty a backend.
pub async fn resolve(cfg: &config::Backend, previous: &[Arc<Server>]) -> Vec<Arc<Server>> {
    let mut out = Vec::new();
    for spec in &cfg.servers {
        let (weight, maxconn) = (spec.weight(), spec.maxconn(cfg.maxconn_server));
        if let Some(addr) = spec.socket_addr() {
            out.push(Arc::new(Server::new(addr, weight, maxconn)));
            continue;
        }
        match tokio::net::lookup_host(spec.address()).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                out.extend(
                    addrs
                        .into_iter()
                        .map(|a| Arc::new(Server::new(a, weight, maxconn))),
                );
            }
            Err(e) => {
                warn!(backend = %cfg.name, name = %spec.address(), error = %e, "DNS resolution failed; keeping the previous addresses");
                let port = spec
                    .address()
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok());
                out.extend(
                    previous
                        .iter()
                        .filter(|s| Some(s.addr.port()) == port)
                        .cloned(),
                );
            }
        }
    }
    out
}

/// Re-resolves the backend's DNS names every `resolve-interval`; a changed address set replaces
/// the pool's servers without touching requests in flight.
pub fn spawn_discovery(
    pool: Arc<Pool>,
    cfg: config::Backend,
    mut committed: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if committed.wait_for(|c| *c).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(cfg.resolve_interval.0);
        tick.tick().await;
        loop {
            tick.tick().await;
            let current = pool.servers();
            let fresh = resolve(&cfg, &current).await;
            let mut a: Vec<SocketAddr> = current.iter().map(|s| s.addr).collect();
            let mut b: Vec<SocketAddr> = fresh.iter().map(|s| s.addr).collect();
            a.sort();
            b.sort();
            if a != b {
                info!(backend = %cfg.name, servers = ?b, "servers changed (DNS)");
                pool.set_servers(fresh);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages() {
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_health_request("pkg.Svc")[..],
            &[
                0, 0, 0, 0, 9, 0x0a, 7, b'p', b'k', b'g', b'.', b'S', b'v', b'c'
            ]
        );
        let long = "s".repeat(200);
        let req = grpc_health_request(&long);
        assert_eq!(&req[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);

        assert!(grpc_health_serving(&[0, 0, 0, 0, 2, 0x08, 1]), "SERVING");
        assert!(
            !grpc_health_serving(&[0, 0, 0, 0, 2, 0x08, 2]),
            "NOT_SERVING"
        );
        assert!(!grpc_health_serving(&[0, 0, 0, 0, 0]), "UNKNOWN (empty)");
        assert!(
            !grpc_health_serving(&[1, 0, 0, 0, 2, 0x08, 1]),
            "compressed"
        );
        assert!(!grpc_health_serving(&[0, 0, 0, 0, 3, 0x08, 1]), "truncated");
        assert!(!grpc_health_serving(&[0, 0, 0]), "no prefix");
        assert!(!grpc_health_serving(&[0, 0, 0, 0, 1, 0x08]), "cut varint");
        // Unknown fields are skipped: a string field 2, then status.
        assert!(grpc_health_serving(&[
            0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 1
        ]));
        assert!(
            !grpc_health_serving(&[0, 0, 0, 0, 5, 0x12, 2, b'h', b'i', 0x08, 1]),
            "the prefix cuts the status off"
        );
    }
}
