//! [`RequestCtx`]: the facts of one request, worked out once and carried through every phase.
//!
//! What the phases learn (route, consumer, rate-limit outcome, cache entry) and what they leave
//! for later (response headers to add, the access-log record, the span) live here, so no phase
//! recomputes a fact (the client IP once, not four times) and no fact travels as an ad-hoc
//! bundle of arguments.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::body::ClientBody;
use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Version};

use super::conn::ConnCtx;
use crate::config::Plan;
use crate::policy::auth::Identity;
use crate::policy::rate_limit::Admitted;
use crate::policy::transform::RenderedHeaders;
use crate::policy::{cache, transform};
use crate::proxy::{grpc, headers};
use crate::runtime::Active;
use crate::telemetry::access_log::{Finish, RequestText};
use crate::telemetry::trace::{ServerSpan, Trace};
use crate::upstream::breaker::{ConcurrencyGuard, Permit};
use crate::upstream::Service;

/// One request's facts, from its arrival to the end of its response body.
pub(crate) struct RequestCtx<'a> {
    /// The client connection.
    pub conn: &'a ConnCtx,
    /// The config serving this request (one load per request).
    pub plan: &'a Plan,
    /// The client's `x-request-id` when valid, else a new one.
    pub request_id: HeaderValue,
    /// When the request arrived.
    pub start: Instant,
    /// The request method (kept for metrics after the request is gone).
    pub method: Method,
    /// The client's HTTP version.
    pub version: Version,
    /// An HTTP/2 gRPC call: errors are answered trailers-only.
    pub grpc: bool,
    /// The client IP after `trusted_proxies`.
    pub client_ip: IpAddr,
    /// `Content-Length` of the request (0 without one).
    pub request_bytes: u64,
    /// The request target, kept for a recent-errors entry (metrics on).
    pub target: Option<PathAndQuery>,
    /// The W3C trace: upstream calls stamp `traceparent` from it.
    pub trace: Trace,
    /// The server span, for recorded requests.
    pub span: Option<Box<ServerSpan>>,
    /// The access-log record, when the log is on.
    pub log: Option<Box<Finish>>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The service the request goes to (the route's, or the one `split`/`versioning` chose).
    pub service: Option<&'a Arc<Service>>,
    /// The authenticated consumer, on routes with `auth`.
    pub identity: Option<Identity>,
    /// What the rate limit admitted: response headers and a concurrency slot.
    pub admitted: Option<Admitted>,
    /// A cache miss waiting for the upstream's answer (or a stale entry to serve).
    pub cache: Option<cache::Fill>,
    /// The breaker's permit for this request's exchange.
    pub permit: Option<Permit>,
    /// The request's place under its service's `max_concurrent_requests`.
    pub service_slot: Option<ConcurrencyGuard>,
    /// What the upstream's response body owes its exchange when it ends, ended with the
    /// request's own end work in `finish` (one guard, one allocation, per proxied request).
    pub exchange: Option<crate::proxy::exchange::Exchange>,
    /// The route's path rewrite, worked out while the route's captures were at hand; the
    /// query is attached after authentication (which may remove an API key from it).
    pub rewritten: Option<BytesMut>,
    /// The upstream path and query (rewritten, transformed).
    pub upstream_target: Option<PathAndQuery>,
    /// The route's path captures, when a transform or aggregate reads them.
    pub captures: Vec<(Box<str>, Box<str>)>,
    /// The authority the client addressed, as forwarded.
    pub client_host: Option<HeaderValue>,
    /// The client's side of an allowed protocol upgrade.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Response work decided on the way in: the CORS origin to allow.
    pub cors_origin: Option<Option<HeaderValue>>,
    /// Response headers of the chosen API version.
    pub version_headers: &'a [(HeaderName, HeaderValue)],
    /// Response headers rendered by a transform from request facts.
    pub response_headers: Option<RenderedHeaders>,
    /// The OpenAPI operation the request is (routes with an `openapi` policy).
    pub operation: Option<crate::policy::openapi::OperationRef>,
    /// The request's context in the route's wasm filter (ended with the request).
    #[cfg(feature = "wasm")]
    pub plugin: Option<crate::policy::wasm::stream::Stream>,
}

