//! The contract between floodgate's XDP program and its userspace.
//!
//! Every type that crosses the kernel boundary, every map name and every counter index is
//! defined here once. Types are `#[repr(C)]`, `Copy`, with explicit padding, so the kernel and
//! userspace agree on their layout byte for byte; flags are `u32` rather than `bool` so no type
//! has implicit padding.
#![no_std]

/// Map names, as pinned under [`PIN_DIR`]. The kernel keeps 15 bytes of a map name.
pub mod maps {
    /// `Array<XdpConfig, 1>`, written by userspace.
    pub const CONFIG: &str = "FG_CONFIG";
    /// `Array<u32, LISTENER_SLOTS>` indexed by `ListenerKey::slot`: nonzero when some listener
    /// has this family and port. An array index costs a fraction of a hash lookup, so a packet
    /// to any other port (SSH, kubelet, pods' traffic) passes after it alone.
    pub const LISTENERS: &str = "FG_LISTENERS";
    /// `HashMap<DestKey, u32>`: listener id + 1 of each address and port a listener takes
    /// connections on: its bind address, or every address of the node for a wildcard bind
    /// (refreshed by userspace). A packet to a listener port at another address (a pod's IP
    /// on the node's NIC, a forwarded Service IP) is not floodgate's.
    pub const DESTS: &str = "FG_DESTS";
    /// `Array<Capacity, MAX_LISTENERS>`: per-listener admission state, written by userspace.
    pub const CAPACITY: &str = "FG_CAPACITY";
    /// `Array<u64, 1>`: `CLOCK_MONOTONIC` ns of userspace's last refresh.
    pub const HEARTBEAT: &str = "FG_HEARTBEAT";
    /// `LpmTrie<[u8; 4], u32>` / `LpmTrie<[u8; 16], u32>`: sources refused.
    pub const DENY_V4: &str = "FG_DENY_V4";
    pub const DENY_V6: &str = "FG_DENY_V6";
    /// `LpmTrie<[u8; 4], u32>` / `LpmTrie<[u8; 16], u32>`: the only sources admitted in allow mode.
    pub const ALLOW_V4: &str = "FG_ALLOW_V4";
    pub const ALLOW_V6: &str = "FG_ALLOW_V6";
    /// `LpmTrie<[u8; 4], u32>` / `LpmTrie<[u8; 16], u32>`: sources never SYN rate limited
    /// (`xdp.trusted`: health checkers, partners, the office).
    pub const TRUSTED_V4: &str = "FG_TRUSTED_V4";
    pub const TRUSTED_V6: &str = "FG_TRUSTED_V6";
    /// `LruHashMap<SrcKey, Bucket>`: per-source-prefix SYN token buckets, kernel-owned.
    pub const SRC_BUCKETS: &str = "FG_SRC_BUCKET";
    /// `PerCpuArray<Bucket, 1>`: the global SYN budget, one bucket per CPU.
    pub const GLOBAL_BUCKET: &str = "FG_GLOBAL_BKT";
    /// `LruHashMap<FlowKey, FlowState>`: floodgate's own flow table.
    pub const FLOWS: &str = "FG_FLOWS";
    /// `LruHashMap<SrcKey, u64>`: sources the kernel accepted a connection from (their ACK
    /// carried a valid ISN or cookie, so they are not spoofed), with the CLOCK_MONOTONIC ns of
    /// the last one. Written by userspace; they skip the global SYN budget for `verified_ttl_s`.
    pub const VERIFIED: &str = "FG_VERIFIED";
    /// `Array<u64, VERIFIED_FILTER_WORDS>`: a one-hash Bloom filter over [`VERIFIED`]'s
    /// addresses (bit [`crate::verified_filter_bit`]), written by userspace before the entries
    /// it covers. A clear bit proves a source unverified for the price of an array read, so
    /// a spoofed flood's SYNs skip the LRU lookup; a set bit still asks [`VERIFIED`].
    pub const VERIFIED_FILTER: &str = "FG_VERIFIED_BF";
    /// `PerCpuArray<Counter, MAX_IFACES * COUNTER_COUNT>`: packets and bytes per interface slot
    /// and [`crate::Reason`], at [`crate::stats_index`].
    pub const STATS: &str = "FG_STATS";
    /// `Array<IfaceSlot, IFACE_BUCKETS>` at [`crate::iface_bucket`]: which counter slot an
    /// interface's packets go to. Written by userspace when it attaches.
    pub const IFACE_SLOTS: &str = "FG_IFSLOT";
    /// `PerCpuArray<ListenerCounters, MAX_LISTENERS>`: per-listener counters.
    pub const LISTENER_STATS: &str = "FG_LSTATS";
    /// `Array<u64, MAX_LISTENERS>`: monotonic ns at which XDP last passed a SYN for the
    /// listener to the kernel while SYN cookies were on (the kernel answered it with a cookie
    /// of its own, which makes it accept cookie ACKs for two minutes). Kernel-owned.
    pub const KERNEL_SYN: &str = "FG_KSYN";

