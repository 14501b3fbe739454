//! Forwarding headers from trusted proxies (`listeners[].forwarded-headers`): behind a CDN or
//! an L7 load balancer, the TCP peer is the proxy, and the client is in the header it adds.
//! ingress-nginx's `use-forwarded-headers` with `proxy-real-ip-cidr` and `forwarded-for-header`,
//! nginx's `real_ip_recursive on`.
//!
//! Only a peer in `from` is believed, and only the addresses its header adds: the list is read
//! from the right, past every address that is itself a trusted proxy, and the first one that is
//! not is the client. What a client wrote at the left of the list is never taken over a proxy's
//! word, so it cannot name someone else.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::config;

pub struct Trust {
    from: Vec<IpNet>,
    header: HeaderName,
}

/// The client a trusted header named.
pub struct Client {
    pub ip: IpAddr,
    /// `ip` as a header value, for `X-Real-IP` and the auth service.
    pub value: HeaderValue,
}

impl Trust {
    /// `None` when the config's header name does not parse (validation refuses it first).
    pub fn new(cfg: &config::ForwardedHeaders) -> Option<Self> {
        Some(Self {
            from: cfg.from.clone(),
            header: HeaderName::from_bytes(cfg.client_header.as_bytes()).ok()?,
        })
    }

    /// Whether `peer`'s forwarding headers are believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        config::cidrs_contain(&self.from, peer)
    }

    /// The client named in a trusted peer's header: the rightmost address not itself trusted,
    /// or the leftmost when all are. `None` (the peer stays the client) without the header, or
    /// when an entry on the way is not an address.
    pub fn client(&self, headers: &HeaderMap) -> Option<Client> {
        // Several header lines are one list, in order (RFC 9110 section 5.3).
        let mut lines: Vec<&str> = Vec::new();
        for v in headers.get_all(&self.header) {
            lines.push(v.to_str().ok()?);
        }
        let mut found = None;
        for entry in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
            let ip = parse_entry(entry.trim())?;
            found = Some(ip);
            if !self.trusts(ip) {
                break;
            }
        }
        let ip = found?;
        Some(Client {
            ip,
            value: ip_value(ip),
        })
    }
}

/// An address as a header value: a connection's peer, or the client a trusted peer names
/// (per request). IPv4 digits are written by hand: `Display` through `to_string` was about
/// 1,300 instructions, 3.5% of a new connection's (callgrind, `CLOSE=1
/// examples/bench/instructions.sh`); IPv6, rarer here, keeps `Display`.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = match octet {
                    0..=9 => 2,
                    10..=99 => 1,
                    _ => 0,
                };
                for d in &digits[skip..] {
                    out[len] = b'0' + d;
                    len += 1;
                }
            }
            Bytes::copy_from_slice(&out[..len])
        }
        IpAddr::V6(v6) => Bytes::from(v6.to_string()),
    };
    // Digits, dots, colons and hex letters only: always a valid value.
    HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// An address as proxies write them: bare, `a.b.c.d:port`, or `[v6]:port`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// The hand-written digits agree with `Display` on every octet value in every position.
    #[test]
    fn peer_addresses_are_written_as_display_writes_them() {
        for a in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(a, 0, 255, 9),
                Ipv4Addr::new(10, a, 99, 100),
                Ipv4Addr::new(1, 200, a, 0),
                Ipv4Addr::new(255, 255, 7, a),
            ] {
                let value = ip_value(IpAddr::V4(ip));
                assert_eq!(value.as_bytes(), ip.to_string().as_bytes());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(ip_value(v6).as_bytes(), b"2001:db8::1");
    }

    fn trust(from: &[&str]) -> Trust {
        Trust::new(&config::ForwardedHeaders {
            from: from.iter().map(|n| n.parse().unwrap()).collect(),
            client_header: "X-Forwarded-For".into(),
        })
        .unwrap()
    }

    fn client(t: &Trust, values: &[&str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        t.client(&h).map(|c| c.ip.to_string())
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let t = trust(&["10.0.0.0/8", "2001:db8:cd::/48"]);
        let c = |v: &[&str]| client(&t, v);
        assert_eq!(c(&["192.0.2.7"]).as_deref(), Some("192.0.2.7"));
        // A client's own forged entry at the left is not taken over the proxy's.
        assert_eq!(
            c(&["198.51.100.1, 192.0.2.7"]).as_deref(),
            Some("192.0.2.7")
        );
        // Trusted hops on the way are skipped, over several header lines too.
        assert_eq!(
            c(&["192.0.2.7, 10.1.1.1", "10.2.2.2"]).as_deref(),
            Some("192.0.2.7")
        );
        assert_eq!(
            c(&["10.1.1.1, 10.2.2.2"]).as_deref(),
            Some("10.1.1.1"),
            "all trusted"
        );
        assert_eq!(
            c(&["192.0.2.7:4711", "[2001:db8::7]:80"]).as_deref(),
            Some("2001:db8::7")
        );
        assert_eq!(
            c(&[" 2001:db8::7 , 2001:db8:cd::1"]).as_deref(),
            Some("2001:db8::7")
        );
        // Nothing usable: the peer stays the client.
        assert_eq!(c(&[]), None);
        assert_eq!(c(&["192.0.2.7, unknown"]), None);
        assert_eq!(c(&[""]), None);
    }

    #[test]
    fn only_listed_peers_are_trusted() {
        let t = trust(&["10.0.0.0/8"]);
        assert!(t.trusts("10.3.4.5".parse().unwrap()));
        assert!(t.trusts("::ffff:10.3.4.5".parse().unwrap()));
        assert!(!t.trusts("192.0.2.7".parse().unwrap()));
        assert!(!t.trusts("2001:db8::1".parse().unwrap()));
    }
}
