//! Every verdict and reason of the XDP program, through `BPF_PROG_TEST_RUN`.
//!
//! Each case loads a fresh program with its own config, runs its steps, and checks after every
//! packet the action and the exact counter deltas: the expected reasons move by the expected
//! amounts (packets, and bytes for verdicts) and every other counter stays put.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use floodgate::{config, xdp::dataplane::ListenerLoad};
use floodgate_common::{COUNTER_COUNT, Reason, Reason as R, Verdict};
use floodgate_tests::{
    TestProg,
    packet::{
        self, ACK, DST4, ETH_IP, ETH_IPV6, FIN, PROTO_TCP, PROTO_UDP, PSH, RST, SYN, TPID_8021AD,
        TPID_8021Q, csum, frame, src6, tcp, tcp4, tcp6, udp, v4, v6,
    },
    pin_to_cpu, require_root,
};

const PORT: u16 = 8080;
const A: [u8; 4] = [198, 51, 100, 7];
const B: [u8; 4] = [198, 51, 100, 8];

enum Step {
    /// Run a packet: expected action, and the reasons expected to count it (verdict first).
    Pkt(Vec<u8>, u32, &'static [Reason]),
    /// Publish listener 0's load (active, maxconn) with a fresh heartbeat.
    Load(u32, u32),
    /// Publish listener 0 below maxconn but with every backend behind it full, queue included.
    BackendsFull,
    /// Make the heartbeat this old.
    AgeHeartbeat(Duration),
    /// Mark a source verified, as the proxy does for peers it accepted.
    Verify([u8; 4]),
    Sleep(Duration),
}
use Step::{AgeHeartbeat, BackendsFull, Load, Pkt, Sleep, Verify};

struct Case {
    name: &'static str,
    cfg: fn(&mut config::Xdp),
    steps: Vec<Step>,
}

fn default_cfg(_: &mut config::Xdp) {}

/// Online CPUs, as floodgate divides the global budget among them.
fn cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).expect("cpus")
}

fn syn4(src: [u8; 4]) -> Vec<u8> {
    tcp4(src, 40000, PORT, SYN)
}

