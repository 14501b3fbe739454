//! One request's way through the proxy, as named phases over one per-request context
//! (`Session`), Pingora's model. In order:
//!
//! 1. `request_filter`: `redirect-to-https` and the listener's `rate-limit` may answer; the
//!    request's size limits (414, 413); routing (`request/route.rs`: host, path, method,
//!    headers, query; else the listener's default, else 404); the route's `allow` (403), a
//!    `redirect` route's answer, CORS (a preflight is answered here), basic auth and the
//!    external auth service. Ends with a backend, or with an answer.
//! 2. `upstream_request`: hop-by-hop headers stripped, `X-Forwarded-*`, `X-Real-IP` and
//!    `X-Request-Id` added, the path rewritten (`rewrite-prefix`, `rewrite-target`), what the
//!    auth service said of the client, the backend's then the route's `request-headers`, the
//!    `sticky` cookie read, and a copy for the route's `mirror`.
//! 3. `forward`: a slot on a server from the backend's pool (`upstream/pool.rs`: balance,
//!    per-server maxconn, FIFO queue with `timeout queue`), one try over the backend's
//!    transport (`upstream/backend.rs`), retried on another server when connecting failed and
//!    the request can be sent again; passive health is fed here. A 101 becomes a tunnel.
//! 4. `response_filter`: the backend's then the route's `response-headers`, compression, the
//!    `sticky` cookie set.
//! 5. `logging`: an error becomes its status (`error.rs`) and error page; CORS headers and the
//!    listener's `response-headers` on every answer; metrics at the response head; bytes and
//!    the access log line when the response body ends (`Done`).

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;

use super::body::ClientBody;
use tracing::debug;

use super::{
    body::ProxyBody,
    error::ProxyError,
    fields::Answer,
    generation::{Generation, ListenerCtx},
    request, timeout,
    upstream::{
        self,
        backend::{Backend, MAX_CONNECT_ATTEMPTS, Reply, Upstream, empty_body},
        pool::Slot,
    },
};
use crate::{access, config, metrics};

/// One client connection, shared by the requests on it.
pub struct Conn {
    /// The client: the TCP peer, or the one its PROXY protocol header names.
    pub peer: SocketAddr,
    /// The peer's address as a header value, formatted once per connection rather than per
    /// request (formatting was about 3% of the CPU per proxied request).
    peer_ip: HeaderValue,
    /// The port the client connected to when a PROXY protocol header named it (the load
    /// balancer's), for `X-Forwarded-Port`; otherwise the listener's.
    port: Option<HeaderValue>,
    pub inflight: Arc<timeout::InFlight>,
    /// What the connection counts against while it, or a tunnel it became, lives: its global
    /// and listener `maxconn` permits, its place in the listener's and the worker's active
    /// connections, its per-source place. A WebSocket tunnel outlives the task that accepted
    /// its connection and keeps this, so it stays under those limits as HAProxy keeps it.
    /// Type-erased: the listener owns those types, and the listener calls this module.
    _held: Box<dyn Send + Sync>,
}

impl Conn {
    pub fn new(
        peer: SocketAddr,
        port: Option<u16>,
        inflight: Arc<timeout::InFlight>,
        held: Box<dyn Send + Sync>,
    ) -> Arc<Self> {
        let peer_ip = request::forwarded::ip_value(peer.ip());
        Arc::new(Self {
            peer,
            peer_ip,
            port: port.map(HeaderValue::from),
            inflight,
            _held: held,
        })
    }
}

/// One request, start to end, for a server side that writes only header maps (hyper's): see
/// [`handle_raw`].
pub async fn handle<B: ClientBody>(
    ctx: Arc<ListenerCtx>,
    conn: Arc<Conn>,
    req: Request<B>,
) -> Result<Response<ProxyBody>, Infallible> {
    let answer = handle_raw(ctx, conn, req).await?;
    Ok(answer.into_response().map(|b| b.boxed()))
}