    /// Maps whose content the kernel owns (counters, buckets, flows): a restart reuses their
    /// pins so that state survives it. Userspace-owned maps are recreated and rewritten.
    pub const KERNEL_STATE: &[&str] = &[
        SRC_BUCKETS,
        GLOBAL_BUCKET,
        FLOWS,
        VERIFIED,
        STATS,
        LISTENER_STATS,
        KERNEL_SYN,
    ];

    /// Every map userspace pins, in a stable order.
    pub const ALL: &[&str] = &[
        CONFIG,
        LISTENERS,
        CAPACITY,
        HEARTBEAT,
        DENY_V4,
        DENY_V6,
        ALLOW_V4,
        ALLOW_V6,
        SRC_BUCKETS,
        GLOBAL_BUCKET,
        FLOWS,
        VERIFIED,
        STATS,
        LISTENER_STATS,
        IFACE_SLOTS,
        DESTS,
        TRUSTED_V4,
        TRUSTED_V6,
        KERNEL_SYN,
        VERIFIED_FILTER,
    ];

    /// How the kernel stores a map (`bpf_map_type`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Kind {
        Hash = 1,
        Array = 2,
        PerCpuArray = 6,
        LruHash = 9,
        LpmTrie = 11,
    }

    /// `BPF_F_NO_PREALLOC`: an LPM trie must be created with it.
    pub const F_NO_PREALLOC: u32 = 1;
    /// `BPF_F_NO_COMMON_LRU`: an LRU hash with one list per CPU.
    pub const F_NO_COMMON_LRU: u32 = 2;

    /// The shape of one map of the contract: what the loader checks a pinned map against
    /// before reusing it, what a test checks the loaded object against, and what
    /// docs/xdp.md's table is checked against.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Spec {
        pub name: &'static str,
        pub kind: Kind,
        pub key_size: u32,
        pub value_size: u32,
        /// The default; `resizable` ones take their size from the config.
        pub entries: u32,
        pub resizable: bool,
        pub flags: u32,
    }

    const fn size<T>() -> u32 {
        core::mem::size_of::<T>() as u32
    }

    const fn spec(
        name: &'static str,
        kind: Kind,
        key_size: u32,
        value_size: u32,
        entries: u32,
    ) -> Spec {
        let flags = match kind {
            Kind::LpmTrie => F_NO_PREALLOC,
            _ => 0,
        };
        Spec {
            name,
            kind,
            key_size,
            value_size,
            entries,
            resizable: false,
            flags,
        }
    }

    const fn resizable(s: Spec) -> Spec {
        Spec {
            resizable: true,
            ..s
        }
    }

    use super::{
        Bucket, COUNTER_COUNT, Capacity, Counter, DEFAULT_FLOWS, DEFAULT_SRC_BUCKETS,
        DEFAULT_VERIFIED, DestKey, FlowKey, FlowState, IFACE_BUCKETS, IfaceSlot, LISTENER_SLOTS,
        ListenerCounters, MAX_CIDRS, MAX_DESTS, MAX_IFACES, MAX_LISTENERS, SrcKey,
        VERIFIED_FILTER_WORDS, XdpConfig,
    };

    /// Every map of the contract (the pinned ones, [`ALL`]).
    pub const SPECS: &[Spec] = &[
        spec(CONFIG, Kind::Array, 4, size::<XdpConfig>(), 1),
        spec(LISTENERS, Kind::Array, 4, 4, LISTENER_SLOTS),
        spec(CAPACITY, Kind::Array, 4, size::<Capacity>(), MAX_LISTENERS),
        spec(HEARTBEAT, Kind::Array, 4, 8, 1),
        // An LPM trie key is a u32 prefix length and the address.
        spec(DENY_V4, Kind::LpmTrie, 8, 4, MAX_CIDRS),
        spec(DENY_V6, Kind::LpmTrie, 20, 4, MAX_CIDRS),
        spec(ALLOW_V4, Kind::LpmTrie, 8, 4, MAX_CIDRS),
        spec(ALLOW_V6, Kind::LpmTrie, 20, 4, MAX_CIDRS),
        resizable(spec(
            SRC_BUCKETS,
            Kind::LruHash,
            size::<SrcKey>(),
            size::<Bucket>(),
            DEFAULT_SRC_BUCKETS,
        )),
        spec(GLOBAL_BUCKET, Kind::PerCpuArray, 4, size::<Bucket>(), 1),
        Spec {
            flags: F_NO_COMMON_LRU,
            ..resizable(spec(
                FLOWS,
                Kind::LruHash,
                size::<FlowKey>(),
                size::<FlowState>(),
                DEFAULT_FLOWS,
            ))
        },
        resizable(spec(
            VERIFIED,
            Kind::LruHash,
            size::<SrcKey>(),
            8,
            DEFAULT_VERIFIED,
        )),
        spec(
            STATS,
            Kind::PerCpuArray,
            4,
            size::<Counter>(),
            MAX_IFACES * COUNTER_COUNT,
        ),
        spec(
            LISTENER_STATS,
            Kind::PerCpuArray,
            4,
            size::<ListenerCounters>(),
            MAX_LISTENERS,
        ),
        spec(
            IFACE_SLOTS,
            Kind::Array,
            4,
            size::<IfaceSlot>(),
            IFACE_BUCKETS,
        ),
        spec(DESTS, Kind::Hash, size::<DestKey>(), 4, MAX_DESTS),
        spec(TRUSTED_V4, Kind::LpmTrie, 8, 4, MAX_CIDRS),
        spec(TRUSTED_V6, Kind::LpmTrie, 20, 4, MAX_CIDRS),
        spec(KERNEL_SYN, Kind::Array, 4, 8, MAX_LISTENERS),
        spec(VERIFIED_FILTER, Kind::Array, 4, 8, VERIFIED_FILTER_WORDS),
    ];

    /// The spec of map `name`.
    pub fn spec_of(name: &str) -> Option<&'static Spec> {
        SPECS.iter().find(|s| s.name == name)
    }

    /// Maps of the object that are the program's own scratch space (a map value rather than
    /// its 512-byte stack): never pinned, never read by userspace.
    pub const PROGRAM_ONLY: &[&str] = &["FG_PACKET", "FG_SCRATCH"];
}

