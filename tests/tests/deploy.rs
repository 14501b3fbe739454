//! deploy/: every overlay rendered by `kubectl kustomize`, validated against the Kubernetes
//! OpenAPI schemas (`kubernetes-validate --strict`), the alerts checked and unit-tested by
//! promtool, the dashboard's PromQL checked by promtool, and the properties that matter asserted
//! on the rendered objects. The root test proves the DaemonSet's capability list is enough for
//! floodgate to attach XDP, and that each capability in it is needed.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code: a panic is the failure report"
)]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use floodgate_tests::{NetPair, Proc, bin, repo_root, require_root, stats, temp_file, wait_until};
use serde::Deserialize as _;
use yaml_serde::Value;

/// Every kustomization a user can apply.
const TARGETS: &[&str] = &[
    "overlays/generic",
    "overlays/generic-node-tuning",
    "overlays/aks",
    "overlays/aks-deployment",
    "overlays/generic-kubernetes",
    "overlays/aks-kubernetes",
    "daemonset",
    "deployment",
];

fn render(target: &str) -> (String, Vec<Value>) {
    let dir = repo_root().join("deploy").join(target);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl (run `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn find_prefix<'a>(docs: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {kind}/{prefix}*"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_target_renders_and_validates_against_the_kubernetes_schemas() {
    for target in TARGETS {
        let (text, docs) = render(target);
        assert!(docs.len() >= 10, "{target}: {} objects", docs.len());
        let file = temp_file(&format!("deploy/{}.yaml", target.replace('/', "-")), &text);
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "--no-warn"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("kubernetes-validate (run `cargo xtask setup`): {e}"));
        assert!(
            out.status.success(),
            "{target} does not validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The schemas know no CRDs: the operator's objects are checked here and by promtool.
        let sm = find(&docs, "ServiceMonitor", "floodgate");
        let svc = find(&docs, "Service", "floodgate-metrics");
        for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
            assert_eq!(
                &svc["metadata"]["labels"][k], v,
                "{target}: ServiceMonitor selects the metrics Service"
            );
        }
        assert_eq!(
            sm["spec"]["endpoints"][0]["port"],
            svc["spec"]["ports"][0]["name"]
        );
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    }
}

/// The pod template of the workload in `docs` and its floodgate container.
fn workload<'a>(docs: &'a [Value], kind: &str) -> (&'a Value, &'a Value) {
    let w = find(docs, kind, "floodgate");
    let pod = &w["spec"]["template"]["spec"];
    let c = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "floodgate")
        .unwrap();
    (w, c)
}

/// The floodgate config and HAProxy keys of a render, checked by the real `floodgate check`.
fn floodgate_check(docs: &[Value], tag: &str) -> yaml_serde::Value {
    let cfg = find_prefix(docs, "ConfigMap", "floodgate-config-");
    let text = cfg["data"]["floodgate.yaml"].as_str().unwrap();
    let parsed: Value = yaml_serde::from_str(text).unwrap();
    // The TLS secret is mounted in the cluster; a real certificate stands in for it here.
    let dir = temp_file(&format!("deploy-{tag}/tls/tls.crt"), "")
        .parent()
        .unwrap()
        .to_path_buf();
    floodgate_tests::self_signed(&dir, "tls", "ec", "deploy.test", "DNS:deploy.test", true);
    let config = temp_file(
        &format!("deploy-{tag}/floodgate.yaml"),
        &text.replace("/etc/floodgate/tls/default", dir.to_str().unwrap()),
    );
    let hap = find_prefix(docs, "ConfigMap", "floodgate-haproxy-");
    let hdir = config.parent().unwrap().join("haproxy");
    std::fs::create_dir_all(&hdir).unwrap();
    for (k, v) in hap["data"].as_mapping().unwrap() {
        std::fs::write(hdir.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
    }
    let out = Command::new(bin("floodgate"))
        .args(["check", "--config"])
        .arg(&config)
        .arg("--haproxy-configmap")
        .arg(&hdir)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.starts_with(config.to_str().unwrap().as_bytes()),
        "{tag}: floodgate check refused the shipped config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ignored"),
        "{tag}: every shipped HAProxy key is implemented"
    );
    parsed
}

#[test]
fn cluster_mode_reads_the_cluster_with_least_privilege() {
    for target in ["overlays/generic-kubernetes", "overlays/aks-kubernetes"] {
        let (_, docs) = render(target);
        let (ds, c) = workload(&docs, "DaemonSet");
        assert_eq!(
            ds["spec"]["template"]["spec"]["automountServiceAccountToken"], true,
            "{target}"
        );
        assert_eq!(
            find(&docs, "ServiceAccount", "floodgate")["automountServiceAccountToken"],
            true
        );
        let class = find(&docs, "IngressClass", "floodgate");
        let gwclass = find(&docs, "GatewayClass", "floodgate");
        let cfg = floodgate_check(&docs, &target.replace('/', "-"));
        assert_eq!(
            class["spec"]["controller"].as_str(),
            cfg["kubernetes"]["controller"].as_str(),
            "{target}: the shipped IngressClass is the one the config claims"
        );
        assert_eq!(
            gwclass["spec"]["controllerName"].as_str(),
            cfg["kubernetes"]["gateway-controller"].as_str(),
            "{target}: and the GatewayClass"
        );
        // Reads of the kinds cluster mode translates; writes only of Ingress status, Events and
        // floodgate's own Lease.
        let allowed: &[(&str, &str, &[&str])] = &[
            ("networking.k8s.io", "ingressclasses", &["list", "watch"]),
            ("networking.k8s.io", "ingresses", &["list", "watch"]),
            ("", "services", &["list", "watch"]),
            ("", "secrets", &["list", "watch"]),
            ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
            ("", "configmaps", &["list", "watch"]),
            ("", "pods", &["list", "watch"]),
            ("networking.k8s.io", "ingresses/status", &["patch"]),
            ("events.k8s.io", "events", &["create", "patch"]),
            ("coordination.k8s.io", "leases", &["get", "update"]),
            ("coordination.k8s.io", "leases", &["create"]),
            (
                "gateway.networking.k8s.io",
                "gatewayclasses",
                &["list", "watch"],
            ),
            ("gateway.networking.k8s.io", "gateways", &["list", "watch"]),
            (
                "gateway.networking.k8s.io",
                "httproutes",
                &["list", "watch"],
            ),
            (
                "gateway.networking.k8s.io",
                "grpcroutes",
                &["list", "watch"],
            ),
            ("gateway.networking.k8s.io", "grpcroutes/status", &["patch"]),
            (
                "gateway.networking.k8s.io",
                "referencegrants",
                &["list", "watch"],
            ),
            (
                "gateway.networking.k8s.io",
                "gatewayclasses/status",
                &["patch"],
            ),
            ("gateway.networking.k8s.io", "gateways/status", &["patch"]),
            ("gateway.networking.k8s.io", "httproutes/status", &["patch"]),
        ];
        for (kind, name) in [("ClusterRole", "floodgate"), ("Role", "floodgate")] {
            for rule in find(&docs, kind, name)["rules"].as_sequence().unwrap() {
                let verbs = strs(&rule["verbs"]);
                for g in strs(&rule["apiGroups"]) {
                    for r in strs(&rule["resources"]) {
                        assert!(
                            allowed.iter().any(|(ag, ar, av)| *ag == g
                                && *ar == r
                                && *av == verbs.as_slice()),
                            "{target} {kind}: {g}/{r} {verbs:?}"
                        );
                    }
                }
                if strs(&rule["resources"]) == ["leases"] && verbs.contains(&"update".to_owned()) {
                    assert_eq!(
                        strs(&rule["resourceNames"]),
                        ["floodgate"],
                        "only its own Lease"
                    );
                }
            }
        }
        let env = &c["env"];
        let from_field = |n: &str| {
            env.as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
        };
        assert_eq!(from_field("POD_NAME"), Some(Value::from("metadata.name")));
        assert_eq!(
            from_field("POD_NAMESPACE"),
            Some(Value::from("metadata.namespace"))
        );
        assert_eq!(
            find(&docs, "Role", "floodgate")["metadata"]["namespace"],
            "floodgate",
            "ConfigMaps only in floodgate's namespace"
        );
    }
}

fn port_of(bind: &Value) -> u16 {
    bind.as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

#[test]
fn the_daemonset_has_the_properties_production_needs() {
    for target in ["overlays/generic", "overlays/aks"] {
        let (_, docs) = render(target);
        let (ds, c) = workload(&docs, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true, "{target}");
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        // Not privileged: exactly the capabilities floodgate needs, nothing else.
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
        assert_eq!(
            strs(&sc["capabilities"]["add"]),
            ["BPF", "NET_ADMIN", "PERFMON", "NET_BIND_SERVICE"]
        );
        // No privileged container at all by default: node sysctls come from the node.
        let all = pod["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_sequence().into_iter().flatten());
        for c in all {
            assert_ne!(c["securityContext"]["privileged"], true, "{target}: {c:?}");
        }
        // Images by a pinned tag or digest, never `latest` or none.
        for c in pod["containers"].as_sequence().unwrap() {
            let image = c["image"].as_str().unwrap();
            let pinned = image.contains('@')
                || image
                    .rsplit_once(':')
                    .is_some_and(|(_, t)| t != "latest" && !t.contains('/'));
            assert!(pinned, "{target}: image {image} is not pinned");
        }
        // bpffs from the host, so pins survive a restart.
        let bpffs = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "bpffs")
            .unwrap();
        assert_eq!(bpffs["hostPath"]["path"], "/sys/fs/bpf");
        assert!(
            c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "bpffs" && m["mountPath"] == "/sys/fs/bpf")
        );
        // Probes on the admin port the config binds.
        let cfg = floodgate_check(&docs, &target.replace('/', "-"));
        let admin_port = port_of(&cfg["admin"]["bind"]);
        let port_named = |name: &str| {
            c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        };
        assert_eq!(port_named("admin"), Some(admin_port));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
        for l in cfg["listeners"].as_sequence().unwrap() {
            let p = port_of(&l["bind"]);
            assert!(
                c["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|x| x["containerPort"] == p),
                "listener port {p} is declared"
            );
        }
        assert_eq!(cfg["xdp"]["pin-dir"], "/sys/fs/bpf/floodgate");
        // Draining: grace longer than floodgate's 30 s drain plus the preStop pause.
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(grace > 30 + pre_stop, "grace {grace} s");
        // Rolling update one node at a time, held ready before moving on.
        assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
        assert!(ds["spec"]["minReadySeconds"].as_u64().unwrap() >= 5);
        assert!(c["resources"]["requests"]["cpu"].is_string());
        assert!(c["resources"]["requests"]["memory"].is_string());
        assert!(c["resources"]["limits"]["memory"].is_string());
        // The dedicated pool.
        let tol = &pod["tolerations"][0];
        assert_eq!(
            (tol["key"].as_str(), tol["effect"].as_str()),
            (Some("dedicated"), Some("NoSchedule"))
        );
        let selector = pod["nodeSelector"].as_mapping().unwrap();
        if target.ends_with("aks") {
            assert_eq!(
                pod["nodeSelector"]["kubernetes.azure.com/agentpool"],
                "ingress"
            );
        } else {
            assert_eq!(pod["nodeSelector"]["floodgate.dev/ingress"], "true");
        }
        assert_eq!(selector.len(), 1);
        // The PDB and the metrics Service select exactly these pods.
        let labels = &ds["spec"]["template"]["metadata"]["labels"];
        let pdb = find(&docs, "PodDisruptionBudget", "floodgate");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
            assert_eq!(&labels[k], v);
        }
        let svc = find(&docs, "Service", "floodgate-metrics");
        for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(&labels[k], v);
        }
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "admin");
        // Dashboard and alerts ship with it.
        let dash = find(&docs, "ConfigMap", "floodgate-dashboard");
        assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
        find(&docs, "PrometheusRule", "floodgate");
    }
}

/// Node tuning: the sysctls live in one file; AKS's node config carries the same values, and
/// the opt-in component applies them with floodgate's only privileged container.
#[test]
fn node_sysctls_come_from_the_node_or_an_opt_in_component() {
    let conf =
        std::fs::read_to_string(repo_root().join("deploy/components/node-tuning/sysctls.conf"))
            .unwrap();
    let values: std::collections::BTreeMap<String, String> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    // AKS `--linux-os-config`: every sysctl AKS lets a node pool set, with the file's value.
    let aks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/aks/linuxosconfig.json")).unwrap(),
    )
    .unwrap();
    let aks = aks["sysctls"].as_object().unwrap();
    for (aks_key, sysctl) in [
        ("netCoreSomaxconn", "net.core.somaxconn"),
        ("netIpv4TcpMaxSynBacklog", "net.ipv4.tcp_max_syn_backlog"),
        ("netCoreNetdevMaxBacklog", "net.core.netdev_max_backlog"),
        ("netIpv4IpLocalPortRange", "net.ipv4.ip_local_port_range"),
        ("netIpv4TcpTwReuse", "net.ipv4.tcp_tw_reuse"),
        ("netIpv4TcpFinTimeout", "net.ipv4.tcp_fin_timeout"),
        (
            "netNetfilterNfConntrackMax",
            "net.netfilter.nf_conntrack_max",
        ),
        ("fsFileMax", "fs.file-max"),
        ("fsNrOpen", "fs.nr_open"),
        ("netCoreRmemMax", "net.core.rmem_max"),
        ("netCoreWmemMax", "net.core.wmem_max"),
    ] {
        let want = values
            .get(sysctl)
            .unwrap_or_else(|| panic!("{sysctl} in sysctls.conf"));
        let got = match &aks[aks_key] {
            serde_json::Value::Bool(b) => u8::from(*b).to_string(),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        assert_eq!(&got, want, "{aks_key} is {sysctl}");
    }
    let (_, docs) = render("overlays/generic-node-tuning");
    let (ds, _) = workload(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let inits = pod["initContainers"].as_sequence().unwrap();
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(init["name"], "sysctl");
    assert_eq!(init["securityContext"]["privileged"], true);
    assert_eq!(strs(&init["command"])[0], "sysctl");
    assert!(strs(&init["command"]).contains(&"/etc/floodgate/sysctl/sysctls.conf".into()));
    assert!(!init["image"].as_str().unwrap().ends_with(":latest"));
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "floodgate-sysctls")
        .expect("the sysctls ConfigMap");
    assert_eq!(cm["data"]["sysctls.conf"].as_str().unwrap(), conf);
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sysctls")
        .expect("the sysctls volume");
    assert_eq!(volume["configMap"]["name"], "floodgate-sysctls");
    let keys: Vec<&str> = values.keys().map(String::as_str).collect();
    {
        for must in [
            "net.netfilter.nf_conntrack_max",
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.ip_local_port_range",
            "net.core.netdev_max_backlog",
        ] {
            assert!(keys.contains(&must), "{must} is tuned");
        }
        for k in &keys {
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            assert!(path.exists(), "{k} is not a sysctl of this kernel");
        }
    }
}

#[test]
fn the_deployment_mode_spreads_and_scales_on_the_request_rate() {
    for target in ["deployment", "overlays/aks-deployment"] {
        let (_, docs) = render(target);
        let (d, c) = workload(&docs, "Deployment");
        let pod = &d["spec"]["template"]["spec"];
        assert!(pod["hostNetwork"].is_null() || pod["hostNetwork"] == false);
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let spread = pod["topologySpreadConstraints"].as_sequence().unwrap();
        let keys: Vec<_> = spread
            .iter()
            .map(|s| s["topologyKey"].as_str().unwrap())
            .collect();
        assert!(
            keys.contains(&"topology.kubernetes.io/zone")
                && keys.contains(&"kubernetes.io/hostname")
        );
        for s in spread {
            for (k, v) in s["labelSelector"]["matchLabels"].as_mapping().unwrap() {
                assert_eq!(&labels[k], v);
            }
        }
        let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(
            anti["podAffinityTerm"]["topologyKey"],
            "kubernetes.io/hostname"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(
            strs(&sc["capabilities"]["add"]),
            ["BPF", "NET_ADMIN", "PERFMON"]
        );
        let cfg = floodgate_check(&docs, &target.replace('/', "-"));
        for l in cfg["listeners"].as_sequence().unwrap() {
            assert!(
                port_of(&l["bind"]) >= 1024,
                "no NET_BIND_SERVICE in this mode"
            );
        }
        // The HPA: the Deployment, the per-pod request rate, the production behavior.
        let hpa = find(&docs, "HorizontalPodAutoscaler", "floodgate");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
        let b = &hpa["spec"]["behavior"];
        assert_eq!(b["scaleUp"]["stabilizationWindowSeconds"], 30);
        assert_eq!(b["scaleDown"]["stabilizationWindowSeconds"], 60);
        for p in b["scaleDown"]["policies"].as_sequence().unwrap() {
            assert_eq!(p["periodSeconds"], 60);
        }
        let m = &hpa["spec"]["metrics"][0];
        assert_eq!(m["type"], "Pods");
        let metric = m["pods"]["metric"]["name"].as_str().unwrap();
        // ... served by the adapter rule shipped with it, from the request counter.
        let adapter = find(&docs, "ConfigMap", "floodgate-prometheus-adapter-rules");
        let rules: Value =
            yaml_serde::from_str(adapter["data"]["config.yaml"].as_str().unwrap()).unwrap();
        let rule = &rules["rules"][0];
        assert_eq!(rule["name"]["as"], metric);
        assert!(
            rule["seriesQuery"]
                .as_str()
                .unwrap()
                .starts_with("floodgate_http_requests_total{")
        );
        assert_eq!(
            rule["metricsQuery"],
            "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
        );
        assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
        let lb = find(&docs, "Service", "floodgate");
        assert_eq!(lb["spec"]["type"], "LoadBalancer");
        assert_eq!(lb["spec"]["externalTrafficPolicy"], "Local");
        let pdb = find(&docs, "PodDisruptionBudget", "floodgate");
        for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
            assert_eq!(&labels[k], v);
        }
    }
}

/// Runs promtool with `args` in `dir`; panics with its output on failure.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("promtool (run `cargo xtask setup`): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn documented(name: &str) -> bool {
    let docs = std::fs::read_to_string(repo_root().join("docs/observability.md")).unwrap();
    let family = ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    docs.contains(&format!("`{family}`"))
}

/// `floodgate_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("floodgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (_, docs) = render("overlays/generic");
    let rule = find(&docs, "PrometheusRule", "floodgate");
    let dir = temp_file("promtool/x", "").parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join("floodgate-rules.yaml"),
        yaml_serde::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("deploy/base/monitoring/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    let out = promtool(&dir, &["check", "rules", "floodgate-rules.yaml"]);
    assert!(out.contains("SUCCESS: 15 rules found"), "{out}");
    promtool(&dir, &["test", "rules", "alerts.test.yaml"]);
    // Every alert has a unit test, and names only documented metrics.
    let tests = std::fs::read_to_string(dir.join("alerts.test.yaml")).unwrap();
    for r in rule["spec"]["groups"][0]["rules"].as_sequence().unwrap() {
        let name = r["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
        for m in metric_names(r["expr"].as_str().unwrap()) {
            assert!(
                documented(&m),
                "{name} uses {m}, not in docs/observability.md"
            );
        }
    }
    for needed in [
        "FloodgateConntrackNearlyFull",
        "FloodgateXdpDropSpike",
        "FloodgateP99LatencyHigh",
        "FloodgateBackendDown",
        "FloodgateQueueGrowing",
        "FloodgateXdpGenericMode",
        "FloodgateConfigReloadFailing",
    ] {
        assert!(tests.contains(needed), "{needed}");
    }
}

#[test]
fn the_dashboards_queries_are_valid_promql_over_documented_metrics() {
    let path = repo_root().join("deploy/base/monitoring/floodgate-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut titles = Vec::new();
    for (i, p) in panels.iter().enumerate() {
        titles.push(p["title"].as_str().unwrap().to_owned());
        for (j, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"].as_str().unwrap();
            for m in metric_names(expr) {
                assert!(
                    documented(&m),
                    "panel {:?} uses {m}, not in docs/observability.md",
                    p["title"]
                );
            }
            // Grafana's variables, as Grafana would substitute them.
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$namespace", ".*")
                .replace("$pod", ".*");
            rules.push_str(&format!(
                "      - record: panel_{i}_{j}\n        expr: {}\n",
                serde_json::to_string(&promql).unwrap()
            ));
        }
    }
    let dir = temp_file("dashboard/x", "").parent().unwrap().to_path_buf();
    std::fs::write(dir.join("dashboard-rules.yaml"), &rules).unwrap();
    promtool(&dir, &["check", "rules", "dashboard-rules.yaml"]);
    // The panels the production dashboards have.
    for want in [
        "Requests per second per pod",
        "Latency P95 / P99",
        "XDP drops by reason",
        "Conntrack usage",
        "floodgate flows and conntrack bypass",
        "Queue depth per backend",
        "Backend health",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want}: {titles:?}"
        );
    }
}

/// floodgate in `ns` under `setpriv` with only `caps` (uid 0, as in the pod).
fn run_with_caps(net: &NetPair, caps: &[String], config: &Path) -> Proc {
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let log = std::fs::File::create(config.with_extension(format!("{}.log", caps.len()))).unwrap();
    Proc::spawn(
        "floodgate (setpriv)",
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.srv))
            .args([
                "setpriv",
                "--bounding-set",
                &bounding,
                "--inh-caps",
                "-all",
                "--",
            ])
            .arg(bin("floodgate"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log),
    )
}

#[test]
fn the_daemonsets_capabilities_are_enough_and_each_one_is_needed() {
    if !require_root("the_daemonsets_capabilities_are_enough_and_each_one_is_needed") {
        return;
    }
    let (_, docs) = render("overlays/generic");
    let (_, c) = workload(&docs, "DaemonSet");
    let caps = strs(&c["securityContext"]["capabilities"]["add"]);
    let net = NetPair::new("c", 207);
    let pin_dir = format!("/sys/fs/bpf/fg-caps-{}", std::process::id());
    // What the DaemonSet does: native XDP, the NOTRACK table, a port under 1024, pinned maps.
    let config = temp_file(
        "caps.yaml",
        &format!(
            "
xdp: {{ interfaces: [{}], mode: native, pin-dir: {pin_dir} }}
listeners: [{{ name: http, bind: '0.0.0.0:80', default-backend: app }}]
backends: [{{ name: app, servers: ['127.0.0.1:9'] }}]
",
            net.srv_if
        ),
    );
    let mut fg = run_with_caps(&net, &caps, &config);
    let pid = fg.child.as_ref().map(std::process::Child::id);
    let attached = wait_until(Duration::from_secs(10), || {
        stats(&pin_dir).is_some_and(|s| {
            s["interfaces"][0]["pid"].as_u64().map(|p| p as u32) == pid
                && s["interfaces"][0]["mode"] == "native"
        })
    });
    fg.stop();
    let log = std::fs::read_to_string(config.with_extension(format!("{}.log", caps.len())))
        .unwrap_or_default();
    assert!(
        attached,
        "with {caps:?} floodgate attaches; its log:\n{log}"
    );
    assert!(fg.status.is_some_and(|s| s.success()), "{log}");
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut fg = run_with_caps(&net, &fewer, &config);
        let exited = wait_until(Duration::from_secs(10), || !fg.is_running());
        fg.stop();
        assert!(
            exited && fg.status.is_some_and(|s| !s.success()),
            "without {missing} floodgate must fail to start"
        );
    }
    floodgate::xdp::dataplane::remove_pins(Path::new(&pin_dir));
}
