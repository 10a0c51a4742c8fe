//! Upstream services and their targets: addresses, protocol, weights, in-flight counts, DNS.
//!
//! Owns what a target *is* and how one is picked (`balancer`); connecting and pooling belong to
//! `proxy::client`. Target ids are stable across reloads for the same URL, so per-worker
//! connection pools keep their warm connections when a config is reloaded.

pub mod balancer;
pub mod breaker;
pub mod config;
pub mod health;
pub mod outlier;
pub mod resilience;
pub mod state;
pub mod window;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use rustc_hash::FxHashMap;

pub use balancer::Balancer;
pub use config::WhenAllUnhealthy;
pub use state::TargetState;

/// Wire protocol towards a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge: over cleartext TCP, or over TLS (ALPN `h2`) when the target
    /// has `tls`.
    H2c,
}

/// Where a target lives.
#[derive(Debug)]
pub enum Address {
    /// A literal IP address: nothing to resolve.
    Ip(SocketAddr),
    /// A DNS name, resolved when a connection is opened and re-resolved after `refresh`.
    Dns {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// How long a resolution is reused.
        refresh: Duration,
        /// Last resolution and when it was made.
        cache: ArcSwap<Option<(Instant, Vec<SocketAddr>)>>,
    },
}

/// One upstream target.
#[derive(Debug)]
pub struct Target {
    /// Process-wide id, stable for the same URL across reloads; keys the connection pools.
    pub id: u64,
    /// The URL as configured, for logs (shared with log records without copying).
    pub url: Arc<str>,
    /// `host:port`, the `Host` header sent upstream unless the route preserves the client's.
    pub authority: HeaderValue,
    /// Address to connect to.
    pub address: Address,
    /// Wire protocol.
    pub protocol: Protocol,
    /// TLS to open before speaking `protocol` (`https://` targets).
    pub tls: Option<Arc<crate::tls::upstream::UpstreamTls>>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Requests sent to this target whose response has not finished (for least-request).
    pub in_flight: AtomicUsize,
    /// Health: active checks and outlier ejection (shared with the prober, kept across reloads).
    pub state: Arc<TargetState>,
}

impl Target {
    /// Addresses to try, resolving a DNS name when its cached answer is older than its refresh.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.address {
            Address::Ip(addr) => Ok(vec![*addr]),
            Address::Dns {
                host,
                port,
                refresh,
                cache,
            } => {
                if let Some((at, addrs)) = cache.load().as_ref() {
                    if at.elapsed() < *refresh && !addrs.is_empty() {
                        return Ok(addrs.clone());
                    }
                }
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                if addrs.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} resolved to no address"),
                    ));
                }
                cache.store(Arc::new(Some((Instant::now(), addrs.clone()))));
                Ok(addrs)
            }
        }
    }
}

/// Timeouts towards a service.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Request sent to response head received.
    pub request: Duration,
    /// Longest pause in a response body; also the pooled connection idle limit.
    pub idle: Duration,
}

/// A named group of targets.
#[derive(Debug)]
pub struct Service {
    /// Config name.
    pub name: Arc<str>,
    /// Targets, in config order.
    pub targets: Vec<Arc<Target>>,
    /// How a target is picked.
    pub balancer: Balancer,
    /// Timeouts.
    pub timeouts: UpstreamTimeouts,
    /// Idle connections kept per target and worker.
    pub max_idle_per_target: usize,
    /// Plain HTTP/1.1 targets are called with the gateway's own client (`proxy::h1`), not
    /// hyper's (`http1.engine`).
    pub own_http1: bool,
    /// Active health check, run by `health::Checker`.
    pub health_check: Option<health::HealthCheck>,
    /// Passive health: ejection of failing targets.
    pub outlier: Option<outlier::OutlierDetection>,
    /// What to do when no target is in rotation.
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// The service's circuit breaker (a route may have its own instead).
    pub breaker: Option<Arc<breaker::CircuitBreaker>>,
    /// `max_concurrent_requests`.
    pub max_concurrent: Option<Arc<breaker::ConcurrencyLimit>>,
    /// The service's metric series (one per service name in the process's registry).
    pub metrics: Arc<crate::telemetry::metrics::ServiceMetrics>,
    /// The service's `retry` block, with one budget shared by every route inheriting it and by
    /// the aggregate calls made to the service.
    pub retry: Option<Arc<resilience::RetryPolicy>>,
}

impl Service {
    /// Picks a target in rotation (healthy and not ejected), avoiding `avoid` when another one
    /// is available. When none is in rotation: every target is a candidate in `panic` mode,
    /// `None` (answer 503) in `fail` mode.
    pub fn pick(
        &self,
        headers: &http::HeaderMap,
        client_ip: std::net::IpAddr,
        avoid: Option<usize>,
    ) -> Option<usize> {
        self.balancer.pick_available(
            &self.targets,
            headers,
            client_ip,
            avoid,
            self.when_all_unhealthy == WhenAllUnhealthy::Panic,
        )
    }
}

/// Gives `service`, while it is being compiled, the state its predecessor of the same name in the
/// serving plan built up: the health of each target whose URL and health settings are
/// unchanged, and the breaker and concurrency limit when their settings are. A reload then
/// neither forgets a sick target nor closes an open breaker.
pub fn inherit(service: &mut Service, previous: &[Arc<Service>]) {
    let Some(old) = previous.iter().find(|s| s.name == service.name) else {
        return;
    };
    if old.health_check == service.health_check && old.outlier == service.outlier {
        for target in &mut service.targets {
            let same = old.targets.iter().find(|t| t.url == target.url);
            if let (Some(same), Some(target)) = (same, Arc::get_mut(target)) {
                target.state = Arc::clone(&same.state);
            }
        }
    }
    inherit_breaker(&mut service.breaker, old.breaker.as_ref());
    if let (Some(limit), Some(old)) = (&mut service.max_concurrent, &old.max_concurrent) {
        if limit.max == old.max {
            *limit = Arc::clone(old);
        }
    }
}

/// Keeps the breaker `old` in `slot` when both were built from the same settings.
pub fn inherit_breaker(
    slot: &mut Option<Arc<breaker::CircuitBreaker>>,
    old: Option<&Arc<breaker::CircuitBreaker>>,
) {
    if let (Some(new), Some(old)) = (slot.as_mut(), old) {
        if new.config == old.config {
            *new = Arc::clone(old);
        }
    }
}

/// Guard counting one in-flight request on a target; decrements on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Target>);

impl InFlight {
    /// The target the request went to.
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }

    /// Counts a request on `target` until the guard is dropped.
    pub fn start(target: &Arc<Target>) -> Self {
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(target))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns the process-wide id for a target URL: the same URL always gets the same id.
pub fn target_id(url: &str) -> u64 {
    static IDS: OnceLock<Mutex<FxHashMap<String, u64>>> = OnceLock::new();
    let ids = IDS.get_or_init(Default::default);
    let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
    let next = ids.len() as u64 + 1;
    *ids.entry(url.to_string()).or_insert(next)
}
