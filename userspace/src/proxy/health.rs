//! Server health and discovery, per backend: active checks (TCP connect or HTTP GET) with
//! HAProxy's `inter`/`rise`/`fall`, passive ejection after consecutive connect failures, and DNS
//! names re-resolved to all their A/AAAA records. Each runs as a task owned by the config
//! generation that started it, and stops with it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream, task::JoinHandle};
use tracing::{info, warn};

use super::pool::{Pool, Server};
use crate::config::{self, CheckKind};

/// Consecutive results per server, for rise/fall and passive ejection.
#[derive(Debug, Default)]
pub struct Streak {
    ok: AtomicU32,
    failed: AtomicU32,
}

impl Streak {
    /// Records a result; returns the new up/down state if it changed.
    fn record(&self, ok: bool, rise: u32, fall: u32, up: bool) -> Option<bool> {
        if ok {
            self.failed.store(0, Ordering::Relaxed);
            let n = self.ok.fetch_add(1, Ordering::Relaxed) + 1;
            (!up && n >= rise).then_some(true)
        } else {
            self.ok.store(0, Ordering::Relaxed);
            let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            (up && n >= fall).then_some(false)
        }
    }
}

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
            server.streak.failed.store(0, Ordering::Relaxed);
            server.set_up(true);
            info!(backend, server = %server.addr, "ejected server back in rotation");
        });
    }
}

async fn check_once(addr: SocketAddr, check: &config::HealthCheck) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        match &check.kind {
            CheckKind::Tcp => Some(true),
            CheckKind::Http => {
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: floodgate-health\r\nConnection: close\r\n\r\n",
                    check.path
                );
                stream.write_all(req.as_bytes()).await.ok()?;
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
        }
    };
    matches!(
        tokio::time::timeout(check.timeout.0, attempt).await,
        Ok(Some(true))
    )
}

/// Active checks of every server of `pool`, forever (the caller aborts the task).
pub fn spawn_checks(pool: Arc<Pool>, check: config::HealthCheck) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(check.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let servers = pool.servers();
            // Checked together, a round takes at most one timeout.
            let mut set = tokio::task::JoinSet::new();
            for (i, s) in servers.iter().enumerate() {
                let (addr, check) = (s.addr, check.clone());
                set.spawn(async move { (i, check_once(addr, &check).await) });
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
pub fn spawn_discovery(pool: Arc<Pool>, cfg: config::Backend) -> JoinHandle<()> {
    tokio::spawn(async move {
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
    fn rise_and_fall() {
        let s = Streak::default();
        assert_eq!(s.record(false, 2, 3, true), None);
        assert_eq!(s.record(false, 2, 3, true), None);
        assert_eq!(
            s.record(false, 2, 3, true),
            Some(false),
            "third failure: down"
        );
        assert_eq!(s.record(true, 2, 3, false), None);
        assert_eq!(
            s.record(true, 2, 3, false),
            Some(true),
            "second success: up"
        );
        assert_eq!(
            s.record(false, 2, 3, true),
            None,
            "one failure resets nothing yet"
        );
        assert_eq!(s.record(true, 2, 3, true), None);
    }
}