fn cases() -> Vec<Case> {
    let admitted: &[Reason] = &[R::PassSynAdmitted, R::FlowInserted];
    // Under SYN pressure an unproven source's SYN is admitted without a flow: a spoofed flood
    // never fills the flow table.
    let limited: &[Reason] = &[R::PassSynAdmitted];
    let ipv4_tcp = |t: Vec<u8>| frame(&[], ETH_IP, &v4(A, DST4, PROTO_TCP, 0, 0x4000, &t));
    vec![
        Case {
            name: "ARP passes untouched",
            cfg: default_cfg,
            steps: vec![Pkt(packet::arp(), Verdict::Pass.action(), &[R::PassNotIp])],
        },
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as NICs do.
        Case {
            name: "Ethernet header alone with an IPv4 ethertype is malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(&[], ETH_IP, &[]),
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "UDP to the listener port passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(&[], ETH_IP, &v4(A, DST4, PROTO_UDP, 0, 0, &udp(5353, PORT))),
                Verdict::Pass.action(),
                &[R::PassNotTcp],
            )],
        },
        Case {
            name: "SYN to another port passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                tcp4(A, 40000, 22, SYN),
                Verdict::Pass.action(),
                &[R::PassNotListener],
            )],
        },
        Case {
            name: "IPv4 SYN to a listener is admitted",
            cfg: default_cfg,
            steps: vec![Pkt(syn4(A), Verdict::Pass.action(), admitted)],
        },
        Case {
            name: "IPv6 SYN to a listener is admitted",
            cfg: default_cfg,
            steps: vec![Pkt(
                tcp6(src6(7), 40000, PORT, SYN),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "a listener's port at another address (a pod's IP on the NIC) passes, even full and denied",
            cfg: |c| c.deny = vec!["198.51.100.0/24".parse().expect("cidr")],
            steps: vec![
                Load(10, 10),
                Pkt(
                    frame(
                        &[],
                        ETH_IP,
                        &v4(
                            A,
                            [10, 0, 0, 9],
                            PROTO_TCP,
                            0,
                            0x4000,
                            &tcp(40000, PORT, SYN, 0, 0),
                        ),
                    ),
                    Verdict::Pass.action(),
                    &[R::PassNotListener],
                ),
                Pkt(
                    frame(
                        &[],
                        ETH_IP,
                        &v4(
                            A,
                            [10, 0, 0, 9],
                            PROTO_TCP,
                            0,
                            0x4000,
                            &tcp(40000, PORT, ACK, 0, 0),
                        ),
                    ),
                    Verdict::Pass.action(),
                    &[R::PassNotListener],
                ),
                Pkt(
                    frame(
                        &[],
                        ETH_IPV6,
                        &v6(
                            src6(7),
                            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                            &[],
                            PROTO_TCP,
                            0,
                            &tcp(40000, PORT, SYN, 0, 0),
                        ),
                    ),
                    Verdict::Pass.action(),
                    &[R::PassNotListener],
                ),
                // The listener's own address, the same source: denied.
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropDenyCidr]),
            ],
        },
        Case {
            name: "IPv6 SYN to a port only bound for IPv4 passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                tcp6(src6(7), 40000, 9090, SYN),
                Verdict::Pass.action(),
                &[R::PassNotListener],
            )],
        },
        Case {
            name: "IPv4 with options (IHL 7)",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IP,
                    &v4(A, DST4, PROTO_TCP, 2, 0, &tcp(40000, PORT, SYN, 0, 0)),
                ),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "SYN with TCP options",
            cfg: default_cfg,
            steps: vec![Pkt(
                ipv4_tcp(tcp(40000, PORT, SYN, 5, 0)),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "802.1Q tagged SYN",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[TPID_8021Q],
                    ETH_IP,
                    &v4(A, DST4, PROTO_TCP, 0, 0, &tcp(40000, PORT, SYN, 0, 0)),
                ),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "802.1ad QinQ SYN",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[TPID_8021AD, TPID_8021Q],
                    ETH_IP,
                    &v4(A, DST4, PROTO_TCP, 0, 0, &tcp(40000, PORT, SYN, 0, 0)),
                ),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "VLAN tag cut short passes as not IP",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(&[TPID_8021Q], ETH_IP, &[])[..15].to_vec(),
                Verdict::Pass.action(),
                &[R::PassNotIp],
            )],
        },
        Case {
            name: "IPv6 through hop-by-hop, routing and destination options",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IPV6,
                    &v6(
                        src6(7),
                        packet::DST6,
                        &[(0, 8), (43, 24), (60, 16)],
                        PROTO_TCP,
                        0,
                        &tcp(40000, PORT, SYN, 0, 0),
                    ),
                ),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "IPv6 first fragment is judged",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IPV6,
                    &v6(
                        src6(7),
                        packet::DST6,
                        &[(44, 8)],
                        PROTO_TCP,
                        0,
                        &tcp(40000, PORT, SYN, 0, 0),
                    ),
                ),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "IPv6 non-first fragment passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IPV6,
                    &v6(src6(7), packet::DST6, &[(44, 8)], PROTO_TCP, 100, &[0; 32]),
                ),
                Verdict::Pass.action(),
                &[R::PassFragment],
            )],
        },
        Case {
            name: "IPv6 behind AH",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IPV6,
                    &v6(
                        src6(7),
                        packet::DST6,
                        &[(51, 16)],
                        PROTO_TCP,
                        0,
                        &tcp(40000, PORT, SYN, 0, 0),
                    ),
                ),
                Verdict::Pass.action(),
                admitted,
            )],
        },
        Case {
            name: "IPv6 with more extension headers than the bound is malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IPV6,
                    &v6(
                        src6(7),
                        packet::DST6,
                        &[(60, 8); 7],
                        PROTO_TCP,
                        0,
                        &tcp(40000, PORT, SYN, 0, 0),
                    ),
                ),
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "IPv6 UDP passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IPV6,
                    &v6(
                        src6(7),
                        packet::DST6,
                        &[(0, 8)],
                        PROTO_UDP,
                        0,
                        &udp(1, PORT),
                    ),
                ),
                Verdict::Pass.action(),
                &[R::PassNotTcp],
            )],
        },
        Case {
            name: "IPv4 non-first fragment passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                frame(
                    &[],
                    ETH_IP,
                    &v4(A, DST4, PROTO_TCP, 0, 0x2000 | 185, &[0; 40]),
                ),
                Verdict::Pass.action(),
                &[R::PassFragment],
            )],
        },
        Case {
            name: "IPv4 header cut short is malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                syn4(A)[..14 + 12].to_vec(),
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "IPv4 with IHL below 5 is malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                {
                    let mut p = syn4(A);
                    p[14] = 0x44;
                    p
                },
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "IPv6 header cut short is malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                tcp6(src6(7), 40000, PORT, SYN)[..14 + 30].to_vec(),
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "TCP header cut before the flags is malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                syn4(A)[..14 + 20 + 10].to_vec(),
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "TCP options cut short, to a listener: malformed",
            cfg: default_cfg,
            steps: vec![Pkt(
                ipv4_tcp(tcp(40000, PORT, SYN, 5, 0))[..14 + 20 + 24].to_vec(),
                Verdict::Drop.action(),
                &[R::DropMalformed],
            )],
        },
        Case {
            name: "TCP options cut short, to another port: passes",
            cfg: default_cfg,
            steps: vec![Pkt(
                ipv4_tcp(tcp(40000, 22, SYN, 5, 0))[..14 + 20 + 24].to_vec(),
                Verdict::Pass.action(),
                &[R::PassNotListener],
            )],
        },
        Case {
            name: "established packet of a known flow; FIN then last ACK removes it",
            cfg: default_cfg,
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished],
                ),
                Pkt(
                    ipv4_tcp(tcp(40000, PORT, ACK | PSH, 0, 100)),
                    Verdict::Pass.action(),
                    &[R::PassEstablished],
                ),
                Pkt(
                    tcp4(A, 40000, PORT, FIN | ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished],
                ),
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished, R::FlowRemoved],
                ),
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished, R::FlowMiss],
                ),
            ],
        },
        Case {
            name: "RST removes the flow",
            cfg: default_cfg,
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(
                    tcp4(A, 40000, PORT, RST),
                    Verdict::Pass.action(),
                    &[R::PassEstablished, R::FlowRemoved],
                ),
            ],
        },
        Case {
            name: "established packet of an unknown flow counts a miss",
            cfg: default_cfg,
            steps: vec![Pkt(
                tcp4(A, 40001, PORT, ACK),
                Verdict::Pass.action(),
                &[R::PassEstablished, R::FlowMiss],
            )],
        },
        Case {
            name: "flow table off: no flow events",
            cfg: |c| c.flow_table = false,
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), &[R::PassSynAdmitted]),
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished],
                ),
            ],
        },
        Case {
            name: "deny list (IPv4 and IPv6), for SYNs and established packets",
            cfg: |c| {
                c.deny = vec![
                    "198.51.100.0/24".parse().expect("cidr"),
                    "fd00:0:0:99::/64".parse().expect("cidr"),
                ]
            },
            steps: vec![
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropDenyCidr]),
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Drop.action(),
                    &[R::DropDenyCidr],
                ),
                Pkt(
                    tcp6(src6(7), 40000, PORT, SYN),
                    Verdict::Drop.action(),
                    &[R::DropDenyCidr],
                ),
                Pkt(syn4([203, 0, 113, 1]), Verdict::Pass.action(), admitted),
                Pkt(
                    tcp4(A, 40000, 22, SYN),
                    Verdict::Pass.action(),
                    &[R::PassNotListener],
                ),
            ],
        },
        Case {
            name: "allow mode admits only listed sources",
            cfg: |c| c.allow = vec!["198.51.100.7/32".parse().expect("cidr")],
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(syn4(B), Verdict::Drop.action(), &[R::DropNotAllowed]),
                Pkt(
                    tcp6(src6(7), 40000, PORT, SYN),
                    Verdict::Drop.action(),
                    &[R::DropNotAllowed],
                ),
            ],
        },
        Case {
            name: "per-source bucket: burst, then drops; other sources unaffected",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 3;
            },
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropSynRateSource]),
                Pkt(syn4(B), Verdict::Pass.action(), limited),
                // Under pressure an unproven source's flow was never inserted.
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished, R::FlowMiss],
                ),
            ],
        },
        Case {
            name: "per-source bucket keyed by prefix: a /24 shares one bucket",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 1;
                c.syn_rate.source_prefix_v4 = 24;
            },
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(B), Verdict::Drop.action(), &[R::DropSynRateSource]),
                Pkt(syn4([198, 51, 101, 7]), Verdict::Pass.action(), limited),
            ],
        },
        Case {
            name: "IPv6 sources in one /64 share a bucket",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 1;
            },
            steps: vec![
                Pkt(
                    tcp6(src6(7), 40000, PORT, SYN),
                    Verdict::Pass.action(),
                    limited,
                ),
                Pkt(
                    tcp6(src6(8), 40000, PORT, SYN),
                    Verdict::Drop.action(),
                    &[R::DropSynRateSource],
                ),
            ],
        },
        Case {
            name: "per-source bucket refills over time",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = 5;
                c.syn_rate.per_source_burst = 1;
            },
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropSynRateSource]),
                Sleep(Duration::from_millis(300)),
                Pkt(syn4(A), Verdict::Pass.action(), limited),
            ],
        },
        Case {
            name: "without SYN pressure (auto, the default) no source is rate limited",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Auto;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 1;
                c.syn_rate.global = floodgate::config::Budget::Fixed(1);
                c.syn_rate.global_burst = 1;
            },
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(syn4(B), Verdict::Pass.action(), admitted),
            ],
        },
        Case {
            name: "mode never: no rate limit, whatever the settings",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Never;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 1;
            },
            steps: vec![
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
            ],
        },
        Case {
            name: "trusted sources skip the rate limits under pressure; others do not",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 1;
                c.trusted = vec![
                    "198.51.100.0/24".parse().expect("cidr"),
                    "fd00:0:0:7::/64".parse().expect("cidr"),
                ];
            },
            steps: vec![
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassSynAdmitted, R::FlowInserted, R::SynTrustedBypass],
                ),
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassSynAdmitted, R::FlowInserted, R::SynTrustedBypass],
                ),
                Pkt(syn4([203, 0, 113, 1]), Verdict::Pass.action(), limited),
                Pkt(
                    syn4([203, 0, 113, 1]),
                    Verdict::Drop.action(),
                    &[R::DropSynRateSource],
                ),
            ],
        },
        Case {
            name: "verified sources skip the per-source bucket too",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = 1;
                c.syn_rate.per_source_burst = 1;
            },
            steps: vec![
                Verify(A),
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassSynAdmitted, R::FlowInserted, R::SynVerifiedBypass],
                ),
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassSynAdmitted, R::FlowInserted, R::SynVerifiedBypass],
                ),
                Pkt(syn4(B), Verdict::Pass.action(), limited),
                Pkt(syn4(B), Verdict::Drop.action(), &[R::DropSynRateSource]),
            ],
        },
        Case {
            name: "global budget caps SYNs from many sources",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                // Over-budget SYNs dropped, not answered with cookies (cases below).
                c.syn_cookies = floodgate::config::SynCookies::Never;
                let cpus = cpus();
                c.syn_rate.global = floodgate::config::Budget::Fixed(cpus); // one SYN per second per CPU
                c.syn_rate.global_burst = 2 * cpus; // two per CPU
            },
            steps: vec![
                Pkt(syn4([203, 0, 113, 1]), Verdict::Pass.action(), limited),
                Pkt(syn4([203, 0, 113, 2]), Verdict::Pass.action(), limited),
                Pkt(
                    syn4([203, 0, 113, 3]),
                    Verdict::Drop.action(),
                    &[R::DropSynRateGlobal],
                ),
            ],
        },
        Case {
            name: "verified sources skip an exhausted global budget; others do not",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                // Over-budget SYNs dropped, not answered with cookies (cases below).
                c.syn_cookies = floodgate::config::SynCookies::Never;
                let cpus = cpus();
                c.syn_rate.global = floodgate::config::Budget::Fixed(cpus);
                c.syn_rate.global_burst = cpus; // one SYN per CPU
            },
            steps: vec![
                Verify(A),
                Pkt(syn4(B), Verdict::Pass.action(), limited),
                Pkt(
                    syn4([203, 0, 113, 9]),
                    Verdict::Drop.action(),
                    &[R::DropSynRateGlobal],
                ),
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassSynAdmitted, R::FlowInserted, R::SynVerifiedBypass],
                ),
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassSynAdmitted, R::FlowInserted, R::SynVerifiedBypass],
                ),
            ],
        },
        Case {
            name: "verified-ttl 0 turns the bypass off",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                // Over-budget SYNs dropped, not answered with cookies (cases below).
                c.syn_cookies = floodgate::config::SynCookies::Never;
                let cpus = cpus();
                c.syn_rate.global = floodgate::config::Budget::Fixed(cpus);
                c.syn_rate.global_burst = cpus;
                c.verified_ttl = floodgate::config::HDuration::secs(0);
            },
            steps: vec![
                Verify(A),
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropSynRateGlobal]),
            ],
        },
        Case {
            name: "over the budget, a SYN gets an XDP cookie once one of its listener's SYNs reached the kernel",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                let cpus = cpus();
                c.syn_rate.global = floodgate::config::Budget::Fixed(cpus);
                c.syn_rate.global_burst = cpus; // one SYN per CPU
            },
            steps: vec![
                // Listener 1 (IPv6) takes the budget's one token: its SYN reaches the kernel.
                Pkt(
                    tcp6(src6(1), 40000, PORT, SYN),
                    Verdict::Pass.action(),
                    limited,
                ),
                // Listener 0 (IPv4) never had a SYN at the kernel: over the budget, dropped.
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropSynRateGlobal]),
                // Listener 1's kernel answered one: its SYNs over the budget get cookies.
                Pkt(
                    tcp6(src6(2), 40000, PORT, SYN),
                    Verdict::Tx.action(),
                    &[R::TxSynCookie],
                ),
                Pkt(
                    tcp6(src6(3), 40001, PORT, SYN),
                    Verdict::Tx.action(),
                    &[R::TxSynCookie],
                ),
                // A second later the budget has a token again: listener 0's turn.
                Sleep(Duration::from_millis(1100)),
                Pkt(syn4(A), Verdict::Pass.action(), limited),
                Pkt(syn4(B), Verdict::Tx.action(), &[R::TxSynCookie]),
                // A full listener gets none: the ACK would only overflow its accept queue.
                Load(10, 10),
                Pkt(
                    syn4([203, 0, 113, 5]),
                    Verdict::Drop.action(),
                    &[R::DropSynRateGlobal],
                ),
            ],
        },
        Case {
            name: "syn-cookies never: over-budget SYNs are dropped",
            cfg: |c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_cookies = floodgate::config::SynCookies::Never;
                let cpus = cpus();
                c.syn_rate.global = floodgate::config::Budget::Fixed(cpus);
                c.syn_rate.global_burst = cpus;
            },
            steps: vec![
                Pkt(
                    tcp6(src6(1), 40000, PORT, SYN),
                    Verdict::Pass.action(),
                    limited,
                ),
                Pkt(
                    tcp6(src6(2), 40000, PORT, SYN),
                    Verdict::Drop.action(),
                    &[R::DropSynRateGlobal],
                ),
            ],
        },
        Case {
            name: "capacity: full listener drops SYNs, established traffic continues, freed admits again",
            cfg: default_cfg,
            steps: vec![
                Load(10, 10),
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropCapacity]),
                Pkt(
                    tcp4(A, 40000, PORT, ACK),
                    Verdict::Pass.action(),
                    &[R::PassEstablished, R::FlowMiss],
                ),
                Load(9, 10),
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
            ],
        },
        Case {
            name: "capacity: every backend behind the listener full with a full queue drops SYNs",
            cfg: default_cfg,
            steps: vec![
                BackendsFull,
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropCapacity]),
                Load(0, 10),
                Pkt(syn4(A), Verdict::Pass.action(), admitted),
            ],
        },
        Case {
            name: "capacity: a stale heartbeat fails open",
            cfg: default_cfg,
            steps: vec![
                Load(10, 10),
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropCapacity]),
                AgeHeartbeat(Duration::from_secs(3)),
                Pkt(
                    syn4(A),
                    Verdict::Pass.action(),
                    &[R::PassFailOpen, R::FlowInserted],
                ),
                Load(10, 10),
                Pkt(syn4(A), Verdict::Drop.action(), &[R::DropCapacity]),
            ],
        },
        Case {
            name: "capacity admission off ignores the load",
            cfg: |c| c.capacity_admission = false,
            steps: vec![Load(10, 10), Pkt(syn4(A), Verdict::Pass.action(), admitted)],
        },
    ]
}

