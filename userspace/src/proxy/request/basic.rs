//! Basic authentication against an htpasswd file (`routes[].basic-auth`): ingress-nginx's
//! `auth-type: basic` with its `auth-secret`, HAProxy's `userlist` with `http_auth`.
//!
//! Password hashes are slow on purpose (bcrypt at cost 10 is tens of milliseconds), and a
//! browser sends the same credentials with every request. So a hash is checked on tokio's
//! blocking pool, never on a worker thread that carries other connections, at most one check
//! per CPU at a time (a guessing client cannot take every core); and credentials that passed
//! are remembered, as a keyed SHA-256 of user and password (never the password), so the next
//! request of that user costs a hash lookup. The memory goes with the config generation: a
//! reload that changes the file forgets everything.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock},
};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use md5::{Digest as _, Md5};

use crate::config;
use crate::proxy::error::ProxyError;

/// Remembered credentials per route at most; past it the memory starts over.
const REMEMBERED: usize = 4096;
/// Longest password checked. MD5- and SHA-crypt cost grows with the password's length, so a
/// megabyte-long one would be a CPU bomb; bcrypt reads 72 bytes. Longer is refused unhashed.
pub const MAX_PASSWORD: usize = 256;
/// Checks waiting for a CPU, process-wide; past it, a request is answered 429 at once rather
/// than queued behind a guessing client's thousands.
const MAX_WAITING: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BasicAuthError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {path} line {line}: {reason}")]
    Line {
        key: String,
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{key}: {path} has no user")]
    Empty { key: String, path: String },
    #[error("{key}: the realm cannot be a header value")]
    Realm { key: String },
}

/// A stored password hash, in one of the formats `htpasswd` and `mkpasswd` write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    /// `$2a$`, `$2b$`, `$2y$` (`htpasswd -B`).
    Bcrypt(String),
    /// `$apr1$` (`htpasswd`'s default, `openssl passwd -apr1`) and `$1$` (MD5-crypt): the same
    /// algorithm under two names.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        full: String,
    },
    /// `$5$` and `$6$` (SHA-crypt, `mkpasswd`, HAProxy userlists).
    ShaCrypt {
        sha512: bool,
        rounds: usize,
        salt: String,
        digest: String,
    },
    /// `{SHA}` (`htpasswd -s`): base64 of an unsalted SHA-1.
    Sha1(Vec<u8>),
}

