//! `floodgate stats`: the XDP counters, read straight from the pinned maps, so they work from
//! another process and while the proxy is down.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Map, PerCpuArray};
use floodgate_common::{
    COUNTER_COUNT, Counter, FlowKey, FlowState, ListenerCounters, MAX_IFACES, MAX_LISTENERS,
    Reason, Verdict, maps, stats_index,
};
use serde::Serialize;

use crate::xdp::dataplane::{Attachment, DataplaneError, attach_file, pinned};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Pin(#[from] DataplaneError),
    #[error("reading {map}: {source}")]
    Read {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("reading the flow table: {0}")]
    Batch(#[from] crate::xdp::batch::BatchError),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonStats {
    /// `pass`, `drop`, or `event` for counters that are not verdicts.
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub interfaces: Vec<Attachment>,
    /// Keyed by the reason's stable name (`floodgate_common::Reason::name`), summed over
    /// interfaces.
    pub reasons: BTreeMap<&'static str, ReasonStats>,
    /// The same per interface: each attached interface by name, and `other` for packets of
    /// interfaces without a counter slot of their own (present when not all zero).
    pub per_interface: BTreeMap<String, BTreeMap<&'static str, ReasonStats>>,
    pub totals: Totals,
    pub listeners: BTreeMap<u32, ListenerCounters>,
    /// Entries in floodgate's flow table.
    pub flows: u64,
    /// The kernel's conntrack usage in this network namespace (null when conntrack is not loaded).
    pub conntrack: Option<crate::xdp::conntrack::Usage>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Answered from XDP (`XDP_TX`: SYN cookies).
    pub answered: u64,
}

fn verdict_name(reason: Reason) -> &'static str {
    match reason.verdict() {
        Some(Verdict::Pass) => "pass",
        Some(Verdict::Drop) => "drop",
        Some(Verdict::Tx) => "tx",
        None => "event",
    }
}

/// Everything, with the flow table counted by walking it (batched: 4,096 flows a syscall).
pub fn read(pin_dir: &Path) -> Result<Snapshot, StatsError> {
    let mut s = read_counters(pin_dir)?;
    s.flows = count_flows(pin_dir)?;
    Ok(s)
}

/// Entries in floodgate's flow table.
pub fn count_flows(pin_dir: &Path) -> Result<u64, StatsError> {
    let flows = pinned(pin_dir, maps::FLOWS)?;
    let mut n = 0u64;
    crate::xdp::batch::for_each::<FlowKey, FlowState>(
        std::os::fd::AsFd::as_fd(flows.fd()),
        |_, _| {
            n += 1;
        },
    )?;
    Ok(n)
}