/// One request, start to end: the phases below in order, over one `Session`. The server's
/// fields may still be raw in the answer (a response no rule touched): for the HTTP/1.1
/// engine, whose writer reads them so (`proxy::fields`).
///
/// A function returning an `async move` block rather than an `async fn`: an `async fn`'s
/// future keeps each argument twice (as passed, and as the body's local), and the request is
/// 368 bytes, copied whole with the future wherever the future moves.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
pub fn handle_raw<B: ClientBody>(
    ctx: Arc<ListenerCtx>,
    conn: Arc<Conn>,
    mut req: Request<B>,
) -> impl Future<Output = Result<Answer<Sent>, Infallible>> {
    async move {
        // In flight until the response body is sent (see timeout.rs).
        let guard = conn.inflight.start();
        let generation = ctx.generation();
        // The client: the connection's, or the one a trusted proxy's forwarding header names.
        let trusted = generation
            .forwarded
            .as_deref()
            .filter(|t| t.trusts(conn.peer.ip()));
        let named = trusted.and_then(|t| t.client(req.headers()));
        let client = Client {
            ip: named.as_ref().map_or(conn.peer.ip(), |c| c.ip),
            value: named.as_ref().map_or(&conn.peer_ip, |c| &c.value),
            trusted: trusted.is_some(),
        };
        // Before anything reads the request, so routing, auth, the log and the backend see one.
        let normalized = request::normalize::request(&mut req, ctx.forward_received);
        let log = generation.access.as_ref().and_then(|a| {
            let port = named.is_none().then_some(conn.peer.port());
            a.begin(
                &ctx.name,
                access::Client {
                    ip: client.ip,
                    port,
                },
                &req,
            )
        });
        let mut s = Session {
            ctx: &ctx,
            conn: &conn,
            generation: &generation,
            client,
            method: metrics::method_index(req.method()),
            started: Instant::now(),
            log,
            trace: Trace::default(),
            backend: None,
            handles: None,
            cors: None,
        };
        let result = match normalized {
            Ok(()) => s.proxy(req).await,
            Err(e) => Err(e),
        };
        Ok(s.logging(result, guard))
    }
}

/// A request's context, read and written by its phases.
struct Session<'g> {
    ctx: &'g ListenerCtx,
    conn: &'g Arc<Conn>,
    /// The generation the request started on, kept to its end.
    generation: &'g Generation,
    client: Client<'g>,
    /// The method, as the metrics' label index.
    method: usize,
    started: Instant,
    /// The access log line, when the listener writes one.
    log: Option<Box<access::Entry>>,
    trace: Trace,
    /// The backend routing chose (`request_filter`).
    backend: Option<&'g Backend>,
    /// This listener's metric handles for that backend, looked up once per request.
    handles: Option<&'g metrics::Handles>,
    /// The route's CORS settings and the request's origin if allowed, for the answer's headers.
    cors: Option<(&'g request::cors::Cors, Option<HeaderValue>)>,
}

/// What `request_filter` decided.
enum Decision<'g> {
    /// Answered without a backend: a redirect, a CORS preflight.
    Answer(Response<ProxyBody>),
    /// To `backend`, with what the auth service said of the client.
    Forward {
        backend: &'g Backend,
        routed: request::route::Routed<'g, Arc<Backend>>,
        authorized: Vec<(HeaderName, HeaderValue)>,
    },
}