/// The contract of the second object, `floodgate-reuseport`: the `SO_REUSEPORT` program that
/// gives each new connection to the worker with the fewest active connections. A separate
/// object from the XDP program's: it is loaded whether or not XDP is enabled, and none of its
/// maps is pinned (the sockets and the loads it reads belong to one process).
pub mod reuseport {
    use super::DestKey;

    /// Name of the program in the object file.
    pub const PROGRAM_NAME: &str = "floodgate_reuseport";
    /// `HashMap<DestKey, Group>`: a listener's bound address, as its sockets report it (the
    /// unspecified address for a wildcard bind), to where its workers' sockets are in
    /// [`SOCKETS`]. Written by userspace once, at start.
    pub const GROUPS: &str = "FG_RP_GROUPS";
    /// `ReusePortSockArray<MAX_SOCKETS>`: worker `w`'s socket of a group at `base + w`.
    pub const SOCKETS: &str = "FG_RP_SOCKS";
    /// `Array<u64, LOAD_SLOTS>` created `BPF_F_MMAPABLE`, which the workers write through a
    /// shared mapping of the map, not a syscall per connection. `u64` because the kernel lays
    /// array values out 8 bytes apart: the mapping is then a plain `[u64; LOAD_SLOTS]`.
    /// - `[w]`, `w < MAX_WORKERS`: worker `w`'s active connections, every listener.
    /// - `[QUEUED + base + w]`: connections the program gave worker `w`'s socket of the group
    ///   at `base` that the worker has not accepted yet (a busy worker's accept queue grows
    ///   while its active count stands still). The program adds one at each choice, the worker
    ///   takes one off at each accept and sets it to zero when it finds that socket's queue
    ///   empty, which also forgets handshakes that never completed (spoofed SYNs).
    pub const LOAD: &str = "FG_WORKER_LOAD";
    /// Where the per-socket counts of connections not yet accepted start in [`LOAD`].
    pub const QUEUED: u32 = MAX_WORKERS;
    /// Entries of [`LOAD`].
    pub const LOAD_SLOTS: u32 = QUEUED + MAX_SOCKETS;

