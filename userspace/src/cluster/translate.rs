//! The cluster's objects as floodgate's config: the file's config (listeners, global settings,
//! its own routes and backends) with the claimed Ingresses' routes, their Services' ready
//! endpoints as backends, their TLS Secrets as certificates and the settings ConfigMap's keys.
//! A pure function of its inputs, so every rule below is unit-tested with fixtures.
//!
//! - An Ingress is claimed when its class (`spec.ingressClassName`, else the
//!   `kubernetes.io/ingress.class` annotation) names an IngressClass whose `spec.controller` is
//!   `kubernetes.controller`, or when it names no class and such an IngressClass is marked
//!   default (`ingressclass.kubernetes.io/is-default-class: "true"`).
//! - Routes are ordered as the Ingress spec says matches take precedence: exact hosts, then
//!   wildcard hosts (longer first), then rules for every host; within a host `Exact` paths,
//!   then `Prefix` paths longest first; then the older Ingress. `ImplementationSpecific` is a
//!   prefix match. A default backend is a rule for every host and path, so it comes last.
//! - A backend is one Service port: its servers are the ready endpoints of the Service's
//!   EndpointSlices on the matching port (by the Service port's name), so no DNS is involved; an
//!   ExternalName Service's name is resolved as a file backend's would be. A Service, port or
//!   endpoint that is missing leaves the backend without servers: 503, as other ingresses do.
//! - One Ingress that would make the config invalid is rejected alone, with the reason; the
//!   others are served. A TLS Secret that is missing or not a usable certificate is reported and
//!   its hosts are served with the listener's other certificates.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::ConfigMap,
    networking::v1::{Ingress, IngressBackend, IngressClass},
};

use super::annotations;
use super::objects::{Objects, Problem};
use super::resolve::{self, Index, Order, PortRef, SecretError, check_host, names, tls_secret};
use crate::config::{self, Backend, Config, ConfigError, Kubernetes, Route};
use crate::tls::CertPair;

/// What the objects become beside the config.
#[derive(Debug)]
pub struct Translation {
    /// Certificates for every TLS listener, from the served Ingresses' Secrets.
    pub certs: Vec<CertPair>,
    /// The Ingresses served, as (namespace, name).
    pub served: Vec<(String, String)>,
    pub problems: Vec<Problem>,
    /// The Gateway API objects' status.
    pub statuses: Vec<super::gateway::StatusPatch>,
}

const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Annotation prefixes of the ingress controllers users come from: an annotation of theirs is
/// a behaviour its author expects, so one floodgate does not implement is reported.
const CONTROLLER_PREFIXES: &[&str] = &[
    "nginx.ingress.kubernetes.io/",
    "haproxy.org/",
    "ingress.kubernetes.io/",
    "haproxy-ingress.github.io/",
    "floodgate.io/",
];

