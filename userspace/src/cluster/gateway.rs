//! The Gateway API (gateway.networking.k8s.io/v1, standard channel) as floodgate's config:
//! GatewayClasses of floodgate's controller, their Gateways' listeners mapped onto floodgate's
//! own listeners by port and protocol, the HTTPRoutes attached to them as routes restricted to
//! those listeners, ReferenceGrants for references across namespaces, and the status every
//! object gets (conditions with the spec's reasons).
//!
//! What maps where:
//! - A Gateway listener (`HTTP` or `HTTPS`, a port) is programmed on the floodgate listeners
//!   bound to that port, plain for `HTTP`, with `tls` for `HTTPS` (floodgate's listeners and
//!   sockets come from its config file; a Gateway cannot open a port). Its `certificateRefs`
//!   are served by SNI as an Ingress's Secrets are. Other protocols are not supported.
//! - An HTTPRoute rule's matches are routes (a match is one route; matches are ORed):
//!   `Exact`, `PathPrefix` and `RegularExpression` paths, `Exact` headers and query
//!   parameters, and a method. Its filters: RequestHeaderModifier and ResponseHeaderModifier
//!   (route header rules), RequestRedirect (a redirect from the request's URL with parts
//!   changed), URLRewrite of the path (a prefix, or the whole path through a regular
//!   expression equivalent to the match), RequestMirror of every request. Weighted
//!   `backendRefs` are a `split`.
//! - Route precedence, across Ingresses and HTTPRoutes: exact host, wildcard host, any host;
//!   then `Exact` path, the longest prefix, regular expressions; then a method match, more
//!   header matches, more query matches; then the older object and the rule's place.
//! - What floodgate cannot do (a header or query regular expression, a host rewrite, a
//!   fractional mirror, CORS and extension filters, filters on one backendRef) leaves the rule
//!   out and says so in the route's status (Accepted false, UnsupportedValue) and an Event.

use std::sync::Arc;

use gateway_api::{
    gateways::{Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom},
    grpcroutes::GrpcRoute,
    httproutes::{
        HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesFilters,
        HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
        HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches,
        HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
        HttpRouteRulesMatchesQueryParamsType,
    },
    referencegrants::ReferenceGrant,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::{
    objects::{GatewayObjects, Problem},
    resolve::{self, Index, Order, PortRef, SecretError, names},
};
use crate::config::{Backend, Config, HeaderRules, Kubernetes, Proto, Redirect, Route, SplitTo};
use crate::tls::CertPair;

const GROUP: &str = "gateway.networking.k8s.io";

/// A status to write (by the Lease holder): the object, and its whole `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub status: Value,
    /// A Gateway's `status.addresses` are filled in by the writer (the node addresses).
    pub addresses: bool,
}

/// What the Gateway API objects become.
#[derive(Debug, Default)]
pub(super) struct Out {
    pub routes: Vec<(Order, Route)>,
    pub backends: Vec<Backend>,
    pub certs: Vec<CertPair>,
    pub statuses: Vec<StatusPatch>,
    pub problems: Vec<Problem>,
}

/// One Gateway listener of floodgate's, and where it is programmed.
struct Attach<'a> {
    gateway: &'a Gateway,
    listener: &'a GatewayListeners,
    /// floodgate's listeners (by name) on its port and protocol; empty: not programmed.
    on: Vec<String>,
    routes: usize,
}

