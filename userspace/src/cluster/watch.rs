//! Watches of the cluster: one reflector per kind (and per namespace when
//! `kubernetes.namespaces` names some), each a list-then-watch that resumes from its last
//! resourceVersion and relists when it must (kube-runtime's `watcher`), retried with backoff
//! while the API is unreachable. Their stores are the state `translate` reads; every change
//! wakes the debounce, which tells the control loop once the changes have settled.

use std::{
    fmt::Debug,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use gateway_api::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};

use super::{ClusterError, Health, objects::Objects};
use crate::config::Kubernetes;

/// The stores of every watch.
pub struct Watches {
    classes: Vec<Store<IngressClass>>,
    ingresses: Vec<Store<Ingress>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
    settings: Vec<Store<ConfigMap>>,
    gateway_classes: Vec<Store<GatewayClass>>,
    gateways: Vec<Store<Gateway>>,
    http_routes: Vec<Store<HttpRoute>>,
    grpc_routes: Vec<Store<GrpcRoute>>,
    grants: Vec<Store<ReferenceGrant>>,
}

impl Watches {
    /// The Ingress stores, for the status writer.
    pub fn ingress_stores(&self) -> Vec<Store<Ingress>> {
        self.ingresses.clone()
    }

    /// What the watches hold now.
    pub fn objects(&self) -> Objects {
        fn all<K: Clone + kube::runtime::reflector::Lookup + 'static>(s: &[Store<K>]) -> Vec<Arc<K>>
        where
            K::DynamicType: Eq + Hash + Clone,
        {
            s.iter().flat_map(Store::state).collect()
        }
        Objects {
            classes: all(&self.classes),
            ingresses: all(&self.ingresses),
            services: all(&self.services),
            slices: all(&self.slices),
            secrets: all(&self.secrets),
            settings: all(&self.settings).into_iter().next(),
            gateway: super::objects::GatewayObjects {
                classes: all(&self.gateway_classes),
                gateways: all(&self.gateways),
                routes: all(&self.http_routes),
                grpc_routes: all(&self.grpc_routes),
                grants: all(&self.grants),
            },
        }
    }
}

/// A batch of changes has settled: rebuild routing. `since` is when its first change was seen.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub since: Instant,
}

/// Connects to the API and starts the watches on the calling runtime. The receiver yields once
/// every watch has listed its objects, then after each batch of changes. The client is for the
/// status writer and the election.
pub async fn start(
    k: &Kubernetes,
    health: Arc<Health>,
) -> Result<(Watches, mpsc::Receiver<Settled>, Client), ClusterError> {
    let client = client(k).await?;
    let changed = Arc::new(Notify::new());
    let pending = Arc::new(AtomicUsize::new(0));
    let spawn = Spawner {
        health: health.clone(),
        changed: changed.clone(),
        pending: pending.clone(),
    };
    let namespaces: Vec<Option<&str>> = if k.namespaces.is_empty() {
        vec![None]
    } else {
        k.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut w = Watches {
        classes: vec![spawn.watch(Api::all(client.clone()), watcher::Config::default())],
        ingresses: Vec::new(),
        services: Vec::new(),
        slices: Vec::new(),
        secrets: Vec::new(),
        settings: Vec::new(),
        gateway_classes: Vec::new(),
        gateways: Vec::new(),
        http_routes: Vec::new(),
        grpc_routes: Vec::new(),
        grants: Vec::new(),
    };
    // The Gateway API is watched when its CRDs are installed (a cluster without them would
    // otherwise look like an API that fails every watch).
    let gateway_api = match Api::<GatewayClass>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            info!("the Gateway API's CRDs are not installed: Ingresses only");
            false
        }
        Err(e) => {
            // Unreachable now: assume it is there, its watches retry like the others.
            warn!(error = %e, "cannot tell whether the Gateway API is installed; watching it");
            true
        }
    };
    if gateway_api {
        w.gateway_classes
            .push(spawn.watch(Api::all(client.clone()), watcher::Config::default()));
    }
    for ns in namespaces {
        fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
            c: &Client,
            ns: Option<&str>,
        ) -> Api<K>
        where
            K::DynamicType: Default,
        {
            match ns {
                Some(ns) => Api::namespaced(c.clone(), ns),
                None => Api::all(c.clone()),
            }
        }
        let all = watcher::Config::default;
        w.ingresses.push(spawn.watch(api(&client, ns), all()));
        w.services.push(spawn.watch(api(&client, ns), all()));
        // Only the slices that belong to a Service.
        w.slices
            .push(spawn.watch(api(&client, ns), all().labels("kubernetes.io/service-name")));
        // Only TLS Secrets: floodgate never holds the cluster's other secrets in memory.
        w.secrets
            .push(spawn.watch(api(&client, ns), all().fields("type=kubernetes.io/tls")));
        if gateway_api {
            w.gateways.push(spawn.watch(api(&client, ns), all()));
            w.http_routes.push(spawn.watch(api(&client, ns), all()));
            w.grpc_routes.push(spawn.watch(api(&client, ns), all()));
            w.grants.push(spawn.watch(api(&client, ns), all()));
        }
    }
    if let Some((ns, name)) = k.settings_ref() {
        w.settings.push(spawn.watch(
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        ));
    }
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(debounce(changed, pending, k.debounce.0, k.max_delay.0, tx));
    Ok((w, rx, client))
}

