//! End to end in two network namespaces joined by veth: floodgate runs in `srv` with XDP on its
//! veth, a client in `cli` sends HTTP requests through it to an origin, and the XDP counters
//! read by `floodgate stats --json` from another process must equal what was sent.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use floodgate_tests::{NetPair, Proc, bin, reason, require_root, stats, wait_until};
use serde_json::Value;

/// One HTTP request on a new connection from the client namespace; returns the body.
fn curl(ns: &str, url: &str) -> Option<String> {
    let out = NetPair::exec(ns, "curl")
        .args(["-sS", "--max-time", "3", "-g", url])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn requests_through_xdp_are_counted_exactly() {
    if !require_root("requests_through_xdp_are_counted_exactly") {
        return;
    }
    let net = NetPair::new("e", 201);
    let pin_dir = format!("/sys/fs/bpf/fg-e2e-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("fg-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("floodgate.yaml");
    std::fs::write(
        &config,
        format!(
            "
global: {{ maxconn: 1000, nbthread: 1 }}
xdp:
  interfaces: [{iface}]
  mode: native
  pin-dir: {pin_dir}
  flow-table-size: 4096
  syn-rate: {{ source-table-size: 4096 }}
listeners:
  - {{ name: v4, bind: '{srv}:8080', default-backend: origin }}
  - {{ name: v6, bind: '[fd00:201::1]:8080', default-backend: origin }}
backends:
  - {{ name: origin, servers: ['{srv}:9101'] }}
",
            iface = net.srv_if,
            srv = net.srv_v4,
        ),
    )
    .unwrap();

    let mut origin = Proc::spawn(
        "fg-origin",
        NetPair::exec(&net.srv, bin("fg-origin"))
            .args([
                "--listen",
                &format!("{}:9101", net.srv_v4),
                "--name",
                "e2e-origin",
            ])
            .stdout(Stdio::piped()),
    );
    // nsenter keeps our mount namespace, so the pins are visible to `floodgate stats` here.
    let mut fg = Proc::spawn(
        "floodgate",
        NetPair::enter(&net.srv, bin("floodgate"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::piped()),
    );
    assert!(
        wait_until(Duration::from_secs(10), || stats(&pin_dir)
            .is_some_and(|s| s["interfaces"][0]["mode"].is_string())),
        "floodgate did not attach and pin its maps under {pin_dir}"
    );
    let url = format!("http://{}:8080/warmup", net.srv_v4);
    let mut warmups = 0;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let answered = curl(&net.cli, &url).is_some();
            warmups += u64::from(answered);
            answered
        }),
        "floodgate does not answer"
    );
    assert!(fg.is_running() && origin.is_running());

    let (s0, t0) = floodgate_tests::settled_stats(&pin_dir, || vec![net.cli_tx_packets()]);
    let tx0 = t0[0];
    const V4: u64 = 40;
    const V6: u64 = 10;
    let mut ok = 0;
    for i in 0..V4 {
        let body = curl(&net.cli, &format!("http://{}:8080/e2e/{i}", net.srv_v4));
        ok +=
            u64::from(body.is_some_and(|b| {
                b.starts_with(&format!("e2e-origin /e2e/{i} xff={}", net.cli_v4))
            }));
    }
    for i in 0..V6 {
        let body = curl(&net.cli, &format!("http://[fd00:201::1]:8080/v6/{i}"));
        ok += u64::from(
            body.is_some_and(|b| b.starts_with(&format!("e2e-origin /v6/{i} xff=fd00:201::2"))),
        );
    }
    // Let the last FIN/ACK exchanges reach the server side.
    std::thread::sleep(Duration::from_millis(300));
    let (s1, t1) = floodgate_tests::settled_stats(&pin_dir, || vec![net.cli_tx_packets()]);
    let tx1 = t1[0];

    let d = |name: &str| reason(&s1, name) - reason(&s0, name);
    let total =
        s1["totals"]["packets"].as_u64().unwrap() - s0["totals"]["packets"].as_u64().unwrap();
    let dropped =
        s1["totals"]["dropped"].as_u64().unwrap() - s0["totals"]["dropped"].as_u64().unwrap();
    eprintln!(
        "sent {} requests, {ok} answered; XDP: total {total} (client veth tx {}), syn_admitted {}, \
         flows_inserted {}, flows_removed {}, conntrack_bypassed {}, dropped {dropped}",
        V4 + V6,
        tx1 - tx0,
        d("syn_admitted"),
        d("flows_inserted"),
        d("flows_removed"),
        d("conntrack_bypassed"),
    );
    assert_eq!(ok, V4 + V6, "every request gets the origin's answer");
    assert_eq!(
        d("syn_admitted"),
        V4 + V6,
        "one admitted SYN per connection"
    );
    assert_eq!(d("flows_inserted"), V4 + V6);
    assert!(
        d("conntrack_bypassed") >= 4 * (V4 + V6),
        "request, ACKs and FIN of every connection"
    );
    assert_eq!(dropped, 0);
    assert_eq!(
        total,
        tx1 - tx0,
        "XDP saw exactly the packets the client sent"
    );
    let listener = |s: &Value, id: &str| s["listeners"][id]["syn_admitted"].as_u64().unwrap_or(0);
    assert_eq!(
        listener(&s1, "0") - listener(&s0, "0"),
        V4,
        "IPv4 listener's SYNs"
    );
    assert_eq!(
        listener(&s1, "1") - listener(&s0, "1"),
        V6,
        "IPv6 listener's SYNs"
    );
    let iface = &s1["interfaces"][0];
    assert_eq!(iface["interface"], net.srv_if.as_str());
    assert_eq!(iface["mode"], "native");

    // SIGTERM: detach and remove the pins.
    fg.stop();
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "pins removed on exit"
    );
    let link = Command::new("ip")
        .args(["-n", &net.srv, "link", "show", &net.srv_if])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP detached on exit"
    );
    let origin_out = origin.stop();
    assert!(
        origin_out.contains(&format!("requests={} ", V4 + V6 + warmups)),
        "origin saw: {origin_out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn link_info(pin: &str) -> Value {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned", pin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool link show pinned {pin}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_restart_replaces_the_program_on_the_pinned_link() {
    if !require_root("a_restart_replaces_the_program_on_the_pinned_link") {
        return;
    }
    let net = NetPair::new("r", 205);
    let pin_dir = format!("/sys/fs/bpf/fg-restart-{}", std::process::id());
    let _origin = Proc::spawn(
        "fg-origin",
        NetPair::exec(&net.srv, bin("fg-origin"))
            .args(["--listen", &format!("{}:9101", net.srv_v4)])
            .stdout(Stdio::null()),
    );
    let yaml = format!(
        "
xdp: {{ interfaces: [{iface}], mode: native, pin-dir: {pin_dir}, keep-attached-on-exit: true, fail-open-after: 500ms }}
listeners: [{{ name: http, bind: '{srv}:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        iface = net.srv_if,
        srv = net.srv_v4
    );
    let url = format!("http://{}:8080/r", net.srv_v4);
    let link_pin = format!("{pin_dir}/link_{}", net.srv_if);
    // This test leaves the program attached on purpose; whatever happens, detach at the end.
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new(bin("floodgate"))
                .args(["detach", "--pin-dir", &self.0])
                .output();
        }
    }
    let _detach = Detach(pin_dir.clone());

    let mut fg = floodgate_tests::start_floodgate(&net.srv, "restart-1.yaml", &yaml, &pin_dir);
    assert!(curl(&net.cli, &url).is_some());
    let first = link_info(&link_pin);
    fg.stop();

    // floodgate is down: the program stays attached and keeps counting; with the heartbeat
    // stale, SYNs fail open instead of being dropped for capacity.
    let link = Command::new("ip")
        .args(["-n", &net.srv, "link", "show", &net.srv_if])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "still attached after exit"
    );
    std::thread::sleep(Duration::from_millis(700));
    let down0 = stats(&pin_dir).expect("stats while floodgate is down");
    assert!(curl(&net.cli, &url).is_none(), "no proxy listening");
    let down1 = stats(&pin_dir).unwrap();
    assert_eq!(
        reason(&down1, "fail_open") - reason(&down0, "fail_open"),
        1,
        "the SYN failed open"
    );

    let mut fg = floodgate_tests::start_floodgate(&net.srv, "restart-2.yaml", &yaml, &pin_dir);
    let second = link_info(&link_pin);
    assert_eq!(first["id"], second["id"], "the same link: never detached");
    assert_ne!(first["prog_id"], second["prog_id"], "a new program on it");
    assert!(curl(&net.cli, &url).is_some());
    let after = stats(&pin_dir).unwrap();
    assert!(
        reason(&after, "syn_admitted") >= 2,
        "counters survived the restart: {after}"
    );
    fg.stop();

    let out = Command::new(bin("floodgate"))
        .args(["detach", "--pin-dir", &pin_dir])
        .output()
        .unwrap();
    assert!(out.status.success());
    let link = Command::new("ip")
        .args(["-n", &net.srv, "link", "show", &net.srv_if])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "detached by `floodgate detach`"
    );
    assert!(!std::path::Path::new(&pin_dir).exists());
}

