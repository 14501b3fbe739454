//! The Ingress annotations of ingress-nginx and the HAProxy Kubernetes Ingress Controller that
//! map onto something floodgate has, read into route and backend settings. Every other
//! annotation of those controllers is reported, never silently ignored (`translate.rs`). The
//! table users look at is docs/migrating.md.
//!
//! A value floodgate cannot read (a CIDR that is not one, a timeout that is not a duration)
//! rejects the Ingress with the annotation's name: serving it without the setting would, for
//! an allow list, open it to everyone.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::config::{Auth, BackendTls, Cors, HDuration, Proto, Redirect, Sticky, Verify};

const NGINX: &str = "nginx.ingress.kubernetes.io/";
const HAPROXY: &str = "haproxy.org/";

/// What an Ingress's annotations ask for.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Annotated {
    pub allow: Vec<IpNet>,
    /// `rewrite-target`: with `use-regex`, the target of the path as a regular expression;
    /// else what the matched prefix becomes.
    pub rewrite_target: Option<String>,
    pub use_regex: bool,
    pub redirect: Option<Redirect>,
    /// `ssl-redirect` (`None`: the default, on for an Ingress with `tls`) and
    /// `force-ssl-redirect`.
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: bool,
    pub cors: Option<Cors>,
    pub auth: Option<Auth>,
    pub canary: Option<Canary>,
    pub backend: BackendSettings,
}

/// What makes this Ingress's backends differ from a Service port's defaults.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct BackendSettings {
    pub connect: Option<HDuration>,
    pub server: Option<HDuration>,
    pub proto: Option<Proto>,
    pub tls: Option<BackendTls>,
    pub sticky: Option<Sticky>,
}

impl BackendSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// ingress-nginx's canary: this Ingress's backends take a share of the requests of the
/// Ingress with the same host and path, or the requests with a header.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Canary {
    pub weight: u32,
    pub header: Option<(String, String)>,
}

/// The annotations floodgate reads (without their prefix); every other one of the two
/// prefixes is reported.
pub(super) const SUPPORTED: &[&str] = &[
    "nginx:rewrite-target",
    "nginx:use-regex",
    "nginx:whitelist-source-range",
    "nginx:allowlist-source-range",
    "nginx:permanent-redirect",
    "nginx:permanent-redirect-code",
    "nginx:temporal-redirect",
    "nginx:ssl-redirect",
    "nginx:force-ssl-redirect",
    "nginx:enable-cors",
    "nginx:cors-allow-origin",
    "nginx:cors-allow-methods",
    "nginx:cors-allow-headers",
    "nginx:cors-expose-headers",
    "nginx:cors-allow-credentials",
    "nginx:cors-max-age",
    "nginx:auth-url",
    "nginx:auth-signin",
    "nginx:auth-response-headers",
    "nginx:proxy-connect-timeout",
    "nginx:proxy-read-timeout",
    "nginx:backend-protocol",
    "nginx:affinity",
    "nginx:session-cookie-name",
    "nginx:session-cookie-max-age",
    "nginx:session-cookie-path",
    "nginx:canary",
    "nginx:canary-weight",
    "nginx:canary-by-header",
    "nginx:canary-by-header-value",
    "haproxy:allow-list",
    "haproxy:whitelist",
    "haproxy:ssl-redirect",
    "haproxy:timeout-connect",
    "haproxy:timeout-server",
    "haproxy:cookie-persistence",
    "haproxy:server-proto",
    "haproxy:server-ssl",
];

/// Whether `key` is one floodgate reads.
pub(super) fn supported(key: &str) -> bool {
    let short = key
        .strip_prefix(NGINX)
        .map(|k| format!("nginx:{k}"))
        .or_else(|| key.strip_prefix(HAPROXY).map(|k| format!("haproxy:{k}")));
    short.is_some_and(|s| SUPPORTED.contains(&s.as_str()))
}

/// TLS to the servers without verifying them: what ingress-nginx's `backend-protocol: HTTPS`
/// and HAProxy's `server-ssl` do by default (`proxy_ssl_verify off`, `verify none`).
fn unverified_tls() -> BackendTls {
    BackendTls {
        verify: Verify::None,
        ca_file: None,
        server_name: None,
        cert: None,
        key: None,
    }
}