impl<'g> Session<'g> {
    /// Phases 1 to 4; an error from any of them is answered by `logging`. Not an `async fn`,
    /// for the reason `handle_raw` is not.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice"
    )]
    fn proxy<B: ClientBody>(
        &mut self,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<Answer, ProxyError>> {
        async move {
            let (backend, routed, authorized) = match self.request_filter(&mut req).await? {
                Decision::Answer(resp) => return Ok(resp.into()),
                Decision::Forward {
                    backend,
                    routed,
                    authorized,
                } => (backend, routed, authorized),
            };
            let gzip = backend
                .compress
                .as_ref()
                .is_some_and(|_| request::compress::accepts_gzip(req.headers()));
            let head = req.method() == http::Method::HEAD;
            let asked_for;
            // Boxed: hyper keeps one allocation of this function's future per connection, sized
            // for its largest state, for the connection's whole life; the exchange with the
            // server is allocated per request instead, and only while it runs. The upstream
            // request lives in this block only, so it takes no room of its own in this future
            // beside the copy `forward` owns.
            let forwarding = {
                let up = self.upstream_request(req, backend, &routed, authorized)?;
                asked_for = up.sticky;
                let body_timeouts = self.handles.map(metrics::Handles::body_timeouts);
                let tunnel_counters = self
                    .handles
                    .filter(|_| up.upgrade.is_some())
                    .map(metrics::Handles::tunnel);
                Box::pin(forward(
                    backend,
                    up,
                    self.conn,
                    (body_timeouts, tunnel_counters),
                    &mut self.trace,
                ))
            };
            let resp = forwarding.await?;
            Ok(self.response_filter(resp, backend, &routed, (gzip, head), asked_for))
        }
    }

    /// Phase 1: whether the request goes on, and to which backend.
    async fn request_filter<B>(
        &mut self,
        req: &mut Request<B>,
    ) -> Result<Decision<'g>, ProxyError> {
        let (ctx, generation) = (self.ctx, self.generation);
        if let Some(r) = &generation.redirect
            && let Some(resp) = request::redirect::to_https(r, req)
        {
            if let Some(m) = &ctx.metrics {
                m.redirect(&ctx.name);
            }
            return Ok(Decision::Answer(resp));
        }
        if let Some(l) = &generation.rate_limit {
            l.check(self.client.ip, Instant::now())
                .map_err(|retry_after| ProxyError::RateLimited { retry_after })?;
        }
        check_limits(&ctx.limits, req)?;
        let routed = route(generation, req, self.client.ip)?;
        if routed.forbidden {
            return Err(ProxyError::Forbidden);
        }
        let backend = match routed.to {
            request::route::Dest::Backend(b) => b,
            request::route::Dest::Redirect(d) => {
                let host = request::redirect::host(req);
                let origin = request::redirect::Origin {
                    host: host.as_deref(),
                    scheme: ctx.scheme,
                    port: ctx.port_number,
                };
                return d.answer(req.uri(), origin).map(Decision::Answer);
            }
        };
        self.backend = Some(backend);
        if let Some(c) = routed.cors {
            self.cors = Some((c, c.allowed(req)));
            if request::cors::Cors::is_preflight(req) {
                // Answered here: the backend never sees a preflight, and it carries no
                // credentials an auth service could check.
                let mut resp = Response::new(empty_body());
                *resp.status_mut() = http::StatusCode::NO_CONTENT;
                if let Some((c, origin)) = self.cors.take() {
                    c.apply(resp.headers_mut(), origin.as_ref(), true);
                }
                return Ok(Decision::Answer(resp));
            }
        }
        if let Some(b) = routed.basic {
            b.check(req.headers()).await?;
        }
        let authorized = match routed.auth {
            Some(a) => {
                // The backend believes these headers because only the auth service sets them:
                // a client's own copies go before anyone reads them.
                a.strip(req.headers_mut());
                a.check(req, ctx.scheme, self.client.value).await?
            }
            None => Vec::new(),
        };
        self.handles = ctx.handles(generation, backend);
        Ok(Decision::Forward {
            backend,
            routed,
            authorized,
        })
    }

    /// Phase 2: the request as the backend gets it.
    fn upstream_request<B: ClientBody>(
        &mut self,
        req: Request<B>,
        backend: &Backend,
        routed: &request::route::Routed<'g, Arc<Backend>>,
        authorized: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Upstream, ProxyError> {
        let mut up = upstream_request(
            self.ctx,
            self.conn,
            &self.client,
            req,
            backend.is_h2(),
            routed,
        )?;
        // Each edit below takes the map through `headers_mut`, which moves the forwarding
        // fields into it first: a rule sees, and may change, what the server would get.
        if backend.compress.as_ref().is_some_and(|c| c.offload) {
            up.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        for (n, v) in authorized {
            // What the auth service says of the client replaces anything the client sent.
            up.headers_mut().insert(n, v);
        }
        if let Some(m) = routed.mirror
            && up.upgrade.is_none()
        {
            let body = up.body.take();
            up.body = upstream::mirror::copy(
                &self.generation.routing.mirrors,
                m,
                up.parts(),
                body,
                self.ctx.metrics.clone(),
            );
        }
        if let Some(p) = &backend.sticky {
            up.sticky = p.take(up.headers_mut());
        }
        if let Some(r) = &backend.request_rules {
            r.apply(up.headers_mut());
        }
        if let Some(r) = routed.request_headers {
            r.apply(up.headers_mut());
        }
        if let Some(e) = self.log.as_mut() {
            e.request_id = up
                .request_id()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        if let Some(h) = self.handles {
            let counter = h.bytes_in.clone();
            up.body = up.body.map(|body| {
                Hold {
                    body,
                    guard: Count { counter, n: 0 },
                }
                .boxed()
            });
        }
        Ok(up)
    }

    /// Phase 4: the backend's answer as the client gets it. `asked_for`: the server the
    /// client's `sticky` cookie named.
    fn response_filter(
        &self,
        mut resp: Answer,
        backend: &Backend,
        routed: &request::route::Routed<'g, Arc<Backend>>,
        (gzip, head): (bool, bool),
        asked_for: Option<u64>,
    ) -> Answer {
        // Each rule reaches the fields through `headers_mut`, which moves the server's raw
        // ones into the map first (`proxy::fields`).
        if let Some(r) = &backend.response_rules {
            r.apply(resp.headers_mut());
        }
        if let Some(r) = routed.response_headers {
            r.apply(resp.headers_mut());
        }
        if let Some(c) = &backend.compress {
            let (r, compressed) = c.apply(gzip, head, resp.into_response());
            resp = r.into();
            if compressed && let Some(h) = self.handles {
                h.compressed().inc();
            }
        }
        if let (Some(p), Some(s)) = (&backend.sticky, &self.trace.server)
            && asked_for != Some(s.cookie)
        {
            p.set(resp.headers_mut(), s.cookie, self.ctx.scheme == "https");
        }
        resp
    }

    /// Phase 5: an error answered, the headers every answer gets, metrics and the access log
    /// (its line written when the response body ends).
    fn logging(
        mut self,
        result: Result<Answer, ProxyError>,
        guard: timeout::InFlightGuard,
    ) -> Answer<Sent> {
        let ctx = self.ctx;
        let backend = self.backend.map_or("", Backend::name);
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                debug!(error = %e, peer = %self.conn.peer, "request failed");
                if let Some(m) = &ctx.metrics {
                    m.error(&ctx.name, backend, e.kind());
                }
                let mut resp = error_response(&e);
                if let Some((body, kind)) = self.generation.routing.error_pages.get(resp.status()) {
                    *resp.body_mut() = Full::new(body.clone())
                        .map_err(|never| match never {})
                        .boxed();
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, kind.clone());
                }
                resp.into()
            }
        };
        if let Some((c, origin)) = &self.cors {
            c.apply(resp.headers_mut(), origin.as_ref(), false);
        }
        if let Some(r) = &self.generation.response_headers {
            r.apply(resp.headers_mut());
        }
        let status = resp.status().as_u16();
        let trace = &self.trace;
        let bytes_out = ctx.metrics.as_ref().map(|m| {
            if let Some(q) = trace.queued
                && let Some(h) = self.handles
            {
                h.queue.observe(q.as_secs_f64());
            }
            if let Some(s) = &trace.server {
                m.server_response(&s.responses, backend, &s.label, status);
            }
            if trace.retries > 0 {
                m.retries(backend, trace.retries);
            }
            match self.handles {
                Some(h) => {
                    h.observe(self.method, status, self.started.elapsed());
                    h.bytes_out.clone()
                }
                None => {
                    m.observe(
                        &ctx.name,
                        backend,
                        self.method,
                        status,
                        self.started.elapsed(),
                    );
                    m.bytes_out(&ctx.name, backend)
                }
            }
        });
        if let Some(e) = self.log.as_mut() {
            e.status = status;
            backend.clone_into(&mut e.backend);
            e.server = trace.server.as_ref().map(|s| s.addr);
            e.retries = trace.retries;
            e.queue_ms = trace.queued.map_or(0.0, |q| q.as_secs_f64() * 1000.0);
        }
        let log = self.log;
        // Not boxed again: the engine's writer takes this type as it is (hyper's side,
        // `handle`, boxes it).
        resp.map_body(|body| Hold {
            body,
            guard: Done {
                _inflight: guard,
                bytes_out,
                log,
                sent: 0,
            },
        })
    }
}

