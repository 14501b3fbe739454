//! SYN cookies from XDP: a SYN over the global budget is answered in place with a SYN-ACK
//! whose sequence number is the kernel's own SYN cookie (`bpf_tcp_raw_gen_syncookie_*`, the
//! kernel's secret and encoding), sent back out of the interface it came in on (`XDP_TX`).
//! The SYN never reaches the kernel's SYN queue or its TCP code. A real client's ACK passes
//! to the kernel, which checks the cookie and creates the connection as if it had sent the
//! SYN-ACK itself; a spoofed source never answers, and nothing was stored for it.
//!
//! The kernel accepts a cookie ACK only within two minutes of answering a SYN of that listener
//! with a cookie of its own; userspace turns `FLAG_SYN_COOKIES` on only while
//! `net.ipv4.tcp_syncookies` is 2, and the caller only when this listener's SYN reached the
//! kernel recently (`maps::KERNEL_SYN`). The SYN-ACK carries no timestamp option: the
//! kernel's timestamp offset is secret, so the window-scale and SACK options a timestamp cookie
//! would encode are not offered, as for a client without timestamps under the kernel's own
//! cookies. `docs/xdp.md` says what that costs.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    btf_maps::PerCpuArray,
    helpers::{
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
        bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::btf_map,
    programs::XdpContext,
};
use floodgate_common::{FAMILY_V4, XdpConfig};

use crate::parse::Tcp;

/// The SYN's headers copied out of the packet (the helpers read them from a map value, which
/// keeps the program's stack under the verifier's 512 bytes) and the reply built in place.
#[repr(C)]
pub struct Scratch {
    // What `prepare` noted of the SYN.
    l3: u32,
    l4: u32,
    tcp_len: u32,
    v4: u32,
    mss: u16,
    ip: [u8; 40],
    tcp: [u8; 60],
    eth: [u8; 12],
    out_eth: [u8; 12],
    out_ip: [u8; 40],
    out_tcp: [u8; REPLY_TCP_LEN as usize],
}

/// A TCP header with one option, the MSS.
const REPLY_TCP_LEN: u32 = 24;
const TTL: u8 = 64;
/// The kernel's initial receive window without window scaling is ten segments
/// (`TCP_DEFAULT_INIT_RCVWND`): offering more would let the client send what the connection
/// the kernel creates would drop.
const INIT_RCVWND_SEGMENTS: u32 = 10;

