//! The Kubernetes API emulator the control-plane tests run floodgate against: the shared
//! `../shared/k8s` emulator (kmock 0.8 extended for kube-rs; not this project's code), started
//! by `tests/k8s/outage.py` so a test can take its HTTP server down and back with its objects,
//! and driven with kubectl as an operator would.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Proc, free_port, repo_root, wait_for_port};

/// `serve.py` on a port of 127.0.0.1, with a kubeconfig for it; stopped when dropped.
pub struct Emulator {
    proc: Proc,
    /// The emulator's stdout: one line per switch done.
    out: BufReader<std::process::ChildStdout>,
    pub port: u16,
    pub kubeconfig: PathBuf,
}

impl Emulator {
    pub fn start() -> Self {
        let port = free_port();
        let kubeconfig =
            std::env::temp_dir().join(format!("fg-kc-{}-{port}.yaml", std::process::id()));
        let shared = repo_root().join("../shared/k8s");
        assert!(
            shared.join("emulator.py").exists(),
            "{} is missing: the tests expect the shared folder beside the checkout",
            shared.display()
        );
        let mut proc = Proc::spawn(
            "k8s-emulator",
            Command::new("python3")
                .arg(repo_root().join("tests/k8s/outage.py"))
                .arg(&shared)
                .arg(port.to_string())
                .arg(&kubeconfig)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let out = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("the emulator's stdout");
        let mut out = BufReader::new(out);
        let mut line = String::new();
        out.read_line(&mut line).expect("the emulator's first line");
        assert!(
            line.starts_with("ready"),
            "the emulator did not start (`cargo xtask setup` installs kmock): {line}"
        );
        assert!(wait_for_port(
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(10)
        ));
        Self {
            proc,
            out,
            port,
            kubeconfig,
        }
    }

    fn switch(&mut self, signal: i32) {
        let pid = self.proc.child.as_ref().expect("running").id();
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid as i32, signal) };
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .expect("the emulator's answer");
        assert!(line.starts_with("switched"), "{line}");
    }

    /// Takes the API server down: every watch ends, connections are refused.
    pub fn down(&mut self) {
        self.switch(libc::SIGUSR1);
    }

    /// Brings it back on the same port with the same objects.
    pub fn up(&mut self) {
        self.switch(libc::SIGUSR2);
    }

    /// `kubectl` with this emulator's kubeconfig; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl (cargo xtask setup)");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write to kubectl");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl {args:?}: {text}");
        text
    }

    /// `kubectl apply` of YAML documents.
    pub fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "--validate=false", "-f", "-"], Some(yaml));
    }
}

/// An IngressClass floodgate claims, a Service `name` with port `http` (80), and its
/// EndpointSlice naming `ports` on 127.0.0.1 (all ready).
pub fn service_yaml(name: &str, ports: &[u16]) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{ name: floodgate }}
spec: {{ controller: floodgate.io/ingress-controller }}
---
apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: default }}
spec: {{ ports: [{{ name: http, port: 80 }}] }}
---
{}",
        slice_yaml(name, "127.0.0.1", ports)
    )
}

/// The EndpointSlice of Service `name`: one ready endpoint `address` per port (an endpoint per
/// origin, as pods on one address do not exist; the origins differ by port, so the slice
/// carries one port and is repeated per port).
pub fn slice_yaml(name: &str, address: &str, ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{i}
  namespace: default
  labels: {{ kubernetes.io/service-name: {name} }}
addressType: IPv4
ports: [{{ name: http, port: {p} }}]
endpoints: [{{ addresses: ['{address}'], conditions: {{ ready: true }} }}]
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}
