//! Request policies: what a route does to a request besides routing it.
//!
//! Each concern has its own folder or file (`auth/`, `rate_limit/`, `transform/`, `cache/`,
//! `cors.rs`, ...) with its serde config, its compiled runtime form, its `compile` function
//! and its tests. The [`policies!`] declaration at the end of this file lists them once and
//! makes each route's typed slots; the order they run in is `pipeline/`'s phase list (see
//! docs/architecture.md).
//!
//! Why typed slots and not a generic tower stack per route: the order between concerns is fixed
//! by the lifecycle anyway, each slot is one `Option` check when unused, and the request path
//! pays no boxed service call per policy. A policy rejects by returning a `GatewayError`, which
//! `error.rs` turns into the response, so no policy ever drops a connection.

pub mod aggregate;
pub mod auth;
pub mod cache;
pub mod cors;
pub mod ip_filter;
pub mod openapi;
pub mod rate_limit;
pub mod request_termination;
pub mod shadow;
pub mod traffic;
pub mod transform;
pub mod wasm;

use std::collections::HashMap;
use std::sync::Arc;

use crate::spec::ConfigError;

/// What compiling one policy may use besides its own YAML: where it is written (for errors
/// and for naming state shared across nodes), the route's facts, and the plan's shared parts.
pub struct Build<'a> {
    /// The policy's config path (`routes[3].policies[0].rate_limit`), for errors and for
    /// sharing one compiled policy between the routes that inherit it.
    pub path: &'a str,
    /// A name for the level the policy is written at that survives reordering the file
    /// (`route:orders`, `service:api`, `global`): names its state in Redis.
    pub id: &'a str,
    /// Every service name, for policies that name other services.
    pub services: &'a [&'a String],
    /// The route's path captures (`{id}`), for templates.
    pub captures: &'a [String],
    /// The plan's credential stores and JWT issuers.
    pub authenticators: &'a auth::Authenticators,
    /// The plan's Redis store, when configured.
    pub redis: Option<&'a Arc<crate::store::redis::RedisStore>>,
    /// Policies compiled once per place they are written and shared by every route
    /// inheriting them (their counters and entries are one).
    pub shared: &'a mut Shared,
    /// Where problems go.
    pub errors: &'a mut Vec<ConfigError>,
}

/// Compiled policies shared between routes, by config path.
#[derive(Default)]
pub struct Shared {
    /// Rate limits.
    pub rate_limits: HashMap<String, Option<Arc<rate_limit::RateLimitPolicy>>>,
    /// Caches.
    pub caches: HashMap<String, Option<Arc<cache::CachePolicy>>>,
    /// OpenAPI specs (one compile for the hundreds of routes an import writes).
    pub openapi: HashMap<String, Option<Arc<openapi::OpenApiPolicy>>>,
    /// Where `wasm` filters' compiled code is kept between runs (`plugins.cache_dir`, made
    /// absolute), when configured.
    pub plugin_cache_dir: Option<std::path::PathBuf>,
}

