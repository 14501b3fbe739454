//! When the XDP SYN rate limits apply (`xdp.pressure`).
//!
//! Rate limits that are always on either throttle a busy legitimate address (a NAT gateway, a
//! load balancer without client-IP preservation) or, set loose enough not to, never engage when
//! a flood comes. So in `auto` mode they engage only under SYN pressure that the proxy measures,
//! and release once it is gone:
//! - **unanswered SYNs**: SYNs XDP admitted that never became a connection floodgate accepted
//!   (spoofed sources never answer the SYN-ACK), above `unanswered-syn-rate` per second or half
//!   the accepted rate, whichever is larger;
//! - **the kernel's own signs**: SYN cookies sent (the SYN queue overflowed), accept queue
//!   overflows and SYN queue drops (`/proc/net/netstat`, in floodgate's network namespace).
//!
//! The limits stay engaged `hold` after the last sign. An `auto` global budget is set at
//! engagement to twice the busiest second of the minute before (at least 1,000 SYNs a second)
//! of what the budget will have to admit: new sources' connections when verified sources skip
//! the budget (`verified-ttl` above 0, the default), every accepted connection otherwise. So it
//! follows what the node's clients need, and a flood gets no more than that into the kernel.
//! Every engagement and release is logged and counted.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::{config, xdp::dataplane::Pressured};

/// The lowest `auto` global budget, SYNs per second.
pub const AUTO_FLOOR: u32 = 1000;
/// How far back the accepted rate's peak is looked for.
const PEAK_WINDOW: Duration = Duration::from_secs(60);

/// One reading of the counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// SYNs XDP admitted, since load.
    pub syns: u64,
    /// Connections floodgate accepted, since start.
    pub accepted: u64,
    /// The kernel's pressure counters summed (`kernel_signs`), when readable.
    pub kernel: Option<u64>,
    /// SYNs the global budget refused (dropped or answered with an XDP cookie), since load.
    pub over_budget: u64,
    /// Sources accepted for the first time, since start (`VerifiedSources::new_sources`);
    /// `None` when verified sources do not skip the budget.
    pub new_sources: Option<u64>,
}

/// A change of state, for the caller to publish, log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Engaged(Pressured),
    Released,
}

pub struct Monitor {
    unanswered_rate: u32,
    hold: Duration,
    last: Option<Sample>,
    engaged_until: Option<Instant>,
    /// (when, SYNs per second the budget would have had to admit) of recent ticks while not
    /// engaged: new sources' connections, or all accepted ones (`Sample::new_sources`).
    budgeted_rates: std::collections::VecDeque<(Instant, f64)>,
}

impl Monitor {
    /// `None` unless `pressure.mode` is `auto`.
    pub fn new(p: &config::Pressure) -> Option<Self> {
        (p.mode == config::PressureMode::Auto).then(|| Self {
            unanswered_rate: p.unanswered_syn_rate,
            hold: p.hold.0,
            last: None,
            engaged_until: None,
            budgeted_rates: std::collections::VecDeque::new(),
        })
    }

    pub fn engaged(&self) -> bool {
        self.engaged_until.is_some()
    }

