//! floodgate's `SO_REUSEPORT` program: each new connection to a listener goes to the worker
//! with the fewest connections, active or waiting in its socket's accept queue, which the
//! workers and this program count in [`FG_WORKER_LOAD`].
//!
//! ```text
//! the group's socket -> its bound address -> FG_RP_GROUPS? --no--> the kernel's hash
//!   -> the least loaded worker (ties: the connection's hash) -> FG_RP_SOCKS[base + worker]
//!   (a socket missing or closing: the kernel's hash)
//! ```
//! The kernel's hash alone spreads connections evenly, not load: long-lived connections
//! (WebSockets, HTTP/2, keep-alive clients that stay) pile up where they happened to land and
//! one worker saturates while the other idles.
#![no_std]
#![no_main]
// `atomic_xadd`, below.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::sk_action,
    btf_maps::{Array, HashMap, ReusePortSockArray},
    macros::{btf_map, sk_reuseport},
    programs::SkReuseportContext,
};
use floodgate_common::{
    DestKey,
    reuseport::{
        F_MMAPABLE, Group, LOAD_SLOTS, MAX_GROUPS, MAX_SOCKETS, QUEUED, group_key, least_loaded,
    },
};

// Map statics are named after floodgate_common::reuseport (the object's map names come from them).

#[btf_map]
static FG_RP_GROUPS: HashMap<DestKey, Group, { MAX_GROUPS as usize }> = HashMap::new();
#[btf_map]
static FG_RP_SOCKS: ReusePortSockArray<{ MAX_SOCKETS as usize }> = ReusePortSockArray::new();
#[btf_map]
static FG_WORKER_LOAD: Array<u64, { LOAD_SLOTS as usize }, { F_MMAPABLE as usize }> = Array::new();

const AF_INET6: u32 = 10;

#[sk_reuseport]
pub fn floodgate_reuseport(ctx: SkReuseportContext) -> u32 {
    // Without a choice (an unknown group, a missing socket) the kernel's hash picks one: the
    // behaviour of a group without this program, never a refused connection.
    let _ = select(&ctx);
    sk_action::SK_PASS
}

#[inline(always)]
fn select(ctx: &SkReuseportContext) -> Option<()> {
    let sk = ctx.sk().sock;
    // Each field read on its own, at a constant offset: the verifier refuses pointer arithmetic
    // on a socket, which the compiler would otherwise use to pick between the address fields.
    // SAFETY: `md->sk` is the group's socket, never null at this hook (Linux 5.14+).
    let field = |f: *const u32| unsafe { core::ptr::read_volatile(f) };
    let (family, ip4, port) = unsafe {
        (
            field(&raw const (*sk).family),
            field(&raw const (*sk).src_ip4),
            field(&raw const (*sk).src_port),
        )
    };
    let ip6 = unsafe {
        [
            field(&raw const (*sk).src_ip6[0]),
            field(&raw const (*sk).src_ip6[1]),
            field(&raw const (*sk).src_ip6[2]),
            field(&raw const (*sk).src_ip6[3]),
        ]
    };
    let v6 = family == AF_INET6;
    // IPv4-mapped, as `DestKey` keeps IPv4 addresses.
    let addr: [u32; 4] = if v6 {
        ip6
    } else {
        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4]
    };
    // SAFETY: [u32; 4] and [u8; 16] have the same size and any bit pattern is valid for both.
    let addr: [u8; 16] = unsafe { core::mem::transmute(addr) };
    // `src_port` is in host byte order (the bound port).
    let key = group_key(v6, addr, port as u16);
    // SAFETY: the value is copied out before any other map call.
    let group = unsafe { FG_RP_GROUPS.get(key) }.copied()?;
    // SAFETY: workers write their counts through a shared mapping; an aligned u64 is never
    // torn, and a stale one only delays the balance by a connection.
    let read = |i: u32| {
        FG_WORKER_LOAD
            .get_ptr(i)
            .map(|p| unsafe { core::ptr::read_volatile(p) })
    };
    let queued = |w: u32| QUEUED.checked_add(group.base)?.checked_add(w);
    let worker = least_loaded(ctx.hash(), group.workers, |w| {
        let n = read(w)?.saturating_add(read(queued(w)?)?);
        Some(n.min(u64::from(u32::MAX)) as u32)
    })?;
    FG_RP_SOCKS
        .select_reuseport(ctx, group.base.checked_add(worker)?)
        .ok()?;
    // The connection waits in that socket's queue until the worker accepts it.
    let p = FG_WORKER_LOAD.get_ptr_mut(queued(worker)?)?;
    // `AtomicU64` has no read-modify-write methods on the BPF target (no `target_has_atomic`):
    // the intrinsic, a BPF atomic add, is what it would be.
    // SAFETY: a map value, aligned, live for the program's run; the workers change it with
    // atomics too.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, 1,
        )
    };
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