    /// Workers a group can have.
    pub const MAX_WORKERS: u32 = 64;
    /// Listeners (reuseport groups) the program balances.
    pub const MAX_GROUPS: u32 = 64;
    /// Capacity of [`SOCKETS`]: every group's workers.
    pub const MAX_SOCKETS: u32 = MAX_WORKERS * MAX_GROUPS;
    /// `BPF_F_MMAPABLE`.
    pub const F_MMAPABLE: u32 = 1 << 10;

    /// Where one listener's sockets are: worker `w`'s at `base + w`, `w < workers`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    #[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
    pub struct Group {
        pub base: u32,
        pub workers: u32,
    }

    /// The [`GROUPS`] key of a listener bound to `addr` (IPv4-mapped for IPv4, as [`DestKey`]
    /// always is; zero for a wildcard bind) and `port`.
    pub const fn group_key(v6: bool, addr: [u8; 16], port: u16) -> DestKey {
        DestKey {
            addr,
            family: if v6 {
                super::FAMILY_V6
            } else {
                super::FAMILY_V4
            },
            port,
        }
    }

    /// The worker a new connection goes to: the one with the fewest active connections, the
    /// scan starting at the connection's hash so that workers with equal loads share new
    /// connections as the kernel's own hash would. `load(w)` for `w < workers`; `None` (no
    /// choice: the kernel's hash decides) without workers or without a load.
    #[inline(always)]
    pub fn least_loaded(hash: u32, workers: u32, load: impl Fn(u32) -> Option<u32>) -> Option<u32> {
        if workers == 0 || workers > MAX_WORKERS {
            return None;
        }
        let start = hash % workers;
        let (mut best, mut best_load) = (start, load(start)?);
        let mut i = 1;
        // Bounded by a constant for the verifier; `workers` ends it sooner.
        while i < MAX_WORKERS {
            if i >= workers {
                break;
            }
            let mut w = start + i;
            if w >= workers {
                w -= workers;
            }
            let l = load(w)?;
            if l < best_load {
                best = w;
                best_load = l;
            }
            i += 1;
        }
        Some(best)
    }
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "floodgate";
/// Where userspace pins maps and links.
pub const PIN_DIR: &str = "/sys/fs/bpf/floodgate";

/// Capacity of the listener map and the per-listener arrays.
pub const MAX_LISTENERS: u32 = 64;
/// Counter slots per interface: slot 0 counts interfaces without one of their own (and
/// `BPF_PROG_TEST_RUN`), slots 1.. the attached interfaces in config order.
pub const MAX_IFACES: u32 = 16;
/// Buckets of the interface slot table: an interface's bucket is its ifindex modulo this.
pub const IFACE_BUCKETS: u32 = 256;

/// Which counter slot an interface's packets go to; `ifindex` 0 means a free bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct IfaceSlot {
    pub ifindex: u32,
    pub slot: u32,
}

/// The bucket of [`maps::IFACE_SLOTS`] an interface is looked up in.
#[inline(always)]
pub const fn iface_bucket(ifindex: u32) -> u32 {
    ifindex % IFACE_BUCKETS
}

/// The index of a reason's counter for an interface slot in [`maps::STATS`].
#[inline(always)]
pub const fn stats_index(slot: u32, reason: Reason) -> u32 {
    slot * COUNTER_COUNT + reason as u32
}
/// Slots of the listener array: one per (family, port).
pub const LISTENER_SLOTS: u32 = 2 * 65_536;
/// Default capacity of the per-source SYN bucket LRU (userspace may resize it before load).
pub const DEFAULT_SRC_BUCKETS: u32 = 65_536;
/// Default capacity of the flow table LRU (userspace may resize it before load).
pub const DEFAULT_FLOWS: u32 = 262_144;
/// Capacity of each CIDR trie.
pub const MAX_CIDRS: u32 = 16_384;
/// How many IPv6 extension headers the parser walks before calling a packet malformed.
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;

/// One nanosecond-scaled token: buckets hold `tokens * NANOS` so refill needs no division.
pub const NANOS: u64 = 1_000_000_000;

