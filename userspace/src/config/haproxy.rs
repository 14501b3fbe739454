//! The HAProxy ingress ConfigMap, accepted as it is: its flat string keys, from the config's
//! `haproxy:` section or from a mounted ConfigMap directory (one file per key), override the
//! equivalent floodgate settings. Keys floodgate does not implement are reported, not refused,
//! so an existing ConfigMap can be pointed at floodgate unchanged.

use std::{collections::BTreeMap, path::Path};

use crate::config::{Config, ConfigError, HDuration};

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

/// What one key does to the config, given its value (quotes and spaces trimmed).
type Setter = fn(&mut Config, &str) -> Result<(), String>;

fn num(v: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("`{v}` is not a whole number"))
}

fn dur(v: &str) -> Result<HDuration, String> {
    v.parse::<HDuration>().map_err(|e| e.to_string())
}

/// The keys floodgate applies: each with the setting it stands for (for `floodgate check` and
/// the docs' table) and what it does. `apply` reads this table and nothing else.
pub const KNOWN: &[(&str, &str, Setter)] = &[
    ("maxconn-global", "global.maxconn", |c, v| {
        c.global.maxconn = num(v)?;
        Ok(())
    }),
    ("maxconn-server", "backends[*].maxconn-server", |c, v| {
        let n = num(v)?;
        for b in &mut c.backends {
            b.maxconn_server = n;
        }
        Ok(())
    }),
    ("nbthread", "global.nbthread", |c, v| {
        c.global.nbthread = num(v)? as usize;
        Ok(())
    }),
    ("timeout-client", "global.timeouts.client", |c, v| {
        c.global.timeouts.client = dur(v)?;
        Ok(())
    }),
    ("timeout-connect", "global.timeouts.connect", |c, v| {
        c.global.timeouts.connect = dur(v)?;
        Ok(())
    }),
    ("timeout-queue", "global.timeouts.queue", |c, v| {
        c.global.timeouts.queue = dur(v)?;
        Ok(())
    }),
    (
        "timeout-http-request",
        "global.timeouts.http-request",
        |c, v| {
            c.global.timeouts.http_request = dur(v)?;
            Ok(())
        },
    ),
    (
        "timeout-keep-alive",
        "global.timeouts.http-keep-alive",
        |c, v| {
            c.global.timeouts.http_keep_alive = dur(v)?;
            Ok(())
        },
    ),
    (
        "timeout-http-keep-alive",
        "global.timeouts.http-keep-alive",
        |c, v| {
            c.global.timeouts.http_keep_alive = dur(v)?;
            Ok(())
        },
    ),
    ("timeout-server", "global.timeouts.server", |c, v| {
        c.global.timeouts.server = dur(v)?;
        Ok(())
    }),
    ("timeout-tunnel", "global.timeouts.tunnel", |c, v| {
        c.global.timeouts.tunnel = dur(v)?;
        Ok(())
    }),
    ("ssl-options", "tls.ssl-options", |c, v| {
        c.tls.ssl_options = Some(v.to_owned());
        Ok(())
    }),
    ("ssl-ciphers", "tls.ciphers", |c, v| {
        c.tls.ciphers = v.to_owned();
        Ok(())
    }),
    // haproxy-ingress's and ingress-nginx's switch: every listener, from every peer.
    (
        "use-proxy-protocol",
        "listeners[*].proxy-protocol",
        |c, v| {
            let on = match v {
                "true" => true,
                "false" => false,
                _ => return Err(format!("`{v}` is not true or false")),
            };
            for l in &mut c.listeners {
                l.proxy_protocol = on.then(Default::default);
            }
            Ok(())
        },
    ),
];

/// Applies the known keys to `cfg`; returns the keys it does not implement.
pub fn apply(
    cfg: &mut Config,
    keys: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut unknown = Vec::new();
    for (k, v) in keys {
        let v = v.trim().trim_matches('"');
        match KNOWN.iter().find(|(key, _, _)| key == k) {
            Some((_, _, set)) => set(cfg, v).map_err(|reason| bad(k, reason))?,
            None => unknown.push(k.clone()),
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every key `apply` knows is in the users' table (docs/configuration.md), and applies.
    #[test]
    fn every_known_key_is_documented_and_applies() {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
        )
        .unwrap();
        let table = &docs[docs.find("| HAProxy key | sets |").unwrap()..];
        for (key, _, _) in KNOWN {
            assert!(
                table.contains(&format!("`{key}`")),
                "{key} is not documented"
            );
        }
        let mut cfg: Config = yaml_serde::from_str(
            "listeners: [{name: l, bind: '127.0.0.1:1', default-backend: b}]\n\
             backends: [{name: b, servers: [{address: '127.0.0.1:2'}]}]\n",
        )
        .unwrap();
        let keys: BTreeMap<String, String> = [
            ("maxconn-server", "7"),
            ("timeout-queue", "\"2s\""),
            ("use-proxy-protocol", "true"),
            ("no-such-key", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(apply(&mut cfg, &keys).unwrap(), ["no-such-key"]);
        assert_eq!(cfg.backends[0].maxconn_server, 7);
        assert_eq!(
            cfg.global.timeouts.queue.0,
            std::time::Duration::from_secs(2)
        );
        assert!(cfg.listeners[0].proxy_protocol.is_some());
        let bad: BTreeMap<String, String> = [("nbthread".to_owned(), "many".to_owned())].into();
        let e = apply(&mut cfg, &bad).unwrap_err().to_string();
        assert!(
            e.contains("haproxy.nbthread") && e.contains("not a whole number"),
            "{e}"
        );
    }
}
