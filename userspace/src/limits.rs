//! Limits of the host: the process fd limit bounds how many connections can really be held.

use tracing::{info, warn};

/// File descriptors kept for listeners, the admin port, maps, logs and DNS.
const RESERVED_FDS: u64 = 256;

/// Raises RLIMIT_NOFILE as far as allowed and returns the maxconn it supports. Each proxied
/// connection needs two descriptors (client and server side), as in HAProxy's own computation.
/// Where HAProxy refuses to start, floodgate runs with the largest maxconn the limit allows.
pub fn effective_maxconn(configured: u32, listeners: usize) -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        warn!("cannot read the fd limit; keeping maxconn {configured}");
        return configured;
    }
    let wanted = u64::from(configured) * 2 + RESERVED_FDS + listeners as u64;
    if lim.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    let allowed = lim.rlim_cur.saturating_sub(RESERVED_FDS + listeners as u64) / 2;
    let effective = u32::try_from(allowed)
        .unwrap_or(u32::MAX)
        .min(configured)
        .max(1);
    if effective < configured {
        warn!(
            configured,
            effective,
            fd_limit = lim.rlim_cur,
            "the fd limit cannot cover global.maxconn; running with the largest maxconn it allows"
        );
    } else {
        info!(
            maxconn = effective,
            fd_limit = lim.rlim_cur,
            "fd limit covers maxconn"
        );
    }
    effective
}
