//! `cargo xtask bench k8s`: cluster mode at scale against the shared API emulator. Generates
//! INGRESSES Ingresses (one host each), as many Services, and ENDPOINTS ready endpoints spread
//! over their EndpointSlices, then starts the release floodgate and measures the time to serve
//! them (start to `/readyz`, start to the first answer of the last Ingress), its memory once
//! serving (VmRSS, VmHWM), and the time for one EndpointSlice change to move traffic
//! (REPEATS changes, alternating between two real origins).
//!
//! The emulator is a Python process on the same 2 cores: its list answers are part of what is
//! measured, as a real API server's would be; the figures are floodgate's plus the emulator's.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a panic is the failure report"
)]

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use bytes::Bytes;
use floodgate_tests::{
    Proc, bin, free_port, http_get, k8s::Emulator, metric, spawn_origin, temp_file, wait_for_port,
    wait_until,
};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(client: &Http, port: u16, method: &str, path: &str, body: &Value) -> u16 {
    send_read(client, port, method, path, body).await.0
}

async fn send_read(
    client: &Http,
    port: u16,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn slice(i: usize, endpoints: &[(String, u16)]) -> Value {
    let port = endpoints.first().map_or(8080, |e| e.1);
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("svc-{i}-0"), "namespace": "bench",
                      "labels": { "kubernetes.io/service-name": format!("svc-{i}") } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port }],
        "endpoints": endpoints.iter().map(|(a, _)| json!({ "addresses": [a], "conditions": { "ready": true } })).collect::<Vec<_>>()
    })
}

fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn main() {
    let ingresses = env_or("INGRESSES", 5_000).max(1);
    let endpoints = env_or("ENDPOINTS", 20_000).max(ingresses);
    let repeats = env_or("REPEATS", 7);
    let emu = Emulator::start();
    let (p1, p2) = (free_port(), free_port());
    let _o1 = spawn_origin(p1, "o1");
    let _o2 = spawn_origin(p2, "o2");
    assert!(wait_for_port(
        ([127, 0, 0, 1], p1).into(),
        Duration::from_secs(5)
    ));
    assert!(wait_for_port(
        ([127, 0, 0, 1], p2).into(),
        Duration::from_secs(5)
    ));

    // The objects, created before floodgate starts (as when it joins a running cluster).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let loaded = Instant::now();
    let port = emu.port;
    rt.block_on(async {
        let client: Http = Client::builder(TokioExecutor::new()).build_http();
        let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "bench" } });
        send(&client, port, "POST", "/api/v1/namespaces", &ns).await;
        let class = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": { "name": "floodgate" }, "spec": { "controller": "floodgate.io/ingress-controller" } });
        assert!(send(&client, port, "POST", "/apis/networking.k8s.io/v1/ingressclasses", &class).await < 300);
        let per = endpoints / ingresses;
        let jobs: Vec<_> = (0..ingresses)
            .map(|i| {
                let client = client.clone();
                // Service 0's one endpoint is the real origin; the others are loopback addresses
                // nothing listens on (a request to them is refused at once: 503).
                let eps: Vec<(String, u16)> = if i == 0 {
                    vec![("127.0.0.1".into(), p1)]
                } else {
                    (0..per)
                        .map(|j| (format!("127.{}.{}.{}", (i >> 8) & 255, i & 255, j % 250 + 1), 9))
                        .collect()
                };
                async move {
                    let svc = json!({ "apiVersion": "v1", "kind": "Service",
                        "metadata": { "name": format!("svc-{i}"), "namespace": "bench" },
                        "spec": { "ports": [{ "name": "http", "port": 80 }] } });
                    let ing = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "metadata": { "name": format!("ing-{i}"), "namespace": "bench" },
                        "spec": { "ingressClassName": "floodgate", "rules": [{ "host": format!("h{i}.bench.example"),
                            "http": { "paths": [{ "path": "/", "pathType": "Prefix",
                                "backend": { "service": { "name": format!("svc-{i}"), "port": { "name": "http" } } } }] } }] } });
                    for (path, body) in [
                        ("/api/v1/namespaces/bench/services", svc),
                        ("/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices", slice(i, &eps)),
                        ("/apis/networking.k8s.io/v1/namespaces/bench/ingresses", ing),
                    ] {
                        let st = send(&client, port, "POST", path, &body).await;
                        assert!(st < 300, "POST {path}: {st}");
                    }
                }
            })
            .collect();
        // Eight at a time: the emulator is one Python process.
        let mut pending = jobs.into_iter();
        loop {
            let batch: Vec<_> = pending.by_ref().take(8).collect();
            if batch.is_empty() {
                break;
            }
            let running: Vec<_> = batch.into_iter().map(tokio::spawn).collect();
            for r in running {
                r.await.unwrap();
            }
        }
    });
    let load_time = loaded.elapsed();

    let (http_port, admin_port) = (free_port(), free_port());
    let cfg = temp_file(
        "k8s-bench.yaml",
        &format!(
            "xdp: {{ enabled: false }}
listeners: [{{ name: http, bind: '127.0.0.1:{http_port}' }}]
backends: []
admin: {{ bind: '127.0.0.1:{admin_port}' }}
kubernetes: {{ kubeconfig: '{}', status-addresses: ['192.0.2.1'] }}
",
            emu.kubeconfig.display()
        ),
    );
    let started = Instant::now();
    let fg = Proc::spawn(
        "floodgate",
        Command::new(bin("floodgate"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(std::env::temp_dir().join("fg-k8s-bench.log")).unwrap()),
    );
    let pid = fg.child.as_ref().unwrap().id();
    let (addr, admin): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], http_port).into(),
        ([127, 0, 0, 1], admin_port).into(),
    );
    assert!(wait_until(Duration::from_secs(300), || {
        http_get(admin, "a", "/readyz").is_ok_and(|(s, _)| s == 200)
    }));
    let ready = started.elapsed();
    let last = format!("h{}.bench.example", ingresses - 1);
    assert!(wait_until(Duration::from_secs(60), || {
        http_get(addr, &last, "/").is_ok_and(|(s, _)| s == 503 || s == 200)
    }));
    assert_eq!(http_get(addr, "h0.bench.example", "/").unwrap().0, 200);
    let serving = started.elapsed();
    // The Lease holder writes every Ingress's status once (a write storm the emulator, one
    // Python process, takes seconds over): measured, then let settle before the changes.
    let writes = || {
        metric(
            &http_get(admin, "a", "/metrics").unwrap().1,
            "floodgate_kubernetes_writes_total{kind=\"status\"}",
        )
        .unwrap_or(0.0)
    };
    let mut last = -1.0;
    while writes() != last || last < ingresses as f64 {
        last = writes();
        std::thread::sleep(Duration::from_secs(1));
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    let statuses = started.elapsed();
    let (rss_kib, hwm_kib) = rss(pid);

    // One endpoint change at a time: the slice of svc-0 moves between the two origins, written
    // with a PUT as a controller would (kubectl's own start-up and discovery are not part of
    // it); timed from the API's answer to the PUT.
    let mut moves = Vec::new();
    let mut puts = Vec::new();
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let path = "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/svc-0-0";
    for r in 0..repeats {
        let (port, name) = if r % 2 == 0 { (p2, "o2 ") } else { (p1, "o1 ") };
        let (_, mut obj) = rt.block_on(send_read(&client, emu.port, "GET", path, &Value::Null));
        obj["ports"][0]["port"] = json!(port);
        let t = Instant::now();
        let (st, _) = rt.block_on(send_read(&client, emu.port, "PUT", path, &obj));
        assert!(st < 300, "PUT: {st}");
        puts.push(t.elapsed());
        let t = Instant::now();
        assert!(wait_until(Duration::from_secs(30), || {
            http_get(addr, "h0.bench.example", "/")
                .is_ok_and(|(s, b)| s == 200 && b.starts_with(name))
        }));
        moves.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    moves.sort();
    puts.sort();
    // A new Ingress (for svc-0, already there) among the others: created -> answering.
    let mut creations = Vec::new();
    for r in 0..repeats {
        let host = format!("new{r}.bench.example");
        let ing = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": { "name": format!("new-{r}"), "namespace": "bench" },
            "spec": { "ingressClassName": "floodgate", "rules": [{ "host": host,
                "http": { "paths": [{ "path": "/", "pathType": "Prefix",
                    "backend": { "service": { "name": "svc-0", "port": { "name": "http" } } } }] } }] } });
        let (st, _) = rt.block_on(send_read(
            &client,
            emu.port,
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/bench/ingresses",
            &ing,
        ));
        assert!(st < 300, "POST: {st}");
        let t = Instant::now();
        assert!(wait_until(Duration::from_secs(30), || {
            http_get(addr, &host, "/").is_ok_and(|(s, _)| s == 200)
        }));
        creations.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    creations.sort();
    let m = http_get(admin, "a", "/metrics").unwrap().1;
    let served = metric(&m, "floodgate_kubernetes_ingresses{state=\"served\"}").unwrap_or(0.0);
    println!(
        "cluster mode, {ingresses} Ingresses, {endpoints} endpoints (the shared API emulator on the same 2 cores)"
    );
    println!(
        "  objects created in the emulator:        {:>8.1} s",
        load_time.as_secs_f64()
    );
    println!(
        "  start -> /readyz 200:                   {:>8.2} s",
        ready.as_secs_f64()
    );
    println!(
        "  start -> last Ingress answering:        {:>8.2} s",
        serving.as_secs_f64()
    );
    println!("  Ingresses served:                       {served:>8}");
    println!(
        "  start -> every status written ({last} writes): {:>5.1} s",
        statuses.as_secs_f64()
    );
    println!(
        "  RSS once serving (VmRSS / VmHWM):       {:>5} MiB / {} MiB",
        rss_kib / 1024,
        hwm_kib / 1024
    );
    println!(
        "  the emulator's answer to the PUT: median {:.0} ms",
        puts.get(puts.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!(
        "  one EndpointSlice change (PUT answered) -> traffic moved, {} changes: median {:.0} ms, max {:.0} ms",
        moves.len(),
        moves
            .get(moves.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        moves.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!(
        "  an Ingress created (POST answered) -> answering, {} creations: median {:.0} ms, max {:.0} ms",
        creations.len(),
        creations
            .get(creations.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        creations.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    let count = metric(&m, "floodgate_kubernetes_sync_seconds_count").unwrap_or(0.0);
    let sum = metric(&m, "floodgate_kubernetes_sync_seconds_sum").unwrap_or(0.0);
    if count > 0.0 {
        println!(
            "  floodgate_kubernetes_sync_seconds: {count} syncs, mean {:.0} ms (change seen -> routing serving)",
            sum / count * 1000.0
        );
    }
}
