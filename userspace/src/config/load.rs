//! Loading a config: the file, the HAProxy ConfigMap keys on top of its `haproxy:` section,
//! the schema's validation, then the checks that need more than the schema (the TLS policy
//! against the TLS library, keys on disk). The schema (`mod.rs`) knows neither HAProxy's keys
//! nor TLS.

use std::path::Path;

use super::{Config, ConfigError, haproxy, invalid};

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, None)
    }

    /// Loads `path`, with a mounted HAProxy ConfigMap directory whose keys override the file's
    /// `haproxy:` section.
    pub fn load_with(path: &Path, haproxy_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let extra = match haproxy_dir {
            Some(dir) => haproxy::read_dir(dir)?,
            None => Default::default(),
        };
        Self::from_text(&text, path, extra)
    }

    /// A config from YAML `text` (read from `path`, for errors), with HAProxy ConfigMap keys
    /// `extra` on top of its `haproxy:` section.
    pub fn from_text(
        text: &str,
        path: &Path,
        extra: std::collections::BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg: Config = yaml_serde::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.haproxy.extend(extra);
        let keys = cfg.haproxy.clone();
        cfg.ignored_haproxy_keys = haproxy::apply(&mut cfg, &keys)?;
        cfg.tls.apply_ssl_options()?;
        cfg.validate()?;
        crate::tls::validate(&cfg.tls).map_err(|e| invalid("tls", e.to_string()))?;
        Ok(cfg)
    }

    /// Settings that are valid but open a hole someone should know about: logged at start and
    /// on every reload, printed by `floodgate check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            for (j, c) in l.tls.iter().flat_map(|t| t.certificates.iter()).enumerate() {
                let (_, key) = c.paths();
                if let Some(mode) = crate::tls::key_exposed(&key) {
                    out.push(format!(
                        "listeners[{i}].tls.certificates[{j}]: the private key {} is readable by \
                         group or others (mode {mode:o}); make it 0400",
                        key.display()
                    ));
                }
            }
            let from_anyone = l
                .proxy_protocol
                .as_ref()
                .is_some_and(|p| p.from.iter().any(|n| n.prefix_len() == 0));
            if from_anyone {
                out.push(format!(
                    "listeners[{i}].proxy-protocol: the header is believed from every peer: a client \
                     that reaches port {} directly can name any address as its own (routes' \
                     `allow`, rate limits, the access log); set `from` to the load balancers' \
                     networks",
                    l.bind.port()
                ));
            }
        }
        out
    }
}
