//! YAML for the resilience features of services and routes: `health_check`,
//! `outlier_detection`, `circuit_breaker`, `retry`, `fallback`, and their checks.
//!
//! Kept out of `config/raw.rs` so that file only gains the fields that point here; the checks run
//! from `config/validate.rs` and report at the key paths the user wrote.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::{ByteSize, Dur};
use crate::spec::ConfigError;

/// An active HTTP health check, run against every target of the service.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Request method.
    #[serde(default = "default_hc_method")]
    pub method: String,
    /// Request path (and query), e.g. `/healthz`.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Statuses that count as healthy: numbers (`204`) or ranges (`"200-399"`).
    #[serde(default = "default_expected")]
    pub expected_statuses: Vec<RawStatusRange>,
    /// When set, a healthy response body (its first 64 KiB) must contain this text.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Time between the end of one probe and the start of the next.
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    /// Longest a probe may take (connect, response and body); slower counts as a failure.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    /// Passing probes in a row that bring an unhealthy target back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failing probes in a row that take a healthy target out of rotation.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Up to this much random delay is added to each interval (and before the first probe), so a
    /// fleet of gateways does not probe in lock step. Default: a tenth of `interval`.
    #[serde(default)]
    pub jitter: Option<Dur>,
    /// Probe with the gRPC health protocol (`grpc.health.v1.Health/Check`) for this service
    /// name (`""`: the server as a whole) instead of an HTTP request: healthy means
    /// `grpc-status: 0` and `SERVING`. The targets must speak HTTP/2 (`h2c://`, or `https://`
    /// with `tls: {http2: true}`); `method`, `path`, `expected_statuses` and `body_contains`
    /// are then unused.
    #[serde(default)]
    pub grpc_service: Option<String>,
}

fn default_hc_method() -> String {
    "GET".into()
}
fn default_hc_path() -> String {
    "/".into()
}
fn default_expected() -> Vec<RawStatusRange> {
    vec![RawStatusRange::Range("200-399".into())]
}
fn default_hc_interval() -> Dur {
    Dur::from_secs(10)
}
fn default_hc_timeout() -> Dur {
    Dur::from_secs(2)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// One status (`204`) or an inclusive range (`"200-399"`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawStatusRange {
    /// A single status.
    One(u16),
    /// `"LOW-HIGH"`, inclusive, or a single status as text.
    Range(String),
}

impl RawStatusRange {
    /// The inclusive range, or `None` when malformed.
    pub fn bounds(&self) -> Option<(u16, u16)> {
        let (lo, hi) = match self {
            RawStatusRange::One(s) => (*s, *s),
            RawStatusRange::Range(text) => match text.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let s = text.trim().parse().ok()?;
                    (s, s)
                }
            },
        };
        ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
    }
}

/// What to do when no target of a service is in rotation (all failed their health checks or are
/// ejected).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllUnhealthy {
    /// Send to every target as if all were healthy (Envoy's panic mode): a broken health check
    /// then cannot take a working service down.
    #[default]
    Panic,
    /// Answer 503 `no_healthy_upstream` without contacting any target.
    Fail,
}

/// Passive health: eject a target that fails real requests.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Eject after this many 5xx answers or gateway failures (connect error, timeout, reset) in a
    /// row. 0 disables.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Eject after this many failed connection attempts in a row. 0 disables.
    #[serde(default = "default_consecutive_connect")]
    pub consecutive_connect_failures: u32,
    /// Eject when the share of failures over a window reaches a threshold.
    #[serde(default)]
    pub error_rate: Option<RawErrorRate>,
    /// First ejection length; the n-th ejection in a row lasts n times this.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    /// Longest ejection.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// At most this share of the targets is ejected at once (at least one may always be).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_consecutive_connect() -> u32 {
    3
}
fn default_base_ejection() -> Dur {
    Dur::from_secs(30)
}
fn default_max_ejection() -> Dur {
    Dur::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// A failure-rate threshold over a sliding window.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawErrorRate {
    /// Failure share (percent, 1 to 100) that trips.
    pub percent: u32,
    /// Fewest requests in the window before the rate is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// The window.
    #[serde(default = "default_window")]
    pub window: Dur,
}

fn default_min_requests() -> u32 {
    20
}
fn default_window() -> Dur {
    Dur::from_secs(10)
}

/// A circuit breaker: stop calling a failing service for a while.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Open when the failure share over a window reaches a threshold.
    #[serde(default)]
    pub error_rate: Option<RawErrorRate>,
    /// Open after this many failed requests in a row. 0 disables.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// How long the breaker stays open before letting probe requests through.
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
    /// Requests admitted while half-open; all must succeed to close the breaker.
    #[serde(default = "default_half_open")]
    pub half_open_requests: u32,
}

fn default_open_for() -> Dur {
    Dur::from_secs(30)
}
fn default_half_open() -> u32 {
    3
}

