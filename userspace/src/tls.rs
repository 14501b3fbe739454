//! TLS with rustls (aws-lc-rs provider). On listeners: the policy from config (HAProxy's
//! `ssl-options` / `ssl-ciphers` accepted as they are), certificates chosen by SNI (exact, then
//! wildcard, then the default) and by what the client can verify (ECDSA or RSA), and
//! certificates reloaded from disk when their content changes. To servers: `ClientTls`, a
//! backend's `tls` (CA, verification, server name, client certificate).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    CipherSuite, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, aws_lc_rs},
    pki_types::{
        CertificateDer, PrivateKeyDer, ServerName, UnixTime,
        pem::{self, PemObject},
    },
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::config::{self, TlsPolicy};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cipher `{name}` is unknown or not supported by floodgate's TLS library")]
    UnknownCipher { key: &'static str, name: String },
    #[error("{key}: no cipher suite left for {version}")]
    NoSuites {
        key: &'static str,
        version: &'static str,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("listener `{0}`: no usable certificate")]
    NoCertificate(String),
    #[error("{key}: {reason}")]
    Backend { key: String, reason: String },
}

/// OpenSSL names of the TLS 1.2 suites floodgate supports, and their IANA names.
const TLS12_NAMES: &[(&str, CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

fn suite_by_name(name: &str) -> Option<CipherSuite> {
    TLS12_NAMES
        .iter()
        .find(|(openssl, _)| openssl.eq_ignore_ascii_case(name))
        .map(|(_, s)| *s)
        .or_else(|| {
            // IANA / rustls names: TLS_ECDHE_..., TLS_AES_128_GCM_SHA256, TLS13_AES_128_GCM_SHA256.
            aws_lc_rs::ALL_CIPHER_SUITES
                .iter()
                .map(SupportedCipherSuite::suite)
                .find(|s| {
                    let n = format!("{s:?}");
                    n.eq_ignore_ascii_case(name)
                        || n.replacen("TLS13_", "TLS_", 1).eq_ignore_ascii_case(name)
                })
        })
}

/// The suites `list` (colon-separated, OpenSSL or IANA names) names, in the provider's order.
fn select(
    list: &str,
    key: &'static str,
    tls13: bool,
) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    // In the list's order: it is the order of preference (see `prefer-client-ciphers`).
    let mut wanted = Vec::new();
    for name in list.split(':').map(str::trim).filter(|n| !n.is_empty()) {
        let suite = suite_by_name(name).ok_or_else(|| TlsError::UnknownCipher {
            key,
            name: name.into(),
        })?;
        let supported = aws_lc_rs::ALL_CIPHER_SUITES
            .iter()
            .find(|s| s.suite() == suite);
        match supported {
            Some(s) if (s.version().version == ProtocolVersion::TLSv1_3) == tls13 => {
                if !wanted
                    .iter()
                    .any(|w: &SupportedCipherSuite| w.suite() == suite)
                {
                    wanted.push(*s);
                }
            }
            _ => {
                return Err(TlsError::UnknownCipher {
                    key,
                    name: name.into(),
                });
            }
        }
    }
    Ok(wanted)
}

/// Checks a policy's cipher lists (for `floodgate check` and reload).
pub fn validate(policy: &TlsPolicy) -> Result<(), TlsError> {
    provider(policy).map(|_| ())
}

fn provider(policy: &TlsPolicy) -> Result<CryptoProvider, TlsError> {
    let mut suites = Vec::new();
    if policy.min_version == config::TlsVersion::V1_2 {
        let tls12 = select(&policy.ciphers, "tls.ciphers", false)?;
        if tls12.is_empty() {
            return Err(TlsError::NoSuites {
                key: "tls.ciphers",
                version: "TLS 1.2",
            });
        }
        suites.extend(tls12);
    }
    let tls13 = select(&policy.ciphersuites, "tls.ciphersuites", true)?;
    if tls13.is_empty() {
        return Err(TlsError::NoSuites {
            key: "tls.ciphersuites",
            version: "TLS 1.3",
        });
    }
    suites.extend(tls13);
    Ok(CryptoProvider {
        cipher_suites: suites,
        ..aws_lc_rs::default_provider()
    })
}

/// One certificate with the names it serves.
#[derive(Clone)]
struct Entry {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    not_after: i64,
    /// The stapled OCSP response's nextUpdate, seconds since the epoch: past it the staple is
    /// dropped (the certificates are reloaded without it).
    staple_until: Option<i64>,
}

/// One loaded certificate, for the expiry metric.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The first name the certificate covers.
    pub name: String,
    pub not_after: i64,
    pub ocsp_stapled: bool,
    /// `ecdsa`, `rsa` or `ed25519`: a name often has an ECDSA and an RSA certificate side by
    /// side, and each is its own series.
    pub key: &'static str,
}

/// Certificates by name; swapped whole on reload.
#[derive(Default)]
struct Table {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Vec<Arc<CertifiedKey>>,
    info: Vec<CertInfo>,
    /// The earliest nextUpdate of the staples served.
    staples_until: Option<i64>,
}

impl Table {
    fn build(entries: Vec<Entry>) -> Self {
        let mut t = Table::default();
        let first_names = entries.first().map(|e| e.names.clone()).unwrap_or_default();
        for e in entries {
            t.staples_until = match (t.staples_until, e.staple_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            t.info.push(CertInfo {
                name: e.names.first().cloned().unwrap_or_default(),
                not_after: e.not_after,
                ocsp_stapled: e.key.ocsp.is_some(),
                key: match e.key.key.algorithm() {
                    rustls::SignatureAlgorithm::ECDSA => "ecdsa",
                    rustls::SignatureAlgorithm::RSA => "rsa",
                    rustls::SignatureAlgorithm::ED25519 => "ed25519",
                    _ => "other",
                },
            });
            // The first certificate, with its ECDSA/RSA siblings for the same names, is the
            // default for clients without SNI.
            if e.names == first_names {
                t.default.push(e.key.clone());
            }
            for n in &e.names {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    Some(parent) => t
                        .wildcard
                        .entry(parent.to_owned())
                        .or_default()
                        .push(e.key.clone()),
                    None => t.exact.entry(n).or_default().push(e.key.clone()),
                }
            }
        }
        t
    }
}

/// The SNI resolver of one listener; its table is replaced when certificates change on disk.
pub struct Resolver {
    table: RwLock<Arc<Table>>,
    strict_sni: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("strict_sni", &self.strict_sni)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let candidates = match hello.server_name().map(str::to_ascii_lowercase) {
            Some(name) => table
                .exact
                .get(&name)
                .or_else(|| {
                    name.split_once('.')
                        .and_then(|(_, parent)| table.wildcard.get(parent))
                })
                .or((!self.strict_sni).then_some(&table.default))?,
            None if self.strict_sni => return None,
            None => &table.default,
        };
        // ECDSA and RSA for the same names: the first the client can verify.
        let schemes = hello.signature_schemes();
        candidates
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| candidates.first())
            .cloned()
    }
}

