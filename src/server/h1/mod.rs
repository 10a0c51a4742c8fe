//! The gateway's own HTTP/1.1 server engine, for plain client connections.
//!
//! hyper's server spends most of a small proxied request's user time in its dispatcher (two
//! channels, a `HeaderMap` round trip, a header-read timer). This engine reads with
//! `httparse` over one buffer per connection ([`parse`]), hands the pipeline a request whose
//! header values share that buffer, feeds the request body only when the upstream side asks for
//! it ([`crate::body::inbound`]), and writes each response head together with its first body
//! bytes in one `writev`.
//!
//! What it does not serve it hands over: an `Upgrade` request or a CONNECT goes, with the bytes
//! read so far, to hyper's HTTP/1 connection (which relays upgrades), and HTTP/2 never comes
//! here. Every head it refuses gets the gateway's JSON error answer and an access-log line
//! (`pipeline::unparsed`), then the connection closes.

pub mod encode;
pub mod parse;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::Body as _;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::body::framing::{Decoder, Step};
use crate::body::inbound::{self, InboundError, Want};
use crate::body::{ClientBody, GatewayBody};
use crate::pipeline::conn::Signals;
use crate::pipeline::unparsed;
use crate::pipeline::ConnCtx;
use encode::{Asked, Out};
use parse::{Framing, Parsed};

use super::conn::{Builders, SendIdle, H1_CLOSE_WINDOW};

/// How much the read buffer grows by when a head or body needs more room.
const READ_CHUNK: usize = 8 * 1024;

/// Serves HTTP/1.1 on `stream`, whose first bytes are `buf`, until the client or the gateway
/// closes it; hands the connection to hyper at an upgrade.
pub(super) async fn serve(
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    buf: BytesMut,
    builders: &Builders,
    shutdown: &mut watch::Receiver<bool>,
    draining: bool,
) {
    ctx.paced.store(false, Ordering::Relaxed);
    let plan_limits = ctx.runtime.active().plan.limits;
    let mut conn = Conn {
        ctx: Arc::clone(&ctx),
        stream,
        buf,
        // Sized for a usual answer head at once: grown from empty, it took eight reallocations
        // on every new connection.
        out: Vec::with_capacity(FIRST_WRITE),
        out_at: 0,
        data: None,
        after_data: b"",
        send_idle: SendIdle::default(),
        limit: (plan_limits.max_header_bytes + plan_limits.max_uri_bytes + 4096).max(8192),
        max_uri: plan_limits.max_uri_bytes,
        draining,
    };
    let mut drain = Drain {
        signals: &ctx.signals,
        window: None,
    };
    if draining {
        drain.start();
    }
    loop {
        let next = poll_fn(|cx| conn.poll_head(cx, &mut drain)).await;
        let head = match next {
            Next::Head(head) => head,
            Next::Close => {
                give_buffer(conn.buf);
                return;
            }
            Next::Refuse(refusal) => {
                let answer = unparsed::answer(&ctx, refusal);
                conn.out.extend_from_slice(&answer);
                if poll_fn(|cx| conn.poll_flush(cx)).await.is_ok() {
                    conn.linger().await;
                }
                return;
            }
            Next::HandOver => {
                ctx.paced.store(true, Ordering::Relaxed);
                let Conn {
                    stream,
                    buf,
                    draining,
                    ..
                } = conn;
                let ctx = Arc::clone(&ctx);
                super::conn::serve_hyper_h1(ctx, stream, buf, builders, shutdown, draining).await;
                return;
            }
        };
        match conn.exchange(head, &mut drain).await {
            Ok(After::KeepAlive) => continue,
            Ok(After::Linger) => {
                conn.linger().await;
                return;
            }
            Ok(After::Close) | Err(_) => {
                give_buffer(conn.buf);
                return;
            }
        }
    }
}

/// What a connection does after an answer.
enum After {
    /// Reads the next request.
    KeepAlive,
    /// Closes.
    Close,
    /// Closes, but the client may still be sending what was not read (a body answered before
    /// its end): see [`Conn::linger`].
    Linger,
}

