//! The direct upstream path: a request of an idempotent method without a body (most of them:
//! GET, HEAD) written to a server connection the client's own task takes from its worker's
//! idle list, its response read by that task too.
//!
//! hyper's pooled client gives every server connection its own task, and hands each request
//! and response across channels between that task and the client's: two task switches and
//! their wakeups per request, about a third of floodgate's user time per proxied request.
//! HAProxy moves a request from the client to the server connection in the same thread and
//! stream. This does the same: the connection is taken from the worker's idle list, written
//! and read in place, and put back when its response body ends.
//!
//! Requests with a body, Upgrade requests and non-idempotent methods still take hyper's client
//! (`backend.rs`): it streams bodies both ways at once, which a sequential exchange cannot, and
//! it never resends a request the server may have received.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    ops::Range,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::Sleep,
};

use crate::proxy::{
    body::BoxError,
    error::ProxyError,
    fields::RawFields,
    request::headers::Forwarding,
    upstream::connect::{Dial, ServerStream},
    worker::PerWorker,
};

/// hyper's limits for a response head, kept so both paths refuse the same servers.
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size or trailer line longer than this is not HTTP.
const MAX_LINE: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;
/// Idle connections kept per server and worker; more are closed when they come back.
const MAX_IDLE_PER_SERVER: usize = 1024;

/// Idle server connections of one backend, one list per worker thread so a connection is only
/// used by the runtime it is registered with.
pub struct Conns {
    /// Looked up twice per request (take, put): foldhash, not std's SipHash, which is built
    /// against hash flooding by the map's users, and these keys are the config's servers.
    per_worker: PerWorker<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
    /// Open idle connections as of the last reap, for metrics.
    idle: AtomicUsize,
    dial: Dial,
    idle_timeout: Duration,
}

struct Idle {
    link: Link,
    since: Instant,
}

/// A server connection of the direct path and its `timeout server` timer: one timer for the
/// connection's life, pushed later for each request, which tokio does with one atomic store
/// while the timer is pending. A `tokio::time::timeout` per request registered a timer in the
/// runtime's wheel and removed it again, under the wheel's lock (about 700 instructions; the
/// kept timer still costs a poll while the response is awaited, so 141 were saved per
/// request, `examples/bench/instructions.sh`).
struct Link {
    stream: ServerStream,
    timer: Pin<Box<Sleep>>,
}

impl Link {
    fn new(stream: ServerStream) -> Self {
        // Not registered with the wheel until first polled.
        let timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
        Self { stream, timer }
    }
}