/// Builds the config floodgate serves from `base` (the file) and the cluster's objects. Fails
/// only when the result as a whole is invalid (the settings ConfigMap is rejected alone first):
/// then the running config keeps serving.
///
/// `served_certs` are the certificates the running config serves: a Secret that stops being a
/// usable certificate (a half-written renewal) keeps its last good one serving.
pub fn translate(
    base: &Config,
    k: &Kubernetes,
    objs: &Objects,
    served_certs: &[CertPair],
) -> Result<(Config, Translation), ConfigError> {
    let mut problems = Vec::new();
    let mut cfg = base.clone();
    if let Some(cm) = &objs.settings {
        settings(&mut cfg, cm, &mut problems);
    }
    let classes = claimed_classes(k, &objs.classes);
    let index = Index::new(objs);
    let mut ingresses: Vec<&Ingress> = objs
        .ingresses
        .iter()
        .map(Arc::as_ref)
        .filter(|i| classes.claims(i))
        .collect();
    // The older Ingress wins a conflict, as the Ingress spec asks.
    ingresses.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (
                i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let file_backends: HashSet<String> = base.backends.iter().map(|b| b.name.clone()).collect();
    let mut backends: BTreeMap<String, Backend> = BTreeMap::new();
    let mut rules: Vec<(Order, Route)> = Vec::new();
    let mut certs = Vec::new();
    let mut served = Vec::new();
    let listeners = Listeners {
        plain: base
            .listeners
            .iter()
            .filter(|l| l.tls.is_none())
            .map(|l| l.name.clone())
            .collect(),
        tls: base
            .listeners
            .iter()
            .filter(|l| l.tls.is_some())
            .map(|l| l.name.clone())
            .collect(),
    };
    let mut canaries: Vec<(annotations::Canary, Fragment, (String, String))> = Vec::new();
    for (age, ing) in ingresses.into_iter().enumerate() {
        let (ns, name) = names(&ing.metadata);
        let mut fragment = match ingress(ing, &index, age, &listeners) {
            Ok(f) => f,
            Err(reason) => {
                problems.push(problem("Ingress", ing, reason, true));
                continue;
            }
        };
        problems.extend(
            fragment
                .notes
                .drain(..)
                .map(|reason| problem("Ingress", ing, reason, false)),
        );
        if let Some(b) = fragment
            .backends
            .iter()
            .find(|b| file_backends.contains(&b.name))
        {
            let reason = format!("backend `{}` is also a backend of the config file", b.name);
            problems.push(problem("Ingress", ing, reason, true));
            continue;
        }
        if let Err(e) = check_alone(base, &fragment) {
            problems.push(problem("Ingress", ing, e.to_string(), true));
            continue;
        }
        for (host, secret) in &fragment.tls {
            let source = format!("{ns}/{secret}");
            let last_good = || served_certs.iter().find(|c| c.source == source);
            match tls_secret(&index, &ns, secret) {
                Ok(c) => certs.push(c),
                Err(SecretError::Unusable(reason)) if last_good().is_some() => {
                    certs.extend(last_good().cloned());
                    problems.push(problem(
                        "Ingress",
                        ing,
                        format!("tls secret `{secret}` (hosts {host}): {reason}; its last good certificate keeps serving"),
                        false,
                    ));
                }
                Err(SecretError::Missing(reason) | SecretError::Unusable(reason)) => problems.push(problem(
                    "Ingress",
                    ing,
                    format!("tls secret `{secret}` (hosts {host}): {reason}; those hosts get the listener's other certificates"),
                    false,
                )),
            }
        }
        if let Some(c) = fragment.canary.take() {
            canaries.push((c, fragment, (ns, name)));
            continue;
        }
        for b in fragment.backends {
            backends.entry(b.name.clone()).or_insert(b);
        }
        rules.extend(fragment.routes);
        served.push((ns, name));
    }
    // Canaries join the main Ingress's route for the same host and path: a share of its
    // requests by weight, and all of those with the canary header.
    for (c, fragment, (ns, name)) in canaries {
        let mut joined = false;
        for (order, canary_route) in &fragment.routes {
            // `/` as a prefix is every path (a rewrite-target sets it).
            let prefix = |r: &Route| r.path_prefix.clone().filter(|p| p != "/");
            let same = |r: &Route| {
                r.host == canary_route.host
                    && r.path == canary_route.path
                    && prefix(r) == prefix(canary_route)
                    && r.path_regex == canary_route.path_regex
                    && r.listeners == canary_route.listeners
                    && r.headers.is_empty()
                    && canary_route.redirect.is_none()
            };
            let Some(main_at) = rules
                .iter()
                .position(|(_, r)| same(r) && r.redirect.is_none())
            else {
                continue;
            };
            joined = true;
            if let Some((h, v)) = &c.header {
                let mut by_header = canary_route.clone();
                by_header.headers.insert(h.clone(), v.clone());
                let mut o = order.clone();
                o.headers = std::cmp::Reverse(1);
                rules.push((o, by_header));
            }
            if c.weight > 0 {
                let main = &mut rules[main_at].1;
                let main_backend = std::mem::take(&mut main.backend);
                if !main_backend.is_empty() {
                    main.split = vec![
                        config::SplitTo {
                            backend: main_backend,
                            weight: 100 - c.weight,
                        },
                        config::SplitTo {
                            backend: canary_route.backend.clone(),
                            weight: c.weight,
                        },
                    ];
                } else {
                    main.backend = main_backend;
                }
            }
        }
        if joined {
            for b in fragment.backends {
                backends.entry(b.name.clone()).or_insert(b);
            }
            served.push((ns, name));
        } else {
            problems.push(Problem {
                kind: "Ingress",
                namespace: ns,
                name,
                reason: "a canary with no main Ingress for the same host and path".into(),
                rejected: true,
            });
        }
    }
    let gw = super::gateway::translate(base, k, &objs.gateway, &index, served.len());
    rules.extend(gw.routes);
    for b in gw.backends {
        backends.entry(b.name.clone()).or_insert(b);
    }
    certs.extend(gw.certs);
    problems.extend(gw.problems);
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    cfg.routes.extend(rules.into_iter().map(|(_, r)| r));
    cfg.backends.extend(backends.into_values());
    // Two Ingresses naming the same Secret: one certificate.
    let mut seen = HashSet::new();
    certs.retain(|c: &CertPair| seen.insert(c.source.clone()));
    cfg.validate()?;
    Ok((
        cfg,
        Translation {
            certs,
            served,
            problems,
            statuses: gw.statuses,
        },
    ))
}

/// The settings ConfigMap's keys on top of the file's; a ConfigMap that makes the config
/// invalid is ignored whole (reported), so a typo there does not take routing down.
fn settings(cfg: &mut Config, cm: &ConfigMap, problems: &mut Vec<Problem>) {
    let keys = cm.data.clone().unwrap_or_default();
    let mut next = cfg.clone();
    next.haproxy.extend(keys.clone());
    let applied = config::haproxy::apply(&mut next, &keys).and_then(|ignored| {
        next.validate()?;
        Ok(ignored)
    });
    let (ns, name) = names(&cm.metadata);
    let mut report = |reason: String, rejected| {
        problems.push(Problem {
            kind: "ConfigMap",
            namespace: ns.clone(),
            name: name.clone(),
            reason,
            rejected,
        });
    };
    match applied {
        Ok(ignored) => {
            if !ignored.is_empty() {
                report(
                    format!("keys floodgate does not implement: {}", ignored.join(", ")),
                    false,
                );
            }
            next.ignored_haproxy_keys.extend(ignored);
            *cfg = next;
        }
        Err(e) => report(format!("{e}; the file's settings stay"), true),
    }
}

struct Classes {
    names: HashSet<String>,
    /// A claimed class is the cluster's default: Ingresses without a class are ours.
    default: bool,
}

fn claimed_classes(k: &Kubernetes, classes: &[Arc<IngressClass>]) -> Classes {
    let mut out = Classes {
        names: HashSet::new(),
        default: false,
    };
    for c in classes {
        let ours = c
            .spec
            .as_ref()
            .and_then(|s| s.controller.as_deref())
            .is_some_and(|ctl| ctl == k.controller);
        if let (true, Some(name)) = (ours, &c.metadata.name) {
            out.names.insert(name.clone());
            out.default |= c
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS))
                .is_some_and(|v| v == "true");
        }
    }
    out
}

