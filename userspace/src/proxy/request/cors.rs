//! CORS per route (`routes[].cors`), ingress-nginx's `enable-cors`: preflight requests are
//! answered here, never sent to the backend, and every answer to an allowed origin carries
//! the `Access-Control-Allow-*` headers a browser needs to hand it to the page, errors
//! included, so a page can read a 429 or a 503.

use http::{HeaderMap, HeaderValue, Method, Request, header};

use crate::config;

/// Who may read the route's answers. Any origin never goes with credentials (config refuses
/// it), so an origin is reflected with `Access-Control-Allow-Credentials` only when listed.
#[derive(Debug)]
enum Origins {
    /// `*`: answered `Access-Control-Allow-Origin: *`, without credentials.
    Any,
    /// Origins as sent by browsers (`https://app.example.com`).
    Listed {
        origins: Vec<HeaderValue>,
        credentials: bool,
    },
}

#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

impl Cors {
    /// `None` when a value does not fit a header, or for `*` with credentials; config
    /// validation refused both already.
    pub fn new(c: &config::Cors) -> Option<Self> {
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).ok();
        let origins = if c.allow_origins.iter().any(|o| o == "*") {
            if c.allow_credentials {
                return None;
            }
            Origins::Any
        } else {
            Origins::Listed {
                origins: c
                    .allow_origins
                    .iter()
                    .map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Option<_>>()?,
                credentials: c.allow_credentials,
            }
        };
        Some(Self {
            origins,
            methods: join(&c.allow_methods)?,
            headers: join(&c.allow_headers)?,
            expose: (!c.expose_headers.is_empty())
                .then(|| join(&c.expose_headers))
                .flatten(),
            max_age: HeaderValue::from(c.max_age.0.as_secs()),
        })
    }

    /// The request's `Origin` when this route allows it.
    pub fn allowed<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        let listed = match &self.origins {
            Origins::Any => true,
            Origins::Listed { origins, .. } => origins.contains(origin),
        };
        listed.then(|| origin.clone())
    }

    /// A preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight<B>(req: &Request<B>) -> bool {
        req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ORIGIN)
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of an answer on this route: `Vary: Origin` always, since the answer depends
    /// on the origin; the `Access-Control-Allow-*` ones when `origin` is an allowed one, and
    /// with `preflight` what a preflight answer needs.
    pub fn apply(&self, h: &mut HeaderMap, origin: Option<&HeaderValue>, preflight: bool) {
        // Caches must keep one answer per origin.
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin else { return };
        let (allow, credentials) = match &self.origins {
            Origins::Any => (HeaderValue::from_static("*"), false),
            Origins::Listed { credentials, .. } => (origin.clone(), *credentials),
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone());
            h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        } else if let Some(e) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, origin: Option<&str>, asks: bool) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if asks {
            b = b.header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT");
        }
        b.body(()).expect("request")
    }

    #[test]
    fn origins_preflights_and_credentials() {
        let cors = Cors::new(&config::Cors {
            allow_origins: vec!["https://app.example".into()],
            expose_headers: vec!["X-Total".into()],
            ..config::Cors::default()
        })
        .expect("cors");
        let ok = req(Method::OPTIONS, Some("https://app.example"), true);
        assert!(Cors::is_preflight(&ok));
        assert!(!Cors::is_preflight(&req(
            Method::OPTIONS,
            Some("https://app.example"),
            false
        )));
        assert!(!Cors::is_preflight(&req(
            Method::GET,
            Some("https://app.example"),
            true
        )));
        let origin = cors.allowed(&ok).expect("allowed");
        assert_eq!(
            cors.allowed(&req(Method::GET, Some("https://evil.example"), false)),
            None
        );
        assert_eq!(cors.allowed(&req(Method::GET, None, false)), None);
        let mut h = HeaderMap::new();
        cors.apply(&mut h, Some(&origin), true);
        let get = |h: &HeaderMap, n| {
            h.get(n)
                .map(|v: &HeaderValue| v.to_str().unwrap_or_default().to_owned())
        };
        assert_eq!(
            get(&h, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            get(&h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS).as_deref(),
            Some("true")
        );
        assert_eq!(
            get(&h, header::ACCESS_CONTROL_MAX_AGE).as_deref(),
            Some("1728000")
        );
        assert!(get(&h, header::ACCESS_CONTROL_ALLOW_METHODS).is_some_and(|m| m.contains("PATCH")));
        assert_eq!(
            get(&h, header::ACCESS_CONTROL_EXPOSE_HEADERS),
            None,
            "not on preflights"
        );
        let mut h = HeaderMap::new();
        cors.apply(&mut h, Some(&origin), false);
        assert_eq!(
            get(&h, header::ACCESS_CONTROL_EXPOSE_HEADERS).as_deref(),
            Some("X-Total")
        );
        assert_eq!(get(&h, header::VARY).as_deref(), Some("Origin"));
        // Another origin's answer: only `Vary`.
        let mut h = HeaderMap::new();
        cors.apply(&mut h, None, false);
        assert_eq!(h.len(), 1);
        assert_eq!(get(&h, header::VARY).as_deref(), Some("Origin"));
        // `*` is sent as `*`, never with credentials; `*` with credentials cannot be built.
        let any = |credentials| {
            Cors::new(&config::Cors {
                allow_origins: vec!["*".into()],
                allow_credentials: credentials,
                ..config::Cors::default()
            })
        };
        assert!(any(true).is_none(), "an origin reflected with credentials");
        let any = any(false).expect("cors");
        let r = req(Method::GET, Some("https://x.example"), false);
        let o = any.allowed(&r).expect("any origin");
        let mut h = HeaderMap::new();
        any.apply(&mut h, Some(&o), false);
        assert_eq!(
            get(&h, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some("*")
        );
        assert_eq!(get(&h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
    }
}