impl Hash {
    fn parse(s: &str) -> Result<Self, String> {
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            return Ok(Self::Bcrypt(s.to_owned()));
        }
        for magic in ["$apr1$", "$1$"] {
            if let Some(rest) = s.strip_prefix(magic) {
                let (salt, digest) = rest
                    .split_once('$')
                    .ok_or_else(|| format!("`{magic}` hash without its salt"))?;
                if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
                    return Err(format!("malformed `{magic}` hash"));
                }
                return Ok(Self::Md5Crypt {
                    magic,
                    salt: salt.to_owned(),
                    full: s.to_owned(),
                });
            }
        }
        for (magic, sha512) in [("$5$", false), ("$6$", true)] {
            if let Some(rest) = s.strip_prefix(magic) {
                return Self::sha_crypt(magic, sha512, rest);
            }
        }
        if let Some(b64) = s.strip_prefix("{SHA}") {
            let d = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "`{SHA}` hash is not base64".to_owned())?;
            if d.len() != 20 {
                return Err("`{SHA}` hash is not a SHA-1 digest".into());
            }
            return Ok(Self::Sha1(d));
        }
        Err(
            "not a supported hash: use bcrypt (`htpasswd -B`), apr1 (`htpasswd`), \
             or SHA-crypt (`mkpasswd -m sha-512`); plain and DES-crypt passwords are refused"
                .into(),
        )
    }

    /// `$5$[rounds=N$]salt$digest` (Drepper's SHA-crypt): the rounds (5,000 when not given),
    /// the salt (at most 16 characters) and the 43 or 86 characters of digest.
    fn sha_crypt(magic: &str, sha512: bool, rest: &str) -> Result<Self, String> {
        let malformed = || format!("malformed `{magic}` hash");
        let (rounds, rest) = match rest.strip_prefix("rounds=") {
            Some(r) => {
                let (n, rest) = r.split_once('$').ok_or_else(malformed)?;
                let n: usize = n.parse().map_err(|_| malformed())?;
                // The spec clamps the rounds to this range.
                (n.clamp(1_000, 999_999_999), rest)
            }
            None => (5_000, rest),
        };
        let (salt, digest) = rest.split_once('$').ok_or_else(malformed)?;
        let want = if sha512 { 86 } else { 43 };
        if salt.len() > 16 || digest.len() != want || salt.contains('$') {
            return Err(malformed());
        }
        Ok(Self::ShaCrypt {
            sha512,
            rounds,
            salt: salt.to_owned(),
            digest: digest.to_owned(),
        })
    }

    /// Slow by design: call off the worker threads.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Self::ShaCrypt {
                sha512,
                rounds,
                salt,
                digest,
            } => {
                let ours = if *sha512 {
                    sha_crypt::Sha512Params::new(*rounds).ok().and_then(|p| {
                        sha_crypt::sha512_crypt_b64(password, salt.as_bytes(), &p).ok()
                    })
                } else {
                    sha_crypt::Sha256Params::new(*rounds).ok().and_then(|p| {
                        sha_crypt::sha256_crypt_b64(password, salt.as_bytes(), &p).ok()
                    })
                };
                ours.is_some_and(|ours| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(
                        ours.as_bytes(),
                        digest.as_bytes(),
                    )
                    .is_ok()
                })
            }
            Self::Md5Crypt { magic, salt, full } => {
                let ours = md5_crypt(password, magic, salt);
                aws_lc_rs::constant_time::verify_slices_are_equal(ours.as_bytes(), full.as_bytes())
                    .is_ok()
            }
            Self::Sha1(d) => {
                let ours = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    password,
                );
                aws_lc_rs::constant_time::verify_slices_are_equal(ours.as_ref(), d).is_ok()
            }
        }
    }
}

/// MD5-crypt (Poul-Henning Kamp's, as in FreeBSD and Apache's apr1): the whole `$magic$salt$hash`.
fn md5_crypt(pass: &[u8], magic: &str, salt: &str) -> String {
    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let salt = salt.as_bytes();
    let alt = Md5::new()
        .chain_update(pass)
        .chain_update(salt)
        .chain_update(pass)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(pass)
        .chain_update(magic.as_bytes())
        .chain_update(salt);
    let mut left = pass.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = pass.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pass[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(pass);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(pass);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pass);
        }
        fin = c.finalize();
    }
    let mut out = format!("{magic}{}$", String::from_utf8_lossy(salt));
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    put(f(11), 2);
    out
}

/// One route's users, and the credentials that passed.
pub struct BasicAuth {
    /// `Basic realm="..."`, the 401's `WWW-Authenticate`.
    challenge: HeaderValue,
    users: HashMap<String, Hash>,
    /// Keyed digests of user and password that passed.
    remembered: Mutex<HashSet<[u8; 32]>>,
    /// The digests' key, random per generation, so a digest is of no use outside it.
    key: [u8; 32],
}