impl Classes {
    fn claims(&self, i: &Ingress) -> bool {
        let class = i
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .or_else(|| {
                i.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CLASS_ANNOTATION))
                    .map(String::as_str)
            });
        match class {
            Some(c) => self.names.contains(c),
            None => self.default,
        }
    }
}

/// One Ingress as routes and backends.
struct Fragment {
    routes: Vec<(Order, Route)>,
    backends: Vec<Backend>,
    /// (hosts, secret name) of each `tls` entry.
    tls: Vec<(String, String)>,
    /// What is served without something the Ingress asked for.
    notes: Vec<String>,
    /// A canary Ingress: its routes join the main Ingress's instead of standing alone.
    canary: Option<annotations::Canary>,
}

/// floodgate's listeners by kind, for what an Ingress serves on each (an HTTPS redirect on
/// the plain ones).
struct Listeners {
    plain: Vec<String>,
    tls: Vec<String>,
}

fn ingress(
    ing: &Ingress,
    index: &Index<'_>,
    age: usize,
    listeners: &Listeners,
) -> Result<Fragment, String> {
    let (ns, _) = names(&ing.metadata);
    let mut f = Fragment {
        routes: Vec::new(),
        backends: Vec::new(),
        tls: Vec::new(),
        notes: Vec::new(),
        canary: None,
    };
    let empty = BTreeMap::new();
    let notes = ing.metadata.annotations.as_ref().unwrap_or(&empty);
    for key in notes.keys() {
        if CONTROLLER_PREFIXES.iter().any(|p| key.starts_with(p)) && !annotations::supported(key) {
            f.notes.push(format!(
                "annotation `{key}` is not supported by floodgate; ignored"
            ));
        }
    }
    let ann = annotations::read(notes).map_err(|e| format!("annotation {e}"))?;
    f.canary.clone_from(&ann.canary);
    let Some(spec) = &ing.spec else {
        return Err("no spec".into());
    };
    let has_tls = spec.tls.as_ref().is_some_and(|t| !t.is_empty());
    let redirect_plain = (ann.force_ssl_redirect || (has_tls && ann.ssl_redirect != Some(false)))
        && !listeners.tls.is_empty();
    let mut place = 0;
    let mut add = |f: &mut Fragment,
                   host: Option<&str>,
                   path: Option<(&str, bool)>,
                   backend: &IngressBackend|
     -> Result<(), String> {
        let mut b = service_backend(&ns, backend, index, &mut f.notes)?;
        if !ann.backend.is_default() {
            apply_backend(&mut b, &ann.backend);
        }
        let mut route = Route::to(b.name.clone());
        route.host = host.map(str::to_owned);
        let (path_kind, path_len) = match path {
            Some((p, true)) => {
                route.path = Some(p.to_owned());
                (0, p.len())
            }
            Some((p, false)) => {
                // `Prefix` matches by path element and ignores a trailing `/` (`/foo/` is
                // `/foo`), which is what `path-prefix` does once the slash is gone.
                let p = match p.trim_end_matches('/') {
                    "" => "/",
                    p => p,
                };
                if p != "/" {
                    route.path_prefix = Some(p.to_owned());
                }
                (1, if p == "/" { 0 } else { p.len() })
            }
            None => (1, 0),
        };
        let (host_kind, host_len) = Order::host(host);
        let order = Order {
            host_kind,
            host_len,
            path_kind,
            path_len: std::cmp::Reverse(path_len),
            method: 1,
            headers: std::cmp::Reverse(0),
            query: std::cmp::Reverse(0),
            age,
            place,
        };
        place += 1;
        apply_route(&mut route, &ann);
        if redirect_plain {
            // ingress-nginx's and HAProxy's default for an Ingress with `tls`: plain requests
            // are sent to HTTPS, the TLS listeners serve.
            let mut to_https = Route::to(String::new());
            to_https.host.clone_from(&route.host);
            to_https.path.clone_from(&route.path);
            to_https.path_prefix.clone_from(&route.path_prefix);
            to_https.path_regex.clone_from(&route.path_regex);
            to_https.listeners.clone_from(&listeners.plain);
            to_https.redirect = Some(config::Redirect {
                scheme: Some("https".into()),
                code: 308,
                ..config::Redirect::default()
            });
            route.listeners.clone_from(&listeners.tls);
            f.routes.push((order.clone(), to_https));
        }
        f.routes.push((order, route));
        if !f.backends.iter().any(|x| x.name == b.name) {
            f.backends.push(b);
        }
        Ok(())
    };
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        if let Some(h) = host {
            check_host(h).map_err(|e| format!("spec.rules[{i}].host: {e}"))?;
        }
        let Some(http) = &rule.http else { continue };
        for (j, p) in http.paths.iter().enumerate() {
            let at = || format!("spec.rules[{i}].http.paths[{j}]");
            let path = p.path.as_deref().unwrap_or("/");
            if !path.starts_with('/') {
                return Err(format!("{}.path: `{path}` does not start with /", at()));
            }
            let exact = match p.path_type.as_str() {
                "Exact" => true,
                "Prefix" | "ImplementationSpecific" => false,
                other => {
                    return Err(format!(
                        "{}.pathType: `{other}` is not Exact, Prefix or ImplementationSpecific",
                        at()
                    ));
                }
            };
            add(&mut f, host, Some((path, exact)), &p.backend)
                .map_err(|e| format!("{}.backend: {e}", at()))?;
        }
    }
    if let Some(d) = &spec.default_backend {
        add(&mut f, None, None, d).map_err(|e| format!("spec.defaultBackend: {e}"))?;
    }
    for t in spec.tls.iter().flatten() {
        if let Some(secret) = &t.secret_name {
            f.tls.push((
                t.hosts.clone().unwrap_or_default().join(","),
                secret.clone(),
            ));
        }
    }
    Ok(f)
}