impl<'a> RequestCtx<'a> {
    /// The facts known on arrival, before any check.
    pub fn new(conn: &'a ConnCtx, active: &'a Active, req: &Request<ClientBody>) -> Self {
        let start = Instant::now();
        let plan = &active.plan;
        let request_id = match headers::first(req.headers(), &headers::X_REQUEST_ID) {
            Some(v) if headers::valid_request_id(v) => v.clone(),
            _ => headers::new_request_id(),
        };
        let client_ip = headers::client_ip(conn.peer.ip(), req.headers(), &plan.trusted_proxies);
        // Always: the upstream gets a `traceparent` whether or not spans are exported.
        let trace = Trace::start(req.headers(), active.tracer.as_ref());
        // Looked up only for a span or a log line.
        let host = || request_host(req).unwrap_or("");
        let span = if trace.recording() {
            ServerSpan::start(&trace, req.method(), req.uri().path(), host(), client_ip)
        } else {
            None
        };
        let request_bytes = content_length(req).unwrap_or(0);
        let log = active.access_log.as_ref().map(|logger| {
            let text = RequestText::new(
                request_id.as_bytes(),
                host().as_bytes(),
                req.uri()
                    .path_and_query()
                    .map_or(req.uri().path(), |pq| pq.as_str()),
                headers::first(req.headers(), &header::USER_AGENT).map(|v| v.as_bytes()),
            );
            let ids = (&trace.trace_id, &trace.span_id);
            let mut log = Finish::new(Arc::clone(logger), start, text, client_ip, ids);
            log.method = req.method().clone();
            log.request_bytes = request_bytes;
            log
        });
        let version = req.version();
        Self {
            conn,
            plan,
            request_id,
            start,
            method: req.method().clone(),
            version,
            // Only HTTP/2 requests can be gRPC calls: HTTP/1.1 traffic skips the header lookup.
            grpc: version == Version::HTTP_2 && grpc::is_grpc(req.headers()),
            client_ip,
            request_bytes,
            target: plan
                .metrics_enabled
                .then(|| req.uri().path_and_query().cloned())
                .flatten(),
            trace,
            span,
            log,
            route: None,
            service: None,
            identity: None,
            admitted: None,
            cache: None,
            permit: None,
            service_slot: None,
            exchange: None,
            rewritten: None,
            upstream_target: None,
            captures: Vec::new(),
            client_host: None,
            upgrade: None,
            cors_origin: None,
            version_headers: &[],
            response_headers: None,
            operation: None,
            #[cfg(feature = "wasm")]
            plugin: None,
        }
    }

    /// Names the service the request goes to in its log record and span.
    pub fn set_service(&mut self, service: &'a Arc<Service>) {
        self.service = Some(service);
        if let Some(log) = self.log.as_deref_mut() {
            log.service = Some(Arc::clone(&service.name));
        }
        if let Some(span) = self.span.as_deref_mut() {
            span.service = Some(Arc::clone(&service.name));
        }
    }

    /// The facts a transform's templates read.
    pub fn facts<'s>(&'s self, query: Option<&'s str>) -> transform::Facts<'s> {
        transform::Facts {
            captures: &self.captures,
            query,
            client_ip: self.client_ip,
            request_id: &self.request_id,
            identity: self.identity.as_ref(),
        }
    }
}

/// `Content-Length` when present and valid (digits only, as both engines' parsers read it).
fn content_length<B>(req: &Request<B>) -> Option<u64> {
    let value = headers::first(req.headers(), &header::CONTENT_LENGTH)?;
    crate::body::framing::decimal(value.as_bytes().trim_ascii())
}

/// The host the client addressed: the URI authority (HTTP/2, absolute-form) or `Host`.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().host() {
        Some(h) => Some(h),
        None => headers::first(req.headers(), &header::HOST)?.to_str().ok(),
    }
}
