//! The HAProxy ingress ConfigMap, accepted as it is: its flat string keys, from the config's
//! `haproxy:` section or from a mounted ConfigMap directory (one file per key), override the
//! equivalent floodgate settings. Keys floodgate does not implement are reported, not refused,
//! so an existing ConfigMap can be pointed at floodgate unchanged.

use std::{collections::BTreeMap, path::Path};

use crate::config::{Config, ConfigError, HDuration};

/// The keys floodgate applies, with what they set.
pub const KNOWN: &[(&str, &str)] = &[
    ("maxconn-global", "global.maxconn"),
    ("maxconn-server", "backends[*].maxconn-server"),
    ("nbthread", "global.nbthread"),
    ("timeout-client", "global.timeouts.client"),
    ("timeout-connect", "global.timeouts.connect"),
    ("timeout-queue", "global.timeouts.queue"),
    ("timeout-http-request", "global.timeouts.http-request"),
    ("timeout-keep-alive", "global.timeouts.http-keep-alive"),
    ("timeout-http-keep-alive", "global.timeouts.http-keep-alive"),
    ("timeout-server", "global.timeouts.server"),
    ("timeout-tunnel", "global.timeouts.tunnel"),
    ("ssl-options", "tls.ssl-options"),
    ("ssl-ciphers", "tls.ciphers"),
    ("use-proxy-protocol", "listeners[*].proxy-protocol"),
];

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("haproxy.{key}"),
        reason: reason.into(),
    }
}

/// Reads a mounted ConfigMap: every regular file whose name does not start with `.` (Kubernetes
/// keeps its own `..data` links there).
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let err = |source| ConfigError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let value = std::fs::read_to_string(entry.path()).map_err(|source| ConfigError::Read {
            path: entry.path(),
            source,
        })?;
        out.insert(name, value.trim().to_owned());
    }
    Ok(out)
}

/// Applies the known keys to `cfg`; returns the keys it does not implement.
pub fn apply(
    cfg: &mut Config,
    keys: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut unknown = Vec::new();
    for (k, v) in keys {
        let v = v.trim().trim_matches('"');
        let num = || {
            v.parse::<u32>()
                .map_err(|_| bad(k, format!("`{v}` is not a whole number")))
        };
        let dur = || v.parse::<HDuration>().map_err(|e| bad(k, e));
        let t = &mut cfg.global.timeouts;
        match k.as_str() {
            "maxconn-global" => cfg.global.maxconn = num()?,
            "maxconn-server" => {
                let n = num()?;
                for b in &mut cfg.backends {
                    b.maxconn_server = n;
                }
            }
            "nbthread" => cfg.global.nbthread = num()? as usize,
            "timeout-client" => t.client = dur()?,
            "timeout-connect" => t.connect = dur()?,
            "timeout-queue" => t.queue = dur()?,
            "timeout-http-request" => t.http_request = dur()?,
            "timeout-keep-alive" | "timeout-http-keep-alive" => t.http_keep_alive = dur()?,
            "timeout-server" => t.server = dur()?,
            "timeout-tunnel" => t.tunnel = dur()?,
            "ssl-options" => cfg.tls.ssl_options = Some(v.to_owned()),
            "ssl-ciphers" => cfg.tls.ciphers = v.to_owned(),
            // haproxy-ingress's and ingress-nginx's switch: every listener, from every peer.
            "use-proxy-protocol" => {
                let on = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(k, format!("`{v}` is not true or false"))),
                };
                for l in &mut cfg.listeners {
                    l.proxy_protocol = on.then(Default::default);
                }
            }
            _ => unknown.push(k.clone()),
        }
    }
    Ok(unknown)
}