pub(super) fn translate(
    base: &Config,
    k: &Kubernetes,
    objs: &GatewayObjects,
    index: &Index<'_>,
    age_base: usize,
) -> Out {
    let mut out = Out::default();
    let classes: Vec<&str> = objs
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == k.gateway_controller)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    for c in objs
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == k.gateway_controller)
    {
        out.statuses.push(StatusPatch {
            kind: "GatewayClass",
            namespace: None,
            name: c.metadata.name.clone().unwrap_or_default(),
            status: json!({ "conditions": [cond(&c.metadata, "Accepted", true, "Accepted", "floodgate serves this class")] }),
            addresses: false,
        });
    }
    let gateways: Vec<&Gateway> = objs
        .gateways
        .iter()
        .map(Arc::as_ref)
        .filter(|g| classes.contains(&g.spec.gateway_class_name.as_str()))
        .collect();
    let mut attach: Vec<Attach<'_>> = Vec::new();
    let mut listener_conditions: Vec<Vec<Value>> = Vec::new();
    for g in &gateways {
        let (gns, _) = names(&g.metadata);
        for l in &g.spec.listeners {
            let mut conds = Vec::new();
            let https = match l.protocol.as_str() {
                "HTTP" => false,
                "HTTPS" => true,
                other => {
                    conds.push((
                        "Accepted",
                        false,
                        "UnsupportedProtocol",
                        format!("protocol {other} is not supported (HTTP and HTTPS are)"),
                    ));
                    attach.push(Attach {
                        gateway: g,
                        listener: l,
                        on: Vec::new(),
                        routes: 0,
                    });
                    listener_conditions.push(listener_status(&g.metadata, conds));
                    continue;
                }
            };
            let on: Vec<String> = base
                .listeners
                .iter()
                .filter(|fl| i32::from(fl.bind.port()) == l.port && fl.tls.is_some() == https)
                .map(|fl| fl.name.clone())
                .collect();
            if on.is_empty() {
                conds.push(("Accepted", false, "PortUnavailable", format!(
                    "floodgate has no {} listener on port {} (its listeners come from its config file)",
                    if https { "TLS" } else { "plain" }, l.port)));
            } else {
                conds.push(("Accepted", true, "Accepted", "accepted".into()));
            }
            let mut refs_ok = true;
            if https {
                for r in l
                    .tls
                    .iter()
                    .flat_map(|t| t.certificate_refs.iter().flatten())
                {
                    let kind_ok = r.group.as_deref().unwrap_or("").is_empty()
                        && r.kind.as_deref().unwrap_or("Secret") == "Secret";
                    let ns = r.namespace.clone().unwrap_or_else(|| gns.clone());
                    let reason = if !kind_ok {
                        Some((
                            "InvalidCertificateRef",
                            format!("{} is not a Secret", r.name),
                        ))
                    } else if ns != gns
                        && !granted(
                            &objs.grants,
                            (GROUP, "Gateway", &gns),
                            ("", "Secret", &ns, &r.name),
                        )
                    {
                        Some((
                            "RefNotPermitted",
                            format!("no ReferenceGrant lets this Gateway use {ns}/{}", r.name),
                        ))
                    } else {
                        match resolve::tls_secret(index, &ns, &r.name) {
                            Ok(c) => {
                                out.certs.push(c);
                                None
                            }
                            Err(SecretError::Missing(e) | SecretError::Unusable(e)) => {
                                Some(("InvalidCertificateRef", format!("{ns}/{}: {e}", r.name)))
                            }
                        }
                    };
                    if let Some((why, msg)) = reason {
                        refs_ok = false;
                        conds.push(("ResolvedRefs", false, why, msg));
                    }
                }
            }
            if refs_ok {
                conds.push(("ResolvedRefs", true, "ResolvedRefs", "resolved".into()));
            }
            let programmed = !on.is_empty() && refs_ok;
            conds.push((
                "Programmed",
                programmed,
                if programmed { "Programmed" } else { "Invalid" },
                if programmed {
                    format!("on floodgate listeners {}", on.join(", "))
                } else {
                    "not programmed".into()
                },
            ));
            listener_conditions.push(listener_status(&g.metadata, conds));
            attach.push(Attach {
                gateway: g,
                listener: l,
                on,
                routes: 0,
            });
        }
    }

    // HTTPRoutes and GRPCRoutes (as the HTTPRoutes they are equivalent to), oldest first (the
    // older wins a conflict).
    let grpc: Vec<(HttpRoute, Result<(), String>)> =
        objs.grpc_routes.iter().map(|g| grpc_as_http(g)).collect();
    let mut routes: Vec<(&'static str, &HttpRoute, Option<&str>)> = objs
        .routes
        .iter()
        .map(|r| ("HTTPRoute", r.as_ref(), None))
        .chain(
            grpc.iter()
                .map(|(r, e)| ("GRPCRoute", r, e.as_ref().err().map(String::as_str))),
        )
        .collect();
    routes.sort_by_key(|(_, r, _)| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            names(&r.metadata),
        )
    });
    for (age, (kind, route, conversion)) in routes.into_iter().enumerate() {
        let (rns, rname) = names(&route.metadata);
        let is_grpc = kind == "GRPCRoute";
        let mut parents = Vec::new();
        let mut any_ours = false;
        for pref in route.spec.parent_refs.iter().flatten() {
            if pref.group.as_deref().unwrap_or(GROUP) != GROUP
                || pref.kind.as_deref().unwrap_or("Gateway") != "Gateway"
            {
                continue;
            }
            let gns = pref.namespace.clone().unwrap_or_else(|| rns.clone());
            let Some(gw) = gateways
                .iter()
                .find(|g| names(&g.metadata) == (gns.clone(), pref.name.clone()))
            else {
                continue;
            };
            any_ours = true;
            let (on, hosts) = match attach_route(route, pref, gw, &rns, &mut attach) {
                Ok(x) => x,
                Err((why, msg)) => {
                    parents.push(json!({
                        "parentRef": parent_ref_json(pref),
                        "controllerName": k.gateway_controller,
                        "conditions": [cond(&route.metadata, "Accepted", false, why, &msg)],
                    }));
                    continue;
                }
            };
            let mut conds = Vec::new();
            let mut refs: Option<(&str, String)> = None;
            let mut unsupported = Vec::new();
            let mut fragment = Out::default();
            for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
                let at = Attached {
                    rns: &rns,
                    on: &on,
                    hosts: &hosts,
                    grpc: is_grpc,
                };
                match rule_routes(rule, &at, index, &objs.grants, &mut fragment) {
                    Ok((mut made, bad_ref)) => {
                        for (mi, (order, _)) in made.iter_mut().enumerate() {
                            order.age = age_base + age;
                            order.place = ri * 1024 + mi;
                        }
                        fragment.routes.extend(made);
                        if let Some((why, msg)) = bad_ref {
                            refs.get_or_insert((why, format!("rules[{ri}]: {msg}")));
                        }
                    }
                    Err(msg) => unsupported.push(format!("rules[{ri}]: {msg}")),
                }
            }
            if let Some(e) = conversion {
                unsupported.push(e.to_owned());
                fragment.routes.clear();
            }
            // The route's rules with the file's config alone: one bad route is refused alone.
            let mut alone = base.clone();
            alone
                .routes
                .extend(fragment.routes.iter().map(|(_, r)| r.clone()));
            alone.backends.extend(fragment.backends.iter().cloned());
            if let Err(e) = alone.validate() {
                unsupported.push(e.to_string());
                fragment.routes.clear();
            }
            let mut problem = |reason: String| {
                out.problems.push(Problem {
                    kind,
                    namespace: rns.clone(),
                    name: rname.clone(),
                    reason,
                    rejected: false,
                });
            };
            if unsupported.is_empty() {
                conds.push(cond(
                    &route.metadata,
                    "Accepted",
                    true,
                    "Accepted",
                    "accepted",
                ));
            } else {
                let msg = format!("not served: {}", unsupported.join("; "));
                problem(msg.clone());
                conds.push(cond(
                    &route.metadata,
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    &msg,
                ));
            }
            match refs {
                None => conds.push(cond(
                    &route.metadata,
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "resolved",
                )),
                Some((why, msg)) => {
                    problem(msg.clone());
                    conds.push(cond(&route.metadata, "ResolvedRefs", false, why, &msg));
                }
            }
            out.routes.extend(fragment.routes);
            for b in fragment.backends {
                if !out.backends.iter().any(|x| x.name == b.name) {
                    out.backends.push(b);
                }
            }
            parents.push(json!({
                "parentRef": parent_ref_json(pref),
                "controllerName": k.gateway_controller,
                "conditions": conds,
            }));
        }
        if any_ours {
            out.statuses.push(StatusPatch {
                kind,
                namespace: Some(rns),
                name: rname,
                status: json!({ "parents": parents }),
                addresses: false,
            });
        }
    }

    // Gateways' status, now that routes are counted per listener.
    let mut i = 0;
    for g in &gateways {
        let (gns, gname) = names(&g.metadata);
        let mut listeners = Vec::new();
        let mut all_programmed = true;
        for l in &g.spec.listeners {
            let a = &attach[i];
            let conds = listener_conditions[i].clone();
            all_programmed &= conds
                .iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True");
            listeners.push(json!({
                "name": l.name,
                "supportedKinds": [{ "group": GROUP, "kind": "HTTPRoute" }],
                "attachedRoutes": a.routes,
                "conditions": conds,
            }));
            i += 1;
        }
        out.statuses.push(StatusPatch {
            kind: "Gateway",
            namespace: Some(gns),
            name: gname,
            status: json!({
                "conditions": [
                    cond(&g.metadata, "Accepted", true, "Accepted", "accepted"),
                    cond(&g.metadata, "Programmed", all_programmed,
                        if all_programmed { "Programmed" } else { "Invalid" },
                        if all_programmed { "every listener is programmed" } else { "some listeners are not programmed (see listeners)" }),
                ],
                "listeners": listeners,
            }),
            addresses: true,
        });
    }
    out
}