#[btf_map]
static FG_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Notes what `answer` needs of the SYN `decide` judged (the program's frame cannot hold
/// both). `false`: it cannot be answered (IP options, an IPv6 extension header, a bad data
/// offset); the caller drops it, as it would have without cookies.
#[inline(always)]
pub fn prepare(tcp: &Tcp, cfg: &XdpConfig) -> bool {
    let Some(s) = FG_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let v4 = tcp.family == FAMILY_V4;
    let ip_len: u32 = if v4 { 20 } else { 40 };
    if tcp.l4 != tcp.l3 + ip_len || tcp.tcp_len < 20 || tcp.tcp_len > 60 {
        return false;
    }
    let mss = if v4 {
        cfg.cookie_mss_v4
    } else {
        cfg.cookie_mss_v6
    };
    // SAFETY: per-CPU map value, valid for this run; XDP does not preempt itself on one CPU.
    unsafe {
        (*s).l3 = tcp.l3;
        (*s).l4 = tcp.l4;
        (*s).tcp_len = tcp.tcp_len;
        (*s).v4 = u32::from(v4);
        (*s).mss = if mss == 0 { 536 } else { mss };
    }
    true
}

/// Rewrites the SYN `prepare` noted into its SYN-cookie SYN-ACK. `false`: it could not be
/// answered (no room, a helper error); the caller drops it. Not inlined: its work stays out
/// of the main frame.
#[inline(never)]
pub fn answer(ctx: &XdpContext) -> bool {
    let Some(s) = FG_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map value, valid for this run; XDP does not preempt itself on one CPU.
    let s = unsafe { &mut *s };
    let v4 = s.v4 != 0;
    let ip_len: u32 = if v4 { 20 } else { 40 };
    let (l3, l4) = (s.l3, s.l4);
    // The mask bounds the length for the verifier (a data offset times 4 is a multiple of 4
    // up to 60); the comparison on the same value gives it its floor.
    let th_len = s.tcp_len & 0x3c;
    if th_len < 20 {
        return false;
    }
    let raw = ctx.ctx;
    // SAFETY (helper calls): every buffer is a field of the map value, at least as long as
    // the length passed with it.
    unsafe {
        if bpf_xdp_load_bytes(raw, 0, s.eth.as_mut_ptr().cast(), 12) != 0
            || bpf_xdp_load_bytes(raw, l3, s.ip.as_mut_ptr().cast(), ip_len) != 0
            || bpf_xdp_load_bytes(raw, l4, s.tcp.as_mut_ptr().cast(), th_len) != 0
        {
            return false;
        }
    }
    let cookie = unsafe {
        if v4 {
            bpf_tcp_raw_gen_syncookie_ipv4(
                s.ip.as_mut_ptr().cast::<iphdr>(),
                s.tcp.as_mut_ptr().cast::<tcphdr>(),
                th_len,
            )
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(
                s.ip.as_mut_ptr().cast::<ipv6hdr>(),
                s.tcp.as_mut_ptr().cast::<tcphdr>(),
                th_len,
            )
        }
    };
    if cookie < 0 {
        return false;
    }
    let isn = cookie as u32;
    // Bits 32..47: the client's MSS as the cookie encodes it (rounded down to the kernel's table).
    let client_mss = ((cookie >> 32) & 0xffff) as u32;
    let client_seq = u32::from_be_bytes([s.tcp[4], s.tcp[5], s.tcp[6], s.tcp[7]]);
    let our_mss = s.mss;
    let window = (INIT_RCVWND_SEGMENTS * client_mss.max(536)).min(65_535) as u16;

    // The reply's IP header: addresses swapped, nothing else kept from the SYN.
    let mut sum: u32 = 0;
    if v4 {
        let total = (20 + REPLY_TCP_LEN) as u16;
        let o = &mut s.out_ip;
        o[0] = 0x45;
        o[1] = 0;
        o[2..4].copy_from_slice(&total.to_be_bytes());
        o[4] = 0;
        o[5] = 0;
        // Don't fragment, as the kernel sends a SYN-ACK.
        o[6] = 0x40;
        o[7] = 0;
        o[8] = TTL;
        o[9] = 6;
        o[10] = 0;
        o[11] = 0;
        let mut i = 0;
        while i < 4 {
            o[12 + i] = s.ip[16 + i];
            o[16 + i] = s.ip[12 + i];
            i += 1;
        }
        let csum = fold(sum_words(&o[..20]));
        o[10..12].copy_from_slice(&csum.to_be_bytes());
        // Pseudo header: addresses, protocol, TCP length.
        sum += sum_words(&o[12..20]) + 6 + REPLY_TCP_LEN;
    } else {
        let o = &mut s.out_ip;
        o[0] = 0x60;
        o[1] = 0;
        o[2] = 0;
        o[3] = 0;
        o[4..6].copy_from_slice(&(REPLY_TCP_LEN as u16).to_be_bytes());
        o[6] = 6;
        o[7] = TTL;
        let mut i = 0;
        while i < 16 {
            o[8 + i] = s.ip[24 + i];
            o[24 + i] = s.ip[8 + i];
            i += 1;
        }
        sum += sum_words(&o[8..40]) + 6 + REPLY_TCP_LEN;
    }

    let t = &mut s.out_tcp;
    // Ports swapped.
    t[0] = s.tcp[2];
    t[1] = s.tcp[3];
    t[2] = s.tcp[0];
    t[3] = s.tcp[1];
    t[4..8].copy_from_slice(&isn.to_be_bytes());
    t[8..12].copy_from_slice(&client_seq.wrapping_add(1).to_be_bytes());
    t[12] = ((REPLY_TCP_LEN / 4) as u8) << 4;
    t[13] = crate::parse::TCP_SYN | crate::parse::TCP_ACK;
    t[14..16].copy_from_slice(&window.to_be_bytes());
    t[16] = 0;
    t[17] = 0;
    t[18] = 0;
    t[19] = 0;
    // MSS option.
    t[20] = 2;
    t[21] = 4;
    t[22..24].copy_from_slice(&our_mss.to_be_bytes());
    sum += sum_words(&t[..]);
    let csum = fold(sum);
    t[16..18].copy_from_slice(&csum.to_be_bytes());

    // The reply is the SYN's headers resized: a SYN carries options (and may carry data) the
    // SYN-ACK does not.
    let want = (l4 + REPLY_TCP_LEN) as i64;
    // SAFETY: the helper reads this program's own context.
    let have = unsafe { bpf_xdp_get_buff_len(raw) } as i64;
    let delta = want - have;
    // SAFETY: helper calls on this program's own context; lengths are the buffers' own.
    unsafe {
        if delta != 0 && bpf_xdp_adjust_tail(raw, delta as i32) != 0 {
            return false;
        }
        let mut i = 0;
        while i < 6 {
            s.out_eth[i] = s.eth[6 + i];
            s.out_eth[6 + i] = s.eth[i];
            i += 1;
        }
        bpf_xdp_store_bytes(raw, 0, s.out_eth.as_mut_ptr().cast(), 12) == 0
            && bpf_xdp_store_bytes(raw, l3, s.out_ip.as_mut_ptr().cast(), ip_len) == 0
            && bpf_xdp_store_bytes(raw, l4, s.out_tcp.as_mut_ptr().cast(), REPLY_TCP_LEN) == 0
    }
}

/// Sum of big-endian 16-bit words (`b` has an even length).
#[inline(always)]
fn sum_words(b: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < b.len() {
        sum += u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    sum
}

/// The one's complement of the one's-complement sum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
