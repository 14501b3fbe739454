//! Network namespaces joined by veth pairs, created and removed by the test, frames sent through
//! them, and floodgate started inside one.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use floodgate::{config, xdp::dataplane::Dataplane};

use crate::*;

/// Two network namespaces joined by a veth pair: `srv` (`10.N.0.1`, `fd00:N::1`) and `cli`
/// (`10.N.0.2`, `fd00:N::2`). Everything is removed on drop.
pub struct NetPair {
    pub srv: String,
    pub cli: String,
    pub srv_if: String,
    pub cli_if: String,
    pub srv_v4: String,
    pub cli_v4: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    /// `tag` keeps names unique per test; `subnet` picks 10.`subnet`.0.0/24.
    pub fn new(tag: &str, subnet: u8) -> Self {
        let id = std::process::id() % 10_000;
        let p = Self {
            srv: format!("fg{tag}s{id}"),
            cli: format!("fg{tag}c{id}"),
            srv_if: format!("fg{tag}s{id}"),
            cli_if: format!("fg{tag}c{id}"),
            srv_v4: format!("10.{subnet}.0.1"),
            cli_v4: format!("10.{subnet}.0.2"),
        };
        p.cleanup();
        ip(&["netns", "add", &p.srv]);
        ip(&["netns", "add", &p.cli]);
        ip(&[
            "link", "add", &p.srv_if, "type", "veth", "peer", "name", &p.cli_if,
        ]);
        ip(&["link", "set", &p.srv_if, "netns", &p.srv]);
        ip(&["link", "set", &p.cli_if, "netns", &p.cli]);
        ip(&[
            "-n",
            &p.srv,
            "addr",
            "add",
            &format!("{}/24", p.srv_v4),
            "dev",
            &p.srv_if,
        ]);
        ip(&[
            "-n",
            &p.cli,
            "addr",
            "add",
            &format!("{}/24", p.cli_v4),
            "dev",
            &p.cli_if,
        ]);
        ip(&[
            "-n",
            &p.srv,
            "-6",
            "addr",
            "add",
            &format!("fd00:{subnet}::1/64"),
            "dev",
            &p.srv_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &p.cli,
            "-6",
            "addr",
            "add",
            &format!("fd00:{subnet}::2/64"),
            "dev",
            &p.cli_if,
            "nodad",
        ]);
        for (ns, dev) in [(&p.srv, &p.srv_if), (&p.cli, &p.cli_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        p
    }

    /// A command run inside namespace `ns` with its own mount namespace (`ip netns exec`).
    pub fn exec(ns: &str, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program.as_ref());
        c
    }

    /// A command in `ns`'s network namespace only, so its bpffs pins stay visible outside.
    pub fn enter(ns: &str, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg(program.as_ref());
        c
    }

    /// Packets sent by the client side of the veth (what the server side's XDP sees).
    pub fn cli_tx_packets(&self) -> u64 {
        veth_tx_packets(&self.cli, &self.cli_if)
    }

    fn cleanup(&self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.srv_if])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs `f` on a thread that joined network namespace `ns` (setns affects only that thread).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a namespace fd we own; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// Attaches an XDP program that passes every packet (floodgate's, with no listener) to `dev`
/// in namespace `ns`, for as long as the device lives. A veth forwards the `XDP_TX` frames of
/// its peer's native XDP program to its own receive ring, but the kernel wakes that ring only
/// when this side has an XDP program of its own (`veth_xdp_flush`): without one, an answer
/// waits there until some other packet comes along. A NIC has no such need.
pub fn attach_xdp_pass(ns: &str, dev: &str) {
    // Leaked on purpose: the link lives until the test deletes the device.
    std::mem::forget(XdpPass::attach(ns, &[dev.to_owned()]));
}

/// A pass-through XDP program on a device for as long as this lives (see [`attach_xdp_pass`]),
/// for measuring what attaching any native XDP program costs on its own.
pub struct XdpPass {
    _dp: Dataplane,
}

impl XdpPass {
    pub fn attach(ns: &str, devs: &[String]) -> Self {
        let devs = devs.to_vec();
        let dp = in_netns(ns, move || {
            let mut dp = Dataplane::load_unattached(&config::Xdp::default(), &[])
                .expect("load the XDP program");
            for dev in &devs {
                dp.program()
                    .expect("program")
                    .attach(dev, aya::programs::XdpMode::Driver)
                    .unwrap_or_else(|e| panic!("attach XDP to {dev}: {e}"));
            }
            dp
        });
        // Dropping it closes the links' fds, which detaches them wherever it happens.
        Self { _dp: dp }
    }
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", dev])
        .output()
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip json");
    let s = v[0]["address"].as_str().expect("address");
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("mac");
    }
    mac
}