/// What `forward` learnt, for metrics and the access log.
#[derive(Debug, Default)]
struct Trace {
    /// The last server tried.
    server: Option<Arc<upstream::pool::Server>>,
    retries: u32,
    /// Time spent waiting for server slots, when a slot was asked for.
    queued: Option<Duration>,
}

/// 414 and 413 here; 431 (too many or too large headers) is hyper's, from the same limits.
fn check_limits<B>(l: &config::Limits, req: &Request<B>) -> Result<(), ProxyError> {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > l.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            len,
            max: l.max_uri_bytes,
        });
    }
    if l.max_body_bytes > 0
        && let Some(len) = body_hint(req.headers()).filter(|n| *n > l.max_body_bytes)
    {
        return Err(ProxyError::BodyTooLarge {
            len,
            max: l.max_body_bytes,
        });
    }
    Ok(())
}

fn route<'g, B>(
    ctx: &'g Generation,
    req: &Request<B>,
    client: std::net::IpAddr,
) -> Result<request::route::Routed<'g, Arc<Backend>>, ProxyError> {
    let host = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
    ctx.routing
        .router
        .ask(&request::route::Ask {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
            client,
            listener: ctx.listener,
        })
        .or(ctx
            .default_backend
            .as_ref()
            .map(|b| request::route::Routed {
                to: request::route::Dest::Backend(b),
                rewrite: None,
                forbidden: false,
                auth: None,
                basic: None,
                cors: None,
                mirror: None,
                upgrades: &request::route::DEFAULT_UPGRADES,
                request_headers: None,
                response_headers: None,
            }))
        .ok_or(ProxyError::NoRoute)
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1). A
/// `static`: as a `const`, every use built (and dropped) the nine names anew, which was 10%
/// of a proxied request's instructions (callgrind, docs/benchmarks.md).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    // Only meaningful with an h2c upgrade, which never reaches a backend.
    request::headers::HTTP2_SETTINGS,
    request::headers::KEEP_ALIVE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `n`'s index in `HOP_BY_HOP`: one match on the name's text (a switch on its length), not
