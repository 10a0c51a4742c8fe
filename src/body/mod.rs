//! The body types on both sides of the gateway, streaming frame by frame, and nothing else: a
//! leaf that names no other module of the crate.
//!
//! [`RequestBody`] carries the client's body upstream, enforcing the route's size limit and the
//! client's pauses while it streams. [`GatewayBody`] carries a response back: the upstream's
//! stream (with an idle timeout armed only when the upstream makes us wait) or a small body
//! the gateway made. What must happen when a response body ends (a pooled connection handed
//! back, metrics, the access-log line, the span) is not known here: each layer that owes such
//! work attaches a [`Guard`], ended in the order attached, once, with the bytes sent and
//! whether the body completed. A [`Tap`] copies the body as it streams (the response cache);
//! a [`Pace`] holds an upstream body back to the speed the client reads it. An upstream answer's
//! head kept as its own bytes ([`head::RawHead`]) travels with its body to the connection that
//! writes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use smallvec::SmallVec;
use tokio::time::Sleep;

pub mod framing;
pub mod head;
pub mod inbound;

/// Errors raised by our own body wrappers (so the proxy can tell them apart from I/O errors).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client's body went over the route's limit.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    /// The upstream paused its response body for longer than the idle timeout.
    #[error("upstream response body idle for more than {0:?}")]
    Idle(Duration),
    /// The client paused its request body for longer than `timeouts.request_body_idle`.
    #[error("request body idle for more than {0:?}")]
    ClientIdle(Duration),
    /// The underlying stream failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The upstream's answer, read by the gateway's own HTTP/1.1 client, broke off.
    #[error("{0}")]
    Upstream(&'static str),
    /// The client's body, read by the gateway's own HTTP/1.1 connection, broke off.
    #[error(transparent)]
    Inbound(#[from] inbound::InboundError),
    /// A plugin that saw the body as it streamed stopped it.
    #[error("filter `{plugin}`: {message}")]
    Filter {
        /// The filter's name.
        plugin: Arc<str>,
        /// What it did.
        message: String,
    },
}

/// A body read by hyper or by one of the gateway's own HTTP/1.1 engines.
pub enum HyperOrOwn<T> {
    /// No body at all.
    Empty,
    /// hyper's (HTTP/2, TLS, upgrades, `http1.engine: hyper`).
    Hyper(Incoming),
    /// The own engine's.
    Own(T),
    /// Another layer's body made of one of these (a filter that sees it as it streams).
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send>>),
}

/// A client's request body as the connection that read its head delivers it; the own
/// engine's (`server::h1`) is fed by the connection as it is asked for.
pub type ClientBody = HyperOrOwn<inbound::Receiver>;

/// An upstream's response body; the own client's (`proxy::h1`) reads its connection directly
/// and is boxed: the connection travels with it.
pub type UpstreamBody = HyperOrOwn<Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send>>>;

impl<T> From<Incoming> for HyperOrOwn<T> {
    fn from(b: Incoming) -> Self {
        HyperOrOwn::Hyper(b)
    }
}

impl<T: Body<Data = Bytes, Error = BodyError> + Unpin> Body for HyperOrOwn<T> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            HyperOrOwn::Empty => Poll::Ready(None),
            HyperOrOwn::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BodyError::from))),
            HyperOrOwn::Own(b) => Pin::new(b).poll_frame(cx),
            HyperOrOwn::Boxed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            HyperOrOwn::Empty => true,
            HyperOrOwn::Hyper(b) => b.is_end_stream(),
            HyperOrOwn::Own(b) => b.is_end_stream(),
            HyperOrOwn::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            HyperOrOwn::Empty => SizeHint::with_exact(0),
            HyperOrOwn::Hyper(b) => b.size_hint(),
            HyperOrOwn::Own(b) => b.size_hint(),
            HyperOrOwn::Boxed(b) => b.size_hint(),
        }
    }
}

/// The request body sent upstream.
pub struct RequestBody {
    inner: Option<ClientBody>,
    limit: u64,
    seen: u64,
    /// A body buffered for retries (sent as one frame).
    full: Option<Bytes>,
    /// Only for a body that has data to come (most requests have none): kept out of line so
    /// the request's futures, which move this body around, stay small.
    watch: Option<Box<ClientPace>>,
}

/// How a client's body arrives: its pauses are timed, and its end is told to the forwarding
/// code, which tells a client that had not finished from an upstream that did not answer.
struct ClientPace {
    /// The longest pause allowed between two pieces of the client's body (`None`: the body
    /// this one was made of times them).
    idle: Option<Duration>,
    /// Armed once the client first makes us wait; reset, not reallocated, after progress.
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    done: Arc<AtomicBool>,
}