/// A floodgate killed outright (SIGKILL, the OOM killer) leaves its program attached and its
/// NOTRACK table behind. The next floodgate takes over what its config names and detaches
/// the rest; `floodgate detach` removes both the program and the table.
#[test]
fn what_a_killed_floodgate_leaves_is_reconciled_and_detach_removes_it() {
    if !require_root("what_a_killed_floodgate_leaves_is_reconciled_and_detach_removes_it") {
        return;
    }
    let net = NetPair::new("z", 209);
    let other = floodgate_tests::ThirdNs::new(&net, 209);
    let pin_dir = format!("/sys/fs/bpf/fg-killed-{}", std::process::id());
    struct Detach(String, String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = NetPair::enter(&self.1, bin("floodgate"))
                .args(["detach", "--pin-dir", &self.0])
                .output();
        }
    }
    let _detach = Detach(pin_dir.clone(), net.srv.clone());
    let yaml = |ifaces: &str| {
        format!(
            "
xdp: {{ interfaces: [{ifaces}], mode: native, pin-dir: {pin_dir} }}
listeners: [{{ name: http, bind: '{srv}:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
            srv = net.srv_v4
        )
    };
    let xdp_on = |dev: &str| {
        let out = Command::new("ip")
            .args(["-n", &net.srv, "link", "show", dev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    let table = || {
        let out = NetPair::exec(&net.srv, "nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("inet floodgate")
    };
    let both = format!("{}, {}", net.srv_if, other.srv_if);
    let mut fg =
        floodgate_tests::start_floodgate(&net.srv, "killed-1.yaml", &yaml(&both), &pin_dir);
    fg.kill();
    assert!(
        xdp_on(&net.srv_if) && xdp_on(&other.srv_if),
        "left attached by the kill"
    );
    assert!(table(), "the NOTRACK table is left too");
    // The next one names only the first interface: the second is detached.
    let mut fg =
        floodgate_tests::start_floodgate(&net.srv, "killed-2.yaml", &yaml(&net.srv_if), &pin_dir);
    assert!(xdp_on(&net.srv_if));
    assert!(
        !xdp_on(&other.srv_if),
        "an interface no longer configured is detached"
    );
    assert!(
        !std::path::Path::new(&format!("{pin_dir}/link_{}", other.srv_if)).exists(),
        "and its link pin removed"
    );
    fg.kill();
    assert!(xdp_on(&net.srv_if) && table());
    let out = NetPair::enter(&net.srv, bin("floodgate"))
        .args(["detach", "--pin-dir", &pin_dir])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("nftables table inet floodgate removed"),
        "{said}"
    );
    assert!(!xdp_on(&net.srv_if), "detached");
    assert!(!table(), "the NOTRACK table is gone");
    assert!(!std::path::Path::new(&pin_dir).exists());
}
