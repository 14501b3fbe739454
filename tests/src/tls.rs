//! Certificates made for a test.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

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