/// Reads every certificate source of a listener.
fn load_entries(sources: &[config::CertSource]) -> Result<Vec<Entry>, TlsError> {
    let mut out = Vec::new();
    for s in sources {
        let (cert, key) = s.paths();
        let certs = read_certs(&cert)?;
        let der = read_key(&key)?;
        let mut entry = entry(&cert, certs, &key, &der)?;
        warn_if_key_exposed(&key);
        let staple = read_ocsp(
            &s.ocsp_path(),
            matches!(s, config::CertSource::Pair { ocsp: Some(_), .. }),
        )?;
        if let Some(der) = staple {
            let path = s.ocsp_path();
            let leaf = entry.key.end_entity_cert().map(|c| c.as_ref().to_vec());
            match check_staple(&der, &leaf.unwrap_or_default(), unix_now()) {
                Ok(until) => {
                    let mut ck = (*entry.key).clone();
                    ck.ocsp = Some(der);
                    entry.key = Arc::new(ck);
                    entry.staple_until = until;
                }
                Err(Staple::Stale(why)) => {
                    // Served without it: a client fetches the status itself, which beats a
                    // listener refused for a responder's hiccup.
                    warn!(path = %path.display(), reason = %why, "OCSP response not stapled");
                }
                Err(Staple::Wrong(reason)) => {
                    return Err(TlsError::Pem { path, reason });
                }
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// A certificate chain and its key, checked to match; `cert` and `key` name them in errors.
fn entry(
    cert: &Path,
    certs: Vec<CertificateDer<'static>>,
    key: &Path,
    der: &PrivateKeyDer<'static>,
) -> Result<Entry, TlsError> {
    let first = certs.first().ok_or_else(|| TlsError::Pem {
        path: cert.to_path_buf(),
        reason: "no certificate in it".into(),
    })?;
    let (names, not_after) = names_of(first.as_ref()).map_err(|reason| TlsError::Pem {
        path: cert.to_path_buf(),
        reason,
    })?;
    let signing = aws_lc_rs::sign::any_supported_type(der).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        reason: format!("does not match {}: {e}", cert.display()),
    })?;
    Ok(Entry {
        key: Arc::new(ck),
        names,
        not_after,
        staple_until: None,
    })
}

/// A certificate that does not come from a file: a Kubernetes TLS Secret's `tls.crt` and
/// `tls.key`, parsed and checked once when the Secret changes.
#[derive(Clone)]
pub struct CertPair {
    /// Where it came from (`namespace/secret`), for logs.
    pub source: String,
    entry: Entry,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("source", &self.source)
            .field("names", &self.entry.names)
            .finish_non_exhaustive()
    }
}

impl CertPair {
    /// Parses PEM `cert` (the chain, leaf first) and `key`; they must match.
    pub fn parse(source: &str, cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let label = |part: &str| PathBuf::from(format!("{source}: {part}"));
        let certs = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: label("tls.crt"),
                reason: e.to_string(),
            })?;
        let der = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            path: label("tls.key"),
            reason: match e {
                pem::Error::NoItemsFound => "no private key in it".into(),
                e => e.to_string(),
            },
        })?;
        Ok(Self {
            source: source.to_owned(),
            entry: entry(&label("tls.crt"), certs, &label("tls.key"), &der)?,
        })
    }

    /// The names the certificate covers (its SANs, else its CN).
    pub fn names(&self) -> &[String] {
        &self.entry.names
    }
}

