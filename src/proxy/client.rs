//! The upstream client: per-worker connection pools over hyper's connection-level API.
//!
//! Each worker thread runs its own single-threaded runtime, so each keeps its own pool in a
//! thread-local map keyed by the integer target id: no lock, no string hashing, no channel hop
//! per request. An HTTP/1.1 connection goes back to its pool when the response body has been
//! read to the end; an h2c connection is shared by all requests of the worker.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

use crate::body::{RequestBody, UpstreamBody};
use crate::error::GatewayError;
use crate::upstream::{Protocol, Service, Target};

struct IdleConn {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    /// The service's idle limit when the connection was released.
    limit: Duration,
}

#[derive(Default)]
struct WorkerPool {
    http1: FxHashMap<u64, Vec<IdleConn>>,
    h2: FxHashMap<u64, http2::SendRequest<RequestBody>>,
}

thread_local! {
    static POOL: RefCell<WorkerPool> = RefCell::new(WorkerPool::default());
}

/// An HTTP/1.1 connection lent to one request, to be returned when its response body ends.
pub struct PooledSender {
    sender: http1::SendRequest<RequestBody>,
    target: u64,
    max_idle: usize,
    idle_limit: Duration,
}

impl PooledSender {
    /// Puts the connection back into this worker's pool (or drops it when the pool is full).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            let idle = pool.http1.entry(self.target).or_default();
            if idle.len() < self.max_idle {
                idle.push(IdleConn {
                    sender: self.sender,
                    since: Instant::now(),
                    limit: self.idle_limit,
                });
            }
        });
    }
}

/// The upstream's answer, with the connection to return when its body ends.
pub struct Sent {
    /// Response head and streaming body.
    pub response: Response<UpstreamBody>,
    /// The HTTP/1.1 connection to hand back, if pooled.
    pub pooled: Option<PooledSender>,
    /// The answer's fields as the upstream wrote them, when the attempt let them be kept so
    /// (the response's map is then empty).
    pub raw_head: Option<Box<crate::body::head::RawHead>>,
}

/// How one request goes out.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Bounds the wait for the response head.
    pub timeout: Duration,
    /// When the attempt began: the caller's clock read, which times the exchange, serves the
    /// deadline too.
    pub started: Instant,
    /// The answer's head may be kept as its own bytes ([`crate::body::head::RawHead`]): the
    /// caller writes it through the own HTTP/1.1 server and reads no field of it. Only the own
    /// HTTP/1.1 client keeps one.
    pub keep_raw_head: bool,
}

impl Attempt {
    /// An attempt beginning now whose answer's head is read into the response's map.
    pub fn now(timeout: Duration) -> Self {
        Self {
            timeout,
            started: Instant::now(),
            keep_raw_head: false,
        }
    }
}

/// Sends `req` to `target`, reusing a pooled connection when one is ready.
pub async fn send(
    service: &Service,
    target: &Arc<Target>,
    req: Request<RequestBody>,
    attempt: Attempt,
) -> Result<Sent, GatewayError> {
    let timeout = attempt.timeout;
    match target.protocol {
        Protocol::Http1 if service.own_http1 && target.tls.is_none() => {
            super::h1::send(service, target, req, attempt).await
        }
        Protocol::Http1 => send_http1(service, target, req, timeout).await,
        Protocol::H2c => Box::pin(send_h2(service, target, req, timeout)).await,
    }
}

/// Drops this worker's idle connections that are closed or past their idle limit, and the
/// pool entries of targets left with none (e.g. targets a reload removed). Called by the
/// worker's watchdog once per period, so idle sockets do not wait for a checkout that never
/// comes.
pub fn prune_idle() {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        pool.http1.retain(|_, idle| {
            idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() <= c.limit);
            !idle.is_empty()
        });
        pool.h2.retain(|_, sender| !sender.is_closed());
    });
}

fn checkout_http1(target: u64, idle_limit: Duration) -> Option<http1::SendRequest<RequestBody>> {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let idle = pool.http1.get_mut(&target)?;
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() || conn.since.elapsed() > idle_limit {
                continue;
            }
            return Some(conn.sender);
        }
        None
    })
}

async fn send_http1(
    service: &Service,
    target: &Arc<Target>,
    mut req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Sent, GatewayError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut fresh = false;
    loop {
        let mut sender = match checkout_http1(target.id, service.timeouts.idle) {
            Some(s) => s,
            None => {
                fresh = true;
                // Boxed so the common (pooled) path's future stays small: every await of a large
                // future costs a memcpy of its whole state.
                Box::pin(open_http1(service, target)).await?
            }
        };
        if !fresh && sender.ready().await.is_err() {
            continue;
        }
        match tokio::time::timeout_at(deadline, sender.try_send_request(req)).await {
            Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
            Ok(Ok(response)) => {
                return Ok(Sent {
                    response: response.map(UpstreamBody::Hyper),
                    pooled: Some(PooledSender {
                        sender,
                        target: target.id,
                        max_idle: service.max_idle_per_target,
                        idle_limit: service.timeouts.idle,
                    }),
                    raw_head: None,
                })
            }
            // A pooled connection may have been closed by the upstream while idle; the request
            // was not sent in that case and is safe to try again on another connection.
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if !fresh => req = back,
                _ => return Err(upstream_error(e.into_error())),
            },
        }
    }
}

