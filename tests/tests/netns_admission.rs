//! XDP admission end to end, in network namespaces: a SYN flood against a listener while a
//! legitimate client keeps completing requests, capacity admission from the proxy's own
//! connection count, and conntrack bypass. Every load is bounded in count and time and goes only
//! to addresses inside the namespaces these tests create.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use floodgate_tests::{
    NetPair, Proc, ThirdNs, bin, http_get, in_netns, mac_of,
    packet::{ETH_IP, PROTO_TCP, SYN, frame_to, tcp, v4},
    reason, require_root, send_frames, settled_stats, start_floodgate, stats,
};

fn origin(net: &NetPair) -> Proc {
    Proc::spawn(
        "fg-origin",
        NetPair::exec(&net.srv, bin("fg-origin"))
            .args([
                "--listen",
                &format!("{}:9101", net.srv_v4),
                "--name",
                "origin",
            ])
            .stdout(Stdio::null()),
    )
}

/// Requests on new connections from the client namespace until `until`, at most `max`;
/// returns (answered with 200, attempted).
fn legit_client(ns: &str, addr: SocketAddr, until: Instant, max: u32) -> (u32, u32) {
    in_netns(ns, move || {
        let (mut ok, mut n) = (0, 0);
        while Instant::now() < until && n < max {
            n += 1;
            if matches!(http_get(addr, "legit", "/legit"), Ok((200, _))) {
                ok += 1;
            }
        }
        (ok, n)
    })
}

fn syn_frames(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    dst: [u8; 4],
    count: u32,
    src: impl Fn(u32) -> [u8; 4],
) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let sport = 1024 + (i % 60_000) as u16;
            frame_to(
                dst_mac,
                src_mac,
                &[],
                ETH_IP,
                &v4(
                    src(i),
                    dst,
                    PROTO_TCP,
                    0,
                    0x4000,
                    &tcp(sport, 8080, SYN, 0, 0),
                ),
            )
        })
        .collect()
}

fn octets(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("ipv4").octets()
}

