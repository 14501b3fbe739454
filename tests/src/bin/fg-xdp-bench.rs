//! `cargo xtask bench xdp`: kernel-reported ns per packet through `BPF_PROG_TEST_RUN`, per path
//! of the admission program. Each path runs `REPEAT` times per sample; the median of `SAMPLES`
//! samples is reported, with the spread. `PATHS=word,word` runs only the rows naming one of them.

use std::time::Duration;

use floodgate::xdp::dataplane::ListenerLoad;
use floodgate_common::Verdict;
use floodgate_tests::{
    TestProg,
    packet::{ACK, DST4, ETH_IP, PROTO_UDP, SYN, frame, tcp4, udp, v4},
    pin_to_cpu,
};

const REPEAT: u32 = 1_000_000;
const SAMPLES: usize = 11;
const A: [u8; 4] = [198, 51, 100, 7];
const B: [u8; 4] = [203, 0, 113, 9];

struct Path {
    name: &'static str,
    want: u32,
    pkt: Vec<u8>,
    /// Prepares the program for this path (config, map state).
    prog: TestProg,
    /// Active connections published for the listener (maxconn is 100).
    active: u32,
    /// Run the packet once per test run (`SINGLE_RUNS` of them per sample) instead of `REPEAT`
    /// times in one: a test run's repeats share one buffer, and a path that rewrites the
    /// packet (a SYN answered with a cookie) would measure its own answer from the second on.
    single: bool,
    /// With `single`: each run's SYN from another source (`random_source`), so every one is a
    /// first-time source, as in a spoofed flood.
    random_sources: bool,
}

/// A source address per run, spread over 198.18.0.0/15.
fn random_source(i: u32) -> [u8; 4] {
    let x = i.wrapping_mul(2_654_435_761);
    [198, 18 + (x >> 31) as u8, (x >> 8) as u8, x as u8 | 1]
}

const SINGLE_RUNS: u32 = 20_000;

fn prog(f: impl FnOnce(&mut floodgate::config::Xdp)) -> TestProg {
    let mut xdp = TestProg::xdp_config();
    xdp.flow_table_size = 65_536;
    xdp.syn_rate.source_table_size = 65_536;
    f(&mut xdp);
    TestProg::load(&xdp, &["10.0.0.1:8080".parse().expect("bind")])
}