/// Which listeners of `gw` the route attaches to through `pref`: Ok, or the reason it does
/// not (Accepted false); the floodgate listeners those are programmed on; the hostnames it
/// serves there (`None`: every host).
#[allow(clippy::type_complexity)]
fn attach_route(
    route: &HttpRoute,
    pref: &HttpRouteParentRefs,
    gw: &Gateway,
    rns: &str,
    attach: &mut [Attach<'_>],
) -> Result<(Vec<String>, Vec<Option<String>>), (&'static str, String)> {
    let (gns, _) = names(&gw.metadata);
    let route_hosts: Vec<&str> = route
        .spec
        .hostnames
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let mut on = Vec::new();
    let mut hosts: Vec<Option<String>> = Vec::new();
    let mut reason: Option<(&'static str, String)> = Some((
        "NoMatchingParent",
        "no listener of the Gateway matches the parentRef".into(),
    ));
    for a in attach.iter_mut().filter(|a| std::ptr::eq(a.gateway, gw)) {
        let l = a.listener;
        if pref.section_name.as_deref().is_some_and(|s| s != l.name)
            || pref.port.is_some_and(|p| p != l.port)
        {
            continue;
        }
        let from = l
            .allowed_routes
            .as_ref()
            .and_then(|r| r.namespaces.as_ref())
            .and_then(|n| n.from.clone())
            .unwrap_or(GatewayListenersAllowedRoutesNamespacesFrom::Same);
        let allowed = match from {
            GatewayListenersAllowedRoutesNamespacesFrom::All => true,
            GatewayListenersAllowedRoutesNamespacesFrom::Same => rns == gns,
            // Namespace labels are not watched: only the Gateway's own namespace.
            GatewayListenersAllowedRoutesNamespacesFrom::Selector => rns == gns,
        };
        if !allowed {
            reason.get_or_insert(("NotAllowedByListeners", String::new()));
            if reason.as_ref().is_some_and(|r| r.0 == "NoMatchingParent") {
                reason = Some((
                    "NotAllowedByListeners",
                    format!("listener {} does not allow routes from {rns}", l.name),
                ));
            }
            continue;
        }
        let effective = intersect(l.hostname.as_deref(), &route_hosts);
        if effective.is_empty() {
            if reason
                .as_ref()
                .is_some_and(|r| r.0 != "NotAllowedByListeners")
            {
                reason = Some((
                    "NoMatchingListenerHostname",
                    format!("no hostname of the route matches listener {}", l.name),
                ));
            }
            continue;
        }
        if a.on.is_empty() {
            continue;
        }
        a.routes += 1;
        reason = None;
        for n in &a.on {
            if !on.contains(n) {
                on.push(n.clone());
            }
        }
        for h in effective {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    match reason {
        Some(r) => Err(r),
        None => Ok((on, hosts)),
    }
}

/// The hostnames a route serves on a listener: the Gateway API's intersection of the
/// listener's hostname and the route's; `[None]` is every host.
fn intersect(listener: Option<&str>, route: &[&str]) -> Vec<Option<String>> {
    let covers = |wild: &str, h: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| h.len() > suffix.len() && h.ends_with(suffix))
    };
    match (listener, route.is_empty()) {
        (None, true) => vec![None],
        (None, false) => route.iter().map(|h| Some((*h).to_owned())).collect(),
        (Some(l), true) => vec![Some(l.to_owned())],
        (Some(l), false) => route
            .iter()
            .filter_map(|h| {
                if *h == l || covers(l, h) {
                    Some((*h).to_owned())
                } else if covers(h, l) {
                    Some(l.to_owned())
                } else {
                    None
                }
            })
            .map(Some)
            .collect(),
    }
}

