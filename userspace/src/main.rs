//! floodgate: an eBPF/XDP-accelerated edge data plane for Kubernetes ingress. This file is the
//! command line; `run.rs` is what `floodgate run` does.

mod run;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use floodgate::{
    config::Config,
    xdp::{conntrack, dataplane, stats},
};

/// mimalloc, and why it is called the way it is: `floodgate::allocator`.
#[global_allocator]
static ALLOC: floodgate::allocator::Mimalloc = floodgate::allocator::Mimalloc;

#[derive(Parser)]
#[command(
    version,
    about = "eBPF/XDP-accelerated edge data plane for Kubernetes ingress"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the config, attach XDP, and serve until SIGINT or SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// A mounted HAProxy ingress ConfigMap (one file per key); its keys override the config.
        #[arg(long)]
        haproxy_configmap: Option<PathBuf>,
    },
    /// Validate a config file; exits non-zero naming the bad key.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// A mounted HAProxy ingress ConfigMap to check with it.
        #[arg(long)]
        haproxy_configmap: Option<PathBuf>,
    },
    /// Detach a program left attached (by `xdp.keep-attached-on-exit`, or a floodgate that was
    /// killed), remove its pins, and remove the NOTRACK table from this network namespace.
    Detach {
        #[arg(long, default_value = floodgate_common::PIN_DIR)]
        pin_dir: PathBuf,
        /// The nftables table to remove (`xdp.nft-table` of the instance).
        #[arg(long, default_value = conntrack::TABLE)]
        nft_table: String,
    },
    /// Print the XDP counters from the pinned maps (works from another process).
    Stats {
        /// Print JSON instead of a table (with --watch: one JSON object per line).
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS (default 1) with per-second rates, like `top`.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes (default: until interrupted).
        #[arg(long, requires = "watch")]
        count: Option<u64>,
        /// The pin directory (`xdp.pin-dir` of the running instance).
        #[arg(long, default_value = floodgate_common::PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let result = match cli.cmd {
        Cmd::Run {
            config,
            haproxy_configmap,
        } => run::run(&config, haproxy_configmap.as_deref()),
        Cmd::Check {
            config,
            haproxy_configmap,
        } => check(&config, haproxy_configmap.as_deref()),
        Cmd::Stats {
            json,
            pin_dir,
            watch: None,
            ..
        } => print_stats(&pin_dir, json),
        Cmd::Stats {
            json,
            pin_dir,
            watch: Some(every),
            count,
        } => watch_stats(&pin_dir, json, every, count),
        Cmd::Detach { pin_dir, nft_table } => {
            dataplane::remove_pins(&pin_dir);
            println!("detached; pins under {} removed", pin_dir.display());
            match conntrack::remove_table(&nft_table) {
                Ok(true) => println!("nftables table inet {nft_table} removed"),
                Ok(false) => println!("no nftables table inet {nft_table} here"),
                Err(e) => eprintln!("cannot remove the nftables table inet {nft_table}: {e}"),
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floodgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The log filter: `FLOODGATE_LOG`, default `info`, with rustls held at `error` unless the
/// variable names it. rustls warns once per handshake about things clients do (an IP address
/// sent as SNI, the alert ending a failed handshake): at a few thousand handshakes a second
/// that is a log line and a write(2) each, for events `floodgate_tls_handshakes_total` counts.
fn log_directives(env: Option<&str>) -> String {
    let base = env
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if base.contains("rustls") {
        base.to_owned()
    } else {
        format!("{base},rustls=error")
    }
}

fn init_tracing(format: &str) {
    let env = std::env::var("FLOODGATE_LOG").ok();
    let directives = log_directives(env.as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!(
            "floodgate: FLOODGATE_LOG={directives:?} is not a valid filter ({e}); using info"
        );
        tracing_subscriber::EnvFilter::new("info,rustls=error")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        // Flat objects (message and fields at the top level), as Loki and Elasticsearch expect.
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn check(path: &std::path::Path, haproxy_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg = Config::load_with(path, haproxy_dir)?;
    // The files a backend's `tls`, `error-pages` and routes' `basic-auth` name are read when the config is
    // applied; read them now.
    floodgate::proxy::generation::client_tls(&cfg)?;
    floodgate::proxy::error::Pages::load(&cfg.error_pages)?;
    floodgate::proxy::generation::basic_auth(&cfg)?;
    for w in cfg.warnings() {
        println!("warning: {w}");
    }
    if !cfg.ignored_haproxy_keys.is_empty() {
        println!(
            "HAProxy keys floodgate does not implement (ignored): {}",
            cfg.ignored_haproxy_keys.join(", ")
        );
    }
    println!(
        "{}: ok ({} listeners, {} routes, {} backends, xdp {})",
        path.display(),
        cfg.listeners.len(),
        cfg.routes.len(),
        cfg.backends.len(),
        if cfg.xdp.enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    Ok(())
}

/// `stats --watch`: a refreshing table of totals and per-second rates.
fn watch_stats(
    pin_dir: &std::path::Path,
    json: bool,
    every: f64,
    count: Option<u64>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    anyhow::ensure!(
        every.is_finite() && every >= 0.1,
        "--watch: the interval must be at least 0.1 seconds"
    );
    let interval = Duration::from_secs_f64(every);
    let tty = std::io::stdout().is_terminal();
    let mut prev = stats::read(pin_dir)?;
    let mut at = std::time::Instant::now();
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(interval);
        let now = stats::read(pin_dir)?;
        let secs = at.elapsed().as_secs_f64();
        at = std::time::Instant::now();
        let rates = stats::rates(&prev, &now, secs);
        let mut out = std::io::stdout().lock();
        let written = if json {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({ "snapshot": now, "rates": rates }),
            )
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
        } else {
            // Redraw in place on a terminal; frames separated by a blank line in a pipe.
            let clear = if tty { "\x1b[2J\x1b[H" } else { "\n" };
            write!(out, "{clear}").and_then(|()| stats::print_watch(&now, &rates, every, &mut out))
        };
        match written.and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
        prev = now;
        shown += 1;
    }
    Ok(())
}

fn print_stats(pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let snap = stats::read(pin_dir)?;
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &snap)
            .map_err(std::io::Error::from)
            .and_then(|()| {
                use std::io::Write as _;
                writeln!(out)
            })
    } else {
        stats::print_table(&snap, &mut out)
    };
    match written {
        // `floodgate stats | head` closes the pipe early: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn rustls_is_held_at_error_unless_named() {
        assert_eq!(log_directives(None), "info,rustls=error");
        assert_eq!(log_directives(Some("  ")), "info,rustls=error");
        assert_eq!(log_directives(Some("debug")), "debug,rustls=error");
        assert_eq!(
            log_directives(Some("info,rustls=debug")),
            "info,rustls=debug"
        );
    }
}
