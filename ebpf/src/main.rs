//! floodgate's XDP program: connection admission in front of the kernel TCP stack.
//!
//! ```text
//! parse -> a listener's port? --no--> PASS (SSH, kubelet, most of a node's traffic)
//!       -> addresses -> a flow in the table (not a SYN)? or a listener's address? --no-->
//!          PASS (pods' traffic to the same port untouched)
//!       -> CIDR deny / allow
//!       -> not a SYN: count conntrack bypass, refresh or remove the flow -> PASS
//!       -> SYN: under pressure (trusted / verified skip; global budget -> source bucket;
//!               over the budget: an XDP SYN cookie SYN-ACK -> TX, or DROP)
//!               -> capacity (or fail open) -> flow insert -> PASS
//! ```
//! Every packet is counted under exactly one verdict reason (`floodgate_common::Reason`).
#![no_std]
#![no_main]

mod cookie;
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_get_buff_len},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use floodgate_common::{
    Bucket, COUNTER_COUNT, Capacity, Counter, DEFAULT_FLOWS, DEFAULT_SRC_BUCKETS, DEFAULT_VERIFIED,
    DestKey, FAMILY_V4, FLAG_ALLOW_MODE, FLAG_CAPACITY, FLAG_DENY_V4, FLAG_DENY_V6,
    FLAG_FLOW_TABLE, FLAG_PRESSURE, FLAG_SYN_COOKIES, FLAG_TRUSTED_V4, FLAG_TRUSTED_V6,
    FLOW_CLOSING, FlowKey, FlowState, IFACE_BUCKETS, IfaceSlot, KERNEL_COOKIE_FRESH_NS,
    LISTENER_SLOTS, ListenerCounters, ListenerId, ListenerKey, MAX_CIDRS, MAX_DESTS, MAX_IFACES,
    MAX_LISTENERS, NANOS, Reason, SrcKey, VERIFIED_FILTER_WORDS, XdpConfig,
};
use parse::{Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp};

const NO_COMMON_LRU: usize = aya_ebpf::bindings::BPF_F_NO_COMMON_LRU as usize;

// The verdicts' values in `common` are the kernel's actions.
const _: () = {
    use floodgate_common::Verdict;
    assert!(Verdict::Drop.action() == xdp_action::XDP_DROP);
    assert!(Verdict::Pass.action() == xdp_action::XDP_PASS);
    assert!(Verdict::Tx.action() == xdp_action::XDP_TX);
};

// Map statics are named after floodgate_common::maps (the object's map names come from them).

#[btf_map]
static FG_CONFIG: Array<XdpConfig, 1> = Array::new();
#[btf_map]
static FG_LISTENERS: Array<u32, { LISTENER_SLOTS as usize }> = Array::new();
#[btf_map]
static FG_DESTS: HashMap<DestKey, u32, { MAX_DESTS as usize }> = HashMap::new();
#[btf_map]
static FG_CAPACITY: Array<Capacity, { MAX_LISTENERS as usize }> = Array::new();
#[btf_map]
static FG_HEARTBEAT: Array<u64, 1> = Array::new();
#[btf_map]
static FG_DENY_V4: LpmTrie<[u8; 4], u32, { MAX_CIDRS as usize }> = LpmTrie::new();
#[btf_map]
static FG_DENY_V6: LpmTrie<[u8; 16], u32, { MAX_CIDRS as usize }> = LpmTrie::new();
#[btf_map]
static FG_ALLOW_V4: LpmTrie<[u8; 4], u32, { MAX_CIDRS as usize }> = LpmTrie::new();
#[btf_map]
static FG_ALLOW_V6: LpmTrie<[u8; 16], u32, { MAX_CIDRS as usize }> = LpmTrie::new();
#[btf_map]
static FG_TRUSTED_V4: LpmTrie<[u8; 4], u32, { MAX_CIDRS as usize }> = LpmTrie::new();
#[btf_map]
static FG_TRUSTED_V6: LpmTrie<[u8; 16], u32, { MAX_CIDRS as usize }> = LpmTrie::new();
#[btf_map]
static FG_SRC_BUCKET: LruHashMap<SrcKey, Bucket, { DEFAULT_SRC_BUCKETS as usize }> =
    LruHashMap::new();