impl Conns {
    pub fn new(workers: usize, dial: Dial, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_worker: PerWorker::new(workers),
            idle: AtomicUsize::new(0),
            dial,
            idle_timeout,
        })
    }

    /// The most recently used idle connection (its server is the least likely to have closed
    /// it), dropping the ones idle past `idle_timeout` on the way.
    fn take(&self, worker: usize, server: SocketAddr) -> Option<Link> {
        let mut map = self.per_worker.get(worker);
        let idle = map.get_mut(&server)?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout {
                return Some(c.link);
            }
            // Everything below is older still.
            idle.clear();
        }
        None
    }

    fn put(&self, worker: usize, server: SocketAddr, link: Link) {
        let mut map = self.per_worker.get(worker);
        let idle = map.entry(server).or_default();
        // Expired ones are the sweep's (`reap`), not every request's.
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push(Idle {
                link,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections past `idle_timeout` and those their server has closed (a
    /// read gives EOF, or bytes nobody asked for), so neither lingers as an fd in CLOSE_WAIT
    /// until its server is chosen again, or forever when discovery removed the server.
    /// Returns how many stay open.
    pub fn reap(&self) -> usize {
        let mut open = 0;
        for mut map in self.per_worker.each() {
            map.retain(|_, idle| {
                idle.retain_mut(|c| {
                    c.since.elapsed() < self.idle_timeout && c.link.stream.still_open()
                });
                open += idle.len();
                !idle.is_empty()
            });
        }
        self.idle.store(open, Ordering::Relaxed);
        open
    }

    /// Open idle connections as of the last reap.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }
}

/// Sends `parts` (no body) to `server` over this worker's idle connection or a new one, and
/// reads the response head. A reused connection the server had closed (no byte of response
/// came back) is replaced by a new one once. The server may have seen the request, so only
/// idempotent methods come here (RFC 9110 section 9.2.2 allows resending those). The
/// response's map is empty: the server's fields come apart, raw (`proxy::fields`).
/// `server_timeout` bounds the whole exchange up to the response head, as the other
/// transports' `tokio::time::timeout` does (`backend::Transport::send`).
pub async fn exchange(
    conns: &Arc<Conns>,
    worker: usize,
    server: SocketAddr,
    request: RequestHead<'_>,
    server_timeout: Duration,
) -> Result<(Response<DirectBody>, RawFields), ProxyError> {
    let deadline = tokio::time::Instant::now() + server_timeout;
    let head = encode_request(&request);
    let head_only = request.parts.method == http::Method::HEAD;
    if let Some(link) = conns.take(worker, server) {
        match send(link, &head, head_only, deadline).await {
            Ok((r, timer)) => return Ok(r.finish(timer, conns, worker, server)),
            Err(Failure::Stale) => {}
            Err(Failure::Broken(reason)) => return Err(upstream(server, reason)),
            Err(Failure::Timeout) => return Err(timed_out(server)),
        }
    }
    // Boxed: inline, the dial's state (1.5 KB) sized every exchange, and every exchange's
    // future is copied whole into its parent's (a kept-alive request dials nothing).
    let dial = Box::pin(conns.dial.connect(server));
    let stream = match tokio::time::timeout_at(deadline, dial).await {
        Ok(s) => s?,
        Err(_) => return Err(timed_out(server)),
    };
    match send(Link::new(stream), &head, head_only, deadline).await {
        Ok((r, timer)) => Ok(r.finish(timer, conns, worker, server)),
        Err(Failure::Stale) => Err(ProxyError::EmptyResponse {
            server: server.to_string(),
        }),
        Err(Failure::Broken(reason)) => Err(upstream(server, reason)),
        Err(Failure::Timeout) => Err(timed_out(server)),
    }
}

fn timed_out(server: SocketAddr) -> ProxyError {
    ProxyError::ServerTimeout {
        server: server.to_string(),
    }
}

fn upstream(server: SocketAddr, reason: String) -> ProxyError {
    ProxyError::Upstream {
        server: server.to_string(),
        reason,
    }
}

/// A request as the direct path sends it.
pub struct RequestHead<'a> {
    pub parts: &'a http::request::Parts,
    /// The fields this hop adds, when they are not in `parts.headers` already.
    pub forwarding: Option<&'a Forwarding>,
    /// The server's, for a request that names no host at all.
    pub authority: &'a http::uri::Authority,
}

/// The request line and headers, HTTP/1.1, in origin form (the server is addressed by the
/// connection, not the target): the client's fields from the map, then the forwarding ones.
fn encode_request(r: &RequestHead<'_>) -> Vec<u8> {
    let parts = r.parts;
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut out = Vec::with_capacity(512 + parts.headers.len() * 32);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has_host = match r.forwarding {
        Some(f) => f.has_host(),
        None => parts.headers.contains_key(header::HOST),
    };
    if !has_host {
        // An HTTP/1.0 client may send no Host; HTTP/1.1 requires one.
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(r.authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    crate::proxy::h1::write::fields(&mut out, &parts.headers);
    if let Some(f) = r.forwarding {
        f.write(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    out
}

enum Failure {
    /// Nothing came back: the connection was closed or reset before the response started.
    Stale,
    Broken(String),
    /// `timeout server` passed before the response head.
    Timeout,
}

/// A response head read from `stream`, with the body bytes that came with it.
struct Received {
    stream: ServerStream,
    status: StatusCode,
    fields: RawFields,
    framing: Framing,
    keep_alive: bool,
    buf: BytesMut,
}

/// Writes `head` and reads the response head, failing with `Failure::Timeout` at `deadline`.
/// Gives the link's timer back beside what came.
async fn send(
    link: Link,
    head: &[u8],
    head_only: bool,
    deadline: tokio::time::Instant,
) -> Result<(Received, Pin<Box<Sleep>>), Failure> {
    let Link { stream, mut timer } = link;
    timer.as_mut().reset(deadline);
    let mut exchange = std::pin::pin!(send_on(stream, head, head_only));
    // `tokio::time::Timeout` over a timer that outlives it: the exchange first, the timer
    // only while the exchange waits.
    let received = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(Failure::Timeout))
    })
    .await?;
    Ok((received, timer))
}

async fn send_on(
    mut stream: ServerStream,
    head: &[u8],
    head_only: bool,
) -> Result<Received, Failure> {
    // Over TLS the flush is what sends the record; in clear it costs nothing.
    if let Err(e) = async {
        stream.write_all(head).await?;
        stream.flush().await
    }
    .await
    {
        return Err(stale_or_broken(&e));
    }
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Err(Failure::Stale),
            Ok(0) => {
                return Err(Failure::Broken(
                    "connection closed in the response head".into(),
                ));
            }
            Ok(_) => {}
            Err(e) if buf.is_empty() => return Err(stale_or_broken(&e)),
            Err(e) => return Err(Failure::Broken(e.to_string())),
        }
        // Interim responses (100 Continue, 103 Early Hints) are not forwarded: the client
        // sent no body to continue and hyper's server has no way to relay them.
        while let Some(parsed) = parse_head(&buf, head_only).map_err(Failure::Broken)? {
            let raw = buf.split_to(parsed.len).freeze();
            if parsed.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failure::Broken(
                    "101 to a request that asked no upgrade".into(),
                ));
            }
            if parsed.status.is_informational() {
                continue;
            }
            let status = parsed.status;
            let (framing, keep_alive) = (parsed.framing, parsed.keep_alive);
            return Ok(Received {
                stream,
                status,
                fields: parsed.fields(raw),
                framing,
                keep_alive,
                buf,
            });
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Failure::Broken("response head too large".into()));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
    }
}