/// An Ingress's route settings from its annotations.
fn apply_route(route: &mut Route, ann: &annotations::Annotated) {
    route.allow.clone_from(&ann.allow);
    route.cors.clone_from(&ann.cors);
    route.auth.clone_from(&ann.auth);
    if ann.use_regex {
        // ingress-nginx's `use-regex`: the path is a regular expression (case-insensitive,
        // as nginx's `~*`).
        let p = route
            .path
            .take()
            .or(route.path_prefix.take())
            .unwrap_or_else(|| "/".into());
        route.path_regex = Some(format!("(?i)^{p}"));
        route.rewrite_target.clone_from(&ann.rewrite_target);
    } else if let Some(t) = &ann.rewrite_target {
        if route.path.is_none() && route.path_prefix.is_none() {
            route.path_prefix = Some("/".into());
        }
        route.rewrite_prefix = Some(t.clone());
    }
    if let Some(r) = &ann.redirect {
        route.redirect = Some(r.clone());
        route.backend.clear();
        route.rewrite_prefix = None;
        route.rewrite_target = None;
    }
}

/// A Service port's backend with an Ingress's backend annotations: its own backend, named
/// after the settings, so Ingresses that differ do not share a pool.
fn apply_backend(b: &mut Backend, s: &annotations::BackendSettings) {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    let mut h = DefaultHasher::new();
    format!("{s:?}").hash(&mut h);
    let suffix = format!("_{:08x}", h.finish() & 0xffff_ffff);
    let keep = 64usize.saturating_sub(suffix.len());
    b.name = format!("{}{suffix}", &b.name[..b.name.len().min(keep)]);
    b.timeouts.connect = s.connect.or(b.timeouts.connect);
    b.timeouts.server = s.server.or(b.timeouts.server);
    if let Some(p) = s.proto {
        b.proto = p;
    }
    if s.tls.is_some() {
        b.tls.clone_from(&s.tls);
    }
    if s.sticky.is_some() {
        b.sticky.clone_from(&s.sticky);
    }
}

/// The backend an Ingress path names: a Service port.
fn service_backend(
    ns: &str,
    backend: &IngressBackend,
    index: &Index<'_>,
    notes: &mut Vec<String>,
) -> Result<Backend, String> {
    let Some(svc) = &backend.service else {
        return Err("only Service backends are supported (not `resource`)".into());
    };
    let port = match svc.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
        Some((Some(n), _)) => PortRef::Number(n),
        Some((None, Some(n))) => PortRef::Name(n),
        _ => return Err("service.port: a number or a name is required".into()),
    };
    Ok(resolve::service(ns, &svc.name, port, index, notes))
}

/// The fragment with the file's config alone, so one bad Ingress is rejected by itself.
fn check_alone(base: &Config, f: &Fragment) -> Result<(), ConfigError> {
    let mut cfg = base.clone();
    cfg.routes.extend(f.routes.iter().map(|(_, r)| r.clone()));
    cfg.backends.extend(f.backends.iter().cloned());
    cfg.validate()
}

