//! The PROXY protocol (HAProxy's `accept-proxy`, ingress-nginx's `use-proxy-protocol`): a load
//! balancer in front of the node that replaces client addresses (an AWS NLB, a cloud L4 proxy,
//! another HAProxy) opens each connection with a header naming the client. It is read here,
//! right after accept and before TLS, and the client it names becomes the connection's peer for
//! everything after: `X-Forwarded-For`, `X-Real-IP`, route `allow` lists, rate limits, the
//! access log.
//!
//! Both versions of the spec (haproxy.org/download/2.6/doc/proxy-protocol.txt) are accepted:
//! the text line of v1 and the binary block of v2. A LOCAL (v2) or UNKNOWN (v1) header, which
//! load balancers send for their own health checks, keeps the connection's real addresses.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{io::AsyncReadExt as _, net::TcpStream};

/// v2's signature, the first 12 bytes of its header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest line, CRLF included (section 2.1).
const V1_MAX: usize = 107;
/// v2's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// What is peeked at once: a v1 line, or v2's fixed part and IPv6 addresses (16 + 36).
const PEEK: usize = V1_MAX;
/// How long to wait before looking again at a header that arrived in part. Load balancers
/// write the header in one segment, so this is for the odd client only.
const PARTIAL_RETRY: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyProtoError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("no complete PROXY protocol header in time")]
    Timeout,
    #[error("the connection closed before its PROXY protocol header ended")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyProtoError {
    /// The `result` label of `floodgate_proxy_protocol_headers_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed(_) => "invalid",
            Self::Timeout => "timeout",
            Self::Closed | Self::Io(_) => "closed",
        }
    }
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The client's address and the address it connected to (the load balancer's).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The sender's own connection (a health check): the real addresses stand.
    Local,
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// The header, and how many bytes it takes (all of which belong to it, TLVs included).
    Complete(Header, usize),
    /// So far a header; more bytes are needed.
    Incomplete,
}

/// `crate::fuzz::proxy_protocol`.
#[cfg(feature = "fuzz")]
pub fn fuzz(data: &[u8]) {
    // v1 is a line within what was read; v2 names its own length (TLVs may run past the
    // bytes read, and are read next), within the 16 + 65535 its length field allows.
    if let Ok(Parsed::Complete(_, n)) = parse(data) {
        if data.first() == Some(&b'P') {
            assert!(n <= data.len() && n <= V1_MAX, "a v1 header of {n} bytes");
        } else {
            assert!(
                (V2_FIXED..=V2_FIXED + 0xffff).contains(&n),
                "a v2 header of {n} bytes"
            );
        }
    }
}

