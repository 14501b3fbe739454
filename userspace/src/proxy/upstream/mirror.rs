//! Copies of a route's requests to its `mirror` backend (ingress-nginx's `mirror-target`), on
//! their own tasks: the answers are read and dropped, and nothing of them reaches the client.
//!
//! A copy takes a server slot only when one is free and no request waits, so it never delays
//! the mirror's own traffic. A request with a body is copied as its body streams to the real
//! backend (`Tee`): the real request is never held back, and the copy leaves once the whole
//! body has passed, if it was at most `MAX_BODY`; larger bodies, and bodies that break off,
//! are not copied.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::proxy::{
    body::{BoxError, UpstreamBody},
    error::ProxyError,
    upstream::backend::{Backend, Reply, Upstream},
};

/// The largest request body copied, kept in memory until it has passed whole.
pub const MAX_BODY: usize = 1 << 20;
/// Body bytes kept for copies at once, process-wide: past it new bytes are not kept (the copy
/// is skipped), so mirroring a burst of uploads cannot take the node's memory.
pub const MAX_BUFFERED: usize = 64 << 20;

/// A budget of bytes kept for copies.
#[derive(Debug)]
struct Budget {
    used: std::sync::atomic::AtomicUsize,
    cap: usize,
}

static BUFFERED: Budget = Budget {
    used: std::sync::atomic::AtomicUsize::new(0),
    cap: MAX_BUFFERED,
};

/// Body bytes counted in a budget while a copy holds them.
#[derive(Debug)]
struct Held {
    budget: &'static Budget,
    n: usize,
}

impl Held {
    fn new(budget: &'static Budget) -> Self {
        Self { budget, n: 0 }
    }

    /// Counts `n` more bytes, unless that would pass the budget.
    fn grow(&mut self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        let cap = self.budget.cap;
        let ok = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(n).filter(|t| *t <= cap)
            })
            .is_ok();
        if ok {
            self.n += n;
        }
        ok
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Copies the request of `parts` (its body, if any, as `body` passes to the real backend) to
/// `backend`, over the backend's own transport, as one of `copies`. Returns the body to send
/// to the real backend.
pub fn copy(
    copies: &Copies,
    backend: &Arc<Backend>,
    parts: &http::request::Parts,
    body: Option<UpstreamBody>,
    metrics: Option<Arc<Metrics>>,
) -> Option<UpstreamBody> {
    let name = backend.name().to_owned();
    let count = move |result: &str| {
        if let Some(m) = &metrics {
            m.mirror(&name, result);
        }
    };
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.headers_mut() = parts.headers.clone();
    let (head, ()) = head.into_parts();
    let backend = backend.clone();
    let (body, copied) = match body {
        Some(b) => {
            let (tee, rx) = Tee::new(b);
            (Some(tee.boxed()), Some(rx))
        }
        None => (None, None),
    };
    copies.spawn(async move {
        let bytes = match copied {
            None => None,
            // Too large, or the client's body broke off: no copy.
            Some(rx) => match rx.await {
                Ok(b) => Some(b),
                Err(_) => return count("skipped"),
            },
        };
        // The bytes stay counted until this copy is done with them.
        let (bytes, _held) = match bytes {
            Some((b, h)) => (Some(b), Some(h)),
            None => (None, None),
        };
        let Some(slot) = backend.pool.try_acquire() else {
            return count("skipped");
        };
        let server = slot.server.clone();
        let mut parts = head;
        let body = bytes.map(|bytes| {
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Full::new(bytes).map_err(|never| match never {}).boxed()
        });
        let mut up = Upstream::new(parts, None, body, None, false);
        let exchange = async {
            let upstream = |e: &dyn std::error::Error| ProxyError::Upstream {
                server: server.label.clone(),
                reason: e.to_string(),
            };
            // Read to its end, so the connection goes back to the idle list.
            match backend
                .transport
                .send(&mut up, &server, backend.server_timeout)
                .await?
            {
                Reply::Direct(resp, _) => {
                    resp.into_body().collect().await.map_err(|e| upstream(&*e))
                }
                Reply::Pooled(resp) => resp.into_body().collect().await.map_err(|e| upstream(&e)),
            }
            .map(|_| ())
        };
        let sent = matches!(
            tokio::time::timeout(backend.server_timeout, exchange).await,
            Ok(Ok(()))
        );
        drop(slot);
        count(if sent { "sent" } else { "failed" });
    });
    body
}

/// The copies in flight of one config generation. They end with it: when the generation is
/// dropped (a reload, after its last request; or the drain), a copy still waiting for its
/// server is aborted rather than outliving the config that asked for it.
#[derive(Default)]
pub struct Copies(std::sync::Mutex<tokio::task::JoinSet<()>>);

impl Copies {
    fn spawn(&self, copy: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Finished copies are reaped here, so the set holds only those in flight.
        while set.try_join_next().is_some() {}
        set.spawn(copy);
    }

