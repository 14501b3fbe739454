//! Child processes (floodgate, test origins) that are stopped even when a test panics, the binaries
//! they run, root gating, CPU pinning and temporary files.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
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
