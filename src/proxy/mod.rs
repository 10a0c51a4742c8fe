//! The data-plane service: request in, response out, never an error (`Error = Infallible`).
//!
//! Owns the order of work on a request (see `docs/request-lifecycle.md`): request id, limits,
//! routing, rewrite, header hygiene, upstream call, response hygiene, access log. Failures become
//! JSON responses through `error.rs`; nothing here drops a connection on purpose.

pub mod body;
pub mod client;
pub mod grpc;
pub mod headers;
pub mod retry;
pub mod shadow;
pub mod unparsed;
mod upgrade;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::config::plan::{Rewrite, Route, TemplatePart};
use crate::error::GatewayError;
use crate::policy::{auth, cache, cors, transform};
use crate::router::{normalize, normalize_host, Match};
use crate::runtime::{Active, Runtime};
use crate::telemetry::access_log::{rfc3339, Finish, RequestText};
use crate::telemetry::metrics::{Measure, RecentError};
use crate::telemetry::trace::{ServerSpan, Trace};
use crate::upstream::window::now_ns;
use body::{Epilogue, GatewayBody, RequestBody};
use headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};

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
pub struct ActiveRequest(Arc<ConnCtx>);

impl ActiveRequest {
    fn start(ctx: Arc<ConnCtx>) -> Self {
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
        Box::pin(handle(Arc::clone(&self.0), req))
    }
}

/// What the access log needs from the request, captured only when the log is on.
pub(crate) struct LogDraft {
    finish: Box<Finish>,
}

/// The request's trace, handed down the request path: upstream calls stamp `traceparent` from
/// it, and the server span (recorded requests only) learns the route and service.
pub(crate) struct Traced<'a> {
    trace: &'a Trace,
    span: Option<&'a mut ServerSpan>,
}

