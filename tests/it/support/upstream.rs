//! Real upstream HTTP servers for tests: `upstream::http1("users").route("/slow", h).spawn()`.
//!
//! Unrouted paths echo the request as JSON (method, path, headers, body length), so tests can
//! assert what the gateway sent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Body type upstream handlers return.
pub type UpBody = BoxBody<Bytes, std::io::Error>;
/// A request handler.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// Builds an upstream server.
pub struct UpstreamBuilder {
    name: String,
    routes: Vec<(String, Handler)>,
    h2: bool,
}

/// HTTP/1.1 upstream (also answers h2 with prior knowledge).
pub fn http1(name: &str) -> UpstreamBuilder {
    UpstreamBuilder {
        name: name.to_string(),
        routes: Vec::new(),
        h2: false,
    }
}

/// Upstream that speaks only HTTP/2 with prior knowledge (h2c).
pub fn h2c(name: &str) -> UpstreamBuilder {
    UpstreamBuilder {
        name: name.to_string(),
        routes: Vec::new(),
        h2: true,
    }
}

/// A running upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A full body from bytes.
pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A streaming body whose frames come from `next` until it returns `None`. It has no known
/// length, so an HTTP/1.1 server sends it with chunked encoding; it is produced only as fast as
/// it is read, so a slow reader throttles `next` (backpressure is observable through it).
pub fn generated<F>(next: F) -> UpBody
where
    F: FnMut() -> Option<Bytes> + Send + Sync + Unpin + 'static,
{
    Generated(next).boxed()
}

struct Generated<F>(F);

impl<F> http_body::Body for Generated<F>
where
    F: FnMut() -> Option<Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready((self.0)().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A handler answering `status` with a fixed text body.
pub fn reply(status: u16, body: &'static str) -> Handler {
    Arc::new(move |_req| {
        Box::pin(async move {
            let mut r = Response::new(full(body));
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            r
        })
    })
}

/// Wraps an async closure as a handler.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

impl UpstreamBuilder {
    /// Serves paths starting with `prefix` with `h` (first match wins).
    pub fn route(mut self, prefix: &str, h: Handler) -> Self {
        self.routes.push((prefix.to_string(), h));
        self
    }

    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn spawn(self) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let routes = Arc::new(self.routes);
        let name: Arc<str> = self.name.into();
        let h2 = self.h2;
        let (hits2, conns2) = (Arc::clone(&hits), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let routes = Arc::clone(&routes);
                let name = Arc::clone(&name);
                let hits = Arc::clone(&hits2);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let routes = Arc::clone(&routes);
                        let name = Arc::clone(&name);
                        async move {
                            let path = req.uri().path().to_string();
                            let found = routes.iter().find(|(p, _)| path.starts_with(p.as_str()));
                            let resp = match found {
                                Some((_, h)) => h(req).await,
                                None => echo(&name, req).await,
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(io, svc)
                            .await;
                    }
                });
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            task,
        }
    }
}

/// Echoes the request as JSON; the body is counted, not stored.
pub async fn echo(name: &str, req: Request<Incoming>) -> Response<UpBody> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut body = req.into_body();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => len += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    let v = serde_json::json!({
        "upstream": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": len,
    });
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A bare TCP "upstream" whose connections are handed to `f` as they are accepted: for faults a
/// real HTTP server would never produce (truncated or malformed responses, silence).
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1:0 and runs `f(stream, n)` for the n-th accepted connection (0-based).
pub async fn raw_tcp<F, Fut>(f: F) -> RawUpstream
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let n = conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(stream, n));
        }
    });
    RawUpstream {
        addr,
        connections,
        task,
    }
}

/// Reads from `stream` until the end of a request head (`\r\n\r\n`); returns the head, or `None`
/// when the peer closed first. Request bodies are not read.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// An echo upstream that answers every request with 500 while `sick` is set.
pub async fn flaky(
    name: &'static str,
    sick: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Upstream {
    let flag = Arc::clone(sick);
    http1(name)
        .route(
            "/",
            handler(move |req| {
                let sick = flag.load(Ordering::SeqCst);
                async move {
                    if sick {
                        let mut r = Response::new(full("broken"));
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    } else {
                        echo(name, req).await
                    }
                }
            }),
        )
        .spawn()
        .await
}
