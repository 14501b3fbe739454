//! TLS passthrough (`listeners[].passthrough`): connections whose ClientHello names one of the
//! listed hosts are not terminated here but carried, bytes as they are, to a server of the
//! host's backend, which terminates TLS itself (ingress-nginx's `ssl-passthrough`, HAProxy's
//! `mode tcp` with `req.ssl_sni`). Vault, Argo CD, or anything that must see the client's own
//! handshake (mutual TLS with its own CA) sits behind such a host.
//!
//! The ClientHello is read, not peeked: with post-quantum key shares it spans two TCP segments
//! on a 1500-byte path, and a peek cannot wait for the second one. What was read is replayed:
//! to the server for a passthrough host, to the TLS acceptor (`proxy::prefixed`) for the others.
//!
//! The backend's `maxconn-server`, queue, balance, health and passive ejection apply as for
//! HTTP; a tunnel holds its server slot until it closes or stays silent for `timeouts.tunnel`.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config;
use crate::proxy::{
    request::route::HostMatch,
    upstream::{
        backend::{Backend, MAX_CONNECT_ATTEMPTS},
        health,
    },
};

/// A TLS record's header: type, version, length.
const RECORD_HEADER: usize = 5;
/// The largest record a ClientHello may come in (RFC 8446 section 5.1).
const MAX_RECORD: usize = 16_384;

/// One listener's passthrough hosts, resolved against a routing generation.
#[derive(Debug)]
pub struct Passthrough {
    /// The hosts, in config order, with their backends.
    hosts: Vec<(HostMatch, Arc<Backend>)>,
}

impl Passthrough {
    /// `None` without hosts, or when a backend is unknown (validation refuses that first).
    /// `backend` resolves a backend name in the generation being built.
    pub fn new(
        cfg: &[config::PassthroughHost],
        backend: impl Fn(&str) -> Option<Arc<Backend>>,
    ) -> Option<Self> {
        if cfg.is_empty() {
            return None;
        }
        let hosts = cfg
            .iter()
            .map(|h| Some((HostMatch::new(Some(&h.host)), backend(&h.backend)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { hosts })
    }

    /// The backends the hosts lead to.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        self.hosts.iter().map(|(_, b)| b)
    }

    /// The backend for a ClientHello's server name: the first listed host that matches.
    pub fn backend_for(&self, sni: &str) -> Option<&Arc<Backend>> {
        let sni = sni.to_ascii_lowercase();
        self.hosts
            .iter()
            .find(|(h, _)| h.matches(Some(&sni)))
            .map(|(_, b)| b)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("no ClientHello within the handshake timeout")]
    Timeout,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

impl PassthroughError {
    /// The `result` label of `floodgate_tls_handshakes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Io(_) => "failed",
        }
    }
}

/// Reads the first TLS record (the ClientHello) within `timeout`: the bytes read, and the
/// server name it asks for. Bytes that are not a TLS handshake are returned as they are, with
/// no name, for the TLS acceptor to refuse.
pub async fn read_hello(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<String>), PassthroughError> {
    let work = async {
        let mut buf = Vec::with_capacity(2048);
        loop {
            let want = match buf.get(..RECORD_HEADER) {
                Some(h) if h[0] == 0x16 => {
                    RECORD_HEADER + usize::from(u16::from_be_bytes([h[3], h[4]])).min(MAX_RECORD)
                }
                Some(_) => return Ok((buf, None)),
                None => RECORD_HEADER,
            };
            if buf.len() >= want {
                let sni = server_name(&buf[RECORD_HEADER..want]);
                return Ok((buf, sni));
            }
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk[..(want - buf.len()).min(4096)])
                .await?;
            if n == 0 {
                return Ok((buf, None));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(PassthroughError::Timeout))
}

/// `crate::fuzz::client_hello`.
#[cfg(feature = "fuzz")]
pub fn fuzz(data: &[u8]) {
    if let Some(name) = server_name(data) {
        assert!(!name.is_empty() && name.len() <= data.len(), "{name:?}");
        assert!(
            name.is_ascii() && name == name.to_ascii_lowercase(),
            "{name:?}"
        );
    }
}

/// The `server_name` of a ClientHello handshake message (RFC 8446 section 4.1.2, RFC 6066
/// section 3); `None` when there is none or the message does not parse.
fn server_name(msg: &[u8]) -> Option<String> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    // A ClientHello fragmented over records is parsed as far as this record goes.
    let mut r = Reader(r.0.get(..len.min(r.0.len()))?);
    r.skip(2 + 32)?; // legacy_version, random
    let n = usize::from(r.u8()?);
    r.skip(n)?; // legacy_session_id
    let n = r.u16()?;
    r.skip(n)?; // cipher_suites
    let n = usize::from(r.u8()?);
    r.skip(n)?; // legacy_compression_methods
    let n = r.u16()?;
    let mut exts = Reader(r.take(n)?);
    while !exts.0.is_empty() {
        let (kind, n) = (exts.u16()?, exts.u16()?);
        let mut ext = Reader(exts.take(n)?);
        if kind != 0 {
            continue;
        }
        let n = ext.u16()?;
        let mut list = Reader(ext.take(n)?);
        while !list.0.is_empty() {
            let (name_type, n) = (list.u8()?, list.u16()?);
            let name = list.take(n)?;
            if name_type == 0 {
                return host_name(name);
            }
        }
        return None;
    }
    None
}