/// What the XDP program did with a packet, and why.
///
/// Every packet the program sees is counted under exactly one verdict reason (those whose
/// [`Reason::verdict`] is `Some`), so their sum equals the packets received. The others are
/// events counted in addition (a flow inserted, removed, ...).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed untouched.
    PassNotIp = 0,
    /// IP but not TCP (UDP, ICMP, ...): passed untouched.
    PassNotTcp = 1,
    /// TCP to a port floodgate does not protect (SSH, kubelet, ...): passed untouched.
    PassNotListener = 2,
    /// A non-first IP fragment: it carries no TCP header to judge, so it passes.
    PassFragment = 3,
    /// A non-SYN packet of a connection to a listener (it bypasses conntrack).
    PassEstablished = 4,
    /// A SYN to a listener that passed every admission check.
    PassSynAdmitted = 5,
    /// A SYN admitted without the capacity check because userspace's heartbeat is stale.
    PassFailOpen = 6,
    /// A packet to a listener, or an IP packet, whose headers are truncated or inconsistent.
    DropMalformed = 7,
    /// A SYN whose source is in the deny list.
    DropDenyCidr = 8,
    /// A SYN whose source is not in the allow list while allow mode is on.
    DropNotAllowed = 9,
    /// A SYN over its source prefix's token bucket.
    DropSynRateSource = 10,
    /// A SYN over this CPU's share of the global SYN budget.
    DropSynRateGlobal = 11,
    /// A SYN to a listener that cannot take another connection.
    DropCapacity = 12,
    /// Event: a flow was inserted into the flow table (admitted SYN).
    FlowInserted = 13,
    /// Event: a flow was removed from the flow table (RST, or the packet after the client's FIN).
    FlowRemoved = 14,
    /// Event: an established packet whose flow is not in the table (evicted, or older than us).
    FlowMiss = 15,
    /// Event: a SYN from a verified source skipped the SYN rate limits (under pressure).
    SynVerifiedBypass = 16,
    /// Event: a SYN from an `xdp.trusted` source skipped the SYN rate limits (under pressure).
    SynTrustedBypass = 17,
    /// A SYN over the global budget answered from XDP with a SYN-ACK carrying a kernel SYN
    /// cookie (`XDP_TX`): it never reaches the kernel's SYN queue; the client's ACK does, and
    /// the kernel turns it into a connection.
    TxSynCookie = 18,
}

/// Number of slots in [`maps::STATS`].
pub const COUNTER_COUNT: u32 = Reason::ALL.len() as u32;

/// The XDP action a verdict reason stands for, with the kernel's `enum xdp_action` value (the
/// eBPF program checks them against its bindings at compile time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Drop = 1,
    Pass = 2,
    /// Answered: the packet was rewritten into a reply and sent back out (`XDP_TX`).
    Tx = 3,
}

impl Verdict {
    /// The value an XDP program returns for it.
    pub const fn action(self) -> u32 {
        self as u32
    }
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 19] = [
        Reason::PassNotIp,
        Reason::PassNotTcp,
        Reason::PassNotListener,
        Reason::PassFragment,
        Reason::PassEstablished,
        Reason::PassSynAdmitted,
        Reason::PassFailOpen,
        Reason::DropMalformed,
        Reason::DropDenyCidr,
        Reason::DropNotAllowed,
        Reason::DropSynRateSource,
        Reason::DropSynRateGlobal,
        Reason::DropCapacity,
        Reason::FlowInserted,
        Reason::FlowRemoved,
        Reason::FlowMiss,
        Reason::SynVerifiedBypass,
        Reason::SynTrustedBypass,
        Reason::TxSynCookie,
    ];

    /// The action of a verdict reason, `None` for events.
    #[must_use]
    pub const fn verdict(self) -> Option<Verdict> {
        match self {
            Reason::PassNotIp
            | Reason::PassNotTcp
            | Reason::PassNotListener
            | Reason::PassFragment
            | Reason::PassEstablished
            | Reason::PassSynAdmitted
            | Reason::PassFailOpen => Some(Verdict::Pass),
            Reason::DropMalformed
            | Reason::DropDenyCidr
            | Reason::DropNotAllowed
            | Reason::DropSynRateSource
            | Reason::DropSynRateGlobal
            | Reason::DropCapacity => Some(Verdict::Drop),
            Reason::TxSynCookie => Some(Verdict::Tx),
            Reason::FlowInserted
            | Reason::FlowRemoved
            | Reason::FlowMiss
            | Reason::SynVerifiedBypass
            | Reason::SynTrustedBypass => None,
        }
    }

    /// The stable snake_case name used in `floodgate stats` and the `reason` metric label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "not_ip",
            Reason::PassNotTcp => "not_tcp",
            Reason::PassNotListener => "not_listener",
            Reason::PassFragment => "fragment",
            Reason::PassEstablished => "conntrack_bypassed",
            Reason::PassSynAdmitted => "syn_admitted",
            Reason::PassFailOpen => "fail_open",
            Reason::DropMalformed => "malformed",
            Reason::DropDenyCidr => "deny_cidr",
            Reason::DropNotAllowed => "not_allowed",
            Reason::DropSynRateSource => "syn_rate_source",
            Reason::DropSynRateGlobal => "syn_rate_global",
            Reason::DropCapacity => "capacity",
            Reason::FlowInserted => "flows_inserted",
            Reason::FlowRemoved => "flows_removed",
            Reason::FlowMiss => "flow_miss",
            Reason::SynVerifiedBypass => "syn_verified_bypass",
            Reason::SynTrustedBypass => "syn_trusted_bypass",
            Reason::TxSynCookie => "syn_cookie",
        }
    }
}