impl std::fmt::Debug for BasicAuth {
    // Never the hashes, the key or what was remembered.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("challenge", &self.challenge)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// Reads `cfg.users-file`; `key` names it in errors (`routes[3].basic-auth`).
    pub fn load(key: &str, cfg: &config::BasicAuth) -> Result<Self, BasicAuthError> {
        let path = cfg.users_file.display().to_string();
        let text =
            std::fs::read_to_string(&cfg.users_file).map_err(|source| BasicAuthError::Read {
                key: format!("{key}.users-file"),
                path: path.clone(),
                source,
            })?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| BasicAuthError::Line {
                key: format!("{key}.users-file"),
                path: path.clone(),
                line: n + 1,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| bad("not `user:hash`".into()))?;
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|r| bad(format!("user `{user}`: {r}")))?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(bad(format!("user `{user}` is listed twice")));
            }
        }
        if users.is_empty() {
            return Err(BasicAuthError::Empty {
                key: format!("{key}.users-file"),
                path,
            });
        }
        let realm = cfg.realm.replace('\\', "\\\\").replace('"', "\\\"");
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")).map_err(|_| {
                BasicAuthError::Realm {
                    key: format!("{key}.realm"),
                }
            })?;
        let mut k = [0u8; 32];
        // Without randomness the key is zeros: digests stay unguessable without the password.
        let _ = aws_lc_rs::rand::fill(&mut k);
        Ok(Self {
            challenge,
            users,
            remembered: Mutex::new(HashSet::new()),
            key: k,
        })
    }

    /// Lets the request through when its `Authorization` names a user of the file with the
    /// right password; otherwise a 401 with the challenge.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let refuse = || ProxyError::Unauthorized {
            challenge: Some(self.challenge.clone()),
            signin: None,
        };
        let (user, password) = credentials(headers).ok_or_else(refuse)?;
        if password.len() > MAX_PASSWORD {
            return Err(refuse());
        }
        // An unknown user is checked against another user's hash all the same, and refused
        // after: answering at once would tell which user names exist, by the time taken.
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h, true),
            None => (self.users.values().next().ok_or_else(refuse)?, false),
        };
        let digest = self.digest(&user, &password);
        if known && self.remembered().contains(&digest) {
            return Ok(());
        }
        let waiting = Waiting::enter(&WAITING, MAX_WAITING).ok_or(ProxyError::RateLimited {
            retry_after: std::time::Duration::from_secs(1),
        })?;
        let permit = checks()
            .acquire()
            .await
            .map_err(|_| ProxyError::Internal("basic auth checks closed".into()))?;
        drop(waiting);
        let hash = hash.clone();
        let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .map_err(|e| ProxyError::Internal(format!("basic auth check: {e}")))?;
        drop(permit);
        if !(ok && known) {
            return Err(refuse());
        }
        let mut r = self.remembered();
        if r.len() >= REMEMBERED {
            r.clear();
        }
        r.insert(digest);
        Ok(())
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn digest(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        c.update(&self.key);
        c.update(user.as_bytes());
        c.update(&[0]);
        c.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(c.finish().as_ref());
        out
    }
}

static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One check waiting for a CPU, counted in `count` until dropped.
struct Waiting(&'static std::sync::atomic::AtomicUsize);

impl Waiting {
    /// `None` when `max` checks wait already.
    fn enter(count: &'static std::sync::atomic::AtomicUsize, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then(|| n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Hash checks running at once, process-wide: one per CPU.
fn checks() -> &'static tokio::sync::Semaphore {
    static CHECKS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    CHECKS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from))
    })
}

