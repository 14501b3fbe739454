//! The XDP program under `BPF_PROG_TEST_RUN`: verdicts, counters and the maps the proxy writes.

use std::{net::SocketAddr, time::Duration};

use aya::{
    TestRun as _, TestRunOptions,
    maps::{Array, PerCpuArray},
};
use floodgate::{
    config,
    xdp::dataplane::{Dataplane, ListenerLoad, monotonic_ns},
};
use floodgate_common::{COUNTER_COUNT, Counter, ListenerCounters, Reason, maps};

/// The XDP program loaded (not attached) with a given config, driven through
/// `BPF_PROG_TEST_RUN`.
pub struct TestProg {
    pub dp: Dataplane,
}

impl TestProg {
    pub fn load(xdp: &config::Xdp, binds: &[SocketAddr]) -> Self {
        let dp = Dataplane::load_unattached(xdp, binds).expect("load the XDP program");
        Self { dp }
    }

    /// A config with small tables and the given listeners protected.
    pub fn xdp_config() -> config::Xdp {
        let mut c = config::Xdp {
            interfaces: vec!["lo".into()],
            flow_table_size: 1024,
            ..Default::default()
        };
        c.syn_rate.source_table_size = 1024;
        c
    }

    /// Runs one packet; returns the XDP action.
    pub fn run(&mut self, pkt: &[u8]) -> u32 {
        self.run_repeat(pkt, 1).0
    }

    /// Runs one packet; returns the XDP action and the packet as the program left it.
    pub fn run_out(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.program().expect("program");
        let mut out = vec![0u8; pkt.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs one packet `repeat` times; returns the action and the kernel's mean ns per run.
    pub fn run_repeat(&mut self, pkt: &[u8], repeat: u32) -> (u32, Duration) {
        let prog = self.dp.program().expect("program");
        let mut out = vec![0u8; pkt.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        (r.return_value, r.duration)
    }

    /// Per-reason counters summed over CPUs.
    pub fn counters(&mut self) -> [Counter; COUNTER_COUNT as usize] {
        let stats: PerCpuArray<_, Counter> = self.dp.map_mut(maps::STATS).expect("stats map");
        let mut out = [Counter::default(); COUNTER_COUNT as usize];
        for r in Reason::ALL {
            let v = stats.get(&(r as u32), 0).expect("read stats");
            out[r as usize] = v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            });
        }
        out
    }

    pub fn listener_counters(&mut self, id: u32) -> ListenerCounters {
        let stats: PerCpuArray<_, ListenerCounters> =
            self.dp.map_mut(maps::LISTENER_STATS).expect("lstats map");
        let v = stats.get(&id, 0).expect("read lstats");
        v.iter()
            .fold(ListenerCounters::default(), |a, c| ListenerCounters {
                syn_admitted: a.syn_admitted + c.syn_admitted,
                syn_dropped: a.syn_dropped + c.syn_dropped,
                established_packets: a.established_packets + c.established_packets,
                established_bytes: a.established_bytes + c.established_bytes,
            })
    }

    pub fn publish(&mut self, load: ListenerLoad) {
        self.dp.publish(&[load]).expect("publish capacity");
    }

    /// Makes the heartbeat look `age` old.
    pub fn age_heartbeat(&mut self, age: Duration) {
        let mut hb: Array<_, u64> = self.dp.map_mut(maps::HEARTBEAT).expect("heartbeat map");
        let ns = u64::try_from(age.as_nanos()).expect("age");
        hb.set(0, monotonic_ns().saturating_sub(ns), 0)
            .expect("write heartbeat");
    }
}