/// A `{packets, bytes}` counter, one per [`Reason`] per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-listener counters, one per listener per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(bytemuck::Pod, bytemuck::Zeroable, serde::Serialize)
)]
pub struct ListenerCounters {
    pub syn_admitted: u64,
    pub syn_dropped: u64,
    pub established_packets: u64,
    pub established_bytes: u64,
}

/// `XdpConfig::flags`: only sources in the allow tries may open connections.
pub const FLAG_ALLOW_MODE: u32 = 1 << 0;
/// `XdpConfig::flags`: keep the flow table (insert on SYN, refresh, remove on FIN/RST).
pub const FLAG_FLOW_TABLE: u32 = 1 << 1;
/// `XdpConfig::flags`: enforce capacity admission from [`maps::CAPACITY`].
pub const FLAG_CAPACITY: u32 = 1 << 2;
/// `XdpConfig::flags`: the IPv4 deny trie has entries (an empty trie costs a lookup too).
pub const FLAG_DENY_V4: u32 = 1 << 3;
/// `XdpConfig::flags`: the IPv6 deny trie has entries.
pub const FLAG_DENY_V6: u32 = 1 << 4;
/// `XdpConfig::flags`: the node is under SYN pressure (set and cleared by userspace, or always
/// set with `pressure.mode: always`): the SYN rate limits apply. Without it a SYN skips them.
pub const FLAG_PRESSURE: u32 = 1 << 5;
/// `XdpConfig::flags`: the IPv4 trusted trie has entries.
pub const FLAG_TRUSTED_V4: u32 = 1 << 6;
/// `XdpConfig::flags`: the IPv6 trusted trie has entries.
pub const FLAG_TRUSTED_V6: u32 = 1 << 7;
/// `XdpConfig::flags`: under pressure, answer SYNs over the global budget with SYN cookies
/// (set by userspace only while the kernel answers with cookies too: `tcp_syncookies = 2`).
pub const FLAG_SYN_COOKIES: u32 = 1 << 8;
/// How long after the kernel last answered a listener's SYN with a cookie (`maps::KERNEL_SYN`)
/// XDP cookies stay safe for it: the kernel accepts cookie ACKs for 120 s after it sent one.
pub const KERNEL_COOKIE_FRESH_NS: u64 = 60 * NANOS;

/// Admission parameters, written by userspace to `FG_CONFIG[0]`.
///
/// An all-zero config (the state before userspace writes it) admits everything: rates of 0 mean
/// "no limit" and no flag is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct XdpConfig {
    /// SYNs per second per source prefix; 0 disables per-source limiting.
    pub src_rate: u32,
    /// Bucket size per source prefix, in SYNs.
    pub src_burst: u32,
    /// SYNs per second per CPU (the global budget divided by the CPU count); 0 disables it.
    pub global_rate_per_cpu: u32,
    /// Global bucket size per CPU, in SYNs.
    pub global_burst_per_cpu: u32,
    /// Source prefix length that shares one IPv4 bucket (1..=32).
    pub src_prefix_v4: u32,
    /// Source prefix length that shares one IPv6 bucket (1..=128).
    pub src_prefix_v6: u32,
    /// A heartbeat older than this makes capacity admission fail open; 0 never fails open.
    pub fail_open_after_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// How long a verified source skips the global budget, in seconds; 0 disables the bypass.
    pub verified_ttl_s: u32,
    /// The MSS an XDP SYN cookie's SYN-ACK advertises over IPv4 / IPv6 (the interfaces'
    /// smallest MTU less the headers).
    pub cookie_mss_v4: u16,
    pub cookie_mss_v6: u16,
    pub reserved: u32,
    /// [`bucket_fill_ns`] of the per-source and of each CPU's global bucket: past this long
    /// without a SYN a bucket is full, which the program checks without a division per SYN.
    pub src_fill_ns: u64,
    pub global_fill_ns: u64,
}