fn main() {
    pin_to_cpu(0);
    let syn = tcp4(A, 40000, 8080, SYN);
    let mut established = prog(|_| {});
    established.publish(ListenerLoad {
        id: 0,
        active: 0,
        maxconn: 100,
        queue_room: u32::MAX,
    });
    assert_eq!(
        established.run(&syn),
        Verdict::Pass.action(),
        "flow insert for the established path"
    );
    let mut bucket_empty = prog(|c| {
        c.pressure.mode = floodgate::config::PressureMode::Always;
        c.syn_rate.per_source = 1;
        c.syn_rate.per_source_burst = 1;
    });
    bucket_empty.run(&syn);
    // A spoofed source under pressure with the global budget spent: the same packet repeated
    // stays unknown (a SYN the budget drops is never inserted), as a random source would.
    // Another source spends the budget; the measured source is then dropped by it on its very
    // first SYN, every time. `verified`: with a full default verified table (65,536 sources
    // the proxy accepted, 10.0.0.0/16): the filter in front of it (`maps::VERIFIED_FILTER`)
    // has 3% of its bits set, and the sources that hit one pay the LRU lookup.
    let spent_budget = |verified: bool| {
        let mut p = prog(|c| {
            c.pressure.mode = floodgate::config::PressureMode::Always;
            c.syn_cookies = floodgate::config::SynCookies::Never;
            c.syn_rate.global = floodgate::config::Budget::Fixed(1);
            c.syn_rate.global_burst = 1;
        });
        if verified {
            p.dp.verify(
                (0..65_536u32)
                    .map(|i| std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | i))),
            )
            .expect("verify");
        }
        p.publish(ListenerLoad {
            id: 0,
            active: 0,
            maxconn: 100,
            queue_room: u32::MAX,
        });
        p.run(&tcp4(B, 40000, 8080, SYN));
        p.run(&tcp4(B, 40001, 8080, SYN));
        p
    };
    let budget_empty = spent_budget(false);
    // The same with cookies on (the default): the first SYN reaches the kernel, the measured
    // one is answered with a SYN-ACK from XDP.
    let mut cookies = prog(|c| {
        c.pressure.mode = floodgate::config::PressureMode::Always;
        c.syn_rate.global = floodgate::config::Budget::Fixed(1);
        c.syn_rate.global_burst = 1;
    });
    cookies.publish(ListenerLoad {
        id: 0,
        active: 0,
        maxconn: 100,
        queue_room: u32::MAX,
    });
    cookies.run(&tcp4(B, 40000, 8080, SYN));
    cookies.run(&tcp4(B, 40001, 8080, SYN));
    let mut paths = vec![
        Path {
            name: "non-TCP (UDP) pass",
            want: Verdict::Pass.action(),
            pkt: frame(&[], ETH_IP, &v4(A, DST4, PROTO_UDP, 0, 0, &udp(5353, 8080))),
            prog: prog(|_| {}),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "TCP to another port pass",
            want: Verdict::Pass.action(),
            pkt: tcp4(A, 40000, 22, SYN),
            prog: prog(|_| {}),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "established on a listener (bypass counted, flow refreshed)",
            want: Verdict::Pass.action(),
            pkt: tcp4(A, 40000, 8080, ACK),
            prog: established,
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "  same, flow table off",
            want: Verdict::Pass.action(),
            pkt: tcp4(A, 40000, 8080, ACK),
            prog: prog(|c| c.flow_table = false),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "SYN admitted, default config, no pressure (capacity, flow insert)",
            want: Verdict::Pass.action(),
            pkt: syn.clone(),
            prog: prog(|c| c.pressure.mode = floodgate::config::PressureMode::Auto),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            // The global budget and per-source rate are high enough never to drop here.
            name: "SYN admitted under pressure (budget, bucket, capacity, flow insert)",
            want: Verdict::Pass.action(),
            pkt: syn.clone(),
            prog: prog(|c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = u32::MAX / 2;
                c.syn_rate.per_source_burst = u32::MAX / 2;
                c.syn_rate.global = floodgate::config::Budget::Fixed(u32::MAX / 2);
                c.syn_rate.global_burst = u32::MAX / 2;
            }),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            // The global budget and per-source rate are high enough never to drop here.
            name: "random-source SYN admitted under pressure (bucket insert; single runs)",
            want: Verdict::Pass.action(),
            pkt: syn.clone(),
            prog: prog(|c| {
                c.pressure.mode = floodgate::config::PressureMode::Always;
                c.syn_rate.per_source = u32::MAX / 2;
                c.syn_rate.per_source_burst = u32::MAX / 2;
                c.syn_rate.global = floodgate::config::Budget::Fixed(u32::MAX / 2);
                c.syn_rate.global_burst = u32::MAX / 2;
            }),
            active: 0,
            single: true,
            random_sources: true,
        },
        Path {
            name: "SYN admitted, rate limits off (capacity, flow insert)",
            want: Verdict::Pass.action(),
            pkt: syn.clone(),
            prog: prog(|c| {
                c.syn_rate.per_source = 0;
                c.syn_rate.global = floodgate::config::Budget::Fixed(0);
            }),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "SYN admitted, rate limits and flow table off",
            want: Verdict::Pass.action(),
            pkt: syn.clone(),
            prog: prog(|c| {
                c.syn_rate.per_source = 0;
                c.syn_rate.global = floodgate::config::Budget::Fixed(0);
                c.flow_table = false;
            }),
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "spoofed SYN dropped by the global budget (never inserted)",
            want: Verdict::Drop.action(),
            pkt: syn.clone(),
            prog: budget_empty,
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "random-source SYN dropped by the global budget (single runs)",
            want: Verdict::Drop.action(),
            pkt: syn.clone(),
            prog: spent_budget(false),
            active: 0,
            single: true,
            random_sources: true,
        },
        Path {
            name: "  same, 65,536 verified sources (single runs)",
            want: Verdict::Drop.action(),
            pkt: syn.clone(),
            prog: spent_budget(true),
            active: 0,
            single: true,
            random_sources: true,
        },
        Path {
            name: "spoofed SYN answered with an XDP SYN cookie (Verdict::Tx.action())",
            want: Verdict::Tx.action(),
            pkt: syn.clone(),
            prog: cookies,
            active: 0,
            single: true,
            random_sources: false,
        },
        Path {
            name: "  floor of single runs: non-TCP (UDP) pass",
            want: Verdict::Pass.action(),
            pkt: frame(&[], ETH_IP, &v4(A, DST4, PROTO_UDP, 0, 0, &udp(5353, 8080))),
            prog: prog(|_| {}),
            active: 0,
            single: true,
            random_sources: false,
        },
        Path {
            name: "SYN dropped by source bucket",
            want: Verdict::Drop.action(),
            pkt: syn.clone(),
            prog: bucket_empty,
            active: 0,
            single: false,
            random_sources: false,
        },
        Path {
            name: "SYN dropped by capacity",
            want: Verdict::Drop.action(),
            pkt: syn.clone(),
            prog: prog(|_| {}),
            active: 100,
            single: false,
            random_sources: false,
        },
    ];
    // PATHS=word,word runs only the rows whose name contains one of the words.
    if let Ok(only) = std::env::var("PATHS") {
        let words: Vec<&str> = only.split(',').filter(|w| !w.is_empty()).collect();
        paths.retain(|p| words.iter().any(|w| p.name.contains(w)));
    }
    println!(
        "{:<58} {:>9} {:>9} {:>9}",
        "path", "median ns", "min ns", "max ns"
    );
    // Rounds, not one path after another: each round runs every path once, so that the slow
    // and fast phases of a shared host (this VM's readings move by 1.5-2x for seconds at a
    // time, the UDP floor included) fall on every path alike, as in an A/B comparison.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(SAMPLES); paths.len()];
    for sample in 0..SAMPLES as u32 {
        for (p, out) in paths.iter_mut().zip(samples.iter_mut()) {
            out.push(sample_path(p, sample));
        }
    }
    for (p, mut samples) in paths.iter().zip(samples) {
        samples.sort();
        println!(
            "{:<58} {:>9} {:>9} {:>9}",
            p.name,
            samples[SAMPLES / 2].as_nanos(),
            samples[0].as_nanos(),
            samples[SAMPLES - 1].as_nanos()
        );
    }
    println!(
        "({SAMPLES} samples of {REPEAT} runs each ({SINGLE_RUNS} single runs for the rows that say so), \
         pinned to CPU 0; kernel-reported mean per run)"
    );
}