/// A `HostName` as RFC 6066 section 3 has it: a DNS name in ASCII, not empty. Lowercased and
/// without a trailing dot, as HTTP hosts are (`normalize.rs`), so passthrough hosts match the
/// same names routes do. Anything else is no name.
fn host_name(name: &[u8]) -> Option<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// How a carried connection ended, the `result` label of `floodgate_tcp_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Carried until either side closed.
    Closed,
    /// Silent both ways for `timeouts.tunnel`.
    TunnelTimeout,
    /// No server slot: none up, the queue full, or `timeouts.queue` passed.
    NoServer,
    /// Connecting failed on every server tried.
    ConnectFailed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::TunnelTimeout => "tunnel_timeout",
            Self::NoServer => "no_server",
            Self::ConnectFailed => "connect_failed",
        }
    }
}

/// What became of a carried connection, for its metrics and access log line.
#[derive(Debug)]
pub struct Carried {
    pub outcome: Outcome,
    /// The server it went to (the last one tried when none could be reached).
    pub server: Option<std::net::SocketAddr>,
    /// Bytes from the client (the ClientHello of a passthrough connection included) and to it.
    pub from_client: u64,
    pub to_client: u64,
}

impl Carried {
    fn failed(outcome: Outcome, server: Option<std::net::SocketAddr>) -> Self {
        Self {
            outcome,
            server,
            from_client: 0,
            to_client: 0,
        }
    }
}