/// A rule's routes, and a reference of it that could not be resolved (the spec's reason).
type Made = (Vec<(Order, Route)>, Option<(&'static str, String)>);

enum RuleError {
    /// floodgate cannot do what the rule asks: it is left out.
    Unsupported(String),
    /// A reference that cannot be resolved (its requests get 503), with the spec's reason.
    Refs(&'static str, String),
}

/// Where a route's rules go: its namespace, the floodgate listeners and hostnames it is
/// attached to, and whether it is a GRPCRoute (HTTP/2 backends).
#[derive(Clone, Copy)]
struct Attached<'a> {
    rns: &'a str,
    on: &'a [String],
    hosts: &'a [Option<String>],
    grpc: bool,
}

/// One rule as routes (one per match and hostname).
fn rule_routes(
    rule: &HttpRouteRules,
    at: &Attached<'_>,
    index: &Index<'_>,
    grants: &[Arc<ReferenceGrant>],
    out: &mut Out,
) -> Result<Made, String> {
    let Attached {
        rns,
        on,
        hosts,
        grpc,
    } = *at;
    let mut notes = Vec::new();
    let mut refs_err: Option<(&'static str, String)> = None;
    // The backends, weighted.
    let mut split = Vec::new();
    for b in rule.backend_refs.iter().flatten() {
        if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err("filters on a backendRef".into());
        }
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        let backend = match backend_ref(
            grpc,
            b.group.as_deref(),
            b.kind.as_deref(),
            &b.name,
            b.namespace.as_deref(),
            b.port,
            rns,
            index,
            grants,
            &mut notes,
        ) {
            Ok(backend) => backend,
            Err((why, msg)) => {
                refs_err.get_or_insert((why, msg));
                // Its share of the requests gets 503 (the spec asks for 500).
                Backend::new(
                    format!("{}_unresolved", resolve::backend_name(rns, &b.name, "ref")),
                    Vec::new(),
                )
            }
        };
        if weight > 0 {
            split.push(SplitTo {
                backend: backend.name.clone(),
                weight,
            });
        }
        if !out.backends.iter().any(|x| x.name == backend.name) {
            out.backends.push(backend);
        }
    }
    let mut template = Route::to(String::new());
    template.listeners = on.to_vec();
    for f in rule.filters.iter().flatten() {
        match filter(f, &mut template, rns, index, grants, out, &mut notes) {
            Ok(()) => {}
            Err(RuleError::Unsupported(msg)) => return Err(msg),
            Err(RuleError::Refs(why, msg)) => {
                refs_err.get_or_insert((why, msg));
            }
        }
    }
    if template.redirect.is_none() {
        match split.len() {
            0 => {
                // No backend: the spec's 500; floodgate answers 503 from an empty backend.
                let empty = Backend::new(resolve::backend_name(rns, "no-backend", "0"), Vec::new());
                template.backend = empty.name.clone();
                if !out.backends.iter().any(|x| x.name == empty.name) {
                    out.backends.push(empty);
                }
            }
            1 => template.backend = split.remove(0).backend,
            _ => template.split = split,
        }
    }
    let default_match = [HttpRouteRulesMatches::default()];
    let matches: &[HttpRouteRulesMatches] = match rule.matches.as_deref() {
        Some(m) if !m.is_empty() => m,
        _ => &default_match,
    };
    let mut made = Vec::new();
    for m in matches {
        let mut r = template.clone();
        let (path_kind, path_len) = path_match(m, &mut r);
        for h in m.headers.iter().flatten() {
            if h.r#type
                .as_ref()
                .is_some_and(|t| *t == HttpRouteRulesMatchesHeadersType::RegularExpression)
            {
                return Err("a header regular expression".into());
            }
            // The first of a repeated name counts, as the spec asks.
            r.headers
                .entry(h.name.clone())
                .or_insert_with(|| h.value.clone());
        }
        for q in m.query_params.iter().flatten() {
            if q.r#type
                .as_ref()
                .is_some_and(|t| *t == HttpRouteRulesMatchesQueryParamsType::RegularExpression)
            {
                return Err("a query parameter regular expression".into());
            }
            r.query
                .entry(q.name.clone())
                .or_insert_with(|| q.value.clone());
        }
        if let Some(method) = &m.method {
            let v = serde_json::to_value(method).ok();
            r.methods = v
                .and_then(|v| v.as_str().map(str::to_owned))
                .into_iter()
                .collect();
        }
        rewrite_full_path(&mut r, rule)?;
        for h in hosts {
            let mut rr = r.clone();
            rr.host.clone_from(h);
            let (host_kind, host_len) = Order::host(h.as_deref());
            made.push((
                Order {
                    host_kind,
                    host_len,
                    path_kind,
                    path_len: std::cmp::Reverse(path_len),
                    method: u8::from(rr.methods.is_empty()),
                    headers: std::cmp::Reverse(rr.headers.len()),
                    query: std::cmp::Reverse(rr.query.len()),
                    age: 0,
                    place: 0,
                },
                rr,
            ));
        }
    }
    // With a reference unresolved the rule is still served (the other backends get their
    // share); the status says why not all of it.
    Ok((made, refs_err))
}

fn path_match(m: &HttpRouteRulesMatches, r: &mut Route) -> (u8, usize) {
    let (kind, value) = match &m.path {
        Some(p) => (
            p.r#type
                .clone()
                .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix),
            p.value.clone().unwrap_or_else(|| "/".into()),
        ),
        None => (HttpRouteRulesMatchesPathType::PathPrefix, "/".into()),
    };
    match kind {
        HttpRouteRulesMatchesPathType::Exact => {
            r.path = Some(value.clone());
            (0, value.len())
        }
        HttpRouteRulesMatchesPathType::PathPrefix => {
            let p = match value.trim_end_matches('/') {
                "" => "/",
                p => p,
            };
            if p != "/" {
                r.path_prefix = Some(p.to_owned());
            }
            (1, if p == "/" { 0 } else { p.len() })
        }
        HttpRouteRulesMatchesPathType::RegularExpression => {
            r.path_regex = Some(value.clone());
            (2, value.len())
        }
    }
}

/// URLRewrite with ReplaceFullPath: the match as an equivalent regular expression whose
/// target is the new path (floodgate rewrites a whole path only through `rewrite-target`).
fn rewrite_full_path(r: &mut Route, rule: &HttpRouteRules) -> Result<(), String> {
    let full = rule
        .filters
        .iter()
        .flatten()
        .filter_map(|f| f.url_rewrite.as_ref()?.path.as_ref())
        .find(|p| p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath)
        .and_then(|p| p.replace_full_path.clone());
    let Some(target) = full else { return Ok(()) };
    let regex = match (&r.path, &r.path_prefix, &r.path_regex) {
        (Some(p), _, _) => format!("^{}$", regex_escape(p)),
        (None, Some(p), _) => format!("^{}(/.*)?$", regex_escape(p)),
        (None, None, Some(_)) => {
            return Err("ReplaceFullPath with a regular expression match".into());
        }
        (None, None, None) => "^/.*$".to_owned(),
    };
    r.path = None;
    r.path_prefix = None;
    r.path_regex = Some(regex);
    // `$` would start a capture reference in the target.
    r.rewrite_target = Some(target.replace('$', "$$"));
    Ok(())
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// A header modifier as header rules: the generated types of the request and response
/// modifiers differ but have one shape (`set`, `add` of name/value pairs, `remove`).
macro_rules! header_rules {
    ($m:expr) => {
        HeaderRules {
            set: $m
                .set
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            add: $m
                .add
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            remove: $m.remove.clone().unwrap_or_default(),
        }
    };
}

fn filter(
    f: &HttpRouteRulesFilters,
    r: &mut Route,
    rns: &str,
    index: &Index<'_>,
    grants: &[Arc<ReferenceGrant>],
    out: &mut Out,
    notes: &mut Vec<String>,
) -> Result<(), RuleError> {
    match f.r#type {
        HttpRouteRulesFiltersType::RequestHeaderModifier => {
            if let Some(m) = &f.request_header_modifier {
                r.request_headers = header_rules!(m);
            }
        }
        HttpRouteRulesFiltersType::ResponseHeaderModifier => {
            if let Some(m) = &f.response_header_modifier {
                r.response_headers = header_rules!(m);
            }
        }
        HttpRouteRulesFiltersType::RequestRedirect => {
            let Some(d) = &f.request_redirect else {
                return Ok(());
            };
            let mut redirect = Redirect {
                code: d
                    .status_code
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(302),
                scheme: d.scheme.as_ref().map(|s| match s {
                    HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_owned(),
                    HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_owned(),
                }),
                hostname: d.hostname.clone(),
                port: d.port.and_then(|p| u16::try_from(p).ok()),
                ..Redirect::default()
            };
            if let Some(p) = &d.path {
                match p.r#type {
                    HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                        redirect.replace_path.clone_from(&p.replace_full_path)
                    }
                    HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                        redirect.replace_prefix.clone_from(&p.replace_prefix_match)
                    }
                }
            }
            if redirect.scheme.is_none()
                && redirect.hostname.is_none()
                && redirect.port.is_none()
                && redirect.replace_path.is_none()
                && redirect.replace_prefix.is_none()
            {
                return Err(RuleError::Unsupported(
                    "a redirect that changes nothing of the URL".into(),
                ));
            }
            r.redirect = Some(redirect);
        }
        HttpRouteRulesFiltersType::UrlRewrite => {
            let Some(u) = &f.url_rewrite else {
                return Ok(());
            };
            if u.hostname.is_some() {
                return Err(RuleError::Unsupported("URLRewrite of the hostname".into()));
            }
            if let Some(p) = &u.path
                && p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch
            {
                r.rewrite_prefix =
                    Some(p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()));
            }
        }
        HttpRouteRulesFiltersType::RequestMirror => {
            let Some(m) = &f.request_mirror else {
                return Ok(());
            };
            if m.percent.is_some() || m.fraction.is_some() {
                return Err(RuleError::Unsupported(
                    "a mirror of a fraction of the requests".into(),
                ));
            }
            let b = &m.backend_ref;
            // Mirrors speak HTTP/1.1 (a GRPCRoute's mirror is refused in `grpc_as_http`).
            match backend_ref(
                false,
                b.group.as_deref(),
                b.kind.as_deref(),
                &b.name,
                b.namespace.as_deref(),
                b.port,
                rns,
                index,
                grants,
                notes,
            ) {
                Ok(backend) => {
                    r.mirror = Some(backend.name.clone());
                    if !out.backends.iter().any(|x| x.name == backend.name) {
                        out.backends.push(backend);
                    }
                }
                Err((why, msg)) => return Err(RuleError::Refs(why, format!("mirror: {msg}"))),
            }
        }
        HttpRouteRulesFiltersType::ExtensionRef => {
            return Err(RuleError::Unsupported("ExtensionRef filters".into()));
        }
        HttpRouteRulesFiltersType::Cors => {
            return Err(RuleError::Unsupported("the CORS filter".into()));
        }
    }
    Ok(())
}

