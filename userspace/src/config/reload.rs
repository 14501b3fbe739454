//! Config reload: on SIGHUP, or when the file's content changes (a remounted ConfigMap swaps a
//! symlink, so content is what counts, not the inode). A new config that fails validation, or
//! that changes what only a restart can change, is refused, logged and counted; the running one
//! keeps serving.

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} cannot change while floodgate runs; restart it to apply")]
    NeedsRestart(String),
}

/// Reloads by outcome, for logs and metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl Counts {
    pub fn record<T, E>(&self, r: &Result<T, E>) {
        let c = if r.is_ok() { &self.ok } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Loads `path` as the next config for a process running `current`.
pub fn next(
    path: &Path,
    haproxy_dir: Option<&Path>,
    current: &Config,
) -> Result<Config, ReloadError> {
    let new = Config::load_with(path, haproxy_dir)?;
    check(&new, current)?;
    Ok(new)
}

/// Refuses `new` when it changes what only a restart can change in a process running
/// `current` (wherever `new` came from: the file, or the cluster's objects on top of it).
pub fn check(new: &Config, current: &Config) -> Result<(), ReloadError> {
    let mut fixed = Vec::new();
    // Sockets are bound once; what a listener routes to may change.
    let sockets = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.bind, l.backlog, l.reuseport))
            .collect::<Vec<_>>()
    };
    if sockets(new) != sockets(current) {
        fixed.push("listeners (name, bind, backlog, reuseport)");
    }
    if new.tls != current.tls
        || new
            .listeners
            .iter()
            .map(|l| &l.tls)
            .ne(current.listeners.iter().map(|l| &l.tls))
    {
        fixed.push("tls (certificate files reload by themselves when their content changes)");
    }
    if new.global.maxconn != current.global.maxconn {
        fixed.push("global.maxconn");
    }
    if new.global.nbthread != current.global.nbthread {
        fixed.push("global.nbthread");
    }
    if new.global.limits != current.global.limits {
        fixed.push("global.limits");
    }
    if new.admin != current.admin {
        fixed.push("admin");
    }
    if new.global.http2 != current.global.http2 {
        fixed.push("global.http2");
    }
    if new.global.http1_engine != current.global.http1_engine {
        fixed.push("global.http1-engine");
    }
    if new.global.worker_balance != current.global.worker_balance {
        fixed.push("global.worker-balance");
    }
    if new.global.forward_path != current.global.forward_path {
        fixed.push("global.forward-path");
    }
    if new.global.timeouts.http_request != current.global.timeouts.http_request {
        fixed.push("global.timeouts.http-request");
    }
    let (a, b) = (&new.xdp, &current.xdp);
    if a.enabled != b.enabled
        || a.interfaces != b.interfaces
        || a.mode != b.mode
        || a.pin_dir != b.pin_dir
        || a.flow_table_size != b.flow_table_size
        || a.syn_rate.source_table_size != b.syn_rate.source_table_size
        || a.verified_table_size != b.verified_table_size
        || a.conntrack_bypass != b.conntrack_bypass
        || a.nft_table != b.nft_table
    {
        fixed.push("xdp attachment settings (enabled, interfaces, mode, pin-dir, table sizes, conntrack-bypass, nft-table)");
    }
    if new.kubernetes != current.kubernetes {
        fixed.push("kubernetes");
    }
    if fixed.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::NeedsRestart(fixed.join(", ")))
    }
}

/// Notices changes of the content of files (and of the files in directories), polled by the
/// caller.
pub struct Watcher {
    paths: Vec<PathBuf>,
    last: Option<u64>,
}

impl Watcher {
    /// Starts from the content as it is now (the config just loaded).
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let mut w = Self { paths, last: None };
        w.last = w.digest();
        w
    }

    fn digest(&self) -> Option<u64> {
        let mut h = DefaultHasher::new();
        for p in &self.paths {
            if p.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                    .ok()?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|f| f.is_file())
                    .collect();
                files.sort();
                for f in files {
                    f.hash(&mut h);
                    std::fs::read(&f).ok()?.hash(&mut h);
                }
            } else {
                std::fs::read(p).ok()?.hash(&mut h);
            }
        }
        Some(h.finish())
    }

    /// Watches `paths` from now on, their content as it is now being the baseline (after a
    /// reload, the files the new config names).
    pub fn watch(&mut self, paths: Vec<PathBuf>) {
        if paths != self.paths {
            self.paths = paths;
            self.last = self.digest();
        }
    }

    /// True once per change of content; a file that cannot be read is not a change (a
    /// ConfigMap update replaces it atomically, so this is a transient state at most).
    pub fn changed(&mut self) -> bool {
        match self.digest() {
            Some(d) if Some(d) != self.last => {
                self.last = Some(d);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("f.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = "
xdp: { enabled: false }
listeners: [{ name: http, bind: '127.0.0.1:18080', default-backend: a }]
backends: [{ name: a, servers: ['127.0.0.1:1'] }, { name: b, servers: ['127.0.0.1:2'] }]
";

    #[test]
    fn what_may_change_live() {
        let dir = std::env::temp_dir().join(format!("fg-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let current = Config::load(&write(&dir, BASE)).unwrap();
        let routes = format!(
            "{BASE}routes: [{{ path: /x, backend: b }}]\nglobal: {{ timeouts: {{ server: 3s }} }}"
        );
        assert!(
            next(&write(&dir, &routes), None, &current).is_ok(),
            "routes, backends and most timeouts reload"
        );
        let e = next(
            &write(&dir, &BASE.replace("18080", "18081")),
            None,
            &current,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("listeners") && e.to_string().contains("restart"),
            "{e}"
        );
        let e = next(
            &write(&dir, &format!("{BASE}global: {{ maxconn: 5 }}")),
            None,
            &current,
        )
        .unwrap_err();
        assert!(e.to_string().contains("global.maxconn"), "{e}");
        let e = next(&write(&dir, "listeners: ["), None, &current).unwrap_err();
        assert!(matches!(e, ReloadError::Config(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn watcher_reports_each_content_change_once() {
        let dir = std::env::temp_dir().join(format!("fg-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = write(&dir, "a");
        let mut w = Watcher::new(vec![p.clone()]);
        assert!(!w.changed());
        write(&dir, "b");
        assert!(w.changed());
        assert!(!w.changed());
        write(&dir, "b");
        assert!(!w.changed(), "rewritten with the same content");
        let other = dir.join("users");
        std::fs::write(&other, "a:x").unwrap();
        w.watch(vec![p.clone(), other.clone()]);
        assert!(
            !w.changed(),
            "what is there when watching starts is no change"
        );
        std::fs::write(&other, "a:y").unwrap();
        assert!(w.changed(), "a named file changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
