//! Serving one client connection: protocol detection, hyper's HTTP/1.1 or HTTP/2 connection,
//! graceful shutdown, and the per-worker watchdog that closes silent or idle connections.
//!
//! Costs per connection are kept to what the kernel needs: the first read both detects the
//! protocol and fills hyper's first request (no separate preface read), no `shutdown(2)` before
//! `close(2)`, and no timer per connection (one sweeper per worker instead).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::pipeline::unparsed;
use crate::pipeline::{ConnCtx, ProxyService};
use crate::runtime::Runtime;

/// How long HTTP/1.1 keep-alive connections get, once shutdown begins, to send one more request
/// (answered with `Connection: close`) before they are closed.
pub(super) const H1_CLOSE_WINDOW: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper connection builders, built once per worker.
pub struct Builders {
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
    /// Plain HTTP/1.1 goes to the gateway's own engine (`server::h1`).
    pub(super) native_h1: bool,
}

impl Builders {
    /// The HTTP/1 builder; while draining, one without keep-alive, so the request already
    /// received is answered (with `Connection: close`) and the connection then closes.
    pub(super) fn h1(&self, draining: bool) -> std::borrow::Cow<'_, http1::Builder> {
        if !draining {
            return std::borrow::Cow::Borrowed(&self.h1);
        }
        let mut h1 = self.h1.clone();
        h1.keep_alive(false);
        std::borrow::Cow::Owned(h1)
    }

    /// Builders configured from the limits and `http2:` settings of `active`.
    pub fn new(active: &crate::runtime::Active) -> Self {
        let plan = &active.plan;
        let mut h1 = http1::Builder::new();
        // No timer on HTTP/1: the worker's watchdog replaces hyper's per-request header-read
        // timer (and its keep-alive idle limit).
        h1.max_buf_size(
            (plan.limits.max_header_bytes + plan.limits.max_uri_bytes + 4096).max(8192),
        );
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(plan.limits.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        active.raw.http2.apply(&mut h2);
        let native_h1 = active.raw.http1.engine == crate::config::raw::Http1Engine::Portico;
        Self { h1, h2, native_h1 }
    }
}

/// Serves one accepted connection until it closes, is shut down, or the watchdog cuts it.
pub async fn serve(
    runtime: Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    builders: &Builders,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(ConnCtx::new(runtime, peer));
    let _watched = Watched::register(&ctx);
    // Not cut short by shutdown: the connection was accepted, so its client has sent or is
    // sending a request, and closing the socket on unread bytes would reset the connection (a
    // failed request during a restart). The watchdog bounds the wait.
    let prefix = tokio::select! {
        p = read_prefix(&stream) => match p {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "client connection failed before its first request");
                return;
            }
        },
        _ = ctx.signals.killed() => {
            tracing::debug!(%peer, "client sent nothing within the header read timeout: closing");
            return;
        }
    };
    let draining = *shutdown.borrow_and_update();
    if prefix.starts_with(H2_PREFACE) {
        let io = TokioIo::new(ConnIo {
            prefix,
            stream,
            refusals: None,
        });
        let service = ProxyService(Arc::clone(&ctx));
        // The hyper connection is boxed: the task spawned per connection then stays small, and
        // tokio moves (memcpy) a task's future several times while spawning it.
        let conn = Box::pin(builders.h2.serve_connection(io, service));
        drive(conn, &ctx, &mut shutdown, draining, None, |c| {
            c.as_mut().graceful_shutdown()
        })
        .await;
    } else if builders.native_h1 {
        super::h1::serve(ctx, stream, prefix, builders, &mut shutdown, draining).await;
    } else {
        serve_hyper_h1(ctx, stream, prefix, builders, &mut shutdown, draining).await;
    }
}

/// Serves HTTP/1 with hyper on `stream`, whose first bytes (not yet parsed) are `prefix`.
pub(super) async fn serve_hyper_h1(
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    prefix: BytesMut,
    builders: &Builders,
    shutdown: &mut watch::Receiver<bool>,
    draining: bool,
) {
    let io = TokioIo::new(ConnIo {
        prefix,
        stream,
        refusals: Some(Refusals::new(Arc::clone(&ctx))),
    });
    let service = ProxyService(Arc::clone(&ctx));
    let conn = Box::pin(
        builders
            .h1(draining)
            .serve_connection(io, service)
            .with_upgrades(),
    );
    drive(conn, &ctx, shutdown, false, Some(H1_CLOSE_WINDOW), |c| {
        c.as_mut().graceful_shutdown()
    })
    .await;
}