#[test]
fn every_verdict_and_reason() {
    if !require_root("every_verdict_and_reason") {
        return;
    }
    pin_to_cpu(0);
    let binds = [
        "10.0.0.1:8080".parse().unwrap(),
        "[fd00::1]:8080".parse().unwrap(),
    ];
    let mut failures = Vec::new();
    let mut seen = [false; COUNTER_COUNT as usize];
    for case in cases() {
        let mut xdp = TestProg::xdp_config();
        (case.cfg)(&mut xdp);
        let mut prog = TestProg::load(&xdp, &binds);
        // A healthy proxy: fresh heartbeat, room on every listener.
        for id in 0..2 {
            prog.publish(ListenerLoad {
                id,
                active: 0,
                maxconn: 100,
                queue_room: u32::MAX,
            });
        }
        for (i, step) in case.steps.iter().enumerate() {
            match step {
                Load(active, maxconn) => prog.publish(ListenerLoad {
                    id: 0,
                    active: *active,
                    maxconn: *maxconn,
                    queue_room: u32::MAX,
                }),
                BackendsFull => prog.publish(ListenerLoad {
                    id: 0,
                    active: 0,
                    maxconn: 10,
                    queue_room: 0,
                }),
                AgeHeartbeat(d) => prog.age_heartbeat(*d),
                Verify(ip) => prog
                    .dp
                    .verify([std::net::IpAddr::from(*ip)])
                    .expect("verify"),
                Sleep(d) => std::thread::sleep(*d),
                Pkt(pkt, want_action, want_reasons) => {
                    let before = prog.counters();
                    let action = prog.run(pkt);
                    let after = prog.counters();
                    let at = format!("{} (step {i})", case.name);
                    if action != *want_action {
                        failures.push(format!("{at}: action {action}, want {want_action}"));
                    }
                    for r in Reason::ALL {
                        let dp = after[r as usize].packets - before[r as usize].packets;
                        let db = after[r as usize].bytes - before[r as usize].bytes;
                        let want = u64::from(want_reasons.contains(&r));
                        if dp != want {
                            failures.push(format!("{at}: {} moved by {dp}, want {want}", r.name()));
                        }
                        if r.verdict().is_some() && db != want * pkt.len() as u64 {
                            failures.push(format!(
                                "{at}: {} bytes moved by {db}, want {}",
                                r.name(),
                                want * pkt.len() as u64
                            ));
                        }
                        if dp > 0 {
                            seen[r as usize] = true;
                        }
                    }
                    let verdicts = want_reasons
                        .iter()
                        .filter(|r| r.verdict().is_some())
                        .count();
                    assert_eq!(
                        verdicts, 1,
                        "{at}: a case must expect exactly one verdict reason"
                    );
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let unseen: Vec<_> = Reason::ALL
        .iter()
        .filter(|r| !seen[**r as usize])
        .map(|r| r.name())
        .collect();
    assert!(unseen.is_empty(), "reasons no case exercised: {unseen:?}");
}

#[test]
fn listener_counters_split_admitted_dropped_and_established() {
    if !require_root("listener_counters_split_admitted_dropped_and_established") {
        return;
    }
    let mut xdp = TestProg::xdp_config();
    xdp.syn_rate.per_source = 1;
    xdp.syn_rate.per_source_burst = 1;
    xdp.pressure.mode = floodgate::config::PressureMode::Always;
    let mut prog = TestProg::load(
        &xdp,
        &[
            "10.0.0.1:8080".parse().unwrap(),
            "[fd00::1]:8443".parse().unwrap(),
        ],
    );
    prog.publish(ListenerLoad {
        id: 0,
        active: 0,
        maxconn: 10,
        queue_room: u32::MAX,
    });
    assert_eq!(prog.run(&syn4(A)), Verdict::Pass.action());
    assert_eq!(prog.run(&syn4(A)), Verdict::Drop.action());
    let ack = tcp4(A, 40000, PORT, ACK);
    assert_eq!(prog.run(&ack), Verdict::Pass.action());
    assert_eq!(
        prog.run(&tcp6(src6(1), 1, 8443, SYN)),
        Verdict::Pass.action()
    );
    let l0 = prog.listener_counters(0);
    assert_eq!(
        (l0.syn_admitted, l0.syn_dropped, l0.established_packets),
        (1, 1, 1)
    );
    assert_eq!(l0.established_bytes, ack.len() as u64);
    let l1 = prog.listener_counters(1);
    assert_eq!((l1.syn_admitted, l1.syn_dropped), (1, 0));
}

#[test]
fn idle_flows_age_out_of_the_flow_table() {
    if !require_root("idle_flows_age_out_of_the_flow_table") {
        return;
    }
    let mut prog = TestProg::load(&TestProg::xdp_config(), &["10.0.0.1:8080".parse().unwrap()]);
    prog.publish(ListenerLoad {
        id: 0,
        active: 0,
        maxconn: 10,
        queue_room: u32::MAX,
    });
    assert_eq!(prog.run(&syn4(A)), Verdict::Pass.action());
    assert_eq!(prog.run(&syn4(B)), Verdict::Pass.action());
    let aged = prog.dp.age_flows(Duration::from_secs(60)).unwrap();
    assert_eq!((aged.removed, aged.live), (0, 2), "fresh flows stay");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        prog.run(&tcp4(A, 40000, PORT, ACK)),
        Verdict::Pass.action(),
        "refreshes A"
    );
    let aged = prog.dp.age_flows(Duration::from_millis(30)).unwrap();
    assert_eq!((aged.removed, aged.live), (1, 1), "only B was idle");
    let before = prog.counters()[R::FlowMiss as usize].packets;
    prog.run(&tcp4(B, 40000, PORT, ACK));
    assert_eq!(
        prog.counters()[R::FlowMiss as usize].packets,
        before + 1,
        "B is gone"
    );
}

/// The Bloom filter in front of `FG_VERIFIED` (`maps::VERIFIED_FILTER`) follows the table: a
/// source in the table but not in the filter (what a restart leaves: the table is reused, the
/// filter starts empty) stays unseen until a rebuild from the table, which `Dataplane::start`
/// does first; a rebuild once the source has expired clears its bit again.
#[test]
fn the_verified_filter_follows_the_verified_table() {
    if !require_root("the_verified_filter_follows_the_verified_table") {
        return;
    }
    // The global budget is per CPU: stay on one.
    pin_to_cpu(0);
    let mut xdp = TestProg::xdp_config();
    xdp.pressure.mode = floodgate::config::PressureMode::Always;
    xdp.syn_cookies = floodgate::config::SynCookies::Never;
    xdp.syn_rate.global = floodgate::config::Budget::Fixed(cpus());
    xdp.syn_rate.global_burst = cpus();
    let mut prog = TestProg::load(&xdp, &["10.0.0.1:8080".parse().unwrap()]);
    prog.publish(ListenerLoad {
        id: 0,
        active: 0,
        maxconn: 10,
        queue_room: u32::MAX,
    });
    // Whatever the budget holds (one SYN, or one more if a second passed) goes to another
    // source first, so that A is judged against an empty budget.
    let spend = |prog: &mut TestProg| {
        for port in 0..2 {
            prog.run(&tcp4([203, 0, 113, 9], 41000 + port, PORT, SYN));
        }
    };
    let mut table: aya::maps::HashMap<_, floodgate_common::SrcKey, u64> =
        aya::maps::HashMap::try_from(
            prog.dp
                .ebpf_mut()
                .map_mut(floodgate_common::maps::VERIFIED)
                .unwrap(),
        )
        .unwrap();
    let key = floodgate_common::SrcKey {
        addr: std::net::Ipv4Addr::from(A).to_ipv6_mapped().octets(),
    };
    table
        .insert(key, floodgate::xdp::dataplane::monotonic_ns(), 0)
        .unwrap();
    spend(&mut prog);
    assert_eq!(
        prog.run(&syn4(A)),
        Verdict::Drop.action(),
        "in the table, not in the filter: unseen"
    );
    prog.dp
        .refresh_verified_filter(Duration::from_secs(600))
        .unwrap();
    spend(&mut prog);
    let before = prog.counters()[R::SynVerifiedBypass as usize].packets;
    assert_eq!(
        prog.run(&syn4(A)),
        Verdict::Pass.action(),
        "seen after the rebuild"
    );
    assert_eq!(
        prog.counters()[R::SynVerifiedBypass as usize].packets,
        before + 1
    );
    // A rebuild with a TTL A has outlived clears its bit, though the program's own TTL
    // (verified-ttl, 600 s) would still take the table's entry.
    std::thread::sleep(Duration::from_millis(20));
    prog.dp
        .refresh_verified_filter(Duration::from_millis(10))
        .unwrap();
    spend(&mut prog);
    assert_eq!(
        prog.run(&syn4(A)),
        Verdict::Drop.action(),
        "expired from the filter"
    );
}

/// The flow table is walked and trimmed in batches of 4,096: ten thousand flows age out in a
/// few syscalls, and a key that is gone by the time of the delete is skipped, not an error.
#[test]
fn aging_walks_and_trims_a_large_flow_table_in_batches() {
    if !require_root("aging_walks_and_trims_a_large_flow_table_in_batches") {
        return;
    }
    pin_to_cpu(0);
    const FLOWS: u16 = 10_000;
    // Each CPU's LRU list holds its share of the table: room for every flow on this one.
    // SAFETY: sysconf has no preconditions.
    let cpus = u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).unwrap();
    let mut xdp = TestProg::xdp_config();
    xdp.flow_table_size = 2 * u32::from(FLOWS) * cpus;
    let mut prog = TestProg::load(&xdp, &["10.0.0.1:8080".parse().unwrap()]);
    prog.publish(ListenerLoad {
        id: 0,
        active: 0,
        maxconn: 10,
        queue_room: u32::MAX,
    });
    for port in 0..FLOWS {
        assert_eq!(
            prog.run(&tcp4(A, 20_000 + port, PORT, SYN)),
            Verdict::Pass.action()
        );
    }
    let aged = prog.dp.age_flows(Duration::from_secs(60)).unwrap();
    assert_eq!((aged.removed, aged.live), (0, u64::from(FLOWS)));
    // Three keys, the middle one never inserted: two deleted.
    let key = |port: u16| floodgate_common::FlowKey {
        saddr: std::net::Ipv4Addr::from(A).to_ipv6_mapped().octets(),
        daddr: std::net::Ipv4Addr::from(packet::DST4)
            .to_ipv6_mapped()
            .octets(),
        sport: port,
        dport: PORT,
    };
    let map = prog
        .dp
        .ebpf_mut()
        .map(floodgate_common::maps::FLOWS)
        .unwrap();
    let aya::maps::Map::LruHashMap(data) = map else {
        panic!("the flow table is an LRU hash");
    };
    let fd = std::os::fd::AsFd::as_fd(data.fd());
    let deleted = floodgate::xdp::batch::delete(fd, &[key(20_000), key(1), key(20_001)]).unwrap();
    assert_eq!(deleted, 2, "the missing key is skipped");
    std::thread::sleep(Duration::from_millis(50));
    let aged = prog.dp.age_flows(Duration::from_millis(20)).unwrap();
    assert_eq!(
        (aged.removed, aged.live),
        (usize::from(FLOWS) - 2, 0),
        "every idle flow removed"
    );
}

/// A reload that replaces a full CIDR list with another full one fits (stale entries go
/// before new ones come), and turning allow mode off never leaves an emptied allow list
/// enforced.
#[test]
fn a_reload_swaps_full_cidr_lists_and_turns_allow_mode_off_cleanly() {
    if !require_root("a_reload_swaps_full_cidr_lists_and_turns_allow_mode_off_cleanly") {
        return;
    }
    let binds = ["10.0.0.1:8080".parse().unwrap()];
    let max = floodgate_common::MAX_CIDRS;
    // /32s in 100.64.0.0/10 and then in 100.128.0.0/10: `max` each, none in common.
    let list = |base: u32| -> Vec<ipnet::IpNet> {
        (0..max)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(base + i);
                ipnet::IpNet::V4(ipnet::Ipv4Net::new(a, 32).unwrap())
            })
            .collect()
    };
    let first = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0));
    let second = u32::from(std::net::Ipv4Addr::new(100, 128, 0, 0));
    let mut xdp = TestProg::xdp_config();
    xdp.deny = list(first);
    let mut prog = TestProg::load(&xdp, &binds);
    let syn_from = |a: u32| syn4(std::net::Ipv4Addr::from(a).octets());
    assert_eq!(prog.run(&syn_from(first + 5)), Verdict::Drop.action());
    xdp.deny = list(second);
    prog.dp
        .configure(&xdp, &binds)
        .expect("a full list replaced by another full one");
    assert_eq!(
        prog.run(&syn_from(first + 5)),
        Verdict::Pass.action(),
        "no longer denied"
    );
    assert_eq!(
        prog.run(&syn_from(second + 5)),
        Verdict::Drop.action(),
        "newly denied"
    );
    // Allow mode on, then off.
    xdp.deny.clear();
    xdp.allow = vec!["198.51.100.0/24".parse().unwrap()];
    prog.dp.configure(&xdp, &binds).unwrap();
    assert_eq!(prog.run(&syn4(A)), Verdict::Pass.action());
    assert_eq!(prog.run(&syn4([203, 0, 113, 1])), Verdict::Drop.action());
    xdp.allow.clear();
    prog.dp.configure(&xdp, &binds).unwrap();
    assert_eq!(
        prog.run(&syn4([203, 0, 113, 1])),
        Verdict::Pass.action(),
        "allow mode off"
    );
}