/// A backendRef as a backend: a Service port, in the route's namespace or one a ReferenceGrant
/// opens.
#[allow(clippy::too_many_arguments)]
fn backend_ref(
    grpc: bool,
    group: Option<&str>,
    kind: Option<&str>,
    name: &str,
    namespace: Option<&str>,
    port: Option<i32>,
    rns: &str,
    index: &Index<'_>,
    grants: &[Arc<ReferenceGrant>],
    notes: &mut Vec<String>,
) -> Result<Backend, (&'static str, String)> {
    if !group.unwrap_or("").is_empty() || kind.unwrap_or("Service") != "Service" {
        return Err((
            "InvalidKind",
            format!("{name}: only Services are supported"),
        ));
    }
    let ns = namespace.unwrap_or(rns);
    if ns != rns && !granted(grants, (GROUP, "HTTPRoute", rns), ("", "Service", ns, name)) {
        return Err((
            "RefNotPermitted",
            format!("no ReferenceGrant lets routes of {rns} use Service {ns}/{name}"),
        ));
    }
    let Some(port) = port else {
        return Err(("UnsupportedValue", format!("{name}: a port is required")));
    };
    if !index.services.contains_key(&(ns, name)) {
        return Err(("BackendNotFound", format!("Service {ns}/{name} not found")));
    }
    let mut b = resolve::service(ns, name, PortRef::Number(port), index, notes);
    if grpc {
        // gRPC needs HTTP/2 to the servers: a backend of its own beside the HTTP one.
        b.proto = Proto::H2;
        b.name = format!("{}_h2", &b.name[..b.name.len().min(61)]);
    }
    Ok(b)
}