/// The namespace floodgate runs in: `POD_NAMESPACE` (the downward API), the service account's,
/// else the kubeconfig context's.
pub fn own_namespace(client: &Client) -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

async fn client(k: &Kubernetes) -> Result<Client, ClusterError> {
    let config = match &k.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                ClusterError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ClusterError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ClusterError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ClusterError::Client(e.to_string()))
}

struct Spawner {
    health: Arc<Health>,
    changed: Arc<Notify>,
    /// Watches that have not listed their objects once yet.
    pending: Arc<AtomicUsize>,
}

impl Spawner {
    fn watch<K>(&self, api: Api<K>, cfg: watcher::Config) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let (store, writer) = reflector::store();
        let health = self.health.clone();
        let changed = self.changed.clone();
        let pending = self.pending.clone();
        pending.fetch_add(1, Ordering::Relaxed);
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let mut listed = false;
        // The generation each object was last seen with: a change of status or metadata
        // alone (every status floodgate writes comes back this way) does not bump it and needs
        // no rebuild. Objects without a generation (Secrets, ConfigMaps) always count.
        let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        let stream = watcher(api, cfg).default_backoff().reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        if let Some(down) = health.answered() {
                            info!(kind = %kind, down_for = ?down, "Kubernetes API reachable again; catching up");
                        }
                        match event {
                            watcher::Event::InitDone => {
                                if !listed {
                                    listed = true;
                                    pending.fetch_sub(1, Ordering::Relaxed);
                                }
                                changed.notify_one();
                            }
                            watcher::Event::Apply(o) => {
                                let m = o.meta();
                                let same = match (m.uid.as_ref(), m.generation) {
                                    (Some(uid), Some(g)) => seen.insert(uid.clone(), g) == Some(g),
                                    _ => false,
                                };
                                if !same {
                                    changed.notify_one();
                                }
                            }
                            watcher::Event::Delete(o) => {
                                if let Some(uid) = o.meta().uid.as_ref() {
                                    seen.remove(uid);
                                }
                                changed.notify_one();
                            }
                            watcher::Event::InitApply(o) => {
                                if let (Some(uid), Some(g)) =
                                    (o.meta().uid.as_ref(), o.meta().generation)
                                {
                                    seen.insert(uid.clone(), g);
                                }
                            }
                            watcher::Event::Init => {}
                        }
                    }
                    Err(e) => {
                        if health.failed(&e.to_string()) {
                            warn!(kind = %kind, error = %e, "Kubernetes API unreachable; serving the last state read, retrying");
                        }
                    }
                }
            }
        });
        store
    }
}

/// Waits for changes to settle: `quiet` without a new one, or `max_delay` after the first of a
/// batch; and, the first time, for every watch to have listed its objects.
async fn debounce(
    changed: Arc<Notify>,
    pending: Arc<AtomicUsize>,
    quiet: std::time::Duration,
    max_delay: std::time::Duration,
    tx: mpsc::Sender<Settled>,
) {
    loop {
        changed.notified().await;
        let since = Instant::now();
        let deadline = tokio::time::Instant::now() + max_delay;
        loop {
            let wait = tokio::time::sleep(quiet);
            tokio::select! {
                () = wait => break,
                () = changed.notified() => {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        if pending.load(Ordering::Relaxed) > 0 {
            // Another watch's first list completes later and wakes this loop again.
            continue;
        }
        if tx.send(Settled { since }).await.is_err() {
            return;
        }
    }
}