/// How long an empty token bucket of `burst` SYNs takes to fill at `rate` SYNs a second, in
/// ns (a `rate` of 0 counts as 1).
pub const fn bucket_fill_ns(rate: u32, burst: u32) -> u64 {
    let rate = if rate == 0 { 1 } else { rate as u64 };
    burst as u64 * NANOS / rate
}

/// `FlowState::flags`: the client sent FIN; its next packet (the last ACK) removes the flow.
pub const FLOW_CLOSING: u32 = 1 << 0;

/// Default capacity of the verified-source LRU.
pub const DEFAULT_VERIFIED: u32 = 65_536;

/// Words of [`maps::VERIFIED_FILTER`]: 2^21 bits (256 KiB), so a full default verified table
/// sets at most 3% of them, and at most 3% of a flood's unverified SYNs pay the LRU lookup.
pub const VERIFIED_FILTER_WORDS: u32 = 1 << 15;

/// An address's bit in [`maps::VERIFIED_FILTER`]: (word index, mask). `addr` is a
/// [`SrcKey`]'s 16 bytes read as four native-endian `u32`s, as the program reads them. A
/// multiplicative hash of the words' XOR: a few instructions, and its top bits (the ones used)
/// mix every input bit.
#[inline(always)]
pub const fn verified_filter_bit(addr: [u32; 4]) -> (u32, u64) {
    let h = (addr[0] ^ addr[1] ^ addr[2] ^ addr[3]).wrapping_mul(0x9E37_79B1);
    (h >> 17, 1u64 << ((h >> 11) & 63))
}

/// Capacity of [`maps::DESTS`]: listeners times the node's addresses.
pub const MAX_DESTS: u32 = 8_192;

/// An address and port a listener takes connections on ([`maps::DESTS`]). IPv4 addresses are
/// IPv4-mapped (`::ffff:a.b.c.d`), as the parser writes them.
///
/// 4-aligned (no padding: its size is a multiple of 4) so that the program builds it with
/// word moves, not one byte at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DestKey {
    pub addr: [u8; 16],
    pub family: u16,
    pub port: u16,
}

/// `ListenerKey::family` values.
pub const FAMILY_V4: u16 = 4;
pub const FAMILY_V6: u16 = 6;

/// A protected listener: address family and TCP port (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ListenerKey {
    pub family: u16,
    pub port: u16,
}

impl ListenerKey {
    /// Index into [`maps::LISTENERS`].
    #[must_use]
    pub const fn slot(self) -> u32 {
        if self.family == FAMILY_V6 {
            65_536 + self.port as u32
        } else {
            self.port as u32
        }
    }
}

/// Index of a listener into the per-listener arrays (`< MAX_LISTENERS`).
pub type ListenerId = u32;

/// Per-listener admission state published by userspace (`FG_CAPACITY[listener_id]`).
///
/// The decision needs L7 knowledge (queues, per-server limits), so userspace makes it and
/// publishes one flag; the kernel does one array lookup per SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Capacity {
    /// 1 when the listener can take another connection.
    pub admit: u32,
    /// Connections currently open on the listener.
    pub active: u32,
    /// The listener's effective connection limit; 0 means not published yet, which admits.
    pub maxconn: u32,
    /// Room behind the listener: `u32::MAX` while a backend has a server with room, else the
    /// largest free queue room among its backends.
    pub queue_room: u32,
}

/// Key of a per-source SYN bucket: the source address masked to its prefix, IPv4 as
/// `::ffff:a.b.c.d` so both families share one map.
///
/// 4-aligned (no padding: its size is a multiple of 4) so that the program builds it with
/// word moves, not one byte at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SrcKey {
    pub addr: [u8; 16],
}