/// Serves `conn` until it ends, the watchdog cuts it, or shutdown asks it to finish. With
/// `draining`, shutdown began before the connection was served: it is asked at once.
pub(super) async fn drive<C, E>(
    mut conn: Pin<Box<C>>,
    ctx: &ConnCtx,
    shutdown: &mut watch::Receiver<bool>,
    draining: bool,
    close_window: Option<Duration>,
    graceful: impl FnOnce(&mut Pin<Box<C>>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if draining {
        graceful(&mut conn);
        let outcome = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = ctx.signals.killed() => None,
        };
        if let Some(Err(e)) = outcome {
            tracing::debug!(error = %e, peer = %ctx.peer, "client connection ended with an error");
        }
        return;
    }
    let outcome = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = ctx.signals.killed() => {
            tracing::debug!(peer = %ctx.peer, "no complete request head within the header read timeout: closing");
            None
        }
        _ = shutdown.changed() => match close_window {
            // HTTP/1.1: closing an idle keep-alive connection races with a request the client
            // may be sending on it (which then fails). So first the next response says
            // `Connection: close`; only connections still idle after the window are closed.
            Some(window) => {
                ctx.draining.store(true, Ordering::Relaxed);
                tokio::select! {
                    r = conn.as_mut() => Some(r),
                    _ = tokio::time::sleep(window) => {
                        graceful(&mut conn);
                        Some(conn.await)
                    }
                }
            }
            // HTTP/2's GOAWAY tells the client which streams were served: no such race.
            None => {
                graceful(&mut conn);
                Some(conn.await)
            }
        },
    };
    if let Some(Err(e)) = outcome {
        tracing::debug!(error = %e, peer = %ctx.peer, "client connection ended with an error");
    }
}