impl RequestBody {
    /// Streams `inner`, failing once more than `limit` bytes went through or when the client
    /// sends nothing for `idle`.
    pub fn streaming(inner: ClientBody, limit: u64, idle: Duration) -> Self {
        let watch = (!inner.is_end_stream()).then(|| {
            Box::new(ClientPace {
                idle: Some(idle),
                sleep: None,
                waiting: false,
                done: Arc::new(AtomicBool::new(false)),
            })
        });
        Self {
            inner: Some(inner),
            limit,
            seen: 0,
            full: None,
            watch,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self {
            inner: None,
            limit: 0,
            seen: 0,
            full: None,
            watch: None,
        }
    }

    /// A body already read whole (so it can be sent again on a retry).
    pub fn full(bytes: Bytes) -> Self {
        Self {
            full: (!bytes.is_empty()).then_some(bytes),
            limit: u64::MAX,
            ..Self::empty()
        }
    }

    /// A body another layer made of a client's body (`inner`, which keeps watching the
    /// client's pace and size): sent instead of it, and finished when the client finished.
    pub fn replaced(
        by: Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send>>,
        inner: Option<BodyCompletion>,
    ) -> Self {
        Self {
            inner: Some(HyperOrOwn::Boxed(by)),
            limit: u64::MAX,
            seen: 0,
            full: None,
            watch: inner.map(|BodyCompletion(done)| {
                Box::new(ClientPace {
                    idle: None,
                    sleep: None,
                    waiting: false,
                    done,
                })
            }),
        }
    }

    /// Puts bytes read from the front of this body back, to be sent before the rest (a
    /// filter saw them, and perhaps rewrote them).
    pub fn put_back(&mut self, prefix: Bytes) {
        self.full = (!prefix.is_empty()).then_some(prefix);
    }

    /// The most bytes this body may carry.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// A handle telling later whether the client finished its body (`None`: there is none).
    pub fn completion(&self) -> Option<BodyCompletion> {
        self.watch
            .as_ref()
            .map(|w| BodyCompletion(Arc::clone(&w.done)))
    }

    fn finished(&mut self) {
        if let Some(w) = &self.watch {
            w.done.store(true, Ordering::Release);
        }
    }
}

/// Reads `body` whole, refusing more than `cap` bytes (413); the client's pauses and breaks
/// keep their meaning (408, 400).
pub async fn read_whole(mut body: RequestBody, cap: u64) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() as u64 > cap {
                return Err(BodyError::TooLarge(cap));
            }
        }
    }
    Ok(out.freeze())
}

/// Whether a streamed request body was received whole (see [`RequestBody::completion`]).
pub struct BodyCompletion(Arc<AtomicBool>);

impl BodyCompletion {
    /// True once the client's last body byte arrived.
    pub fn is_complete(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(bytes) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let Poll::Ready(next) = polled else {
            let Some((w, idle)) = this
                .watch
                .as_deref_mut()
                .and_then(|w| w.idle.map(|idle| (w, idle)))
            else {
                return Poll::Pending;
            };
            let timer = w
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if !w.waiting {
                w.waiting = true;
                timer.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            ready!(timer.as_mut().poll(cx));
            this.inner = None;
            return Poll::Ready(Some(Err(BodyError::ClientIdle(idle))));
        };
        if let Some(w) = this.watch.as_deref_mut() {
            w.waiting = false;
        }
        match next {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                }
                if inner.is_end_stream() {
                    this.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => {
                this.finished();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint);
        match &self.full {
            Some(b) => add_hint(b.len() as u64, rest),
            None => rest,
        }
    }
}

/// Work a response body owes when it ends, attached by whoever owes it.
pub trait Guard: Send {
    /// The body's trailers went by (gRPC reports its status there).
    fn trailers(&mut self, _trailers: &HeaderMap) {}

    /// Called once, when the body is dropped: `complete` when it was read to its end without
    /// an error, after `sent` data bytes.
    fn end(self: Box<Self>, sent: u64, complete: bool);
}

/// A copy of a response body taken as it streams.
pub trait Tap: Send {
    /// A data frame went by; false to stop copying (over a cap).
    fn data(&mut self, data: &Bytes) -> bool;

    /// The body ended cleanly with every frame copied.
    fn complete(self: Box<Self>);
}

/// How far the client has read its connection, for pacing an upstream body to it.
pub trait Pace: Send + Sync {
    /// Bytes written to the client's connection so far.
    fn written(&self) -> u64;

    /// Whether `handed` more bytes (of a body that started at `base` written bytes) may be
    /// handed to the connection now; if not, `waker` is woken when they may.
    fn may_send(&self, base: u64, handed: u64, waker: &Waker) -> bool;
}

/// `rest`'s size hint with `prefix` more bytes in front.
fn add_hint(prefix: u64, rest: SizeHint) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower().saturating_add(prefix));
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper.saturating_add(prefix));
    }
    hint
}

