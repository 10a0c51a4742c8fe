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
use http::{Method, Request, Response, StatusCode, Uri, Version};

use super::body::{GatewayBody, RequestBody};
use super::client::{self, Sent};
use crate::config::plan::Route;
use crate::error::Failure;
use crate::error::GatewayError;
use crate::telemetry::access_log::Finish;
use crate::telemetry::trace::{Called, ClientSpan, Trace};
use crate::upstream::breaker::{CircuitBreaker, Permit};
use crate::upstream::config::{RawFallback, RawRetry, RawRetryOn};
use crate::upstream::outlier::{self, Outcome};
use crate::upstream::window::{now_ns, Window};
use crate::upstream::{InFlight, Protocol, Service, Target};

/// A route's resilience settings, compiled.
#[derive(Debug, Default)]
pub struct RouteResilience {
    /// Retries (the route's own, else its service's).
    pub retry: Option<Arc<RetryPolicy>>,
    /// The route's own breaker (else the service's applies).
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Served instead of 503 `circuit_open`.
    pub fallback: Option<Fallback>,
    /// Header carrying the time left for the attempt upstream, in milliseconds.
    pub deadline_header: Option<HeaderName>,
}

/// A static response.
#[derive(Debug, Clone)]
pub struct Fallback {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Fallback {
    /// From the YAML (validated).
    pub fn compile(raw: &RawFallback) -> Self {
        Self {
            status: StatusCode::from_u16(raw.status).unwrap_or(StatusCode::OK),
            headers: raw
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            body: Bytes::from(raw.body.clone()),
        }
    }

    /// The response.
    pub fn response(&self) -> Response<GatewayBody> {
        let mut resp = Response::new(GatewayBody::full(self.body.clone()));
        *resp.status_mut() = self.status;
        for (k, v) in &self.headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        resp
    }
}

/// A compiled `retry` block, with its budget (shared by every route using the block).
#[derive(Debug)]
pub struct RetryPolicy {
    attempts: u32,
    per_try_timeout: Option<Duration>,
    on_connect_failure: bool,
    on_reset: bool,
    on_timeout: bool,
    statuses: Vec<u16>,
    retry_non_idempotent: bool,
    backoff_base: Duration,
    backoff_max: Duration,
    max_buffered_body: u64,
    budget: RetryBudget,
}

/// Linkerd-style budget: within the window, retries may number `percent` of the requests plus
/// `min_per_second` × the window's seconds.
#[derive(Debug)]
struct RetryBudget {
    percent: u64,
    reserve: u64,
    /// (requests, retries).
    window: Window,
}

impl RetryBudget {
    fn deposit(&self, now: u64) {
        self.window.add(now, 1, 0);
    }

    fn withdraw(&self, now: u64) -> bool {
        let (requests, retries) = self.window.sums(now);
        if retries < requests * self.percent / 100 + self.reserve {
            self.window.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}

impl RetryPolicy {
    /// From the YAML (validated).
    pub fn compile(raw: &RawRetry) -> Self {
        let has = |c: &str| {
            raw.retry_on
                .iter()
                .any(|o| matches!(o, RawRetryOn::Condition(x) if x == c))
        };
        let window = raw.budget.window.0;
        Self {
            attempts: raw.attempts.max(1),
            per_try_timeout: raw.per_try_timeout.map(|d| d.0),
            on_connect_failure: has("connect_failure"),
            on_reset: has("reset"),
            on_timeout: has("timeout"),
            statuses: raw
                .retry_on
                .iter()
                .filter_map(|o| match o {
                    RawRetryOn::Status(s) => Some(*s),
                    RawRetryOn::Condition(_) => None,
                })
                .collect(),
            retry_non_idempotent: raw.retry_non_idempotent,
            backoff_base: raw.backoff_base.0,
            backoff_max: raw.backoff_max.0,
            max_buffered_body: raw.max_buffered_body.0,
            budget: RetryBudget {
                percent: u64::from(raw.budget.percent),
                reserve: u64::from(raw.budget.min_per_second) * window.as_secs().max(1),
                window: Window::new(window),
            },
        }
    }

    /// Whether `result` may be tried again (conditions and method; not the budget).
    fn retryable(&self, result: &Result<Sent, GatewayError>, idempotent: bool) -> bool {
        let replay_ok = idempotent || self.retry_non_idempotent;
        match result {
            Ok(sent) => replay_ok && self.statuses.contains(&sent.response.status().as_u16()),
            Err(e) => match e.kind().retryable {
                // Nothing reached the upstream: safe for any method.
                Some(Failure::Connect) => self.on_connect_failure,
                Some(Failure::Timeout) => replay_ok && self.on_timeout,
                Some(Failure::Reset) => replay_ok && self.on_reset,
                None => false,
            },
        }
    }

    /// Full jitter: a random delay up to `min(max, base × 2^(retry-1))`.
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << (retry - 1).min(16))
            .min(self.backoff_max);
        Duration::from_nanos(fastrand::u64(..=ceiling.as_nanos() as u64))
    }
}

/// RFC 9110 idempotent methods.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

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
}