fn stale_or_broken(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Failure::Stale,
        _ => Failure::Broken(e.to_string()),
    }
}

impl Received {
    fn finish(
        self,
        timer: Pin<Box<Sleep>>,
        conns: &Arc<Conns>,
        worker: usize,
        server: SocketAddr,
    ) -> (Response<DirectBody>, RawFields) {
        let mut body = DirectBody {
            link: Some(Link {
                stream: self.stream,
                timer,
            }),
            buf: self.buf,
            framing: self.framing,
            keep_alive: self.keep_alive,
            home: Some((conns.clone(), worker, server)),
        };
        if body.framing.is_done() {
            // Nothing to read: hyper may never poll an empty body, so it goes back now.
            body.release();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        (resp, self.fields)
    }
}

struct Head {
    len: usize,
    status: StatusCode,
    /// The fields this hop forwards (see `proxy::fields`), as where their names and values are
    /// in the parsed bytes: kept over those bytes once the head is split off the read buffer,
    /// without a copy or a header map.
    lines: Vec<(Range<usize>, Range<usize>)>,
    content_length: Option<u64>,
    has_date: bool,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    /// The forwarded fields over `raw`, the bytes this head was parsed from (the head's own).
    fn fields(self, raw: Bytes) -> RawFields {
        RawFields::new(raw, self.lines, self.content_length, self.has_date)
    }
}

/// `crate::fuzz::response_head`: a complete head is within the bytes, and a head that
/// parses keeps parsing the same with more bytes after it.
#[cfg(feature = "fuzz")]
pub fn fuzz(data: &[u8]) {
    for head_only in [false, true] {
        if let Ok(Some(h)) = parse_head(data, head_only) {
            assert!(h.len <= data.len());
            let mut more = data.to_vec();
            more.extend_from_slice(b"trailing bytes");
            let again = parse_head(&more, head_only);
            assert!(
                matches!(&again, Ok(Some(a)) if a.len == h.len && a.status == h.status),
                "the same head parsed differently with bytes after it"
            );
        }
    }
    for line in data.split(|b| *b == b'\n') {
        if let Ok(n) = chunk_size(line) {
            assert!(n < 1 << 60);
        }
    }
}

/// One response head from the start of `buf`, `None` until it is complete. Body framing
/// follows RFC 9112 section 6.3, in its order.
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<Head>, String> {
    // Slots httparse fills, left uninitialised: zeroing 100 of them (3 KB) showed per response.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("invalid status code")?;
    let http11 = r.version == Some(1);
    let mut lines = Vec::with_capacity(r.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut close = !http11;
    let mut has_date = false;
    // Names a `Connection` field lists besides `close` and `keep-alive`: hop-by-hop too.
    let mut named: Vec<&str> = Vec::new();
    let at = crate::proxy::h1::head::offset;
    for h in r.headers.iter() {
        // httparse took the name as an RFC 9110 token, which is what `HeaderName` accepts, and
        // the value by the byte rule `HeaderValue` has (tab, 0x20-0x7e, 0x80-0xff): both are
        // built later without failing, and no byte is checked twice
        // (`values_are_what_header_value_accepts`).
        let name = h.name;
        let role = role(name);
        match role {
            Role::ContentLength => {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or("invalid content-length")?;
                if length.is_some_and(|m| m != n) {
                    return Err("conflicting content-length headers".into());
                }
                length = Some(n);
            }
            Role::TransferEncoding => {
                encoded = true;
                // Only the last coding frames the message.
                chunked = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
            Role::Connection => {
                if let Ok(v) = std::str::from_utf8(h.value) {
                    for token in v.split(',').map(str::trim) {
                        if token.eq_ignore_ascii_case("close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case("keep-alive") {
                            close &= http11;
                        } else if !token.is_empty() {
                            named.push(token);
                        }
                    }
                }
            }
            Role::Date => has_date = true,
            Role::HopByHop | Role::Other => {}
        }
        if matches!(role, Role::ContentLength | Role::Date | Role::Other) {
            lines.push((at(buf, name.as_bytes()), at(buf, h.value)));
        }
    }
    // Transfer-Encoding overrides Content-Length, and a proxy must drop the latter before
    // forwarding (RFC 9112 section 6.3): the body the client gets is decoded.
    let dropped_length = encoded && length.is_some();
    if dropped_length || !named.is_empty() {
        lines.retain(|(n, _)| {
            let name = buf.get(n.clone()).unwrap_or_default();
            let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
            let only_this_hop =
                (dropped_length && is("content-length")) || named.iter().any(|t| is(t));
            !only_this_hop
        });
    }
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else if encoded && chunked {
        Framing::Chunked(Chunked::Size)
    } else if encoded {
        Framing::Close
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let keep_alive = !close && !matches!(framing, Framing::Close);
    Ok(Some(Head {
        len,
        status,
        lines,
        content_length: if encoded { None } else { length },
        has_date,
        framing,
        keep_alive,
    }))
}

/// What a response field is to this hop, by its name as the server wrote it. Fields only this
/// hop may send (RFC 9110 section 7.6.1, and those HTTP/2 and proxies add) are the set
/// `session::strip_hop_by_hop` removes from a header map: `Connection`, `Transfer-Encoding`
/// and `HopByHop`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    HopByHop,
    Other,
}

/// The name's length first: most fields are none of these lengths, and each length has at
/// most two candidates to compare.
fn role(name: &str) -> Role {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        4 if is("date") => Role::Date,
        10 if is("connection") => Role::Connection,
        14 if is("content-length") => Role::ContentLength,
        17 if is("transfer-encoding") => Role::TransferEncoding,
        2 if is("te") => Role::HopByHop,
        7 if is("trailer") || is("upgrade") => Role::HopByHop,
        10 if is("keep-alive") => Role::HopByHop,
        14 if is("http2-settings") => Role::HopByHop,
        18 if is("proxy-authenticate") => Role::HopByHop,
        19 if is("proxy-authorization") => Role::HopByHop,
        _ => Role::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// Expecting trailer lines, up to an empty one.
    Trailers,
}

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// A response body read from the server connection by the task that sends it to the client.
/// Its end gives the connection back to the worker's idle list; dropped before its end, it
/// closes the connection (the rest of the response is unread).
pub struct DirectBody {
    link: Option<Link>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Conns>, usize, SocketAddr)>,
}

impl DirectBody {
    fn release(&mut self) {
        self.framing = Framing::Done;
        let link = self.link.take();
        // Bytes past the end of the response would be read as the next response's start.
        if self.keep_alive
            && self.buf.is_empty()
            && let (Some(link), Some((conns, worker, server))) = (link, self.home.take())
        {
            conns.put(worker, server, link);
        }
    }

    /// Reads more from the server into `buf`; 0 is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(link) = &mut self.link else {
            return Poll::Ready(Ok(0));
        };
        link.stream.poll_read_buf(cx, &mut self.buf, READ_CHUNK)
    }

