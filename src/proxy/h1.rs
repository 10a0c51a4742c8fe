//! The gateway's own HTTP/1.1 client, for plain-text upstream targets (`http1.engine:
//! portico`, the default). hyper's client stays for h2c, TLS targets and upgrades.
//!
//! A request is written from the request's own task: the head encoded into the connection's
//! buffer and sent with the first body bytes in one `writev`; the response head is read with
//! `httparse` into header values that share the read buffer; the response body reads the
//! connection itself as the client side asks for it, and hands the connection back to this
//! worker's pool when it ends. No task per connection, no channel, no lock.
//!
//! An idle pooled connection is not watched, so one the upstream closed is found when it is
//! next used: the reactor's readiness (the close makes it readable) is checked at checkout,
//! and a request that fails on a reused connection before any byte of an answer, with no body
//! and an idempotent method, is sent again on a new one (as nginx does for its cached
//! connections) from the head already encoded.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use rustc_hash::FxHashMap;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::client::{Attempt, OpenConnection, Sent};
use crate::body::framing::{self, Decoder, Step};
use crate::body::head::RawHead;
use crate::body::{BodyError, RequestBody, UpstreamBody};
use crate::error::GatewayError;
use crate::upstream::{Service, Target};

/// The most header fields an upstream answer may have.
const MAX_HEADERS: usize = 100;
/// The most bytes a response head may take (nginx's `proxy_buffer_size` is 4-8 KiB).
const MAX_HEAD: usize = 32 * 1024;
/// How much the read buffer grows by; each body piece handed on is at most this big.
const READ_CHUNK: usize = 16 * 1024;

/// An upstream connection with its buffers.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    timer: HeadTimer,
    _open: OpenConnection,
}

/// The bound on the wait for an answer's head, one timer per connection. A request's deadline
/// is only noted; the timer, armed at an earlier request's deadline, is moved when it fires
/// before the deadline it now guards (or when a request must end sooner). With a timeout of
/// seconds and a request every few microseconds, the runtime's timer wheel sees a
/// registration per timeout period, not an insertion and a removal per request.
struct HeadTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    deadline: tokio::time::Instant,
}

impl HeadTimer {
    fn new() -> Self {
        Self {
            sleep: None,
            deadline: tokio::time::Instant::now(),
        }
    }

    /// Guards a new wait, until `deadline`.
    fn start(&mut self, deadline: tokio::time::Instant) {
        self.deadline = deadline;
        match &mut self.sleep {
            Some(sleep) if sleep.deadline() > deadline => sleep.as_mut().reset(deadline),
            Some(_) => {}
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Ready once the deadline has passed; else registers the wake-up for it.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= self.deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(self.deadline);
        }
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
    limit: Duration,
}

thread_local! {
    static POOL: RefCell<FxHashMap<u64, Vec<Idle>>> = RefCell::new(FxHashMap::default());
}

/// Drops idle connections past their idle limit or already closed by the upstream (called by
/// the worker's watchdog with the hyper pool's pruning).
pub fn prune_idle() {
    POOL.with(|p| {
        p.borrow_mut().retain(|_, idle| {
            idle.retain(|c| c.since.elapsed() <= c.limit && !c.conn.looks_closed());
            !idle.is_empty()
        });
    });
}

/// A pooled connection to `target` idle for at most `idle_limit` at `now`.
fn checkout(target: u64, idle_limit: Duration, now: Instant) -> Option<Box<Conn>> {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let idle = pool.get_mut(&target)?;
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) > idle_limit || c.conn.looks_closed() {
                continue;
            }
            return Some(c.conn);
        }
        None
    })
}

/// Where a connection goes back when its answer has been read whole.
#[derive(Clone, Copy)]
struct Home {
    target: u64,
    max_idle: usize,
    idle_limit: Duration,
}

impl Home {
    fn release(self, mut conn: Box<Conn>) {
        conn.out.clear();
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            let idle = pool.entry(self.target).or_default();
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                    limit: self.idle_limit,
                });
            }
        });
    }
}

impl Conn {
    /// Whether the reactor has seen the socket become readable while idle: the upstream closed
    /// it (or sent bytes nobody asked for); either way it cannot carry a request.
    fn looks_closed(&self) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        self.stream.poll_read_ready(&mut cx).is_ready()
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_into(&self.stream, &mut self.buf, READ_CHUNK, cx)
    }

    /// Writes `out` from `at`, then `data`, advancing both; ready when all is out.
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        at: &mut usize,
        data: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        while *at < self.out.len() || !data.is_empty() {
            let slices = [io::IoSlice::new(&self.out[*at..]), io::IoSlice::new(data)];
            let n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_out = n.min(self.out.len() - *at);
            *at += from_out;
            let _ = data.split_to(n - from_out);
        }
        Poll::Ready(Ok(()))
    }
}

