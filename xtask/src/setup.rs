//! `cargo xtask setup`: everything a fresh machine of this kind needs, installed idempotently.
//!
//! Each step checks before it acts, so a second run takes seconds and says what it skipped.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{EBPF_TOOLCHAIN, cmd_output, run};

/// bpf-linker release known to link against a rustc-shipped libLLVM (see docs/development.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the build, the tests and `cargo xtask run` use.
const APT_PACKAGES: &[(&str, &str)] = &[
    // (package, a file it installs, used to tell whether it is there)
    ("bpftool", "/usr/sbin/bpftool"),
    ("iproute2", "/usr/sbin/ip"),
    ("nftables", "/usr/sbin/nft"),
    ("curl", "/usr/bin/curl"),
    ("hping3", "/usr/sbin/hping3"),
    ("conntrack", "/usr/sbin/conntrack"),
    // promtool: the metrics exposition and the alert rules are checked with it.
    ("prometheus", "/usr/bin/promtool"),
    // h2load: the training load of `cargo xtask build --pgo`, and the benchmarks' HTTP/2 load.
    ("nghttp2-client", "/usr/bin/h2load"),
];

/// `kubectl kustomize` renders deploy/ in the tests. Debian's archive does not carry kubectl:
/// these machines have it preinstalled; elsewhere it needs a Kubernetes apt source.
const KUBECTL: &str = "/usr/bin/kubectl";

/// The kubernetes-validate release the deploy tests validate manifests with (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The Kubernetes API mock the shared emulator (`../shared/k8s/serve.py`) extends; the
/// control-plane tests run floodgate's real client against it (PyPI).
const KMOCK: &str = "kmock==0.8";

/// `build_only`: just what compiling needs (an image build has no apt tests or bpffs).
pub fn setup(verbose: bool, build_only: bool) -> Result<()> {
    let mut report = Report::default();
    rust_src(&mut report)?;
    bpf_linker(&mut report)?;
    llvm_tools(&mut report);
    if !build_only {
        apt(&mut report)?;
        kubectl(&mut report)?;
        pip(&mut report)?;
        bpffs(&mut report)?;
        cargo_fuzz(&mut report)?;
    }
    report.print(verbose);
    Ok(())
}

/// True when every step would be skipped; `cargo xtask run/test` use it to decide whether to
/// run setup first without printing anything.
pub fn is_complete() -> bool {
    (|| -> Result<bool> {
        let sysroot = nightly_sysroot()?;
        Ok(rust_src_present(&sysroot)
            && bpf_linker_ok(&llvm_stamp()?)
            && APT_PACKAGES.iter().all(|(_, f)| Path::new(f).exists())
            && Path::new(KUBECTL).exists()
            && kubernetes_validate_ok()
            && kmock_ok()
            && bpffs_mounted()
            && cargo_fuzz_ok())
    })()
    .unwrap_or(false)
}

#[derive(Default)]
struct Report {
    done: Vec<String>,
    skipped: Vec<String>,
}

impl Report {
    fn print(&self, verbose: bool) {
        for d in &self.done {
            println!("setup: did      {d}");
        }
        if verbose {
            for s in &self.skipped {
                println!("setup: skipped  {s}");
            }
        } else if self.done.is_empty() {
            println!(
                "setup: nothing to do ({} steps already done; -v lists them)",
                self.skipped.len()
            );
        }
    }
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = cmd_output(Command::new("rustc").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "--print",
        "sysroot",
    ]))
    .with_context(|| {
        format!(
            "the `{EBPF_TOOLCHAIN}` toolchain is required to build the eBPF crate; \
             this machine kind ships it (see docs/development.md)"
        )
    })?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src_present(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/src/lib.rs")
        .exists()
}