/// A SYN as Linux sends it: MSS 1460, SACK permitted, timestamps, window scale 7.
fn syn_with_options(sport: u16) -> Vec<u8> {
    let mut t = tcp(sport, PORT, SYN, 5, 0);
    t[20..40].copy_from_slice(&[
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ]);
    t
}

#[test]
fn an_xdp_syn_cookie_answer_is_a_well_formed_syn_ack() {
    if !require_root("an_xdp_syn_cookie_answer_is_a_well_formed_syn_ack") {
        return;
    }
    pin_to_cpu(0);
    let binds = [
        "10.0.0.1:8080".parse().unwrap(),
        "[fd00::1]:8080".parse().unwrap(),
    ];
    let mut xdp = TestProg::xdp_config();
    xdp.pressure.mode = config::PressureMode::Always;
    // A budget of one SYN per second per CPU, with a burst of one.
    let cpus = cpus();
    xdp.syn_rate.global = config::Budget::Fixed(cpus);
    xdp.syn_rate.global_burst = cpus;
    let mut prog = TestProg::load(&xdp, &binds);
    for id in 0..2 {
        prog.publish(ListenerLoad {
            id,
            active: 0,
            maxconn: 100,
            queue_room: u32::MAX,
        });
    }
    // Listener 0's first SYN reaches the kernel (and spends the budget); the next is answered.
    assert_eq!(prog.run(&syn4(A)), Verdict::Pass.action());
    let client = [203, 0, 113, 77];
    let syn = frame(
        &[TPID_8021Q],
        ETH_IP,
        &v4(client, DST4, PROTO_TCP, 0, 0x4000, &syn_with_options(51000)),
    );
    let (action, out) = prog.run_out(&syn);
    assert_eq!(action, Verdict::Tx.action());
    // Ethernet: addresses swapped, the VLAN tag kept.
    assert_eq!(out[0..6], syn[6..12], "destination MAC is the client's");
    assert_eq!(out[6..12], syn[0..6]);
    assert_eq!(out[12..18], syn[12..18]);
    let ip = &out[18..38];
    let t = &out[38..];
    assert_eq!(
        t.len(),
        24,
        "a TCP header with the MSS option, nothing after it"
    );
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 44);
    assert_eq!(ip[9], 6);
    assert_eq!(ip[12..16], DST4, "from the listener's address");
    assert_eq!(ip[16..20], client);
    assert_eq!(csum(ip), 0, "IPv4 header checksum");
    assert_eq!(u16::from_be_bytes([t[0], t[1]]), PORT);
    assert_eq!(u16::from_be_bytes([t[2], t[3]]), 51000);
    let syn_seq = 0x0102_0304u32;
    assert_eq!(
        u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        syn_seq + 1,
        "acknowledges the SYN"
    );
    assert_eq!(t[12] >> 4, 6);
    assert_eq!(t[13], SYN | ACK);
    assert_eq!(t[20..22], [2, 4], "MSS option");
    let mss = u16::from_be_bytes([t[22], t[23]]);
    assert!(mss >= 536, "advertised MSS {mss}");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 24]);
    pseudo.extend_from_slice(t);
    assert_eq!(csum(&pseudo), 0, "TCP checksum");
    // Two SYNs of one connection get one cookie; another port another.
    let isn = |out: &[u8]| u32::from_be_bytes([out[42], out[43], out[44], out[45]]);
    let (_, again) = prog.run_out(&syn);
    assert_eq!(
        isn(&again),
        isn(&out),
        "a retransmitted SYN gets the same cookie"
    );
    let other = frame(
        &[TPID_8021Q],
        ETH_IP,
        &v4(client, DST4, PROTO_TCP, 0, 0x4000, &syn_with_options(51001)),
    );
    let (_, other) = prog.run_out(&other);
    assert_ne!(isn(&other), isn(&out));

    // IPv6, listener 1: its first SYN reaches the kernel... once the budget has a token.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        prog.run(&tcp6(src6(1), 40000, PORT, SYN)),
        Verdict::Pass.action()
    );
    let syn = frame(
        &[],
        ETH_IPV6,
        &v6(
            src6(9),
            packet::DST6,
            &[],
            PROTO_TCP,
            0,
            &syn_with_options(52000),
        ),
    );
    let (action, out) = prog.run_out(&syn);
    assert_eq!(action, Verdict::Tx.action());
    let ip = &out[14..54];
    let t = &out[54..];
    assert_eq!(t.len(), 24);
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 24);
    assert_eq!(ip[6], 6);
    assert_eq!(ip[8..24], packet::DST6);
    assert_eq!(ip[24..40], src6(9));
    assert_eq!(t[13], SYN | ACK);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[8..40]);
    pseudo.extend_from_slice(&[0, 0, 0, 24, 0, 0, 0, 6]);
    pseudo.extend_from_slice(t);
    assert_eq!(csum(&pseudo), 0, "TCP checksum over IPv6");
    // Counted as answered, not as dropped.
    let c = prog.counters();
    assert_eq!(c[R::TxSynCookie as usize].packets, 4);
    assert_eq!(c[R::DropSynRateGlobal as usize].packets, 0);
}

