//! Resilience settings of routes and services, compiled: retries with their budget, the
//! fallback answer for an open breaker, deadline propagation. The forwarding that applies them
//! is `proxy::retry`'s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::breaker::CircuitBreaker;
use super::config::{RawFallback, RawRetry, RawRetryOn};
use super::window::Window;
use crate::error::{Failure, GatewayError};

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

    /// The response, in the listener's body type.
    pub fn response<B: From<Bytes>>(&self) -> Response<B> {
        let mut resp = Response::new(B::from(self.body.clone()));
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
    pub(crate) attempts: u32,
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) on_connect_failure: bool,
    pub(crate) on_reset: bool,
    pub(crate) on_timeout: bool,
    pub(crate) statuses: Vec<u16>,
    pub(crate) retry_non_idempotent: bool,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_buffered_body: u64,
    pub(crate) budget: RetryBudget,
}

/// Linkerd-style budget: within the window, retries may number `percent` of the requests plus
/// `min_per_second` × the window's seconds.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: u64,
    reserve: u64,
    /// (requests, retries).
    window: Window,
}

impl RetryBudget {
    pub(crate) fn deposit(&self, now: u64) {
        self.window.add(now, 1, 0);
    }

    pub(crate) fn withdraw(&self, now: u64) -> bool {
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
    pub fn retryable(&self, result: Result<StatusCode, &GatewayError>, idempotent: bool) -> bool {
        let replay_ok = idempotent || self.retry_non_idempotent;
        match result {
            Ok(status) => replay_ok && self.statuses.contains(&status.as_u16()),
            Err(e) => match e.kind().retryable {
                // Nothing reached the upstream: safe for any method.
                Some(Failure::Connect) => self.on_connect_failure,
                Some(Failure::Timeout) => replay_ok && self.on_timeout,
                Some(Failure::Reset) => replay_ok && self.on_reset,
                None => false,
            },
        }
    }

    /// Takes a retry from the budget, counting it (or its refusal) on the service's series.
    pub fn spend(&self, metrics: &crate::telemetry::metrics::ServiceMetrics) -> bool {
        let granted = self.budget.withdraw(super::window::now_ns());
        if granted {
            metrics.retries.inc();
        } else {
            metrics.retry_budget_exhausted.inc();
        }
        granted
    }

    /// Full jitter: a random delay up to `min(max, base × 2^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << (retry - 1).min(16))
            .min(self.backoff_max);
        Duration::from_nanos(fastrand::u64(..=ceiling.as_nanos() as u64))
    }
}

/// RFC 9110 idempotent methods.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
        let connect = GatewayError::UpstreamConnect("refused".into());
        let reset = GatewayError::UpstreamProtocol("reset".into());
        assert!(p.retryable(Err(&connect), false));
        assert!(!p.retryable(Err(&reset), false));
        assert!(p.retryable(Err(&reset), true));
    }
}