#[test]
fn syn_flood_is_dropped_while_a_legitimate_client_keeps_completing_requests() {
    if !require_root("syn_flood_is_dropped_while_a_legitimate_client_keeps_completing_requests") {
        return;
    }
    let net = NetPair::new("f", 202);
    let atk = ThirdNs::new(&net, 202);
    let pin_dir = format!("/sys/fs/bpf/fg-flood-{}", std::process::id());
    let _origin = origin(&net);
    let yaml = format!(
        "
global: {{ maxconn: 2000, nbthread: 1 }}
xdp:
  interfaces: [{a}, {b}]
  mode: native
  pin-dir: {pin_dir}
  conntrack-bypass: false
  # The limits' mechanics, engaged from the start (the policy has its own test below).
  pressure: {{ mode: always }}
  syn-rate: {{ per-source: 1000, per-source-burst: 1000, global: 4000, global-burst: 4000, source-table-size: 8192 }}
listeners: [{{ name: http, bind: '0.0.0.0:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        a = net.srv_if,
        b = atk.srv_if,
        srv = net.srv_v4
    );
    // The client's veth takes XDP's answers as a NIC's peer would (see attach_xdp_pass).
    floodgate_tests::attach_xdp_pass(&net.cli, &net.cli_if);
    let _fg = start_floodgate(&net.srv, "flood.yaml", &yaml, &pin_dir);
    let addr: SocketAddr = format!("{}:8080", net.srv_v4).parse().unwrap();
    let (warm, _) = legit_client(&net.cli, addr, Instant::now() + Duration::from_secs(5), 1);
    assert_eq!(warm, 1, "floodgate answers before the flood");

    let srv_mac = mac_of(&net.srv, &atk.srv_if);
    let atk_mac = mac_of(&atk.ns, &atk.atk_if);
    let dst = octets(&atk.srv_v4);
    let attacker = octets(&atk.atk_v4);

    // Phase 1: one source floods. Its bucket (1000/s, burst 1000) stops it; the legitimate
    // client has its own bucket and the global budget is not reached by what gets through.
    const FLOOD: u32 = 30_000;
    let tx = || vec![net.cli_tx_packets(), atk.tx_packets()];
    let (s0, t0) = settled_stats(&pin_dir, tx);
    let (cli0, atk0) = (t0[0], t0[1]);
    let until = Instant::now() + Duration::from_secs(3);
    let cli_ns = net.cli.clone();
    let legit = std::thread::spawn(move || legit_client(&cli_ns, addr, until, 300));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let sent = send_frames(
        &atk.ns,
        &atk.atk_if,
        syn_frames(srv_mac, atk_mac, dst, FLOOD, |_| attacker),
    );
    let flood_time = t.elapsed();
    let (ok, tried) = legit.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (s1, t1) = settled_stats(&pin_dir, tx);
    let (cli1, atk1) = (t1[0], t1[1]);
    let d = |name: &str| reason(&s1, name) - reason(&s0, name);
    let total =
        s1["totals"]["packets"].as_u64().unwrap() - s0["totals"]["packets"].as_u64().unwrap();
    eprintln!(
        "phase 1: {sent} flood SYNs in {flood_time:?}; legit {ok}/{tried}; syn_admitted {} syn_rate_source {} \
         syn_rate_global {}; XDP total {total} = veth tx {} + {}",
        d("syn_admitted"),
        d("syn_rate_source"),
        d("syn_rate_global"),
        cli1 - cli0,
        atk1 - atk0
    );
    assert_eq!(
        sent,
        u64::from(FLOOD),
        "every flood frame left the attacker"
    );
    assert_eq!(
        total,
        (cli1 - cli0) + (atk1 - atk0),
        "XDP saw exactly what both peers sent"
    );
    assert_eq!(d("syn_rate_global"), 0);
    assert_eq!(
        d("syn_admitted") + d("syn_rate_source"),
        u64::from(FLOOD) + u64::from(tried),
        "every SYN is admitted or dropped by its source bucket: the flood's and one per legit connection"
    );
    // The flood lasted well under its 30 s refill horizon: at most the burst plus a second's rate.
    let budget = 1000 + (1000.0 * flood_time.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        d("syn_rate_source") >= u64::from(FLOOD) - budget,
        "the attacker's bucket stopped the flood"
    );
    assert!(
        tried >= 20 && ok == tried,
        "the legitimate client completed every request: {ok}/{tried}"
    );

    // Phase 2: random sources (198.18.0.0/15, never a real client) defeat per-source buckets;
    // the global budget (4000/s over all CPUs) caps what reaches the kernel, and XDP answers
    // the rest with SYN cookies (the default). Legitimate SYNs over the budget get a cookie
    // too, so their connections complete without the kernel's 1 s SYN timeout.
    const SPOOFED: u32 = 20_000;
    let s0 = stats(&pin_dir).unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    let cli_ns = net.cli.clone();
    let legit = std::thread::spawn(move || legit_client(&cli_ns, addr, until, 200));
    std::thread::sleep(Duration::from_millis(200));
    let random = |i: u32| {
        let x = i.wrapping_mul(2_654_435_761);
        [198, 18 + (x >> 31) as u8, (x >> 8) as u8, x as u8 | 1]
    };
    let sent = send_frames(
        &atk.ns,
        &atk.atk_if,
        syn_frames(srv_mac, atk_mac, dst, SPOOFED, random),
    );
    let (ok, tried) = legit.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s1 = stats(&pin_dir).unwrap();
    let d = |name: &str| reason(&s1, name) - reason(&s0, name);
    eprintln!(
        "phase 2: {sent} spoofed SYNs; legit {ok}/{tried}; syn_admitted {} syn_rate_source {} syn_rate_global {} syn_cookie {}",
        d("syn_admitted"),
        d("syn_rate_source"),
        d("syn_rate_global"),
        d("syn_cookie")
    );
    assert_eq!(sent, u64::from(SPOOFED));
    assert!(
        d("syn_rate_global") + d("syn_cookie") >= u64::from(SPOOFED) / 2,
        "the global budget kept most of the spoofed flood from the kernel"
    );
    assert!(
        d("syn_admitted") + d("syn_rate_source") + d("syn_rate_global") + d("syn_cookie")
            >= u64::from(SPOOFED)
    );
    assert!(
        tried >= 5 && f64::from(ok) >= 0.9 * f64::from(tried),
        "legitimate success rate stays high: {ok}/{tried}"
    );
}

/// The default policy: no rate limit in normal operation (a busy address opens connections as
/// fast as it likes), limits engaged by a spoofed flood the proxy measures (logged and counted),
/// verified and trusted sources exempt while they are, and released once the flood is gone.
#[test]
fn syn_rate_limits_engage_under_pressure_only_and_exempt_verified_and_trusted_sources() {
    if !require_root(
        "syn_rate_limits_engage_under_pressure_only_and_exempt_verified_and_trusted_sources",
    ) {
        return;
    }
    let net = NetPair::new("p", 211);
    let atk = ThirdNs::new(&net, 211);
    let pin_dir = format!("/sys/fs/bpf/fg-pressure-{}", std::process::id());
    let _origin = origin(&net);
    let yaml = format!(
        "
global: {{ maxconn: 2000, nbthread: 1 }}
admin: {{ bind: '{srv}:9190' }}
xdp:
  interfaces: [{a}, {b}]
  mode: native
  pin-dir: {pin_dir}
  conntrack-bypass: false
  # Tight limits, so that engaged they would throttle the busy client below.
  syn-rate: {{ per-source: 5, per-source-burst: 5, source-table-size: 8192 }}
  pressure: {{ hold: 2s }}
  trusted: [198.19.0.0/24]
listeners: [{{ name: http, bind: '0.0.0.0:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        a = net.srv_if,
        b = atk.srv_if,
        srv = net.srv_v4
    );
    let mut fg = start_floodgate(&net.srv, "pressure.yaml", &yaml, &pin_dir);
    let addr: SocketAddr = format!("{}:8080", net.srv_v4).parse().unwrap();
    let admin: SocketAddr = format!("{}:9190", net.srv_v4).parse().unwrap();
    let pressure = || {
        let m = in_netns(&net.cli, move || {
            http_get(admin, "t", "/metrics").unwrap().1
        });
        (
            floodgate_tests::metric(&m, "floodgate_xdp_pressure").unwrap_or(-1.0),
            floodgate_tests::metric(&m, "floodgate_xdp_pressure_engagements_total").unwrap_or(-1.0),
        )
    };
    // Normal operation: one busy address opens 200 connections as fast as it can, far past
    // the 5 per second the limits would allow: none is dropped, nothing engages.
    let s0 = stats(&pin_dir).unwrap();
    let (ok, tried) = legit_client(
        &net.cli,
        addr,
        Instant::now() + Duration::from_secs(20),
        200,
    );
    let s1 = stats(&pin_dir).unwrap();
    let d = |a: &serde_json::Value, b: &serde_json::Value, name: &str| {
        reason(b, name) - reason(a, name)
    };
    assert_eq!((ok, tried), (200, 200));
    assert_eq!(
        d(&s0, &s1, "syn_rate_source") + d(&s0, &s1, "syn_rate_global"),
        0
    );
    assert_eq!(pressure(), (0.0, 0.0), "no pressure from a busy client");

    // A flood from random spoofed sources: admitted SYNs nobody answers engage the limits.
    let srv_mac = mac_of(&net.srv, &atk.srv_if);
    let atk_mac = mac_of(&atk.ns, &atk.atk_if);
    let dst = octets(&atk.srv_v4);
    let random = |i: u32| {
        let x = i.wrapping_mul(2_654_435_761);
        [198, 18, (x >> 8) as u8, x as u8 | 1]
    };
    let until = Instant::now() + Duration::from_secs(3);
    let cli_ns = net.cli.clone();
    let legit = std::thread::spawn(move || legit_client(&cli_ns, addr, until, 300));
    let mut sent = 0;
    let flood_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < flood_until {
        sent += send_frames(
            &atk.ns,
            &atk.atk_if,
            syn_frames(srv_mac, atk_mac, dst, 2000, |i| random(i + sent as u32)),
        );
    }
    let engaged = pressure();
    // Within the hold: a trusted source's SYNs all pass, unlimited.
    let s2 = stats(&pin_dir).unwrap();
    let trusted = send_frames(
        &atk.ns,
        &atk.atk_if,
        syn_frames(srv_mac, atk_mac, dst, 100, |_| [198, 19, 0, 7]),
    );
    std::thread::sleep(Duration::from_millis(200));
    let s3 = stats(&pin_dir).unwrap();
    let (ok, tried) = legit.join().unwrap();
    let s4 = stats(&pin_dir).unwrap();
    eprintln!(
        "{sent} spoofed SYNs; pressure {engaged:?}; legit {ok}/{tried}; dropped source {} global {}; \
         answered with XDP cookies {}; verified bypass {}; trusted bypass {} of {trusted}",
        d(&s1, &s4, "syn_rate_source"),
        d(&s1, &s4, "syn_rate_global"),
        d(&s1, &s4, "syn_cookie"),
        d(&s1, &s4, "syn_verified_bypass"),
        d(&s2, &s3, "syn_trusted_bypass"),
    );
    assert_eq!(engaged, (1.0, 1.0), "engaged once, and counted");
    assert!(
        d(&s1, &s4, "syn_rate_source") + d(&s1, &s4, "syn_rate_global") + d(&s1, &s4, "syn_cookie")
            > u64::from(sent as u32) / 2,
        "engaged, the limits kept most of the flood from the kernel (dropped, or answered \
         with an XDP cookie)"
    );
    assert_eq!(
        d(&s2, &s3, "syn_trusted_bypass"),
        trusted,
        "every trusted SYN skipped the limits"
    );
    assert!(
        d(&s1, &s4, "syn_verified_bypass") > 0,
        "the busy client, verified, skipped them"
    );
    assert!(
        tried >= 20 && f64::from(ok) >= 0.9 * f64::from(tried),
        "the verified client kept connecting: {ok}/{tried}"
    );
    // Released once the flood has been gone for the hold (2 s).
    let released = floodgate_tests::wait_until(Duration::from_secs(6), || pressure().0 == 0.0);
    assert!(released, "released after the hold");
    let s5 = stats(&pin_dir).unwrap();
    let (ok, tried) = legit_client(
        &net.cli,
        addr,
        Instant::now() + Duration::from_secs(20),
        100,
    );
    let s6 = stats(&pin_dir).unwrap();
    assert_eq!((ok, tried), (100, 100));
    assert_eq!(
        d(&s5, &s6, "syn_rate_source") + d(&s5, &s6, "syn_rate_global"),
        0
    );
    fg.stop();
    // start_floodgate logs beside the config.
    let log = std::fs::read_to_string(
        std::env::temp_dir()
            .join(format!("floodgate-tests-{}", std::process::id()))
            .join("pressure.log"),
    )
    .unwrap();
    assert!(
        log.contains("SYN pressure: XDP rate limits engaged"),
        "{log}"
    );
    assert!(log.contains("XDP rate limits released"), "{log}");
}

/// A `TcpExt` counter of `/proc/net/netstat` in namespace `ns`.
fn tcp_ext(ns: &str, name: &'static str) -> u64 {
    in_netns(ns, move || {
        // thread-self: /proc/net is the process's namespace, not this thread's.
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no TcpExt {name}"))
    })
}

fn syncookies_mode(ns: &str) -> String {
    in_netns(ns, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")
            .unwrap()
            .trim()
            .to_owned()
    })
}

#[test]
fn over_the_budget_xdp_syn_cookies_become_connections_the_kernel_accepts() {
    if !require_root("over_the_budget_xdp_syn_cookies_become_connections_the_kernel_accepts") {
        return;
    }
    let net = NetPair::new("k", 212);
    // The client's veth must take the XDP_TX frames of the server's native XDP program.
    floodgate_tests::attach_xdp_pass(&net.cli, &net.cli_if);
    let pin_dir = format!("/sys/fs/bpf/fg-cookies-{}", std::process::id());
    let _origin = origin(&net);
    // Limits always on, a budget of about one SYN a second, no exemption for the client once
    // it is known: nearly every SYN is over the budget and answered by XDP.
    let yaml = format!(
        "
global: {{ maxconn: 2000, nbthread: 1 }}
xdp:
  interfaces: [{iface}]
  mode: native
  pin-dir: {pin_dir}
  conntrack-bypass: false
  pressure: {{ mode: always }}
  syn-rate: {{ per-source: 0, global: 1, global-burst: 1 }}
  verified-ttl: 0s
listeners: [{{ name: http, bind: '{srv}:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        iface = net.srv_if,
        srv = net.srv_v4
    );
    let before = syncookies_mode(&net.srv);
    let mut fg = start_floodgate(&net.srv, "cookies.yaml", &yaml, &pin_dir);
    assert_eq!(
        syncookies_mode(&net.srv),
        "2",
        "held at 2 while XDP answers with cookies"
    );
    let addr: SocketAddr = format!("{}:8080", net.srv_v4).parse().unwrap();
    let s0 = stats(&pin_dir).unwrap();
    let (recv0, failed0) = (
        tcp_ext(&net.srv, "SyncookiesRecv"),
        tcp_ext(&net.srv, "SyncookiesFailed"),
    );
    let (ok, tried) = legit_client(&net.cli, addr, Instant::now() + Duration::from_secs(30), 60);
    let s1 = stats(&pin_dir).unwrap();
    let d = |name: &str| reason(&s1, name) - reason(&s0, name);
    let (recv, failed) = (
        tcp_ext(&net.srv, "SyncookiesRecv") - recv0,
        tcp_ext(&net.srv, "SyncookiesFailed") - failed0,
    );
    eprintln!(
        "{ok}/{tried} answered; XDP: syn_cookie {}, syn_admitted {}, syn_rate_global {}; kernel: cookies received {recv}, failed {failed}",
        d("syn_cookie"),
        d("syn_admitted"),
        d("syn_rate_global"),
    );
    assert_eq!((ok, tried), (60, 60), "every connection completed");
    assert!(d("syn_cookie") >= 40, "most SYNs were answered from XDP");
    assert_eq!(d("syn_rate_global"), 0, "none dropped");
    assert!(
        recv >= d("syn_cookie"),
        "the kernel took each XDP cookie's ACK as a connection"
    );
    assert_eq!(failed, 0);
    fg.stop();
    assert_eq!(syncookies_mode(&net.srv), before, "restored at exit");
}

#[test]
fn a_full_listener_drops_syns_in_xdp_until_connections_close() {
    if !require_root("a_full_listener_drops_syns_in_xdp_until_connections_close") {
        return;
    }
    let net = NetPair::new("m", 203);
    let pin_dir = format!("/sys/fs/bpf/fg-cap-{}", std::process::id());
    let _origin = origin(&net);
    let yaml = format!(
        "
global: {{ maxconn: 4, nbthread: 1 }}
xdp: {{ interfaces: [{iface}], mode: native, pin-dir: {pin_dir}, conntrack-bypass: false }}
listeners: [{{ name: http, bind: '{srv}:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        iface = net.srv_if,
        srv = net.srv_v4
    );
    let _fg = start_floodgate(&net.srv, "capacity.yaml", &yaml, &pin_dir);
    let addr: SocketAddr = format!("{}:8080", net.srv_v4).parse().unwrap();
    let s0 = stats(&pin_dir).unwrap();
    let (full, freed, admitted_again) = in_netns(&net.cli, move || {
        let connect = || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
        // Four idle connections take every slot of maxconn 4.
        let mut held: Vec<_> = (0..4)
            .map(|_| connect().expect("connection within maxconn"))
            .collect();
        // The proxy publishes capacity every 250 ms.
        std::thread::sleep(Duration::from_millis(700));
        let full = connect();
        held.truncate(2);
        std::thread::sleep(Duration::from_millis(700));
        let again = connect();
        (full.is_err(), held.len(), again.is_ok())
    });
    let s1 = stats(&pin_dir).unwrap();
    let d = |name: &str| reason(&s1, name) - reason(&s0, name);
    eprintln!(
        "capacity drops {}, syn_admitted {}, fail_open {}",
        d("capacity"),
        d("syn_admitted"),
        d("fail_open")
    );
    assert!(full, "a SYN past maxconn must not be answered");
    assert!(d("capacity") >= 1, "and it is dropped and counted in XDP");
    assert_eq!(freed, 2);
    assert!(admitted_again, "closing connections makes room again");
    assert_eq!(d("syn_admitted"), 5);
    assert_eq!(d("fail_open"), 0, "a live proxy never fails open");
}

fn conntrack_count(ns: &str) -> u64 {
    let out = NetPair::exec(ns, "cat")
        .arg("/proc/sys/net/netfilter/nf_conntrack_count")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("nf_conntrack_count in {ns}"))
}

fn nft_tables(ns: &str) -> String {
    let out = NetPair::exec(ns, "nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn notrack_keeps_listener_flows_out_of_conntrack() {
    if !require_root("notrack_keeps_listener_flows_out_of_conntrack") {
        return;
    }
    let net = NetPair::new("k", 204);
    let pin_dir = format!("/sys/fs/bpf/fg-ct-{}", std::process::id());
    let _origin = origin(&net);
    // A stateful rule, as any node firewall has, is what makes the kernel track connections.
    let rules = floodgate_tests::temp_file(
        "ct-rules.nft",
        "table inet fgtest {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    ct state established accept\n  }\n}\n",
    );
    let st = NetPair::exec(&net.srv, "nft")
        .arg("-f")
        .arg(&rules)
        .status()
        .unwrap();
    assert!(st.success(), "nft test table");
    let addr: SocketAddr = format!("{}:8080", net.srv_v4).parse().unwrap();
    let yaml = |bypass: bool| {
        format!(
            "
global: {{ nbthread: 1 }}
xdp: {{ interfaces: [{iface}], mode: native, pin-dir: {pin_dir}, conntrack-bypass: {bypass} }}
listeners: [{{ name: http, bind: '{srv}:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
            iface = net.srv_if,
            srv = net.srv_v4
        )
    };
    const BURST: u32 = 40;
    let burst = |ns: &str| {
        let (ok, n) = legit_client(ns, addr, Instant::now() + Duration::from_secs(20), BURST);
        assert_eq!((ok, n), (BURST, BURST));
    };

    // Control: without the bypass every connection gets a conntrack entry.
    let mut fg = start_floodgate(&net.srv, "ct-off.yaml", &yaml(false), &pin_dir);
    assert!(!nft_tables(&net.srv).contains("inet floodgate"));
    let before = conntrack_count(&net.srv);
    burst(&net.cli);
    let tracked = conntrack_count(&net.srv) - before;
    fg.stop();

    let mut fg = start_floodgate(&net.srv, "ct-on.yaml", &yaml(true), &pin_dir);
    assert!(
        nft_tables(&net.srv).contains("inet floodgate"),
        "NOTRACK table installed"
    );
    // Started as root: once attached, every thread keeps CAP_NET_ADMIN (bit 12, for the
    // table's removal below) and nothing else, in every set.
    let pid = fg.child.as_ref().map(std::process::Child::id).unwrap();
    let caps = floodgate_tests::thread_caps(pid);
    assert!(!caps.is_empty());
    for (eff, prm, bnd) in &caps {
        assert_eq!(
            (*eff, *prm, *bnd),
            (1 << 12, 1 << 12, 1 << 12),
            "capabilities of a thread: {caps:x?}"
        );
    }
    let s0 = stats(&pin_dir).unwrap();
    let before = conntrack_count(&net.srv);
    burst(&net.cli);
    let after = conntrack_count(&net.srv);
    let s1 = stats(&pin_dir).unwrap();
    let bypassed = reason(&s1, "conntrack_bypassed") - reason(&s0, "conntrack_bypassed");
    eprintln!(
        "conntrack entries for {BURST} connections: {tracked} without bypass, {} with; XDP counted {bypassed} bypassed packets",
        after.saturating_sub(before)
    );
    assert!(
        tracked >= u64::from(BURST),
        "control: conntrack tracked the burst ({tracked})"
    );
    // Only the proxy's own upstream connections (loopback, not listener ports) may be tracked.
    assert!(
        after <= before + 2,
        "with NOTRACK the burst did not raise nf_conntrack_count: {before} -> {after}"
    );
    assert!(bypassed >= 4 * u64::from(BURST));
    fg.stop();
    assert!(
        !nft_tables(&net.srv).contains("inet floodgate"),
        "NOTRACK table removed at stop"
    );
}

/// On a Kubernetes node the ingress also routes pods' traffic: a connection to a Service IP on
/// `:443` is DNATed by the node and needs conntrack for it. floodgate's NOTRACK rules, with a
/// wildcard listener on that very port, must leave it tracked (and working) while its own
/// listener's flows stay untracked.
#[test]
fn conntrack_bypass_leaves_forwarded_and_natted_traffic_alone() {
    if !require_root("conntrack_bypass_leaves_forwarded_and_natted_traffic_alone") {
        return;
    }
    // router (floodgate, XDP on the client side) between a client and a pod.
    let net = NetPair::new("n", 208);
    let pod = ThirdNs::new(&net, 208);
    let pin_dir = format!("/sys/fs/bpf/fg-rt-{}", std::process::id());
    let sh = |ns: &str, cmd: &str| {
        let st = NetPair::exec(ns, "sh").args(["-c", cmd]).status().unwrap();
        assert!(st.success(), "{ns}: {cmd}");
    };
    sh(&net.srv, "sysctl -qw net.ipv4.ip_forward=1");
    // The Service IP 10.208.2.10:443 is the pod's 443, as kube-proxy would DNAT it.
    let nat = floodgate_tests::temp_file(
        "rt-nat.nft",
        "table ip fgtestnat {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr 10.208.2.10 tcp dport 443 dnat to 10.208.1.2:443\n  }\n}\n",
    );
    sh(&net.srv, &format!("nft -f {}", nat.display()));
    sh(&net.cli, "ip route add 10.208.0.0/16 via 10.208.0.1");
    sh(&pod.ns, "ip route add default via 10.208.1.1");
    let _own_origin = origin(&net);
    let _pod_origin = Proc::spawn(
        "fg-origin",
        NetPair::exec(&pod.ns, bin("fg-origin"))
            .args(["--listen", &format!("{}:443", pod.atk_v4), "--name", "pod"])
            .stdout(Stdio::null()),
    );
    let yaml = format!(
        "
global: {{ nbthread: 1 }}
xdp: {{ interfaces: [{iface}], mode: native, pin-dir: {pin_dir}, conntrack-bypass: true }}
listeners: [{{ name: https, bind: '0.0.0.0:443', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        iface = net.srv_if,
        srv = net.srv_v4
    );
    let mut fg = start_floodgate(&net.srv, "rt.yaml", &yaml, &pin_dir);
    assert!(nft_tables(&net.srv).contains("inet floodgate"));
    let service: SocketAddr = "10.208.2.10:443".parse().unwrap();
    let own: SocketAddr = format!("{}:443", net.srv_v4).parse().unwrap();
    let gets = |addr: SocketAddr, n: u32| {
        in_netns(&net.cli, move || {
            (0..n)
                .filter_map(|_| http_get(addr, "svc", "/x").ok())
                .filter(|(s, _)| *s == 200)
                .map(|(_, body)| body)
                .collect::<Vec<_>>()
        })
    };
    // floodgate's own listener: answered by floodgate, and not tracked.
    let before = conntrack_count(&net.srv);
    let answered = gets(own, 20);
    let after = conntrack_count(&net.srv);
    assert_eq!(answered.len(), 20);
    assert!(
        answered.iter().all(|b| b.contains("origin")),
        "{answered:?}"
    );
    assert!(
        after <= before + 2,
        "floodgate's own flows stay untracked: {before} -> {after}"
    );
    // The Service: DNATed through the router to the pod, every time.
    let answered = gets(service, 20);
    assert_eq!(
        answered.len(),
        20,
        "forwarded connections to :443 keep working"
    );
    assert!(answered.iter().all(|b| b.contains("pod")), "{answered:?}");
    assert!(
        conntrack_count(&net.srv) >= after + 20,
        "the forwarded connections are tracked"
    );
    fg.stop();
}

#[test]
fn xdp_drops_show_in_metrics_and_stats_agree_with_them() {
    if !require_root("xdp_drops_show_in_metrics_and_stats_agree_with_them") {
        return;
    }
    let net = NetPair::new("o", 206);
    let pin_dir = format!("/sys/fs/bpf/fg-metrics-{}", std::process::id());
    let _origin = origin(&net);
    let admin: SocketAddr = format!("{}:9190", net.srv_v4).parse().unwrap();
    // 10.206.9.0/24 is denied; the frames below come from it (spoofed, never answered).
    let yaml = format!(
        "
global: {{ nbthread: 1 }}
admin: {{ bind: '{admin}' }}
xdp:
  interfaces: [{a}]
  mode: native
  pin-dir: {pin_dir}
  conntrack-bypass: false
  deny: [10.206.9.0/24]
listeners: [{{ name: http, bind: '0.0.0.0:8080', default-backend: origin }}]
backends: [{{ name: origin, servers: ['{srv}:9101'] }}]
",
        a = net.srv_if,
        srv = net.srv_v4
    );
    let _fg = start_floodgate(&net.srv, "metrics.yaml", &yaml, &pin_dir);
    let srv_mac = mac_of(&net.srv, &net.srv_if);
    let cli_mac = mac_of(&net.cli, &net.cli_if);
    let dst = octets(&net.srv_v4);
    let denied = syn_frames(srv_mac, cli_mac, dst, 37, |i| {
        [10, 206, 9, (i % 200) as u8 + 1]
    });

    // `stats --watch` while the frames go out: two refreshes, NDJSON, rates per reason.
    let watch = Proc::spawn(
        "floodgate stats --watch",
        std::process::Command::new(bin("floodgate"))
            .args([
                "stats",
                "--json",
                "--watch",
                "0.5",
                "--count",
                "3",
                "--pin-dir",
                &pin_dir,
            ])
            .stdout(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(send_frames(&net.cli, &net.cli_if, denied), 37);
    let mut watch = watch;
    let child = watch.child.take().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let frames: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 3, "--count 3 gives three refreshes");
    assert!(
        frames
            .iter()
            .any(|f| f["rates"]["reasons"]["deny_cidr"].as_f64().unwrap_or(0.0) > 0.0),
        "the drops show as a rate: {frames:?}"
    );

    // The scrape and `stats --json` read the same maps: equal, reason by reason, whenever
    // nothing moved between two stats reads around the scrape.
    let scrape = || {
        in_netns(&net.srv, move || {
            http_get(admin, "a", "/metrics").expect("scrape /metrics")
        })
    };
    let mut agreed = false;
    for _ in 0..10 {
        let (before, _) = settled_stats(&pin_dir, Vec::new);
        let (status, m) = scrape();
        assert_eq!(status, 200);
        let after = stats(&pin_dir).unwrap();
        if before["reasons"] != after["reasons"] {
            continue;
        }
        assert_eq!(reason(&after, "deny_cidr"), 37, "{after}");
        // Per interface: the drops are the attached veth's; summed over interfaces, each
        // reason equals the stats total.
        let iface = &after["per_interface"][&net.srv_if];
        assert_eq!(iface["deny_cidr"]["packets"], 37, "{after}");
        for (name, r) in after["reasons"].as_object().unwrap() {
            let action = r["verdict"].as_str().unwrap();
            let per_iface: u64 = after["per_interface"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(ifname, reasons)| {
                    let mode = if *ifname == net.srv_if { "native" } else { "" };
                    let sample = format!(
                        "floodgate_xdp_packets_total{{action=\"{action}\",interface=\"{ifname}\",mode=\"{mode}\",reason=\"{name}\"}}"
                    );
                    let v = floodgate_tests::metric(&m, &sample)
                        .unwrap_or_else(|| panic!("no {sample} in\n{m}"));
                    assert_eq!(v as u64, reasons[name]["packets"].as_u64().unwrap(), "{sample}");
                    v as u64
                })
                .sum();
            assert_eq!(per_iface, r["packets"].as_u64().unwrap(), "{name}");
        }
        assert!(
            m.contains(&format!(
                "floodgate_xdp_attached{{interface=\"{}\",mode=\"native\",requested=\"native\"}} 1",
                net.srv_if
            )),
            "{m}"
        );
        floodgate_tests::promtool_check_metrics(&m).unwrap_or_else(|e| panic!("{e}\n{m}"));
        let undocumented = floodgate_tests::undocumented_families(&m);
        assert!(
            undocumented.is_empty(),
            "not in docs/observability.md: {undocumented:?}"
        );
        agreed = true;
        break;
    }
    assert!(agreed, "the counters never held still across a scrape");
}