/// nine comparisons.
fn hop_by_hop(n: &str) -> Option<usize> {
    Some(match n {
        "connection" => 0,
        "http2-settings" => 1,
        "keep-alive" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) fields, noting which hop-by-hop ones are there: most messages
    // have none, or only `Connection: keep-alive`, and only those present are removed (each
    // removal hashes its name).
    let mut present = 0u16;
    for n in headers.keys() {
        if let Some(i) = hop_by_hop(n.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Headers named in Connection are hop-by-hop too; `close`, `keep-alive` and the other
        // names above need no lookup of their own.
        // A loop over the bytes: most fields say only `close` or `keep-alive`, and the chain
        // of `str` adapters this was cost 370 instructions more on each such request.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t)
                    && hop_by_hop(n.as_str()).is_none()
                {
                    named.push(n);
                }
            }
        }
        for h in &named {
            headers.remove(h);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

#[cfg(test)]
mod hop_tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_stripped() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(n.as_str()), Some(i));
        }
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Secret, close"),
            ("connection", " Close ,, x-other\t"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}

/// An HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header: its protocol.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let wants = req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Who a request is from, for everything that looks at its client.
struct Client<'a> {
    ip: IpAddr,
    /// `ip` as a header value.
    value: &'a HeaderValue,
    /// The connection's peer is a trusted proxy (`forwarded-headers`): its `X-Forwarded-Proto`,
    /// `-Host` and `-Port` stand.
    trusted: bool,
}