#[btf_map]
static FG_GLOBAL_BKT: PerCpuArray<Bucket, 1> = PerCpuArray::new();
// Per-CPU LRU lists: an insert takes the inserting CPU's free list, not one lock every CPU
// contends for (measured in `bench xdp`: the common LRU made a flow insert the most expensive
// step of an admitted SYN). Each CPU evicts from its own share, and RSS spreads flows evenly.
#[btf_map]
static FG_FLOWS: LruHashMap<FlowKey, FlowState, { DEFAULT_FLOWS as usize }, NO_COMMON_LRU> =
    LruHashMap::new();
#[btf_map]
static FG_VERIFIED: LruHashMap<SrcKey, u64, { DEFAULT_VERIFIED as usize }> = LruHashMap::new();
#[btf_map]
static FG_VERIFIED_BF: Array<u64, { VERIFIED_FILTER_WORDS as usize }> = Array::new();
#[btf_map]
static FG_STATS: PerCpuArray<Counter, { (MAX_IFACES * COUNTER_COUNT) as usize }> =
    PerCpuArray::new();
#[btf_map]
static FG_IFSLOT: Array<IfaceSlot, { IFACE_BUCKETS as usize }> = Array::new();
/// The packet being judged, parsed (`parse::Tcp`): a map value rather than the stack.
#[btf_map]
static FG_PACKET: PerCpuArray<Tcp, 1> = PerCpuArray::new();
#[btf_map]
static FG_KSYN: Array<u64, { MAX_LISTENERS as usize }> = Array::new();
#[btf_map]
static FG_LSTATS: PerCpuArray<ListenerCounters, { MAX_LISTENERS as usize }> = PerCpuArray::new();