/// User and password of an `Authorization: Basic` header (RFC 7617).
fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_crypt_matches_htpasswd_and_openssl() {
        // `openssl passwd -apr1 -salt lZL6V/ci password`, and FreeBSD's MD5-crypt vector.
        assert_eq!(
            md5_crypt(b"password", "$apr1$", "lZL6V/ci"),
            "$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00"
        );
        assert_eq!(
            md5_crypt(b"password", "$1$", "5pZSV9va"),
            "$1$5pZSV9va$azfrPr6af3Fc7dLblQXVa0"
        );
    }

    #[test]
    fn every_supported_format_verifies_and_refuses() {
        for (hash, password) in [
            // OpenBSD's bcrypt test vector.
            (
                "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
                "U*U",
            ),
            ("$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00", "password"),
            ("$1$5pZSV9va$azfrPr6af3Fc7dLblQXVa0", "password"),
            // glibc's SHA-crypt vectors (`openssl passwd -5`, `-6`).
            (
                "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
                "Hello world!",
            ),
            (
                "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
                "Hello world!",
            ),
            // The same with explicit rounds (Drepper's SHA-crypt spec).
            (
                "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
                "Hello world!",
            ),
            (
                "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
                "Hello world!",
            ),
            // `htpasswd -s`: SHA-1 of "password".
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "password"),
        ] {
            let h = Hash::parse(hash).unwrap_or_else(|e| panic!("{hash}: {e}"));
            assert!(h.verify(password.as_bytes()), "{hash}");
            assert!(!h.verify(b"wrong"), "{hash}");
        }
    }

    #[test]
    fn unsupported_and_malformed_hashes_are_refused() {
        for (hash, why) in [
            ("secret", "not a supported hash"),
            ("aZGJuE6EXrjEE", "not a supported hash"),
            ("$apr1$nosalt", "salt"),
            ("$apr1$waytoolongsalt$eIMz/iKDkbtys/uU7LEK00", "malformed"),
            ("{SHA}not base64!", "base64"),
            ("$6$saltstring", "malformed"),
            (
                "$5$rounds=many$salt$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
                "malformed",
            ),
            ("$6$saltstring$tooshort", "malformed"),
            ("{SHA}AAAA", "SHA-1"),
        ] {
            let e = Hash::parse(hash).expect_err(hash);
            assert!(e.contains(why), "{hash}: {e}");
        }
    }

    #[test]
    fn credentials_are_read_from_the_basic_scheme_only() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            credentials(&m)
        };
        // "alice:pa:ss" - a password may hold colons.
        assert_eq!(
            h("Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            h("basic YWxpY2U6cGE6c3M=").map(|c| c.0),
            Some("alice".into())
        );
        assert_eq!(h("Bearer YWxpY2U6cGE6c3M="), None);
        assert_eq!(h("Basic !!!"), None);
        assert_eq!(h("Basic YWxpY2U="), None, "no colon");
    }

    fn auth(file: &str) -> Result<BasicAuth, BasicAuthError> {
        let dir = std::env::temp_dir().join(format!("fg-basic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!(
            "{:x}",
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, file.as_bytes()).as_ref()[0]
        ));
        std::fs::write(&p, file).unwrap();
        BasicAuth::load(
            "routes[0].basic-auth",
            &config::BasicAuth {
                users_file: p,
                realm: "Staff \"only\"".into(),
            },
        )
    }

    #[tokio::test]
    async fn users_of_the_file_pass_and_others_get_the_challenge() {
        let a = auth("# staff\nalice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
            .unwrap();
        let with = |user: &str, pass: &str| {
            let mut m = HeaderMap::new();
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            m.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {b64}")).unwrap(),
            );
            m
        };
        a.check(&with("alice", "password")).await.unwrap();
        assert_eq!(a.remembered().len(), 1, "a pass is remembered");
        a.check(&with("alice", "password")).await.unwrap();
        a.check(&with("bob", "password")).await.unwrap();
        for h in [
            with("alice", "nope"),
            with("carol", "password"),
            HeaderMap::new(),
        ] {
            match a.check(&h).await {
                Err(ProxyError::Unauthorized {
                    challenge: Some(c),
                    signin: None,
                }) => assert_eq!(c, "Basic realm=\"Staff \\\"only\\\"\""),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(a.remembered().len(), 2, "failures are not remembered");
        // A password past MAX_PASSWORD is refused without being hashed (a CPU bomb for
        // SHA-crypt otherwise), even a remembered one.
        let long = "p".repeat(MAX_PASSWORD + 1);
        let started = std::time::Instant::now();
        assert!(matches!(
            a.check(&with("alice", &long)).await,
            Err(ProxyError::Unauthorized { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn waiting_checks_are_bounded() {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let held: Vec<_> = (0..3).filter_map(|_| Waiting::enter(&COUNT, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(
            Waiting::enter(&COUNT, 3).is_none(),
            "a fourth waits for no one"
        );
        drop(held);
        assert!(
            Waiting::enter(&COUNT, 3).is_some(),
            "room once they are done"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_key_and_line() {
        for (file, why) in [
            (
                "alice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nbob\n",
                "line 2: not `user:hash`",
            ),
            (
                "alice:plain\n",
                "line 1: user `alice`: not a supported hash",
            ),
            (
                "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\na:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
                "listed twice",
            ),
            ("# nobody\n", "has no user"),
        ] {
            let e = auth(file).expect_err(file).to_string();
            assert!(e.starts_with("routes[0].basic-auth.users-file: "), "{e}");
            assert!(e.contains(why), "{file:?}: {e}");
        }
    }
}
