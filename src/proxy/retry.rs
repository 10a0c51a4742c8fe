//! Sending a request upstream with the route's resilience: target choice among targets in
//! rotation, per-try timeouts within the whole-request deadline, retries with exponential
//! backoff and full jitter on a different target, and a retry budget.
//!
//! Owns what happens between "the request is ready" and "a response head came back"; the
//! circuit breaker and the concurrency cap are checked by the caller before this starts (an open
//! breaker never gets here), and every attempt's outcome feeds outlier detection here.
//!
//! Without a `retry` policy (the default) a request takes the single-attempt path: the parts are
//! moved, nothing is cloned or buffered. With one, the headers are cloned per attempt and a
//! small body is buffered so it can be sent again; a body larger than `max_buffered_body`, or
//! of unknown length, is streamed once and never retried (it cannot be replayed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};

use super::client::{self, Sent};
use crate::body::{BodyCompletion, RequestBody};
use crate::error::Failure;
use crate::error::GatewayError;
use crate::telemetry::access_log::Finish;
use crate::telemetry::trace::{Called, ClientSpan, Trace};
use crate::upstream::breaker::Permit;
use crate::upstream::outlier::{self, Outcome};
use crate::upstream::resilience::{idempotent, RetryPolicy};
use crate::upstream::window::now_ns;
use crate::upstream::{InFlight, Protocol, Service, Target};

/// What a request needs besides its parts and body.
pub(crate) struct Forward<'a> {
    pub service: &'a Service,
    pub how: How<'a>,
    pub client_ip: IpAddr,
    pub client_host: Option<HeaderValue>,
    pub new_path: PathAndQuery,
    /// Each attempt gets its own span id in the request's trace.
    pub trace: &'a Trace,
    /// The aggregate call this exchange is (for its spans), if it is one.
    pub call: Option<&'a str>,
}

/// The settings an exchange follows: a proxied route's, or an aggregate call's (which has no
/// route of its own but follows its service's retries, so both share this loop).
#[derive(Clone, Copy)]
pub(crate) struct How<'a> {
    /// For logs.
    pub name: &'a str,
    /// Retries, if any.
    pub retry: Option<&'a RetryPolicy>,
    /// The whole exchange's deadline (every try included).
    pub timeout: Duration,
    /// Send the client's Host instead of the target's.
    pub preserve_host: bool,
    /// Header carrying the time left upstream.
    pub deadline_header: Option<&'a HeaderName>,
    /// Largest request body buffered for a retry.
    pub max_body_bytes: u64,
    /// The answer's head may be kept as its own bytes (see [`client::Attempt`]).
    pub keep_raw_head: bool,
}

/// A response head from a target.
pub(crate) struct Answer {
    pub sent: Sent,
    pub in_flight: InFlight,
}

/// How an attempt ended, for outlier detection and the breaker (`None`: the client's fault).
pub(super) fn outcome(result: &Result<Sent, GatewayError>) -> Option<Outcome> {
    match result {
        Ok(sent) if sent.response.status().is_server_error() => Some(Outcome::ServerError),
        Ok(_) => Some(Outcome::Success),
        Err(e) => match e.kind().retryable {
            Some(Failure::Connect) => Some(Outcome::ConnectFailure),
            Some(Failure::Timeout | Failure::Reset) => Some(Outcome::GatewayFailure),
            None => None,
        },
    }
}

/// Reports an exchange's result to the breaker that admitted it. A failure of the client's own
/// making (its body) says nothing about the upstream: the permit is dropped unrecorded.
pub(crate) fn settle(permit: Permit, result: &Result<Answer, GatewayError>) {
    let failed = match result {
        Ok(answer) => Some(answer.sent.response.status().is_server_error()),
        Err(e) => (e.kind().side == crate::error::Side::Upstream).then_some(true),
    };
    if let Some(failed) = failed {
        permit.record(failed, now_ns());
    }
}

