//! Prometheus metrics, served by the admin listener at `GET /metrics`.
//!
//! The registry and the text encoding are `prometheus-client`'s. The request path never looks a
//! series up by its labels: each route holds handles to its own series ([`RouteMetrics`]),
//! resolved when a config is published (or, for a method and status class first seen, once,
//! through a `OnceLock`). Recording is then a relaxed atomic add; histograms are lock-free
//! bucket arrays ([`Histogram`]). Labels are config names (route, service, target), never raw
//! paths or header values, so the number of series is bounded by the config.
//!
//! State that already lives elsewhere (target health, breakers, connection counts, the config
//! revision) is read at scrape time rather than mirrored on the request path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::error::{Denial, GatewayError};

/// Upper bounds of the latency buckets, in nanoseconds (0.5 ms to 10 s, then `+Inf`): API
/// gateways mostly answer in milliseconds; the long tail is timeouts.
const BUCKETS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The label set of a series without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// Label value of requests no route matched.
pub const UNMATCHED: &str = "_unmatched";

/// Recent gateway errors kept for the dashboard.
const RECENT_ERRORS: usize = 100;

/// A latency histogram whose recording is two relaxed atomic adds (no lock).
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0f64, 0u64); BUCKETS_NS.len() + 1];
        for (i, cell) in self.0.buckets.iter().enumerate() {
            let bound = BUCKETS_NS
                .get(i)
                .map_or(f64::INFINITY, |ns| *ns as f64 / 1e9);
            buckets[i] = (bound, cell.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Labels1 = [(&'static str, Arc<str>); 1];
type Labels2 = [(&'static str, Arc<str>); 2];
type Labels4 = [(&'static str, Arc<str>); 4];

/// Every labelled family, shared by the registry and the handles routes and services hold.
#[derive(Debug, Default)]
struct Families {
    requests: Family<Labels4, Counter>,
    request_duration: Family<Labels1, Histogram>,
    request_bytes: Family<Labels1, Counter>,
    response_bytes: Family<Labels1, Counter>,
    upstream_duration: Family<Labels1, Histogram>,
    retries: Family<Labels1, Counter>,
    retry_budget_exhausted: Family<Labels1, Counter>,
    auth_failures: Family<Labels2, Counter>,
    rate_limited: Family<Labels2, Counter>,
    denied: Family<Labels2, Counter>,
    cache: Family<Labels2, Counter>,
    grpc: Family<Labels2, Counter>,
    reloads: Family<Labels1, Counter>,
    openapi_mismatch: Family<Labels2, Counter>,
    operation_requests: Family<[(&'static str, Arc<str>); 3], Counter>,
}

/// The process's metrics: the registry, the families, and the recent-errors list.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    /// Series of requests no route matched.
    pub unmatched: Arc<RouteMetrics>,
    recent: Arc<Mutex<VecDeque<RecentError>>>,
    /// The (route, service) pairs and services whose series exist: those of the config serving
    /// now, and those handed out since to a config being compiled.
    known: Mutex<KnownNames>,
}

type KnownNames = (Vec<(Arc<str>, Arc<str>)>, Vec<Arc<str>>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let families = Arc::new(Families::default());
        let f = &families;
        let mut r = Registry::with_prefix("portico");
        r.register(
            "requests",
            "Requests answered, by route, service, method and status class",
            f.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from the request's arrival to the end of its response, by route",
            Unit::Seconds,
            f.request_duration.clone(),
        );
        r.register_with_unit(
            "request",
            "Request body bytes received, by route",
            Unit::Bytes,
            f.request_bytes.clone(),
        );
        r.register_with_unit(
            "response",
            "Response body bytes sent, by route",
            Unit::Bytes,
            f.response_bytes.clone(),
        );
        r.register_with_unit(
            "upstream_duration",
            "Time from sending a request upstream to its response head, by service",
            Unit::Seconds,
            f.upstream_duration.clone(),
        );
        r.register(
            "retries",
            "Upstream attempts beyond the first, by service",
            f.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent, by service",
            f.retry_budget_exhausted.clone(),
        );
        r.register(
            "auth_failures",
            "Requests refused by authentication or the consumer ACL, by route and reason",
            f.auth_failures.clone(),
        );
        r.register(
            "denied",
            "Requests refused by an access policy (ip_filter, cors), by route and reason",
            f.denied.clone(),
        );
        r.register(
            "rate_limit_rejections",
            "Requests refused by a rate_limit policy, by route and limit kind",
            f.rate_limited.clone(),
        );
        r.register(
            "cache_requests",
            "Requests on routes with a cache policy, by route and cache result",
            f.cache.clone(),
        );
        r.register(
            "grpc_responses",
            "gRPC calls answered, by route and grpc-status",
            f.grpc.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads, by result (applied, unchanged, rejected)",
            f.reloads.clone(),
        );
        r.register(
            "openapi_response_mismatch",
            "Upstream answers that do not follow the route's OpenAPI operation, by route and operation",
            f.openapi_mismatch.clone(),
        );
        r.register(
            "operation_requests",
            "Requests answered on routes with an openapi policy, by route, operation and status class",
            f.operation_requests.clone(),
        );
        let unmatched = Arc::new(RouteMetrics::new(&families, UNMATCHED.into(), "".into()));
        Self {
            registry: r,
            families,
            unmatched,
            recent: Arc::default(),
            known: Mutex::default(),
        }
    }

    /// Handles for a route's series.
    pub fn route(&self, route: &Arc<str>, service: &Arc<str>) -> Arc<RouteMetrics> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !known.0.iter().any(|(r, s)| r == route && s == service) {
            known.0.push((Arc::clone(route), Arc::clone(service)));
        }
        drop(known);
        Arc::new(RouteMetrics::new(
            &self.families,
            Arc::clone(route),
            Arc::clone(service),
        ))
    }

    /// Handles for a service's series.
    pub fn service(&self, service: &Arc<str>) -> Arc<ServiceMetrics> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !known.1.contains(service) {
            known.1.push(Arc::clone(service));
        }
        drop(known);
        Arc::new(ServiceMetrics::new(&self.families, Arc::clone(service)))
    }

    /// Counts a config reload by its result: `applied`, `unchanged` or `rejected`.
    pub fn reload(&self, result: &'static str) {
        self.families
            .reloads
            .get_or_create(&[("result", result.into())])
            .inc();
    }

    /// Records that the routes (name, service) and services given are the ones serving now,
    /// forgetting the series of every other route and service this registry handed out: those
    /// of the plan before, and those of a plan compiled but never published.
    pub fn serving(&self, routes: &[(Arc<str>, Arc<str>)], services: &[Arc<str>]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for (route, service) in &known.0 {
            if !routes.iter().any(|(r, s)| r == route && s == service) {
                self.forget_route(route, service, routes.iter().any(|(r, _)| r == route));
            }
        }
        for service in &known.1 {
            if !services.contains(service) {
                self.forget_service(service);
            }
        }
        *known = (routes.to_vec(), services.to_vec());
    }

    fn forget_route(&self, route: &Arc<str>, service: &Arc<str>, route_still_exists: bool) {
        let f = &self.families;
        for method in METHODS.iter().map(Method::as_str).chain(["OTHER"]) {
            for class in STATUS_CLASSES {
                f.requests.remove(&[
                    ("route", Arc::clone(route)),
                    ("service", Arc::clone(service)),
                    ("method", method.into()),
                    ("status_class", class.into()),
                ]);
            }
        }
        if route_still_exists {
            // Only the service changed: the route's other series go on.
            return;
        }
        let key: Labels1 = [("route", Arc::clone(route))];
        f.request_duration.remove(&key);
        f.request_bytes.remove(&key);
        f.response_bytes.remove(&key);
        let pair = |label: &'static str, value: &str| -> Labels2 {
            [("route", Arc::clone(route)), (label, value.into())]
        };
        for reason in AUTH_REASONS {
            f.auth_failures.remove(&pair("reason", reason));
        }
        for limit in LIMIT_KINDS {
            f.rate_limited.remove(&pair("limit", limit));
        }
        for reason in ACCESS_REASONS {
            f.denied.remove(&pair("reason", reason));
        }
        for result in CACHE_RESULTS {
            f.cache.remove(&pair("result", result));
        }
        for code in 0..17 {
            f.grpc.remove(&pair("grpc_status", &code.to_string()));
        }
    }

    fn forget_service(&self, service: &Arc<str>) {
        let f = &self.families;
        let key: Labels1 = [("service", Arc::clone(service))];
        f.upstream_duration.remove(&key);
        f.retries.remove(&key);
        f.retry_budget_exhausted.remove(&key);
    }

    /// Writes the registry's series (no `# EOF`: the caller appends scrape-time state first).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }

    /// Remembers an error answer for the dashboard's "recent errors". Skipped rather than
    /// waited for when another worker holds the list: it is a sample, not a record.
    pub fn note_error(&self, error: RecentError) {
        if let Ok(mut list) = self.recent.try_lock() {
            if list.len() == RECENT_ERRORS {
                list.pop_back();
            }
            list.push_front(error);
        }
    }

    /// The recent errors, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        let list = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().cloned().collect()
    }
}

/// One error answer, for the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentError {
    /// When it was answered (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The request id sent back to the client.
    pub request_id: String,
    /// The matched route.
    pub route: Option<String>,
    /// The route's service.
    pub service: Option<String>,
    /// Request method.
    pub method: String,
    /// Request path (no query: queries may carry credentials).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// The gateway's error code, when the gateway answered itself.
    pub error: Option<&'static str>,
}

/// Methods with their own series; anything else is `OTHER` (methods are client input).
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const CACHE_RESULTS: [&str; 5] = ["hit", "revalidated", "miss", "stale", "bypass"];
const AUTH_REASONS: [&str; 5] = [
    "invalid_credentials",
    "missing_credentials",
    "acl",
    "insufficient_scope",
    "unavailable",
];
const ACCESS_REASONS: [&str; 2] = ["ip_filter", "cors"];
const LIMIT_KINDS: [&str; 4] = ["rate", "concurrency", "store_unavailable", "missing_key"];

fn method_index(m: &Method) -> usize {
    METHODS.iter().position(|k| k == m).unwrap_or(METHODS.len())
}

/// A route's series, resolved once per config (per method and status class on first use).
#[derive(Debug)]
pub struct RouteMetrics {
    families: Arc<Families>,
    route: Arc<str>,
    service: Arc<str>,
    requests: [[OnceLock<Counter>; 5]; METHODS.len() + 1],
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    cache: [OnceLock<Counter>; CACHE_RESULTS.len()],
    grpc: [OnceLock<Counter>; 17],
    /// Per OpenAPI operation (by its index in the route's spec): its id and counters by status
    /// class. Sized on first use.
    operations: OnceLock<Box<[OperationCells]>>,
}

/// An operation's request counters, resolved on first use.
type OperationCells = OnceLock<(Arc<str>, [OnceLock<Counter>; 5])>;

impl RouteMetrics {
    fn new(families: &Arc<Families>, route: Arc<str>, service: Arc<str>) -> Self {
        let key: Labels1 = [("route", Arc::clone(&route))];
        Self {
            duration: families.request_duration.get_or_create_owned(&key),
            request_bytes: families.request_bytes.get_or_create_owned(&key),
            response_bytes: families.response_bytes.get_or_create_owned(&key),
            families: Arc::clone(families),
            route,
            service,
            requests: Default::default(),
            cache: Default::default(),
            grpc: Default::default(),
            operations: OnceLock::new(),
        }
    }

    /// Series that belong to no registry (routes built outside a running gateway, in tests).
    pub fn detached() -> Arc<Self> {
        Arc::new(Self::new(&Arc::default(), "".into(), "".into()))
    }

    /// Counts a response by method and status class, when its head is sent.
    pub fn count(&self, method: &Method, status: u16) {
        let m = method_index(method);
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.requests[m][class]
            .get_or_init(|| {
                let method: Arc<str> = METHODS.get(m).map_or("OTHER", |k| k.as_str()).into();
                self.families.requests.get_or_create_owned(&[
                    ("route", Arc::clone(&self.route)),
                    ("service", Arc::clone(&self.service)),
                    ("method", method),
                    ("status_class", STATUS_CLASSES[class].into()),
                ])
            })
            .inc();
    }

    /// Counts a cache answer (`hit`, `miss`, ...).
    pub fn cache(&self, result: &'static str) {
        let Some(i) = CACHE_RESULTS.iter().position(|r| *r == result) else {
            return;
        };
        self.cache[i]
            .get_or_init(|| {
                self.families.cache.get_or_create_owned(&[
                    ("route", Arc::clone(&self.route)),
                    ("result", result.into()),
                ])
            })
            .inc();
    }

    /// Counts a gRPC call by its status code (0–16; others are not gRPC statuses).
    pub fn grpc(&self, code: u16) {
        let Some(cell) = self.grpc.get(usize::from(code)) else {
            return;
        };
        cell.get_or_init(|| {
            self.families.grpc.get_or_create_owned(&[
                ("route", Arc::clone(&self.route)),
                ("grpc_status", code.to_string().into()),
            ])
        })
        .inc();
    }

    /// Counts what a policy refused, under the counter its error kind names (authentication,
    /// rate limit, access). Other errors are counted by status class only.
    pub fn refused(&self, error: &GatewayError) {
        let (family, label, value) = match error.kind().denial {
            Some(Denial::Auth(reason)) => (&self.families.auth_failures, "reason", reason),
            Some(Denial::RateLimit(limit)) => (&self.families.rate_limited, "limit", limit),
            Some(Denial::Access(reason)) => (&self.families.denied, "reason", reason),
            None => return,
        };
        family
            .get_or_create(&[("route", Arc::clone(&self.route)), (label, value.into())])
            .inc();
    }

    /// Counts an upstream answer that breaks the route's OpenAPI `operation` (rare: the series
    /// is looked up on each).
    pub fn openapi_mismatch(&self, operation: &Arc<str>) {
        self.families
            .openapi_mismatch
            .get_or_create(&[
                ("route", Arc::clone(&self.route)),
                ("operation", Arc::clone(operation)),
            ])
            .inc();
    }

    /// Counts a response to an OpenAPI operation (number `index` of `count` in the route's
    /// spec) by status class. Operations come from the config's specs, so the series are
    /// bounded; after the first request a count is an index and an atomic add. A spec changed
    /// by a reload (another operation at that index) is counted through the family.
    pub fn operation(&self, index: usize, count: usize, id: &Arc<str>, status: u16) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        let series = |class: usize| {
            self.families.operation_requests.get_or_create_owned(&[
                ("route", Arc::clone(&self.route)),
                ("operation", Arc::clone(id)),
                ("status_class", STATUS_CLASSES[class].into()),
            ])
        };
        let cells = self
            .operations
            .get_or_init(|| (0..count).map(|_| OnceLock::new()).collect());
        match cells.get(index) {
            Some(cell) => {
                let (known, counters) = cell.get_or_init(|| (Arc::clone(id), Default::default()));
                if **known == **id {
                    counters[class].get_or_init(|| series(class)).inc();
                    return;
                }
                series(class).inc();
            }
            None => {
                series(class).inc();
            }
        }
    }

    /// Records a finished response: its duration and bytes.
    pub fn finish(&self, elapsed: Duration, request_bytes: u64, response_bytes: u64) {
        self.duration.observe(elapsed);
        if request_bytes > 0 {
            self.request_bytes.inc_by(request_bytes);
        }
        self.response_bytes.inc_by(response_bytes);
    }

    /// The route's name as labelled.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// The route's service as labelled.
    pub fn service(&self) -> &Arc<str> {
        &self.service
    }
}

/// A service's series.
#[derive(Debug)]
pub struct ServiceMetrics {
    /// Time to the upstream's response head.
    pub upstream_duration: Histogram,
    /// Attempts beyond the first.
    pub retries: Counter,
    /// Retries the budget refused.
    pub retry_budget_exhausted: Counter,
}

impl ServiceMetrics {
    fn new(families: &Families, service: Arc<str>) -> Self {
        let key: Labels1 = [("service", service)];
        Self {
            upstream_duration: families.upstream_duration.get_or_create_owned(&key),
            retries: families.retries.get_or_create_owned(&key),
            retry_budget_exhausted: families.retry_budget_exhausted.get_or_create_owned(&key),
        }
    }

    /// Series that belong to no registry.
    pub fn detached() -> Arc<Self> {
        Arc::new(Self::new(&Families::default(), "".into()))
    }
}

/// What a response carries to its end for the metrics: written when the body ends.
pub struct Measure {
    /// The route's series.
    pub route: Arc<RouteMetrics>,
    /// When the request arrived.
    pub start: std::time::Instant,
    /// Request body bytes (from Content-Length).
    pub request_bytes: u64,
    /// Count the gRPC status when it arrives in the trailers.
    pub grpc: bool,
}

impl Measure {
    /// Records the finished response.
    pub fn finish(self, sent: u64) {
        self.route
            .finish(self.start.elapsed(), self.request_bytes, sent);
    }
}

/// Writes one gauge family from `(labels, value)` pairs.
pub fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// Writes one counter family from `(labels, value)` pairs.
pub fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// The whole `/metrics` answer: the recorded series of `metrics`, then `state` (read by the
/// admin listener at scrape time), then what `more` writes (series kept by higher layers: the
/// wasm filters' own metrics), then `# EOF`.
pub fn encode_scrape(metrics: &Metrics, state: StateNow, more: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut registry = Registry::with_prefix("portico");
    registry.register_collector(Box::new(state));
    // Writing to a String cannot fail.
    let _ = metrics.encode(&mut out);
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
    more(&mut out);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// A target's state at scrape time.
#[derive(Debug)]
pub struct TargetNow {
    /// Its service.
    pub service: Arc<str>,
    /// Its URL.
    pub url: Arc<str>,
    /// Open connections (the pool's size).
    pub connections: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Passing health checks.
    pub healthy: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
}

/// A snapshot of the state that lives outside the registry, taken at scrape time.
#[derive(Debug)]
pub struct StateNow {
    /// The config revision serving.
    pub revision: u64,
    /// Process start, in seconds since the epoch.
    pub started: f64,
    /// Open client connections.
    pub client_connections: usize,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: u64,
    /// Every target.
    pub targets: Vec<TargetNow>,
    /// Spans exported, failed and dropped by the OTLP exporter, when export is on.
    pub spans: Option<crate::telemetry::trace::export::ExportStats>,
    /// (breaker name, state: `closed`, `open`, `half_open`)
    pub breakers: Vec<(Arc<str>, &'static str)>,
    /// The consumer store: (stored consumers, seconds since its copy last matched Redis (-1:
    /// never), whether the last check agreed), when there is one.
    pub consumer_store: Option<(usize, f64, bool)>,
}

impl prometheus_client::collector::Collector for StateNow {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        let version: Labels1 = [("version", env!("CARGO_PKG_VERSION").into())];
        gauge_family(e, "build_info", "Portico's version", [(version, 1.0)])?;
        gauge_family(
            e,
            "start_time_seconds",
            "When the process started (Unix time)",
            [(NO_LABELS, self.started)],
        )?;
        gauge_family(
            e,
            "config_revision",
            "Revision of the config serving (1 at startup, +1 per applied reload)",
            [(NO_LABELS, self.revision as f64)],
        )?;
        if let Some((consumers, age, in_sync)) = self.consumer_store {
            gauge_family(
                e,
                "consumer_store_consumers",
                "Consumers in this node's copy of the consumer store",
                [(NO_LABELS, consumers as f64)],
            )?;
            gauge_family(
                e,
                "consumer_store_age_seconds",
                "Seconds since this node's copy of the consumer store last matched Redis (-1: never loaded)",
                [(NO_LABELS, age)],
            )?;
            gauge_family(
                e,
                "consumer_store_in_sync",
                "1 when the last check of the consumer store's version agreed with Redis",
                [(NO_LABELS, f64::from(u8::from(in_sync)))],
            )?;
        }
        gauge_family(
            e,
            "connections_active",
            "Open connections, by side (client: to the gateway; upstream: to targets)",
            [
                ([("side", "client")], self.client_connections as f64),
                (
                    [("side", "upstream")],
                    self.targets.iter().map(|t| t.connections).sum::<usize>() as f64,
                ),
            ],
        )?;
        let per_target = |i: usize| {
            self.targets.iter().map(move |t| {
                let labels: Labels2 = [
                    ("service", Arc::clone(&t.service)),
                    ("target", Arc::clone(&t.url)),
                ];
                let v = match i {
                    0 => t.connections as f64,
                    1 => t.in_flight as f64,
                    2 => f64::from(u8::from(t.healthy)),
                    _ => f64::from(u8::from(t.ejected)),
                };
                (labels, v)
            })
        };
        gauge_family(
            e,
            "upstream_connections",
            "Open connections to a target across all workers (pooled or busy)",
            per_target(0),
        )?;
        gauge_family(
            e,
            "upstream_in_flight",
            "Requests sent to a target whose response has not finished",
            per_target(1),
        )?;
        gauge_family(
            e,
            "target_healthy",
            "1 when the target passes its active health checks",
            per_target(2),
        )?;
        gauge_family(
            e,
            "target_ejected",
            "1 while outlier detection keeps the target out of rotation",
            per_target(3),
        )?;
        gauge_family(
            e,
            "circuit_breaker_state",
            "1 for the state each circuit breaker is in (closed, open, half_open)",
            self.breakers.iter().flat_map(|(name, now)| {
                ["closed", "open", "half_open"].into_iter().map(move |s| {
                    let labels: Labels2 = [("breaker", Arc::clone(name)), ("state", s.into())];
                    (labels, f64::from(u8::from(*now == s)))
                })
            }),
        )?;
        if let Some(spans) = &self.spans {
            counter_family(
                e,
                "trace_spans",
                "Spans handed to the OTLP exporter, by result (exported, failed, dropped)",
                [
                    ([("result", "exported")], spans.exported),
                    ([("result", "failed")], spans.failed),
                    ([("result", "dropped")], spans.dropped),
                ],
            )?;
        }
        counter_family(
            e,
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            [(NO_LABELS, self.access_log_dropped)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let m = Metrics::new();
        let r = m.route(&"api".into(), &"svc".into());
        r.finish(Duration::from_micros(300), 0, 10);
        r.finish(Duration::from_millis(3), 5, 10);
        r.finish(Duration::from_secs(20), 0, 0);
        let mut out = String::new();
        m.encode(&mut out).unwrap();
        assert!(
            out.contains("portico_request_duration_seconds_bucket{le=\"0.0005\",route=\"api\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("portico_request_duration_seconds_bucket{le=\"0.005\",route=\"api\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("portico_request_duration_seconds_bucket{le=\"+Inf\",route=\"api\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("portico_request_duration_seconds_count{route=\"api\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("portico_response_bytes_total{route=\"api\"} 20"),
            "{out}"
        );
        assert!(
            out.contains("portico_request_bytes_total{route=\"api\"} 5"),
            "{out}"
        );
    }

    #[test]
    fn unknown_methods_share_one_series() {
        let m = Metrics::new();
        let r = m.route(&"api".into(), &"svc".into());
        r.count(&Method::from_bytes(b"BREW").unwrap(), 200);
        r.count(&Method::from_bytes(b"WHEN").unwrap(), 204);
        r.count(&Method::GET, 503);
        let mut out = String::new();
        m.encode(&mut out).unwrap();
        assert!(
            out.contains("method=\"OTHER\",status_class=\"2xx\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("method=\"GET\",status_class=\"5xx\"} 1"),
            "{out}"
        );
    }
}