/// The request with its hop-by-hop headers stripped and the forwarding headers added, its
/// path rewritten. `h2`: the backend is `proto: h2` (`TE: trailers` is kept for it).
fn upstream_request<B: ClientBody>(
    ctx: &ListenerCtx,
    conn: &Conn,
    client: &Client<'_>,
    mut req: Request<B>,
    h2: bool,
    routed: &request::route::Routed<'_, Arc<Backend>>,
) -> Result<Upstream, ProxyError> {
    let rewrite = routed.rewrite;
    // An upgrade the route does not allow is ignored (RFC 9110 section 7.8 lets a server do
    // so): the request is served as plain HTTP and its Upgrade dropped as hop-by-hop.
    let protocol = upgrade_protocol(&req).filter(|p| routed.upgrades.allows(p));
    let upgrade = protocol
        .is_some()
        .then(|| super::upgrade::ClientUpgrade::of(&mut req));
    let (mut parts, body) = req.into_parts();
    let hv = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ProxyError::BadRequest("unrepresentable header".into()))
    };
    let host = match parts.uri.authority() {
        Some(a) => Some(hv(a.as_str())?),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // Only an HTTP/2 backend gets it: no header lookup on the HTTP/1.1 path.
    let te_trailers = h2
        && parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut parts.headers);
    // Only an HTTP/2 client splits its cookies into fields; an HTTP/1.1 client's lines go on
    // as it sent them (no lookup on the HTTP/1.1 path).
    if !h2 && parts.version == http::Version::HTTP_2 {
        request::headers::join_cookies(&mut parts.headers);
    }
    if let Some(p) = protocol {
        // The one hop-by-hop exchange that must reach the backend.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, p);
    }
    let h = &mut parts.headers;
    let present = request::headers::Present::of(h);
    let mut fwd = request::headers::Forwarding {
        has_host: present.host,
        ..Default::default()
    };
    fwd.xff = Some(match present.xff {
        true => match h
            .get(request::headers::X_FORWARDED_FOR)
            .map(HeaderValue::to_str)
        {
            Some(Ok(prior)) => hv(&format!(
                "{prior}, {}",
                conn.peer_ip.to_str().unwrap_or_default()
            ))?,
            // A prior value that is not text is replaced, not extended.
            Some(Err(_)) | None => conn.peer_ip.clone(),
        },
        false => conn.peer_ip.clone(),
    });
    // A trusted proxy's word on how the client reached it stands (it may have terminated TLS).
    if !(client.trusted && present.proto) {
        fwd.proto = Some(HeaderValue::from_static(ctx.scheme));
    }
    if !(client.trusted && present.port) {
        fwd.port = Some(conn.port.as_ref().unwrap_or(&ctx.port).clone());
    }
    // ingress-nginx sets it, and applications behind it read it.
    fwd.real_ip = Some(client.value.clone());
    if let Some(host) = host {
        if !(client.trusted && present.forwarded_host) {
            fwd.forwarded_host = Some(host.clone());
        }
        // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
        if !present.host {
            fwd.host = Some(host);
        }
    }
    if !present.request_id {
        let id = ctx.request_ids.fetch_add(1, Ordering::Relaxed);
        fwd.request_id = Some(request_id(&ctx.request_id_prefix, id)?);
    }
    if let Some(rw) = rewrite {
        // Tells the application where it is mounted, for the links it makes (as Traefik's
        // StripPrefix does).
        if let Some(p) = rw.forwarded_prefix() {
            fwd.prefix = Some(hv(p)?);
        }
        parts.uri = rewritten(&parts.uri, rw)?;
    } else if let Some(request::normalize::Received(received)) = parts.extensions.remove() {
        // `forward-path: as-received`: the backend gets the client's bytes; everything before
        // it decided on the normalised path.
        let mut target = std::mem::take(&mut parts.uri).into_parts();
        target.path_and_query = Some(received);
        parts.uri = Uri::from_parts(target)
            .map_err(|e| ProxyError::BadRequest(format!("bad target: {e}")))?;
    }
    fwd.replace_in(&mut parts.headers, present);
    // Backends speak HTTP/1.1 whatever the client spoke (`proto: h2` ones: `upstream::h2c::request`).
    parts.version = http::Version::HTTP_11;
    // A body-less request (no length, not chunked) can be replayed on another server.
    // Asked of the body itself: the headers say nothing once Transfer-Encoding (hop-by-hop)
    // is stripped, and an HTTP/2 request may carry a body without Content-Length.
    let has_body = !hyper::body::Body::is_end_stream(&body);
    // A chunked body has no declared length to check up front: it is cut where it passes
    // `max-body-bytes`, which fails the exchange with a LengthLimitError (413 below).
    let max = ctx.limits.max_body_bytes;
    let body = has_body.then(|| match usize::try_from(max) {
        Ok(m) if m > 0 => http_body_util::Limited::new(body, m).boxed(),
        _ => body.map_err(Into::into).boxed(),
    });
    Ok(Upstream::new(parts, Some(fwd), body, upgrade, te_trailers))
}

