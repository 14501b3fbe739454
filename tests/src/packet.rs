//! Packet builders for `BPF_PROG_TEST_RUN`: frames are assembled from layers so a test can
//! tag, fragment, extend or truncate any of them.

pub const ETH_IP: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86DD;
pub const ETH_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88A8;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// Ethernet header, then one 4-byte tag per TPID in `tags`, then `l3`.
pub fn frame(tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    frame_to(
        [0x02, 0, 0, 0, 0, 0x01],
        [0x02, 0, 0, 0, 0, 0x02],
        tags,
        ethertype,
        l3,
    )
}

/// [`frame`] with explicit MAC addresses, for frames sent on a real interface.
pub fn frame_to(dst: [u8; 6], src: [u8; 6], tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut p = dst.to_vec();
    p.extend_from_slice(&src);
    for (i, tpid) in tags.iter().enumerate() {
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(l3);
    p
}

/// The Internet checksum of `data` (odd lengths padded with zero).
pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 with `opt_words` 4-byte option words and the raw flags/fragment-offset field `frag`.
pub fn v4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    opt_words: u8,
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let hlen = 20 + 4 * usize::from(opt_words);
    let mut h = vec![0x40 | (5 + opt_words), 0];
    h.extend_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.resize(hlen, 1); // NOP options
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// IPv6 with a chain of extension headers `(type, length in bytes)` before `proto`.
/// Fragment headers (44) are built with offset `frag_offset` (in 8-byte units).
pub fn v6(
    src: [u8; 16],
    dst: [u8; 16],
    ext: &[(u8, usize)],
    proto: u8,
    frag_offset: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut exts = Vec::new();
    for (i, (kind, len)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        let mut e = vec![next, 0];
        match kind {
            44 => e.extend_from_slice(&[
                (frag_offset << 3).to_be_bytes()[0],
                (frag_offset << 3).to_be_bytes()[1],
                0,
                0,
                0,
                1,
            ]),
            51 => {
                e[1] = (len / 4 - 2) as u8;
                e.resize(*len, 0);
            }
            _ => {
                e[1] = (len / 8 - 1) as u8;
                e.resize(*len, 0);
            }
        }
        exts.extend(e);
    }
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((exts.len() + payload.len()) as u16).to_be_bytes());
    h.push(ext.first().map_or(proto, |e| e.0));
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend(exts);
    h.extend_from_slice(payload);
    h
}

/// TCP with `opt_words` 4-byte option words and `data` bytes of payload.
pub fn tcp(sport: u16, dport: u16, flags: u8, opt_words: u8, data: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[(5 + opt_words) << 4, flags]);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.resize(20 + 4 * usize::from(opt_words), 1);
    t.resize(t.len() + data, 0xab);
    t
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&16u16.to_be_bytes());
    u.extend_from_slice(&[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    u
}

pub fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 0x02, 10, 0, 0, 2];
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    frame(&[], ETH_ARP, &a)
}

pub const DST4: [u8; 4] = [10, 0, 0, 1];
pub const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

pub fn src6(last: u8) -> [u8; 16] {
    [0xfd, 0, 0, 0, 0, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, last]
}

/// A TCP segment over IPv4 from `src`, source port `sport`.
pub fn tcp4(src: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(
        &[],
        ETH_IP,
        &v4(
            src,
            DST4,
            PROTO_TCP,
            0,
            0x4000,
            &tcp(sport, dport, flags, 0, 0),
        ),
    )
}

/// A TCP segment over IPv6 from `src`.
pub fn tcp6(src: [u8; 16], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(
        &[],
        ETH_IPV6,
        &v6(
            src,
            DST6,
            &[],
            PROTO_TCP,
            0,
            &tcp(sport, dport, flags, 0, 0),
        ),
    )
}
