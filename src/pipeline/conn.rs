//! What a client connection carries for all its requests: the runtime, the peer, TLS facts,
//! the counters the connection watchdog reads, and the write pacing of its responses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{ClientBody, GatewayBody};
use crate::proxy::conn::ConnState;
use crate::runtime::Runtime;

/// Per-connection facts computed once, not per request.
pub struct ConnCtx {
    /// Shared gateway state.
    pub runtime: Arc<Runtime>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub peer_header: HeaderValue,
    /// What the connection's responses share with it: request counts for the watchdog, the
    /// write pacing of HTTP/1 responses.
    pub state: Arc<ConnState>,
    /// The worker's orders to close (the watchdog) or to drain (shutdown).
    pub signals: Signals,
    /// What the TLS handshake established; `None` on a plain connection.
    pub tls: Option<Box<crate::tls::TlsConn>>,
    /// Shutdown began: HTTP/1.1 responses say `Connection: close` (set by the server's drain).
    pub draining: std::sync::atomic::AtomicBool,
    /// HTTP/1 responses are paced to the client's reading ([`crate::body::Pace`]): hyper
    /// queues what it is handed. The gateway's own engine writes each piece before taking the
    /// next, and clears this.
    pub paced: std::sync::atomic::AtomicBool,
}

impl ConnCtx {
    /// Context for a connection from `peer`.
    pub fn new(runtime: Arc<Runtime>, peer: SocketAddr) -> Self {
        // Made once per connection, for `X-Forwarded-For` and `Forwarded`: one allocation,
        // no `core::fmt`.
        let mut text = Vec::with_capacity(39);
        crate::telemetry::access_log::write_ip(&mut text, peer.ip());
        let peer_header = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .unwrap_or(HeaderValue::from_static("unknown"));
        Self {
            runtime,
            peer,
            peer_header,
            state: Arc::new(ConnState::default()),
            signals: Signals::default(),
            tls: None,
            draining: std::sync::atomic::AtomicBool::new(false),
            paced: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Whether the gateway's own HTTP/1.1 engine writes this connection's responses (it
    /// paces bodies itself, so it clears `paced`; hyper's connections keep it set).
    pub fn own_http1(&self) -> bool {
        !self.paced.load(Ordering::Relaxed)
    }
}

/// What the worker tells a connection's task: close (the watchdog, for an idle or stalled
/// connection) or drain (shutdown began). Each is a flag that stays set, with the waker of the
/// connection's task, the one task that waits for them.
///
/// A `tokio::sync::Notify` for the close and the shutdown `watch` for the drain did this
/// before: waiting on either put a waiter into a list under a lock, and dropping the wait
/// took the lock again, about 1,000 instructions per connection.
#[derive(Default)]
pub struct Signals {
    killed: AtomicBool,
    drain: AtomicBool,
    waker: AtomicWaker,
}

impl Signals {
    /// Orders the close, waking the connection if it waits.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Orders the drain (HTTP/1.1 connections of the gateway's own engine read it).
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once the close was ordered; otherwise the task is woken when it is.
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_flag(&self.killed, cx)
    }

    /// Ready once the drain was ordered; otherwise the task is woken when it is.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_flag(&self.drain, cx)
    }

    /// Waits for the close.
    pub fn killed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_killed(cx))
    }

    fn poll_flag(&self, flag: &AtomicBool, cx: &mut Context<'_>) -> Poll<()> {
        if flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again after registering: an order given in between woke no one.
        if flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
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
        Box::pin(super::handle(
            Arc::clone(&self.0),
            req.map(ClientBody::Hyper),
        ))
    }
}
