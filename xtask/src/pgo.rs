//! `cargo xtask build --pgo`: the release binary built with profile-guided optimisation.
//!
//! Why: per proxied keep-alive request floodgate ran about as many instructions as HAProxy 2.6
//! (27,000 against 30,700, callgrind) but missed the instruction cache nearly twice as often
//! (1,580 L1i misses against 854, callgrind's cache simulation): its hot path is spread over
//! tokio, http, httparse, rustls and its own phases, laid out by the compiler without knowing
//! which code runs. With a profile, LLVM inlines and lays out the hot path together: 908 L1i
//! misses and 22,200 instructions per request (docs/benchmarks.md has the figures).
//!
//! Three steps, each in its own target directory under `target/pgo/` (the flags differ, so
//! nothing is shared with `target/release`):
//! 1. an instrumented build (`-Cprofile-generate`);
//! 2. training: that binary serves bounded h2load runs over every hot path a production
//!    listener has (HTTP/1.1 kept alive and a connection per request, h2c, TLS 1.3 and 1.2
//!    full handshakes, HTTPS and HTTP/2 over TLS) from a small origin on 127.0.0.1, then stops on
//!    SIGINT and writes its profile; `llvm-profdata` merges it;
//! 3. the optimised build (`-Cprofile-use`), copied to `target/pgo/floodgate`.
//!
//! Code the training does not run (hyper's HTTP/1.1 fallback, auth, compression) is still
//! built, only laid out as cold. The profile's name carries a hash of its bytes, so cargo
//! rebuilds every crate when the profile changes (it does not track the file's content).

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash as _, Hasher as _},
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd_output, root, run};

/// The training load, each run bounded by its request count: (label, h2load arguments, scheme).
const TRAINING: &[(&str, &[&str], Scheme)] = &[
    (
        "HTTP/1.1 kept alive",
        &["--h1", "-n", "60000", "-c", "64"],
        Scheme::Http,
    ),
    (
        "HTTP/1.1, a connection per request",
        &["--h1", "-n", "10000", "-c", "32", "-H", "Connection: close"],
        Scheme::Http,
    ),
    (
        "HTTP/2 cleartext",
        &["-n", "40000", "-c", "16", "-m", "10"],
        Scheme::Http,
    ),
    (
        "HTTPS kept alive (TLS 1.3)",
        &["--h1", "-n", "30000", "-c", "32"],
        Scheme::Https,
    ),
    (
        "HTTPS, a connection per request (TLS 1.3)",
        &["--h1", "-n", "2000", "-c", "16", "-H", "Connection: close"],
        Scheme::Https,
    ),
    (
        "HTTP/2 over TLS 1.3",
        &["-n", "30000", "-c", "16", "-m", "10"],
        Scheme::Https,
    ),
    (
        "HTTPS, a connection per request (TLS 1.2)",
        &["--h1", "-n", "2000", "-c", "16", "-H", "Connection: close"],
        Scheme::Https12,
    ),
];

#[derive(Clone, Copy)]
enum Scheme {
    Http,
    Https,
    /// HTTPS with the client capped at TLS 1.2 (an OpenSSL config h2load reads).
    Https12,
}

pub fn build(
    cargo: impl Fn() -> Command,
    step: impl Fn(&str, &mut Command) -> Result<()>,
) -> Result<()> {
    let profdata_tool = llvm_profdata()?;
    if Command::new("h2load").arg("--version").output().is_err() {
        bail!("h2load is missing (Debian: nghttp2-client): run `cargo xtask setup`");
    }
    let host = host_triple()?;
    let dir = root().join("target/pgo");
    let raw = dir.join("raw");
    if raw.exists() {
        fs::remove_dir_all(&raw).with_context(|| format!("removing {}", raw.display()))?;
    }
    fs::create_dir_all(&raw)?;
    let rustflags = |extra: String| {
        std::env::var("RUSTFLAGS").map_or(extra.clone(), |f| format!("{f} {extra}"))
    };
    // --target: RUSTFLAGS then reach only the target's crates, not build scripts.
    let build = |label: &str, target_dir: &str, flags: String| {
        step(
            label,
            cargo()
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "-p",
                    "floodgate",
                    "--bin",
                    "floodgate",
                ])
                .args(["--target", &host, "--target-dir"])
                .arg(dir.join(target_dir))
                .env("RUSTFLAGS", rustflags(flags)),
        )
    };
    build(
        "PGO 1/3: instrumented build",
        "generate",
        format!("-Cprofile-generate={}", raw.display()),
    )?;
    let instrumented = dir.join("generate").join(&host).join("release/floodgate");
    println!("\n==> PGO 2/3: training");
    let t = Instant::now();
    train(&instrumented, &dir)?;
    let profiles: Vec<PathBuf> = fs::read_dir(&raw)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    if profiles.is_empty() {
        bail!(
            "the instrumented floodgate wrote no profile into {}",
            raw.display()
        );
    }
    let merged = dir.join("merged.profdata");
    run(Command::new(&profdata_tool)
        .args(["merge", "-o"])
        .arg(&merged)
        .args(&profiles))?;
    let bytes = fs::read(&merged)?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    let named = dir.join(format!("floodgate-{:016x}.profdata", h.finish()));
    fs::rename(&merged, &named)?;
    println!(
        "    ok ({:.0} s): {}",
        t.elapsed().as_secs_f64(),
        named.display()
    );
    build(
        "PGO 3/3: optimised build",
        "use",
        format!("-Cprofile-use={}", named.display()),
    )?;
    let out = dir.join("floodgate");
    fs::copy(dir.join("use").join(&host).join("release/floodgate"), &out)?;
    println!(
        "\nPGO build: {}\n  benchmark it with FLOODGATE_BIN={} cargo xtask bench http",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `llvm-profdata` of the toolchain's own LLVM (the `llvm-tools` component): an older LLVM's
/// cannot read the profile format rustc writes.
fn llvm_profdata() -> Result<PathBuf> {
    let sysroot = cmd_output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let host = host_triple()?;
    let tool = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(&host)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        // `cargo xtask setup` adds it; a machine set up before that gets it here.
        let _ = Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .status();
    }
    if !tool.exists() {
        bail!(
            "{} is missing: `rustup component add llvm-tools` (run by `cargo xtask setup`) failed",
            tool.display()
        );
    }
    Ok(tool)
}