/// The counters only (per-CPU arrays: cheap); `flows` is left 0.
pub fn read_counters(pin_dir: &Path) -> Result<Snapshot, StatsError> {
    let stats = Map::PerCpuArray(pinned(pin_dir, maps::STATS)?);
    let stats: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(stats).map_err(|source| StatsError::Read {
            map: maps::STATS,
            source,
        })?;
    let interfaces: Vec<Attachment> = std::fs::read(attach_file(pin_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let slot_name = |slot: u32| {
        interfaces
            .iter()
            .find(|a| a.slot == slot && slot != 0)
            .map_or_else(|| "other".to_owned(), |a| a.interface.clone())
    };
    let mut reasons = BTreeMap::new();
    let mut per_interface: BTreeMap<String, BTreeMap<&'static str, ReasonStats>> = BTreeMap::new();
    let mut totals = Totals::default();
    for reason in Reason::ALL {
        let (mut packets, mut bytes) = (0, 0);
        for slot in 0..MAX_IFACES {
            let per_cpu =
                stats
                    .get(&stats_index(slot, reason), 0)
                    .map_err(|source| StatsError::Read {
                        map: maps::STATS,
                        source,
                    })?;
            let (p, b) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            let attached = interfaces.iter().any(|a| a.slot == slot && slot != 0);
            if attached || p > 0 {
                per_interface.entry(slot_name(slot)).or_default().insert(
                    reason.name(),
                    ReasonStats {
                        verdict: verdict_name(reason),
                        packets: p,
                        bytes: b,
                    },
                );
            }
            packets += p;
            bytes += b;
        }
        match reason.verdict() {
            Some(Verdict::Pass) => totals.passed += packets,
            Some(Verdict::Drop) => totals.dropped += packets,
            Some(Verdict::Tx) => totals.answered += packets,
            None => {}
        }
        let verdict = verdict_name(reason);
        if reason.verdict().is_some() {
            totals.packets += packets;
            totals.bytes += bytes;
        }
        reasons.insert(
            reason.name(),
            ReasonStats {
                verdict,
                packets,
                bytes,
            },
        );
    }
    debug_assert_eq!(reasons.len(), COUNTER_COUNT as usize);

    let lstats = Map::PerCpuArray(pinned(pin_dir, maps::LISTENER_STATS)?);
    let lstats: PerCpuArray<_, ListenerCounters> =
        PerCpuArray::try_from(lstats).map_err(|source| StatsError::Read {
            map: maps::LISTENER_STATS,
            source,
        })?;
    let mut listeners = BTreeMap::new();
    for id in 0..MAX_LISTENERS {
        let per_cpu = lstats.get(&id, 0).map_err(|source| StatsError::Read {
            map: maps::LISTENER_STATS,
            source,
        })?;
        let sum = per_cpu
            .iter()
            .fold(ListenerCounters::default(), |a, c| ListenerCounters {
                syn_admitted: a.syn_admitted + c.syn_admitted,
                syn_dropped: a.syn_dropped + c.syn_dropped,
                established_packets: a.established_packets + c.established_packets,
                established_bytes: a.established_bytes + c.established_bytes,
            });
        if sum != ListenerCounters::default() {
            listeners.insert(id, sum);
        }
    }
    // Interfaces that were never attached but have counts (an `other` slot) are filled in with
    // zeros for the reasons they lack, so every interface lists every reason.
    for by_reason in per_interface.values_mut() {
        for reason in Reason::ALL {
            by_reason.entry(reason.name()).or_insert(ReasonStats {
                verdict: verdict_name(reason),
                packets: 0,
                bytes: 0,
            });
        }
    }
    Ok(Snapshot {
        interfaces,
        reasons,
        per_interface,
        totals,
        listeners,
        flows: 0,
        conntrack: crate::xdp::conntrack::usage(),
    })
}

/// Logs XDP drops as one event per burst: drops are summed between checks, and an event is
/// written at most every [`DropBursts::EVERY`], so a flood costs a log line, not millions.
#[derive(Debug, Default)]
pub struct DropBursts {
    last: Option<BTreeMap<&'static str, u64>>,
    pending: BTreeMap<&'static str, u64>,
    logged: Option<std::time::Instant>,
}

impl DropBursts {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn check(&mut self, pin_dir: &Path) {
        let Ok(snap) = read_counters(pin_dir) else {
            return;
        };
        let now: BTreeMap<_, _> = snap
            .reasons
            .iter()
            .filter(|(_, r)| r.verdict == "drop")
            .map(|(k, r)| (*k, r.packets))
            .collect();
        if let Some(last) = &self.last {
            for (k, n) in &now {
                let d = n.saturating_sub(last.get(k).copied().unwrap_or(0));
                if d > 0 {
                    *self.pending.entry(k).or_default() += d;
                }
            }
        }
        self.last = Some(now);
        let due = self.logged.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if due && !self.pending.is_empty() {
            let total: u64 = self.pending.values().sum();
            let by_reason = self
                .pending
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::warn!(dropped = total, by_reason, "XDP dropped packets");
            self.pending.clear();
            self.logged = Some(std::time::Instant::now());
        }
    }
}

/// Per-second rates between two snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    /// Packets per second by reason.
    pub reasons: BTreeMap<&'static str, f64>,
    pub packets: f64,
    pub bytes: f64,
    pub passed: f64,
    pub dropped: f64,
    pub answered: f64,
}

pub fn rates(prev: &Snapshot, now: &Snapshot, secs: f64) -> Rates {
    let per = |a: u64, b: u64| {
        #[allow(clippy::cast_precision_loss)]
        let d = b.saturating_sub(a) as f64;
        if secs > 0.0 { d / secs } else { 0.0 }
    };
    Rates {
        reasons: now
            .reasons
            .iter()
            .map(|(k, r)| {
                let before = prev.reasons.get(k).map_or(0, |p| p.packets);
                (*k, per(before, r.packets))
            })
            .collect(),
        packets: per(prev.totals.packets, now.totals.packets),
        bytes: per(prev.totals.bytes, now.totals.bytes),
        passed: per(prev.totals.passed, now.totals.passed),
        dropped: per(prev.totals.dropped, now.totals.dropped),
        answered: per(prev.totals.answered, now.totals.answered),
    }
}

/// One frame of `stats --watch`.
pub fn print_watch(
    s: &Snapshot,
    r: &Rates,
    every: f64,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    for a in &s.interfaces {
        writeln!(out, "interface {:<12} mode {:<8}", a.interface, a.mode)?;
    }
    writeln!(
        out,
        "every {every}s   {:.0} pkt/s   {:.0} B/s   passed {:.0}/s   dropped {:.0}/s   answered {:.0}/s",
        r.packets, r.bytes, r.passed, r.dropped, r.answered
    )?;
    writeln!(
        out,
        "{:<20} {:<6} {:>14} {:>12}",
        "reason", "action", "packets", "pkt/s"
    )?;
    for reason in Reason::ALL {
        if let Some(x) = s.reasons.get(reason.name()) {
            writeln!(
                out,
                "{:<20} {:<6} {:>14} {:>12.0}",
                reason.name(),
                x.verdict,
                x.packets,
                r.reasons.get(reason.name()).copied().unwrap_or(0.0)
            )?;
        }
    }
    writeln!(out, "flows in floodgate's table: {}", s.flows)?;
    match s.conntrack {
        Some(c) => writeln!(out, "kernel conntrack: {} of {} entries", c.count, c.max),
        None => writeln!(out, "kernel conntrack: not loaded"),
    }
}

/// Writes the table to `out`; an error is the writer's (e.g. a closed pipe).
pub fn print_table(s: &Snapshot, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for a in &s.interfaces {
        writeln!(
            out,
            "interface {:<12} mode {:<8} program {}",
            a.interface, a.mode, a.program_id
        )?;
    }
    writeln!(
        out,
        "{:<20} {:<6} {:>14} {:>16}",
        "reason", "action", "packets", "bytes"
    )?;
    for reason in Reason::ALL {
        if let Some(r) = s.reasons.get(reason.name()) {
            writeln!(
                out,
                "{:<20} {:<6} {:>14} {:>16}",
                reason.name(),
                r.verdict,
                r.packets,
                r.bytes
            )?;
        }
    }
    let t = &s.totals;
    writeln!(
        out,
        "{:<20} {:<6} {:>14} {:>16}",
        "total", "", t.packets, t.bytes
    )?;
    writeln!(
        out,
        "passed {}  dropped {}  answered {}",
        t.passed, t.dropped, t.answered
    )?;
    for (iface, reasons) in &s.per_interface {
        let (passed, dropped, answered) = reasons.values().fold((0, 0, 0), |(p, d, a), r| match r
            .verdict
        {
            "pass" => (p + r.packets, d, a),
            "drop" => (p, d + r.packets, a),
            "tx" => (p, d, a + r.packets),
            _ => (p, d, a),
        });
        writeln!(
            out,
            "  {iface:<12} passed {passed}  dropped {dropped}  answered {answered}"
        )?;
    }
    writeln!(out, "flows in floodgate's table: {}", s.flows)?;
    match s.conntrack {
        Some(c) => writeln!(out, "kernel conntrack: {} of {} entries", c.count, c.max),
        None => writeln!(out, "kernel conntrack: not loaded"),
    }?;
    for (id, l) in &s.listeners {
        writeln!(
            out,
            "listener {id}: syn_admitted {} syn_dropped {} established_packets {} established_bytes {}",
            l.syn_admitted, l.syn_dropped, l.established_packets, l.established_bytes
        )?;
    }
    Ok(())
}
