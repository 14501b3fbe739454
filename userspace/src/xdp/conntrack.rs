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

/// The ruleset for `binds` on `interfaces` (the ones XDP is attached to).
///
/// A rule matches only floodgate's own flows, so the node's other traffic keeps its
/// conntrack state (a Kubernetes node forwards pods' connections to Service IPs on the same
/// ports, and those need conntrack for their DNAT and masquerade):
/// - inbound: arriving on one of `interfaces`, to the listener's address (a wildcard bind: to
///   an address of this node, `fib daddr type local`) and port. Forwarded packets, pods'
///   traffic arriving on their own interfaces, and replies to connections the node opened to
///   remote `:443` (their destination port is ephemeral) do not match;
/// - outbound: leaving on one of `interfaces`, from the listener's address (wildcard: any)
///   and port. The output hook sees only packets this node sends, never forwarded ones.
pub fn ruleset(table: &str, binds: &[SocketAddr], interfaces: &[String]) -> String {
    let mut rules: Vec<(&str, String, String, u16)> = Vec::new();
    for b in binds {
        let port = b.port();
        match b.ip() {
            IpAddr::V4(a) if a.is_unspecified() => {
                rules.push(("ipv4", String::new(), String::new(), port))
            }
            IpAddr::V6(a) if a.is_unspecified() => {
                // `[::]` is dual-stack: it takes IPv4 connections too.
                rules.push(("ipv4", String::new(), String::new(), port));
                rules.push(("ipv6", String::new(), String::new(), port));
            }
            IpAddr::V4(a) => rules.push((
                "ipv4",
                format!("ip daddr {a} "),
                format!("ip saddr {a} "),
                port,
            )),
            IpAddr::V6(a) => rules.push((
                "ipv6",
                format!("ip6 daddr {a} "),
                format!("ip6 saddr {a} "),
                port,
            )),
        }
    }
    rules.sort();
    rules.dedup();
    let ifaces = interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut pre = String::new();
    let mut out = String::new();
    for (proto, daddr, saddr, port) in &rules {
        let local = if daddr.is_empty() {
            "fib daddr type local "
        } else {
            ""
        };
        pre.push_str(&format!(
            "    iifname {{ {ifaces} }} meta nfproto {proto} {daddr}{local}tcp dport {port} notrack\n"
        ));
        out.push_str(&format!(
            "    oifname {{ {ifaces} }} meta nfproto {proto} {saddr}tcp sport {port} notrack\n"
        ));
    }
    if interfaces.is_empty() {
        // No interface to match on: no rule at all rather than one for every interface.
        pre.clear();
        out.clear();
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
    pub fn install(
        table: &str,
        binds: &[SocketAddr],
        interfaces: &[String],
    ) -> Result<Self, ConntrackError> {
        nft(&ruleset(table, binds, interfaces))?;
        info!(table = %format!("inet {table}"), "conntrack bypass: NOTRACK rules installed for the listeners");
        Ok(Self {
            table: table.to_owned(),
        })
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

/// Removes floodgate's table `table` from this network namespace, as one left by a floodgate
/// that was killed (`floodgate detach`). `Ok(false)` when there was none.
pub fn remove_table(table: &str) -> Result<bool, ConntrackError> {
    let exists = Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(ConntrackError::Spawn)?
        .success();
    if exists {
        nft(&format!("delete table inet {table}\n"))?;
    }
    Ok(exists)
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
    fn rules_match_only_the_listeners_own_flows() {
        let binds: Vec<SocketAddr> = ["0.0.0.0:80", "10.0.0.1:443", "[::]:8080", "[fd00::1]:443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = ruleset("fg", &binds, &["eth0".into(), "eth1".into()]);
        assert!(
            r.starts_with("add table inet fg\ndelete table inet fg\n"),
            "{r}"
        );
        for rule in [
            "iifname { \"eth0\", \"eth1\" } meta nfproto ipv4 fib daddr type local tcp dport 80 notrack",
            "iifname { \"eth0\", \"eth1\" } meta nfproto ipv4 ip daddr 10.0.0.1 tcp dport 443 notrack",
            "iifname { \"eth0\", \"eth1\" } meta nfproto ipv4 fib daddr type local tcp dport 8080 notrack",
            "iifname { \"eth0\", \"eth1\" } meta nfproto ipv6 fib daddr type local tcp dport 8080 notrack",
            "iifname { \"eth0\", \"eth1\" } meta nfproto ipv6 ip6 daddr fd00::1 tcp dport 443 notrack",
            "oifname { \"eth0\", \"eth1\" } meta nfproto ipv4 ip saddr 10.0.0.1 tcp sport 443 notrack",
            "oifname { \"eth0\", \"eth1\" } meta nfproto ipv4 tcp sport 80 notrack",
        ] {
            assert!(r.contains(rule), "{rule}\n{r}");
        }
        // Never a port alone: that would untrack what the node forwards.
        for line in r.lines().filter(|l| l.contains("notrack")) {
            assert!(line.contains("ifname"), "{line}");
            assert!(
                line.contains("fib daddr type local")
                    || line.contains("daddr ")
                    || line.contains("oifname"),
                "{line}"
            );
        }
        assert!(r.contains("priority raw"), "{r}");
        assert!(!ruleset("fg", &binds, &[]).contains("notrack"));
    }
}