/// A GRPCRoute as the HTTPRoute it is equivalent to: a gRPC method is the path
/// `/service/method` (a service alone is the prefix `/service`, a method alone a regular
/// expression), and the rest (parents, hostnames, header matches, filters, backendRefs) has
/// the same shape. Err says what could not be converted; the route is then not served.
fn grpc_as_http(g: &GrpcRoute) -> (HttpRoute, Result<(), String>) {
    let mut v = serde_json::to_value(g).unwrap_or(Value::Null);
    let mut problem = Ok(());
    for rule in v["spec"]["rules"].as_array_mut().into_iter().flatten() {
        let mirrors = rule["filters"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["type"] == "RequestMirror"));
        if mirrors {
            problem = Err(
                "RequestMirror on a GRPCRoute (floodgate mirrors over HTTP/1.1 only)".to_owned(),
            );
        }
        for m in rule["matches"].as_array_mut().into_iter().flatten() {
            let method = m["method"].take();
            let (svc, meth) = (method["service"].as_str(), method["method"].as_str());
            let regex = method["type"].as_str() == Some("RegularExpression");
            let path = match (regex, svc, meth) {
                (false, Some(s), Some(mm)) => {
                    json!({ "type": "Exact", "value": format!("/{s}/{mm}") })
                }
                (false, Some(s), None) => json!({ "type": "PathPrefix", "value": format!("/{s}") }),
                (false, None, Some(mm)) => {
                    json!({ "type": "RegularExpression", "value": format!("^/[^/]+/{}$", regex_escape(mm)) })
                }
                (true, s, mm) => json!({ "type": "RegularExpression",
                    "value": format!("^/({})/({})$", s.unwrap_or("[^/]+"), mm.unwrap_or("[^/]+")) }),
                (false, None, None) => {
                    if !method.is_null() {
                        problem =
                            Err("a method match names neither a service nor a method".to_owned());
                    }
                    json!({ "type": "PathPrefix", "value": "/" })
                }
            };
            if let Some(obj) = m.as_object_mut() {
                obj.remove("method");
                obj.insert("path".into(), path);
            }
        }
    }
    v["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    v["kind"] = json!("HTTPRoute");
    match serde_json::from_value::<HttpRoute>(v) {
        Ok(r) => (r, problem),
        Err(e) => (
            HttpRoute {
                metadata: g.metadata.clone(),
                spec: gateway_api::httproutes::HttpRouteSpec::default(),
                status: None,
            },
            Err(format!("cannot be read as routes: {e}")),
        ),
    }
}