async fn open_http1(
    service: &Service,
    target: &Target,
) -> Result<http1::SendRequest<RequestBody>, GatewayError> {
    let stream = connect(service, target).await?;
    // Generic over the stream, so the plain path compiles to exactly what it was without TLS.
    match &target.tls {
        None => handshake_http1(stream, OpenConnection::new(target)).await,
        Some(tls) => {
            handshake_http1(
                tls.connect(&target.url, stream).await?,
                OpenConnection::new(target),
            )
            .await
        }
    }
}

/// The most an upstream HTTP/1.1 connection reads ahead: its response head must fit (nginx's
/// `proxy_buffer_size` is 4-8 KiB), and each body chunk handed to the client side is at most
/// this big, so a client that stops reading holds about this much of the upstream's body.
/// hyper's default (about 400 KiB) cost a stalled client about 1 MiB of the gateway's memory.
const UPSTREAM_READ_BUFFER: usize = 32 * 1024;

async fn handshake_http1<IO>(
    io: IO,
    open: OpenConnection,
) -> Result<http1::SendRequest<RequestBody>, GatewayError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await
        .map_err(|e| GatewayError::UpstreamConnect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
        drop(open);
    });
    Ok(sender)
}

async fn handshake_h2<IO>(
    io: IO,
    open: OpenConnection,
) -> Result<http2::SendRequest<RequestBody>, GatewayError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await
        .map_err(|e| GatewayError::UpstreamConnect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection closed with an error");
        }
        drop(open);
    });
    Ok(sender)
}

async fn send_h2(
    service: &Service,
    target: &Arc<Target>,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Sent, GatewayError> {
    let cached = POOL.with(|p| {
        let pool = p.borrow();
        pool.h2.get(&target.id).filter(|s| !s.is_closed()).cloned()
    });
    let mut sender = match cached {
        Some(s) => s,
        None => {
            let stream = connect(service, target).await?;
            let sender = match &target.tls {
                None => handshake_h2(stream, OpenConnection::new(target)).await?,
                Some(tls) => {
                    handshake_h2(
                        tls.connect(&target.url, stream).await?,
                        OpenConnection::new(target),
                    )
                    .await?
                }
            };
            POOL.with(|p| p.borrow_mut().h2.insert(target.id, sender.clone()));
            sender
        }
    };
    sender.ready().await.map_err(upstream_error)?;
    let response = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| GatewayError::UpstreamTimeout(timeout))?
        .map_err(upstream_error)?;
    Ok(Sent {
        response: response.map(UpstreamBody::Hyper),
        pooled: None,
        raw_head: None,
    })
}

/// Opens an unpooled HTTP/1.1 connection whose protocol can be upgraded (WebSocket).
pub async fn send_upgradable(
    service: &Service,
    target: &Arc<Target>,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let stream = connect(service, target).await?;
    let mut sender = match &target.tls {
        None => handshake_upgradable(stream, OpenConnection::new(target)).await?,
        Some(tls) => {
            handshake_upgradable(
                tls.connect(&target.url, stream).await?,
                OpenConnection::new(target),
            )
            .await?
        }
    };
    tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| GatewayError::UpstreamTimeout(timeout))?
        .map_err(upstream_error)
}

async fn handshake_upgradable<IO>(
    io: IO,
    open: OpenConnection,
) -> Result<http1::SendRequest<RequestBody>, GatewayError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await
        .map_err(|e| GatewayError::UpstreamConnect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        drop(open);
    });
    Ok(sender)
}

/// Counts an open upstream connection on its target until the connection's task ends.
pub(super) struct OpenConnection(Arc<crate::upstream::state::TargetState>);

impl OpenConnection {
    pub(super) fn new(target: &Target) -> Self {
        target.state.connections.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(&target.state))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn connect(service: &Service, target: &Target) -> Result<TcpStream, GatewayError> {
    let attempt = async {
        let addrs = target
            .resolve()
            .await
            .map_err(|e| GatewayError::UpstreamConnect(format!("{}: {e}", target.url)))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(GatewayError::UpstreamConnect(format!(
            "{}: {}",
            target.url,
            last.map_or_else(|| "no address".to_string(), |e| e.to_string())
        )))
    };
    tokio::time::timeout(service.timeouts.connect, attempt)
        .await
        .map_err(|_| GatewayError::UpstreamConnectTimeout)?
}

/// Maps a hyper client error: our own body errors keep their meaning (413, bad client body).
pub fn upstream_error(e: hyper::Error) -> GatewayError {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(body) = s.downcast_ref::<crate::body::BodyError>() {
            return match body {
                crate::body::BodyError::TooLarge(limit) => {
                    GatewayError::PayloadTooLarge { limit: *limit }
                }
                crate::body::BodyError::ClientIdle(idle) => GatewayError::RequestBodyTimeout(*idle),
                crate::body::BodyError::Filter { plugin, message } => GatewayError::PluginFailed {
                    plugin: Arc::clone(plugin),
                    message: message.clone(),
                },
                other => GatewayError::ClientBody(other.to_string()),
            };
        }
        // With TLS 1.3 an upstream refuses our client certificate (or its absence) only after
        // the handshake, with an alert on the first read: still a TLS failure, said so.
        if let Some(tls) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return GatewayError::UpstreamTls(tls.to_string());
        }
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user())
        {
            return GatewayError::ClientBody(s.to_string());
        }
        source = s.source();
    }
    if e.is_body_write_aborted() || e.is_user() {
        return GatewayError::ClientBody(e.to_string());
    }
    GatewayError::UpstreamProtocol(e.to_string())
}
