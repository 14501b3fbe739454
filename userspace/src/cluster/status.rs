//! What floodgate tells the cluster, written by the Lease holder only (`leader.rs`): each served
//! Ingress's `status.loadBalancer` (the configured addresses, else the nodes floodgate's ready
//! pods run on), cleared on an Ingress of floodgate's class that it no longer serves, and a
//! Kubernetes Event for every object rejected or served in part, with the reason.
//!
//! It runs as a task of its own on the control thread's runtime, fed the latest translation's
//! report: API calls never hold up a reload, and a slow API server only delays status.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use serde_json::Value;

use k8s_openapi::api::{
    core::v1::{ObjectReference, Pod},
    networking::v1::{Ingress, IngressLoadBalancerIngress},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use tokio::sync::watch;
use tracing::warn;

use super::{gateway::StatusPatch, objects::Problem};
use crate::config::Kubernetes;

/// What the last applied translation served and reported.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Ingresses served, as (namespace, name).
    pub served: Vec<(String, String)>,
    pub problems: Vec<Problem>,
    /// The Gateway API objects' status.
    pub statuses: Vec<StatusPatch>,
}

/// A status as last written: without transition times (to compare), and as sent.
type Written = HashMap<(&'static str, Option<String>, String), (Value, Value)>;

/// Sets every condition's `lastTransitionTime`: the one written before when the condition's
/// status is the same, else now.
fn stamp(status: &mut Value, before: Option<&Value>) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut previous: HashMap<String, (Value, Value)> = HashMap::new();
    let mut walk_before = |v: &Value, path: String| {
        for c in v["conditions"].as_array().into_iter().flatten() {
            previous.insert(
                format!("{path}/{}", c["type"]),
                (c["status"].clone(), c["lastTransitionTime"].clone()),
            );
        }
    };
    if let Some(b) = before {
        walk_before(b, String::new());
        for (i, l) in b["listeners"].as_array().into_iter().flatten().enumerate() {
            walk_before(l, format!("l{i}"));
        }
        for (i, p) in b["parents"].as_array().into_iter().flatten().enumerate() {
            walk_before(p, format!("p{i}"));
        }
    }
    let set = |v: &mut Value, path: String| {
        for c in v["conditions"].as_array_mut().into_iter().flatten() {
            let key = format!("{path}/{}", c["type"]);
            let time = match previous.get(&key) {
                Some((st, t)) if *st == c["status"] => t.clone(),
                _ => Value::String(now.clone()),
            };
            c["lastTransitionTime"] = time;
        }
    };
    set(status, String::new());
    for (i, l) in status["listeners"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        set(l, format!("l{i}"));
    }
    for (i, p) in status["parents"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        set(p, format!("p{i}"));
    }
}

/// How often the node addresses are looked at again without a new report.
const REFRESH: Duration = Duration::from_secs(10);

/// Starts the status writer; send it each applied translation's report.
pub fn spawn(
    client: Client,
    k: &Kubernetes,
    namespace: String,
    ingresses: Vec<Store<Ingress>>,
    mut leader: watch::Receiver<bool>,
    writes: prometheus::IntCounterVec,
) -> watch::Sender<Arc<Report>> {
    let (tx, mut rx) = watch::channel(Arc::new(Report::default()));
    let writer = Writer {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "floodgate".into(),
                instance: Some(super::leader::identity()),
            },
        ),
        pods: Api::namespaced(client.clone(), &namespace),
        client,
        addresses: k.status_addresses.clone(),
        pod_selector: k.pod_selector.clone(),
        ingresses,
        writes,
    };
    tokio::spawn(async move {
        // Events published while leading; forgotten when leadership is lost, so a new leader
        // repeats what is still wrong.
        let mut published: HashSet<Problem> = HashSet::new();
        let mut written: Written = HashMap::new();
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                () = tokio::time::sleep(REFRESH) => {}
            }
            if !*leader.borrow_and_update() {
                published.clear();
                written.clear();
                continue;
            }
            let report = rx.borrow_and_update().clone();
            if let Err(e) = writer.status(&report).await {
                warn!(error = %e, "cannot write Ingress status");
            }
            if let Err(e) = writer.gateway_status(&report.statuses, &mut written).await {
                warn!(error = %e, "cannot write Gateway API status");
            }
            for p in &report.problems {
                if published.contains(p) {
                    continue;
                }
                match writer.event(p).await {
                    Ok(()) => {
                        published.insert(p.clone());
                    }
                    Err(e) => warn!(error = %e, "cannot publish an event"),
                }
            }
            published.retain(|p| report.problems.contains(p));
        }
    });
    tx
}

struct Writer {
    client: Client,
    recorder: Recorder,
    pods: Api<Pod>,
    addresses: Vec<String>,
    pod_selector: String,
    ingresses: Vec<Store<Ingress>>,
    writes: prometheus::IntCounterVec,
}