    /// Copies in flight (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// A whole body kept for a copy, with the budget it holds until the copy is done.
type Copied = (Bytes, Held);

/// A request body on its way to the real backend, kept aside for the mirror as it passes.
struct Tee {
    inner: UpstreamBody,
    /// What passed so far, and where it goes once whole; `None` once given up (too large,
    /// broken) or sent.
    copy: Option<(BytesMut, Held, oneshot::Sender<Copied>)>,
}

impl Tee {
    fn new(inner: UpstreamBody) -> (Self, oneshot::Receiver<Copied>) {
        Self::within(inner, &BUFFERED)
    }

    fn within(inner: UpstreamBody, budget: &'static Budget) -> (Self, oneshot::Receiver<Copied>) {
        let (tx, rx) = oneshot::channel();
        let copy = match inner.size_hint().upper() {
            // Declared too large: not worth keeping a byte.
            Some(n) if n > MAX_BODY as u64 => None,
            n => Some((
                BytesMut::with_capacity(n.map_or(0, |n| n as usize)),
                Held::new(budget),
                tx,
            )),
        };
        (Self { inner, copy }, rx)
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let kept = match &mut this.copy {
                        Some((buf, held, _)) => {
                            let ok = buf.len() + data.len() <= MAX_BODY && held.grow(data.len());
                            if ok {
                                buf.extend_from_slice(data);
                            }
                            ok
                        }
                        None => false,
                    };
                    if !kept {
                        this.copy = None;
                    }
                }
            }
            Some(Err(_)) => this.copy = None,
            None => {}
        }
        // A reader stops polling once the body says it ended, often right after its last
        // data frame: the copy is complete then, not only at `None`.
        if (frame.is_none() || this.inner.is_end_stream())
            && let Some((buf, held, tx)) = this.copy.take()
        {
            let _ = tx.send((buf.freeze(), held));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy still in flight when its generation goes is aborted; finished ones are reaped.
    #[tokio::test]
    async fn copies_end_with_their_generation() {
        let copies = Copies::default();
        copies.spawn(async {});
        tokio::task::yield_now().await;
        let (held, released) = oneshot::channel::<()>();
        copies.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        assert_eq!(copies.len(), 1, "the finished copy was reaped");
        drop(copies);
        assert!(released.await.is_err(), "the pending copy was aborted");
    }

    /// A body of ready chunks without a declared length, as a chunked request's.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0)))))
        }
    }

    #[tokio::test]
    async fn the_whole_body_reaches_both_sides() {
        let parts = vec![
            Bytes::from_static(b"order=42"),
            Bytes::from_static(b"&qty=1"),
        ];
        let (tee, rx) = Tee::new(Chunks(parts).boxed());
        let real = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&real[..], b"order=42&qty=1");
        assert_eq!(&rx.await.unwrap().0[..], b"order=42&qty=1");
    }

    /// hyper's client stops at a body's last data frame when the body says it ended.
    #[tokio::test]
    async fn the_copy_is_complete_at_the_last_frame() {
        let (mut tee, rx) = Tee::new(
            Full::new(Bytes::from_static(b"hi"))
                .map_err(|never| match never {})
                .boxed(),
        );
        let first = tee.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "hi");
        assert!(tee.is_end_stream());
        assert_eq!(
            &rx.await.unwrap().0[..],
            b"hi",
            "without polling past the end"
        );
    }

    #[tokio::test]
    async fn copies_stop_at_the_process_wide_budget_and_resume_when_bytes_go() {
        static SMALL: Budget = Budget {
            used: std::sync::atomic::AtomicUsize::new(0),
            cap: 10,
        };
        let body = |b: &'static [u8]| {
            Full::new(Bytes::from_static(b))
                .map_err(|never| match never {})
                .boxed()
        };
        let (tee, rx) = Tee::within(body(b"12345678"), &SMALL);
        assert_eq!(tee.collect().await.unwrap().to_bytes().len(), 8);
        let kept = rx.await.expect("within the budget: copied");
        let (tee, rx) = Tee::within(body(b"abcd"), &SMALL);
        assert_eq!(tee.collect().await.unwrap().to_bytes().len(), 4);
        assert!(
            rx.await.is_err(),
            "8 + 4 bytes pass the budget of 10: no copy"
        );
        drop(kept);
        let (tee, rx) = Tee::within(body(b"abcd"), &SMALL);
        assert_eq!(tee.collect().await.unwrap().to_bytes().len(), 4);
        assert!(
            rx.await.is_ok(),
            "the first copy's bytes went back to the budget"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_reaches_the_backend_but_is_not_copied() {
        // Declared too large.
        let big = Bytes::from(vec![b'x'; MAX_BODY + 1]);
        let (tee, rx) = Tee::new(
            Full::new(big.clone())
                .map_err(|never| match never {})
                .boxed(),
        );
        assert_eq!(tee.collect().await.unwrap().to_bytes(), big);
        assert!(rx.await.is_err(), "no copy");
        // Found too large as it streams.
        let half = Bytes::from(vec![b'y'; MAX_BODY / 2 + 1]);
        let (tee, rx) = Tee::new(Chunks(vec![half.clone(), half.clone()]).boxed());
        assert_eq!(
            tee.collect().await.unwrap().to_bytes().len(),
            half.len() * 2
        );
        assert!(rx.await.is_err(), "no copy");
    }
}
