//! Body types on both sides of the proxy, streaming frame by frame.
//!
//! [`RequestBody`] carries the client's body upstream, enforcing the route's size limit while it
//! streams. [`GatewayBody`] carries a response back: either the upstream's stream (with an idle
//! timeout armed only when the upstream makes us wait) or a small gateway-made body. When a
//! response body ends it hands its pooled upstream connection back and writes the access log line.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::client::PooledSender;
use super::conn::ActiveRequest;
use super::record::Recorder;
use crate::error::GatewayError;
use crate::telemetry::access_log::Finish;
use crate::upstream::InFlight;

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
}

impl BodyError {
    /// What the client is answered when its body fails this way.
    pub fn into_gateway(self) -> GatewayError {
        match self {
            BodyError::TooLarge(limit) => GatewayError::PayloadTooLarge { limit },
            BodyError::ClientIdle(idle) => GatewayError::RequestBodyTimeout(idle),
            other => GatewayError::ClientBody(other.to_string()),
        }
    }
}

/// The request body sent upstream.
pub struct RequestBody {
    inner: Option<Incoming>,
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
    /// The longest pause allowed between two pieces of the client's body.
    idle: Duration,
    /// Armed once the client first makes us wait; reset, not reallocated, after progress.
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    done: Arc<AtomicBool>,
}