/// One sample of `p`: the kernel-reported mean time of a run.
fn sample_path(p: &mut Path, sample: u32) -> Duration {
    // The capacity path needs a fresh heartbeat, or it fails open after 2 s.
    p.prog.publish(ListenerLoad {
        id: 0,
        active: p.active,
        maxconn: 100,
        queue_room: u32::MAX,
    });
    let (action, d) = if p.single {
        // The budget refills one SYN a second, which passes: such runs are left
        // out, and they must stay that rare.
        let (mut total, mut runs, mut other) = (Duration::ZERO, 0u32, 0u32);
        for i in 0..SINGLE_RUNS {
            let varied;
            let pkt = if p.random_sources {
                varied = tcp4(random_source(i + sample * SINGLE_RUNS), 40000, 8080, SYN);
                &varied
            } else {
                &p.pkt
            };
            let (a, d) = p.prog.run_repeat(pkt, 1);
            if a == p.want {
                total += d;
                runs += 1;
            } else {
                other += 1;
            }
        }
        let action = if other * 100 > SINGLE_RUNS {
            u32::MAX
        } else {
            p.want
        };
        (action, total / runs.max(1))
    } else {
        p.prog.run_repeat(&p.pkt, REPEAT)
    };
    if action != p.want {
        let c = p.prog.counters();
        let moved: Vec<_> = floodgate_common::Reason::ALL
            .iter()
            .filter(|r| c[**r as usize].packets > 0)
            .map(|r| (r.name(), c[*r as usize].packets))
            .collect();
        panic!(
            "{}: action {action}, want {}; counters {moved:?}",
            p.name, p.want
        );
    }
    d
}
