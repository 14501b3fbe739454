//! `net.ipv4.tcp_syncookies` while XDP answers SYNs with cookies (`xdp.syn-cookies: auto`).
//!
//! The kernel accepts the ACK of a SYN cookie only within two minutes of answering one of the
//! listener's SYNs with a cookie itself (`tcp_synq_no_recent_overflow`). Mode 2 makes it answer
//! every SYN that reaches it with a cookie, so each SYN the budget lets through keeps that
//! window open; the XDP program answers a listener's over-budget SYNs only while one of its
//! SYNs reached the kernel in the last minute (`KERNEL_COOKIE_FRESH_NS`). Mode 2 is what the
//! kernel does anyway once its SYN queue overflows, which is the state pressure means; outside
//! pressure the previous value comes back, so connections keep their full TCP options.
//! The setting is per network namespace: floodgate's (the node's, with hostNetwork).

use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The node's `/proc/sys/net` mounted into a pod (deploy/daemonset), whose own is read-only;
/// `/proc/sys/net` elsewhere. Either resolves to the opener's network namespace.
const SYSCTL_DIRS: [&str; 2] = ["/host/proc/sys/net", "/proc/sys/net"];

fn sysctl() -> PathBuf {
    SYSCTL_DIRS
        .iter()
        .map(|d| Path::new(d).join("ipv4/tcp_syncookies"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/proc/sys/net/ipv4/tcp_syncookies"))
}

#[derive(Debug, thiserror::Error)]
pub enum SyncookiesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: `{value}` is not a tcp_syncookies mode")]
    Parse { path: PathBuf, value: String },
}

/// Mode 2 set by floodgate, with the mode to restore when dropped.
#[derive(Debug)]
pub struct Always {
    path: PathBuf,
    previous: u8,
}

impl Always {
    /// Sets mode 2, remembering the current mode.
    pub fn set() -> Result<Self, SyncookiesError> {
        Self::set_at(&sysctl())
    }

    fn set_at(path: &Path) -> Result<Self, SyncookiesError> {
        let previous = read(path)?;
        if previous != 2 {
            write(path, 2)?;
        }
        info!(
            previous,
            "net.ipv4.tcp_syncookies set to 2 while XDP answers with SYN cookies"
        );
        Ok(Self {
            path: path.to_owned(),
            previous,
        })
    }
}

impl Drop for Always {
    fn drop(&mut self) {
        if self.previous == 2 {
            return;
        }
        match write(&self.path, self.previous) {
            Ok(()) => info!(mode = self.previous, "net.ipv4.tcp_syncookies restored"),
            Err(e) => warn!(error = %e, "cannot restore net.ipv4.tcp_syncookies"),
        }
    }
}

/// At start, outside pressure: a mode 2 left behind by a floodgate that was killed while it
/// held it goes back to the kernel's default, 1 (cookies only when the SYN queue overflows).
/// Under `syn-cookies: auto` floodgate owns the setting; a node meant to stay in mode 2 sets
/// `syn-cookies: never`.
pub fn reset_leftover() {
    let path = sysctl();
    match read(&path) {
        Ok(2) => match write(&path, 1) {
            Ok(()) => warn!(
                "net.ipv4.tcp_syncookies was 2 outside SYN pressure (left by a killed floodgate?): set to 1; \
                 set xdp.syn-cookies: never to manage it yourself"
            ),
            Err(e) => warn!(error = %e, "cannot reset net.ipv4.tcp_syncookies"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read net.ipv4.tcp_syncookies"),
    }
}

fn read(path: &Path) -> Result<u8, SyncookiesError> {
    let text = std::fs::read_to_string(path).map_err(|source| SyncookiesError::Io {
        path: path.to_owned(),
        source,
    })?;
    match text.trim().parse::<u8>() {
        Ok(v) if v <= 2 => Ok(v),
        _ => Err(SyncookiesError::Parse {
            path: path.to_owned(),
            value: text.trim().to_owned(),
        }),
    }
}

fn write(path: &Path, mode: u8) -> Result<(), SyncookiesError> {
    std::fs::write(path, format!("{mode}\n")).map_err(|source| SyncookiesError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_remembers_and_restores_the_previous_mode() {
        let dir = std::env::temp_dir().join(format!("fg-syncookies-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tcp_syncookies");
        std::fs::write(&path, "1\n").expect("write");
        {
            let held = Always::set_at(&path).expect("set");
            assert_eq!(read(&path).expect("read"), 2);
            assert_eq!(held.previous, 1);
        }
        assert_eq!(read(&path).expect("read"), 1, "restored on drop");
        std::fs::write(&path, "7\n").expect("write");
        assert!(matches!(
            Always::set_at(&path),
            Err(SyncookiesError::Parse { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
