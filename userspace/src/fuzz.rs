//! Entry points for `cargo fuzz` (`fuzz/`), one per parser floodgate writes by hand, each
//! checking the invariants its callers rely on. Built only with the `fuzz` feature: the
//! parsers stay private to their modules otherwise.

use std::str::FromStr as _;

/// PROXY protocol v1/v2: a complete header never claims more bytes than it was given.
pub fn proxy_protocol(data: &[u8]) {
    crate::proxy::listener::proxyproto::fuzz(data);
}

/// The ClientHello server_name reader: whatever it returns is a name it found in the bytes.
pub fn client_hello(data: &[u8]) {
    crate::proxy::listener::passthrough::fuzz(data);
}

/// The upstream HTTP/1.1 response head (framing, RFC 9112 section 6.3) and chunk-size lines.
pub fn response_head(data: &[u8]) {
    crate::proxy::upstream::direct::fuzz(data);
}

/// HAProxy durations: a duration parses or is refused, never panics, and what parses prints
/// back to a value that parses to the same.
pub fn duration(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = crate::config::HDuration::from_str(s) {
        let again = crate::config::HDuration::from_str(&format!("{}us", d.0.as_micros()));
        assert!(
            again.is_ok_and(|a| a.0 == d.0) || d.0.as_micros() > u128::from(u64::MAX),
            "{s}"
        );
    }
}

/// The config loader: YAML in, a config or an error naming a key out, never a panic. What
/// validates also yields its warnings without panicking.
pub fn config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.yaml");
    if let Ok(cfg) = crate::config::Config::from_text(s, path, Default::default()) {
        let _ = cfg.warnings();
    }
}

/// Request normalisation: what it accepts comes out in normal form (a second pass changes
/// nothing), with one host and a path free of dot segments and empty ones.
pub fn request(data: &[u8]) {
    crate::proxy::request::normalize::fuzz(data);
}

/// The HTTP/1.1 engine's request head against hyper's on the same bytes: a head the engine
/// serves, hyper serves too and reads the same (`proxy::h1::differential`).
pub fn request_head(data: &[u8]) {
    if let Err(e) = crate::proxy::h1::differential::check(data) {
        panic!("{:?}: {e}", String::from_utf8_lossy(data));
    }
}