/// The map behind an aya `Map` of a kind the contract uses.
fn map_data(map: &aya::maps::Map) -> Option<&aya::maps::MapData> {
    use aya::maps::Map as M;
    match map {
        M::Array(d) | M::PerCpuArray(d) | M::HashMap(d) | M::LruHashMap(d) | M::LpmTrie(d) => {
            Some(d)
        }
        _ => None,
    }
}

/// The loaded object has exactly the maps of `maps::SPECS` (plus the program's own scratch
/// maps, aya-log's and constant sections), each of the type, sizes, entries and flags the contract says.
#[test]
fn the_loaded_object_matches_the_map_specs() {
    if !require_root("the_loaded_object_matches_the_map_specs") {
        return;
    }
    let xdp = TestProg::xdp_config();
    let mut prog = TestProg::load(&xdp, &["10.0.0.1:8080".parse().unwrap()]);
    let mut seen = Vec::new();
    for (name, map) in prog.dp.ebpf_mut().maps() {
        // The compiler's constant sections (`.rodata*`) and aya-log's maps are no contract.
        if floodgate_common::maps::PROGRAM_ONLY.contains(&name)
            || name.starts_with("AYA_")
            || name.starts_with('.')
        {
            continue;
        }
        let spec = floodgate_common::maps::spec_of(name)
            .unwrap_or_else(|| panic!("{name} is in the object but not in maps::SPECS"));
        let info = map_data(map)
            .unwrap_or_else(|| panic!("{name}: unexpected kind of map"))
            .info()
            .unwrap();
        let configured = match name {
            n if n == floodgate_common::maps::FLOWS => Some(xdp.flow_table_size),
            n if n == floodgate_common::maps::SRC_BUCKETS => Some(xdp.syn_rate.source_table_size),
            n if n == floodgate_common::maps::VERIFIED => Some(xdp.verified_table_size),
            _ => None,
        };
        assert!(
            floodgate::xdp::dataplane::matches_spec(&info, spec, configured),
            "{name}: type {:?}, key {}, value {}, entries {}, flags {:#x}; spec {spec:?}",
            info.map_type(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags()
        );
        seen.push(name.to_owned());
    }
    for spec in floodgate_common::maps::SPECS {
        assert!(
            seen.iter().any(|n| n == spec.name),
            "{} is in maps::SPECS but not in the object",
            spec.name
        );
    }
}

/// docs/xdp.md's map table names every map of the contract with its kind.
#[test]
fn the_map_table_of_the_docs_matches_the_specs() {
    use floodgate_common::maps::{Kind, PROGRAM_ONLY, SPECS};
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/xdp.md")).unwrap();
    let rows: Vec<(&str, &str)> = doc
        .lines()
        .filter(|l| l.starts_with("| `FG_"))
        .map(|l| {
            let mut cols = l.split('|').skip(1);
            (cols.next().unwrap_or(""), cols.next().unwrap_or(""))
        })
        .collect();
    // A row may name a pair: `FG_DENY_V4/V6`.
    let names = |col: &str| -> Vec<String> {
        col.split(',')
            .map(|n| n.trim().trim_matches('`').to_owned())
            .flat_map(|n| match n.strip_suffix("_V4/V6") {
                Some(base) => vec![format!("{base}_V4"), format!("{base}_V6")],
                None => vec![n],
            })
            .collect()
    };
    for spec in SPECS {
        let (_, kind) = rows
            .iter()
            .find(|(col, _)| names(col).iter().any(|n| n == spec.name))
            .unwrap_or_else(|| panic!("docs/xdp.md has no row for {}", spec.name));
        let kind = kind.trim();
        let ok = match spec.kind {
            Kind::Array => kind.starts_with("array"),
            Kind::PerCpuArray => kind.starts_with("per-CPU array"),
            Kind::Hash => kind.starts_with("hash"),
            Kind::LruHash => kind.starts_with("LRU hash"),
            Kind::LpmTrie => kind.starts_with("LPM trie"),
        };
        assert!(
            ok,
            "docs/xdp.md calls {} a `{kind}`: it is {:?}",
            spec.name, spec.kind
        );
    }
    for (col, _) in &rows {
        for n in names(col) {
            assert!(
                SPECS.iter().any(|s| s.name == n) || PROGRAM_ONLY.contains(&n.as_str()),
                "docs/xdp.md names {n}, which is not a map of the contract"
            );
        }
    }
}