/// `uri` with its path rewritten by `rw`; the query, and scheme and authority when present,
/// are kept.
fn rewritten(uri: &Uri, rw: &request::route::Rewrite) -> Result<Uri, ProxyError> {
    let mut path = rw.apply(uri.path());
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path)
            .map_err(|e| ProxyError::BadRequest(format!("rewritten path: {e}")))?,
    );
    Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(format!("rewritten target: {e}")))
}

/// `<pid>-<n>` in hex, written without the formatting machinery (it showed in profiles).
fn request_id(prefix: &str, n: u64) -> Result<HeaderValue, ProxyError> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(prefix.len() + 1 + digits.len() - i);
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'-');
    out.extend_from_slice(&digits[i..]);
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .map_err(|_| ProxyError::Internal("unrepresentable request id".into()))
}

fn body_hint(h: &HeaderMap) -> Option<u64> {
    if h.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    match h.get(header::CONTENT_LENGTH) {
        None => Some(0),
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()),
    }
}

/// Not an `async fn`, for the reason `handle_raw` is not (the upstream request is 608 bytes).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice"
)]
fn forward(
    backend: &Backend,
    mut up: Upstream,
    conn: &Arc<Conn>,
    (body_timeouts, tunnel_counters): (
        Option<prometheus::IntCounter>,
        Option<metrics::TunnelCounters>,
    ),
    trace: &mut Trace,
) -> impl Future<Output = Result<Answer, ProxyError>> {
    async move {
        let (pool, passive) = (&backend.pool, &backend.passive);
        let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
        let replayable = up.body.is_none();
        let server_timeout = backend.server_timeout;
        loop {
            // Waits in the backend's FIFO queue when every server is at its maxconn.
            let (slot, waited) = pool.acquire_timed(&tried, up.sticky).await;
            trace.queued = Some(trace.queued.unwrap_or_default() + waited);
            let slot = slot.map_err(ProxyError::from)?;
            let server = slot.server.addr;
            trace.server = Some(slot.server.clone());
            tried.push(server);
            let sent = backend
                .transport
                .send(&mut up, &slot.server, server_timeout);
            let err = match sent.await {
                Ok(reply) => {
                    upstream::health::observe(pool, &slot.server, true, passive);
                    // The server's place is held until its response body is done, as HAProxy
                    // counts a connection until the response ends.
                    return Ok(match reply {
                        Reply::Pooled(resp)
                            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                                && up.upgrade.is_some() =>
                        {
                            let idle = backend.tunnel_timeout;
                            tunnel(
                                resp,
                                up.upgrade.take(),
                                slot,
                                conn.clone(),
                                idle,
                                tunnel_counters,
                            )
                            .into()
                        }
                        Reply::Pooled(resp) => {
                            downstream_response(resp, slot, server_timeout, body_timeouts).into()
                        }
                        Reply::Direct(resp, fields) => Answer::new(
                            downstream_response(resp, slot, server_timeout, body_timeouts),
                            Some(fields),
                        ),
                    });
                }
                Err(e) => e,
            };
            let retryable = err.retryable(up.method().is_idempotent());
            if retryable {
                upstream::health::observe(pool, &slot.server, false, passive);
            }
            drop(slot);
            let servers = pool.servers().len();
            if !(retryable && replayable && tried.len() < MAX_CONNECT_ATTEMPTS.min(servers)) {
                return Err(err);
            }
            trace.retries += 1;
            debug!(error = %err, "retrying on another server");
        }
    }
}