/// Retries of failed upstream attempts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Tries in all, the first included (2 = one retry).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Bound on each try (within the route's whole-request timeout). Default: none.
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// What is retried: `connect_failure`, `reset`, `timeout`, and status codes.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RawRetryOn>,
    /// Also retry methods that are not idempotent (POST, PATCH) on any `retry_on` condition.
    /// Without it they are retried only after a connect failure (nothing was sent).
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// First backoff ceiling; each retry doubles it (full jitter: a random delay up to it).
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    /// Largest backoff ceiling.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
    /// Request bodies up to this size (with a known length) are buffered so they can be sent
    /// again; larger or chunked bodies are streamed and never retried.
    #[serde(default = "default_buffer")]
    pub max_buffered_body: ByteSize,
    /// Caps retries so they cannot multiply load in an outage.
    #[serde(default)]
    pub budget: RawRetryBudget,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RawRetryOn> {
    ["connect_failure", "reset", "timeout"]
        .into_iter()
        .map(|s| RawRetryOn::Condition(s.into()))
        .chain([502, 503, 504].into_iter().map(RawRetryOn::Status))
        .collect()
}
fn default_backoff_base() -> Dur {
    Dur(std::time::Duration::from_millis(25))
}
fn default_backoff_max() -> Dur {
    Dur(std::time::Duration::from_millis(250))
}
fn default_buffer() -> ByteSize {
    ByteSize(64 * 1024)
}

/// A `retry_on` entry.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawRetryOn {
    /// An upstream status.
    Status(u16),
    /// `connect_failure`, `reset` or `timeout`.
    Condition(String),
}

/// Retry budget: retries may add at most `percent` of the requests of the window, plus
/// `min_per_second`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetryBudget {
    /// Retries as a share of requests (percent).
    pub percent: u32,
    /// Retries always allowed per second, so a quiet service can still retry.
    pub min_per_second: u32,
    /// The window over which requests and retries are counted.
    pub window: Dur,
}

impl Default for RawRetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            min_per_second: 3,
            window: Dur::from_secs(10),
        }
    }
}

/// A static answer served instead of an error when the route's circuit breaker is open.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    /// Status.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    pub body: String,
}

fn default_fallback_status() -> u16 {
    200
}

/// Checks a service's resilience keys; `at` turns a field into its key path.
pub fn validate_service(
    hc: Option<&RawHealthCheck>,
    outlier: Option<&RawOutlierDetection>,
    breaker: Option<&RawCircuitBreaker>,
    max_concurrent: Option<usize>,
    retry: Option<&RawRetry>,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    if let Some(hc) = hc {
        validate_health_check(hc, &|f| at(&format!("health_check.{f}")), errs);
    }
    if let Some(o) = outlier {
        let at = |f: &str| at(&format!("outlier_detection.{f}"));
        if o.consecutive_5xx == 0 && o.consecutive_connect_failures == 0 && o.error_rate.is_none() {
            errs.push(ConfigError::new(
                at("consecutive_5xx"),
                "every ejection condition is off: set consecutive_5xx, \
                 consecutive_connect_failures or error_rate",
            ));
        }
        if let Some(r) = &o.error_rate {
            validate_rate(r, &|f| at(&format!("error_rate.{f}")), errs);
        }
        positive(o.base_ejection_time, at("base_ejection_time"), errs);
        if o.max_ejection_time.0 < o.base_ejection_time.0 {
            errs.push(ConfigError::new(
                at("max_ejection_time"),
                "must be at least base_ejection_time",
            ));
        }
        if !(1..=100).contains(&o.max_ejection_percent) {
            errs.push(ConfigError::new(
                at("max_ejection_percent"),
                "must be between 1 and 100",
            ));
        }
    }
    if let Some(b) = breaker {
        validate_breaker(b, &|f| at(&format!("circuit_breaker.{f}")), errs);
    }
    if max_concurrent == Some(0) {
        errs.push(ConfigError::new(
            at("max_concurrent_requests"),
            "must be at least 1 (leave the key out for no limit)",
        ));
    }
    if let Some(r) = retry {
        validate_retry(r, &|f| at(&format!("retry.{f}")), errs);
    }
}

/// Checks a route's resilience keys.
pub fn validate_route(
    breaker: Option<&RawCircuitBreaker>,
    retry: Option<&RawRetry>,
    fallback: Option<&RawFallback>,
    deadline_header: Option<&str>,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    if let Some(b) = breaker {
        validate_breaker(b, &|f| at(&format!("circuit_breaker.{f}")), errs);
    }
    if let Some(r) = retry {
        validate_retry(r, &|f| at(&format!("retry.{f}")), errs);
    }
    if let Some(fb) = fallback {
        if http::StatusCode::from_u16(fb.status).is_err() || fb.status < 100 {
            errs.push(ConfigError::new(
                at("fallback.status"),
                "not an HTTP status",
            ));
        }
        for (name, value) in &fb.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                errs.push(ConfigError::new(
                    at(&format!("fallback.headers.{name}")),
                    "not a valid header name and value",
                ));
            }
        }
    }
    if let Some(h) = deadline_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(ConfigError::new(
                at("deadline_header"),
                format!("`{h}` is not a valid header name"),
            ));
        }
    }
}