/// Declares the policies a route can have: the YAML enum of a `policies:` entry
/// (`RawPolicy`), the route's typed slots (`RoutePolicies`) and the one match that compiles an
/// entry into its slot. Invoked once, below.
///
/// Each entry: `slot: Variant(RawType) => CompiledType = compile_fn`, where
/// `compile_fn(&RawType, &mut Build) -> Option<Arc<CompiledType>>`.
macro_rules! policies {
    ($( $(#[$doc:meta])* $slot:ident : $variant:ident ( $raw:ty ) => $compiled:ty = $compile:path ),* $(,)?) => {
        /// One entry of a `policies:` list (route, service or global level), written as a
        /// one-key map: `- auth: {jwt: [main]}`.
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema, PartialEq)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        pub enum RawPolicy {
            $( $(#[$doc])* $variant($raw), )*
        }

        impl RawPolicy {
            /// The policy's YAML key.
            pub fn key(&self) -> &'static str {
                match self {
                    $( RawPolicy::$variant(_) => stringify!($slot), )*
                }
            }
        }

        /// The compiled policies of one route: one typed slot per policy, `None` when unused.
        #[derive(Default)]
        pub struct RoutePolicies {
            $( $(#[$doc])* pub $slot: Option<std::sync::Arc<$compiled>>, )*
        }

        impl RoutePolicies {
            /// The YAML keys of the policies this route has, in declaration order.
            pub fn names(&self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$slot.is_some() { out.push(stringify!($slot)); } )*
                out
            }

            /// Compiles `raw` into its slot.
            pub fn compile(&mut self, raw: &RawPolicy, build: &mut $crate::policy::Build<'_>) {
                match raw {
                    $( RawPolicy::$variant(r) => self.$slot = $compile(r, build), )*
                }
            }
        }
    };
}

/// Picks the effective policy of each kind: the route's own, else its service's, else the
/// global one (the most specific level wins, as in Kong).
pub fn effective<P>(levels: [&[P]; 3]) -> Vec<&P> {
    let mut out: Vec<&P> = Vec::new();
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

// The policies a route can have, in the order their YAML keys are listed in errors. Where each
// runs is the phase list's (`pipeline/mod.rs`).
policies! {
    /// Authenticate the request (JWT, API key, basic auth, token introspection) and apply ACLs.
    auth: Auth(auth::config::RawAuthPolicy) => auth::AuthPolicy
        = auth::AuthPolicy::compile,
    /// Limit the request rate and/or the requests in flight per key (consumer, client IP,
    /// route, header).
    rate_limit: RateLimit(rate_limit::config::RawRateLimitPolicy)
        => rate_limit::RateLimitPolicy = rate_limit::RateLimitPolicy::compile,
    /// Cache responses (RFC 9111 semantics) in memory and optionally in the shared Redis.
    cache: Cache(cache::config::RawCachePolicy) => cache::CachePolicy
        = cache::CachePolicy::compile,
    /// Change the request (headers, query, path, method, body) and the response.
    transform: Transform(Box<transform::config::RawTransformPolicy>)
        => transform::TransformPolicy = transform::TransformPolicy::compile,
    /// Answer CORS preflights at the gateway and add CORS headers for allowed origins.
    cors: Cors(Box<cors::RawCors>) => cors::CorsPolicy
        = cors::CorsPolicy::compile,
    /// Allow or deny client IPs (CIDR blocks), judged after `trusted_proxies`.
    ip_filter: IpFilter(ip_filter::RawIpFilter) => ip_filter::IpFilter
        = ip_filter::IpFilter::compile,
    /// Split traffic between services by weight (canary), optionally sticky.
    split: Split(traffic::RawSplit) => traffic::TrafficPolicy
        = traffic::TrafficPolicy::compile_split,
    /// Route to a service by API version (path, header, media type or query).
    versioning: Versioning(traffic::RawVersioning) => traffic::TrafficPolicy
        = traffic::TrafficPolicy::compile_versioning,
    /// Mirror a percentage of requests to another service (responses discarded).
    shadow: Shadow(shadow::RawShadow) => shadow::ShadowPolicy
        = shadow::ShadowPolicy::compile,
    /// Answer the route by calling several services and merging their JSON (BFF).
    aggregate: Aggregate(Box<crate::policy::aggregate::RawAggregate>) => crate::policy::aggregate::AggregatePolicy
        = crate::policy::aggregate::AggregatePolicy::compile,
    /// Answer the route at the gateway with a fixed status, body and headers (maintenance,
    /// stubs); the upstream is not called.
    request_termination: RequestTermination(request_termination::RawRequestTermination)
        => request_termination::RequestTermination
        = request_termination::RequestTermination::compile,
    /// Check requests (and optionally answers) against an OpenAPI operation, or answer from
    /// the spec's examples (`mock`).
    openapi: Openapi(openapi::RawOpenApi) => openapi::OpenApiPolicy
        = openapi::OpenApiPolicy::compile,
    /// Run a proxy-wasm filter (ABI 0.2.1) on the request and its response.
    wasm: Wasm(wasm::RawWasm) => wasm::WasmPolicy = wasm::WasmPolicy::compile,
}