/// Every certificate of a PEM file, in order (a chain, or a CA bundle).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: match e {
            pem::Error::NoItemsFound => "no private key in it".into(),
            e => e.to_string(),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The OCSP response to staple: absent is fine unless configured explicitly; present, it must
/// be a DER OCSPResponse whose status is `successful`, or clients would be handed garbage.
fn read_ocsp(path: &Path, required: bool) -> Result<Option<Vec<u8>>, TlsError> {
    let der = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(source) => {
            return Err(TlsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !ocsp_successful(&der) {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "not a DER OCSP response with status successful".into(),
        });
    }
    Ok(Some(der))
}

/// Why a staple is not served.
#[derive(Debug, PartialEq, Eq)]
enum Staple {
    /// Out of date or not yet valid: the certificate is served without it.
    Stale(String),
    /// Not about this certificate, revoked, or unreadable: the certificate is refused, as a
    /// wrong file next to it is a deployment mistake to fix, not to serve.
    Wrong(String),
}

/// Checks an OCSP response (already known `successful`) against the leaf certificate `cert`
/// at `now` (seconds since the epoch): a basic response with a single response for this
/// certificate (its serial number and issuer name hash), status good, `thisUpdate` not in the
/// future (5 minutes of clock skew allowed) and `nextUpdate`, when present, not past. Returns
/// `nextUpdate`.
fn check_staple(der: &[u8], cert: &[u8], now: i64) -> Result<Option<i64>, Staple> {
    use x509_cert::der::Decode as _;
    let wrong = |why: &str| Staple::Wrong(why.to_owned());
    let resp = x509_ocsp::OcspResponse::from_der(der)
        .map_err(|e| Staple::Wrong(format!("not an OCSP response: {e}")))?;
    let bytes = resp
        .response_bytes
        .ok_or_else(|| wrong("an OCSP response without its response"))?;
    let basic = x509_ocsp::BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| Staple::Wrong(format!("not a basic OCSP response: {e}")))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Staple::Wrong(format!("certificate: {e}")))?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| r.cert_id.serial_number.as_bytes() == leaf.raw_serial())
        .ok_or_else(|| wrong("the OCSP response is about another certificate (serial number)"))?;
    let id = &single.cert_id;
    let name = leaf.issuer().as_raw();
    let hashed = match id.hash_algorithm.oid.to_string().as_str() {
        "1.3.14.3.2.26" => {
            ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, name)
        }
        "2.16.840.1.101.3.4.2.1" => ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, name),
        other => return Err(Staple::Wrong(format!("unsupported CertID hash {other}"))),
    };
    if hashed.as_ref() != id.issuer_name_hash.as_bytes() {
        return Err(wrong(
            "the OCSP response is about another certificate (issuer)",
        ));
    }
    match &single.cert_status {
        x509_ocsp::CertStatus::Good(_) => {}
        x509_ocsp::CertStatus::Revoked(_) => return Err(wrong("the certificate is revoked")),
        x509_ocsp::CertStatus::Unknown(_) => {
            return Err(wrong("the responder does not know the certificate"));
        }
    }
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| {
        i64::try_from(t.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    const SKEW: i64 = 300;
    let this_update = secs(&single.this_update);
    if this_update > now.saturating_add(SKEW) {
        return Err(Staple::Stale(format!(
            "thisUpdate is {} s in the future",
            this_update - now
        )));
    }
    let next_update = single.next_update.as_ref().map(secs);
    if let Some(next) = next_update
        && next <= now
    {
        return Err(Staple::Stale(format!(
            "out of date: nextUpdate passed {} s ago",
            now - next
        )));
    }
    Ok(next_update)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The mode of a private key file that other users of the node can read (group or others
/// bits), or `None`. A key they can read is one they can copy. (A Kubernetes Secret volume is
/// 0644 unless its `defaultMode` says otherwise; the manifests set 0400.)
pub fn key_exposed(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Said at every load, so a rotated key is checked too.
fn warn_if_key_exposed(path: &Path) {
    if let Some(mode) = key_exposed(path) {
        warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "private key readable by group or others; make it 0400 (a Secret volume's defaultMode)"
        );
    }
}

/// `OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] ... }` with
/// responseStatus 0 (successful) and response bytes present.
fn ocsp_successful(der: &[u8]) -> bool {
    let Some((&0x30, rest)) = der.split_first() else {
        return false;
    };
    // Skip the DER length (short or long form).
    let body = match rest.split_first() {
        Some((&n, tail)) if n < 0x80 => tail,
        Some((&n, tail)) => tail.get(usize::from(n & 0x7f)..).unwrap_or_default(),
        None => return false,
    };
    body.starts_with(&[0x0a, 0x01, 0x00]) && body.get(3) == Some(&0xa0)
}

/// DNS names (SAN, else the subject CN) and notAfter of a DER certificate.
fn names_of(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip)
                    if ip.len() == 4 || ip.len() == 16 =>
                {
                    let ip = if ip.len() == 4 {
                        std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                    } else {
                        std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                    };
                    names.push(ip.to_string());
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_owned),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// A listener's TLS acceptor and what it needs to reload certificates.
pub struct Acceptor {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: std::time::Duration,
    resolver: Arc<Resolver>,
    sources: Vec<config::CertSource>,
    digest: std::sync::Mutex<u64>,
    /// What the table is built from: the files' certificates (the first is the default), then
    /// the cluster's.
    parts: std::sync::Mutex<(Vec<Entry>, Vec<Entry>)>,
    pub listener: String,
    /// Certificate reloads by result, for metrics.
    pub reloads: crate::config::reload::Counts,
}

impl Acceptor {
    pub fn new(
        listener: &str,
        policy: &TlsPolicy,
        tls: &config::ListenerTls,
    ) -> Result<Self, TlsError> {
        // Empty only from the cluster (validated): Ingresses' Secrets bring the certificates.
        let entries = load_entries(&tls.certificates)?;
        let resolver = Arc::new(Resolver {
            table: RwLock::new(Arc::new(Table::build(entries.clone()))),
            strict_sni: tls.strict_sni,
        });
        let versions: &[&rustls::SupportedProtocolVersion] = match policy.min_version {
            config::TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            config::TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider(policy)?))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // HAProxy chooses by its own order unless told `prefer-client-ciphers`; rustls by
        // the client's unless told otherwise.
        cfg.ignore_client_order = !policy.prefer_client_ciphers;
        // Resumption through the server-side cache; tickets only when the policy allows them.
        cfg.session_storage = ServerSessionMemoryCache::new(policy.session_cache);
        if policy.tickets {
            cfg.ticketer = aws_lc_rs::Ticketer::new()?;
        }
        let digest = digest_of(&tls.certificates);
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            handshake_timeout: policy.handshake_timeout.0,
            resolver,
            sources: tls.certificates.clone(),
            digest: std::sync::Mutex::new(digest),
            parts: std::sync::Mutex::new((entries, Vec::new())),
            listener: listener.into(),
            reloads: crate::config::reload::Counts::default(),
        })
    }

    /// The certificates in use, for the expiry metric.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.resolver
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .info
            .clone()
    }

    /// Reloads the certificates if their files changed. A bad new certificate is refused and
    /// the old ones keep serving; open connections are never touched.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = digest_of(&self.sources);
        let mut last = self
            .digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A staple past its nextUpdate is dropped by loading the certificates again.
        let staple_expired = self
            .resolver
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .staples_until
            .is_some_and(|t| t <= unix_now());
        if now == *last && !staple_expired {
            return None;
        }
        *last = now;
        let result = load_entries(&self.sources).map(|entries| {
            let mut parts = self
                .parts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            parts.0 = entries;
            self.rebuild(&parts);
        });
        self.reloads.record(&result);
        match &result {
            Ok(()) => info!(listener = %self.listener, "certificates reloaded"),
            Err(e) => {
                warn!(listener = %self.listener, error = %e, "new certificates refused; the previous ones keep serving")
            }
        }
        Some(result)
    }
}

