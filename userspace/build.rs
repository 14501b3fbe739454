//! Builds `ebpf/` for bpfel-unknown-none with aya-build and leaves the object in OUT_DIR, where
//! `src/dataplane.rs` embeds it.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const EBPF_TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    preflight()?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "floodgate-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}

/// Turns the usual first-build failures into one instruction instead of a page of linker errors.
fn preflight() -> anyhow::Result<()> {
    const HINT: &str = "run `cargo xtask setup` once on this machine (see README.md)";
    let sysroot = Command::new("rustc")
        .args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .with_context(|| format!("the `{EBPF_TOOLCHAIN}` toolchain is missing: {HINT}"))?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        bail!("rust-src is missing from the `{EBPF_TOOLCHAIN}` toolchain: {HINT}");
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !linker_ok {
        bail!("bpf-linker is not installed or cannot start: {HINT}");
    }
    Ok(())
}