/// Clears a socket's read readiness after a read that left room in its buffer: that read took
/// everything the kernel had, so the next wait for bytes (or for the peer's close) goes to the
/// reactor instead of starting with a read that finds nothing, and no system call is made to
/// learn it. Bytes or a close arriving later raise a new readiness event; a close already seen
/// stays seen (tokio keeps the closed state through a clear).
pub(crate) fn assume_drained(stream: &TcpStream) {
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// Reads what `stream` has into `buf`'s spare room, growing it by `grow` when nearly full;
/// a read that drained the socket clears its readiness (`assume_drained`).
pub(crate) fn poll_read_into(
    stream: &TcpStream,
    buf: &mut BytesMut,
    grow: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(grow);
        }
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < room {
                    assume_drained(stream);
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// How a request failed, and whether it may be sent again on another connection.
struct Failure {
    error: GatewayError,
    /// Nothing of an answer arrived and the request's body was not consumed.
    resendable: bool,
}

/// Sends `req` to the plain-HTTP/1.1 `target` as `attempt` says.
pub async fn send(
    service: &Service,
    target: &Arc<Target>,
    req: Request<RequestBody>,
    attempt: Attempt,
) -> Result<Sent, GatewayError> {
    // The attempt's one clock read serves the deadline and the pool's idle check.
    let (now, timeout) = (attempt.started, attempt.timeout);
    let deadline = tokio::time::Instant::from_std(now) + timeout;
    let (parts, mut body) = req.into_parts();
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let home = Home {
        target: target.id,
        max_idle: service.max_idle_per_target,
        idle_limit: service.timeouts.idle,
    };
    let mut head: Option<Vec<u8>> = None;
    loop {
        let (mut conn, reused) = match checkout(target.id, service.timeouts.idle, now) {
            Some(c) => (c, true),
            None => (Box::pin(open(service, target)).await?, false),
        };
        let framing = match head.take() {
            Some(encoded) => {
                conn.out = encoded;
                Framing::of(&body)
            }
            None => encode(
                &mut conn.out,
                &parts.method,
                &parts.uri,
                &parts.headers,
                &body,
            ),
        };
        conn.timer.start(deadline);
        let head_request = parts.method == Method::HEAD;
        match roundtrip(
            &mut conn,
            &mut body,
            framing,
            head_request,
            attempt.keep_raw_head,
            timeout,
        )
        .await
        {
            Ok(answer) => {
                // The head went out as bytes: its map serves the next message.
                super::headers::give_map(parts.headers);
                return Ok(answer.into_sent(conn, home));
            }
            Err(f) if f.resendable && reused && idempotent => {
                tracing::debug!(error = %f.error, "pooled upstream connection failed before an answer: sending again on a new one");
                head = Some(std::mem::take(&mut conn.out));
            }
            Err(f) => return Err(f.error),
        }
    }
}

async fn open(service: &Service, target: &Arc<Target>) -> Result<Box<Conn>, GatewayError> {
    let stream = super::client::connect(service, target).await?;
    Ok(Box::new(Conn {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(512),
        timer: HeadTimer::new(),
        _open: OpenConnection::new(target),
    }))
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
}

impl Framing {
    fn of(body: &RequestBody) -> Self {
        if body.is_end_stream() {
            Framing::None
        } else if body.size_hint().exact().is_some() {
            Framing::Length
        } else {
            Framing::Chunked
        }
    }
}

/// The request head, with the body's framing headers.
fn encode(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: &RequestBody,
) -> Framing {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        has_length |= *name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = Framing::of(body);
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length if !has_length => {
            let n = body.size_hint().exact().unwrap_or(0);
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // A method that means to send a body says it has none (hyper does the same).
        Framing::None
            if !has_length && matches!(*method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// A response head read from the connection.
struct Answer {
    response: Response<()>,
    /// The head's fields, when kept as its bytes (the response's map is then empty).
    raw: Option<Box<RawHead>>,
    decoder: Option<Decoder>,
    keep_alive: bool,
    body_sent: bool,
}

impl Answer {
    fn into_sent(self, conn: Box<Conn>, home: Home) -> Sent {
        let reusable = self.keep_alive && self.body_sent;
        let body = match self.decoder {
            None => {
                if reusable {
                    home.release(conn);
                }
                UpstreamBody::Empty
            }
            Some(decoder) => UpstreamBody::Own(Box::pin(OwnBody {
                conn: Some(conn),
                decoder,
                home: reusable.then_some(home),
            })),
        };
        let (parts, ()) = self.response.into_parts();
        Sent {
            response: Response::from_parts(parts, body),
            pooled: None,
            raw_head: self.raw,
        }
    }
}

/// Writes the request (head and body) while watching for the answer's head; ready with the
/// head once it has arrived (the request body may still be going when an upstream answers
/// early: the connection is then not reused), or with a timeout when the connection's timer
/// says its deadline passed first.
async fn roundtrip(
    conn: &mut Conn,
    body: &mut RequestBody,
    framing: Framing,
    head_request: bool,
    keep_raw: bool,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let mut at = 0;
    let mut data = Bytes::new();
    let mut body_done = framing == Framing::None;
    let mut written_all = false;
    let mut consumed = false;
    let mut suffix: &'static [u8] = b"";
    let mut trailers_sent = false;
    poll_fn(|cx| {
        // The request, as far as the socket and the body allow.
        while !written_all {
            match conn.poll_write_all(cx, &mut at, &mut data) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Failure {
                        error: GatewayError::UpstreamProtocol(format!(
                            "writing the request failed: {e}"
                        )),
                        resendable: !consumed,
                    }))
                }
                Poll::Pending => break,
            }
            if body_done && suffix.is_empty() {
                // `out` keeps the head of a bodiless request, to send again if need be.
                written_all = true;
                break;
            }
            conn.out.clear();
            at = 0;
            conn.out.extend_from_slice(suffix);
            suffix = b"";
            if body_done {
                continue;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    consumed = true;
                    match frame.into_data() {
                        Ok(d) => {
                            if !d.is_empty() && framing == Framing::Chunked {
                                framing::chunk_start(&mut conn.out, d.len());
                                suffix = b"\r\n";
                            }
                            data = d;
                        }
                        // Trailers end the body; a body framed by its length cannot carry
                        // them.
                        Err(frame) => {
                            if let (Ok(fields), Framing::Chunked) = (frame.into_trailers(), framing)
                            {
                                framing::chunked_end(&mut conn.out, Some(&fields));
                                trailers_sent = true;
                            }
                        }
                    }
                }
                Poll::Ready(None) => {
                    consumed = true;
                    body_done = true;
                    if framing == Framing::Chunked && !trailers_sent {
                        conn.out.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(Failure {
                        error: e.into(),
                        resendable: false,
                    }))
                }
                Poll::Pending => break,
            }
        }
        // The answer's head.
        loop {
            if !conn.buf.is_empty() {
                match parse_head(&mut conn.buf, head_request, keep_raw) {
                    Ok(Some(mut answer)) => {
                        answer.body_sent = written_all;
                        return Poll::Ready(Ok(answer));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        return Poll::Ready(Err(Failure {
                            error,
                            resendable: false,
                        }))
                    }
                }
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failure {
                        error: GatewayError::UpstreamProtocol(
                            "the upstream closed the connection before answering".into(),
                        ),
                        resendable: conn.buf.is_empty() && !consumed,
                    }))
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Failure {
                        error: GatewayError::UpstreamProtocol(format!(
                            "reading the answer failed: {e}"
                        )),
                        resendable: conn.buf.is_empty() && !consumed,
                    }))
                }
                Poll::Pending => {
                    // As `timeout_at` would: an answer that is there wins over the deadline.
                    if conn.timer.poll_expired(cx).is_ready() {
                        return Poll::Ready(Err(Failure {
                            error: GatewayError::UpstreamTimeout(timeout),
                            resendable: false,
                        }));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

/// An answer head's fields as read: each one's name, with the ranges (offset, length) of its
/// name and value in the head.
type HeadFields = smallvec::SmallVec<[(HeaderName, (usize, usize), (usize, usize)); 24]>;

/// Parses a response head from the front of `buf`, skipping 1xx answers; `None` when more
/// bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    keep_raw: bool,
) -> Result<Option<Answer>, GatewayError> {
    loop {
        let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            Ok(_) => return Err(protocol("the answer's head is too large")),
            Err(e) => return Err(protocol(&format!("the answer's head is invalid: {e}"))),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| protocol("invalid status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(protocol("an upgrade nobody asked for"));
            }
            let _ = buf.split_to(len);
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let buf_len = buf.len();
        let range = |s: &[u8]| {
            framing::offset(base, buf_len, s)
                .ok_or_else(|| protocol("a header outside the answer's head"))
        };
        let mut fields = HeadFields::new();
        let (mut length, mut chunked, mut te, mut close, mut keep) =
            (None, false, false, false, false);
        // The head is kept as its bytes unless `Connection` names fields to drop (rare: the
        // map's stripping handles that) or it is too large for the ranges.
        let mut raw = keep_raw && len <= RawHead::MAX_BYTES;
        for h in resp.headers.iter() {
            let name = super::field_name::parse(h.name.as_bytes())
                .map_err(|_| protocol("invalid header name"))?;
            if name == header::CONTENT_LENGTH {
                for part in h.value.split(|&b| b == b',') {
                    let n = framing::decimal(part.trim_ascii())
                        .ok_or_else(|| protocol("invalid Content-Length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(protocol("differing Content-Length values"));
                    }
                    length = Some(n);
                }
            } else if name == header::TRANSFER_ENCODING {
                te = true;
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            } else if name == header::CONNECTION {
                let mut names_others = false;
                for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let (c, k) = (
                        t.eq_ignore_ascii_case(b"close"),
                        t.eq_ignore_ascii_case(b"keep-alive"),
                    );
                    (close, keep) = (close || c, keep || k);
                    names_others |= !(c || k || t.is_empty());
                }
                // Hop-by-hop and read here: the answer's head would only carry it to the
                // `Connection` stripping for removal. One that names other fields stays, so
                // that they are stripped too.
                if !names_others {
                    continue;
                }
                raw = false;
            }
            fields.push((name, range(h.name.as_bytes())?, range(h.value)?));
        }
        let head = buf.split_to(len).freeze();
        let (headers, raw) = if raw {
            (
                super::headers::take_map(4),
                Some(raw_head(head, fields, length, te)?),
            )
        } else {
            // Room for what the gateway adds to answers (request id, policies' headers): a
            // map that grows rehashes every field.
            let mut headers = super::headers::take_map(fields.len() + 4);
            for (name, _, (at, n)) in fields.drain(..) {
                if te && name == header::CONTENT_LENGTH {
                    continue;
                }
                let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
                    .map_err(|_| protocol("invalid header value"))?;
                headers.append(name, value);
            }
            (headers, None)
        };
        let bodiless =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        // RFC 9112 §6.3: chunked when it is the final coding; another final coding, or no
        // framing at all, is read until the close.
        let (decoder, framed) = if bodiless {
            (None, true)
        } else if te {
            if chunked {
                (Some(Decoder::chunked()), true)
            } else {
                (Some(Decoder::UntilClose), false)
            }
        } else {
            match length {
                Some(0) => (None, true),
                Some(n) => (Some(Decoder::Length(n)), true),
                None => (Some(Decoder::UntilClose), false),
            }
        };
        let keep_alive = framed
            && match version {
                Version::HTTP_11 => !close,
                // An HTTP/1.0 answer keeps the connection only when it asks to, and a `close`
                // anywhere wins.
                _ => keep && !close,
            };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Answer {
            response,
            raw,
            decoder,
            keep_alive,
            body_sent: false,
        }));
    }
}