/// How long, and how much, a closing connection reads and drops of what its client still
/// sends (nginx's `lingering_time` is 30 s; a client still uploading after 5 s is cut).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Read buffers kept per worker for new connections, and the size a new one starts at.
const POOLED_BUFFERS: usize = 32;
const FIRST_READ: usize = 4096;
/// The write buffer a connection starts with (an answer head and a chunk header).
const FIRST_WRITE: usize = 1024;

thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer for a new connection: one its worker kept, or a new one.
pub(super) fn take_buffer() -> BytesMut {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(FIRST_READ))
}

/// Keeps a closed connection's buffer for the next one, unless the worker has enough or the
/// buffer grew large (a big head) or shrank below a first read.
fn give_buffer(mut buf: BytesMut) {
    buf.clear();
    if (FIRST_READ..=4 * READ_CHUNK).contains(&buf.capacity()) {
        BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < POOLED_BUFFERS {
                b.push(buf);
            }
        });
    }
}

/// What waiting for a head came to.
// Not boxed: the head is moved once, and a box would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(parse::Head),
    Refuse(unparsed::Refusal),
    HandOver,
    Close,
}

/// Shutdown as one connection sees it: the worker's order to drain (see
/// [`crate::pipeline::conn::Signals`]), then a window for one more request.
struct Drain<'a> {
    signals: &'a Signals,
    window: Option<Pin<Box<Sleep>>>,
}

impl Drain<'_> {
    fn start(&mut self) {
        if self.window.is_none() {
            self.window = Some(Box::pin(tokio::time::sleep(H1_CLOSE_WINDOW)));
        }
    }

    /// Whether shutdown has begun (noticed now or before).
    fn poll_begun(&mut self, cx: &mut Context<'_>) -> bool {
        if self.window.is_some() {
            return true;
        }
        let begun = self.signals.poll_drain(cx).is_ready();
        if begun {
            self.start();
        }
        begun
    }
}

/// The request body's feed from the socket.
struct Pump {
    tx: inbound::Sender,
    decoder: Decoder,
    /// `Expect: 100-continue` not yet answered.
    continue_owed: bool,
    /// The receiving side is gone or the body ended: nothing more to feed.
    stopped: bool,
}

struct Conn {
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    buf: BytesMut,
    /// Bytes to write, from `out_at`; then `data`.
    out: Vec<u8>,
    out_at: usize,
    data: Option<Bytes>,
    /// Written once `data` is out (a chunk's CRLF).
    after_data: &'static [u8],
    send_idle: SendIdle,
    /// The most bytes a head may take; the longest request target.
    limit: usize,
    max_uri: usize,
    /// Shutdown began before or while serving: answers say `Connection: close`.
    draining: bool,
}

impl Conn {
    /// Waits for a whole head in the buffer (reading as needed), a kill by the watchdog, the
    /// client's close, or the end of the shutdown window.
    fn poll_head(&mut self, cx: &mut Context<'_>, drain: &mut Drain<'_>) -> Poll<Next> {
        loop {
            if !self.buf.is_empty() {
                match parse::head(&mut self.buf, self.limit, self.max_uri) {
                    Ok(Parsed::Head(head)) => return Poll::Ready(Next::Head(head)),
                    Ok(Parsed::HandOver) => return Poll::Ready(Next::HandOver),
                    Ok(Parsed::Partial) => {}
                    Err(refusal) => return Poll::Ready(Next::Refuse(refusal)),
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Next::Close),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            if self.ctx.signals.poll_killed(cx).is_ready() {
                tracing::debug!(peer = %self.ctx.peer, "no complete request head within the header read timeout: closing");
                return Poll::Ready(Next::Close);
            }
            if drain.poll_begun(cx) {
                self.draining = true;
                self.ctx.draining.store(true, Ordering::Relaxed);
                // A request already under way gets its answer; an idle connection is closed
                // once the window for one more request has passed.
                if let Some(w) = drain.window.as_mut() {
                    if w.as_mut().poll(cx).is_ready() && self.buf.is_empty() {
                        return Poll::Ready(Next::Close);
                    }
                }
            }
            return Poll::Pending;
        }
    }

    /// Reads what the socket has into the buffer's spare room (growing it when nearly full).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::proxy::h1::poll_read_into(&self.stream, &mut self.buf, READ_CHUNK, cx)
    }