fn validate_health_check(
    hc: &RawHealthCheck,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    if http::Method::from_bytes(hc.method.as_bytes()).is_err()
        || hc.method.to_uppercase() != hc.method
    {
        errs.push(ConfigError::new(
            at("method"),
            format!("`{}` is not an upper-case HTTP method", hc.method),
        ));
    }
    if !hc.path.starts_with('/') || hc.path.parse::<http::uri::PathAndQuery>().is_err() {
        errs.push(ConfigError::new(
            at("path"),
            "must be a path starting with `/`",
        ));
    }
    if hc.expected_statuses.is_empty() {
        errs.push(ConfigError::new(
            at("expected_statuses"),
            "at least one status or range",
        ));
    }
    for (i, s) in hc.expected_statuses.iter().enumerate() {
        if s.bounds().is_none() {
            errs.push(ConfigError::new(
                at(&format!("expected_statuses[{i}]")),
                "a status 100..599 or a range such as \"200-399\"",
            ));
        }
    }
    positive(hc.interval, at("interval"), errs);
    positive(hc.timeout, at("timeout"), errs);
    if hc.healthy_threshold == 0 {
        errs.push(ConfigError::new(
            at("healthy_threshold"),
            "must be at least 1",
        ));
    }
    if hc.unhealthy_threshold == 0 {
        errs.push(ConfigError::new(
            at("unhealthy_threshold"),
            "must be at least 1",
        ));
    }
}

fn validate_breaker(
    b: &RawCircuitBreaker,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    if b.error_rate.is_none() && b.consecutive_failures == 0 {
        errs.push(ConfigError::new(
            at("error_rate"),
            "set error_rate and/or consecutive_failures",
        ));
    }
    if let Some(r) = &b.error_rate {
        validate_rate(r, &|f| at(&format!("error_rate.{f}")), errs);
    }
    positive(b.open_for, at("open_for"), errs);
    if b.half_open_requests == 0 {
        errs.push(ConfigError::new(
            at("half_open_requests"),
            "must be at least 1",
        ));
    }
}

fn validate_rate(r: &RawErrorRate, at: &dyn Fn(&str) -> String, errs: &mut Vec<ConfigError>) {
    if !(1..=100).contains(&r.percent) {
        errs.push(ConfigError::new(at("percent"), "must be between 1 and 100"));
    }
    if r.window.0 < std::time::Duration::from_millis(100) {
        errs.push(ConfigError::new(at("window"), "must be at least 100ms"));
    }
}

fn validate_retry(r: &RawRetry, at: &dyn Fn(&str) -> String, errs: &mut Vec<ConfigError>) {
    if !(1..=10).contains(&r.attempts) {
        errs.push(ConfigError::new(at("attempts"), "must be between 1 and 10"));
    }
    if let Some(t) = r.per_try_timeout {
        positive(t, at("per_try_timeout"), errs);
    }
    const CONDITIONS: [&str; 3] = ["connect_failure", "reset", "timeout"];
    for (i, on) in r.retry_on.iter().enumerate() {
        let error = match on {
            RawRetryOn::Status(s) if (500..=599).contains(s) || *s == 429 || *s == 408 => continue,
            RawRetryOn::Status(s) => format!("status {s} is not retried: use 5xx, 408 or 429"),
            RawRetryOn::Condition(c) if CONDITIONS.contains(&c.as_str()) => continue,
            RawRetryOn::Condition(c) => format!(
                "{}, or a status 5xx, 408 or 429",
                crate::spec::suggest::unknown("retry_on condition", c, &CONDITIONS)
            ),
        };
        errs.push(ConfigError::new(at(&format!("retry_on[{i}]")), error));
    }
    if r.backoff_max.0 < r.backoff_base.0 {
        errs.push(ConfigError::new(
            at("backoff_max"),
            "must be at least backoff_base",
        ));
    }
    if r.max_buffered_body.0 > 16 * 1024 * 1024 {
        errs.push(ConfigError::new(at("max_buffered_body"), "at most 16MiB"));
    }
    if r.budget.percent > 100 {
        errs.push(ConfigError::new(
            at("budget.percent"),
            "must be between 0 and 100",
        ));
    }
    if r.budget.window.0 < std::time::Duration::from_secs(1) {
        errs.push(ConfigError::new(at("budget.window"), "must be at least 1s"));
    }
}

fn positive(d: Dur, path: String, errs: &mut Vec<ConfigError>) {
    if d.0.is_zero() {
        errs.push(ConfigError::new(path, "must be greater than 0"));
    }
}
