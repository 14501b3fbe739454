//! Validation, one section at a time: each part of the schema checks itself with its key path
//! passed in (`at`), so an error names the exact key (`routes[3].path-regex`) and the reason.
//! `Config::validate` calls the sections in the order the file lists them and keeps the checks
//! that span sections (names unique, a listener's address taken once, TLS listeners).

use std::collections::HashSet;

use super::*;

impl Config {
    /// Checks what serde cannot: cross references, ranges and uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.global.validate(self.admin.as_ref())?;
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "at least one listener is required"));
        }
        if self.listeners.len() > floodgate_common::MAX_LISTENERS as usize {
            return Err(invalid(
                "listeners",
                format!(
                    "at most {} listeners are supported",
                    floodgate_common::MAX_LISTENERS
                ),
            ));
        }
        // Names become metric label values and log fields: keep them to a plain alphabet, so
        // the exposition and the logs need no escaping.
        let names = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].name"), &l.name))
            .chain(
                self.backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("backends[{i}].name"), &b.name)),
            );
        for (key, name) in names {
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !plain {
                return Err(invalid(
                    key,
                    format!("`{name}`: 1 to 64 letters, digits, `_`, `-` or `.`"),
                ));
            }
        }
        let backends: HashSet<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
        if backends.len() != self.backends.len() {
            return Err(invalid("backends", "backend names must be unique"));
        }
        if let Some(k) = &self.kubernetes {
            k.validate()?;
        }
        for (i, b) in self.backends.iter().enumerate() {
            b.validate(&format!("backends[{i}]"), self)?;
        }
        let a = &self.access_log;
        if !(0.0..=1.0).contains(&a.sample) {
            return Err(invalid(
                "access-log.sample",
                format!("{} is not a fraction between 0.0 and 1.0", a.sample),
            ));
        }
        if let Some(f) = a
            .fields
            .iter()
            .find(|f| !ACCESS_LOG_FIELDS.contains(&f.as_str()))
        {
            return Err(invalid(
                "access-log.fields",
                format!(
                    "`{f}` is not a field (known: {})",
                    ACCESS_LOG_FIELDS.join(", ")
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(
                &format!("listeners[{i}]"),
                self,
                &backends,
                (&mut names, &mut binds),
            )?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(&format!("routes[{i}]"), self, &backends)?;
        }
        if self.tls.session_cache == 0 || self.tls.handshake_timeout.0.is_zero() {
            return Err(invalid(
                "tls",
                "session-cache and handshake-timeout must be greater than 0",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let Some(t) = &l.tls else { continue };
            // From the cluster, certificates come from the Ingresses' Secrets.
            if t.certificates.is_empty() && self.kubernetes.is_none() {
                return Err(invalid(
                    format!("listeners[{i}].tls.certificates"),
                    "at least one certificate is required",
                ));
            }
            for p in &t.alpn {
                if p != "h2" && p != "http/1.1" {
                    return Err(invalid(
                        format!("listeners[{i}].tls.alpn"),
                        format!("`{p}` is not h2 or http/1.1"),
                    ));
                }
            }
        }
        self.xdp.validate()
    }
}

impl Global {
    /// `admin`: the admin listener, checked with the global settings it sits beside.
    fn validate(&self, admin: Option<&Admin>) -> Result<(), ConfigError> {
        let g = self;
        if g.maxconn == 0 {
            return Err(invalid("global.maxconn", "must be at least 1"));
        }
        let t = &g.timeouts;
        for (key, d) in [
            ("global.timeouts.client", t.client),
            ("global.timeouts.connect", t.connect),
            ("global.timeouts.queue", t.queue),
            ("global.timeouts.http-request", t.http_request),
            ("global.timeouts.http-keep-alive", t.http_keep_alive),
            ("global.timeouts.server", t.server),
            ("global.timeouts.server-keep-alive", t.server_keep_alive),
            ("global.timeouts.tunnel", t.tunnel),
        ] {
            if d.0.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let l = &g.limits;
        if l.max_header_bytes < 8192 {
            return Err(invalid(
                "global.limits.max-header-bytes",
                "must be at least 8192",
            ));
        }
        if l.max_header_count == 0 || l.max_uri_bytes == 0 {
            return Err(invalid(
                "global.limits",
                "max-header-count and max-uri-bytes must be at least 1",
            ));
        }
        if let Some(a) = admin {
            if a.max_connections == 0 {
                return Err(invalid("admin.max-connections", "must be at least 1"));
            }
            if a.header_timeout.0.is_zero() {
                return Err(invalid("admin.header-timeout", "must be greater than 0"));
            }
        }
        let h = &g.http2;
        // RFC 9113 section 6.5.2: windows run from 65,535 (the protocol's initial one, below
        // which a client's first bytes already overrun) to 2^31 - 1.
        for (key, v) in [
            ("global.http2.stream-window", h.stream_window),
            ("global.http2.connection-window", h.connection_window),
        ] {
            if !(65_535..=0x7fff_ffff).contains(&v) {
                return Err(invalid(key, "must be from 65535 to 2147483647"));
            }
        }
        for (key, v) in [
            (
                "global.http2.max-concurrent-streams",
                h.max_concurrent_streams,
            ),
            ("global.http2.max-send-buffer", h.max_send_buffer),
            ("global.http2.max-resets", h.max_resets),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl Backend {
    /// `at`: `backends[i]`; `cfg`: the whole config, for what a backend refers to.
    fn validate(&self, at: &str, cfg: &Config) -> Result<(), ConfigError> {
        let b = self;
        // From the cluster, a Service without a ready endpoint is a normal state (503).
        if b.servers.is_empty() && cfg.kubernetes.is_none() {
            return Err(invalid(
                format!("{at}.servers"),
                "at least one server is required",
            ));
        }
        for (j, s) in b.servers.iter().enumerate() {
            split_host_port(s.address()).map_err(|e| invalid(format!("{at}.servers[{j}]"), e))?;
            if s.weight() == 0 || s.weight() > 256 {
                return Err(invalid(
                    format!("{at}.servers[{j}].weight"),
                    "must be between 1 and 256",
                ));
            }
        }
        for (name, d) in [
            ("server", b.timeouts.server),
            ("tunnel", b.timeouts.tunnel),
            ("connect", b.timeouts.connect),
            ("queue", b.timeouts.queue),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                return Err(invalid(
                    format!("{at}.timeouts.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        if let Some(h) = &b.health_check {
            let key = format!("{at}.health-check");
            if h.rise == 0 || h.fall == 0 {
                return Err(invalid(key, "rise and fall must be at least 1"));
            }
            if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                return Err(invalid(key, "interval and timeout must be greater than 0"));
            }
            if !h.path.starts_with('/') {
                return Err(invalid(format!("{key}.path"), "must start with `/`"));
            }
            match (h.kind, b.proto) {
                (CheckKind::Http, Proto::H2) => {
                    return Err(invalid(
                        format!("{key}.type"),
                        "http checks speak HTTP/1.1, which a `proto: h2` backend may refuse; use grpc or tcp",
                    ));
                }
                (CheckKind::Grpc, Proto::H1) => {
                    return Err(invalid(
                        format!("{key}.type"),
                        "grpc checks speak HTTP/2; the backend needs `proto: h2`",
                    ));
                }
                _ => {}
            }
        }
        if let Some(t) = &b.tls {
            let key = format!("{at}.tls");
            if t.verify == Verify::Required && t.ca_file.is_none() {
                return Err(invalid(
                    format!("{key}.ca-file"),
                    "required with `verify: required` (or set `verify: none`)",
                ));
            }
            if t.cert.is_some() != t.key.is_some() {
                return Err(invalid(
                    format!("{key}.cert"),
                    "`cert` and `key` go together",
                ));
            }
            if let Some(n) = &t.server_name {
                if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
                    return Err(invalid(
                        format!("{key}.server-name"),
                        format!("`{n}` is not a DNS name or an IP address"),
                    ));
                }
            } else {
                // One name for every connection: servers named differently, or names
                // mixed with addresses, would each need their own.
                let mut hosts: Vec<&str> = b
                    .servers
                    .iter()
                    .filter_map(|s| split_host_port(s.address()).ok().map(|(h, _)| h))
                    .collect();
                let named = b
                    .servers
                    .iter()
                    .filter(|s| s.socket_addr().is_none())
                    .count();
                hosts.sort_unstable();
                hosts.dedup();
                if named > 0 && hosts.len() > 1 {
                    return Err(invalid(
                        format!("{key}.server-name"),
                        "required when the servers are not all given by one DNS name or all by address",
                    ));
                }
            }
        }
        b.request_headers
            .validate(&format!("{at}.request-headers"))?;
        b.response_headers
            .validate(&format!("{at}.response-headers"))?;
        if b.send_proxy.is_some()
            && b.health_check
                .as_ref()
                .is_some_and(|c| c.kind != CheckKind::Tcp)
        {
            return Err(invalid(
                format!("{at}.health-check.type"),
                "with `send-proxy`, servers expect a PROXY header first: use `tcp` checks",
            ));
        }
        if let Some(c) = &b.compression {
            let key = format!("{at}.compression");
            if !(1..=9).contains(&c.level) {
                return Err(invalid(
                    format!("{key}.level"),
                    "from 1 (fastest) to 9 (smallest)",
                ));
            }
            if c.types.is_empty() {
                return Err(invalid(
                    format!("{key}.types"),
                    "list the media types to compress",
                ));
            }
            for t in &c.types {
                let ok = t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && t.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"/+-.".contains(&c))
                });
                if !ok {
                    return Err(invalid(
                        format!("{key}.types"),
                        format!("`{t}` is not a media type such as `text/html`"),
                    ));
                }
            }
        }
        if let Some(s) = &b.sticky {
            let key = format!("{at}.sticky");
            // RFC 6265's cookie-name: a token.
            let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
            if s.cookie.is_empty() || !s.cookie.chars().all(token) {
                return Err(invalid(
                    format!("{key}.cookie"),
                    "a cookie name: letters, digits and `!#$%&'*+-.^_`|~`",
                ));
            }
            if !s.path.starts_with('/') || s.path.chars().any(|c| c == ';' || c.is_ascii_control())
            {
                return Err(invalid(
                    format!("{key}.path"),
                    "must start with `/` and hold no `;`",
                ));
            }
        }
        if b.resolve_interval.0 < Duration::from_millis(100) {
            return Err(invalid(
                format!("{at}.resolve-interval"),
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

impl Listener {
    /// `at`: `listeners[i]`; `names` and `binds`: those of the listeners before it.
    fn validate<'c>(
        &'c self,
        at: &str,
        cfg: &'c Config,
        backends: &HashSet<&str>,
        (names, binds): (&mut HashSet<&'c str>, &mut HashSet<std::net::SocketAddr>),
    ) -> Result<(), ConfigError> {
        let l = self;
        if !names.insert(l.name.as_str()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("`{}` is used twice", l.name),
            ));
        }
        if !binds.insert(l.bind) {
            return Err(invalid(
                format!("{at}.bind"),
                format!("{} is bound twice", l.bind),
            ));
        }
        if l.bind.port() == 0 {
            return Err(invalid(format!("{at}.bind"), "needs a port"));
        }
        if let Some(r) = &l.redirect_to_https {
            let key = format!("{at}.redirect-to-https");
            if l.tls.is_some() {
                return Err(invalid(key, "is for plain HTTP listeners, not TLS ones"));
            }
            if !matches!(r.code, 301 | 302 | 303 | 307 | 308) {
                return Err(invalid(
                    format!("{key}.code"),
                    format!(
                        "{} is not a redirect code (301, 302, 303, 307, 308)",
                        r.code
                    ),
                ));
            }
            if r.port == 0 {
                return Err(invalid(format!("{key}.port"), "must not be 0"));
            }
        }
        l.response_headers
            .validate(&format!("{at}.response-headers"))?;
        if let Some(r) = &l.rate_limit {
            let key = format!("{at}.rate-limit");
            if r.per_source == 0 {
                return Err(invalid(
                    format!("{key}.per-source"),
                    "requests per second, at least 1",
                ));
            }
            if !(1..=32).contains(&r.source_prefix_v4) {
                return Err(invalid(
                    format!("{key}.source-prefix-v4"),
                    "must be between 1 and 32",
                ));
            }
            if !(1..=128).contains(&r.source_prefix_v6) {
                return Err(invalid(
                    format!("{key}.source-prefix-v6"),
                    "must be between 1 and 128",
                ));
            }
            if r.table_size == 0 {
                return Err(invalid(format!("{key}.table-size"), "must be at least 1"));
            }
        }
        if let Some(f) = &l.forwarded_headers {
            let key = format!("{at}.forwarded-headers");
            if f.from.is_empty() {
                return Err(invalid(
                    format!("{key}.from"),
                    "name the proxies whose headers are believed",
                ));
            }
            if http::HeaderName::from_bytes(f.client_header.as_bytes()).is_err() {
                return Err(invalid(
                    format!("{key}.client-header"),
                    format!("`{}` is not a header name", f.client_header),
                ));
            }
        }
        for (j, p) in l.passthrough.iter().enumerate() {
            let key = format!("{at}.passthrough[{j}]");
            if let Err(why) = host_pattern(&p.host) {
                return Err(invalid(format!("{key}.host"), why));
            }
            match cfg.backends.iter().find(|b| b.name == p.backend) {
                None => {
                    return Err(invalid(
                        format!("{key}.backend"),
                        format!("no backend named `{}`", p.backend),
                    ));
                }
                Some(b) if b.tls.is_some() => {
                    return Err(invalid(
                        format!("{key}.backend"),
                        "the client's TLS goes to the servers as it is: the backend must not have `tls`",
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(b) = &l.default_backend
            && l.mode == Mode::Http
            && cfg
                .backends
                .iter()
                .any(|x| &x.name == b && x.send_proxy.is_some())
        {
            return Err(invalid(
                format!("{at}.default-backend"),
                format!(
                    "`{b}` has `send-proxy`, which is for connections carried as bytes (`mode: tcp`, `passthrough`); HTTP requests share server connections among clients"
                ),
            ));
        }
        if l.max_connections_per_source == Some(0) {
            return Err(invalid(
                format!("{at}.max-connections-per-source"),
                "at least 1 (leave it out for no limit)",
            ));
        }
        if l.proxy_protocol.as_ref().is_some_and(|p| p.from.is_empty()) {
            return Err(invalid(
                format!("{at}.proxy-protocol.from"),
                "is empty; leave it out to expect the header from every peer",
            ));
        }
        // Without certificates, a listener with passthrough hosts only carries TLS by SNI.
        let passthrough_only = l.tls.is_none() && !l.passthrough.is_empty();
        if l.mode == Mode::Tcp || passthrough_only {
            let what = if passthrough_only {
                "has `passthrough` and no `tls`: it only carries TLS connections by SNI"
            } else {
                "has `mode: tcp`"
            };
            if l.mode == Mode::Tcp && l.default_backend.is_none() {
                return Err(invalid(
                    format!("{at}.default-backend"),
                    "required with `mode: tcp`: every connection goes there",
                ));
            }
            // These act on HTTP requests, which such a listener never reads.
            for (set, name) in [
                (
                    passthrough_only && l.default_backend.is_some(),
                    "default-backend",
                ),
                (l.redirect_to_https.is_some(), "redirect-to-https"),
                (l.rate_limit.is_some(), "rate-limit"),
                (l.forwarded_headers.is_some(), "forwarded-headers"),
                (
                    l.mode == Mode::Tcp && !l.passthrough.is_empty(),
                    "passthrough",
                ),
                (
                    !l.response_headers.set.is_empty() || !l.response_headers.remove.is_empty(),
                    "response-headers",
                ),
            ] {
                if set {
                    return Err(invalid(
                        format!("{at}.{name}"),
                        format!("is for HTTP; this listener {what}"),
                    ));
                }
            }
            if let Some(b) = cfg
                .backends
                .iter()
                .find(|b| Some(&b.name) == l.default_backend.as_ref())
                && (b.tls.is_some() || b.proto == Proto::H2)
            {
                return Err(invalid(
                    format!("{at}.default-backend"),
                    "a TCP listener carries bytes as they are: its backend can have neither `tls` nor `proto: h2`",
                ));
            }
        }
        if let Some(b) = &l.default_backend
            && !backends.contains(b.as_str())
        {
            return Err(invalid(
                format!("{at}.default-backend"),
                format!("no backend named `{b}`"),
            ));
        }
        Ok(())
    }
}

impl Route {
    /// `at`: `routes[i]`; `backends`: every backend's name.
    fn validate(
        &self,
        at: &str,
        cfg: &Config,
        backends: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        let r = self;
        if let Some(l) = r
            .listeners
            .iter()
            .find(|l| !cfg.listeners.iter().any(|x| &x.name == *l))
        {
            return Err(invalid(
                format!("{at}.listeners"),
                format!("no listener named `{l}`"),
            ));
        }
        if let Some(m) = r
            .methods
            .iter()
            .find(|m| m.is_empty() || http::Method::from_bytes(m.as_bytes()).is_err())
        {
            return Err(invalid(
                format!("{at}.methods"),
                format!("`{m}` is not a method"),
            ));
        }
        if r.query.keys().any(String::is_empty) {
            return Err(invalid(format!("{at}.query"), "empty parameter name"));
        }
        r.request_headers
            .validate(&format!("{at}.request-headers"))?;
        r.response_headers
            .validate(&format!("{at}.response-headers"))?;
        let targets = [
            !r.backend.is_empty(),
            !r.split.is_empty(),
            r.redirect.is_some(),
        ];
        match targets.iter().filter(|t| **t).count() {
            0 => {
                return Err(invalid(
                    format!("{at}.backend"),
                    "required (or `split`, or `redirect`)",
                ));
            }
            1 => {}
            _ => {
                return Err(invalid(at, "set one of `backend`, `split` and `redirect`"));
            }
        }
        if let Some(d) = &r.redirect {
            let key = format!("{at}.redirect");
            let parts = d.scheme.is_some()
                || d.hostname.is_some()
                || d.port.is_some()
                || d.replace_path.is_some()
                || d.replace_prefix.is_some();
            let target = match (&d.location, &d.prefix, parts) {
                (Some(l), None, false) => l,
                (None, Some(p), false) => p,
                (None, None, true) => "/",
                _ => {
                    return Err(invalid(
                        key,
                        "set one of `location`, `prefix`, or parts of the URL (`scheme`, `hostname`, `port`, `replace-path`, `replace-prefix`)",
                    ));
                }
            };
            if let Some(s) = d
                .scheme
                .as_deref()
                .filter(|s| !matches!(*s, "http" | "https"))
            {
                return Err(invalid(
                    format!("{key}.scheme"),
                    format!("`{s}`: http or https"),
                ));
            }
            if let Some(h) = &d.hostname {
                if h.starts_with('*') {
                    return Err(invalid(
                        format!("{key}.hostname"),
                        "a host name, not a wildcard",
                    ));
                }
                host_pattern(h).map_err(|e| invalid(format!("{key}.hostname"), e))?;
            }
            if d.replace_path.is_some() && d.replace_prefix.is_some() {
                return Err(invalid(
                    key,
                    "set one of `replace-path` and `replace-prefix`",
                ));
            }
            if d.replace_prefix.is_some() && r.path_prefix.is_none() {
                return Err(invalid(
                    format!("{key}.replace-prefix"),
                    "only with the route's `path-prefix`",
                ));
            }
            for (k, p) in [
                ("replace-path", &d.replace_path),
                ("replace-prefix", &d.replace_prefix),
            ] {
                if let Some(p) = p
                    && (!p.starts_with('/') || http::HeaderValue::from_str(p).is_err())
                {
                    return Err(invalid(
                        format!("{key}.{k}"),
                        format!("`{p}`: a path starting with /"),
                    ));
                }
            }
            if target.is_empty() || http::HeaderValue::from_str(target).is_err() {
                return Err(invalid(
                    key,
                    format!("`{target}` cannot be a Location header"),
                ));
            }
            if d.drop_query && d.prefix.is_none() {
                return Err(invalid(format!("{key}.drop-query"), "only with `prefix`"));
            }
            if !matches!(d.code, 301 | 302 | 303 | 307 | 308) {
                return Err(invalid(
                    format!("{key}.code"),
                    format!(
                        "{} is not a redirect code (301, 302, 303, 307, 308)",
                        d.code
                    ),
                ));
            }
            // These act on a request that goes to a backend, which this one never does.
            for (set, name) in [
                (r.mirror.is_some(), "mirror"),
                (r.rewrite_prefix.is_some(), "rewrite-prefix"),
                (r.rewrite_target.is_some(), "rewrite-target"),
            ] {
                if set {
                    return Err(invalid(
                        format!("{at}.{name}"),
                        "has no effect on a `redirect` route",
                    ));
                }
            }
        }
        let targets = std::iter::once((format!("{at}.backend"), &r.backend))
            .filter(|(_, b)| !b.is_empty())
            .chain(
                r.split
                    .iter()
                    .enumerate()
                    .map(|(j, s)| (format!("{at}.split[{j}].backend"), &s.backend)),
            );
        for (key, b) in targets {
            if !backends.contains(b.as_str()) {
                return Err(invalid(key, format!("no backend named `{b}`")));
            }
        }
        let http_targets = std::iter::once(&r.backend)
            .chain(r.split.iter().map(|s| &s.backend))
            .chain(r.mirror.as_ref());
        for b in http_targets {
            if cfg
                .backends
                .iter()
                .any(|x| &x.name == b && x.send_proxy.is_some())
            {
                return Err(invalid(
                    at,
                    format!(
                        "`{b}` has `send-proxy`, which is for connections carried as bytes (`mode: tcp`, `passthrough`); HTTP requests share server connections among clients"
                    ),
                ));
            }
        }
        if let Some(m) = &r.mirror {
            let key = format!("{at}.mirror");
            match cfg.backends.iter().find(|b| &b.name == m) {
                None => return Err(invalid(key, format!("no backend named `{m}`"))),
                Some(b) if b.proto == Proto::H2 => {
                    return Err(invalid(
                        key,
                        "a mirror backend speaks HTTP/1.1 (`proto: h1`)",
                    ));
                }
                Some(_) => {}
            }
        }
        for (j, s) in r.split.iter().enumerate() {
            if s.weight > 1000 {
                return Err(invalid(
                    format!("{at}.split[{j}].weight"),
                    "must be between 0 and 1000",
                ));
            }
        }
        if !r.split.is_empty() && r.split.iter().all(|s| s.weight == 0) {
            return Err(invalid(
                format!("{at}.split"),
                "at least one weight must be above 0",
            ));
        }
        if let Some(c) = &r.cors {
            let key = format!("{at}.cors");
            if c.allow_origins.is_empty() {
                return Err(invalid(
                    format!("{key}.allow-origins"),
                    "at least one origin (`https://app.example.com`) or `*`",
                ));
            }
            for o in &c.allow_origins {
                let uri = o.parse::<http::Uri>().ok();
                let origin = uri.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some()
                        && u.path_and_query().is_none_or(|p| p.as_str() == "/")
                        && !o.ends_with('/')
                });
                if o != "*" && !origin {
                    return Err(invalid(
                        format!("{key}.allow-origins"),
                        format!("`{o}` is not an origin: scheme://host[:port], no path"),
                    ));
                }
            }
            let names = c.allow_headers.iter().chain(&c.expose_headers);
            for n in names {
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(invalid(key.clone(), format!("`{n}` is not a header name")));
                }
            }
            for m in &c.allow_methods {
                if http::Method::from_bytes(m.as_bytes()).is_err() {
                    return Err(invalid(
                        format!("{key}.allow-methods"),
                        format!("`{m}` is not a method"),
                    ));
                }
            }
            // Any origin with credentials lets every site on the web read the user's
            // answers with their cookies: the origin would have to be reflected, which is
            // exactly the hole CORS exists to close.
            if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
                return Err(invalid(
                    format!("{key}.allow-origins"),
                    "`*` with allow-credentials: true (the default) would let any site read \
                     answers made with the user's credentials; list the origins, or set \
                     allow-credentials: false",
                ));
            }
        }
        if let Some(a) = &r.auth {
            let key = format!("{at}.auth");
            match a.url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
                _ => {
                    return Err(invalid(
                        format!("{key}.url"),
                        "an http:// URL with a host (the auth service, in the cluster)",
                    ));
                }
            }
            if let Some(s) = &a.signin
                && (!(s.starts_with("https://") || s.starts_with("http://"))
                    || http::HeaderValue::from_str(s).is_err())
            {
                return Err(invalid(format!("{key}.signin"), "an http(s):// URL"));
            }
            for n in &a.response_headers {
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(invalid(
                        format!("{key}.response-headers"),
                        format!("`{n}` is not a header name"),
                    ));
                }
            }
            if a.timeout.0.is_zero() {
                return Err(invalid(format!("{key}.timeout"), "must be greater than 0"));
            }
        }
        for (n, v) in &r.headers {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return Err(invalid(
                    format!("{at}.headers.{n}"),
                    "not a header name and value",
                ));
            }
        }
        let paths = [&r.path, &r.path_prefix, &r.path_regex];
        if paths.iter().filter(|p| p.is_some()).count() > 1 {
            return Err(invalid(
                at,
                "set one of `path`, `path-prefix` and `path-regex`",
            ));
        }
        if let Some(re) = &r.path_regex
            && let Err(e) = regex::Regex::new(re)
        {
            return Err(invalid(format!("{at}.path-regex"), e.to_string()));
        }
        if let Some(t) = &r.rewrite_target {
            let key = format!("{at}.rewrite-target");
            if r.path_regex.is_none() {
                return Err(invalid(key, "needs `path-regex`, whose captures it uses"));
            }
            if !t.starts_with('/') || t.contains(['?', '#']) || t.chars().any(char::is_whitespace) {
                return Err(invalid(
                    key,
                    "a path starting with `/`, `$1`... for the captures",
                ));
            }
        }
        for (key, p) in [
            ("path", &r.path),
            ("path-prefix", &r.path_prefix),
            ("rewrite-prefix", &r.rewrite_prefix),
        ] {
            if let Some(p) = p
                && !p.starts_with('/')
            {
                return Err(invalid(format!("{at}.{key}"), "must start with `/`"));
            }
        }
        if let Some(p) = &r.rewrite_prefix {
            if r.path_prefix.is_none() {
                return Err(invalid(
                    format!("{at}.rewrite-prefix"),
                    "needs `path-prefix`: it replaces the matched prefix",
                ));
            }
            if p.contains(['?', '#']) || http::uri::PathAndQuery::try_from(p.as_str()).is_err() {
                return Err(invalid(
                    format!("{at}.rewrite-prefix"),
                    format!("`{p}` is not a URL path"),
                ));
            }
        }
        if let Some(h) = &r.host
            && let Err(why) = host_pattern(h)
        {
            return Err(invalid(format!("{at}.host"), why));
        }
        for u in &r.upgrades {
            let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"[]?={}".contains(c);
            if u.is_empty() || !u.chars().all(token) {
                return Err(invalid(
                    format!("{at}.upgrades"),
                    format!("`{u}` is not a protocol name (`websocket`)"),
                ));
            }
            if u.eq_ignore_ascii_case("h2c") {
                return Err(invalid(
                    format!("{at}.upgrades"),
                    "`h2c` would tunnel HTTP/2 requests past routing and auth; clients get \
                     HTTP/2 from floodgate itself (TLS with ALPN, or prior knowledge)",
                ));
            }
        }
        Ok(())
    }
}
