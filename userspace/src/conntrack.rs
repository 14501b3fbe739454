//! Conntrack bypass: ingress flows to floodgate's listeners skip netfilter connection tracking,
//! so a connection storm cannot fill `nf_conntrack` (`table full, dropping packet`). XDP counts
//! those flows and keeps its own flow table instead.
//!
//! The bypass is an nftables table of floodgate's own, with NOTRACK rules at raw priority for
//! both directions (a reply leaving the node would otherwise create the entry the request did
//! not). It is added at start and removed at stop; nothing else in the ruleset is touched.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
};

use serde::Serialize;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused floodgate's NOTRACK table: {0}")]
    Nft(String),
}

/// The nftables table floodgate owns (family `inet`).
pub const TABLE: &str = "floodgate";

/// The ruleset for `binds`: NOTRACK for TCP to the listener ports, and from them on the way out.
pub fn ruleset(table: &str, binds: &[SocketAddr]) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for b in binds {
        let port = b.port();
        match b.ip() {
            IpAddr::V4(_) => v4.push(port),
            IpAddr::V6(a) if a.is_unspecified() => {
                v4.push(port);
                v6.push(port);
            }
            IpAddr::V6(_) => v6.push(port),
        }
    }
    let set = |ports: &mut Vec<u16>| {
        ports.sort_unstable();
        ports.dedup();
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (v4, v6) = (set(&mut v4), set(&mut v6));
    let mut pre = String::new();
    let mut out = String::new();
    for (proto, ports) in [("ipv4", &v4), ("ipv6", &v6)] {
        if !ports.is_empty() {
            pre.push_str(&format!(
                "    meta nfproto {proto} tcp dport {{ {ports} }} notrack\n"
            ));
            out.push_str(&format!(
                "    meta nfproto {proto} tcp sport {{ {ports} }} notrack\n"
            ));
        }
    }
    // `add` then `delete` makes the script idempotent: a table left by a crash is replaced.
    format!(
        "add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  \
         chain prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n{pre}  }}\n  \
         chain output {{\n    type filter hook output priority raw; policy accept;\n{out}  }}\n}}\n"
    )
}

fn nft(script: &str) -> Result<(), ConntrackError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ConntrackError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(ConntrackError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(ConntrackError::Spawn)?;
    if !out.status.success() {
        return Err(ConntrackError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// floodgate's NOTRACK table; removed on drop.
pub struct Bypass {
    table: String,
}

impl Bypass {
    pub fn install(table: &str, binds: &[SocketAddr]) -> Result<Self, ConntrackError> {
        nft(&ruleset(table, binds))?;
        info!(table = %format!("inet {table}"), "conntrack bypass: NOTRACK rules installed for the listeners");
        Ok(Self {
            table: table.to_owned(),
        })
    }

    /// Replaces the rules for a new set of listeners (config reload).
    pub fn update(&self, binds: &[SocketAddr]) -> Result<(), ConntrackError> {
        nft(&ruleset(&self.table, binds))
    }
}

impl Drop for Bypass {
    fn drop(&mut self) {
        match nft(&format!("delete table inet {}\n", self.table)) {
            Ok(()) => info!(table = %self.table, "conntrack bypass removed"),
            Err(e) => warn!(table = %self.table, error = %e, "cannot remove the NOTRACK table"),
        }
    }
}

/// The kernel's conntrack usage in this network namespace; `None` when conntrack is not loaded.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub count: u64,
    pub max: u64,
}

pub fn usage() -> Option<Usage> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(Usage {
        count: read("nf_conntrack_count")?,
        max: read("nf_conntrack_max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_covers_both_directions_per_family() {
        let binds: Vec<SocketAddr> = ["0.0.0.0:80", "10.0.0.1:443", "[::]:8080", "[fd00::1]:443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = ruleset("fg", &binds);
        assert!(
            r.starts_with("add table inet fg\ndelete table inet fg\n"),
            "{r}"
        );
        assert!(
            r.contains("meta nfproto ipv4 tcp dport { 80, 443, 8080 } notrack"),
            "{r}"
        );
        assert!(
            r.contains("meta nfproto ipv6 tcp dport { 443, 8080 } notrack"),
            "{r}"
        );
        assert!(
            r.contains("meta nfproto ipv4 tcp sport { 80, 443, 8080 } notrack"),
            "{r}"
        );
        assert!(r.contains("priority raw"), "{r}");
    }
}
