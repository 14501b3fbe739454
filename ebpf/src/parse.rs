//! Header parsing: Ethernet, 802.1Q/802.1ad, IPv4 (options), IPv6 (extension headers), TCP.
//!
//! Every read is bounds-checked against `data_end`; nothing here can fault on input.

use aya_ebpf::programs::XdpContext;
use floodgate_common::{FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The TCP facts admission needs. Addresses are IPv6 or `::ffff:a.b.c.d`. Lives in a per-CPU
/// map value (`FG_PACKET`), not on the stack: see [`parse`]. The addresses come first and the
/// struct is 8-aligned, so they are written and copied into map keys as whole words (with
/// 1-aligned fields LLVM moved them a byte at a time and called `memset` for the IPv4 prefix).
#[repr(C, align(8))]
pub struct Tcp {
    /// Filled by [`addresses`], only for a packet to a listener's port.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// Whether the whole TCP header (data offset included) is inside the packet.
    pub header_complete: bool,
    /// Offsets of the IP and TCP headers in the frame, and the TCP header's length (data
    /// offset), for answering the packet.
    pub l3: u32,
    pub l4: u32,
    pub tcp_len: u32,
}

pub enum Parsed {
    NotIp,
    NotTcp,
    Fragment,
    /// IP whose headers are truncated or inconsistent: the kernel would discard it too.
    Malformed,
    /// TCP: its facts are in the `Tcp` passed to [`parse`].
    Tcp,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: ptr_at checked both bytes; packet data has no alignment guarantee.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    // SAFETY: ptr_at checked all N bytes; [u8; N] has alignment 1.
    ptr_at::<[u8; N]>(ctx, offset).map(|p| unsafe { *p })
}

/// Writes `::ffff:a.b.c.d` as two 8-byte stores.
#[inline(always)]
fn set_v4_mapped(dst: *mut [u8; 16], a: [u8; 4]) {
    let dst = dst.cast::<u64>();
    // SAFETY: `dst` is `Tcp::saddr` or `Tcp::daddr`, at offsets 0 and 16 of an 8-aligned
    // struct, so both words are in bounds and aligned.
    unsafe {
        dst.write(0);
        dst.add(1).write(u64::from_ne_bytes([
            0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]));
    }
}

/// Copies the packet's addresses into `out`, after [`parse`] said it is TCP and the caller
/// found a listener on its port: packets to other ports (most of a node's) never pay for the
/// copy. `false` only if the headers `parse` checked are no longer there, which cannot happen.
#[inline(always)]
pub fn addresses(ctx: &XdpContext, out: &mut Tcp) -> bool {
    // The mask gives the verifier the bound it lost when the offset went through the map
    // value: the IP header starts at 14, 18 or 22 (two VLAN tags at most).
    let l3 = (out.l3 & 0x1f) as usize;
    if out.family == FAMILY_V4 {
        let Some(a) = bytes_at::<8>(ctx, l3 + 12) else {
            return false;
        };
        set_v4_mapped(&raw mut out.saddr, [a[0], a[1], a[2], a[3]]);
        set_v4_mapped(&raw mut out.daddr, [a[4], a[5], a[6], a[7]]);
    } else {
        let Some(addrs) = ptr_at::<[u8; 32]>(ctx, l3 + 8) else {
            return false;
        };
        // SAFETY: ptr_at checked all 32 bytes; byte copies need no alignment.
        unsafe {
            core::ptr::copy_nonoverlapping(addrs.cast::<u8>(), out.saddr.as_mut_ptr(), 16);
            core::ptr::copy_nonoverlapping(addrs.cast::<u8>().add(16), out.daddr.as_mut_ptr(), 16);
        }
    }
    true
}

/// Parses the frame in `ctx`; for TCP, fills `out` except its addresses (see [`addresses`]).
/// `out` is a map value: built as local arrays, LLVM kept each header byte in a register and
/// spilled it to a stack slot of its own, hundreds of bytes of the verifier's 512.
#[inline(always)]
pub fn parse(ctx: &XdpContext, out: &mut Tcp) -> Parsed {
    // A frame too short for its Ethernet or VLAN header is not IP as far as we can tell: the
    // stack decides what to do with it, as it would without floodgate.
    let Some(mut ethertype) = be16_at(ctx, 12) else {
        return Parsed::NotIp;
    };
    let mut l3 = ETH_HLEN;
    // 802.1ad outer tag, then 802.1Q: at most two tags.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = be16_at(ctx, l3 + 2) else {
            return Parsed::NotIp;
        };
        ethertype = inner;
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_v4(ctx, l3, out),
        ETH_P_IPV6 => parse_v6(ctx, l3, out),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize, out: &mut Tcp) -> Parsed {
    // Version/IHL, fragment field, protocol and both addresses are within the fixed 20 bytes;
    // the addresses are read later, by `addresses`.
    let Some(hdr) = bytes_at::<20>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff != 0 {
        return Parsed::Fragment;
    }
    if hdr[9] != IPPROTO_TCP {
        return Parsed::NotTcp;
    }
    parse_tcp(ctx, l3, l3 + ihl, FAMILY_V4, out)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize, out: &mut Tcp) -> Parsed {
    // The fixed header's first 8 bytes by value; the addresses are copied later, memory to
    // memory, by `addresses` (read as one 40-byte value, LLVM kept its 32 address bytes in
    // registers and spilled each to a stack slot of its own, 256 bytes of the verifier's 512).
    let Some(hdr) = bytes_at::<8>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if ptr_at::<[u8; 32]>(ctx, l3 + 8).is_none() {
        return Parsed::Malformed;
    }
    if hdr[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut next = hdr[6];
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IPPROTO_TCP => return parse_tcp(ctx, l3, off, FAMILY_V6, out),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = bytes_at::<2>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPV6_AH => {
                let Some(ext) = bytes_at::<2>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                (ext[1] as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                let Some(ext) = bytes_at::<4>(ctx, off) else {
                    return Parsed::Malformed;
                };
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    return Parsed::Fragment;
                }
                next = ext[0];
                8
            }
            _ => return Parsed::NotTcp,
        };
        off += len;
    }
    if next == IPPROTO_TCP {
        return parse_tcp(ctx, l3, off, FAMILY_V6, out);
    }
    // More extension headers than any sane sender uses: refusing to look further must not let
    // the packet bypass admission, so it counts as malformed.
    match next {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT => Parsed::Malformed,
        _ => Parsed::NotTcp,
    }
}

#[inline(always)]
fn parse_tcp(ctx: &XdpContext, l3: usize, l4: usize, family: u16, out: &mut Tcp) -> Parsed {
    // Ports, data offset and flags are in the first 14 bytes; a packet without them cannot be
    // matched to a listener and is not valid TCP.
    let Some(hdr) = bytes_at::<14>(ctx, l4) else {
        return Parsed::Malformed;
    };
    let doff = ((hdr[12] >> 4) as usize) * 4;
    let header_complete = doff >= 20 && ctx.data() + l4 + doff <= ctx.data_end();
    out.family = family;
    out.sport = u16::from_be_bytes([hdr[0], hdr[1]]);
    out.dport = u16::from_be_bytes([hdr[2], hdr[3]]);
    out.flags = hdr[13];
    out.header_complete = header_complete;
    out.l3 = l3 as u32;
    out.l4 = l4 as u32;
    out.tcp_len = doff as u32;
    Parsed::Tcp
}