    /// Takes one reading; returns a change of state.
    pub fn tick(&mut self, now: Sample) -> Option<Change> {
        let last = self.last.replace(now)?;
        let dt = now.at.saturating_duration_since(last.at).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let syns = now.syns.saturating_sub(last.syns) as f64 / dt;
        let accepted = now.accepted.saturating_sub(last.accepted) as f64 / dt;
        let kernel = match (now.kernel, last.kernel) {
            (Some(a), Some(b)) => a.saturating_sub(b),
            _ => 0,
        };
        let budgeted = match (now.new_sources, last.new_sources) {
            (Some(a), Some(b)) => a.saturating_sub(b) as f64 / dt,
            _ => accepted,
        };
        let unanswered = (syns - accepted).max(0.0);
        // Going over the budget is pressure too, and the only sign left once XDP answers the
        // flood with cookies.
        let over_budget = now.over_budget > last.over_budget;
        let sign = kernel > 0
            || over_budget
            || unanswered > f64::from(self.unanswered_rate).max(accepted / 2.0);
        if !self.engaged() {
            self.budgeted_rates.push_back((now.at, budgeted));
        }
        while self
            .budgeted_rates
            .front()
            .is_some_and(|(at, _)| now.at.saturating_duration_since(*at) > PEAK_WINDOW)
        {
            self.budgeted_rates.pop_front();
        }
        match (sign, self.engaged_until) {
            (true, None) => {
                self.engaged_until = Some(now.at + self.hold);
                let peak = self
                    .budgeted_rates
                    .iter()
                    .map(|(_, r)| *r)
                    .fold(0.0, f64::max);
                // Twice the busiest second: room for growth, none for a flood. Beyond it a SYN
                // is answered with an XDP cookie where that is on, so a new client the budget
                // has no room for still connects (without window scaling and SACK).
                let auto_global = (peak * 2.0).min(f64::from(u32::MAX)) as u32;
                let p = Pressured {
                    engaged: true,
                    auto_global: auto_global.max(AUTO_FLOOR),
                };
                warn!(
                    unanswered_syns_per_s = unanswered.round(),
                    accepted_per_s = accepted.round(),
                    kernel_signs = kernel,
                    auto_global = p.auto_global,
                    "SYN pressure: XDP rate limits engaged"
                );
                Some(Change::Engaged(p))
            }
            (true, Some(_)) => {
                self.engaged_until = Some(now.at + self.hold);
                None
            }
            (false, Some(until)) if now.at >= until => {
                self.engaged_until = None;
                info!("SYN pressure gone: XDP rate limits released");
                Some(Change::Released)
            }
            _ => None,
        }
    }
}

/// The kernel's counters of SYN pressure in this network namespace: SYN cookies sent, accept
/// queue overflows, SYN queue drops (`TcpExt` of `/proc/net/netstat`), summed. While
/// floodgate holds `tcp_syncookies` at 2 (`cookies_held`), the kernel sends a cookie for every
/// SYN, so those are no sign.
pub fn kernel_signs(cookies_held: bool) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    kernel_signs_in(&text, cookies_held)
}