fn rust_src(report: &mut Report) -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if rust_src_present(&sysroot) {
        report
            .skipped
            .push(format!("rust-src (present in {})", sysroot.display()));
        return Ok(());
    }
    let rustup = Command::new("rustup")
        .args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .status();
    if matches!(rustup, Ok(s) if s.success()) && rust_src_present(&sysroot) {
        report.done.push("rust-src added with rustup".into());
        return Ok(());
    }
    // rustup could not fetch it: the same component is kept beside the repository.
    let shared = crate::shared().join("toolchain");
    let tarball = fs::read_dir(&shared)
        .with_context(|| format!("rustup failed and {} is not readable", shared.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy().contains("rust-src") && p.extension().is_some_and(|e| e == "xz")
        })
        .with_context(|| {
            format!(
                "rustup failed and no rust-src tarball in {}",
                shared.display()
            )
        })?;
    let dest = sysroot.join("lib/rustlib");
    run(Command::new("tar")
        .arg("xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dest))?;
    if !rust_src_present(&sysroot) {
        bail!(
            "unpacked {} but rust-src is still missing",
            tarball.display()
        );
    }
    report
        .done
        .push(format!("rust-src unpacked from {}", tarball.display()));
    Ok(())
}

/// What bpf-linker must be built against: the nightly's own LLVM, identified by the file name of
/// its libLLVM (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`) and the major version.
struct LlvmStamp {
    major: String,
    lib: PathBuf,
    stamp: String,
}

fn llvm_stamp() -> Result<LlvmStamp> {
    let sysroot = nightly_sysroot()?;
    let vv = cmd_output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc -vV` printed no LLVM version")?
        .trim()
        .to_string();
    let major = version.split('.').next().unwrap_or_default().to_string();
    // The real shared object; the `libLLVM-NN-rust-*.so` beside it is a linker script.
    let lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm {version} {}",
        lib.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    Ok(LlvmStamp { major, lib, stamp })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// bpf-linker keeps `<prefix>/lib` in its RUNPATH, so the prefix must outlive this run.
fn llvm_prefix() -> PathBuf {
    cargo_home().join("floodgate-llvm")
}

fn stamp_file() -> PathBuf {
    llvm_prefix().join("bpf-linker.stamp")
}

fn bpf_linker_ok(want: &LlvmStamp) -> bool {
    let linker = cargo_home().join("bin/bpf-linker");
    let stamped = fs::read_to_string(stamp_file()).is_ok_and(|s| s.trim() == want.stamp);
    stamped
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn bpf_linker(report: &mut Report) -> Result<()> {
    let want = llvm_stamp()?;
    if bpf_linker_ok(&want) {
        report.skipped.push(format!("bpf-linker ({})", want.stamp));
        return Ok(());
    }
    let prefix = llvm_prefix();
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir).with_context(|| format!("mkdir {}", libdir.display()))?;
    let file_name = want.lib.file_name().context("libLLVM has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = libdir.join(name);
        let _ = fs::remove_file(&link);
        symlink(&want.lib, &link)
            .with_context(|| format!("symlink {} -> {}", link.display(), want.lib.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about 2 minutes)",
        want.lib.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{}", want.major),
        ])
        .env("LLVM_PREFIX", &prefix)
        // Build it with the stable toolchain even when invoked from inside a rustup override.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    fs::write(stamp_file(), format!("{}\n", want.stamp))?;
    report
        .done
        .push(format!("bpf-linker built ({})", want.stamp));
    Ok(())
}

/// `llvm-profdata` of the stable toolchain's LLVM, for `cargo xtask build --pgo`. Not needed to
/// build or test, so a rustup that cannot fetch it is reported, not fatal (and `is_complete`
/// does not ask for it: `build --pgo` tries again itself).
fn llvm_tools(report: &mut Report) {
    let present = cmd_output(Command::new("rustc").args(["--print", "target-libdir"]))
        .map(|libdir| {
            Path::new(libdir.trim())
                .join("../bin/llvm-profdata")
                .exists()
        })
        .unwrap_or(false);
    if present {
        report.skipped.push("llvm-tools (present)".into());
        return;
    }
    let added = Command::new("rustup")
        .args(["component", "add", "llvm-tools"])
        .status()
        .is_ok_and(|s| s.success());
    report.done.push(if added {
        "llvm-tools added with rustup (for `cargo xtask build --pgo`)".into()
    } else {
        "llvm-tools NOT added: rustup failed; only `cargo xtask build --pgo` needs it".into()
    });
}

fn apt(report: &mut Report) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        report.skipped.push("apt packages (all installed)".into());
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    report
        .done
        .push(format!("apt-get install {}", missing.join(" ")));
    Ok(())
}

fn kubectl(report: &mut Report) -> Result<()> {
    if Path::new(KUBECTL).exists() {
        report.skipped.push("kubectl (installed)".into());
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "kubectl"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context(
        "kubectl is missing and no configured apt source carries it (Debian's own archive does \
         not): install kubectl, whose `kubectl kustomize` the deploy tests use",
    )?;
    report.done.push("apt-get install kubectl".into());
    Ok(())
}

fn kubernetes_validate_ok() -> bool {
    Command::new("kubernetes-validate")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn kmock_ok() -> bool {
    Command::new("python3")
        .args(["-c", "import kmock, jsonpatch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn pip(report: &mut Report) -> Result<()> {
    if kmock_ok() {
        report.skipped.push("kmock (installed)".into());
    } else {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--root-user-action=ignore",
            KMOCK,
        ]))
        .context("installing kmock from PyPI")?;
        anyhow::ensure!(kmock_ok(), "kmock installed but python3 cannot import it");
        report.done.push(format!("pip install {KMOCK}"));
    }
    if kubernetes_validate_ok() {
        report
            .skipped
            .push("kubernetes-validate (installed)".into());
        return Ok(());
    }
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "-q",
        "--root-user-action=ignore",
        KUBERNETES_VALIDATE,
    ]))
    .context("installing kubernetes-validate from PyPI")?;
    anyhow::ensure!(
        kubernetes_validate_ok(),
        "kubernetes-validate installed but not on PATH"
    );
    report
        .done
        .push(format!("pip install {KUBERNETES_VALIDATE}"));
    Ok(())
}

fn bpffs_mounted() -> bool {
    Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .is_ok_and(|s| s.success())
}

fn bpffs(report: &mut Report) -> Result<()> {
    if bpffs_mounted() {
        report.skipped.push("bpffs (mounted on /sys/fs/bpf)".into());
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs needs root")?;
    report.done.push("mounted bpffs on /sys/fs/bpf".into());
    Ok(())
}

/// cargo-fuzz, pinned, for `cargo xtask fuzz` and the short fuzz runs of `cargo xtask test`.
const CARGO_FUZZ: &str = "0.13.2";

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ)
        })
}

fn cargo_fuzz(report: &mut Report) -> Result<()> {
    if cargo_fuzz_ok() {
        report.skipped.push(format!("cargo-fuzz {CARGO_FUZZ}"));
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ,
    ]))?;
    report
        .done
        .push(format!("cargo install cargo-fuzz {CARGO_FUZZ}"));
    Ok(())
}