/// Whether a ReferenceGrant in the target's namespace lets `from` (group, kind, namespace)
/// refer to `to` (group, kind, namespace, name).
fn granted(
    grants: &[Arc<ReferenceGrant>],
    from: (&str, &str, &str),
    to: (&str, &str, &str, &str),
) -> bool {
    grants.iter().any(|g| {
        g.metadata.namespace.as_deref() == Some(to.2)
            && g.spec
                .from
                .iter()
                .any(|f| f.group == from.0 && f.kind == from.1 && f.namespace == from.2)
            && g.spec.to.iter().any(|t| {
                t.group == to.0 && t.kind == to.1 && t.name.as_deref().is_none_or(|n| n == to.3)
            })
    })
}

fn parent_ref_json(p: &HttpRouteParentRefs) -> Value {
    let mut v = json!({ "group": p.group.clone().unwrap_or_else(|| GROUP.into()), "kind": p.kind.clone().unwrap_or_else(|| "Gateway".into()), "name": p.name });
    if let Some(ns) = &p.namespace {
        v["namespace"] = json!(ns);
    }
    if let Some(s) = &p.section_name {
        v["sectionName"] = json!(s);
    }
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    v
}

fn listener_status(meta: &ObjectMeta, conds: Vec<(&str, bool, &str, String)>) -> Vec<Value> {
    conds
        .into_iter()
        .map(|(t, ok, why, msg)| cond(meta, t, ok, why, &msg))
        .collect()
}

