//! Request rate per client source (`listeners[].rate-limit`), HAProxy's `http_req_rate` stick
//! table with `deny_status 429`, ingress-nginx's `limit-rps`. XDP's SYN buckets bound new
//! connections per source; this bounds the requests a source sends over the connections it
//! keeps open, which SYN limits never see.
//!
//! One token bucket per source prefix, in a table sharded by key so workers rarely contend
//! for one lock. The table is bounded: when a shard is full, buckets that refilled completely
//! (sources idle long enough) make room; when none did, the new source goes unlimited rather
//! than evicting a source that is being limited.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::RateLimit;

const SHARDS: usize = 16;
/// A full shard looks for refilled buckets at most this often: the sweep walks the whole
/// shard under its lock, and a crowd of new sources must not make every request pay it.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<u128, Bucket>,
    swept: Option<Instant>,
}

pub struct Limiter {
    settings: RateLimit,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

impl Limiter {
    pub fn new(settings: &RateLimit) -> Self {
        Self {
            settings: settings.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: settings.table_size.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Whether a reload with `settings` can keep this table (and every source's bucket).
    pub fn same_settings(&self, settings: &RateLimit) -> bool {
        &self.settings == settings
    }

    /// The source's key: its address cut to the configured prefix.
    fn key(&self, ip: IpAddr) -> u128 {
        // Tagged so an IPv4 key never equals an IPv6 one.
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let p = self.settings.source_prefix_v4.min(32);
                let masked = if p == 0 {
                    0
                } else {
                    bits & (u32::MAX << (32 - p))
                };
                (1 << 64) | u128::from(masked)
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let p = self.settings.source_prefix_v6.min(128);
                if p == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - p))
                }
            }
        }
    }

    /// Takes one request from `ip`'s bucket at `now`; `Err` with the time until the next
    /// token when the bucket is empty.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.settings.per_source.max(1));
        let burst = f64::from(match self.settings.burst {
            0 => self.settings.per_source.max(1),
            b => b,
        });
        let key = self.key(ip);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !shard.buckets.contains_key(&key) && shard.buckets.len() >= self.per_shard {
            if shard
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
            {
                // Sources whose bucket is full again have nothing to remember.
                shard.swept = Some(now);
                shard.buckets.retain(|_, b| {
                    b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
                });
            }
            if shard.buckets.len() >= self.per_shard {
                return Ok(());
            }
        }
        let b = shard.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Sources tracked, for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.buckets.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_source: u32, burst: u32, table_size: usize) -> Limiter {
        Limiter::new(&RateLimit {
            per_source,
            burst,
            table_size,
            ..RateLimit::default()
        })
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let l = limiter(10, 5, 1024);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check(a, t0), Ok(()));
        }
        let wait = l.check(a, t0).expect_err("burst spent");
        assert!(
            (Duration::from_millis(99)..=Duration::from_millis(101)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(l.check(b, t0), Ok(()), "another source has its own bucket");
        // 10/s: one more token after 100 ms, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(a, t1), Ok(()));
        assert!(l.check(a, t1).is_err());
        // Refilled to the burst, never past it.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(l.check(a, t2), Ok(()));
        }
        assert!(l.check(a, t2).is_err());
    }

    #[test]
    fn sources_are_keyed_by_prefix() {
        let l = Limiter::new(&RateLimit {
            per_source: 1,
            burst: 1,
            source_prefix_v4: 24,
            source_prefix_v6: 64,
            ..RateLimit::default()
        });
        let t = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.check(ip("198.51.100.7"), t).is_ok());
        assert!(l.check(ip("198.51.100.200"), t).is_err(), "same /24");
        assert!(
            l.check(ip("::ffff:198.51.100.9"), t).is_err(),
            "mapped IPv4 is IPv4"
        );
        assert!(l.check(ip("198.51.101.1"), t).is_ok(), "next /24");
        assert!(l.check(ip("2001:db8:0:1::1"), t).is_ok());
        assert!(l.check(ip("2001:db8:0:1:ffff::2"), t).is_err(), "same /64");
        assert!(l.check(ip("2001:db8:0:2::1"), t).is_ok(), "next /64");
    }

    #[test]
    fn a_full_table_drops_idle_sources_and_never_limits_a_newcomer_by_mistake() {
        let l = limiter(1, 2, SHARDS);
        let t = Instant::now();
        // One per shard at most: many sources, each spending a token, fill it.
        for i in 0..=255u8 {
            let _ = l.check(IpAddr::from([10, 0, 0, i]), t);
        }
        assert!(l.tracked() <= SHARDS);
        assert_eq!(l.tracked(), SHARDS, "256 sources fill 16 one-entry shards");
        // Nobody idle yet: a newcomer goes unlimited and untracked (3 requests pass a
        // burst of 2), rather than a limited source losing its bucket.
        let newcomer = IpAddr::from([10, 0, 1, 1]);
        for _ in 0..3 {
            assert!(l.check(newcomer, t).is_ok());
        }
        assert_eq!(l.tracked(), SHARDS);
        // Once the buckets refilled, their sources make room and the newcomer is limited.
        let later = t + Duration::from_secs(5);
        assert!(l.check(newcomer, later).is_ok());
        assert!(l.check(newcomer, later).is_ok());
        assert!(l.check(newcomer, later).is_err());
    }
}
