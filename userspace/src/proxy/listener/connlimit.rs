//! Connections held at once per client address (`listeners[].max-connections-per-source`):
//! ingress-nginx's `limit-connections`, HAProxy's `tcp-request connection reject if
//! { src_conn_cur ge N }`. XDP's SYN buckets bound how fast a source opens connections; this
//! bounds how many it keeps, which a slow client (slowloris) or a leaky pool grows without ever
//! opening them fast.
//!
//! A count per source, in shards so workers rarely contend for a lock; an entry lives while
//! its source has a connection open, so the table is bounded by `maxconn`. A source is an IPv4
//! address, or an IPv6 /64: one host holds a whole /64 (SLAAC, privacy addresses), as XDP's
//! per-source buckets count it.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, RandomState},
    net::IpAddr,
    sync::{Arc, Mutex},
};

const SHARDS: usize = 16;

pub struct PerSource {
    max: u32,
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
    hasher: RandomState,
}

/// The client already holds `max-connections-per-source` connections.
#[derive(Debug, thiserror::Error)]
#[error("the client holds its maximum of connections")]
pub struct OverLimit;

/// One counted connection; dropping it gives the place back.
pub struct Held {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        })
    }

    /// Whether a reload with `max` can keep this table (and every source's count).
    pub fn same_settings(&self, max: u32) -> bool {
        self.max == max
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let i = (self.hasher.hash_one(ip) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more connection from `ip`, or `None` when its source holds `max`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let ip = source(ip);
        let mut shard = self.shard(ip);
        let n = shard.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Held {
            table: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds now.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> u32 {
        self.shard(source(ip))
            .get(&source(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// The source `ip` counts under: the IPv4 address (IPv4-mapped ones too), or the IPv6 /64.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut shard = self.table.shard(self.ip);
        if let Some(n) = shard.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_max_and_closing_frees_a_place() {
        let t = PerSource::new(2);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = t.admit(a).unwrap();
        let _second = t
            .admit(mapped)
            .expect("the same source, as an IPv4-mapped address");
        assert!(t.admit(a).is_none(), "a third is refused");
        let _other = t.admit(b).expect("other sources are not affected");
        drop(first);
        assert_eq!(t.held(a), 1);
        let _again = t.admit(a).expect("a place came free");
        // A host rotating through its /64 is one source.
        let c: IpAddr = "2001:db8::2".parse().unwrap();
        let _c = t.admit(c).expect("a second address of the same /64");
        let d: IpAddr = "2001:db8:0:0:ffff::9".parse().unwrap();
        assert!(
            t.admit(d).is_none(),
            "a third of the same /64 is over the limit"
        );
        let e: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(t.admit(e).is_some(), "another /64 is another source");
        assert!(t.same_settings(2) && !t.same_settings(3));
    }

    #[test]
    fn entries_go_with_their_last_connection() {
        let t = PerSource::new(1);
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            drop(t.admit(ip).unwrap());
        }
        let left: usize = t.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(left, 0);
    }
}