fn kernel_signs_in(netstat: &str, cookies_held: bool) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let mut sum = 0u64;
    for (name, value) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        let sign = match name {
            "SyncookiesSent" => !cookies_held,
            "ListenOverflows" | "TCPReqQFullDrop" => true,
            _ => false,
        };
        if sign {
            sum = sum.saturating_add(value.parse().ok()?);
        }
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> Monitor {
        Monitor::new(&config::Pressure::default()).expect("auto")
    }

    fn at(t0: Instant, ms: u64, syns: u64, accepted: u64, kernel: u64) -> Sample {
        Sample {
            at: t0 + Duration::from_millis(ms),
            syns,
            accepted,
            kernel: Some(kernel),
            over_budget: 0,
            new_sources: None,
        }
    }

    #[test]
    fn a_busy_address_alone_never_engages() {
        let (mut m, t0) = (monitor(), Instant::now());
        // 12,000 new connections per second, every SYN answered.
        for i in 0..40u64 {
            assert_eq!(
                m.tick(at(t0, i * 250, i * 3000, i * 3000, 0)),
                None,
                "tick {i}"
            );
        }
        assert!(!m.engaged());
    }

    #[test]
    fn unanswered_syns_engage_and_quiet_releases_after_hold() {
        let (mut m, t0) = (monitor(), Instant::now());
        // 4 s of 2,000 connections per second, then a flood of 30,000 spoofed SYNs per second.
        let mut syns = 0;
        let mut accepted = 0;
        for i in 0..16u64 {
            syns += 500;
            accepted += 500;
            assert_eq!(m.tick(at(t0, i * 250, syns, accepted, 0)), None);
        }
        syns += 500 + 7500;
        accepted += 500;
        match m.tick(at(t0, 16 * 250, syns, accepted, 0)) {
            Some(Change::Engaged(p)) => {
                assert!(p.engaged);
                assert_eq!(p.auto_global, 4000, "twice the 2,000 per second before");
            }
            other => panic!("{other:?}"),
        }
        // The flood stops; the limits hold 10 s, then release.
        let mut released = None;
        for i in 17..80u64 {
            syns += 500;
            accepted += 500;
            if let Some(c) = m.tick(at(t0, i * 250, syns, accepted, 0)) {
                released = Some((i, c));
                break;
            }
        }
        let (i, c) = released.expect("released");
        assert_eq!(c, Change::Released);
        assert!(
            (56..=58).contains(&i),
            "released at tick {i}, 10 s after the last sign"
        );
    }

    #[test]
    fn with_verified_sources_the_budget_follows_new_sources_not_every_connection() {
        let (mut m, t0) = (monitor(), Instant::now());
        // 8,000 connections a second from sources already verified, 600 a second from new
        // ones; then a flood.
        let (mut syns, mut accepted, mut new) = (0, 0, 0);
        for i in 0..16u64 {
            (syns, accepted, new) = (syns + 2_000, accepted + 2_000, new + 150);
            let s = Sample {
                new_sources: Some(new),
                ..at(t0, i * 250, syns, accepted, 0)
            };
            assert_eq!(m.tick(s), None);
        }
        syns += 2_000 + 7_500;
        accepted += 2_000;
        let s = Sample {
            new_sources: Some(new + 150),
            ..at(t0, 16 * 250, syns, accepted, 0)
        };
        match m.tick(s) {
            Some(Change::Engaged(p)) => {
                assert_eq!(p.auto_global, 1_200, "twice the 600 new sources a second");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_kernels_syn_cookies_engage_too() {
        let (mut m, t0) = (monitor(), Instant::now());
        assert_eq!(m.tick(at(t0, 0, 0, 0, 10)), None);
        assert!(matches!(
            m.tick(at(t0, 250, 100, 100, 11)),
            Some(Change::Engaged(p)) if p.auto_global == AUTO_FLOOR
        ));
    }

    #[test]
    fn syns_over_the_budget_keep_it_engaged() {
        let (mut m, t0) = (monitor(), Instant::now());
        assert_eq!(m.tick(at(t0, 0, 0, 0, 0)), None);
        assert!(matches!(
            m.tick(at(t0, 250, 0, 0, 1)),
            Some(Change::Engaged(_))
        ));
        // The flood goes on, answered by XDP cookies: no unanswered SYN, no kernel sign, only
        // SYNs over the budget. It stays engaged past the hold, then releases when they stop.
        let mut over = 0;
        for i in 2..80u64 {
            over += 5000;
            let s = Sample {
                over_budget: over,
                ..at(t0, i * 250, 0, 0, 1)
            };
            assert_eq!(m.tick(s), None, "tick {i}");
        }
        let mut released = false;
        for i in 80..130u64 {
            let s = Sample {
                over_budget: over,
                ..at(t0, i * 250, 0, 0, 1)
            };
            if m.tick(s) == Some(Change::Released) {
                released = true;
                break;
            }
        }
        assert!(released);
    }

    #[test]
    fn kernel_signs_are_read_from_netstat() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPReqQFullDrop\n\
                    TcpExt: 3 7 5 9 2\n\
                    IpExt: InNoRoutes\nIpExt: 1\n";
        assert_eq!(kernel_signs_in(text, false), Some(10));
        assert_eq!(
            kernel_signs_in(text, true),
            Some(7),
            "every SYN gets a cookie in mode 2"
        );
        assert_eq!(kernel_signs_in("IpExt: A\nIpExt: 1\n", false), None);
        assert!(
            kernel_signs(false).is_some(),
            "this kernel has /proc/net/netstat"
        );
    }

    #[test]
    fn only_auto_mode_watches() {
        for (mode, watches) in [
            (config::PressureMode::Auto, true),
            (config::PressureMode::Always, false),
            (config::PressureMode::Never, false),
        ] {
            let p = config::Pressure {
                mode,
                ..config::Pressure::default()
            };
            assert_eq!(Monitor::new(&p).is_some(), watches);
        }
    }
}