/// Reads the first bytes: enough to tell HTTP/2's preface from HTTP/1, and usually the whole
/// first request head, which hyper then takes from the buffer without another read.
/// `None` when the client closed without sending anything.
async fn read_prefix(stream: &TcpStream) -> io::Result<Option<BytesMut>> {
    let mut prefix = super::h1::take_buffer();
    loop {
        // The connection's task is the socket's one reader: its waker goes in the socket's own
        // slot, where `readable()` would put a waiter into a list under a lock (and take it
        // out again), several hundred instructions per connection.
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        match try_read_chunk(stream, &mut prefix) {
            Ok(0) => return Ok(None),
            Ok(_) => {
                let n = prefix.len().min(H2_PREFACE.len());
                // Decided once the bytes differ from the preface or cover all of it.
                if prefix[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                    return Ok(Some(prefix));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One non-blocking read appended to `into`, into its spare capacity (nothing is zeroed first).
/// A read that left room in the buffer drained the socket: its readiness is cleared then, so
/// the next wait for bytes (or for the client's close while the request is served) waits for
/// the driver instead of trying a read that would fail with `WouldBlock`.
fn try_read_chunk(stream: &TcpStream, into: &mut BytesMut) -> io::Result<usize> {
    into.reserve(4096);
    let room = into.capacity() - into.len();
    let n = stream.try_read_buf(into)?;
    if n > 0 && n < room {
        crate::proxy::h1::assume_drained(stream);
    }
    Ok(n)
}

/// The client socket with the already-read prefix in front of it. `poll_shutdown` only flushes:
/// the socket is closed when dropped, and a `shutdown(2)` first would be one more system call
/// per connection for no benefit to the peer.
pub(super) struct ConnIo<S = TcpStream> {
    prefix: BytesMut,
    stream: S,
    /// HTTP/1 only: turns hyper's bare answers to unparsable requests into the gateway's.
    refusals: Option<Refusals>,
}

/// What HTTP/1 needs to replace hyper's canned error answers.
///
/// hyper answers a request it cannot parse by itself (a status line, `content-length: 0`, no
/// body) and never calls the service. Every answer of the service carries `x-request-id`, so a
/// 400/414/431 head without one is hyper's: it is swapped for the gateway's JSON answer (and
/// logged). Which line overflowed the read buffer is tracked on head reads, to tell a request
/// target over `max_uri_bytes` (414) from a head over the header limit (431).
struct Refusals {
    ctx: Arc<ConnCtx>,
    /// Bytes read since the last LF (saturating).
    line_len: usize,
    /// The line being read started a request head (connection start, or after an empty line).
    line_starts_head: bool,
    /// The gateway's answer still to be written, and how much of it was.
    pending: Vec<u8>,
    written: usize,
    send_idle: SendIdle,
}

/// Fails a connection whose client takes no byte for `timeouts.send_idle`: armed at the first
/// write the socket refuses, reset (not reallocated) after progress.
#[derive(Default)]
pub(super) struct SendIdle {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
}

impl SendIdle {
    /// The socket took bytes.
    pub(super) fn progressed(&mut self) {
        self.stalled = false;
    }

    /// The socket took nothing: ready with the error once it has taken nothing for the limit.
    pub(super) fn poll_stalled(&mut self, cx: &mut Context<'_>, ctx: &ConnCtx) -> Poll<io::Error> {
        let idle = ctx.runtime.active().plan.send_idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if !self.stalled {
            self.stalled = true;
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        std::task::ready!(std::future::Future::poll(timer.as_mut(), cx));
        tracing::debug!(peer = %ctx.peer, "client took no response byte for {idle:?}: closing");
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for timeouts.send_idle",
        ))
    }
}

impl Refusals {
    fn new(ctx: Arc<ConnCtx>) -> Self {
        Self {
            ctx,
            line_len: 0,
            line_starts_head: true,
            pending: Vec::new(),
            written: 0,
            send_idle: SendIdle::default(),
        }
    }

    /// Accounts for a write attempt's outcome: progress feeds the response bodies' pacing
    /// and disarms the send timer; a refused write arms it, and once it fires the write fails
    /// (hyper then closes the connection).
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match &result {
            Poll::Ready(Ok(n)) => {
                self.ctx.state.flow.wrote(*n);
                self.send_idle.progressed();
                result
            }
            Poll::Ready(Err(_)) => result,
            Poll::Pending => match self.send_idle.poll_stalled(cx, &self.ctx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Follows line boundaries over freshly read bytes. Only while no request is in progress:
    /// those reads are request heads; bodies are never scanned.
    fn saw(&mut self, new: &[u8]) {
        if self.ctx.state.active.load(Ordering::Relaxed) != 0 {
            return;
        }
        match new.iter().rposition(|&b| b == b'\n') {
            None => self.line_len = self.line_len.saturating_add(new.len()),
            Some(last) => {
                let ended = match new[..last].iter().rposition(|&b| b == b'\n') {
                    Some(prev) => last - prev - 1,
                    None => self.line_len.saturating_add(last),
                };
                // An empty line (`\r\n`) ends a head: what follows starts the next one.
                self.line_starts_head = ended <= 1;
                self.line_len = new.len() - last - 1;
            }
        }
    }

    /// When `head` is hyper's canned error answer, queues the gateway's instead and says so.
    fn replace(&mut self, head: &[u8]) -> bool {
        if !self.pending.is_empty() || head.len() > 512 || !head.starts_with(b"HTTP/1.1 4") {
            return false;
        }
        let status = std::str::from_utf8(&head[9..12.min(head.len())])
            .ok()
            .and_then(|s| s.parse::<u16>().ok());
        let Some(mut refusal) = status.and_then(unparsed::Refusal::from_status) else {
            return false;
        };
        if head
            .windows(13)
            .any(|w| w.eq_ignore_ascii_case(b"x-request-id:"))
        {
            return false;
        }
        let limits = &self.ctx.runtime.active().plan.limits;
        if refusal == unparsed::Refusal::HeadTooLarge
            && self.line_starts_head
            && self.line_len > limits.max_uri_bytes
        {
            refusal = unparsed::Refusal::TargetTooLong;
        }
        self.pending = unparsed::answer(&self.ctx, refusal);
        self.written = 0;
        true
    }
}

impl<S: AsyncWrite + Unpin> ConnIo<S> {
    /// An HTTP/1 connection over `stream` (TLS, or a plain one whose first bytes are read),
    /// whose unparsable requests get the gateway's answer.
    pub(super) fn http1(stream: S, ctx: &Arc<ConnCtx>) -> Self {
        Self {
            prefix: BytesMut::new(),
            stream,
            refusals: Some(Refusals::new(Arc::clone(ctx))),
        }
    }

    /// Writes what is left of a replaced answer; ready once all of it is out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(r) = self.refusals.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while r.written < r.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.stream).poll_write(cx, &r.pending[r.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `first` (the start of a write) is hyper's canned answer, now replaced.
    fn replaced(&mut self, first: &[u8]) -> bool {
        self.refusals.as_mut().is_some_and(|r| r.replace(first))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            if this.prefix.is_empty() {
                this.prefix = BytesMut::new();
            }
        } else {
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        }
        if let Some(r) = this.refusals.as_mut() {
            r.saw(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        if this.replaced(buf) {
            // hyper's bytes count as written; the gateway's go out instead.
            std::task::ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        match this.refusals.as_mut() {
            Some(r) => r.after_write(cx, result),
            None => result,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if this.replaced(first) {
                std::task::ready!(this.poll_pending(cx))?;
                return Poll::Ready(Ok(first.len()));
            }
        }
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        match this.refusals.as_mut() {
            Some(r) => r.after_write(cx, result),
            None => result,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

// === the watchdog ===

struct Entry {
    ctx: Arc<ConnCtx>,
    /// Requests started as of the previous sweep; `None` until the connection has lived through
    /// one sweep, so a connection accepted just before a sweep gets a full period.
    seen: Option<u64>,
}

#[derive(Default)]
struct Registry {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

thread_local! {
    static WATCHED: RefCell<Registry> = RefCell::new(Registry::default());
}

/// Keeps a connection in its worker's watchdog registry while alive.
pub(super) struct Watched(usize);

impl Watched {
    pub(super) fn register(ctx: &Arc<ConnCtx>) -> Self {
        WATCHED.with(|w| {
            let mut w = w.borrow_mut();
            let entry = Entry {
                ctx: Arc::clone(ctx),
                seen: None,
            };
            match w.free.pop() {
                Some(i) => {
                    w.entries[i] = Some(entry);
                    Watched(i)
                }
                None => {
                    w.entries.push(Some(entry));
                    Watched(w.entries.len() - 1)
                }
            }
        })
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        WATCHED.with(|w| {
            let mut w = w.borrow_mut();
            w.entries[self.0] = None;
            w.free.push(self.0);
        });
    }
}

/// Tells every connection of this worker that shutdown began. Called by the worker's accept
/// loops once they stop: a connection that registers later reads the shutdown signal itself
/// when it starts serving.
pub(super) fn order_drain() {
    WATCHED.with(|w| {
        for entry in w.borrow().entries.iter().flatten() {
            entry.ctx.signals.drain();
        }
    });
}

/// The worker's watchdog: every `header_read` period it closes connections that had no
/// request in progress and started none during the whole period. A silent or trickling client,
/// and an idle keep-alive connection, is closed after one to two periods. This replaces a timer
/// armed and disarmed per request (and per connection) with one timer per worker.
pub async fn watchdog(runtime: Arc<Runtime>) {
    loop {
        let period = runtime.active().plan.header_read_timeout;
        tokio::time::sleep(period).await;
        WATCHED.with(|w| {
            for entry in w.borrow_mut().entries.iter_mut().flatten() {
                let started = entry.ctx.state.requests.load(Ordering::Relaxed);
                let idle = entry.ctx.state.active.load(Ordering::Relaxed) == 0;
                if idle && entry.seen == Some(started) {
                    entry.ctx.signals.kill();
                }
                entry.seen = Some(started);
            }
        });
        crate::proxy::client::prune_idle();
        crate::proxy::h1::prune_idle();
    }
}