    /// The next step of the body from what is buffered: a frame, the end, or `None` when more
    /// bytes are needed.
    fn step(&mut self) -> Result<Option<Option<Bytes>>, BoxError> {
        loop {
            match self.framing {
                Framing::Done | Framing::Length(0) => {
                    self.release();
                    return Ok(Some(None));
                }
                Framing::Length(n) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let data = self.buf.split_to(take).freeze();
                    self.framing = Framing::Length(n - take as u64);
                    if self.framing.is_done() {
                        // hyper stops polling a body whose end it knows from its length, so
                        // the connection goes back with the last bytes, not after them.
                        self.release();
                    }
                    return Ok(Some(Some(data)));
                }
                Framing::Close => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Some(self.buf.split().freeze())));
                }
                Framing::Chunked(Chunked::Data(n)) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let left = n - take as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    });
                    return Ok(Some(Some(self.buf.split_to(take).freeze())));
                }
                Framing::Chunked(state) => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    self.framing = match state {
                        Chunked::Size => match chunk_size(&line)? {
                            0 => Framing::Chunked(Chunked::Trailers),
                            n => Framing::Chunked(Chunked::Data(n)),
                        },
                        Chunked::DataEnd if line.is_empty() => Framing::Chunked(Chunked::Size),
                        Chunked::DataEnd => return Err("chunk data longer than its size".into()),
                        // Trailers are dropped: hyper's server does not send them on HTTP/1.1.
                        Chunked::Trailers if line.is_empty() => Framing::Done,
                        Chunked::Trailers => Framing::Chunked(Chunked::Trailers),
                        Chunked::Data(n) => Framing::Chunked(Chunked::Data(n)),
                    };
                }
            }
        }
    }

    /// One line from `buf` without its CRLF (or bare LF), `None` until it is whole.
    fn line(&mut self) -> Result<Option<Bytes>, BoxError> {
        let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                return Err("chunk line too long".into());
            }
            return Ok(None);
        };
        let mut line = self.buf.split_to(end + 1);
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.truncate(end - 1);
        }
        Ok(Some(line.freeze()))
    }
}