/// The end-to-end fields of the answer head in `head`, as ranges (see [`RawHead`]): the
/// hop-by-hop ones left out as `strip_hop_by_hop` would remove them, and `Content-Length`
/// beside `Transfer-Encoding` as the map mode drops it. The values need no check of their own:
/// httparse admits in a value exactly the bytes `HeaderValue` does (visible ASCII, space, tab,
/// obs-text).
fn raw_head(
    head: Bytes,
    fields: HeadFields,
    length: Option<u64>,
    te: bool,
) -> Result<Box<RawHead>, GatewayError> {
    let mut raw = Box::new(RawHead::new(head));
    raw.length = if te { None } else { length };
    for (name, at_name, at_value) in fields {
        if super::headers::is_fixed_hop_by_hop(&name) || (te && name == header::CONTENT_LENGTH) {
            continue;
        }
        raw.has_date |= name == header::DATE;
        if !raw.push(at_name, at_value) {
            return Err(protocol("a header outside the answer's head"));
        }
    }
    Ok(raw)
}

fn protocol(what: &str) -> GatewayError {
    GatewayError::UpstreamProtocol(what.to_string())
}

/// An answer's body, read from its connection as it is polled.
struct OwnBody {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    /// Where the connection goes once the body is read whole (`None`: it closes).
    home: Option<Home>,
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match this.decoder.step(&mut conn.buf) {
                Ok(Step::Data(piece)) => return Poll::Ready(Some(Ok(Frame::data(piece)))),
                Ok(Step::Trailers(fields)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(fields))))
                }
                Ok(Step::End) => {
                    if let (Some(home), Some(conn)) = (this.home.take(), this.conn.take()) {
                        // Bytes after the body would be an answer nobody asked for.
                        if conn.buf.is_empty() {
                            home.release(conn);
                        }
                    }
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(_) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Upstream(
                        "the answer's chunked framing is invalid",
                    ))));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Upstream(
                        "the upstream closed the connection before the end of its answer",
                    ))));
                }
                Ok(_) => {}
                Err(_) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Upstream(
                        "reading the answer failed",
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.decoder) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Decoder::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
