use which::which;

/// The eBPF crate depends on the `bpf-linker` binary, which cargo does not track: rebuild when it
/// changes (a new linker is usually a new LLVM).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => panic!("bpf-linker is not on PATH: run `cargo xtask setup`"),
    }
}