async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let guard = ActiveRequest::start(ctx);
    let ctx = &guard.0;
    let active = ctx.runtime.active();
    let start = Instant::now();
    let metrics_on = active.plan.raw.metrics.enabled;
    // Kept for the metrics (methods are cheap to clone; the path only for a recent-errors
    // entry, a reference-count increment).
    let method = req.method().clone();
    let path = metrics_on.then(|| req.uri().path_and_query().cloned());
    let mut matched = None;
    let request_bytes = content_length(&req).unwrap_or(0);
    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => v.clone(),
        _ => headers::new_request_id(),
    };
    // Always: the upstream gets a `traceparent` whether or not spans are exported.
    let trace = Trace::start(req.headers(), active.tracer.as_ref());
    let mut span = if trace.recording() {
        ServerSpan::start(
            &trace,
            req.method(),
            req.uri().path(),
            request_host(&req).unwrap_or(""),
            headers::client_ip(ctx.peer.ip(), req.headers(), &active.plan.trusted_proxies),
        )
    } else {
        None
    };
    let mut draft = active.access_log.as_ref().map(|logger| LogDraft {
        finish: Box::new(Finish {
            logger: Arc::clone(logger),
            start,
            timestamp: SystemTime::now(),
            text: RequestText::new(
                request_id.as_bytes(),
                request_host(&req).unwrap_or("").as_bytes(),
                req.uri()
                    .path_and_query()
                    .map_or(req.uri().path(), |pq| pq.as_str()),
                req.headers().get(header::USER_AGENT).map(|v| v.as_bytes()),
            ),
            client_ip: headers::client_ip(
                ctx.peer.ip(),
                req.headers(),
                &active.plan.trusted_proxies,
            ),
            method: req.method().clone(),
            route: None,
            service: None,
            consumer: None,
            target: None,
            status: 0,
            error: None,
            request_bytes,
            upstream_duration: None,
            cache: None,
            grpc_status: None,
            retries: 0,
            rate_limit: None,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
        }),
    });
    let version = req.version();
    // Only HTTP/2 requests can be gRPC calls: HTTP/1.1 traffic skips the header lookup.
    let grpc = version == Version::HTTP_2 && grpc::is_grpc(req.headers());
    let traced = Traced {
        trace: &trace,
        span: span.as_deref_mut(),
    };
    let result = proxy(
        ctx,
        &active,
        req,
        &request_id,
        draft.as_mut(),
        traced,
        &mut matched,
    )
    .await;
    let route_metrics = metrics_on.then(|| match matched {
        Some(i) => &active.plan.routes[i].metrics,
        None => &ctx.runtime.metrics.unmatched,
    });
    let mut error_code = None;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            error_code = Some(e.kind().code);
            if let Some(d) = draft.as_mut() {
                d.finish.error = error_code;
                d.finish.rate_limit = match e {
                    GatewayError::RateLimited { .. } => Some("rejected"),
                    GatewayError::RateLimitUnavailable => Some("unavailable"),
                    _ => d.finish.rate_limit,
                };
            }
            if let Some(m) = route_metrics {
                m.refused(&e);
            }
            if let Some(s) = span.as_mut() {
                s.error = Some(e.kind().code);
            }
            if grpc {
                e.to_grpc_response()
            } else {
                e.to_response(Some(&request_id))
            }
        }
    };
    if ctx.draining.load(Ordering::Relaxed) && version == Version::HTTP_11 {
        // hyper closes the connection after a response saying so: the client opens a new one
        // instead of racing a close of its idle connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = resp.status().as_u16();
    let cache_status = resp
        .extensions()
        .get::<cache::CacheStatus>()
        .map(|s| s.as_str());
    // Trailers-only gRPC answers carry the status in the head; others in the trailers, which
    // the body records when they pass.
    let grpc_status = if grpc {
        grpc::status_of(resp.headers())
    } else {
        None
    };
    if let Some(m) = route_metrics {
        m.count(&method, status);
        if let Some(c) = cache_status {
            m.cache(c);
        }
        if let Some(code) = grpc_status {
            m.grpc(code);
        }
        if error_code.is_some() || status >= 500 {
            ctx.runtime.metrics.note_error(RecentError {
                time: rfc3339(SystemTime::now()),
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                route: matched.map(|_| m.route().to_string()),
                service: matched.map(|_| m.service().to_string()),
                method: method.to_string(),
                path: path
                    .flatten()
                    .map_or_else(String::new, |p| p.path().chars().take(200).collect()),
                status,
                error: error_code,
            });
        }
        resp.body_mut().set_measure(Measure {
            route: Arc::clone(m),
            start,
            request_bytes,
            grpc: grpc && grpc_status.is_none(),
        });
    }
    if let Some(mut d) = draft {
        d.finish.status = status;
        d.finish.cache = cache_status;
        d.finish.grpc_status = grpc_status;
        resp.body_mut().set_finish(d.finish);
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    if let Some(mut s) = span {
        s.status = resp.status().as_u16();
        resp.body_mut().set_span(s);
    }
    resp.body_mut()
        .set_active(guard, version <= Version::HTTP_11);
    Ok(resp)
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The host the client addressed: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().host() {
        Some(h) => Some(h),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
}

/// Rejects what a gateway must never pass on, before any routing.
fn check_request(active: &Active, req: &Request<Incoming>) -> Result<(), GatewayError> {
    use hyper::body::Body as _;
    let limits = &active.plan.limits;
    if req.method() == Method::CONNECT {
        return Err(GatewayError::MethodNotSupported(Method::CONNECT));
    }
    // hyper frames a request by its final transfer coding when that is `chunked` and ignores
    // the others; upstream we re-frame the body as plain chunked, so any other coding
    // (`gzip, chunked`) or a doubled `chunked` would be silently dropped. Only a lone `chunked`
    // is passed on. Bodies of known length (no Transfer-Encoding) skip the header lookup.
    if req.body().size_hint().exact().is_none() && !is_plain_chunked(req.headers()) {
        return Err(GatewayError::BadRequest(
            "unsupported Transfer-Encoding: only a single `chunked` is accepted",
        ));
    }
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    check_host(req)?;
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest(
            "the request target must be an absolute path",
        ));
    }
    if has_dot_segment(path) {
        return Err(GatewayError::BadRequest(
            "the request path contains `.` or `..` segments",
        ));
    }
    Ok(())
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and a valid one; HTTP/2's
/// `:authority` and `Host` name the same thing (RFC 9113 §8.3.1). Anything else is a 400:
/// routing on one of two hosts, or forwarding a malformed one, lets a client pick what the
/// gateway and the upstream each believe.
fn check_host(req: &Request<Incoming>) -> Result<(), GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest(
            "the request has more than one Host header",
        ));
    }
    match host {
        None if req.version() == Version::HTTP_11 => Err(GatewayError::BadRequest(
            "an HTTP/1.1 request must carry a Host header",
        )),
        None => Ok(()),
        Some(h) if !valid_authority(h.as_bytes()) => Err(GatewayError::BadRequest(
            "the Host header is not a valid host[:port]",
        )),
        Some(h) => match req.uri().authority() {
            // HTTP/1.1 absolute-form: the target's authority is the one used and forwarded
            // (RFC 9112 §3.2.2); Host is only checked for syntax.
            Some(a)
                if req.version() == Version::HTTP_2
                    && !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) =>
            {
                Err(GatewayError::BadRequest(
                    "the Host header and :authority name different hosts",
                ))
            }
            _ => Ok(()),
        },
    }
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2): a registered name (unreserved, sub-delims and
/// percent-escapes) or a bracketed IP literal, then an optional numeric port. No userinfo, no
/// whitespace. An empty value is allowed, as RFC 9112 §3.2 says for a target without authority.
fn valid_authority(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &value[end + 1..] {
            [] => (&value[..0], None),
            [b':', port @ ..] => (&value[..0], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    // A byte class as a match, not a search of a list per byte: this runs on every request.
    let host_ok = host.iter().all(|&b| {
        matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b'%')
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// True when the request carries no `Transfer-Encoding`, or exactly one saying `chunked`.
fn is_plain_chunked(headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// True when a path segment is `.` or `..`, written plainly or percent-encoded. Such paths could
/// slip past a prefix route (`/public/../admin`), so they are refused rather than normalised.
fn has_dot_segment(path: &str) -> bool {
    // Cheap pre-check: most paths have no `.` and no `%` at all.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|seg| {
        if seg.len() > 6 {
            return false;
        }
        let rest = seg.as_bytes();
        let mut dots = 0;
        let mut i = 0;
        while i < rest.len() {
            if rest[i] == b'.' {
                i += 1;
            } else if rest[i..].len() >= 3
                && rest[i] == b'%'
                && rest[i + 1] == b'2'
                && rest[i + 2].eq_ignore_ascii_case(&b'e')
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

async fn proxy(
    ctx: &ConnCtx,
    active: &Active,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    mut draft: Option<&mut LogDraft>,
    mut traced: Traced<'_>,
    matched: &mut Option<usize>,
) -> Result<Response<GatewayBody>, GatewayError> {
    check_request(active, &req)?;
    let plan = &active.plan;
    if let Cow::Owned(path) = normalize::normalize(req.uri().path(), &plan.paths)
        .map_err(|e| GatewayError::BadRequest(e.message()))?
    {
        set_path(req.uri_mut(), path);
    }
    let host = match request_host(&req) {
        Some(h) => normalize_host(h),
        None => "".into(),
    };
    let key = normalize::routing_key(req.uri().path());
    let path: &str = &key;
    let mut found = plan.router.find(&host, path, req.method(), req.headers());
    if let Match::MethodNotAllowed(_) = found {
        // A CORS preflight is routed by the method it asks about, so a route need not list
        // OPTIONS to have its preflights answered.
        if let Some(asked) = cors::preflight_method(&req) {
            match plan.router.find(&host, path, &asked, req.headers()) {
                Match::Found(f) if plan.routes[f.route].policies.cors.is_some() => {
                    found = Match::Found(f)
                }
                _ => {}
            }
        }
    }
    let found = match found {
        Match::Found(found) => found,
        Match::MethodNotAllowed(allow) => {
            let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
            return Err(GatewayError::MethodNotAllowed {
                method: req.method().clone(),
                allow: allow.join(", "),
            });
        }
        Match::NotFound => {
            return Err(GatewayError::NoRoute {
                method: req.method().clone(),
                path: path.chars().take(200).collect(),
            })
        }
    };
    *matched = Some(found.route);
    let route = &plan.routes[found.route];
    if route.escaped_slashes == normalize::EscapedSlashes::Reject
        && normalize::has_escaped_slash(req.uri().path())
    {
        return Err(GatewayError::BadRequest(
            "the path contains an encoded slash (%2F or %5C), which this route does not accept",
        ));
    }
    if route.https_redirect && ctx.tls.is_none() {
        let port = plan.tls.as_ref().map_or(443, |t| t.https_port);
        return crate::tls::https_redirect(&req, port);
    }
    let service = &plan.services[route.service];
    if let Some(d) = draft.as_deref_mut() {
        d.finish.route = Some(Arc::clone(&route.name));
        d.finish.service = Some(Arc::clone(&service.name));
    }
    if let Some(s) = traced.span.as_deref_mut() {
        s.route = Some(Arc::clone(&route.name));
        s.service = Some(Arc::clone(&service.name));
    }
    if let Some(filter) = &route.policies.ip_filter {
        filter.check(headers::client_ip(
            ctx.peer.ip(),
            req.headers(),
            &plan.trusted_proxies,
        ))?;
    }
    if let Some(cors) = &route.policies.cors {
        if cors::preflight_method(&req).is_some() {
            return cors.preflight(&req);
        }
    }
    if content_length(&req).is_some_and(|len| len > route.max_body_bytes) {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_body_bytes,
        });
    }
    // The rewritten path needs the route's captures, which borrow the request; the query is
    // attached after authentication, which may remove an API key from it.
    let rewritten = rewrite_target_path(route, path, found.matched_len, &found.params);
    let captures = transform_captures(route, &found.params);
    let (mut parts, body) = req.into_parts();
    auth::strip_identity_headers(&mut parts.headers, &plan.identity_headers);
    if let Some(name) = plan.tls.as_ref().and_then(|t| t.forward_header.as_ref()) {
        // Only the gateway vouches for a client certificate: the client's own header goes.
        parts.headers.remove(name);
        if let Some(v) = ctx.tls.as_ref().and_then(|t| t.forward_value.clone()) {
            parts.headers.insert(name, v);
        }
    }
    let cors_origin = route
        .policies
        .cors
        .as_ref()
        .map(|c| c.allowed_origin(&parts.headers));
    let identity = match &route.policies.auth {
        Some(policy) => {
            let cert = ctx.tls.as_ref().and_then(|t| t.client_cert.as_ref());
            Some(policy.authenticate(&mut parts, cert).await?)
        }
        None => None,
    };
    if let (Some(d), Some(id)) = (draft.as_deref_mut(), &identity) {
        d.finish.consumer = id.name.clone();
    }
    let mut new_path = upstream_path_and_query(rewritten, &parts.uri);

    let client_ip = headers::client_ip(ctx.peer.ip(), &parts.headers, &plan.trusted_proxies);
    // `split` or `versioning` may send the request to another service than the route's.
    let mut version_headers: &[(header::HeaderName, HeaderValue)] = &[];
    let service = match &route.policies.traffic {
        Some(t) => {
            let (index, headers, strip) = t.choose(&parts, identity.as_ref())?;
            version_headers = headers;
            if strip {
                new_path = strip_first_segment(&new_path);
            }
            let chosen = &plan.services[index];
            if let Some(d) = draft.as_deref_mut() {
                d.finish.service = Some(Arc::clone(&chosen.name));
            }
            if let Some(s) = traced.span.as_deref_mut() {
                s.service = Some(Arc::clone(&chosen.name));
            }
            chosen
        }
        None => service,
    };
    // Rate limiting runs after auth (it may key on the consumer) and before anything is sent
    // upstream: a rejected request never reaches a target.
    let admitted = match &route.policies.rate_limit {
        Some(policy) => {
            let admitted = policy
                .check(&route.name, identity.as_ref(), &parts.headers, client_ip)
                .await?;
            if let Some(d) = draft.as_deref_mut() {
                d.finish.rate_limit = Some("allowed");
            }
            Some(admitted)
        }
        None => None,
    };
    // The cache answers after rate limiting (a hit counts against the limits too) and before
    // the breaker or a target is involved; a miss goes on with a `Fill` that takes the
    // upstream's response.
    let mut cached = match &route.policies.cache {
        Some(policy) => match policy.lookup(&mut parts, identity.as_ref()).await {
            cache::Lookup::Respond(mut resp) => {
                for (k, v) in admitted.map(|a| a.headers).unwrap_or_default() {
                    resp.headers_mut().insert(k, v);
                }
                return Ok(resp);
            }
            cache::Lookup::Forward(fill) => Some(fill),
        },
        None => None,
    };
    // The breaker and the service's concurrency cap come before any target is picked: an open
    // breaker or a full service answers without touching the upstream.
    // An aggregate route calls other services, each through its own breaker and cap (see
    // `aggregate`): only the route's own breaker applies here, not its nominal service's.
    let aggregate = route.policies.aggregate.is_some();
    let breaker = route
        .resilience
        .breaker
        .as_ref()
        .or(service.breaker.as_ref().filter(|_| !aggregate));
    let permit = match breaker {
        Some(b) => match b.admit(now_ns()) {
            Ok(permit) => Some(permit),
            Err(wait) => {
                if let Some(fallback) = &route.resilience.fallback {
                    return Ok(fallback.response());
                }
                let open = GatewayError::CircuitOpen {
                    breaker: Arc::clone(&b.name),
                    retry_after: wait.as_secs_f64().ceil() as u64,
                };
                // stale-if-error covers an open breaker too.
                return match cached {
                    Some(fill) => fill.upstream_failed(open),
                    None => Err(open),
                };
            }
        },
        None => None,
    };
    let service_slot = match &service.max_concurrent {
        Some(limit) if !aggregate => Some(
            limit
                .try_acquire()
                .ok_or_else(|| GatewayError::ServiceOverloaded(Arc::clone(&service.name)))?,
        ),
        _ => None,
    };

    let upgrade = parts.version == Version::HTTP_11
        && headers::wants_upgrade(&parts.headers)
        && headers::allow_upgrades(&mut parts.headers, &route.upgrades);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    // The target's authority (HTTP/2, HTTP/1.1 absolute-form) wins over `Host` (RFC 9112
    // §3.2.2), as it did for routing: the two are never mixed.
    let client_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // gRPC servers may insist on `te: trailers` (the one TE value HTTP/2 allows): keep it.
    let te_trailers = parts.version == Version::HTTP_2
        && parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let h = &mut parts.headers;
    if te_trailers {
        // Kept for HTTP/2 targets only (see `retry::prepare`).
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if plan.forwarding.x_forwarded {
        headers::append_forwarded_for(h, &ctx.peer_header);
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if ctx.tls.is_some() { "https" } else { "http" }),
        );
        if let Some(v) = &client_host {
            h.insert(X_FORWARDED_HOST, v.clone());
        }
    }
    if plan.forwarding.forwarded {
        if let Some(v) = forwarded_value(ctx.peer.ip(), client_host.as_ref(), ctx.tls.is_some()) {
            h.append(header::FORWARDED, v);
        }
    }
    if let Some(via) = &plan.forwarding.via {
        h.append(header::VIA, via.clone());
    }
    h.insert(X_REQUEST_ID, request_id.clone());
    if let Some(identity) = &identity {
        identity.apply(h);
    }
    // Transforms run last on the request, so they can rename or remove what the gateway added.
    let mut response_headers = None;
    let body = RequestBody::streaming(body, route.max_body_bytes, plan.request_body_idle);
    let body = match &route.policies.transform {
        Some(t) => {
            let original = new_path.clone();
            let facts = transform::Facts {
                captures: &captures,
                query: original.query(),
                client_ip,
                request_id,
                identity: identity.as_ref(),
            };
            (new_path, response_headers) = t.apply_request(&mut parts, original.clone(), &facts);
            t.request_body(&mut parts, body, &facts).await?
        }
        None => body,
    };

    if let Some(aggregate) = &route.policies.aggregate {
        drop(body);
        let facts = transform::Facts {
            captures: &captures,
            query: new_path.query(),
            client_ip,
            request_id,
            identity: identity.as_ref(),
        };
        return aggregate
            .run(
                &plan.services,
                &parts.headers,
                &facts,
                client_ip,
                route.timeout,
                traced.trace,
            )
            .await;
    }
    let body = match &route.policies.shadow {
        Some(policy) if client_upgrade.is_none() => {
            // The mirrored copy is a call of its own (the main one is stamped again).
            traced.trace.stamp(&mut parts.headers);
            let copy = shadow::MirrorOf {
                parts: &parts,
                client_ip,
                client_host: client_host.as_ref(),
                new_path: &new_path,
                preserve_host: route.preserve_host,
                timeout: route.timeout,
            };
            shadow::maybe_mirror(policy, &plan.services[policy.service], copy, body).await?
        }
        _ => body,
    };

    if let Some(client_upgrade) = client_upgrade {
        drop(body);
        let index = service
            .pick(&parts.headers, client_ip, None)
            .ok_or_else(|| GatewayError::NoHealthyUpstream(Arc::clone(&service.name)))?;
        let target = &service.targets[index];
        if let Some(d) = draft.as_deref_mut() {
            d.finish.target = Some(Arc::clone(target));
        }
        traced.trace.stamp(&mut parts.headers);
        retry::prepare(
            &mut parts,
            target,
            route.preserve_host,
            client_host.as_ref(),
            &new_path,
        )?;
        let req = Request::from_parts(parts, RequestBody::empty());
        return Box::pin(upgrade::proxy_upgrade(
            service,
            target,
            req,
            client_upgrade,
            route.timeout,
        ))
        .await;
    }

    if let Some(stale) = cached.as_mut().and_then(cache::Fill::take_background) {
        // stale-while-revalidate: the client has its answer; the refresh goes on alone, to one
        // target, without retries.
        if let (Some(fill), Some(index)) = (cached, service.pick(&parts.headers, client_ip, None)) {
            let target = Arc::clone(&service.targets[index]);
            traced.trace.stamp(&mut parts.headers);
            retry::prepare(
                &mut parts,
                &target,
                route.preserve_host,
                client_host.as_ref(),
                &new_path,
            )?;
            let upstream_req = Request::from_parts(parts, body);
            fill.refresh_in_background(Arc::clone(service), target, upstream_req, route.timeout);
        }
        return Ok(stale);
    }
    let forward = retry::Forward {
        service,
        how: retry::How::route(route),
        client_ip,
        client_host,
        new_path,
        trace: traced.trace,
        call: None,
    };
    let result = retry::forward(&forward, parts, body, draft).await;
    if let Some(permit) = permit {
        retry::settle(permit, &result);
    }
    let retry::Answer { sent, in_flight } = match result {
        Ok(answer) => answer,
        // stale-if-error: a stale entry may answer instead.
        Err(e) => {
            return match cached {
                Some(fill) => fill.upstream_failed(e),
                None => Err(e),
            }
        }
    };
    let (mut parts, incoming) = sent.response.into_parts();
    // The version is hop-by-hop: an HTTP/1.0 upstream's answer goes to an HTTP/1.1 client as
    // HTTP/1.1 (hyper would otherwise write `HTTP/1.0` and treat the connection as such).
    parts.version = Version::HTTP_11;
    if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        // No upgrade was forwarded on this request: relaying the switch would turn the client
        // connection into a tunnel to the upstream that no route or policy sees.
        return Err(GatewayError::UpstreamProtocol(
            "the upstream switched protocols (101) although no upgrade was requested".into(),
        ));
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if let (Some(t), Some(rendered)) = (&route.policies.transform, response_headers) {
        t.apply_response(&mut parts.headers, rendered);
    }
    if let (Some(c), Some(origin)) = (&route.policies.cors, cors_origin) {
        c.apply(&mut parts.headers, origin);
    }
    for (name, value) in version_headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    let incoming = match &route.policies.transform {
        Some(t) if t.has_response_body() => {
            t.response_body(&mut parts.headers, incoming, route.timeout)
                .await?
        }
        _ => Err(incoming),
    };
    let mut concurrency = None;
    if let Some(admitted) = admitted {
        for (k, v) in admitted.headers {
            parts.headers.insert(k, v);
        }
        concurrency = admitted.slot;
    }
    if let Some(via) = &plan.forwarding.via {
        parts.headers.append(header::VIA, via.clone());
    }
    let epilogue = Epilogue {
        pooled: sent.pooled,
        in_flight: Some(in_flight),
        concurrency,
        service_slot,
        ..Epilogue::default()
    };
    let body = match incoming {
        Ok(rewritten) => GatewayBody::full_with(rewritten, epilogue),
        Err(incoming) => GatewayBody::upstream(incoming, service.timeouts.idle, epilogue),
    };
    let resp = Response::from_parts(parts, body);
    Ok(match cached {
        Some(fill) => fill.respond(resp),
        None => resp,
    })
}

/// Replaces the path of `uri` with the normalised `path`, keeping its query, scheme and
/// authority.
fn set_path(uri: &mut Uri, path: String) {
    let mut target = path;
    if let Some(q) = uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let Ok(pq) = PathAndQuery::try_from(target) else {
        return;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

/// `/v2/users?x=1` without its first segment: `/users?x=1` (path versioning).
fn strip_first_segment(target: &PathAndQuery) -> PathAndQuery {
    let path = target.path();
    let rest = path[1..].find('/').map_or("/", |i| &path[i + 1..]);
    let text = match target.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    PathAndQuery::try_from(text).unwrap_or_else(|_| target.clone())
}

/// The route captures a transform's templates read; empty (no allocation) otherwise.
fn transform_captures(
    route: &Route,
    params: &matchit::Params<'_, '_>,
) -> Vec<(Box<str>, Box<str>)> {
    match &route.policies.transform {
        Some(t) if t.needs_captures() => params.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        _ if route.policies.aggregate.is_some() => {
            params.iter().map(|(k, v)| (k.into(), v.into())).collect()
        }
        _ => Vec::new(),
    }
}

/// RFC 7239 `Forwarded: for=...;host=...;proto=http` (or `https`).
fn forwarded_value(peer: IpAddr, host: Option<&HeaderValue>, https: bool) -> Option<HeaderValue> {
    let mut v = match peer {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    };
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        v.push_str(";host=\"");
        // The Host comes from the client: escape `"` and `\` (RFC 9110 quoted-pair) so it cannot
        // close the quoted-string and append parameters of its own (`for=` spoofing).
        for c in h.chars() {
            if c == '"' || c == '\\' {
                v.push('\\');
            }
            v.push(c);
        }
        v.push('"');
    }
    v.push_str(if https { ";proto=https" } else { ";proto=http" });
    HeaderValue::from_str(&v).ok()
}

/// The upstream path and query for `route`. Reuses the client's bytes when nothing changes.
#[cfg(test)]
fn rewrite_path(
    route: &Route,
    uri: &Uri,
    matched_len: usize,
    params: &matchit::Params<'_, '_>,
) -> PathAndQuery {
    let rewritten = rewrite_target_path(route, uri.path(), matched_len, params);
    upstream_path_and_query(rewritten, uri)
}

/// The rewritten path (no query), or `None` when the route does not rewrite.
fn rewrite_target_path(
    route: &Route,
    path: &str,
    matched_len: usize,
    params: &matchit::Params<'_, '_>,
) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(path.len() + 32);
    match &route.rewrite {
        Rewrite::None => return None,
        Rewrite::StripPrefix(prefix) => {
            let rest = if prefix == "/" {
                path
            } else {
                match path.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                    _ => path,
                }
            };
            if !rest.starts_with('/') {
                out.put_u8(b'/');
            }
            out.put_slice(rest.as_bytes());
        }
        Rewrite::ReplacePrefix(replacement) => {
            let rest = &path[matched_len.min(path.len())..];
            let base = if replacement == "/" && rest.starts_with('/') {
                ""
            } else {
                replacement.as_str()
            };
            out.put_slice(base.as_bytes());
            if rest.is_empty() && base.is_empty() {
                out.put_u8(b'/');
            }
            out.put_slice(rest.as_bytes());
        }
        Rewrite::Template(parts) => {
            for part in parts {
                match part {
                    TemplatePart::Literal(s) => out.put_slice(s.as_bytes()),
                    TemplatePart::Capture(name) => {
                        out.put_slice(params.get(name).unwrap_or("").as_bytes())
                    }
                }
            }
        }
    }
    Some(out)
}

/// The upstream request target: the rewritten path (if any) with the request's current query.
/// Reuses the client's bytes when nothing was rewritten.
fn upstream_path_and_query(rewritten: Option<BytesMut>, uri: &Uri) -> PathAndQuery {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(mut out) = rewritten else {
        return original;
    };
    if let Some(q) = original.query() {
        out.put_u8(b'?');
        out.put_slice(q.as_bytes());
    }
    PathAndQuery::from_maybe_shared(out.freeze()).unwrap_or(original)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PathSpec;
    use std::time::Duration;

    fn route(rewrite: Rewrite) -> Route {
        Route {
            name: "r".into(),
            service: 0,
            path: PathSpec::Prefix("/api".into()),
            rewrite,
            preserve_host: false,
            upgrades: Box::default(),
            escaped_slashes: crate::router::normalize::EscapedSlashes::Reject,
            https_redirect: false,
            max_body_bytes: 0,
            timeout: Duration::from_secs(1),
            policies: Default::default(),
            resilience: Default::default(),
            metrics: crate::telemetry::metrics::RouteMetrics::detached(),
        }
    }

    #[test]
    fn rewrites_keep_the_query() {
        let uri: Uri = "/api/users/7?x=1".parse().unwrap();
        let none = matchit::Params::new();
        let r = route(Rewrite::StripPrefix("/api".into()));
        assert_eq!(rewrite_path(&r, &uri, 4, &none).as_str(), "/users/7?x=1");
        let r = route(Rewrite::ReplacePrefix("/internal/v2".into()));
        assert_eq!(
            rewrite_path(&r, &uri, 4, &none).as_str(),
            "/internal/v2/users/7?x=1"
        );
        let uri_root: Uri = "/api".parse().unwrap();
        let r = route(Rewrite::StripPrefix("/api".into()));
        assert_eq!(rewrite_path(&r, &uri_root, 4, &none).as_str(), "/");
        let r = route(Rewrite::None);
        assert_eq!(
            rewrite_path(&r, &uri, 4, &none).as_str(),
            "/api/users/7?x=1"
        );
    }

    #[test]
    fn template_rewrite_uses_captures() {
        let mut router = matchit::Router::new();
        router.insert("/users/{id}", ()).unwrap();
        let m = router.at("/users/42").unwrap();
        let r = route(Rewrite::Template(vec![
            TemplatePart::Literal("/v2/people/".into()),
            TemplatePart::Capture("id".into()),
        ]));
        let uri: Uri = "/users/42?full=1".parse().unwrap();
        assert_eq!(
            rewrite_path(&r, &uri, 9, &m.params).as_str(),
            "/v2/people/42?full=1"
        );
    }

    #[test]
    fn dot_segments_are_detected_plain_and_encoded() {
        assert!(has_dot_segment("/a/../b"));
        assert!(has_dot_segment("/a/%2e%2E/b"));
        assert!(has_dot_segment("/a/."));
        assert!(!has_dot_segment("/a/..b/c.d"));
    }
}
