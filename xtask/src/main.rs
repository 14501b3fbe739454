//! floodgate's task runner: `cargo xtask setup | build | run | test | fuzz | bench`.
//!
//! It does what cargo cannot: install the eBPF toolchain, run root-only tests one at a time,
//! start the quickstart, and drive the side-by-side benchmarks.

mod pgo;
mod setup;
mod tasks;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// The rustup toolchain that builds `ebpf/` (it must match the LLVM bpf-linker is built against).
pub const EBPF_TOOLCHAIN: &str = "nightly";

#[derive(Parser)]
#[command(about = "floodgate's build, run, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (rust-src, bpf-linker, apt packages, bpffs). Idempotent.
    Setup {
        /// Also list the steps that were already done.
        #[arg(long, short)]
        verbose: bool,
        /// Only the toolchain needed to compile (for an image build: no apt, pip or bpffs).
        #[arg(long)]
        build_only: bool,
    },
    /// Build the floodgate binary (eBPF object embedded) and the test origin.
    Build {
        #[arg(long)]
        release: bool,
        /// The release binary with profile-guided optimisation, trained on 127.0.0.1 with h2load
        /// (about two release builds' time): target/pgo/floodgate.
        #[arg(long, conflicts_with = "release")]
        pgo: bool,
    },
    /// Start floodgate on examples/quickstart.yaml with a demo origin on 127.0.0.1.
    Run {
        /// Another config file instead of the quickstart.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The whole suite: fmt, clippy (host and eBPF), unit, BPF_PROG_TEST_RUN and netns tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Fuzz the hand-written parsers (cargo-fuzz, nightly): every target, or one, for SECONDS
    /// each. New inputs go into fuzz/corpus/<target>; a crash is saved in fuzz/artifacts.
    Fuzz {
        /// proxy_protocol, client_hello, response_head, duration, config or request.
        target: Option<String>,
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmarks, as ratios against HAProxy where there is one to compare with.
    Bench {
        #[arg(value_enum, default_value_t = Bench::Xdp)]
        what: Bench,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup {
            verbose,
            build_only,
        } => setup::setup(verbose, build_only),
        Cmd::Build { pgo: true, .. } => tasks::build_pgo(),
        Cmd::Build { release, .. } => tasks::build(release),
        Cmd::Run { config } => tasks::run_quickstart(config),
        Cmd::Test { filter, no_lint } => tasks::test(filter.as_deref(), no_lint),
        Cmd::Fuzz { target, seconds } => tasks::fuzz(target.as_deref(), seconds, true),
        Cmd::Bench { what } => tasks::bench(what),
    }
}

/// What `cargo xtask bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// ns per packet of each admission path (BPF_PROG_TEST_RUN).
    Xdp,
    /// Goodput during SYN floods: HAProxy, floodgate with XDP on and off.
    Flood,
    /// HTTP/1.1 and HTTP/2 against HAProxy (the shared harness).
    Http,
    /// TLS handshakes and HTTPS against HAProxy (the shared harness).
    Tls,
    /// What any proxy costs here: a bare relay and a bare hyper beside floodgate and HAProxy.
    Floor,
    /// Cluster mode at scale (5,000 Ingresses, 20,000 endpoints) against the API emulator.
    K8s,
}

/// An OpenSSL config capping every OpenSSL client (wrk, h2load) at TLS 1.2, read through
/// `OPENSSL_CONF`: the benchmarks' and the PGO training's TLS 1.2 runs.
pub const TLS12_OPENSSL_CONF: &str = "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n\
     [ssl_sect]\nsystem_default = system_default_sect\n[system_default_sect]\nMaxProtocol = TLSv1.2\n";

/// The machine's shared material beside the repository (the benchmark harness, the nightly's
/// rust-src): the one place the repository reaches outside itself.
pub fn shared() -> PathBuf {
    root().join("../shared")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