enum Source {
    Full(Option<Bytes>),
    Upstream {
        /// Bytes read from the front of the upstream's body (by a filter), sent first.
        prefix: Option<Bytes>,
        inner: UpstreamBody,
        idle: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

/// A response body going to the client.
pub struct GatewayBody {
    source: Source,
    sent: u64,
    ended: bool,
    /// Set when the stream failed: the body did not complete, whatever is dropped after.
    failed: bool,
    /// Ended in this order when the body is dropped (a proxied response has two: the upstream
    /// exchange's and the request's).
    guards: SmallVec<[Box<dyn Guard>; 2]>,
    /// A copy for the response cache, taken as the body streams.
    tap: Option<Box<dyn Tap>>,
    /// The connection's written count when this body began and its pacing (HTTP/1).
    pace: Option<(u64, Arc<dyn Pace>)>,
    /// The upstream answer's fields as it wrote them, for the connection to write (the
    /// response's `HeaderMap` then holds only what the gateway adds).
    raw_head: Option<Box<head::RawHead>>,
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> Self {
        GatewayBody::full(bytes)
    }
}

impl GatewayBody {
    fn from_source(source: Source) -> Self {
        Self {
            source,
            sent: 0,
            ended: false,
            failed: false,
            guards: SmallVec::new(),
            tap: None,
            pace: None,
            raw_head: None,
        }
    }

    /// A complete body made by the gateway (or read from the upstream and rewritten).
    pub fn full(bytes: Bytes) -> Self {
        Self::from_source(Source::Full(Some(bytes)))
    }

    /// No body at all.
    pub fn empty() -> Self {
        Self::from_source(Source::Full(None))
    }

    /// The upstream's body, failing if it pauses for longer than `idle`.
    pub fn upstream(inner: UpstreamBody, idle: Duration) -> Self {
        Self::from_source(Source::Upstream {
            prefix: None,
            inner,
            idle,
            sleep: None,
        })
    }

    /// `prefix` (read from the front of the upstream's body), then the rest of the body.
    pub fn upstream_after(prefix: Bytes, inner: UpstreamBody, idle: Duration) -> Self {
        Self::from_source(Source::Upstream {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            idle,
            sleep: None,
        })
    }

    /// Attaches work to do when the body ends (after the guards attached before it).
    pub fn guard(&mut self, guard: Box<dyn Guard>) {
        self.guards.push(guard);
    }

    /// Reads an upstream body only as fast as the client takes it (HTTP/1: hyper would
    /// otherwise buffer what a slow client has not read).
    pub fn pace(&mut self, pace: Arc<dyn Pace>) {
        self.pace = Some((pace.written(), pace));
    }

    /// Copies the body as it streams (for the response cache, which gets it if it ends
    /// cleanly).
    pub fn tap(&mut self, tap: Box<dyn Tap>) {
        self.tap = Some(tap);
    }

    /// Gives the response the upstream's answer fields to write (see [`head::RawHead`]).
    pub fn carry_head(&mut self, head: Box<head::RawHead>) {
        self.raw_head = Some(head);
    }

    /// The upstream's answer fields, for the connection writing the response head; `None`
    /// when the response's `HeaderMap` has them all.
    pub fn take_head(&mut self) -> Option<Box<head::RawHead>> {
        self.raw_head.take()
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let (Source::Upstream { .. }, Some((base, pace))) = (&this.source, &this.pace) {
            if !pace.may_send(*base, this.sent, cx.waker()) {
                return Poll::Pending;
            }
        }
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream {
                prefix: prefix @ Some(_),
                ..
            } => Poll::Ready(prefix.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream {
                inner, idle, sleep, ..
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(r) => {
                    *sleep = None;
                    Poll::Ready(r)
                }
                Poll::Pending => {
                    // The timer is armed only when the upstream makes us wait, so bodies that
                    // arrive with their head (most API responses) never touch the timer wheel.
                    let idle = *idle;
                    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Idle(idle)))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                    if let Some(t) = &mut this.tap {
                        if !t.data(d) {
                            this.tap = None;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    for g in &mut this.guards {
                        g.trailers(t);
                    }
                }
            }
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(t) = this.tap.take() {
                    t.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken upstream connection must not go back to the pool.
                this.failed = true;
                this.tap = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(b) => b.is_none(),
            Source::Upstream { prefix, inner, .. } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            Source::Upstream {
                prefix: Some(p),
                inner,
                ..
            } => add_hint(p.len() as u64, inner.size_hint()),
            Source::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        let complete = !self.failed && (self.ended || self.is_end_stream());
        if let Some(t) = self.tap.take() {
            // A body that ended with its head (no data at all) is never polled to its end.
            if complete {
                t.complete();
            }
        }
        for guard in self.guards.drain(..) {
            guard.end(self.sent, complete);
        }
    }
}