/// A token bucket; tokens are scaled by [`NANOS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Bucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// A flow of floodgate's own flow table; addresses as in [`SrcKey`], ports in host order.
///
/// 4-aligned (no padding: its size is a multiple of 4) so that the program builds it with
/// word moves, not one byte at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// State of a flow in the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowState {
    pub first_ns: u64,
    pub last_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub listener: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: each is repr(C), Copy and free of padding, which the bytemuck::Pod derives check
    // at compile time.
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::IfaceSlot {}
    unsafe impl aya::Pod for super::ListenerCounters {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::Capacity {}
    unsafe impl aya::Pod for super::SrcKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::DestKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::reuseport::Group {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_indices_match_all() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        assert_eq!(Reason::ALL.len(), COUNTER_COUNT as usize);
    }

    #[test]
    fn verdicts_and_events() {
        assert_eq!(Reason::TxSynCookie.verdict(), Some(Verdict::Tx));
        assert_eq!(Reason::PassFailOpen.verdict(), Some(Verdict::Pass));
        assert_eq!(Reason::DropMalformed.verdict(), Some(Verdict::Drop));
        assert_eq!(Reason::DropCapacity.verdict(), Some(Verdict::Drop));
        assert_eq!(Reason::FlowInserted.verdict(), None);
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for name in maps::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }

    #[test]
    fn every_pinned_map_has_one_spec() {
        for name in maps::ALL {
            assert_eq!(
                maps::SPECS.iter().filter(|s| s.name == *name).count(),
                1,
                "{name}"
            );
        }
        assert_eq!(maps::SPECS.len(), maps::ALL.len());
        for name in maps::KERNEL_STATE {
            assert!(maps::ALL.contains(name), "{name}");
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::{align_of, size_of};
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<XdpConfig>(), 64);
        assert_eq!(size_of::<ListenerKey>(), 4);
        assert_eq!(size_of::<Capacity>(), 16);
        assert_eq!(size_of::<FlowKey>(), 36);
        assert_eq!(size_of::<FlowState>(), 40);
        // The keys the program builds with word moves: 4-aligned, and still unpadded.
        assert_eq!((size_of::<DestKey>(), align_of::<DestKey>()), (20, 4));
        assert_eq!((size_of::<SrcKey>(), align_of::<SrcKey>()), (16, 4));
        assert_eq!(align_of::<FlowKey>(), 4);
    }

    #[test]
    fn the_least_loaded_worker_gets_the_connection_and_ties_follow_the_hash() {
        use crate::reuseport::least_loaded;
        let loads = [5u32, 3, 3, 9];
        let load = |w: u32| loads.get(w as usize).copied();
        // Workers 1 and 2 tie: the scan starts at the hash, so each gets its share.
        assert_eq!(least_loaded(0, 4, load), Some(1));
        assert_eq!(least_loaded(1, 4, load), Some(1));
        assert_eq!(least_loaded(2, 4, load), Some(2));
        assert_eq!(least_loaded(3, 4, load), Some(1));
        assert_eq!(least_loaded(7, 4, load), Some(1));
        // Equal loads: the hash alone decides, every worker is chosen.
        let even = |_| Some(4);
        let mut seen = [false; 4];
        for h in 0..4 {
            seen[least_loaded(h, 4, even).unwrap() as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
        assert_eq!(least_loaded(9, 0, load), None);
        assert_eq!(
            least_loaded(9, crate::reuseport::MAX_WORKERS + 1, load),
            None
        );
        // A worker without a load entry: no choice, the kernel's hash decides.
        assert_eq!(least_loaded(0, 5, load), None);
        assert_eq!(least_loaded(0, 1, load), Some(0));
    }

    #[test]
    fn the_verified_filter_bit_is_in_range_and_spreads_ipv4_sources() {
        let mut words = [0u32; VERIFIED_FILTER_WORDS as usize / 32];
        for a in 0..4096u32 {
            let addr = [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                (0x0a00_0000 | a).to_be(),
            ];
            let (w, mask) = verified_filter_bit(addr);
            assert!(w < VERIFIED_FILTER_WORDS && mask.count_ones() == 1);
            words[w as usize / 32] |= 1 << (w % 32);
        }
        // 4,096 neighbouring addresses land in more than 3,000 distinct words of 32,768.
        let used: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(used > 3_000, "{used}");
    }
}
