//! Request policies: what a route does to a request besides routing it.
//!
//! Each concern has its own folder (`auth/`, later `rate_limit/`, `transform/`, `cache/`, ...)
//! with its serde config, its compiled runtime form and its tests. A route's policies are
//! compiled once into typed slots of [`RoutePolicies`] and run in the fixed order of
//! `docs/request-lifecycle.md` (auth, then rate limiting, then transformation, then caching).
//!
//! Why typed slots and not a generic tower stack per route: the order between concerns is fixed
//! by the lifecycle anyway, each slot is one `Option` check when unused, and the request path
//! pays no boxed service call per policy. A policy rejects by returning a `GatewayError`, which
//! `error.rs` turns into the response, so no policy ever drops a connection.

pub mod auth;
pub mod cache;
pub mod cors;
pub mod ip_filter;
pub mod rate_limit;
pub mod shadow;
pub mod traffic;
pub mod transform;

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One entry of a `policies:` list (route, service or global level), written as a one-key map:
/// `- auth: {jwt: [main]}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawPolicy {
    /// Authenticate the request (JWT, API key, basic auth, token introspection) and apply ACLs.
    Auth(auth::config::RawAuthPolicy),
    /// Limit the request rate and/or the requests in flight per key (consumer, client IP,
    /// route, header).
    RateLimit(rate_limit::config::RawRateLimitPolicy),
    /// Cache responses (RFC 9111 semantics) in memory and optionally in the shared Redis.
    Cache(cache::config::RawCachePolicy),
    /// Change the request (headers, query, path, method) and the response (headers).
    Transform(Box<transform::config::RawTransformPolicy>),
    /// Answer CORS preflights at the gateway and add CORS headers for allowed origins.
    Cors(Box<cors::RawCors>),
    /// Allow or deny client IPs (CIDR blocks), judged after `trusted_proxies`.
    IpFilter(ip_filter::RawIpFilter),
    /// Split traffic between services by weight (canary), optionally sticky.
    Split(traffic::RawSplit),
    /// Route to a service by API version (path, header, media type or query).
    Versioning(traffic::RawVersioning),
    /// Mirror a percentage of requests to another service (responses discarded).
    Shadow(shadow::RawShadow),
    /// Answer the route by calling several services and merging their JSON (BFF).
    Aggregate(Box<crate::aggregate::RawAggregate>),
}

/// The compiled policies of one route.
#[derive(Default)]
pub struct RoutePolicies {
    /// Authentication and ACLs.
    pub auth: Option<Arc<auth::AuthPolicy>>,
    /// Rate and concurrency limits (shared by every route inheriting the same policy).
    pub rate_limit: Option<Arc<rate_limit::RateLimitPolicy>>,
    /// Response cache (shared by every route inheriting the same policy).
    pub cache: Option<Arc<cache::CachePolicy>>,
    /// Request and response transformation.
    pub transform: Option<Arc<transform::TransformPolicy>>,
    /// CORS.
    pub cors: Option<Arc<cors::CorsPolicy>>,
    /// Client IP allow/deny lists.
    pub ip_filter: Option<Arc<ip_filter::IpFilter>>,
    /// Service choice (`split` or `versioning`).
    pub traffic: Option<Arc<traffic::TrafficPolicy>>,
    /// Shadow traffic.
    pub shadow: Option<Arc<shadow::ShadowPolicy>>,
    /// Aggregation: the route is answered by the fan-out, not by its service.
    pub aggregate: Option<Arc<crate::aggregate::AggregatePolicy>>,
}

/// Picks the effective policy of each kind: the route's own, else its service's, else the
/// global one (the most specific level wins, as in Kong).
pub fn effective(levels: [&[RawPolicy]; 3]) -> Vec<&RawPolicy> {
    let mut out: Vec<&RawPolicy> = Vec::new();
    for level in levels {
        for p in level {
            if !out
                .iter()
                .any(|have| std::mem::discriminant(*have) == std::mem::discriminant(p))
            {
                out.push(p);
            }
        }
    }
    out
}