impl Acceptor {
    /// Serves `certs` (the cluster's TLS Secrets) beside the files' certificates from the next
    /// handshake on; open connections keep theirs.
    pub fn set_cluster(&self, certs: &[CertPair]) {
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.1 = certs.iter().map(|c| c.entry.clone()).collect();
        self.rebuild(&parts);
    }

    fn rebuild(&self, parts: &(Vec<Entry>, Vec<Entry>)) {
        let all = parts.0.iter().chain(&parts.1).cloned().collect();
        *self
            .resolver
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Table::build(all));
    }
}

fn digest_of(sources: &[config::CertSource]) -> u64 {
    let mut h = DefaultHasher::new();
    for s in sources {
        let (c, k) = s.paths();
        std::fs::read(c).ok().hash(&mut h);
        std::fs::read(k).ok().hash(&mut h);
        std::fs::read(s.ocsp_path()).ok().hash(&mut h);
    }
    h.finish()
}

/// TLS to a backend's servers (`backends[].tls`). Built with the config generation, so a CA
/// file or client key that cannot be used refuses the config, as a bad certificate does.
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    /// `None`: each connection's own address (checked against the certificate's IP names; no
    /// SNI is sent for an address).
    name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// `key` names the backend in errors (`backends[2].tls`). `None` when it has no `tls`.
    pub fn new(key: &str, backend: &config::Backend) -> Result<Option<Self>, TlsError> {
        let Some(tls) = &backend.tls else {
            return Ok(None);
        };
        let at = |field: &str, e: &dyn std::fmt::Display| TlsError::Backend {
            key: format!("{key}.{field}"),
            reason: e.to_string(),
        };
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match (tls.verify, &tls.ca_file) {
            (config::Verify::Required, Some(path)) => {
                let mut roots = RootCertStore::empty();
                let certs = read_certs(path).map_err(|e| at("ca-file", &e))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(at(
                        "ca-file",
                        &format!("{}: no CA certificate in it", path.display()),
                    ));
                }
                builder.with_root_certificates(roots)
            }
            (config::Verify::Required, None) => {
                return Err(at("ca-file", &"required with `verify: required`"));
            }
            (config::Verify::None, _) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        };
        let mut cfg = match (&tls.cert, &tls.key) {
            (Some(cert), Some(k)) => {
                let chain = read_certs(cert).map_err(|e| at("cert", &e))?;
                let der = read_key(k).map_err(|e| at("key", &e))?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| at("key", &e))?
            }
            _ => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![match backend.proto {
            config::Proto::H1 => b"http/1.1".to_vec(),
            config::Proto::H2 => b"h2".to_vec(),
        }];
        let name = backend
            .tls_server_name()
            .map(|n| ServerName::try_from(n).map_err(|e| at("server-name", &e)))
            .transpose()?;
        Ok(Some(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            name,
        }))
    }

    /// The TLS handshake on a connected `tcp` to `addr`.
    pub async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await
    }
}