impl<'a> How<'a> {
    /// A route's settings.
    pub fn route(route: &'a Route) -> Self {
        Self {
            name: &route.name,
            retry: route.resilience.retry.as_deref(),
            timeout: route.timeout,
            preserve_host: route.preserve_host,
            deadline_header: route.resilience.deadline_header.as_ref(),
            max_body_bytes: route.max_body_bytes,
        }
    }
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
        h.remove(header::TE);
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
        let sent_at = Instant::now();
        let mut result = client::send(service, target, req, route.timeout).await;
        super::body::blame_client_if_unfinished(&mut result, completion.as_ref(), route.timeout);
        let took = sent_at.elapsed();
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
        super::body::read_whole(body, route.max_body_bytes).await?
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
        let sent_at = Instant::now();
        let result = client::send(service, target, req, try_timeout).await;
        let took = sent_at.elapsed();
        end_span(span, target, &f.new_path, &result);
        record(service, index, outcome(&result));
        service.metrics.upstream_duration.observe(took);
        if let Some(d) = draft.as_deref_mut() {
            d.target = Some(Arc::clone(&target.url));
            d.upstream_duration = Some(took);
            d.retries = tries - 1;
        }
        if tries < policy.attempts && policy.retryable(&result, replay_ok) {
            let pause = policy.backoff(tries);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Chosen before giving up this answer: with no target left in rotation (`fail`
            // mode) the client gets the upstream's own answer, not a 503 of ours.
            let other = service.pick(&parts.headers, f.client_ip, Some(index));
            let budget = || {
                let granted = policy.budget.withdraw(now_ns());
                if granted {
                    service.metrics.retries.inc();
                } else {
                    service.metrics.retry_budget_exhausted.inc();
                }
                granted
            };
            if pause < left && other.is_some() && budget() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, min_per_second: u32) -> RetryPolicy {
        let raw: RawRetry = serde_yaml_ng::from_str(&format!(
            "{{budget: {{percent: {percent}, min_per_second: {min_per_second}, window: 1s}}}}"
        ))
        .unwrap();
        RetryPolicy::compile(&raw)
    }

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_reserve() {
        let p = policy(20, 2);
        let now = 1;
        for _ in 0..10 {
            p.budget.deposit(now);
        }
        // 20 % of 10 requests, plus 2 per second over a 1 s window.
        let allowed = (0..10).filter(|_| p.budget.withdraw(now)).count();
        assert_eq!(allowed, 4);
    }

    #[test]
    fn backoff_is_bounded_by_the_doubling_ceiling_and_the_max() {
        let p = policy(20, 2);
        for _ in 0..100 {
            assert!(p.backoff(1) <= Duration::from_millis(25));
            assert!(p.backoff(2) <= Duration::from_millis(50));
            assert!(p.backoff(9) <= Duration::from_millis(250));
        }
    }

    #[test]
    fn post_is_retried_only_after_a_connect_failure_unless_allowed() {
        let p = policy(20, 2);
        let connect = Err(GatewayError::UpstreamConnect("refused".into()));
        let reset = Err(GatewayError::UpstreamProtocol("reset".into()));
        assert!(p.retryable(&connect, false));
        assert!(!p.retryable(&reset, false));
        assert!(p.retryable(&reset, true));
    }
}