/// A condition as the API wants it, but for `lastTransitionTime`, which the status writer
/// sets (kept while the condition's status stays), so translating is pure and an unchanged
/// status is never rewritten.
fn cond(meta: &ObjectMeta, kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": meta.generation.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::{objects::Objects, translate::translate as translate_all};

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn base() -> Config {
        Config::from_text(
            "xdp: { enabled: false }\nlisteners: [{ name: web, bind: '127.0.0.1:18080' }]\nbackends: []\nkubernetes: {}\n",
            std::path::Path::new("t.yaml"),
            Default::default(),
        )
        .unwrap()
    }

    fn objects(route: Value) -> Objects {
        let mut o = Objects {
            services: vec![obj(
                json!({ "metadata": { "name": "api", "namespace": "shop" }, "spec": { "ports": [{ "port": 8080 }] } }),
            )],
            ..Default::default()
        };
        o.gateway.classes = vec![obj(
            json!({ "metadata": { "name": "fg" }, "spec": { "controllerName": "floodgate.io/gateway-controller" } }),
        )];
        o.gateway.gateways = vec![obj(
            json!({ "metadata": { "name": "gw", "namespace": "shop" },
            "spec": { "gatewayClassName": "fg", "listeners": [{ "name": "web", "port": 18080, "protocol": "HTTP" }] } }),
        )];
        if route["kind"] == "GRPCRoute" {
            o.gateway.grpc_routes = vec![obj(route)];
        } else {
            o.gateway.routes = vec![obj(route)];
        }
        o
    }

    fn route_status(t: &crate::cluster::translate::Translation, kind: &str) -> Value {
        t.statuses
            .iter()
            .find(|s| s.kind == kind)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn hostnames_intersect_as_the_spec_says() {
        assert_eq!(intersect(None, &[]), [None]);
        assert_eq!(
            intersect(Some("*.example.com"), &[]),
            [Some("*.example.com".to_owned())]
        );
        assert_eq!(
            intersect(Some("*.example.com"), &["a.example.com", "other.org"]),
            [Some("a.example.com".to_owned())]
        );
        assert_eq!(
            intersect(Some("a.example.com"), &["*.example.com"]),
            [Some("a.example.com".to_owned())]
        );
        assert!(intersect(Some("a.example.com"), &["b.example.com"]).is_empty());
    }

    #[test]
    fn unsupported_matches_leave_the_rule_out_and_say_so() {
        let o = objects(
            json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "r", "namespace": "shop" },
            "spec": { "parentRefs": [{ "name": "gw" }], "rules": [
                { "matches": [{ "headers": [{ "type": "RegularExpression", "name": "x", "value": "a.*" }] }],
                  "backendRefs": [{ "name": "api", "port": 8080 }] },
                { "backendRefs": [{ "name": "api", "port": 8080 }] } ] } }),
        );
        let (cfg, t) = translate_all(&base(), &Kubernetes::default(), &o, &[]).unwrap();
        assert_eq!(
            cfg.routes.len(),
            1,
            "the supported rule is served: {:?}",
            cfg.routes
        );
        assert_eq!(cfg.routes[0].listeners, ["web"]);
        let st = route_status(&t, "HTTPRoute");
        let accepted = &st["parents"][0]["conditions"][0];
        assert_eq!(
            (accepted["status"].as_str(), accepted["reason"].as_str()),
            (Some("False"), Some("UnsupportedValue"))
        );
        assert!(
            accepted["message"]
                .as_str()
                .unwrap()
                .contains("header regular expression")
        );
    }

    #[test]
    fn a_backend_in_another_namespace_needs_a_grant() {
        let mut o = objects(
            json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "r", "namespace": "shop" },
            "spec": { "parentRefs": [{ "name": "gw" }], "rules": [{ "backendRefs": [{ "name": "db", "namespace": "data", "port": 5432 }] }] } }),
        );
        o.services.push(obj(json!({ "metadata": { "name": "db", "namespace": "data" }, "spec": { "ports": [{ "port": 5432 }] } })));
        let (_, t) = translate_all(&base(), &Kubernetes::default(), &o, &[]).unwrap();
        let refs = route_status(&t, "HTTPRoute")["parents"][0]["conditions"][1].clone();
        assert_eq!(refs["reason"], "RefNotPermitted");
        o.gateway.grants = vec![obj(
            json!({ "metadata": { "name": "g", "namespace": "data" },
            "spec": { "from": [{ "group": GROUP, "kind": "HTTPRoute", "namespace": "shop" }], "to": [{ "group": "", "kind": "Service" }] } }),
        )];
        let (cfg, t) = translate_all(&base(), &Kubernetes::default(), &o, &[]).unwrap();
        assert_eq!(
            route_status(&t, "HTTPRoute")["parents"][0]["conditions"][1]["status"],
            "True"
        );
        assert_eq!(cfg.routes[0].backend, "data_db_5432");
    }

    #[test]
    fn a_grpc_route_is_its_http_equivalent_over_http2() {
        let o = objects(
            json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "name": "g", "namespace": "shop" },
            "spec": { "parentRefs": [{ "name": "gw" }], "rules": [
                { "matches": [{ "method": { "service": "shop.Cart", "method": "Add" } }], "backendRefs": [{ "name": "api", "port": 8080 }] },
                { "matches": [{ "method": { "service": "shop.Cart" } }], "backendRefs": [{ "name": "api", "port": 8080 }] },
                { "matches": [{ "method": { "method": "Check" } }], "backendRefs": [{ "name": "api", "port": 8080 }] } ] } }),
        );
        let (cfg, t) = translate_all(&base(), &Kubernetes::default(), &o, &[]).unwrap();
        let seen: Vec<_> = cfg
            .routes
            .iter()
            .map(|r| (r.path.clone(), r.path_prefix.clone(), r.path_regex.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("/shop.Cart/Add".into()), None, None),
                (None, Some("/shop.Cart".into()), None),
                (None, None, Some("^/[^/]+/Check$".into())),
            ]
        );
        let b = cfg
            .backends
            .iter()
            .find(|b| b.name == cfg.routes[0].backend)
            .unwrap();
        assert_eq!((b.name.as_str(), b.proto), ("shop_api_8080_h2", Proto::H2));
        assert_eq!(
            route_status(&t, "GRPCRoute")["parents"][0]["conditions"][0]["status"],
            "True"
        );
    }
}