/// Parses the header at the start of `buf`. Nothing after it is looked at.
fn parse(buf: &[u8]) -> Result<Parsed, ProxyProtoError> {
    if buf.first() == Some(&b'P') {
        parse_v1(buf)
    } else if buf.first() == Some(&b'\r') {
        parse_v2(buf)
    } else if buf.is_empty() {
        Ok(Parsed::Incomplete)
    } else {
        Err(ProxyProtoError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyProtoError> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(ProxyProtoError::Missing);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyProtoError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ProxyProtoError::Malformed("v1 line longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[PREFIX.len()..end])
        .map_err(|_| ProxyProtoError::Malformed("v1 line is not text"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The receiver must ignore whatever follows (section 2.1).
        return Ok(Parsed::Complete(Header::Local, len));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyProtoError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let mut next = || {
        fields
            .next()
            .ok_or(ProxyProtoError::Malformed("v1 line has too few fields"))
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyProtoError> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ProxyProtoError::Malformed("v1 address is not an IP address"))?;
        if ip.is_ipv6() == v6 {
            Ok(ip)
        } else {
            Err(ProxyProtoError::Malformed(
                "v1 address is not of the line's family",
            ))
        }
    };
    let port = |s: &str| -> Result<u16, ProxyProtoError> {
        // Decimal, no sign and no leading zero (section 2.1).
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ProxyProtoError::Malformed(
                "v1 port is not a decimal number",
            ));
        }
        s.parse()
            .map_err(|_| ProxyProtoError::Malformed("v1 port is over 65535"))
    };
    let (src, dst) = (ip(next()?)?, ip(next()?)?);
    let (sport, dport) = (port(next()?)?, port(next()?)?);
    if fields.next().is_some() {
        return Err(ProxyProtoError::Malformed("v1 line has too many fields"));
    }
    Ok(Parsed::Complete(
        Header::Proxied {
            source: SocketAddr::new(src, sport),
            destination: SocketAddr::new(dst, dport),
        },
        len,
    ))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyProtoError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyProtoError::Missing);
    }
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ProxyProtoError::Malformed("v2 version is not 2"));
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    match command {
        // LOCAL: the addresses, if any, are to be ignored.
        0 => return Ok(Parsed::Complete(Header::Local, len)),
        1 => {}
        _ => {
            return Err(ProxyProtoError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ));
        }
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let addresses = match family {
        1 => 12,
        2 => 36,
        // AF_UNSPEC, AF_UNIX: nothing floodgate can use as a client address; the spec says to
        // take the connection's own then.
        0 | 3 => return Ok(Parsed::Complete(Header::Local, len)),
        _ => return Err(ProxyProtoError::Malformed("v2 address family is unknown")),
    };
    if transport != 1 {
        return Err(ProxyProtoError::Malformed("v2 transport is not a stream"));
    }
    if len < V2_FIXED + addresses {
        return Err(ProxyProtoError::Malformed(
            "v2 length is shorter than its addresses",
        ));
    }
    let Some(a) = buf.get(V2_FIXED..V2_FIXED + addresses) else {
        return Ok(Parsed::Incomplete);
    };
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let (source, destination) = if family == 1 {
        let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |i: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[i..i + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    Ok(Parsed::Complete(
        Header::Proxied {
            source,
            destination,
        },
        len,
    ))
}

/// A header naming `source` as the client of a connection to `destination`, for a server
/// behind `backends[].send-proxy` (HAProxy's `send-proxy` and `send-proxy-v2`). Addresses of
/// two families are both sent as IPv6 (IPv4-mapped), as one header has one family.
pub fn encode(
    version: crate::config::ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (src, dst) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    match version {
        crate::config::ProxyVersion::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {src} {dst} {} {}\r\n",
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        crate::config::ProxyVersion::V2 => {
            let mut b = V2_SIGNATURE.to_vec();
            b.push(0x21); // version 2, PROXY
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    b.extend_from_slice(&[0x11, 0, 12]);
                    b.extend_from_slice(&s.octets());
                    b.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    b.extend_from_slice(&[0x21, 0, 36]);
                    b.extend_from_slice(&v6(s).octets());
                    b.extend_from_slice(&v6(d).octets());
                }
            }
            b.extend_from_slice(&source.port().to_be_bytes());
            b.extend_from_slice(&destination.port().to_be_bytes());
            b
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Reads the header off the start of `stream` within `timeout`, taking exactly its bytes so
/// what follows (a TLS ClientHello, a request) is left for the next reader.
///
/// It peeks rather than reads, so no byte after the header is taken: there is then no buffer to
/// hand over to TLS or HTTP, and their streams stay plain `TcpStream`s.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Header, ProxyProtoError> {
    let work = async {
        let mut buf = [0u8; PEEK];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(ProxyProtoError::Closed);
            }
            match parse(&buf[..n])? {
                Parsed::Complete(header, len) => {
                    // v2's TLVs (cloud metadata) may run past what was peeked: read them all,
                    // since they are part of the header. A v2 length is at most 16 + 65535.
                    let mut rest = vec![0u8; len];
                    stream.read_exact(&mut rest).await.map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            ProxyProtoError::Closed
                        } else {
                            ProxyProtoError::Io(e)
                        }
                    })?;
                    return Ok(header);
                }
                // A peek would return the same bytes at once: wait for more to arrive.
                Parsed::Incomplete => tokio::time::sleep(PARTIAL_RETRY).await,
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ProxyProtoError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(addresses);
        b.extend_from_slice(tlvs);
        b
    }

    fn proxied(src: &str, dst: &str) -> Header {
        Header::Proxied {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    #[test]
    fn v1_lines_give_the_client_and_their_exact_length() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line).unwrap(),
            Parsed::Complete(proxied("192.0.2.7:56324", "10.0.0.1:443"), 41)
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 80\r\n";
        assert_eq!(
            parse(line).unwrap(),
            Parsed::Complete(
                proxied("[2001:db8::7]:65535", "[2001:db8::1]:80"),
                line.len()
            )
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap(),
            Parsed::Complete(Header::Local, 35)
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Complete(Header::Local, 15)
        );
    }

    #[test]
    fn partial_headers_wait_and_other_bytes_are_refused() {
        for partial in [
            &b""[..],
            b"P",
            b"PROXY",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 5",
            b"\r\n\r\n\0\r",
        ] {
            assert_eq!(parse(partial).unwrap(), Parsed::Incomplete, "{partial:?}");
        }
        let whole = v2(
            1,
            0x11,
            &[192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb],
            &[],
        );
        for cut in 0..whole.len() {
            assert_eq!(
                parse(&whole[..cut]).unwrap(),
                Parsed::Incomplete,
                "v2 cut at {cut}"
            );
        }
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PRI * HTTP/2.0",
            b"\r\n\r\nX",
        ] {
            assert!(
                matches!(parse(other), Err(ProxyProtoError::Missing)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn malformed_v1_lines_are_refused_with_a_reason() {
        for (line, why) in [
            (&b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], "protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "too few"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "too many"),
            (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "family"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "decimal"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "decimal"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "65535"),
            (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "IP address"),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "IP address"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.to_string().contains(why), "{line:?}: {e}");
        }
        let long = [b"PROXY TCP6 ".as_slice(), &[b'1'; 100]].concat();
        assert!(parse(&long).unwrap_err().to_string().contains("107"));
    }

    #[test]
    fn v2_blocks_give_the_client_and_count_their_tlvs() {
        let tlvs = [0x04, 0x00, 0x03, b'a', b'b', b'c']; // PP2_TYPE_NOOP, 3 bytes
        let b = v2(
            1,
            0x11,
            &[192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb],
            &tlvs,
        );
        assert_eq!(
            parse(&b).unwrap(),
            Parsed::Complete(proxied("192.0.2.7:56324", "10.0.0.1:443"), 16 + 12 + 6)
        );
        let mut a6 = Vec::new();
        a6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        a6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        a6.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        assert_eq!(
            parse(&v2(1, 0x21, &a6, &[])).unwrap(),
            Parsed::Complete(proxied("[2001:db8::7]:12345", "[2001:db8::1]:80"), 52)
        );
        // LOCAL (a load balancer's own health check), and AF_UNSPEC, keep the real addresses.
        assert_eq!(
            parse(&v2(0, 0x00, &[], &[])).unwrap(),
            Parsed::Complete(Header::Local, 16)
        );
        assert_eq!(
            parse(&v2(1, 0x00, &[1, 2], &[])).unwrap(),
            Parsed::Complete(Header::Local, 18)
        );
    }

    #[test]
    fn malformed_v2_blocks_are_refused_with_a_reason() {
        let a4 = [192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2];
        let mut wrong_version = v2(1, 0x11, &a4, &[]);
        wrong_version[12] = 0x11;
        let mut short = v2(1, 0x11, &a4, &[]);
        short[15] = 4;
        for (b, why) in [
            (wrong_version, "version"),
            (v2(2, 0x11, &a4, &[]), "command"),
            (v2(1, 0x12, &a4, &[]), "stream"),
            (v2(1, 0x41, &a4, &[]), "family"),
            (short, "shorter"),
        ] {
            let e = parse(&b).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn encoded_headers_read_back_in_both_versions() {
        use crate::config::ProxyVersion;
        for (src, dst) in [
            ("192.0.2.7:51000", "10.0.0.1:443"),
            ("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            for v in [ProxyVersion::V1, ProxyVersion::V2] {
                let b = encode(v, s, d);
                assert_eq!(
                    parse(&b).unwrap(),
                    Parsed::Complete(proxied(src, dst), b.len()),
                    "{v:?} {src}"
                );
            }
        }
        assert_eq!(
            encode(
                ProxyVersion::V1,
                "192.0.2.7:1".parse().unwrap(),
                "[::1]:2".parse().unwrap()
            ),
            b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n"
        );
    }

    /// Exactly the header's bytes are taken: the request after it is intact, whether it came in
    /// the same segment or not, and a header sent in two parts is still read.
    #[tokio::test]
    async fn read_header_takes_exactly_the_header() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tlvs = vec![0x04u8; 300]; // larger than one peek
        let mut block = v2(1, 0x11, &[192, 0, 2, 7, 10, 0, 0, 1, 0, 80, 0, 81], &[]);
        let len = u16::try_from(12 + tlvs.len()).unwrap();
        block[14..16].copy_from_slice(&len.to_be_bytes());
        block.extend_from_slice(&tlvs);
        let cases: Vec<(Vec<Vec<u8>>, Header)> = vec![
            (
                vec![b"PROXY TCP4 192.0.2.7 10.0.0.1 80 81\r\nGET / HTTP/1.1\r\n".to_vec()],
                proxied("192.0.2.7:80", "10.0.0.1:81"),
            ),
            (
                vec![
                    b"PROXY TCP4 192.0.2.7 ".to_vec(),
                    b"10.0.0.1 80 81\r\nGET / HTTP/1.1\r\n".to_vec(),
                ],
                proxied("192.0.2.7:80", "10.0.0.1:81"),
            ),
            (
                vec![
                    block[..20].to_vec(),
                    [&block[20..], b"GET / HTTP/1.1\r\n"].concat(),
                ],
                proxied("192.0.2.7:80", "10.0.0.1:81"),
            ),
        ];
        for (parts, want) in cases {
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                for p in parts {
                    tokio::io::AsyncWriteExt::write_all(&mut c, &p)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c
            });
            let (mut s, _) = listener.accept().await.unwrap();
            let h = read_header(&mut s, Duration::from_secs(5)).await.unwrap();
            assert_eq!(h, want);
            let mut rest = [0u8; 16];
            s.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
            drop(client.await.unwrap());
        }
    }

    #[tokio::test]
    async fn read_header_gives_up_on_a_silent_or_closing_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, b"PROXY TCP4")
            .await
            .unwrap();
        let e = read_header(&mut s, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyProtoError::Timeout), "{e}");
        // A peer that closes before sending anything.
        drop(TcpStream::connect(addr).await.unwrap());
        let (mut s, _) = listener.accept().await.unwrap();
        let e = read_header(&mut s, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyProtoError::Closed), "{e}");
        drop(c);
    }
}