fn host_triple() -> Result<String> {
    let v = cmd_output(Command::new("rustc").arg("-vV"))?;
    v.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host")
}

/// Serves the training load with the instrumented binary and stops it so it writes its
/// profile.
fn train(floodgate: &Path, dir: &Path) -> Result<()> {
    let work = dir.join("training");
    fs::create_dir_all(&work)?;
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()))?;
    let origin = TcpListener::bind("127.0.0.1:0")?;
    let origin_addr = origin.local_addr()?;
    thread::spawn(move || serve_origin(origin));
    let [http, https, admin] = [free_port()?, free_port()?, free_port()?];
    let config = work.join("floodgate.yaml");
    fs::write(
        &config,
        format!(
            "# Written by `cargo xtask build --pgo` for its training run.\n\
             global: {{ maxconn: 10000 }}\n\
             xdp: {{ enabled: false }}\n\
             admin: {{ bind: '127.0.0.1:{admin}' }}\n\
             listeners:\n\
             \x20 - {{ name: http, bind: '127.0.0.1:{http}', default-backend: origin }}\n\
             \x20 - name: https\n\
             \x20   bind: '127.0.0.1:{https}'\n\
             \x20   default-backend: origin\n\
             \x20   tls: {{ certificates: [ {{ cert: '{}', key: '{}' }} ] }}\n\
             backends: [ {{ name: origin, servers: ['{origin_addr}'], maxconn-server: 10000 }} ]\n",
            cert.display(),
            key.display()
        ),
    )?;
    let log = fs::File::create(work.join("floodgate.log"))?;
    let mut child = Command::new(floodgate)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", floodgate.display()))?;
    let result = (|| -> Result<()> {
        wait_for(http)?;
        wait_for(https)?;
        let tls12 = work.join("tls12-openssl.cnf");
        fs::write(&tls12, crate::TLS12_OPENSSL_CONF)?;
        for (label, args, scheme) in TRAINING {
            let mut c = Command::new("h2load");
            c.args(*args).stdout(Stdio::piped());
            match scheme {
                Scheme::Http => c.arg(format!("http://127.0.0.1:{http}/")),
                Scheme::Https => c.arg(format!("https://127.0.0.1:{https}/")),
                Scheme::Https12 => c
                    .env("OPENSSL_CONF", &tls12)
                    .arg(format!("https://127.0.0.1:{https}/")),
            };
            let out = cmd_output(&mut c)?;
            let summary = out
                .lines()
                .find(|l| l.starts_with("requests:"))
                .unwrap_or("(no summary)");
            println!("    {label}: {summary}");
            if !out.contains(" 0 failed") {
                bail!("training run `{label}` had failures:\n{out}");
            }
        }
        Ok(())
    })();
    // SIGINT: floodgate drains and returns from main, which is when the profile is written.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait()?;
    result?;
    if !status.success() {
        bail!(
            "the instrumented floodgate exited with {status}; its log: {}",
            work.join("floodgate.log").display()
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("floodgate did not listen on 127.0.0.1:{port} within 20 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The training origin: a thread per connection answering each request head with a 12-byte
/// body, kept alive. The proxy's side of the exchange is what is being profiled; this only
/// has to answer like the harness's nginx origins.
fn serve_origin(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = answer(stream);
        });
    }
}

fn answer(mut s: TcpStream) -> std::io::Result<()> {
    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Requests without a body: each head ends at a blank line.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            s.write_all(RESPONSE)?;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    }
}
