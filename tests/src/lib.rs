//! Test support: root gating, packet builders, a `BPF_PROG_TEST_RUN` harness, network
//! namespaces and child processes that clean up after themselves even when a test panics.

pub mod k8s;
pub mod packet;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    TestRun as _, TestRunOptions,
    maps::{Array, PerCpuArray},
};
use floodgate::{
    config,
    xdp::dataplane::{Dataplane, ListenerLoad, monotonic_ns},
};
use floodgate_common::{COUNTER_COUNT, Counter, ListenerCounters, Reason, maps};

/// True when the test may touch the kernel. Without root it skips locally, but fails under CI
/// (`CI=true`), so a CI run can never pass by skipping.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN) and CI=true"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// XDP return codes.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Pins the calling thread to one CPU, so per-CPU state (the global SYN budget) is the same
/// bucket from one test-run to the next.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

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

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    /// The exit status once stopped.
    pub status: Option<std::process::ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child: Some(child),
            name: name.into(),
            status: None,
        }
    }

    /// SIGTERM and wait; returns stdout if it was piped.
    pub fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        match child.wait_with_output() {
            Ok(o) => {
                self.status = Some(o.status);
                String::from_utf8_lossy(&o.stdout).into_owned()
            }
            Err(_) => String::new(),
        }
    }

    /// SIGKILL, as the OOM killer does: nothing of the process's own clean-up runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The effective, permitted and bounding capability sets of every thread of `pid`.
pub fn thread_caps(pid: u32) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(u64::MAX)
        };
        out.push((field("CapEff:"), field("CapPrm:"), field("CapBnd:")));
    }
    out
}

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

/// The workspace's binaries, next to the test executable (`target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let mut dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo xtask test does)",
        path.display()
    );
    path
}

/// Waits until `addr` accepts TCP connections, from the namespace the test runs in.
pub fn wait_for_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `f` until it returns true or `within` passes.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A plain HTTP/1.1 GET on a new connection (`Connection: close`); returns status and body.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    // One write, as real clients send a request: `write!` on the socket would send it in
    // pieces, and Nagle would hold the second until the server's delayed ACK (40 ms against
    // HAProxy, which does not ACK a partial request at once).
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sends `request` as it is on a new connection and reads until the server closes; returns
/// the status, the header block and the body.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String, String)> {
    http_raw_within(addr, request, Duration::from_secs(10))
}

/// [`http_raw`], waiting up to `wait` for each read.
pub fn http_raw_within(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(request)?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The value of the sample `name{labels}` in a Prometheus exposition (labels as written,
/// sorted by name); `None` when absent.
pub fn metric(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Runs `promtool check metrics` on an exposition; Err with promtool's complaint. promtool
/// missing is an error too: `cargo xtask setup` installs it.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (run `cargo xtask setup`): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `fg-origin` on `127.0.0.1:port`, naming itself `name` in its answers; its stdout (the
/// counts it prints at exit) is returned by [`Proc::stop`].
pub fn spawn_origin(port: u16, name: &str) -> Proc {
    Proc::spawn(
        name,
        Command::new(bin("fg-origin"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
}

/// `floodgate run --config config`, its log discarded.
pub fn spawn_floodgate(config: &Path) -> Proc {
    Proc::spawn(
        "floodgate",
        Command::new(bin("floodgate"))
            .args(["run", "--config"])
            .arg(config)
            .stderr(Stdio::null()),
    )
}

/// floodgate on `config` with its log written to `log` as JSON lines, to read the access log
/// back with [`access_lines`].
pub fn spawn_floodgate_logging(config: &Path, log: &Path) -> Proc {
    Proc::spawn(
        "floodgate",
        Command::new(bin("floodgate"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stderr(std::fs::File::create(log).expect("the log file")),
    )
}

/// The access log's events (target `floodgate::access`) in a JSON log.
pub fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["target"] == "floodgate::access")
        .collect()
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// Metric families of an exposition that docs/observability.md does not name (as `name`).
pub fn undocumented_families(exposition: &str) -> Vec<String> {
    let docs = std::fs::read_to_string(repo_root().join("docs/observability.md"))
        .expect("docs/observability.md");
    let mut missing: Vec<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !docs.contains(&format!("`{name}`")))
        .map(str::to_owned)
        .collect();
    missing.dedup();
    missing
}

/// Writes `text` to a fresh file in a per-process temp directory. The directory stays after
/// the run (its logs explain a failure) and is removed by the next run once its process is gone.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_temp_dirs);
    let dir = std::env::temp_dir().join(format!("floodgate-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("temp dir");
    }
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// Removes the temp directories of earlier test processes that have exited.
fn sweep_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("floodgate-tests-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
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

/// Sends raw Ethernet frames out of `dev` in namespace `ns` (AF_PACKET); returns how many the
/// kernel accepted. The caller bounds the count; frames go only to the test's own veth peer.
pub fn send_frames(ns: &str, dev: &str, frames: Vec<Vec<u8>>) -> u64 {
    let dev = dev.to_owned();
    in_netns(ns, move || {
        let cdev = std::ffi::CString::new(dev.clone()).expect("dev name");
        // SAFETY: plain socket calls on values we own; the fd is closed below.
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
            let mut sent = 0;
            for f in &frames {
                // A full socket buffer (ENOBUFS) is back-pressure, not loss: wait and retry,
                // a bounded number of times.
                for _ in 0..1000 {
                    let rc = libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if rc == f.len() as isize {
                        sent += 1;
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            libc::close(fd);
            sent
        }
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

/// An HTTP/2 client connection to `addr` (prior knowledge, in clear), driven by a task on the
/// current runtime.
pub async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to floodgate");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A self-signed certificate made with the openssl CLI: (cert, key). `kind` is `ec` (P-256)
/// or `rsa`; `ca: false` marks it an end entity (rustls refuses a CA certificate as a server's
/// own, while OpenSSL's tools accept either).
pub fn self_signed(
    dir: &Path,
    name: &str,
    kind: &str,
    cn: &str,
    san: &str,
    ca: bool,
) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let algo: &[&str] = if kind == "ec" {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            &format!("subjectAltName={san}"),
        ])
        .args(algo)
        .args(if ca {
            &[][..]
        } else {
            &["-addext", "basicConstraints=critical,CA:FALSE"][..]
        })
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (cargo xtask setup installs it)");
    assert!(st.success(), "openssl req");
    (crt, key)
}
