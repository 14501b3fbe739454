use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{Bench, EBPF_TOOLCHAIN, root, run, setup, shared};

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    // A CI run compiles once from a fresh clone: incremental caches would never be reused and
    // take gigabytes of target/ there.
    if std::env::var_os("CI").is_some_and(|v| v == "true")
        && std::env::var_os("CARGO_INCREMENTAL").is_none()
    {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

fn ensure_setup() -> Result<()> {
    if !setup::is_complete() {
        println!("xtask: the machine is not set up yet; running `cargo xtask setup`");
        setup::setup(false, false)?;
    }
    Ok(())
}

/// Runs a `cargo test`, echoing its output, and returns (passed, failed) summed over its
/// `test result:` lines.
fn test_step(name: &str, cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    println!("\n==> {name}");
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |word: &str| {
                    rest.split(';')
                        .find_map(|p| p.trim().strip_suffix(word).map(str::trim))
                        .and_then(|n| n.rsplit(' ').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += num("passed");
                failed += num("failed");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("step `{name}` failed: {status}");
    }
    println!(
        "==> {name}: {passed} passed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok((passed, failed))
}

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    println!("\n==> {name}");
    let t = Instant::now();
    run(cmd).with_context(|| format!("step `{name}` failed"))?;
    println!("==> {name}: ok in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

pub fn build(release: bool) -> Result<()> {
    ensure_setup()?;
    let mut c = cargo();
    c.args(["build", "--bins"]);
    if release {
        c.arg("--release");
    }
    step("build", &mut c)
}

/// `cargo xtask build --pgo` (`pgo.rs`). No `ensure_setup`: an image build has only the
/// `--build-only` toolchain, and the build checks what it needs itself.
pub fn build_pgo() -> Result<()> {
    crate::pgo::build(cargo, step)
}

/// The clippy run cargo cannot do for the eBPF crate: nightly, bpfel target, build-std.
fn clippy_ebpf() -> Command {
    let mut c = Command::new("rustup");
    c.current_dir(root())
        .args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--package",
            "floodgate-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root().join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                // The architecture aya-ebpf's helpers are built for: the host's, as aya-build
                // sets it for the real build.
                &format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    c
}

pub fn test(filter: Option<&str>, no_lint: bool) -> Result<()> {
    let started = Instant::now();
    ensure_setup()?;
    if !no_lint {
        step("rustfmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
        step(
            "clippy (host crates)",
            cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "floodgate-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        step("clippy (eBPF crate)", &mut clippy_ebpf())?;
    }
    // The integration tests start these binaries.
    step("build", cargo().args(["build", "--bins"]))?;
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "floodgate-ebpf",
        "--exclude",
        "floodgate-tests",
    ]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    let (p1, f1) = test_step("unit tests", &mut unit)?;
    // Root tests share kernel state (XDP on interfaces, pins, namespaces): one at a time.
    let mut integ = cargo();
    integ.args(["test", "--package", "floodgate-tests", "--"]);
    if let Some(f) = filter {
        integ.arg(f);
    }
    integ.arg("--test-threads=1");
    let (p2, f2) = test_step(
        "integration tests (BPF_PROG_TEST_RUN, network namespaces)",
        &mut integ,
    )?;
    if filter.is_none() {
        // A short run of every fuzz target over its committed corpus: a regression of a
        // parser fails here, not in a long campaign.
        fuzz(None, FUZZ_IN_TEST_SECONDS, false)?;
    }
    println!(
        "\nall tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    // The plain closing line CI reads, summed over both cargo test runs.
    println!("{} passed, {} failed", p1 + p2, f1 + f2);
    Ok(())
}

/// The cargo-fuzz targets (fuzz/fuzz_targets), one per hand-written parser.
pub const FUZZ_TARGETS: &[&str] = &[
    "proxy_protocol",
    "client_hello",
    "response_head",
    "duration",
    "config",
    "request",
    "request_head",
];

/// Seconds each target runs in `cargo xtask test`.
const FUZZ_IN_TEST_SECONDS: u64 = 10;

/// Runs `target` (or every one) for `seconds` each. `grow`: new inputs are added to the
/// committed corpus (`cargo xtask fuzz`); otherwise they go to a scratch directory and the
/// committed corpus is only read (`cargo xtask test`).
pub fn fuzz(target: Option<&str>, seconds: u64, grow: bool) -> Result<()> {
    ensure_setup()?;
    let targets: Vec<&str> = match target {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target `{t}`: one of {}", FUZZ_TARGETS.join(", ")),
        None => FUZZ_TARGETS.to_vec(),
    };
    let dir = root().join("fuzz");
    // `cargo xtask test` replays the committed corpus and mutates for a few seconds: a
    // regression check, where an optimised ASAN build of floodgate and all its dependencies
    // (aws-lc among them) was the longest step of a fresh clone's run, 1,296 s. Unoptimised
    // (and with line tables only, fuzz/Cargo.toml) it builds in 426 s and replays every corpus
    // in full (the `config` target's 2,747 inputs take about 70 s, not 10), with debug
    // assertions and overflow checks on. Campaigns (`cargo xtask fuzz`) keep the optimised
    // build, where executions per second are the point.
    let profile = if grow { "-O" } else { "--dev" };
    step(
        "fuzz build",
        Command::new("cargo")
            .current_dir(&dir)
            .args([&format!("+{EBPF_TOOLCHAIN}"), "fuzz", "build", profile])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    for t in targets {
        let corpus = dir.join("corpus").join(t);
        let mut c = Command::new("cargo");
        c.current_dir(&dir)
            .args([&format!("+{EBPF_TOOLCHAIN}"), "fuzz", "run", profile, t])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        if !grow {
            let scratch = std::env::temp_dir().join(format!("fg-fuzz-{t}-{}", std::process::id()));
            std::fs::create_dir_all(&scratch)?;
            c.arg(&scratch).arg(&corpus);
        }
        c.args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        step(&format!("fuzz {t} ({seconds} s)"), &mut c)?;
    }
    Ok(())
}

/// Kills the demo origin when the quickstart ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run_quickstart(config: Option<PathBuf>) -> Result<()> {
    ensure_setup()?;
    step("build", cargo().args(["build", "--bins"]))?;
    let bin = root().join("target/debug");
    let config = config.unwrap_or_else(|| root().join("examples/quickstart.yaml"));
    let origin = Command::new(bin.join("fg-origin"))
        .args(["--listen", "127.0.0.1:9101", "--name", "demo-origin"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the demo origin")?;
    let mut origin = ChildGuard(origin);
    std::thread::sleep(std::time::Duration::from_millis(300));
    if let Ok(Some(status)) = origin.0.try_wait() {
        bail!("the demo origin exited ({status}): is 127.0.0.1:9101 already in use?");
    }
    println!(
        "\nfloodgate is starting on {} with a demo origin on 127.0.0.1:9101.\n\
         Try, from another terminal:\n\
         \x20   curl -i http://127.0.0.1:8080/api/hello\n\
         \x20   sudo {}/floodgate stats          # XDP counters, from the pinned maps\n\
         \x20   curl -s http://127.0.0.1:9090/metrics | grep floodgate_\n\
         Stop with Ctrl-C.\n",
        config.display(),
        bin.display()
    );
    let status = Command::new(bin.join("floodgate"))
        .args(["run", "--config"])
        .arg(&config)
        .status()
        .context("starting floodgate")?;
    // SIGINT (Ctrl-C) is how the quickstart is meant to end.
    if !status.success() && status.code().is_some() {
        bail!("floodgate exited with {status}");
    }
    Ok(())
}

/// An OpenSSL config that caps every OpenSSL client (wrk) at TLS 1.2, for the TLS 1.2
/// full-handshake run; the harness's environment reaches its load generators.
fn tls12_openssl_conf() -> Result<PathBuf> {
    let path = root().join("target/bench-tls12-openssl.cnf");
    std::fs::create_dir_all(root().join("target"))?;
    std::fs::write(&path, crate::TLS12_OPENSSL_CONF)?;
    Ok(path)
}

pub fn bench(what: Bench) -> Result<()> {
    ensure_setup()?;
    match what {
        Bench::Xdp => step(
            "XDP ns per packet (BPF_PROG_TEST_RUN)",
            cargo().args([
                "run",
                "--release",
                "--package",
                "floodgate-tests",
                "--bin",
                "fg-xdp-bench",
            ]),
        ),
        Bench::K8s => {
            step(
                "build (release)",
                cargo().args(["build", "--release", "--bins"]),
            )?;
            step(
                "cluster mode at scale: time to serve, memory, one endpoint change (INGRESSES, ENDPOINTS, REPEATS)",
                cargo().args([
                    "run",
                    "--release",
                    "--package",
                    "floodgate-tests",
                    "--bin",
                    "fg-k8s-bench",
                ]),
            )
        }
        Bench::Flood => {
            // HAProxy 2.6 (Debian 12's) is the reference, as in the shared harness, which
            // installs it the same way; only this benchmark needs it.
            if Command::new("sh")
                .args(["-c", "command -v haproxy"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| !s.success())
            {
                step(
                    "apt-get install haproxy",
                    Command::new("apt-get")
                        .args(["install", "-y", "-qq", "haproxy"])
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                )?;
            }
            // The benchmark starts the release floodgate and fg-origin binaries.
            step(
                "build (release)",
                cargo().args(["build", "--release", "--bins"]),
            )?;
            step(
                "goodput during SYN floods: HAProxy with SYN cookies, floodgate (default config) with XDP on and off",
                cargo().args([
                    "run",
                    "--release",
                    "--package",
                    "floodgate-tests",
                    "--bin",
                    "fg-flood-bench",
                ]),
            )
        }
        Bench::Http | Bench::Tls | Bench::Floor => {
            // Side by side with HAProxy through the shared harness (../shared/bench/run.sh),
            // floodgate started by examples/bench/floodgate-under-test.sh. Knobs (THREADS,
            // REPEATS, DURATION, SCENARIOS) pass through the environment.
            step(
                "build (release)",
                cargo().args(["build", "--release", "--bins"]),
            )?;
            let harness = shared().join("bench/run.sh");
            if !harness.exists() {
                bail!(
                    "{} not found: the benchmark harness lives beside the repository",
                    harness.display()
                );
            }
            let harness_run = |label: &str, scenarios: &str, threads: &str, tls12: bool| {
                let mut c = Command::new("bash");
                c.arg(&harness)
                    .env(
                        "PROXY_CMD",
                        root().join("examples/bench/floodgate-under-test.sh"),
                    )
                    .env("PROXY_NAME", "floodgate");
                for (k, v) in [
                    ("THREADS", threads),
                    ("REPEATS", "3"),
                    ("SCENARIOS", scenarios),
                ] {
                    if std::env::var_os(k).is_none() {
                        c.env(k, v);
                    }
                }
                if tls12 {
                    c.env("OPENSSL_CONF", tls12_openssl_conf()?);
                }
                step(label, &mut c)
            };
            let compare = |mode: &str| {
                step(
                    &format!("{mode}: examples/bench/compare.sh"),
                    Command::new("bash")
                        .arg(root().join("examples/bench/compare.sh"))
                        .arg(mode),
                )
            };
            if what == Bench::Floor {
                // compare.sh reuses the harness's HAProxy launcher, certificate and shim: a
                // short HAProxy-only pass of the harness sets them up on a fresh machine.
                let bench_dir = std::env::var_os("BENCH_DIR")
                    .map_or_else(|| PathBuf::from("/tmp/floodgate-bench"), PathBuf::from);
                if !bench_dir.join("examples/haproxy-proxy.sh").exists() {
                    let mut c = Command::new("bash");
                    c.arg(&harness).envs([
                        ("THREADS", "1"),
                        ("REPEATS", "1"),
                        ("DURATION", "2"),
                        ("SCENARIOS", "http-c64"),
                    ]);
                    step("the shared harness's set-up (HAProxy alone)", &mut c)?;
                }
                compare("floor")
            } else if what == Bench::Http {
                harness_run(
                    "http: floodgate vs HAProxy (shared harness)",
                    "http-c64 http-c256 h2-c64m10",
                    "1 2",
                    false,
                )
            } else {
                // Clients negotiate TLS 1.3 by default: full handshakes, resumed ones, HTTPS
                // keep-alive and HTTP/2 over TLS 1.3 first, then full handshakes again with the
                // load generator's OpenSSL capped at TLS 1.2.
                harness_run(
                    "tls (TLS 1.3): floodgate vs HAProxy (shared harness)",
                    "tlsfull-c64 tlsresume-c64 https-c64 h2-c64m10",
                    "1",
                    false,
                )?;
                harness_run(
                    "tls (TLS 1.2 full handshakes): floodgate vs HAProxy (shared harness)",
                    "tlsfull-c64",
                    "1",
                    true,
                )?;
                // Full handshakes per second with both proxies held to the same CPU budget: the
                // harness's load generator saturates before either proxy does.
                compare("equal-cpu")
            }
        }
    }
}
