//! `cargo xtask bench flood`: legitimate requests/s through floodgate with no flood and during a
//! spoofed SYN flood, with XDP admission on and with it off (the plain kernel, SYN cookies as the
//! kernel has them), in one run. Everything runs in namespaces this program creates; the flood
//! is bounded in time and count and goes only to the test's own veth peer.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a panic is the failure report"
)]

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use floodgate_tests::{
    NetPair, Proc, ThirdNs, bin, http_get, in_netns, mac_of,
    packet::{ETH_IP, PROTO_TCP, SYN, frame_to, tcp, v4},
    send_frames, start_floodgate,
};

const WINDOW: Duration = Duration::from_secs(4);
const CLIENTS: usize = 4;
/// Flood frames per batch; batches repeat until the window closes (at most 60 batches).
const BATCH: u32 = 20_000;

fn goodput(ns: &str, addr: SocketAddr, window: Duration) -> (u64, u64) {
    let until = Instant::now() + window;
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let ns = ns.to_owned();
            std::thread::spawn(move || {
                in_netns(&ns, move || {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < until {
                        match http_get(addr, "bench", "/") {
                            Ok((200, _)) => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn main() {
    let net = NetPair::new("b", 210);
    let atk = ThirdNs::new(&net, 210);
    let _origin = Proc::spawn(
        "fg-origin",
        NetPair::exec(&net.srv, bin("fg-origin"))
            .args(["--listen", &format!("{}:9101", net.srv_v4)])
            .stdout(Stdio::null()),
    );
    let addr: SocketAddr = format!("{}:8080", net.srv_v4).parse().unwrap();
    let (srv_mac, atk_mac) = (mac_of(&net.srv, &atk.srv_if), mac_of(&atk.ns, &atk.atk_if));
    let dst = atk.srv_v4.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..BATCH)
            .map(|i| {
                let x = i.wrapping_mul(2_654_435_761);
                let src = [198, 18 + (x >> 31) as u8, (x >> 8) as u8, x as u8 | 1];
                frame_to(
                    srv_mac,
                    atk_mac,
                    &[],
                    ETH_IP,
                    &v4(
                        src,
                        dst,
                        PROTO_TCP,
                        0,
                        0x4000,
                        &tcp(1024 + (i % 60_000) as u16, 8080, SYN, 0, 0),
                    ),
                )
            })
            .collect(),
    );
    println!(
        "{:<10} {:>14} {:>14} {:>10} {:>14} {:>12}",
        "xdp", "no flood rps", "flood rps", "ratio", "flood SYN/s", "failed"
    );
    for xdp in [true, false] {
        let pin_dir = format!("/sys/fs/bpf/fg-bench-{}", std::process::id());
        let yaml = format!(
            "
global: {{ nbthread: 1 }}
xdp:
  enabled: {xdp}
  interfaces: [{a}, {b}]
  mode: native
  pin-dir: {pin_dir}
  # The clients share one address: lift the per-source limit, the flood is spoofed anyway.
  syn-rate: {{ per-source: 1000000, per-source-burst: 1000000, global: 20000, global-burst: 20000 }}
listeners: [{{ name: http, bind: '0.0.0.0:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
            a = net.srv_if,
            b = atk.srv_if,
            srv = net.srv_v4
        );
        let _fg = if xdp {
            start_floodgate(&net.srv, "bench.yaml", &yaml, &pin_dir)
        } else {
            let config = floodgate_tests::temp_file("bench-off.yaml", &yaml);
            let fg = Proc::spawn(
                "floodgate",
                NetPair::enter(&net.srv, bin("floodgate"))
                    .args(["run", "--config"])
                    .arg(&config)
                    .stderr(Stdio::null()),
            );
            let up = floodgate_tests::wait_until(Duration::from_secs(10), || {
                goodput(&net.cli, addr, Duration::from_millis(50)).0 > 0
            });
            assert!(up, "floodgate without XDP did not answer");
            fg
        };
        let (base, _) = goodput(&net.cli, addr, WINDOW);
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let (stop, frames, ns, dev) = (
                stop.clone(),
                frames.clone(),
                atk.ns.clone(),
                atk.atk_if.clone(),
            );
            std::thread::spawn(move || {
                let (t, mut sent) = (Instant::now(), 0u64);
                for _ in 0..60 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sent += send_frames(&ns, &dev, frames.as_ref().clone());
                }
                (sent, t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let (flood, failed) = goodput(&net.cli, addr, WINDOW);
        stop.store(true, Ordering::Relaxed);
        let (sent, took) = flooder.join().unwrap();
        let (b, f) = (
            base as f64 / WINDOW.as_secs_f64(),
            flood as f64 / WINDOW.as_secs_f64(),
        );
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>10.2} {:>14.0} {:>12}",
            if xdp { "on" } else { "off" },
            b,
            f,
            f / b,
            sent as f64 / took.as_secs_f64(),
            failed
        );
    }
    println!(
        "({CLIENTS} clients, a new connection per request, {WINDOW:?} windows; spoofed sources in 198.18.0.0/15)"
    );
}