impl Writer {
    /// The addresses Ingresses are reachable at.
    async fn addresses(&self) -> Result<Vec<IngressLoadBalancerIngress>, kube::Error> {
        let mut addrs = if self.addresses.is_empty() {
            let pods = self
                .pods
                .list(&ListParams::default().labels(&self.pod_selector))
                .await?;
            pods.items
                .iter()
                .filter(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .filter_map(|p| p.status.as_ref()?.host_ip.clone())
                .collect::<Vec<_>>()
        } else {
            self.addresses.clone()
        };
        addrs.sort();
        addrs.dedup();
        Ok(addrs
            .into_iter()
            .map(|a| {
                let ip = a.parse::<IpAddr>().is_ok();
                IngressLoadBalancerIngress {
                    ip: ip.then(|| a.clone()),
                    hostname: (!ip).then_some(a),
                    ports: None,
                }
            })
            .collect())
    }

    fn ingress(&self, ns: &str, name: &str) -> Option<Arc<Ingress>> {
        let key = ObjectRef::new(name).within(ns);
        self.ingresses.iter().find_map(|s| s.get(&key))
    }

    async fn status(&self, report: &Report) -> Result<(), kube::Error> {
        let want = self.addresses().await?;
        let rejected = report
            .problems
            .iter()
            .filter(|p| p.rejected && p.kind == "Ingress")
            .map(|p| (p.namespace.clone(), p.name.clone()));
        let targets = report
            .served
            .iter()
            .cloned()
            .map(|k| (k, want.clone()))
            .chain(rejected.map(|k| (k, Vec::new())));
        for ((ns, name), want) in targets {
            let Some(ing) = self.ingress(&ns, &name) else {
                continue;
            };
            let now = ing
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone())
                .unwrap_or_default();
            if now == want {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
            let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": want } } });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            self.writes.with_label_values(&["status"]).inc();
        }
        Ok(())
    }

    /// The Gateway API objects' status, each written when it changed since this pod last
    /// wrote it (a new Lease holder writes them all once).
    async fn gateway_status(
        &self,
        statuses: &[StatusPatch],
        written: &mut Written,
    ) -> Result<(), kube::Error> {
        use gateway_api::{
            gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute,
            httproutes::HttpRoute,
        };
        let addresses = if statuses.iter().any(|s| s.addresses) {
            self.addresses()
                .await?
                .into_iter()
                .map(|a| match (a.ip, a.hostname) {
                    (Some(ip), _) => serde_json::json!({ "type": "IPAddress", "value": ip }),
                    (None, h) => {
                        serde_json::json!({ "type": "Hostname", "value": h.unwrap_or_default() })
                    }
                })
                .collect::<Vec<_>>()
        } else {
            Vec::new()
        };
        for s in statuses {
            let mut status = s.status.clone();
            if s.addresses {
                status["addresses"] = Value::Array(addresses.clone());
            }
            let key = (s.kind, s.namespace.clone(), s.name.clone());
            let before = written.get(&key);
            if before.is_some_and(|(bare, _)| *bare == status) {
                continue;
            }
            let mut full = status.clone();
            stamp(&mut full, before.map(|(_, f)| f));
            let patch = serde_json::json!({ "status": full });
            let pp = PatchParams::default();
            let ns = s.namespace.as_deref().unwrap_or("default");
            match s.kind {
                "GatewayClass" => Api::<GatewayClass>::all(self.client.clone())
                    .patch_status(&s.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(drop)?,
                "Gateway" => Api::<Gateway>::namespaced(self.client.clone(), ns)
                    .patch_status(&s.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(drop)?,
                "GRPCRoute" => Api::<GrpcRoute>::namespaced(self.client.clone(), ns)
                    .patch_status(&s.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(drop)?,
                _ => Api::<HttpRoute>::namespaced(self.client.clone(), ns)
                    .patch_status(&s.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map(drop)?,
            }
            self.writes.with_label_values(&["status"]).inc();
            written.insert(key, (status, full));
        }
        Ok(())
    }

    async fn event(&self, p: &Problem) -> Result<(), kube::Error> {
        let (api_version, uid) = match p.kind {
            "Ingress" => (
                "networking.k8s.io/v1",
                self.ingress(&p.namespace, &p.name)
                    .and_then(|i| i.metadata.uid.clone()),
            ),
            _ => ("v1", None),
        };
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(p.kind.into()),
            namespace: Some(p.namespace.clone()),
            name: Some(p.name.clone()),
            uid,
            ..ObjectReference::default()
        };
        // The Events API caps a note at 1 kB.
        let mut note = p.reason.clone();
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: if p.rejected {
                "Rejected"
            } else {
                "ServedInPart"
            }
            .into(),
            note: Some(note),
            action: "Translate".into(),
            secondary: None,
        };
        self.recorder.publish(&event, &reference).await?;
        self.writes.with_label_values(&["event"]).inc();
        Ok(())
    }
}
