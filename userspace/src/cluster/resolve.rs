//! What the Ingress and Gateway API translations share: the cluster's Services, their
//! EndpointSlices and TLS Secrets by name, the backend of one Service port, where a route
//! stands among all of them, and the checks both apply to names.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use k8s_openapi::api::{
    core::v1::{Secret, Service},
    discovery::v1::EndpointSlice,
};

use super::objects::Objects;
use crate::config::{Backend, ServerSpec};
use crate::tls::CertPair;

pub(super) const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Services, their EndpointSlices and Secrets by namespace and name.
pub(super) struct Index<'a> {
    pub(super) services: HashMap<(&'a str, &'a str), &'a Service>,
    pub(super) slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    pub(super) secrets: HashMap<(&'a str, &'a str), &'a Secret>,
}

impl<'a> Index<'a> {
    pub(super) fn new(objs: &'a Objects) -> Self {
        let key = |m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or(""),
            )
        };
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for s in &objs.slices {
            let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_LABEL))
            else {
                continue;
            };
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            slices
                .entry((ns, svc.as_str()))
                .or_default()
                .push(s.as_ref());
        }
        Self {
            services: objs
                .services
                .iter()
                .map(|s| (key(&s.metadata), s.as_ref()))
                .collect(),
            slices,
            secrets: objs
                .secrets
                .iter()
                .map(|s| (key(&s.metadata), s.as_ref()))
                .collect(),
        }
    }
}

/// Where a route stands among all of them: smaller first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Order {
    /// 0 exact host, 1 wildcard, 2 every host.
    pub host_kind: u8,
    /// Longer wildcard suffixes first.
    pub host_len: std::cmp::Reverse<usize>,
    /// 0 `Exact`, 1 prefix, 2 regular expression.
    pub path_kind: u8,
    pub path_len: std::cmp::Reverse<usize>,
    /// 0 with a method match, 1 without (the Gateway API's precedence).
    pub method: u8,
    /// More header matches first, then more query matches.
    pub headers: std::cmp::Reverse<usize>,
    pub query: std::cmp::Reverse<usize>,
    /// The object's age rank (older first), then the rule's place in it.
    pub age: usize,
    pub place: usize,
}

impl Order {
    /// The host part of the order of a rule for `host` (`None`: every host).
    pub(super) fn host(host: Option<&str>) -> (u8, std::cmp::Reverse<usize>) {
        (
            match host {
                Some(h) if h.starts_with("*.") => 1,
                Some(_) => 0,
                None => 2,
            },
            std::cmp::Reverse(host.map_or(0, str::len)),
        )
    }
}

/// A DNS name or `*.` wildcard, as the Ingress spec allows.
pub(super) fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{h}` is not a DNS name or a `*.` wildcard"))
    }
}

/// A Service port a route names: by number or by name.
#[derive(Debug, Clone, Copy)]
pub(super) enum PortRef<'a> {
    Number(i32),
    Name(&'a str),
}

/// The backend of port `port` of Service `svc` in `ns`, its servers the ready endpoints. What
/// is missing (the Service, the port) leaves it without servers and says so in `notes`.
pub(super) fn service(
    ns: &str,
    svc: &str,
    port: PortRef<'_>,
    index: &Index<'_>,
    notes: &mut Vec<String>,
) -> Backend {
    let (number, port_name) = match port {
        PortRef::Number(n) => (Some(n), None),
        PortRef::Name(n) => (None, Some(n.to_owned())),
    };
    let port_label = match port {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(n) => n.to_owned(),
    };
    struct Ref<'s> {
        name: &'s str,
    }
    let svc_ref = Ref { name: svc };
    let name = backend_name(ns, svc_ref.name, &port_label);
    let mut servers = Vec::new();
    let Some(svc) = index.services.get(&(ns, svc_ref.name)) else {
        notes.push(format!(
            "service `{}` not found: 503 until it exists",
            svc_ref.name
        ));
        return Backend::new(name, servers);
    };
    let spec = svc.spec.as_ref();
    let port = spec.and_then(|s| s.ports.as_ref()).and_then(|ports| {
        ports.iter().find(|p| match (number, &port_name) {
            (Some(n), _) => p.port == n,
            (None, Some(n)) => p.name.as_ref() == Some(n),
            (None, None) => false,
        })
    });
    let Some(port) = port else {
        notes.push(format!(
            "service `{}` has no port {port_label}: 503 until it does",
            svc_ref.name
        ));
        return Backend::new(name, servers);
    };
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        if let Some(ext) = spec.and_then(|s| s.external_name.as_deref()) {
            servers.push(ServerSpec::Address(format!("{ext}:{}", port.port)));
        }
        return Backend::new(name, servers);
    }
    // Endpoints carry the Service port's name, and the target port as a number.
    let want = port.name.as_deref().unwrap_or("");
    let mut seen = HashSet::new();
    for slice in index.slices.get(&(ns, svc_ref.name)).into_iter().flatten() {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == want)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in &slice.endpoints {
            // `ready` unset means ready (the API's contract); terminating endpoints are not.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                let Ok(ip) = a.parse::<std::net::IpAddr>() else {
                    continue;
                };
                let addr = std::net::SocketAddr::new(ip, target);
                if seen.insert(addr) {
                    servers.push(ServerSpec::Address(addr.to_string()));
                }
            }
        }
    }
    servers.sort_by(|a, b| a.address().cmp(b.address()));
    Backend::new(name, servers)
}

/// `namespace_service_port`: `_` is in no Kubernetes name, so two Service ports never share a
/// name; a name past the 64 characters backend names may have keeps its start and a hash.
pub(super) fn backend_name(ns: &str, svc: &str, port: &str) -> String {
    let full = format!("{ns}_{svc}_{port}");
    if full.len() <= 64 {
        return full;
    }
    let mut h = DefaultHasher::new();
    full.hash(&mut h);
    format!("{}_{:016x}", &full[..47], h.finish())
}

pub(super) enum SecretError {
    /// Not there (deleted, or never created): its hosts lose the certificate.
    Missing(String),
    /// There but not a usable certificate.
    Unusable(String),
}

pub(super) fn tls_secret(index: &Index<'_>, ns: &str, name: &str) -> Result<CertPair, SecretError> {
    let s = index
        .secrets
        .get(&(ns, name))
        .ok_or_else(|| SecretError::Missing("not found".into()))?;
    if s.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(SecretError::Missing(format!(
            "type `{}`, not kubernetes.io/tls",
            s.type_.as_deref().unwrap_or("")
        )));
    }
    let data = s
        .data
        .as_ref()
        .ok_or_else(|| SecretError::Unusable("no data".into()))?;
    let get = |k: &str| {
        data.get(k)
            .map(|v| v.0.as_slice())
            .ok_or_else(|| SecretError::Unusable(format!("no {k}")))
    };
    CertPair::parse(&format!("{ns}/{name}"), get("tls.crt")?, get("tls.key")?)
        .map_err(|e| SecretError::Unusable(e.to_string()))
}

pub(super) fn names(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_else(|| "default".into()),
        m.name.clone().unwrap_or_default(),
    )
}