fn problem(kind: &'static str, ing: &Ingress, reason: String, rejected: bool) -> Problem {
    let (namespace, name) = names(&ing.metadata);
    Problem {
        kind,
        namespace,
        name,
        reason,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::resolve::{SERVICE_LABEL, backend_name};
    use k8s_openapi::api::{
        core::v1::{Secret, Service},
        discovery::v1::EndpointSlice,
    };
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    const BASE: &str = "
xdp: { enabled: false }
listeners: [{ name: http, bind: '127.0.0.1:18080' }]
backends: []
kubernetes: {}
";

    fn base() -> Config {
        Config::from_text(BASE, std::path::Path::new("test.yaml"), Default::default()).unwrap()
    }

    fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        obj(json!({
            "metadata": { "name": name, "annotations": if default {
                json!({ DEFAULT_CLASS: "true" }) } else { json!({}) } },
            "spec": { "controller": controller }
        }))
    }

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Arc<Ingress> {
        obj(json!({
            "metadata": { "name": name, "namespace": "shop", "creationTimestamp": created },
            "spec": spec
        }))
    }

    fn path(path: &str, kind: &str, svc: &str, port: serde_json::Value) -> serde_json::Value {
        json!({ "path": path, "pathType": kind,
                "backend": { "service": { "name": svc, "port": port } } })
    }

    fn service(name: &str, ports: serde_json::Value) -> Arc<Service> {
        obj(
            json!({ "metadata": { "name": name, "namespace": "shop" }, "spec": { "ports": ports } }),
        )
    }

    fn slice(
        svc: &str,
        port_name: Option<&str>,
        port: u16,
        eps: &[(&str, Option<bool>)],
    ) -> Arc<EndpointSlice> {
        obj(json!({
            "metadata": { "name": format!("{svc}-x"), "namespace": "shop",
                          "labels": { SERVICE_LABEL: svc } },
            "addressType": "IPv4",
            "ports": [{ "name": port_name, "port": port }],
            "endpoints": eps.iter().map(|(a, ready)| json!({
                "addresses": [a], "conditions": { "ready": ready } })).collect::<Vec<_>>()
        }))
    }

    fn objects() -> Objects {
        Objects {
            classes: vec![class("floodgate", config::DEFAULT_CONTROLLER, false)],
            services: vec![
                service("web", json!([{ "name": "http", "port": 80 }])),
                service("api", json!([{ "port": 8080 }])),
            ],
            slices: vec![
                slice(
                    "web",
                    Some("http"),
                    8000,
                    &[
                        ("10.0.0.1", Some(true)),
                        ("10.0.0.2", None),
                        ("10.0.0.3", Some(false)),
                    ],
                ),
                slice("api", None, 9000, &[("10.0.1.1", Some(true))]),
            ],
            ..Default::default()
        }
    }

    fn run(objs: &Objects) -> (Config, Translation) {
        translate(&base(), &Kubernetes::default(), objs, &[]).unwrap()
    }

    fn servers(cfg: &Config, name: &str) -> Vec<String> {
        let b = cfg.backends.iter().find(|b| b.name == name).unwrap();
        b.servers.iter().map(|s| s.address().to_owned()).collect()
    }

    #[test]
    fn only_ingresses_of_a_claimed_class_are_served() {
        let mut o = objects();
        o.classes.push(class("nginx", "k8s.io/ingress-nginx", true));
        let rule = json!({ "rules": [{ "http": { "paths": [path("/", "Prefix", "web", json!({ "number": 80 }))] } }] });
        let mut by_annotation = (*ingress("b", "2026-01-02T00:00:00Z", rule.clone())).clone();
        by_annotation.metadata.annotations =
            Some([(CLASS_ANNOTATION.to_owned(), "floodgate".to_owned())].into());
        let mut with_class = rule.clone();
        with_class["ingressClassName"] = json!("floodgate");
        let mut theirs = rule.clone();
        theirs["ingressClassName"] = json!("nginx");
        o.ingresses = vec![
            ingress("a", "2026-01-01T00:00:00Z", with_class),
            Arc::new(by_annotation),
            ingress("c", "2026-01-03T00:00:00Z", theirs),
            ingress("d", "2026-01-04T00:00:00Z", rule.clone()),
        ];
        let (_, t) = run(&o);
        let names: Vec<_> = t.served.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b"],
            "nginx's, and classless while nginx is the default, are not ours"
        );
        o.classes = vec![class("floodgate", config::DEFAULT_CONTROLLER, true)];
        let (_, t) = run(&o);
        let names: Vec<_> = t.served.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b", "d"],
            "classless Ingresses are ours when our class is the default"
        );
    }

    #[test]
    fn routes_follow_the_ingress_precedence() {
        let mut o = objects();
        let p80 = || json!({ "number": 80 });
        o.ingresses = vec![ingress(
            "old",
            "2026-01-01T00:00:00Z",
            json!({
                "ingressClassName": "floodgate",
                "defaultBackend": { "service": { "name": "api", "port": { "number": 8080 } } },
                "rules": [
                    { "host": "*.example.com", "http": { "paths": [path("/", "Prefix", "web", p80())] } },
                    { "http": { "paths": [path("/static/", "Prefix", "web", p80())] } },
                    { "host": "shop.example.com", "http": { "paths": [
                        path("/a", "Prefix", "web", p80()),
                        path("/a/b", "ImplementationSpecific", "web", p80()),
                        path("/a", "Exact", "api", json!({ "number": 8080 })),
                    ] } },
                ]
            }),
        )];
        let (cfg, t) = run(&o);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let seen: Vec<_> = cfg
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    r.host.as_deref().unwrap_or("*"),
                    r.path.as_deref().unwrap_or(""),
                    r.path_prefix.as_deref().unwrap_or(""),
                    r.backend
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                "shop.example.com|/a||shop_api_8080",
                "shop.example.com||/a/b|shop_web_80",
                "shop.example.com||/a|shop_web_80",
                "*.example.com|||shop_web_80",
                "*||/static|shop_web_80",
                "*|||shop_api_8080",
            ]
        );
    }

    #[test]
    fn servers_are_the_ready_endpoints_on_the_named_port() {
        let mut o = objects();
        o.ingresses = vec![ingress(
            "i",
            "2026-01-01T00:00:00Z",
            json!({
                "ingressClassName": "floodgate",
                "rules": [{ "http": { "paths": [
                    path("/w", "Prefix", "web", json!({ "name": "http" })),
                    path("/a", "Prefix", "api", json!({ "number": 8080 })),
                    path("/n", "Prefix", "nowhere", json!({ "number": 80 })),
                    path("/p", "Prefix", "web", json!({ "number": 81 })),
                ] } }]
            }),
        )];
        let (cfg, t) = run(&o);
        assert_eq!(
            servers(&cfg, "shop_web_http"),
            ["10.0.0.1:8000", "10.0.0.2:8000"],
            "ready unset is ready; ready false is not"
        );
        assert_eq!(
            servers(&cfg, "shop_api_8080"),
            ["10.0.1.1:9000"],
            "an unnamed port matches the unnamed endpoint port"
        );
        assert!(servers(&cfg, "shop_nowhere_80").is_empty());
        assert!(servers(&cfg, "shop_web_81").is_empty());
        let reasons: Vec<_> = t
            .problems
            .iter()
            .map(|p| (p.rejected, p.reason.as_str()))
            .collect();
        assert!(
            reasons
                .iter()
                .any(|(r, s)| !r && s.contains("`nowhere` not found")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|(r, s)| !r && s.contains("no port 81")),
            "{reasons:?}"
        );
        // An ExternalName Service is its DNS name.
        o.services.push(obj(json!({ "metadata": { "name": "ext", "namespace": "shop" },
            "spec": { "type": "ExternalName", "externalName": "db.example.net", "ports": [{ "port": 5432 }] } })));
        o.ingresses = vec![ingress(
            "e",
            "2026-01-01T00:00:00Z",
            json!({ "ingressClassName": "floodgate",
            "rules": [{ "http": { "paths": [path("/", "Prefix", "ext", json!({ "number": 5432 }))] } }] }),
        )];
        let (cfg, _) = run(&o);
        assert_eq!(servers(&cfg, "shop_ext_5432"), ["db.example.net:5432"]);
    }

    #[test]
    fn a_bad_ingress_is_rejected_alone() {
        let mut o = objects();
        let good = json!({ "ingressClassName": "floodgate",
            "rules": [{ "host": "ok.example.com", "http": { "paths": [path("/", "Prefix", "web", json!({ "number": 80 }))] } }] });
        o.ingresses = vec![
            ingress("good", "2026-01-01T00:00:00Z", good),
            ingress(
                "badtype",
                "2026-01-02T00:00:00Z",
                json!({ "ingressClassName": "floodgate",
                "rules": [{ "http": { "paths": [path("/", "Regex", "web", json!({ "number": 80 }))] } }] }),
            ),
            ingress(
                "badhost",
                "2026-01-03T00:00:00Z",
                json!({ "ingressClassName": "floodgate",
                "rules": [{ "host": "a..b", "http": { "paths": [path("/", "Prefix", "web", json!({ "number": 80 }))] } }] }),
            ),
            ingress(
                "resource",
                "2026-01-04T00:00:00Z",
                json!({ "ingressClassName": "floodgate",
                "defaultBackend": { "resource": { "kind": "Bucket", "name": "b" } } }),
            ),
        ];
        let (cfg, t) = run(&o);
        assert_eq!(t.served, [("shop".to_owned(), "good".to_owned())]);
        let rejected: Vec<_> = t
            .problems
            .iter()
            .filter(|p| p.rejected)
            .map(|p| (p.name.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(
            rejected[0].1.contains("pathType")
                && rejected[1].1.contains("a..b")
                && rejected[2].1.contains("resource"),
            "{rejected:?}"
        );
        assert_eq!(cfg.routes.len(), 1);
    }

    #[test]
    fn unsupported_annotations_are_reported_not_ignored() {
        let mut o = objects();
        let mut i = (*ingress("i", "2026-01-01T00:00:00Z", json!({ "ingressClassName": "floodgate",
            "rules": [{ "http": { "paths": [path("/", "Prefix", "web", json!({ "number": 80 }))] } }] }))).clone();
        i.metadata.annotations = Some(
            [
                (
                    "nginx.ingress.kubernetes.io/configuration-snippet".to_owned(),
                    "x".to_owned(),
                ),
                ("example.com/unrelated".to_owned(), "y".to_owned()),
            ]
            .into(),
        );
        o.ingresses = vec![Arc::new(i)];
        let (_, t) = run(&o);
        let notes: Vec<_> = t.problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("configuration-snippet"));
        assert_eq!(t.served.len(), 1, "served without it");
    }

    #[test]
    fn tls_secrets_become_certificates_and_bad_ones_are_reported() {
        let dir = std::env::temp_dir().join(format!("fg-translate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=shop.example.com",
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
        let b64 = |p: &std::path::Path| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
        };
        let secret = |name: &str, ty: &str, key_b64: String| -> Arc<Secret> {
            obj(
                json!({ "metadata": { "name": name, "namespace": "shop" }, "type": ty,
                        "data": { "tls.crt": b64(&crt), "tls.key": key_b64 } }),
            )
        };
        let mut o = objects();
        o.secrets = vec![
            secret("good", "kubernetes.io/tls", b64(&key)),
            secret("opaque", "Opaque", b64(&key)),
            secret("garbage", "kubernetes.io/tls", "bm90IGEga2V5".into()),
        ];
        o.ingresses = vec![ingress(
            "i",
            "2026-01-01T00:00:00Z",
            json!({ "ingressClassName": "floodgate",
            "tls": [{ "hosts": ["shop.example.com"], "secretName": "good" },
                    { "hosts": ["a.example.com"], "secretName": "opaque" },
                    { "hosts": ["b.example.com"], "secretName": "garbage" },
                    { "hosts": ["c.example.com"], "secretName": "absent" }],
            "rules": [{ "http": { "paths": [path("/", "Prefix", "web", json!({ "number": 80 }))] } }] }),
        )];
        let (_, t) = run(&o);
        assert_eq!(t.certs.len(), 1);
        assert_eq!(t.certs[0].names(), ["shop.example.com"]);
        let notes: Vec<_> = t.problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].contains("Opaque")
                && notes[1].contains("tls.key")
                && notes[2].contains("not found"),
            "{notes:?}"
        );
        assert_eq!(t.served.len(), 1, "served with the other certificates");
        // `good` broken later: the certificate served so far stays; deleted, it goes.
        let served = t.certs.clone();
        o.secrets[0] = secret("good", "kubernetes.io/tls", "bm90IGEga2V5".into());
        let (_, t) = translate(&base(), &Kubernetes::default(), &o, &served).unwrap();
        assert_eq!(t.certs.len(), 1, "{:?}", t.problems);
        assert!(t.problems.iter().any(|p| p.reason.contains("last good")));
        o.secrets.remove(0);
        let (_, t) = translate(&base(), &Kubernetes::default(), &o, &served).unwrap();
        assert!(t.certs.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_settings_configmap_applies_or_is_ignored_whole() {
        let mut o = objects();
        o.settings = Some(obj(json!({ "metadata": { "name": "s", "namespace": "fg" },
            "data": { "timeout-client": "30s", "not-a-key": "1" } })));
        let (cfg, t) = run(&o);
        assert_eq!(
            cfg.global.timeouts.client.0,
            std::time::Duration::from_secs(30)
        );
        assert!(
            t.problems
                .iter()
                .any(|p| !p.rejected && p.reason.contains("not-a-key")),
            "{:?}",
            t.problems
        );
        o.settings = Some(obj(json!({ "metadata": { "name": "s", "namespace": "fg" },
            "data": { "timeout-client": "soon" } })));
        let (cfg, t) = run(&o);
        assert_eq!(
            cfg.global.timeouts.client,
            base().global.timeouts.client,
            "the file's settings stay"
        );
        assert!(
            t.problems
                .iter()
                .any(|p| p.rejected && p.kind == "ConfigMap"),
            "{:?}",
            t.problems
        );
    }

    fn annotated(
        name: &str,
        created: &str,
        host: &str,
        svc: &str,
        pairs: &[(&str, &str)],
        tls: bool,
    ) -> Arc<Ingress> {
        let mut spec = json!({ "ingressClassName": "floodgate",
            "rules": [{ "host": host, "http": { "paths": [path("/", "Prefix", svc, json!({ "number": 80 }))] } }] });
        if tls {
            spec["tls"] = json!([{ "hosts": [host], "secretName": "s" }]);
        }
        let mut i = (*ingress(name, created, spec)).clone();
        i.metadata.annotations = Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        Arc::new(i)
    }

    #[test]
    fn annotations_become_route_and_backend_settings() {
        let base = Config::from_text(
            "xdp: { enabled: false }\nlisteners: [{ name: http, bind: '127.0.0.1:18080' }, { name: https, bind: '127.0.0.1:18443', tls: { certificates: [] } }]\nbackends: []\nkubernetes: {}\n",
            std::path::Path::new("t.yaml"),
            Default::default(),
        )
        .unwrap();
        let mut o = objects();
        o.services.push(service("api", json!([{ "port": 80 }])));
        o.ingresses = vec![
            annotated(
                "tls",
                "2026-01-01T00:00:00Z",
                "a.example.com",
                "web",
                &[
                    (
                        "nginx.ingress.kubernetes.io/whitelist-source-range",
                        "10.0.0.0/8",
                    ),
                    ("nginx.ingress.kubernetes.io/proxy-read-timeout", "120"),
                ],
                true,
            ),
            annotated(
                "plain",
                "2026-01-02T00:00:00Z",
                "b.example.com",
                "web",
                &[("nginx.ingress.kubernetes.io/rewrite-target", "/app")],
                false,
            ),
            annotated(
                "canary",
                "2026-01-03T00:00:00Z",
                "b.example.com",
                "api",
                &[
                    ("nginx.ingress.kubernetes.io/canary", "true"),
                    ("nginx.ingress.kubernetes.io/canary-weight", "10"),
                    ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
                ],
                false,
            ),
            annotated(
                "bad",
                "2026-01-04T00:00:00Z",
                "c.example.com",
                "web",
                &[(
                    "nginx.ingress.kubernetes.io/whitelist-source-range",
                    "everyone",
                )],
                false,
            ),
        ];
        let (cfg, t) = translate(&base, &Kubernetes::default(), &o, &[]).unwrap();
        let on = |host: &str| {
            cfg.routes
                .iter()
                .filter(|r| r.host.as_deref() == Some(host))
                .collect::<Vec<_>>()
        };
        // TLS: plain listeners redirect to HTTPS, the TLS listener serves with the allow list
        // and its own backend (the timeout differs from the Service's defaults).
        let a = on("a.example.com");
        assert_eq!(a.len(), 2, "{a:?}");
        let redirect = a.iter().find(|r| r.redirect.is_some()).unwrap();
        assert_eq!(redirect.listeners, ["http"]);
        assert_eq!(
            redirect.redirect.as_ref().unwrap().scheme.as_deref(),
            Some("https")
        );
        let serve = a.iter().find(|r| r.redirect.is_none()).unwrap();
        assert_eq!(serve.listeners, ["https"]);
        assert_eq!(serve.allow.len(), 1);
        assert!(
            serve.backend.starts_with("shop_web_80_") && serve.backend.len() <= 64,
            "{}",
            serve.backend
        );
        let own = cfg
            .backends
            .iter()
            .find(|b| b.name == serve.backend)
            .unwrap();
        assert_eq!(
            own.timeouts.server.map(|d| d.0),
            Some(std::time::Duration::from_secs(120))
        );
        // rewrite-target on a `/` prefix, and the canary joined to it: by header, and by weight.
        let b = on("b.example.com");
        let by_header = b.iter().find(|r| !r.headers.is_empty()).unwrap();
        assert_eq!(
            by_header.headers.get("X-Canary").map(String::as_str),
            Some("always")
        );
        assert_eq!(by_header.backend, "shop_api_80");
        let main = b.iter().find(|r| r.headers.is_empty()).unwrap();
        assert_eq!(main.rewrite_prefix.as_deref(), Some("/app"));
        let weights: Vec<_> = main
            .split
            .iter()
            .map(|s| (s.backend.as_str(), s.weight))
            .collect();
        assert_eq!(weights, [("shop_web_80", 90), ("shop_api_80", 10)]);
        assert!(
            cfg.routes.iter().position(|r| std::ptr::eq(r, *by_header))
                < cfg.routes.iter().position(|r| std::ptr::eq(r, *main)),
            "the header first"
        );
        // A value that cannot be read rejects the Ingress: served without its allow list, it
        // would be open to everyone.
        let bad = t.problems.iter().find(|p| p.name == "bad").unwrap();
        assert!(
            bad.rejected && bad.reason.contains("whitelist-source-range"),
            "{bad:?}"
        );
        assert!(on("c.example.com").is_empty());
    }

    #[test]
    fn long_names_stay_unique_and_valid() {
        let a = backend_name(&"n".repeat(63), &"s".repeat(63), "http");
        let b = backend_name(&"n".repeat(63), &"s".repeat(62), "http");
        assert!(a.len() <= 64 && b.len() <= 64 && a != b, "{a} {b}");
        assert_eq!(backend_name("ns", "svc", "80"), "ns_svc_80");
    }
}