/// The size of a chunk-size line, hex, before any `;extension`.
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .map_err(|_| "invalid chunk size")?
        .trim_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 15 {
        return Err("invalid chunk size".into());
    }
    Ok(u64::from_str_radix(digits, 16).map_err(|_| "invalid chunk size")?)
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.step() {
                Ok(Some(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Some(None)) => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.link = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.keep_alive = false;
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.link = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err("server closed the connection mid-body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.link = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        match parse_head(s.as_bytes(), false) {
            Ok(Some(h)) => h,
            other => panic!("{s:?}: {:?}", other.err()),
        }
    }

    /// What reaches the client of a server's fields: the same set, in the same order, as the
    /// header map the hop-by-hop strip left before the fields were forwarded raw.
    #[test]
    fn forwarded_fields_leave_out_what_only_this_hop_sends() {
        let text = "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Private\r\n\
            Keep-Alive: timeout=5\r\nX-Private: secret\r\nTE: trailers\r\nUpgrade: h2c\r\n\
            Proxy-Authenticate: Basic\r\nTrailer: x\r\nDate: Mon, 07 Dec 2026 06:00:00 GMT\r\n\
            Content-Length: 5\r\nx-a: 1\r\nX-A: 2\r\n\r\n";
        let h = head(text);
        assert_eq!((h.content_length, h.has_date), (Some(5), true));
        let mut map = http::HeaderMap::new();
        h.fields(Bytes::copy_from_slice(text.as_bytes()))
            .append_to(&mut map);
        let got: Vec<_> = map
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            [
                "server: s",
                "date: Mon, 07 Dec 2026 06:00:00 GMT",
                "content-length: 5",
                "x-a: 1",
                "x-a: 2"
            ]
        );
        // A Content-Length under a Transfer-Encoding is not forwarded, wherever it is.
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!((h.content_length, h.lines.len()), (None, 1));
    }

    #[test]
    fn framing_follows_rfc_9112_order() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked(Chunked::Size));
        assert!(
            h.content_length.is_none() && h.lines.is_empty(),
            "dropped under chunked"
        );
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        let h = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(h.keep_alive);
        let Ok(Some(h)) = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true) else {
            panic!("HEAD response not parsed");
        };
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn bad_heads_are_refused() {
        assert!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
        assert!(parse_head(b"NOTHTTP\r\n\r\n", false).is_err());
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-", false),
            Ok(None)
        ));
    }

    /// The value check this module leaves to httparse: for every byte but the line ends, a
    /// head is parsed exactly when `HeaderValue` takes the value.
    #[test]
    fn values_are_what_header_value_accepts() {
        for b in (0..=255u8).filter(|b| !matches!(b, b'\r' | b'\n')) {
            let value = [b'a', b, b'b'];
            let mut head = b"HTTP/1.1 200 OK\r\nx-v: ".to_vec();
            head.extend_from_slice(&value);
            head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            let parsed = parse_head(&head, false);
            assert_eq!(
                matches!(parsed, Ok(Some(_))),
                http::HeaderValue::from_bytes(&value).is_ok(),
                "byte {b:#04x}: {:?}",
                parsed.err()
            );
        }
    }

    /// A body over a buffer only (no stream): what `step` yields for given bytes.
    fn decode(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, bool), BoxError> {
        let mut b = DirectBody {
            link: None,
            buf: BytesMut::from(input),
            framing,
            keep_alive: true,
            home: None,
        };
        let mut out = Vec::new();
        loop {
            match b.step()? {
                Some(Some(d)) => out.extend_from_slice(&d),
                Some(None) => return Ok((out, true)),
                None => return Ok((out, false)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode() {
        let c = Framing::Chunked(Chunked::Size);
        let (out, done) =
            decode(c, b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n").unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        // Cut anywhere, it waits for more rather than failing.
        let (out, done) = decode(c, b"5\r\nhel").unwrap();
        assert_eq!(out, b"hel");
        assert!(!done);
        let (_, done) = decode(c, b"5\r\nhello\r").unwrap();
        assert!(!done);
        assert!(decode(c, b"5\r\nhelloXX\r\n").is_err());
        assert!(decode(c, b"zz\r\n").is_err());
        assert!(decode(c, &[b'1'; MAX_LINE + 1]).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (out, done) = decode(Framing::Length(3), b"abc").unwrap();
        assert_eq!(out, b"abc");
        assert!(done);
        let (out, done) = decode(Framing::Length(4), b"abc").unwrap();
        assert_eq!(out, b"abc");
        assert!(!done);
    }

    #[test]
    fn requests_are_written_in_origin_form_with_a_host() {
        let (parts, ()) = http::Request::get("http://a.example/x?y=1")
            .header("x-a", "1")
            .body(())
            .unwrap()
            .into_parts();
        let authority = http::uri::Authority::from_static("10.0.0.1:80");
        let head = |forwarding| RequestHead {
            parts: &parts,
            forwarding,
            authority: &authority,
        };
        let s = String::from_utf8(encode_request(&head(None))).unwrap();
        assert_eq!(
            s,
            "GET /x?y=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\n\r\n"
        );
        // The fields this hop adds come after the client's, with the host it named.
        let fwd = Forwarding {
            xff: Some(http::HeaderValue::from_static("192.0.2.1")),
            host: Some(http::HeaderValue::from_static("a.example")),
            request_id: Some(http::HeaderValue::from_static("7-1")),
            ..Default::default()
        };
        let s = String::from_utf8(encode_request(&head(Some(&fwd)))).unwrap();
        assert_eq!(
            s,
            "GET /x?y=1 HTTP/1.1\r\nx-a: 1\r\nx-forwarded-for: 192.0.2.1\r\n\
             host: a.example\r\nx-request-id: 7-1\r\n\r\n"
        );
    }
}