/// Points the request at `target`: the Host (the target's, or the client's with
/// `preserve_host`), the URI form and the version of the target's protocol.
pub(crate) fn prepare(
    parts: &mut Parts,
    target: &Target,
    preserve_host: bool,
    client_host: Option<&HeaderValue>,
    new_path: &PathAndQuery,
) -> Result<(), GatewayError> {
    let h = &mut parts.headers;
    if target.protocol != Protocol::H2c {
        // `te: trailers` (kept for gRPC) is hop-by-hop in HTTP/1.1.
        super::headers::remove_present(h, &header::TE);
    }
    if preserve_host {
        if let Some(v) = client_host {
            h.insert(header::HOST, v.clone());
        }
    } else {
        h.insert(header::HOST, target.authority.clone());
    }
    parts.uri = match target.protocol {
        Protocol::Http1 => Uri::from(new_path.clone()),
        Protocol::H2c => {
            // HTTP/2 names the host in `:authority`; a Host header that differs from it makes the
            // request malformed (RFC 9113 section 8.3.1). So the Host chosen above (the target's,
            // or the client's with `preserve_host`) moves into the authority.
            let host = parts.headers.remove(header::HOST);
            let host = host.as_ref().unwrap_or(&target.authority);
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if target.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            uri.authority =
                Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes())).ok();
            uri.path_and_query = Some(new_path.clone());
            Uri::from_parts(uri).map_err(|_| GatewayError::BadRequest("invalid request target"))?
        }
    };
    parts.version = match target.protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2c => Version::HTTP_2,
    };
    Ok(())
}

fn record(service: &Service, index: usize, outcome: Option<Outcome>) {
    if let (Some(cfg), Some(outcome)) = (&service.outlier, outcome) {
        outlier::record(
            cfg,
            &service.name,
            &service.targets,
            index,
            outcome,
            now_ns(),
        );
    }
}

fn no_healthy(service: &Service) -> GatewayError {
    GatewayError::NoHealthyUpstream(Arc::clone(&service.name))
}

/// Sends the request, retrying as the route's policy allows.
pub(crate) async fn forward(
    f: &Forward<'_>,
    mut parts: Parts,
    body: RequestBody,
    draft: Option<&mut Finish>,
) -> Result<Answer, GatewayError> {
    use hyper::body::Body as _;
    let (service, route) = (f.service, f.how);
    let policy = route.retry.filter(|p| {
        p.attempts > 1
            && (idempotent(&parts.method) || p.retry_non_idempotent || p.on_connect_failure)
            && body
                .size_hint()
                .exact()
                .is_some_and(|len| len <= p.max_buffered_body)
    });
    let Some(policy) = policy else {
        // The single-attempt path: nothing cloned, the body streams.
        let index = service
            .pick(&parts.headers, f.client_ip, None)
            .ok_or_else(|| no_healthy(service))?;
        let target = &service.targets[index];
        prepare(
            &mut parts,
            target,
            route.preserve_host,
            f.client_host.as_ref(),
            &f.new_path,
        )?;
        if let Some(name) = route.deadline_header {
            parts.headers.insert(name.clone(), millis(route.timeout));
        }
        let span_id = f.trace.stamp(&mut parts.headers);
        let span = ClientSpan::start(f.trace, span_id, &parts.method, 1, f.call);
        let completion = body.completion();
        let req = Request::from_parts(parts, body);
        let in_flight = InFlight::start(target);
        let attempt = client::Attempt {
            timeout: route.timeout,
            started: Instant::now(),
            keep_raw_head: route.keep_raw_head,
        };
        let mut result = client::send(service, target, req, attempt).await;
        blame_client_if_unfinished(&mut result, completion.as_ref(), route.timeout);
        let took = attempt.started.elapsed();
        end_span(span, target, &f.new_path, &result);
        record(service, index, outcome(&result));
        service.metrics.upstream_duration.observe(took);
        if let Some(d) = draft {
            d.target = Some(Arc::clone(&target.url));
            d.upstream_duration = Some(took);
        }
        return result.map(|sent| Answer { sent, in_flight });
    };
    // Boxed: the retry loop's state (buffered body, backoff timer) would otherwise make every
    // request's future larger, and each await of a future copies its whole state.
    Box::pin(forward_retrying(f, policy, parts, body, draft)).await
}