/// `verify: none`: any certificate is taken, but the handshake's signatures are still checked
/// against it, so the connection is at least encrypted to whoever holds that certificate's
/// key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `cn` in `dir`, with `openssl`; returns (cert DER, PEM
    /// path, key path).
    fn cert(dir: &Path, name: &str, cn: &str) -> (Vec<u8>, PathBuf, PathBuf) {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .args([
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "openssl req");
        let der = read_certs(&crt).expect("cert").remove(0).as_ref().to_vec();
        (der, crt, key)
    }

    /// An OCSP response about `crt` (self-issued) with `status` (`V` good, `R` revoked),
    /// signed by `crt` itself, valid for a day.
    fn ocsp(dir: &Path, crt: &Path, key: &Path, status: char) -> Vec<u8> {
        let run = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("openssl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let serial = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(crt)
            .output()
            .expect("openssl x509");
        let serial = String::from_utf8_lossy(&serial.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_owned();
        let revoked = if status == 'R' { "250101000000Z" } else { "" };
        let index = dir.join("index.txt");
        std::fs::write(
            &index,
            format!("{status}\t351231235959Z\t{revoked}\t{serial}\tunknown\t/CN=x\n"),
        )
        .expect("index");
        let (req, resp) = (dir.join("req.der"), dir.join("resp.der"));
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        assert!(run(&[
            os("ocsp"),
            os("-no_nonce"),
            os("-issuer"),
            crt.as_os_str(),
            os("-cert"),
            crt.as_os_str(),
            os("-reqout"),
            req.as_os_str(),
        ]));
        assert!(run(&[
            os("ocsp"),
            os("-index"),
            index.as_os_str(),
            os("-rsigner"),
            crt.as_os_str(),
            os("-rkey"),
            key.as_os_str(),
            os("-CA"),
            crt.as_os_str(),
            os("-reqin"),
            req.as_os_str(),
            os("-respout"),
            resp.as_os_str(),
            os("-ndays"),
            os("1"),
        ]));
        std::fs::read(resp).expect("response")
    }

    /// A staple is served only when it is about this certificate, says good, and is current.
    #[test]
    fn staples_must_be_about_the_certificate_good_and_fresh() {
        let dir = std::env::temp_dir().join(format!("fg-ocsp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (a, a_crt, a_key) = cert(&dir, "a", "a.example.com");
        let (b, _, _) = cert(&dir, "b", "b.example.com");
        let good = ocsp(&dir, &a_crt, &a_key, 'V');
        let now = unix_now();
        let until = check_staple(&good, &a, now)
            .expect("a good, current response about a")
            .expect("with nextUpdate");
        assert!(
            until > now + 3600 && until <= now + 86_400 + 60,
            "{until} vs {now}"
        );
        assert!(matches!(
            check_staple(&good, &a, until + 1),
            Err(Staple::Stale(_))
        ));
        assert!(
            matches!(check_staple(&good, &a, now - 3600), Err(Staple::Stale(_))),
            "thisUpdate an hour ahead"
        );
        assert!(
            matches!(check_staple(&good, &b, now), Err(Staple::Wrong(w)) if w.contains("another certificate")),
            "about another certificate"
        );
        let revoked = ocsp(&dir, &a_crt, &a_key, 'R');
        assert!(matches!(
            check_staple(&revoked, &a, now),
            Err(Staple::Wrong(w)) if w.contains("revoked")
        ));
        assert!(matches!(
            check_staple(b"garbage", &a, now),
            Err(Staple::Wrong(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_successful_ocsp_responses_are_stapled() {
        // SEQUENCE { ENUMERATED 0, [0] { ... } }, short and long length forms.
        assert!(ocsp_successful(&[0x30, 0x05, 0x0a, 0x01, 0x00, 0xa0, 0x00]));
        assert!(ocsp_successful(&[
            0x30, 0x82, 0x01, 0x00, 0x0a, 0x01, 0x00, 0xa0
        ]));
        // tryLater (3) carries no response.
        assert!(!ocsp_successful(&[0x30, 0x03, 0x0a, 0x01, 0x03]));
        assert!(!ocsp_successful(b"garbage"));
        assert!(!ocsp_successful(&[]));
        assert!(!ocsp_successful(&[0x30]));
    }

    #[test]
    fn cipher_names_openssl_and_iana() {
        let s = select(
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
            "tls.ciphers",
            false,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        let s = select(
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "tls.ciphers",
            false,
        )
        .unwrap();
        assert_eq!(
            s[0].suite(),
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
        let s = select(
            "TLS_AES_128_GCM_SHA256:TLS13_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "tls.ciphersuites",
            true,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        // The list's order is the order of preference, not rustls's.
        assert_eq!(s[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        let s = select(
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "tls.ciphersuites",
            true,
        )
        .unwrap();
        assert_eq!(s[0].suite(), CipherSuite::TLS13_AES_256_GCM_SHA384);
        let e = select("ECDHE-RSA-DES-CBC3-SHA", "tls.ciphers", false).unwrap_err();
        assert!(
            e.to_string().contains("ECDHE-RSA-DES-CBC3-SHA")
                && e.to_string().contains("tls.ciphers"),
            "{e}"
        );
        assert!(
            select("TLS_AES_128_GCM_SHA256", "tls.ciphers", false).is_err(),
            "a TLS 1.3 suite in the 1.2 list"
        );
    }
}
