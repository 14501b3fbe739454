//! Cookie persistence (`backends[].sticky`), HAProxy's `cookie <name> insert indirect nocache`:
//! a client whose cookie names a server goes back to it (`pool.rs` holds it in that server's
//! queue when the server is full); one without, or whose server is gone, gets the cookie of
//! the server it was balanced to. The cookie is taken out of the request before it leaves
//! (`indirect`), and a response that sets it is marked `Cache-Control: private` (`nocache`) so
//! no shared cache hands it to other clients.

use http::{HeaderMap, HeaderValue, header};

use crate::config;

/// A backend's cookie settings, with the attributes written once.
#[derive(Debug)]
pub struct Persist {
    name: String,
    /// `; Path=/; HttpOnly; SameSite=Lax; Max-Age=N`, without `Secure`.
    attributes: String,
}

impl Persist {
    pub fn new(s: &config::Sticky) -> Self {
        let mut attributes = format!("; Path={}", s.path);
        if s.http_only {
            attributes.push_str("; HttpOnly");
        }
        attributes.push_str(match s.same_site {
            config::SameSite::Lax => "; SameSite=Lax",
            config::SameSite::Strict => "; SameSite=Strict",
            config::SameSite::None => "; SameSite=None",
        });
        if let Some(age) = s.max_age {
            attributes.push_str(&format!("; Max-Age={}", age.0.as_secs()));
        }
        Self {
            name: s.cookie.clone(),
            attributes,
        }
    }

    /// The server the request's cookie names, if it carries one; the cookie is removed from
    /// the request's `Cookie` headers either way (the server never sees it).
    pub fn take(&self, headers: &mut HeaderMap) -> Option<u64> {
        if !headers.contains_key(header::COOKIE) {
            return None;
        }
        let mut found = None;
        let mut kept: Vec<HeaderValue> = Vec::new();
        let mut changed = false;
        for v in headers.get_all(header::COOKIE) {
            let Ok(text) = v.to_str() else {
                kept.push(v.clone());
                continue;
            };
            let mut rest = Vec::new();
            for pair in text.split(';') {
                let pair = pair.trim();
                match pair.split_once('=') {
                    Some((n, value)) if n.trim() == self.name => {
                        changed = true;
                        found = found.or_else(|| u64::from_str_radix(value.trim(), 16).ok());
                    }
                    _ if pair.is_empty() => {}
                    _ => rest.push(pair),
                }
            }
            if rest.is_empty() {
                continue;
            }
            match HeaderValue::from_str(&rest.join("; ")) {
                Ok(h) => kept.push(h),
                Err(_) => kept.push(v.clone()),
            }
        }
        if changed {
            headers.remove(header::COOKIE);
            for v in kept {
                headers.append(header::COOKIE, v);
            }
        }
        found
    }

    /// Pins the client to the server with `cookie`: `Set-Cookie` (with `Secure` when it came
    /// over HTTPS), and `Cache-Control: private` appended to what the server said.
    pub fn set(&self, headers: &mut HeaderMap, cookie: u64, secure: bool) {
        let value = format!(
            "{}={cookie:016x}{}{}",
            self.name,
            self.attributes,
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(header::SET_COOKIE, v);
            headers.append(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persist() -> Persist {
        Persist::new(&config::Sticky {
            cookie: "SRV".into(),
            ..config::Sticky::default()
        })
    }

    #[test]
    fn the_cookie_is_read_and_taken_out_of_the_request() {
        let p = persist();
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; SRV=00000000000000ff; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("SRV=zz"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(p.take(&mut h), Some(0xff));
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        // Without it, the headers are untouched; a bad value names no server.
        assert_eq!(p.take(&mut h), None);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 2);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("SRV=nothex"));
        assert_eq!(p.take(&mut h), None);
        assert!(!h.contains_key(header::COOKIE), "taken out all the same");
        // A cookie whose name only ends like it is someone else's.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("XSRV=1"));
        assert_eq!(p.take(&mut h), None);
        assert_eq!(
            h.get(header::COOKIE).map(|v| v.as_bytes()),
            Some(&b"XSRV=1"[..])
        );
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        let p = Persist::new(&config::Sticky {
            cookie: "SRV".into(),
            max_age: Some(config::HDuration::secs(3600)),
            same_site: config::SameSite::Strict,
            ..config::Sticky::default()
        });
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        p.set(&mut h, 0xab, true);
        assert_eq!(
            h.get(header::SET_COOKIE)
                .map(|v| v.to_str().unwrap_or_default()),
            Some("SRV=00000000000000ab; Path=/; HttpOnly; SameSite=Strict; Max-Age=3600; Secure")
        );
        let cc: Vec<_> = h.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(cc, ["public, max-age=60", "private"]);
    }
}
