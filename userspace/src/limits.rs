//! Limits of the host: the process fd limit and its cgroup's memory limit bound how many
//! connections can really be held.

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

/// Heap per busy connection, rounded up from what `heaptrack` and peak RSS showed at 1,000 and
/// 3,000 connections (docs/benchmarks.md, "Memory per connection"): about 52 KB in clear and
/// 63 KB over TLS, mostly hyper's buffers (16 KB read, 8 KB write), the connection's task and
/// request state, and the server connection's read buffer.
pub const BYTES_PER_CONNECTION: u64 = 64 * 1024;
/// The process without connections: runtime, config, maps, metrics.
const BASE_BYTES: u64 = 64 * 1024 * 1024;

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), `None` when there is none or it cannot be read. In a pod the
/// cgroup is the container's.
pub fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let (v2_path, v1_path) = cgroup_paths(&own);
    let read = |p: String| std::fs::read_to_string(p).ok();
    let v2 = v2_path.and_then(|p| read(format!("/sys/fs/cgroup{p}/memory.max")));
    let v1 = v1_path.and_then(|p| read(format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes")));
    parse_memory_limit(v2.as_deref(), v1.as_deref())
}

/// This process's cgroup v2 path (`0::/path`) and v1 memory path (`N:...memory...:/path`),
/// from /proc/self/cgroup, without a trailing `/` (the root is "").
fn cgroup_paths(proc_cgroup: &str) -> (Option<&str>, Option<&str>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    (v2, v1)
}

fn parse_memory_limit(v2: Option<&str>, v1: Option<&str>) -> Option<u64> {
    if let Some(v) = v2 {
        return v.trim().parse().ok();
    }
    v1?.trim().parse::<u64>().ok().filter(|n| *n < u64::MAX / 4)
}

/// The busy connections a memory limit holds, at [`BYTES_PER_CONNECTION`] each.
pub fn connections_within(limit: u64) -> u64 {
    limit.saturating_sub(BASE_BYTES) / BYTES_PER_CONNECTION
}

/// Says at start whether the memory limit covers `maxconn` busy connections. HAProxy sizes
/// its memory by maxconn too; a pod whose limit cannot hold them is OOM-killed under a
/// connection storm, which takes the node's ingress down with every connection on it.
pub fn check_memory(maxconn: u32, limit: Option<u64>) {
    let Some(limit) = limit else {
        return;
    };
    let fits = connections_within(limit);
    let mib = |b: u64| b / (1024 * 1024);
    let needed = BASE_BYTES + u64::from(maxconn) * BYTES_PER_CONNECTION;
    if fits < u64::from(maxconn) {
        warn!(
            maxconn,
            needed_mib = mib(needed),
            limit_mib = mib(limit),
            connections_within_limit = fits,
            "the memory limit cannot hold global.maxconn busy connections at about 64 KiB \
             each: past connections_within_limit of them the process may be OOM-killed; raise \
             the limit or lower global.maxconn"
        );
    } else {
        info!(
            maxconn,
            needed_mib = mib(needed),
            limit_mib = mib(limit),
            "memory limit covers maxconn"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_found_for_v1_and_v2() {
        assert_eq!(
            cgroup_paths("0::/kubepods/pod1/c1\n"),
            (Some("/kubepods/pod1/c1"), None)
        );
        assert_eq!(cgroup_paths("0::/\n"), (Some(""), None));
        assert_eq!(
            cgroup_paths("9:name=systemd:/\n4:memory:/fg-test\n3:cpu,cpuacct:/x\n"),
            (None, Some("/fg-test"))
        );
        assert_eq!(cgroup_paths("garbage"), (None, None));
    }

    #[test]
    fn memory_limits_are_read_from_cgroup_v2_then_v1() {
        assert_eq!(
            parse_memory_limit(Some("2147483648\n"), None),
            Some(2 << 30)
        );
        assert_eq!(parse_memory_limit(Some("max\n"), Some("1024")), None);
        assert_eq!(
            parse_memory_limit(None, Some("1073741824\n")),
            Some(1 << 30)
        );
        // cgroup v1 without a limit.
        assert_eq!(
            parse_memory_limit(None, Some("9223372036854771712\n")),
            None
        );
        assert_eq!(parse_memory_limit(None, None), None);
    }

    #[test]
    fn a_2_gib_limit_holds_about_32_thousand_busy_connections() {
        assert_eq!(connections_within(2 << 30), 31_744);
        assert_eq!(connections_within(8 << 30), 130_048);
        assert_eq!(connections_within(1 << 20), 0);
    }
}