pub(super) fn read(a: &BTreeMap<String, String>) -> Result<Annotated, String> {
    let nginx = |k: &str| a.get(&format!("{NGINX}{k}")).map(|v| v.trim());
    let haproxy = |k: &str| a.get(&format!("{HAPROXY}{k}")).map(|v| v.trim());
    let flag = |name: &str, v: Option<&str>| -> Result<Option<bool>, String> {
        match v {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(format!("{name}: `{other}` is not true or false")),
        }
    };
    // ingress-nginx's timeouts are bare seconds; HAProxy's carry a unit.
    let seconds = |name: &str, v: Option<&str>| -> Result<Option<HDuration>, String> {
        v.map(|v| {
            v.parse::<u64>()
                .map(HDuration::secs)
                .map_err(|_| format!("{NGINX}{name}: `{v}` is not a number of seconds"))
        })
        .transpose()
    };
    let duration = |name: &str, v: Option<&str>| -> Result<Option<HDuration>, String> {
        v.map(|v| {
            v.parse::<HDuration>()
                .map_err(|e| format!("{HAPROXY}{name}: {e}"))
        })
        .transpose()
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut out = Annotated::default();

    let allow = [
        ("whitelist-source-range", nginx("whitelist-source-range")),
        ("allowlist-source-range", nginx("allowlist-source-range")),
        ("allow-list", haproxy("allow-list")),
        ("whitelist", haproxy("whitelist")),
    ];
    for (name, v) in allow {
        for cidr in v.map(list).unwrap_or_default() {
            let net = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{name}: `{cidr}` is not a CIDR or an address"))?;
            out.allow.push(net);
        }
    }

    out.use_regex = flag("use-regex", nginx("use-regex"))?.unwrap_or(false);
    out.rewrite_target = nginx("rewrite-target").map(str::to_owned);

    if let Some(to) = nginx("permanent-redirect") {
        let code = match nginx("permanent-redirect-code") {
            Some(c) => c
                .parse::<u16>()
                .map_err(|_| format!("permanent-redirect-code: `{c}` is not a status"))?,
            None => 301,
        };
        out.redirect = Some(Redirect {
            location: Some(to.to_owned()),
            code,
            ..Redirect::default()
        });
    } else if let Some(to) = nginx("temporal-redirect") {
        out.redirect = Some(Redirect {
            location: Some(to.to_owned()),
            code: 302,
            ..Redirect::default()
        });
    }
    out.ssl_redirect = flag(
        "ssl-redirect",
        nginx("ssl-redirect").or(haproxy("ssl-redirect")),
    )?;
    out.force_ssl_redirect =
        flag("force-ssl-redirect", nginx("force-ssl-redirect"))?.unwrap_or(false);

    let cors_on = flag("enable-cors", nginx("enable-cors"))?.unwrap_or(false);
    if cors_on {
        let mut c = Cors {
            // ingress-nginx's default origin is every one.
            allow_origins: vec!["*".into()],
            ..Cors::default()
        };
        if let Some(v) = nginx("cors-allow-origin") {
            c.allow_origins = list(v);
        }
        if let Some(v) = nginx("cors-allow-methods") {
            c.allow_methods = list(v);
        }
        if let Some(v) = nginx("cors-allow-headers") {
            c.allow_headers = list(v);
        }
        if let Some(v) = nginx("cors-expose-headers") {
            c.expose_headers = list(v);
        }
        if let Some(v) = flag("cors-allow-credentials", nginx("cors-allow-credentials"))? {
            c.allow_credentials = v;
        }
        if let Some(v) = seconds("cors-max-age", nginx("cors-max-age"))? {
            c.max_age = v;
        }
        // `*` with credentials is what floodgate refuses (it would let any site read answers
        // made with the user's cookies); ingress-nginx's defaults are exactly that, so an
        // annotation that names no origin gets `*` without credentials.
        if c.allow_origins.iter().any(|o| o == "*") && nginx("cors-allow-credentials").is_none() {
            c.allow_credentials = false;
        }
        out.cors = Some(c);
    }

    if let Some(url) = nginx("auth-url") {
        out.auth = Some(Auth {
            url: url.to_owned(),
            signin: nginx("auth-signin").map(str::to_owned),
            response_headers: nginx("auth-response-headers").map(list).unwrap_or_default(),
            timeout: HDuration::secs(5),
        });
    }

    let b = &mut out.backend;
    b.connect = seconds("proxy-connect-timeout", nginx("proxy-connect-timeout"))?
        .or(duration("timeout-connect", haproxy("timeout-connect"))?);
    b.server = seconds("proxy-read-timeout", nginx("proxy-read-timeout"))?
        .or(duration("timeout-server", haproxy("timeout-server"))?);
    match nginx("backend-protocol")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("HTTP") => {}
        Some("HTTPS") => b.tls = Some(unverified_tls()),
        Some("GRPC" | "H2C") => b.proto = Some(Proto::H2),
        Some("GRPCS") => {
            b.proto = Some(Proto::H2);
            b.tls = Some(unverified_tls());
        }
        Some(other) => {
            return Err(format!(
                "backend-protocol: `{other}` is not HTTP, HTTPS, GRPC, GRPCS or H2C"
            ));
        }
    }
    if haproxy("server-proto") == Some("h2") {
        b.proto = Some(Proto::H2);
    }
    if flag("server-ssl", haproxy("server-ssl"))? == Some(true) {
        b.tls = Some(unverified_tls());
    }
    let cookie = match (nginx("affinity"), haproxy("cookie-persistence")) {
        (Some("cookie"), _) => Some(
            nginx("session-cookie-name")
                .unwrap_or("INGRESSCOOKIE")
                .to_owned(),
        ),
        (Some(other), _) => return Err(format!("affinity: `{other}` is not cookie")),
        (None, Some(name)) => Some(name.to_owned()),
        (None, None) => None,
    };
    if let Some(cookie) = cookie {
        let mut s = Sticky {
            cookie,
            ..Sticky::default()
        };
        s.max_age = seconds("session-cookie-max-age", nginx("session-cookie-max-age"))?;
        if let Some(p) = nginx("session-cookie-path") {
            p.clone_into(&mut s.path);
        }
        b.sticky = Some(s);
    }

    if flag("canary", nginx("canary"))? == Some(true) {
        let weight = match nginx("canary-weight") {
            Some(w) => w
                .parse::<u32>()
                .ok()
                .filter(|w| *w <= 100)
                .ok_or_else(|| format!("canary-weight: `{w}` is not 0 to 100"))?,
            None => 0,
        };
        let header = nginx("canary-by-header").map(|h| {
            (
                h.to_owned(),
                nginx("canary-by-header-value")
                    .unwrap_or("always")
                    .to_owned(),
            )
        });
        out.canary = Some(Canary { weight, header });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Result<Annotated, String> {
        read(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn each_supported_annotation_is_read() {
        let a = of(&[
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/8, 192.0.2.7",
            ),
            ("haproxy.org/allow-list", "2001:db8::/32"),
            ("nginx.ingress.kubernetes.io/rewrite-target", "/"),
            ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
            ("nginx.ingress.kubernetes.io/enable-cors", "true"),
            (
                "nginx.ingress.kubernetes.io/cors-allow-origin",
                "https://a.example, https://b.example",
            ),
            (
                "nginx.ingress.kubernetes.io/auth-url",
                "http://auth.svc/check",
            ),
            ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "3"),
            ("haproxy.org/timeout-server", "30s"),
            ("nginx.ingress.kubernetes.io/backend-protocol", "GRPC"),
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            ("nginx.ingress.kubernetes.io/session-cookie-name", "route"),
            ("nginx.ingress.kubernetes.io/canary", "true"),
            ("nginx.ingress.kubernetes.io/canary-weight", "20"),
        ])
        .unwrap();
        assert_eq!(a.allow.len(), 3);
        assert_eq!(a.rewrite_target.as_deref(), Some("/"));
        assert_eq!(a.ssl_redirect, Some(false));
        let c = a.cors.unwrap();
        assert_eq!(c.allow_origins, ["https://a.example", "https://b.example"]);
        assert!(
            c.allow_credentials,
            "ingress-nginx's default with named origins"
        );
        assert_eq!(a.auth.unwrap().url, "http://auth.svc/check");
        assert_eq!(a.backend.connect, Some(HDuration::secs(3)));
        assert_eq!(a.backend.server, Some(HDuration::secs(30)));
        assert_eq!(a.backend.proto, Some(Proto::H2));
        assert_eq!(a.backend.sticky.unwrap().cookie, "route");
        assert_eq!(a.canary.unwrap().weight, 20);
        let star = of(&[("nginx.ingress.kubernetes.io/enable-cors", "true")]).unwrap();
        let c = star.cors.unwrap();
        assert_eq!(
            (c.allow_origins.as_slice(), c.allow_credentials),
            (&["*".to_owned()][..], false)
        );
        let r = of(&[(
            "nginx.ingress.kubernetes.io/permanent-redirect",
            "https://new.example/",
        )])
        .unwrap();
        assert_eq!(r.redirect.unwrap().code, 301);
    }

    #[test]
    fn a_value_that_cannot_be_read_names_the_annotation() {
        for (k, v, want) in [
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/33",
                "whitelist-source-range",
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-read-timeout",
                "1m",
                "proxy-read-timeout",
            ),
            ("haproxy.org/timeout-connect", "soon", "timeout-connect"),
            (
                "nginx.ingress.kubernetes.io/backend-protocol",
                "FTP",
                "backend-protocol",
            ),
            (
                "nginx.ingress.kubernetes.io/ssl-redirect",
                "yes",
                "ssl-redirect",
            ),
        ] {
            let e = of(&[(k, v)]).unwrap_err();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
        assert!(supported("nginx.ingress.kubernetes.io/rewrite-target"));
        assert!(!supported(
            "nginx.ingress.kubernetes.io/configuration-snippet"
        ));
    }
}