/// An AF_PACKET socket sending raw frames out of one interface of the current namespace.
struct PacketSocket {
    fd: i32,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    fn open(dev: &str) -> Self {
        let cdev = std::ffi::CString::new(dev).expect("dev name");
        // SAFETY: plain socket calls on values we own; the fd is closed on drop.
        unsafe {
            let ifindex = libc::if_nametoindex(cdev.as_ptr());
            assert!(ifindex != 0, "no interface {dev}");
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            Self { fd, addr }
        }
    }

    /// Sends `f`; a full socket buffer or queue (ENOBUFS) is back-pressure, not loss: waits
    /// and retries, a bounded number of times. Whether the kernel took it.
    fn send(&self, f: &[u8]) -> bool {
        for _ in 0..1000 {
            // SAFETY: a valid fd and address; `f` outlives the call.
            let rc = unsafe {
                libc::sendto(
                    self.fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const self.addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc == f.len() as isize {
                return true;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        false
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Sends raw Ethernet frames out of `dev` in namespace `ns` (AF_PACKET); returns how many the
/// kernel accepted. The caller bounds the count; frames go only to the test's own veth peer.
pub fn send_frames(ns: &str, dev: &str, frames: Vec<Vec<u8>>) -> u64 {
    let dev = dev.to_owned();
    in_netns(ns, move || {
        let sock = PacketSocket::open(&dev);
        frames.iter().filter(|f| sock.send(f)).count() as u64
    })
}

/// Sends `frames` round-robin out of `dev` in namespace `ns` at `pps`, a batch every
/// millisecond, until `stop` is set or `max` has passed; returns the frames sent and the time
/// taken. Paced by the sender rather than by a token bucket alone: a qdisc throttling a sender
/// that is always ahead of it wakes on a timer for nearly every frame, which costs a VM an exit
/// each, and that cost lands on whatever the flood is measured against.
pub fn send_frames_paced(
    ns: &str,
    dev: &str,
    frames: std::sync::Arc<Vec<Vec<u8>>>,
    pps: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: Duration,
) -> (u64, Duration) {
    let dev = dev.to_owned();
    in_netns(ns, move || {
        let sock = PacketSocket::open(&dev);
        let start = std::time::Instant::now();
        let (mut sent, mut tried, mut next) = (0u64, 0u64, 0usize);
        let tick = Duration::from_millis(1);
        let mut due = start;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < max {
            // Frames owed by now at `pps`, so a late tick catches up instead of losing rate.
            let owed = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            while tried < owed && !frames.is_empty() {
                if sock.send(&frames[next]) {
                    sent += 1;
                }
                tried += 1;
                next = (next + 1) % frames.len();
            }
            due += tick;
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        (sent, start.elapsed())
    })
}

/// Packets sent by `dev` in namespace `ns`: what the XDP program on its peer sees.
fn veth_tx_packets(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", dev])
        .output()
        .expect("ip -s link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip json");
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

/// A second veth pair between `srv` and a third namespace `atk` (`10.N.1.1` / `10.N.1.2`), for
/// an attacker or another client. Removed on drop (with the namespace).
pub struct ThirdNs {
    pub ns: String,
    pub srv_if: String,
    pub atk_if: String,
    pub srv_v4: String,
    pub atk_v4: String,
}

impl ThirdNs {
    pub fn new(pair: &NetPair, subnet: u8) -> Self {
        let id = std::process::id() % 10_000;
        let t = Self {
            ns: format!("{}a", pair.cli),
            srv_if: format!("fgas{id}"),
            atk_if: format!("fgaa{id}"),
            srv_v4: format!("10.{subnet}.1.1"),
            atk_v4: format!("10.{subnet}.1.2"),
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &t.ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &t.ns]);
        ip(&[
            "link", "add", &t.srv_if, "type", "veth", "peer", "name", &t.atk_if,
        ]);
        ip(&["link", "set", &t.srv_if, "netns", &pair.srv]);
        ip(&["link", "set", &t.atk_if, "netns", &t.ns]);
        ip(&[
            "-n",
            &pair.srv,
            "addr",
            "add",
            &format!("{}/24", t.srv_v4),
            "dev",
            &t.srv_if,
        ]);
        ip(&[
            "-n",
            &t.ns,
            "addr",
            "add",
            &format!("{}/24", t.atk_v4),
            "dev",
            &t.atk_if,
        ]);
        ip(&["-n", &pair.srv, "link", "set", &t.srv_if, "up"]);
        ip(&["-n", &t.ns, "link", "set", "lo", "up"]);
        ip(&["-n", &t.ns, "link", "set", &t.atk_if, "up"]);
        t
    }

    pub fn tx_packets(&self) -> u64 {
        veth_tx_packets(&self.ns, &self.atk_if)
    }
}

impl Drop for ThirdNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// `floodgate stats --json` for a pin directory, or `None` while nothing is pinned there.
pub fn stats(pin_dir: &str) -> Option<serde_json::Value> {
    let out = Command::new(bin("floodgate"))
        .args(["stats", "--json", "--pin-dir", pin_dir])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Packets counted under reason `name` in a stats snapshot.
pub fn reason(s: &serde_json::Value, name: &str) -> u64 {
    s["reasons"][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no reason {name} in {s}"))
}

/// floodgate running in namespace `ns` with `yaml` (which must use `pin_dir`), started with
/// nsenter so its pins are visible here; returns once XDP is attached.
pub fn start_floodgate(ns: &str, name: &str, yaml: &str, pin_dir: &str) -> Proc {
    let config = temp_file(name, yaml);
    let log = std::fs::File::create(config.with_extension("log")).expect("log file");
    let mut fg = Proc::spawn(
        "floodgate",
        NetPair::enter(ns, bin("floodgate"))
            .args(["run", "--config"])
            .arg(&config)
            .stderr(log),
    );
    // nsenter execs floodgate, so the child's pid is floodgate's: wait for its own record, not
    // one left by a previous instance.
    let pid = fg.child.as_ref().map(Child::id);
    let attached = wait_until(Duration::from_secs(10), || {
        stats(pin_dir).is_some_and(|s| s["interfaces"][0]["pid"].as_u64().map(|p| p as u32) == pid)
    });
    if !attached {
        fg.stop();
        let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
        panic!("floodgate did not attach; its log:\n{log}");
    }
    fg
}

/// A stats snapshot taken together with the peers' tx counters (`tx`), once neither moves for
/// 100 ms: the peers' kernels send now and then (ARP, ND, RSTs), and on a veth the XDP program
/// runs shortly after the sender counts a packet, so two unrelated reads can differ by one.
pub fn settled_stats(pin_dir: &str, tx: impl Fn() -> Vec<u64>) -> (serde_json::Value, Vec<u64>) {
    let read = || {
        let s = stats(pin_dir).expect("stats");
        let total = s["totals"]["packets"].as_u64().unwrap_or(0);
        (s, tx(), total)
    };
    let mut last = read();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now.1 == last.1 && now.2 == last.2 {
            return (now.0, now.1);
        }
        last = now;
    }
    (last.0, last.1)
}