/// The retry loop: a buffered body, one attempt per target pick, backoff between attempts.
async fn forward_retrying(
    f: &Forward<'_>,
    policy: &RetryPolicy,
    parts: Parts,
    body: RequestBody,
    mut draft: Option<&mut Finish>,
) -> Result<Answer, GatewayError> {
    use hyper::body::Body as _;
    let (service, route) = (f.service, f.how);
    // Most retried requests (GET) have no body: nothing to read.
    let body = if body.is_end_stream() {
        Bytes::new()
    } else {
        crate::body::read_whole(body, route.max_body_bytes).await?
    };
    let replay_ok = idempotent(&parts.method);
    let started = tokio::time::Instant::now();
    let deadline = started + route.timeout;
    policy.budget.deposit(now_ns());
    let mut next = None;
    let mut tries = 0;
    loop {
        tries += 1;
        let index = match next.take() {
            Some(index) => index,
            None => service
                .pick(&parts.headers, f.client_ip, None)
                .ok_or_else(|| no_healthy(service))?,
        };
        let target = &service.targets[index];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let try_timeout = policy.per_try_timeout.map_or(left, |t| t.min(left));
        let (result, in_flight, took) =
            attempt(f, &parts, &body, index, tries, try_timeout).await?;
        if let Some(d) = draft.as_deref_mut() {
            d.target = Some(Arc::clone(&target.url));
            d.upstream_duration = Some(took);
            d.retries = tries - 1;
        }
        if tries < policy.attempts
            && policy.retryable(
                result.as_ref().map(|sent| sent.response.status()),
                replay_ok,
            )
        {
            let pause = policy.backoff(tries);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Chosen before giving up this answer: with no target left in rotation (`fail`
            // mode) the client gets the upstream's own answer, not a 503 of ours.
            let other = service.pick(&parts.headers, f.client_ip, Some(index));
            if pause < left && other.is_some() && policy.spend(&service.metrics) {
                tracing::debug!(
                    route = route.name,
                    target_url = %target.url,
                    attempt = tries,
                    "retrying"
                );
                drop(result);
                drop(in_flight);
                tokio::time::sleep(pause).await;
                next = other;
                continue;
            }
        }
        return match result {
            // The whole-request deadline, not the per-try bound, ended the last try.
            Err(GatewayError::UpstreamTimeout(_)) if tokio::time::Instant::now() >= deadline => {
                Err(GatewayError::UpstreamTimeout(route.timeout))
            }
            other => other.map(|sent| Answer { sent, in_flight }),
        };
    }
}

/// One attempt of a retried request at target `index`, with a copy of the buffered body: its
/// result, its in-flight count and how long the upstream took.
async fn attempt(
    f: &Forward<'_>,
    parts: &Parts,
    body: &Bytes,
    index: usize,
    tries: u32,
    try_timeout: Duration,
) -> Result<(Result<Sent, GatewayError>, InFlight, Duration), GatewayError> {
    let (service, route) = (f.service, f.how);
    let target = &service.targets[index];
    let mut req = Request::new(RequestBody::full(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    let (mut p, b) = req.into_parts();
    prepare(
        &mut p,
        target,
        route.preserve_host,
        f.client_host.as_ref(),
        &f.new_path,
    )?;
    if let Some(name) = route.deadline_header {
        p.headers.insert(name.clone(), millis(try_timeout));
    }
    let span_id = f.trace.stamp(&mut p.headers);
    let span = ClientSpan::start(f.trace, span_id, &p.method, tries, f.call);
    let req = Request::from_parts(p, b);
    let in_flight = InFlight::start(target);
    let attempt = client::Attempt {
        timeout: try_timeout,
        started: Instant::now(),
        keep_raw_head: route.keep_raw_head,
    };
    let result = client::send(service, target, req, attempt).await;
    let took = attempt.started.elapsed();
    end_span(span, target, &f.new_path, &result);
    record(service, index, outcome(&result));
    service.metrics.upstream_duration.observe(took);
    Ok((result, in_flight, took))
}

/// Ends an attempt's client span (recorded requests only) with its status or error code.
pub(crate) fn end_span(
    span: Option<ClientSpan>,
    target: &Target,
    path: &PathAndQuery,
    result: &Result<Sent, GatewayError>,
) {
    if let Some(span) = span {
        let outcome = match result {
            Ok(sent) => Ok(sent.response.status().as_u16()),
            Err(e) => Err(e.kind().code),
        };
        let called = Called {
            url: &target.url,
            authority: target.authority.as_bytes(),
            path: path.as_str(),
        };
        span.end(Some(called), outcome);
    }
}

fn millis(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_millis() as u64)
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