    /// Serves one request: the pipeline's answer, written while the request body is fed.
    async fn exchange(&mut self, head: parse::Head, drain: &mut Drain<'_>) -> io::Result<After> {
        let parse::Head {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let (body, mut pump) = match framing {
            Framing::Empty => (ClientBody::Empty, None),
            Framing::Length(n) => self.pump(Some(n), Decoder::Length(n), expect_continue),
            Framing::Chunked => self.pump(None, Decoder::chunked(), expect_continue),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        // Pinned in this future, not boxed: the connection's task holds it, one allocation less
        // per request.
        let mut handling = pin!(crate::pipeline::handle(Arc::clone(&self.ctx), req));
        let resp = poll_fn(|cx| {
            if drain.poll_begun(cx) && !self.draining {
                self.draining = true;
                self.ctx.draining.store(true, Ordering::Relaxed);
            }
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            self.feed(cx, pump.as_mut())?;
            if pump.as_ref().is_none_or(|p| p.stopped) {
                self.watch_close(cx)?;
            }
            handling.as_mut().poll(cx).map(Ok::<_, io::Error>)
        })
        .await?;
        let Ok(resp) = resp;
        let (parts, mut body) = resp.into_parts();
        let asked = Asked {
            method: &method,
            version,
            keep_alive: keep_alive && !self.draining,
        };
        let raw = body.take_head();
        let exact = body.size_hint().exact();
        let (framing, keep) = encode::head(&mut self.out, &parts, raw.as_deref(), exact, &asked);
        drop(raw);
        crate::proxy::headers::give_map(parts.headers);
        let complete = poll_fn(|cx| self.poll_body(cx, &mut body, framing, pump.as_mut())).await;
        // The body's guards (access log, metrics, pooled upstream connection) end here.
        drop(body);
        let complete = complete?;
        if !self.body_read_whole(pump.as_mut()) {
            return Ok(After::Linger);
        }
        Ok(if keep && complete {
            After::KeepAlive
        } else {
            After::Close
        })
    }

    /// Closes after an answer sent while the client may still be sending: the write side is
    /// shut (the answer is complete), then what arrives is read and dropped for a while, so the
    /// kernel does not answer unread bytes with a reset that could destroy the answer before
    /// the client has read it.
    async fn linger(mut self) {
        use tokio::io::AsyncWriteExt as _;
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let mut dropped = 0;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while dropped < LINGER_BYTES {
                self.buf.clear();
                match poll_fn(|cx| self.poll_fill(cx)).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n,
                }
            }
        })
        .await;
    }

    fn pump(
        &mut self,
        length: Option<u64>,
        decoder: Decoder,
        expect_continue: bool,
    ) -> (ClientBody, Option<Pump>) {
        let (tx, rx) = inbound::channel(length);
        let pump = Pump {
            tx,
            decoder,
            continue_owed: expect_continue,
            stopped: false,
        };
        (ClientBody::Own(rx), Some(pump))
    }

    /// Feeds the request body for as long as it is asked for and the socket has bytes.
    fn feed(&mut self, cx: &mut Context<'_>, pump: Option<&mut Pump>) -> io::Result<()> {
        let Some(p) = pump else {
            return Ok(());
        };
        while !p.stopped {
            match p.tx.poll_want(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Want::Gone) => {
                    p.stopped = true;
                    return Ok(());
                }
                Poll::Ready(Want::More) => {}
            }
            if p.continue_owed {
                p.continue_owed = false;
                if self.buf.is_empty() {
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    match self.poll_flush(cx) {
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => return Ok(()),
                        Poll::Ready(Ok(())) => {}
                    }
                }
            }
            match p.decoder.step(&mut self.buf) {
                Ok(Step::Data(piece)) => p.tx.send(piece),
                Ok(Step::Trailers(fields)) => p.tx.trailers(fields),
                Ok(Step::End) => {
                    p.tx.finish(Ok(()));
                    p.stopped = true;
                }
                Ok(Step::NeedMore) => match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        p.tx.finish(Err(InboundError::Closed));
                        p.stopped = true;
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => {
                        p.tx.finish(Err(InboundError::Io));
                        p.stopped = true;
                    }
                    Poll::Pending => return Ok(()),
                },
                Err(e) => {
                    p.tx.finish(Err(e));
                    p.stopped = true;
                }
            }
        }
        Ok(())
    }

    /// While the answer is being prepared and no body is read: a client that closes its
    /// connection cancels the request (its upstream calls with it), as with hyper. Bytes of a
    /// pipelined next request are kept, up to the head limit.
    fn watch_close(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.buf.len() < self.limit {
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client closed the connection before its answer",
                    ))
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Whether the request body was read to its end (finishing it from what is already
    /// buffered if the upstream side stopped early); if not, the connection cannot carry
    /// another request.
    fn body_read_whole(&mut self, pump: Option<&mut Pump>) -> bool {
        let Some(p) = pump else {
            return true;
        };
        loop {
            if p.decoder.is_done() {
                return true;
            }
            match p.decoder.step(&mut self.buf) {
                Ok(Step::Data(_) | Step::Trailers(_)) => continue,
                Ok(Step::End) => return true,
                Ok(Step::NeedMore) | Err(_) => return false,
            }
        }
    }

    /// Writes the head (already in `out`) and the body in its framing; ready with whether the
    /// body went out whole.
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut GatewayBody,
        framing: Out,
        mut pump: Option<&mut Pump>,
    ) -> Poll<io::Result<bool>> {
        let mut done = framing == Out::None;
        let mut complete = true;
        let mut declared = match framing {
            Out::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            self.feed(cx, pump.as_deref_mut())?;
            // Whether the body was asked for a frame and has none yet (its waker is set).
            let mut body_waits = false;
            if !done && self.data.is_none() {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(d) if d.is_empty() => {}
                            Ok(d) => {
                                if d.len() as u64 > declared {
                                    // More than the head announced: the client could only
                                    // take it for the next answer.
                                    return Poll::Ready(Ok(false));
                                }
                                if framing != Out::UntilClose && declared != u64::MAX {
                                    declared -= d.len() as u64;
                                }
                                if framing == Out::Chunked {
                                    crate::body::framing::chunk_start(&mut self.out, d.len());
                                    self.after_data = b"\r\n";
                                }
                                self.data = Some(d);
                            }
                            Err(frame) => {
                                if let (Out::Chunked, Ok(trailers)) =
                                    (framing, frame.into_trailers())
                                {
                                    crate::body::framing::chunked_end(
                                        &mut self.out,
                                        Some(&trailers),
                                    );
                                    done = true;
                                }
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        done = true;
                        match framing {
                            Out::Chunked => crate::body::framing::chunked_end(&mut self.out, None),
                            Out::Length(_) if declared != 0 => complete = false,
                            _ => {}
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(error = %e, peer = %self.ctx.peer, "response body failed: closing the client connection");
                        // What was sent stays sent; the missing end tells the client.
                        let _ = self.poll_flush(cx);
                        return Poll::Ready(Ok(false));
                    }
                    Poll::Pending => body_waits = true,
                }
            }
            match self.poll_flush(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if done => return Poll::Ready(Ok(complete)),
                // Everything is written: on to the next frame, unless the body is waiting.
                Poll::Ready(Ok(())) if !body_waits => continue,
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes what is queued (`out` from `out_at`, then `data`) with one `writev` per round.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let head = &self.out[self.out_at..];
            let data = self.data.as_deref().unwrap_or(&[]);
            if head.is_empty() && data.is_empty() {
                self.out.clear();
                self.out_at = 0;
                if self.data.take().is_some() && !self.after_data.is_empty() {
                    self.out.extend_from_slice(self.after_data);
                    self.after_data = b"";
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let slices = [io::IoSlice::new(head), io::IoSlice::new(data)];
            let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, &slices);
            let n = match polled {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.send_idle.poll_stalled(cx, &self.ctx).map(Err),
            };
            self.send_idle.progressed();
            let from_head = n.min(head.len());
            self.out_at += from_head;
            if n > from_head {
                if let Some(d) = self.data.as_mut() {
                    let _ = d.split_to(n - from_head);
                }
            }
        }
    }
}
