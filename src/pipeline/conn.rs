//! What a client connection carries for all its requests: the runtime, the peer, TLS facts,
//! the counters the connection watchdog reads, and the write pacing of its responses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::proxy::body::GatewayBody;
use crate::runtime::Runtime;

/// Per-connection facts computed once, not per request.
pub struct ConnCtx {
    /// Shared gateway state.
    pub runtime: Arc<Runtime>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub peer_header: HeaderValue,
    /// Requests started on this connection (read by the connection watchdog).
    pub requests: AtomicU64,
    /// Requests whose response has not finished (read by the connection watchdog).
    pub active: AtomicU32,
    /// Signalled by the watchdog to close an idle or stalled connection.
    pub kill: tokio::sync::Notify,
    /// What the TLS handshake established; `None` on a plain connection.
    pub tls: Option<Box<crate::tls::TlsConn>>,
    /// Shutdown began: HTTP/1.1 responses say `Connection: close` (set by the server's drain).
    pub draining: std::sync::atomic::AtomicBool,
    /// How much of its responses the client has taken (HTTP/1): a response body reads its
    /// upstream only while little of it waits unsent.
    pub flow: WriteFlow,
}

/// Bytes a client's HTTP/1 socket accepted, and the response body waiting for more to go.
///
/// hyper queues a response body up to its buffer limit plus one upstream chunk and cannot be
/// told less; the body itself waits here once [`WriteFlow::MAX_UNSENT`] bytes are unsent, so a
/// client that stops reading stops the upstream reads after that much.
#[derive(Default)]
pub struct WriteFlow {
    written: AtomicU64,
    waiting: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl WriteFlow {
    /// The most body bytes handed to hyper but not yet taken by the client's socket.
    pub const MAX_UNSENT: u64 = 16 * 1024;

    /// The client's socket took `n` more bytes.
    pub fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Release);
        if self.waiting.swap(false, Ordering::AcqRel) {
            if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether a body that has handed out `handed` bytes since the count stood at `base` may
    /// hand out more now; if not, `waker` is woken once the client takes some.
    pub fn may_send(&self, base: u64, handed: u64, waker: &std::task::Waker) -> bool {
        if handed <= self.written().saturating_sub(base) + Self::MAX_UNSENT {
            return true;
        }
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
        self.waiting.store(true, Ordering::Release);
        // A write between the first look and the registration would have found no waker.
        handed <= self.written().saturating_sub(base) + Self::MAX_UNSENT
    }
}

impl ConnCtx {
    /// Context for a connection from `peer`.
    pub fn new(runtime: Arc<Runtime>, peer: SocketAddr) -> Self {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Self {
            runtime,
            peer,
            peer_header,
            requests: AtomicU64::new(0),
            active: AtomicU32::new(0),
            kill: tokio::sync::Notify::new(),
            tls: None,
            draining: std::sync::atomic::AtomicBool::new(false),
            flow: WriteFlow::default(),
        }
    }
}

/// Counts a request as active on its connection until its response body is dropped, so the
/// connection watchdog never cuts a connection that is busy with a slow response.
pub struct ActiveRequest(pub(crate) Arc<ConnCtx>);

impl ActiveRequest {
    pub(super) fn start(ctx: Arc<ConnCtx>) -> Self {
        ctx.requests.fetch_add(1, Ordering::Relaxed);
        ctx.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(ctx)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The hyper service for one client connection.
#[derive(Clone)]
pub struct ProxyService(pub Arc<ConnCtx>);

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // `handle` is boxed directly (no wrapping async block): each layer of async nesting costs
        // a memcpy of the whole future state when it is created.
        Box::pin(super::handle(Arc::clone(&self.0), req))
    }
}