/// The backend agreed to switch protocols: answer 101 and splice the two upgraded connections.
/// The tunnel holds the server slot, the client connection's places (`Conn`: maxconn, active,
/// per-source) and counts as in flight until either side closes, or until `timeout tunnel`
/// passes without a byte either way (which replaces the client timeouts).
fn tunnel(
    mut resp: Response<Incoming>,
    client: Option<super::upgrade::ClientUpgrade>,
    slot: Slot,
    conn: Arc<Conn>,
    idle: Duration,
    counters: Option<metrics::TunnelCounters>,
) -> Response<ProxyBody> {
    let server = hyper::upgrade::on(&mut resp);
    let guard = conn.inflight.start();
    tokio::spawn(async move {
        let (_slot, _conn, guard) = (slot, conn, guard);
        let Some(client) = client else { return };
        let server = async { server.await.map_err(super::upgrade::UpgradeError::from) };
        match tokio::try_join!(client.connection(), server) {
            Ok((mut c, s)) => {
                guard.tunnel();
                let mut s = hyper_util::rt::TokioIo::new(s);
                let spliced = timeout::splice(&mut c, &mut s, idle).await;
                if let Some(t) = &counters {
                    t.bytes_in.inc_by(spliced.from_a);
                    t.bytes_out.inc_by(spliced.from_b);
                    if spliced.timed_out {
                        t.timeouts.inc();
                    }
                }
                if spliced.timed_out {
                    debug!(?idle, "upgraded connection closed by timeout tunnel");
                }
                if let Some(e) = spliced.error {
                    debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}

/// `idle` is `timeout server`, which also bounds the server's silence while the body streams.
fn downstream_response<B>(
    resp: Response<B>,
    slot: Slot,
    idle: Duration,
    timeouts: Option<prometheus::IntCounter>,
) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<super::body::BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = timeout::ServerIdle::new(body, idle, timeouts);
    Response::from_parts(parts, Hold { body, guard: slot }.boxed())
}

/// What a request's answer is sent with: the response body, and what ends the request when
/// that body ends (`Done`).
pub type Sent = Hold<ProxyBody, Done>;

/// A body that keeps `G` alive until the body ends or is dropped, and tells it the data bytes
/// that pass.
pub struct Hold<B, G> {
    body: B,
    guard: G,
}

/// What a [`Hold`] keeps: told of each data frame's size.
trait Sink {
    fn data(&mut self, _bytes: usize) {}
}

/// A response body holds its server slot until it ends, as HAProxy counts a connection until
/// the response ends.
impl Sink for Slot {}

/// Counts a request body into a counter when the body is done.
struct Count {
    counter: prometheus::IntCounter,
    n: u64,
}

impl Sink for Count {
    fn data(&mut self, bytes: usize) {
        self.n += bytes as u64;
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.counter.inc_by(self.n);
    }
}

/// The end of a response to the client: the request stops being in flight, the bytes sent
/// are counted and the access log line is written.
pub struct Done {
    _inflight: timeout::InFlightGuard,
    bytes_out: Option<prometheus::IntCounter>,
    log: Option<Box<access::Entry>>,
    sent: u64,
}

impl Sink for Done {
    fn data(&mut self, bytes: usize) {
        self.sent += bytes as u64;
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(c) = &self.bytes_out {
            c.inc_by(self.sent);
        }
        if let Some(e) = &self.log {
            e.emit(self.sent);
        }
    }
}

impl<B, G> hyper::body::Body for Hold<B, G>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    G: Sink + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            let n = d.len();
            self.guard.data(n);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(e.body().as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = e.status();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let ProxyError::Unauthorized { challenge, signin } = e {
        let h = resp.headers_mut();
        if let Some(c) = challenge {
            h.insert(header::WWW_AUTHENTICATE, c.clone());
        }
        if let Some(s) = signin {
            h.insert(header::LOCATION, s.clone());
        }
    }
    if let ProxyError::RateLimited { retry_after } = e {
        // Whole seconds (RFC 9110), rounded up so a client that waits is let through.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_the_pid_and_a_hex_counter() {
        let id = |n| super::request_id("0000abcd", n).ok();
        assert_eq!(
            id(0).as_ref().map(|v| v.as_bytes()),
            Some(&b"0000abcd-0"[..])
        );
        assert_eq!(
            id(0x1f).as_ref().map(|v| v.as_bytes()),
            Some(&b"0000abcd-1f"[..])
        );
        assert_eq!(
            id(u64::MAX).as_ref().map(|v| v.as_bytes()),
            Some(&b"0000abcd-ffffffffffffffff"[..])
        );
    }
}