#[xdp]
pub fn floodgate(ctx: XdpContext) -> u32 {
    // The interface's counter slot: verdicts and the events counted on the way go there.
    let iface = iface_slot(&ctx);
    let mut reason = decide(&ctx, iface);
    // The answer is built here, after `decide` returned, so that its frame and decide's are
    // never on the stack together (the verifier allows 512 bytes per call chain).
    if reason == Reason::TxSynCookie {
        // SAFETY: the helper reads this program's own context.
        let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
        if !cookie::answer(&ctx) {
            reason = Reason::DropSynRateGlobal;
        }
        count(iface, reason, len);
    }
    match reason.verdict() {
        Some(floodgate_common::Verdict::Drop) => xdp_action::XDP_DROP,
        Some(floodgate_common::Verdict::Tx) => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

/// The counter slot of the interface the packet arrived on: an array lookup, so per-interface
/// counters cost a few ns. Interfaces userspace did not register (and test runs) get slot 0.
#[inline(always)]
fn iface_slot(ctx: &XdpContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match FG_IFSLOT.get(floodgate_common::iface_bucket(ifindex)) {
        Some(s) if s.ifindex == ifindex && ifindex != 0 && s.slot < MAX_IFACES => s.slot,
        _ => 0,
    }
}

#[inline(always)]
fn count(slot: u32, reason: Reason, len: u64) {
    let Some(c) = FG_STATS.get_ptr_mut(floodgate_common::stats_index(slot, reason)) else {
        return;
    };
    // SAFETY: per-CPU slot; XDP does not preempt itself on one CPU.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += len;
    }
}

/// The verdict on one packet, counted, except a SYN cookie's, which `floodgate` counts once it
/// is sent. Not inlined: see `floodgate`.
#[inline(never)]
fn decide(ctx: &XdpContext, iface: u32) -> Reason {
    // The helper rather than data_end - data: as a call's argument the context pointer stays
    // a pointer, where LLVM would otherwise pass the two fields to this function as integers,
    // which the verifier refuses as packet pointer arithmetic.
    // SAFETY: the helper reads this program's own context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let reason = judge(ctx, len, iface);
    if reason != Reason::TxSynCookie {
        count(iface, reason, len);
    }
    reason
}

#[inline(always)]
fn judge(ctx: &XdpContext, len: u64, iface: u32) -> Reason {
    let Some(tcp) = FG_PACKET.get_ptr_mut(0) else {
        return Reason::PassNotIp;
    };
    // SAFETY: per-CPU map value, valid for this run; XDP does not preempt itself on one CPU.
    let tcp = unsafe { &mut *tcp };
    match parse::parse(ctx, tcp) {
        Parsed::NotIp => return Reason::PassNotIp,
        Parsed::NotTcp => return Reason::PassNotTcp,
        Parsed::Fragment => return Reason::PassFragment,
        Parsed::Malformed => return Reason::DropMalformed,
        Parsed::Tcp => {}
    }
    let slot = ListenerKey {
        family: tcp.family,
        port: tcp.dport,
    }
    .slot();
    if !matches!(FG_LISTENERS.get(slot), Some(&on) if on != 0) {
        return Reason::PassNotListener;
    }
    if !parse::addresses(ctx, tcp) {
        return Reason::DropMalformed;
    }
    // A one-entry array always has its entry; read in place, not copied, to spare the stack.
    let Some(cfg) = FG_CONFIG.get(0) else {
        return Reason::PassNotListener;
    };
    let syn = tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A packet of a flow in the table goes to a listener: flows are only inserted for SYNs to
    // one. Its flow's lookup then stands in for the destination's, one hash lookup instead of
    // two on the path most packets take.
    let flow = if !syn && cfg.flags & FLAG_FLOW_TABLE != 0 {
        FG_FLOWS.get_ptr_mut(flow_key(tcp))
    } else {
        None
    };
    let listener = match flow {
        // SAFETY: LRU value valid for this run.
        Some(f) => unsafe { (*f).listener },
        // The port is a listener's; the address must be one it listens on too.
        None => match dest_listener(tcp) {
            Some(l) => l,
            None => return Reason::PassNotListener,
        },
    };
    if !tcp.header_complete {
        return Reason::DropMalformed;
    }
    if let Some(r) = cidr_verdict(tcp, cfg) {
        return r;
    }
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let reason = if syn {
        admit_syn(ctx, tcp, cfg, listener, now, iface)
    } else {
        established(tcp, cfg, flow, len, now, iface);
        Reason::PassEstablished
    };
    listener_count(listener, reason, len);
    reason
}

/// The listener taking connections at the packet's destination address and port. Not inlined:
/// its key lives in a frame of its own, since the program's own frame is at the verifier's
/// 512-byte limit together with the log calls'.
#[inline(never)]
fn dest_listener(tcp: &Tcp) -> Option<ListenerId> {
    let dest = DestKey {
        addr: tcp.daddr,
        family: tcp.family,
        port: tcp.dport,
    };
    // SAFETY: a plain u32 read once.
    match unsafe { FG_DESTS.get(dest) } {
        Some(&id) if id != 0 => Some(id - 1),
        _ => None,
    }
}

/// Deny list first, then the allow list in allow mode. Applies to every packet to a listener,
/// so a range denied on reload also loses its established connections' packets.
#[inline(always)]
fn cidr_verdict(tcp: &Tcp, cfg: &XdpConfig) -> Option<Reason> {
    let (denied, allowed) = if tcp.family == FAMILY_V4 {
        let key = Key::new(
            32,
            [tcp.saddr[12], tcp.saddr[13], tcp.saddr[14], tcp.saddr[15]],
        );
        (
            cfg.flags & FLAG_DENY_V4 != 0 && FG_DENY_V4.get(&key).is_some(),
            cfg.flags & FLAG_ALLOW_MODE == 0 || FG_ALLOW_V4.get(&key).is_some(),
        )
    } else {
        let key = Key::new(128, tcp.saddr);
        (
            cfg.flags & FLAG_DENY_V6 != 0 && FG_DENY_V6.get(&key).is_some(),
            cfg.flags & FLAG_ALLOW_MODE == 0 || FG_ALLOW_V6.get(&key).is_some(),
        )
    };
    if denied {
        Some(Reason::DropDenyCidr)
    } else if !allowed {
        Some(Reason::DropNotAllowed)
    } else {
        None
    }
}

#[inline(always)]
fn admit_syn(
    ctx: &XdpContext,
    tcp: &Tcp,
    cfg: &XdpConfig,
    listener: ListenerId,
    now: u64,
    iface: u32,
) -> Reason {
    // The SYN rate limits apply only under SYN pressure (userspace's FLAG_PRESSURE): a busy
    // legitimate address is never throttled in normal operation, and a SYN costs nothing here.
    // Whether a flow may be inserted for this SYN: always without pressure (spoofed SYNs are
    // rare then), and under pressure only for a source proven real (trusted or verified), so a
    // spoofed flood never fills the flow table or evicts legitimate flows from it.
    let mut insert_flow = true;
    let pressure = cfg.flags & FLAG_PRESSURE != 0;
    if pressure {
        match rate_limits(ctx, tcp, cfg, now, iface) {
            Err(Reason::DropSynRateGlobal) => {
                return over_budget(ctx, tcp, cfg, listener, now, iface);
            }
            Err(r) => return r,
            Ok(proven) => insert_flow = proven,
        }
    }
    let reason = match room(cfg, listener, now) {
        Room::Full => {
            log_drop(ctx, tcp, Reason::DropCapacity, iface);
            return Reason::DropCapacity;
        }
        Room::FailOpen => Reason::PassFailOpen,
        Room::Admit => Reason::PassSynAdmitted,
    };
    if pressure && cfg.flags & FLAG_SYN_COOKIES != 0 {
        kernel_syn_passed(listener, now);
    }
    if insert_flow && cfg.flags & FLAG_FLOW_TABLE != 0 && new_flow(tcp, listener, now) {
        count(iface, Reason::FlowInserted, 0);
    }
    reason
}

/// Inserts the SYN's flow. Not inlined: its key and value get a frame of their own instead of
/// adding to the main one, which the cookie path's frame shares the 512-byte limit with.
#[inline(never)]
fn new_flow(tcp: &Tcp, listener: ListenerId, now: u64) -> bool {
    let state = FlowState {
        first_ns: now,
        last_ns: now,
        packets: 1,
        bytes: 0,
        listener,
        flags: 0,
    };
    FG_FLOWS.insert(flow_key(tcp), state, 0).is_ok()
}

enum Room {
    Admit,
    /// Userspace's heartbeat is stale: admitted unchecked.
    FailOpen,
    Full,
}

#[inline(always)]
fn room(cfg: &XdpConfig, listener: ListenerId, now: u64) -> Room {
    if cfg.flags & FLAG_CAPACITY == 0 {
        return Room::Admit;
    }
    let heartbeat = FG_HEARTBEAT.get(0).copied().unwrap_or(0);
    if cfg.fail_open_after_ns != 0 && now.saturating_sub(heartbeat) > cfg.fail_open_after_ns {
        // A stuck or restarting proxy must never blackhole the node.
        return Room::FailOpen;
    }
    // maxconn 0: userspace has not published this listener yet; never drop on a guess.
    let admit = FG_CAPACITY
        .get(listener)
        .is_none_or(|c| c.admit != 0 || c.maxconn == 0);
    if admit { Room::Admit } else { Room::Full }
}

/// A SYN over the global budget: answered with an XDP SYN cookie when that is on and the
/// kernel will accept the cookie's ACK for this listener, dropped otherwise. A listener that
/// is full gets no cookie: its ACK would only overflow the accept queue.
#[inline(always)]
fn over_budget(
    ctx: &XdpContext,
    tcp: &Tcp,
    cfg: &XdpConfig,
    listener: ListenerId,
    now: u64,
    iface: u32,
) -> Reason {
    if cfg.flags & FLAG_SYN_COOKIES != 0
        && kernel_cookies_fresh(listener, now)
        && !matches!(room(cfg, listener, now), Room::Full)
        && cookie::prepare(tcp, cfg)
    {
        return Reason::TxSynCookie;
    }
    log_drop(ctx, tcp, Reason::DropSynRateGlobal, iface);
    Reason::DropSynRateGlobal
}

/// Whether the kernel answered one of this listener's SYNs with a cookie recently enough to
/// accept the ACK of one of ours (see `cookie.rs`).
#[inline(always)]
fn kernel_cookies_fresh(listener: ListenerId, now: u64) -> bool {
    match FG_KSYN.get(listener) {
        Some(&at) => at != 0 && now.saturating_sub(at) < KERNEL_COOKIE_FRESH_NS,
        None => false,
    }
}

/// Records that a SYN of `listener` went to the kernel while it answers every SYN with a
/// cookie. Written at most once a second per listener, so CPUs do not fight over the line.
#[inline(always)]
fn kernel_syn_passed(listener: ListenerId, now: u64) {
    if let Some(at) = FG_KSYN.get_ptr_mut(listener) {
        // SAFETY: an array value valid for this run; a lost race writes an equally fresh time.
        unsafe {
            if now.saturating_sub(*at) > NANOS {
                *at = now;
            }
        }
    }
}

/// Under pressure: trusted and verified sources skip the limits. For the others, cheapest
/// check first: an empty global budget (a per-CPU array) drops every unproven SYN without
/// touching a per-source map, so a random-source flood costs one LRU lookup (the verified
/// check) per SYN and never an insert. With budget left, a known source's bucket judges it
/// before the budget is charged, so one flooding address is stopped there without draining
/// the budget everyone shares; a new source the budget let through gets its bucket.
/// `Ok(true)`: a source proven real; `Err`: a drop.
#[inline(always)]
fn rate_limits(
    ctx: &XdpContext,
    tcp: &Tcp,
    cfg: &XdpConfig,
    now: u64,
    iface: u32,
) -> Result<bool, Reason> {
    if trusted(tcp, cfg) {
        count(iface, Reason::SynTrustedBypass, 0);
        return Ok(true);
    }
    let global = if cfg.global_rate_per_cpu != 0 {
        FG_GLOBAL_BKT.get_ptr_mut(0)
    } else {
        None
    };
    // SAFETY (all global bucket accesses): per-CPU slot, no concurrent writer.
    let budget_left = global.is_none_or(|b| unsafe {
        refill(
            &mut *b,
            cfg.global_rate_per_cpu,
            cfg.global_burst_per_cpu,
            cfg.global_fill_ns,
            now,
        ) >= NANOS
    });
    if verified(tcp, cfg, now) {
        count(iface, Reason::SynVerifiedBypass, 0);
        return Ok(true);
    }
    if !budget_left {
        // Logged by the caller, which may answer it with a cookie instead.
        return Err(Reason::DropSynRateGlobal);
    }
    let key = src_key(tcp, cfg);
    let mut known = false;
    if cfg.src_rate != 0
        && let Some(b) = FG_SRC_BUCKET.get_ptr_mut(key)
    {
        known = true;
        // SAFETY: the LRU value stays valid for this program run. The read-modify-write is
        // not atomic across CPUs: a source whose SYNs land on N CPUs at the same instant may
        // be granted up to N-1 extra tokens, which is harmless for a rate limit.
        if !unsafe { take_token(&mut *b, cfg.src_rate, cfg.src_burst, cfg.src_fill_ns, now) } {
            log_drop(ctx, tcp, Reason::DropSynRateSource, iface);
            return Err(Reason::DropSynRateSource);
        }
    }
    if let Some(b) = global {
        // refill() above left at least one token.
        unsafe { (*b).tokens -= NANOS };
    }
    if cfg.src_rate != 0 && !known {
        let mut b = Bucket {
            tokens: u64::from(cfg.src_burst) * NANOS,
            last_ns: now,
        };
        // The first SYN of a source always has a token (a burst is at least 1).
        let _ = take_token(&mut b, cfg.src_rate, cfg.src_burst, cfg.src_fill_ns, now);
        // A full LRU evicts its oldest source; nothing to do on failure.
        let _ = FG_SRC_BUCKET.insert(key, b, 0);
    }
    Ok(false)
}

/// `xdp.trusted`: sources never rate limited.
#[inline(always)]
fn trusted(tcp: &Tcp, cfg: &XdpConfig) -> bool {
    if tcp.family == FAMILY_V4 {
        cfg.flags & FLAG_TRUSTED_V4 != 0
            && FG_TRUSTED_V4
                .get(&Key::new(
                    32,
                    [tcp.saddr[12], tcp.saddr[13], tcp.saddr[14], tcp.saddr[15]],
                ))
                .is_some()
    } else {
        cfg.flags & FLAG_TRUSTED_V6 != 0 && FG_TRUSTED_V6.get(&Key::new(128, tcp.saddr)).is_some()
    }
}

/// A source the kernel recently accepted a connection from cannot be spoofed: during a flood
/// from random sources, it keeps connecting while the global budget drops the rest.
#[inline(always)]
fn verified(tcp: &Tcp, cfg: &XdpConfig, now: u64) -> bool {
    if cfg.verified_ttl_s == 0 {
        return false;
    }
    // SAFETY: `saddr` is at offset 0 of the 8-aligned `Tcp`: four aligned words.
    let words = unsafe { *tcp.saddr.as_ptr().cast::<[u32; 4]>() };
    let (word, mask) = floodgate_common::verified_filter_bit(words);
    // Most of a random-source flood stops here, at an array read (`maps::VERIFIED_FILTER`).
    if !FG_VERIFIED_BF.get(word).is_some_and(|w| w & mask != 0) {
        return false;
    }
    // SAFETY: a plain u64 read once.
    match unsafe { FG_VERIFIED.get(SrcKey { addr: tcp.saddr }) } {
        Some(&at) => now.saturating_sub(at) < u64::from(cfg.verified_ttl_s) * NANOS,
        None => false,
    }
}

/// Refills `b` for the time since its last update; returns its tokens (in nanotokens).
/// `fill_ns` is `bucket_fill_ns(rate, burst)`, from userspace.
#[inline(always)]
fn refill(b: &mut Bucket, rate: u32, burst: u32, fill_ns: u64, now: u64) -> u64 {
    let cap = u64::from(burst) * NANOS;
    let elapsed = now.saturating_sub(b.last_ns);
    // Past this much time the bucket is full anyway; checking first keeps elapsed * rate from
    // overflowing after a long idle period (elapsed * rate < burst * NANOS here).
    let tokens = if elapsed >= fill_ns {
        cap
    } else {
        (b.tokens + elapsed * u64::from(rate)).min(cap)
    };
    b.last_ns = now;
    b.tokens = tokens;
    tokens
}

/// Refills `b` and takes one token if there is one.
#[inline(always)]
fn take_token(b: &mut Bucket, rate: u32, burst: u32, fill_ns: u64, now: u64) -> bool {
    if refill(b, rate, burst, fill_ns, now) >= NANOS {
        b.tokens -= NANOS;
        true
    } else {
        false
    }
}

#[inline(always)]
fn src_key(tcp: &Tcp, cfg: &XdpConfig) -> SrcKey {
    // IPv4 lives in the last 4 bytes (::ffff:a.b.c.d): its prefix starts at bit 96.
    let bits = if tcp.family == FAMILY_V4 {
        96 + cfg.src_prefix_v4.min(32)
    } else {
        cfg.src_prefix_v6.min(128)
    };
    let mut addr = tcp.saddr;
    let mut i = 0;
    while i < 16 {
        let start = (i * 8) as u32;
        if start >= bits {
            addr[i] = 0;
        } else if bits - start < 8 {
            addr[i] &= 0xffu8 << (8 - (bits - start));
        }
        i += 1;
    }
    SrcKey { addr }
}

#[inline(always)]
fn flow_key(tcp: &Tcp) -> FlowKey {
    FlowKey {
        saddr: tcp.saddr,
        daddr: tcp.daddr,
        sport: tcp.sport,
        dport: tcp.dport,
    }
}

/// A packet of a connection: refreshes its flow (`flow`, looked up by `judge`), or removes it
/// on RST and after the client's FIN.
#[inline(always)]
fn established(
    tcp: &Tcp,
    cfg: &XdpConfig,
    flow: Option<*mut FlowState>,
    len: u64,
    now: u64,
    iface: u32,
) {
    if cfg.flags & FLAG_FLOW_TABLE == 0 {
        return;
    }
    let Some(f) = flow else {
        count(iface, Reason::FlowMiss, len);
        return;
    };
    // SAFETY: LRU value valid for this run; a lost increment between CPUs only skews statistics.
    let flags = unsafe { (*f).flags };
    let closing = flags & FLOW_CLOSING != 0;
    // The client's FIN is usually followed by its last ACK: keep the flow until then, so that
    // ACK is not mistaken for a packet of an unknown flow.
    if tcp.flags & TCP_RST != 0 || closing {
        if FG_FLOWS.remove(flow_key(tcp)).is_ok() {
            count(iface, Reason::FlowRemoved, 0);
        }
        return;
    }
    unsafe {
        (*f).last_ns = now;
        (*f).packets += 1;
        (*f).bytes += len;
        if tcp.flags & TCP_FIN != 0 {
            (*f).flags |= FLOW_CLOSING;
        }
    }
}

#[inline(always)]
fn listener_count(listener: ListenerId, reason: Reason, len: u64) {
    let Some(c) = FG_LSTATS.get_ptr_mut(listener) else {
        return;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        match reason {
            Reason::PassEstablished => {
                (*c).established_packets += 1;
                (*c).established_bytes += len;
            }
            Reason::PassSynAdmitted | Reason::PassFailOpen => (*c).syn_admitted += 1,
            // Neither admitted to the kernel nor refused: the client's ACK decides.
            Reason::TxSynCookie => {}
            _ => (*c).syn_dropped += 1,
        }
    }
}

/// Logs the first drop of each reason on each CPU and then one in 4096, so a flood cannot flood
/// the log; the counters carry the exact numbers.
#[inline(always)]
fn log_drop(ctx: &XdpContext, tcp: &Tcp, reason: Reason, iface: u32) {
    let n = FG_STATS
        .get(floodgate_common::stats_index(iface, reason))
        .map_or(0, |c| c.packets);
    if n & 4095 != 0 {
        return;
    }
    let code = reason as u32;
    if tcp.family == FAMILY_V4 {
        let src = [tcp.saddr[12], tcp.saddr[13], tcp.saddr[14], tcp.saddr[15]];
        warn!(
            ctx,
            "SYN dropped: reason={} src={:i} dport={}", code, src, tcp.dport
        );
    } else {
        warn!(
            ctx,
            "SYN dropped: reason={} src={:i} dport={}", code, tcp.saddr, tcp.dport
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