/// Carries `client`, whose first bytes were `hello` (none for a `mode: tcp` listener), to a
/// server of `backend`. A failed connect is retried on another server (nothing was sent yet)
/// and counts for passive health. `ends`: the client's address and the one it connected to,
/// for the backend's `send-proxy` header.
pub async fn carry<C>(
    backend: &Backend,
    mut client: C,
    hello: &[u8],
    ends: (std::net::SocketAddr, std::net::SocketAddr),
) -> Carried
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let proxy_header = backend
        .send_proxy
        .map(|v| crate::proxy::listener::proxyproto::encode(v, ends.0, ends.1));
    let (pool, dial, passive) = (&backend.pool, &backend.dial, &backend.passive);
    let idle = backend.tunnel_timeout;
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    loop {
        let Ok(slot) = pool.acquire(&tried).await else {
            return Carried::failed(Outcome::NoServer, tried.last().copied());
        };
        tried.push(slot.server.addr);
        match dial.connect(slot.server.addr).await {
            Ok(mut server) => {
                health::observe(pool, &slot.server, true, passive);
                let first = [proxy_header.as_deref().unwrap_or_default(), hello].concat();
                if !first.is_empty() && server.write_all(&first).await.is_err() {
                    return Carried::failed(Outcome::Closed, Some(slot.server.addr));
                }
                let started = Instant::now();
                let spliced = crate::proxy::timeout::splice(&mut client, &mut server, idle).await;
                tracing::debug!(server = %slot.server.addr, took = ?started.elapsed(), error = ?spliced.error, "passthrough connection ended");
                return Carried {
                    outcome: if spliced.timed_out {
                        Outcome::TunnelTimeout
                    } else {
                        Outcome::Closed
                    },
                    server: Some(slot.server.addr),
                    from_client: spliced.from_a + hello.len() as u64,
                    to_client: spliced.from_b,
                };
            }
            Err(e) => {
                health::observe(pool, &slot.server, false, passive);
                tracing::debug!(error = %e, "passthrough connect failed");
                if tried.len() >= MAX_CONNECT_ATTEMPTS.min(pool.servers().len()) {
                    return Carried::failed(Outcome::ConnectFailed, Some(slot.server.addr));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::prefixed::Prefixed;

    /// A ClientHello as rustls writes it, for `name` (or without SNI).
    fn client_hello(name: Option<&str>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap(),
            None => {
                cfg.enable_sni = false;
                rustls::pki_types::ServerName::try_from("x.invalid").unwrap()
            }
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_real_client_hello() {
        let hello = client_hello(Some("Vault.Example.com"));
        assert_eq!(
            server_name(&hello[RECORD_HEADER..]).as_deref(),
            Some("vault.example.com"),
            "lowercased, as HTTP hosts are"
        );
        // RFC 6066 host names only (found by the client_hello fuzz target: an empty one).
        assert_eq!(host_name(b""), None);
        assert_eq!(host_name(b"."), None);
        assert_eq!(host_name(b"a b"), None);
        assert_eq!(host_name("é.example".as_bytes()), None);
        assert_eq!(host_name(b"Shop.Example.").as_deref(), Some("shop.example"));
        assert_eq!(server_name(&client_hello(None)[RECORD_HEADER..]), None);
        // Truncated anywhere: no name, no panic.
        for cut in 0..hello.len() {
            let _ = server_name(&hello[RECORD_HEADER.min(cut)..cut]);
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), None);
    }

    #[tokio::test]
    async fn the_hello_is_read_whole_when_it_arrives_in_parts_and_replayed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hello = client_hello(Some("vault.example.com"));
        let sent = hello.clone();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for part in sent.chunks(100) {
                c.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.write_all(b"after").await.unwrap();
            c
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let (read, sni) = read_hello(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(read, hello, "exactly the first record");
        assert_eq!(sni.as_deref(), Some("vault.example.com"));
        let mut replay = Prefixed::new(read, s);
        let mut all = vec![0u8; hello.len() + 5];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..hello.len()], &hello[..]);
        assert_eq!(&all[hello.len()..], b"after");
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_come_back_without_a_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let (read, sni) = read_hello(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(read.starts_with(b"GET /") && sni.is_none());
        let mut silent = TcpStream::connect(addr).await.unwrap();
        silent.write_all(&[0x16, 3, 1]).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let e = read_hello(&mut s, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, PassthroughError::Timeout), "{e}");
    }

    #[tokio::test]
    async fn hosts_match_exactly_or_by_wildcard_in_order() {
        let cfg: config::Config = yaml_serde::from_str(
            "listeners: [{name: l, bind: '127.0.0.1:1', default-backend: vault}]\n\
             backends:\n\
             - {name: vault, servers: [{address: '127.0.0.1:2'}]}\n\
             - {name: argo, servers: [{address: '127.0.0.1:3'}]}\n",
        )
        .unwrap();
        let routing = crate::proxy::generation::Routing::build(&cfg, None, 1, None)
            .await
            .unwrap();
        let hosts =
            [("vault.example.com", "vault"), ("*.example.com", "argo")].map(|(host, backend)| {
                config::PassthroughHost {
                    host: host.into(),
                    backend: backend.into(),
                }
            });
        let p = Passthrough::new(&hosts, |n| routing.backend(n).cloned()).unwrap();
        let to = |sni| p.backend_for(sni).map(|b| b.name().to_owned());
        assert_eq!(to("VAULT.example.com").as_deref(), Some("vault"));
        assert_eq!(to("argo.example.com").as_deref(), Some("argo"));
        assert_eq!(to("example.com"), None);
        assert_eq!(to("example.org"), None);
    }
}