impl RequestBody {
    /// Streams `inner`, failing once more than `limit` bytes went through or when the client
    /// sends nothing for `idle`.
    pub fn streaming(inner: Incoming, limit: u64, idle: Duration) -> Self {
        let watch = (!inner.is_end_stream()).then(|| {
            Box::new(ClientPace {
                idle,
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
pub async fn read_whole(mut body: RequestBody, cap: u64) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt as _;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::into_gateway)?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() as u64 > cap {
                return Err(GatewayError::PayloadTooLarge { limit: cap });
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

/// A timeout of the exchange while the client had not finished its body is the client's: 408,
/// and nothing held against the upstream. Rewrites `result` in place (it holds a response head,
/// too large to move for nothing on every request).
pub fn blame_client_if_unfinished<T>(
    result: &mut Result<T, GatewayError>,
    completion: Option<&BodyCompletion>,
    timeout: Duration,
) {
    if matches!(result, Err(GatewayError::UpstreamTimeout(_)))
        && completion.is_some_and(|c| !c.is_complete())
    {
        *result = Err(GatewayError::RequestBodyTimeout(timeout));
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
            let Some(w) = this.watch.as_deref_mut() else {
                return Poll::Pending;
            };
            let idle = w.idle;
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
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
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
        if let Some(b) = &self.full {
            return SizeHint::with_exact(b.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Everything a response body carries that must happen when it ends.
#[derive(Default)]
pub struct Epilogue {
    /// The upstream connection to return to the pool once the body ended cleanly.
    pub pooled: Option<PooledSender>,
    /// Counts the request against its target until the body ends.
    pub in_flight: Option<InFlight>,
    /// The access log line to finish and write.
    pub finish: Option<Box<Finish>>,
    /// The request's server span (sampled requests with export on), ended with the body.
    pub span: Option<Box<crate::telemetry::trace::ServerSpan>>,
    /// Keeps the request counted as active on its client connection.
    pub active: Option<ActiveRequest>,
    /// Places held until the body ends (a `rate_limit` concurrency slot): released by drop.
    pub held: Option<Box<dyn Send + Sync>>,
    /// Holds the request's place under its service's `max_concurrent_requests`.
    pub service_slot: Option<crate::upstream::breaker::ConcurrencyGuard>,
    /// The request's metrics, recorded when the body ends.
    pub measure: Option<crate::telemetry::metrics::Measure>,
}

enum Source {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        idle: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

/// A response body going to the client.
pub struct GatewayBody {
    source: Source,
    sent: u64,
    ended: bool,
    epilogue: Epilogue,
    /// A copy for the response cache, taken as the body streams.
    record: Option<Box<Recorder>>,
    /// The connection's written count when this body began, when it is paced (HTTP/1).
    pace_base: Option<u64>,
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> Self {
        GatewayBody::full(bytes)
    }
}

impl GatewayBody {
    /// A complete body made by the gateway.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            source: Source::Full(Some(bytes)),
            sent: 0,
            ended: false,
            epilogue: Epilogue::default(),
            record: None,
            pace_base: None,
        }
    }

    /// A complete body read from the upstream and rewritten by a policy; `epilogue` holds what
    /// the upstream exchange still owns (in-flight counts, concurrency slots).
    pub fn full_with(bytes: Bytes, epilogue: Epilogue) -> Self {
        Self {
            source: Source::Full(Some(bytes)),
            sent: 0,
            ended: false,
            epilogue,
            record: None,
            pace_base: None,
        }
    }

    /// No body at all.
    pub fn empty() -> Self {
        Self {
            source: Source::Full(None),
            sent: 0,
            ended: false,
            epilogue: Epilogue::default(),
            record: None,
            pace_base: None,
        }
    }

    /// The upstream's body, failing if it pauses for longer than `idle`.
    pub fn upstream(inner: Incoming, idle: Duration, epilogue: Epilogue) -> Self {
        Self {
            source: Source::Upstream {
                inner,
                idle,
                sleep: None,
            },
            sent: 0,
            ended: false,
            epilogue,
            record: None,
            pace_base: None,
        }
    }

    /// Keeps the request active on its connection until this body is dropped. With
    /// `paced` (HTTP/1), an upstream body is read only as fast as the client takes it.
    pub fn set_active(&mut self, active: ActiveRequest, paced: bool) {
        if paced {
            self.pace_base = Some(active.flow().written());
        }
        self.epilogue.active = Some(active);
    }

    /// Records the body for the response cache, which gets it if the body ends cleanly.
    pub fn record(&mut self, recorder: Box<Recorder>) {
        self.record = Some(recorder);
    }

    /// Attaches the request's metrics, recorded when the body ends or is dropped.
    pub fn set_measure(&mut self, measure: crate::telemetry::metrics::Measure) {
        self.epilogue.measure = Some(measure);
    }

    /// Attaches the access log line, written when the body ends or is dropped.
    pub fn set_finish(&mut self, finish: Box<Finish>) {
        self.epilogue.finish = Some(finish);
    }

    /// Attaches the server span, ended when the body ends or is dropped.
    pub fn set_span(&mut self, span: Box<crate::telemetry::trace::ServerSpan>) {
        self.epilogue.span = Some(span);
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
        if let (Source::Upstream { .. }, Some(base), Some(active)) =
            (&this.source, this.pace_base, &this.epilogue.active)
        {
            if !active.flow().may_send(base, this.sent, cx.waker()) {
                return Poll::Pending;
            }
        }
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream { inner, idle, sleep } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(r) => {
                    *sleep = None;
                    Poll::Ready(r.map(|r| r.map_err(BodyError::from)))
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
                    if let Some(r) = &mut this.record {
                        if !r.data(d) {
                            this.record = None;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    // gRPC reports its status in the trailers.
                    if let Some(code) = super::grpc::status_of(t) {
                        if let Some(f) = &mut this.epilogue.finish {
                            f.grpc_status = Some(code);
                        }
                        if let Some(m) = this.epilogue.measure.as_ref().filter(|m| m.grpc) {
                            m.route.grpc(code);
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(r) = this.record.take() {
                    r.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken upstream connection must not go back to the pool.
                this.epilogue.pooled = None;
                this.record = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(b) => b.is_none(),
            Source::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            Source::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        let complete = self.ended || self.is_end_stream();
        if let Some(r) = self.record.take() {
            // A body that ended with its head (no data at all) is never polled to its end.
            if complete {
                r.complete();
            }
        }
        if let Some(pooled) = self.epilogue.pooled.take() {
            if complete {
                pooled.release();
            }
        }
        if let Some(measure) = self.epilogue.measure.take() {
            measure.finish(self.sent);
        }
        if let Some(finish) = self.epilogue.finish.take() {
            finish.write(self.sent, complete);
        }
        if let Some(span) = self.epilogue.span.take() {
            (*span).end(complete);
        }
    }
}
