//! Raw (validated) config to the runtime [`Plan`]: resolves references, builds the router, the
//! services and their balancers, precompiles regexes and templates.

use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Method};

use super::plan::{AccessLogSettings, Forwarding, Limits, Plan, Rewrite, Route, TemplatePart};
use super::raw::{PathType, RawConfig, RawHeaderMatch, RawLoadBalancing, RawRoute, RawService};
use super::validate::{parse_cidr, parse_target_url};
use super::ConfigError;
use crate::policy;
use crate::policy::auth::stored::ConsumerStore;
use crate::policy::auth::Authenticators;
use crate::policy::rate_limit::plans::Plans;
use crate::policy::{RawPolicy, RoutePolicies};
use crate::router::{HeaderCond, PathSpec, RouteSpec, Router};
use crate::store::redis::RedisStore;
use crate::upstream::balancer::HashOn;
use crate::upstream::breaker::{CircuitBreaker, ConcurrencyLimit};
use crate::upstream::health::HealthCheck;
use crate::upstream::outlier::OutlierDetection;
use crate::upstream::resilience::{Fallback, RetryPolicy, RouteResilience};
use crate::upstream::{self, Address, Balancer, Protocol, Service, Target, UpstreamTimeouts};

/// Builds the plan. `validate` must have passed; what only shows while building (routes that
/// cannot be told apart) is returned as errors.
///
/// `previous` is the plan serving now, when there is one: what it built up at run time and the
/// new plan may keep is an input here (target health, breakers, concurrency limits, rate-limit
/// counters, cached responses), so the plan is complete, and never changed, once built.
pub fn compile(raw: &RawConfig, previous: Option<&Plan>) -> Result<Plan, Vec<ConfigError>> {
    // A renewed certificate behind an unchanged config file must still make a reload apply.
    let fingerprint = fingerprint(raw)
        ^ crate::tls::certs::files_hash(&super::referenced_files(raw)).rotate_left(17);
    let service_names: Vec<&String> = raw.services.keys().collect();
    let registry = previous.map_or_else(
        || Arc::new(crate::telemetry::metrics::Metrics::new()),
        |p| Arc::clone(&p.registry),
    );
    let mut errors = Vec::new();
    let services: Vec<Arc<Service>> = raw
        .services
        .iter()
        .map(|(name, svc)| {
            let mut service = build_service(name, svc, &mut errors);
            service.metrics = registry.service(&service.name);
            service.own_http1 = raw.http1.engine == super::raw::Http1Engine::Portico;
            if let Some(previous) = previous {
                upstream::inherit(&mut service, &previous.services);
            }
            Arc::new(service)
        })
        .collect();

    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| crate::tls::ListenerTls::build(t, &mut errors));
    let consumer_store = raw.consumers.store().and_then(|s| {
        let previous = previous.and_then(|p| p.consumer_store.as_ref());
        ConsumerStore::build(s, raw.redis.as_ref(), previous, &mut errors)
    });
    let authenticators = Authenticators::build(
        &raw.auth,
        &raw.consumers,
        consumer_store.clone(),
        &mut errors,
    );
    let redis = raw
        .redis
        .as_ref()
        .and_then(|r| RedisStore::build(r, &mut errors));
    let mut plans = Plans::build(&raw.plans, redis.as_ref(), &mut errors);
    if let Some(previous) = previous {
        plans.carry_over(&previous.plans);
    }
    for c in authenticators.registry().iter() {
        if let Some(plan) = c.plan.as_deref().filter(|p| !plans.contains(p)) {
            errors.push(ConfigError::new(
                format!("consumers.{}.plan", c.name),
                format!("unknown plan `{plan}` (declare it under `plans:`)"),
            ));
        }
    }
    // A service or global rate_limit policy has one set of counters, shared by every route that
    // inherits it: compiled once per config path.
    let mut shared = policy::Shared {
        plugin_cache_dir: plugin_cache_dir(raw, &mut errors),
        ..Default::default()
    };
    let mut specs = Vec::with_capacity(raw.routes.len());
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (index, r) in raw.routes.iter().enumerate() {
        let path = path_spec(r.matcher.path.as_deref(), r.matcher.path_type);
        let service = service_names
            .iter()
            .position(|n| **n == r.service)
            .unwrap_or_default();
        let svc = &services[service];
        let rewrite = match &r.rewrite {
            None => Rewrite::None,
            Some(rw) => {
                if let Some(p) = &rw.strip_prefix {
                    Rewrite::StripPrefix(trim_trailing_slash(p))
                } else if let Some(p) = &rw.replace_prefix {
                    Rewrite::ReplacePrefix(trim_trailing_slash(p))
                } else {
                    Rewrite::Template(parse_template(rw.path.as_deref().unwrap_or("/")))
                }
            }
        };
        specs.push(RouteSpec {
            hosts: r
                .matcher
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            path: path.clone(),
            methods: r
                .matcher
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            headers: r
                .matcher
                .headers
                .iter()
                .filter_map(|(name, cond)| {
                    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                    let cond = match cond {
                        RawHeaderMatch::Exact(v) => {
                            HeaderCond::Exact(HeaderValue::from_str(v).ok()?)
                        }
                        RawHeaderMatch::Rule(rule) => match (&rule.present, &rule.regex) {
                            (Some(p), _) => HeaderCond::Present(*p),
                            (None, Some(re)) => HeaderCond::Regex(regex::Regex::new(re).ok()?),
                            (None, None) => return None,
                        },
                    };
                    Some((name, cond))
                })
                .collect(),
        });
        let name: Arc<str> = r.name.as_str().into();
        routes.push(Route {
            metrics: registry.route(&name, &svc.name),
            name,
            service,
            path,
            rewrite,
            preserve_host: r.preserve_host,
            upgrades: r
                .upgrades
                .iter()
                .map(|u| u.to_ascii_lowercase().into())
                .collect(),
            escaped_slashes: r.escaped_slashes.unwrap_or(raw.paths.escaped_slashes),
            https_redirect: r.https_redirect,
            max_body_bytes: no_limit_if_zero(
                r.max_body_bytes.unwrap_or(raw.limits.max_body_bytes).0,
            ),
            timeout: r.timeout.map_or(svc.timeouts.request, |d| d.0),
            policies: route_policies(
                raw,
                index,
                &authenticators,
                redis.as_ref(),
                &mut shared,
                &mut errors,
            ),
            resilience: route_resilience(r, &svc.retry),
        });
    }
    if let Some(previous) = previous {
        inherit(&mut routes, previous);
    }
    // A service or global policy is compiled once per route that inherits it: report each of its
    // problems once.
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert((e.path.clone(), e.message.clone())));
    if !errors.is_empty() {
        return Err(errors);
    }
    let router = Router::build(&specs).map_err(|errs| {
        errs.into_iter()
            .map(|e| {
                let field = if e.message.contains("could never be chosen") {
                    "match"
                } else {
                    "match.path"
                };
                ConfigError::new(format!("routes[{}].{field}", e.route), e.message)
            })
            .collect::<Vec<_>>()
    })?;

    let workers = if raw.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        raw.workers
    };
    Ok(Plan {
        fingerprint,
        listen: raw.listen.clone(),
        workers,
        limits: Limits {
            max_header_bytes: raw.limits.max_header_bytes.0 as usize,
            max_uri_bytes: raw.limits.max_uri_bytes.0 as usize,
            max_connections: match raw.limits.max_connections {
                0 => usize::MAX,
                n => n,
            },
        },
        header_read_timeout: raw.timeouts.header_read.0,
        request_body_idle: raw.timeouts.request_body_idle.0,
        send_idle: raw.timeouts.send_idle.0,
        shutdown_grace: raw.timeouts.shutdown_grace.0,
        trusted_proxies: raw
            .trusted_proxies
            .iter()
            .filter_map(|c| parse_cidr(c))
            .collect(),
        paths: raw.paths.clone(),
        forwarding: Forwarding {
            x_forwarded: raw.forwarding.x_forwarded,
            forwarded: raw.forwarding.forwarded,
            via: raw
                .forwarding
                .via
                .then(|| HeaderValue::from_static("1.1 portico")),
        },
        access_log: AccessLogSettings {
            enabled: raw.access_log.enabled,
            format: raw.access_log.format,
            path: raw.access_log.path.clone(),
        },
        router,
        routes,
        services,
        identity_headers: authenticators.identity_headers.clone(),
        redis,
        consumer_store,
        file_consumers: Arc::clone(authenticators.registry()),
        plans,
        tls,
        metrics_enabled: raw.metrics.enabled,
        registry,
    })
}

/// Hands each route of a plan being built what its predecessor in `previous` built up: the
/// route's own breaker, and the counters and cached entries of rate-limit and cache policies
/// written the same way.
fn inherit(routes: &mut [Route], previous: &Plan) {
    use crate::policy::{cache, rate_limit};
    let rate_limits: Vec<_> = previous
        .routes
        .iter()
        .filter_map(|r| r.policies.rate_limit.as_ref())
        .collect();
    let caches: Vec<_> = previous
        .routes
        .iter()
        .filter_map(|r| r.policies.cache.as_ref())
        .collect();
    for route in routes {
        if let Some(p) = &mut route.policies.rate_limit {
            rate_limit::carry_over(&rate_limits, p);
        }
        if let Some(p) = &mut route.policies.cache {
            cache::carry_over(&caches, p);
        }
        let old = previous.routes.iter().find(|r| r.name == route.name);
        let old_breaker = old.and_then(|r| r.resilience.breaker.as_ref());
        upstream::inherit_breaker(&mut route.resilience.breaker, old_breaker);
    }
}

/// `plugins.cache_dir`, created if missing and made absolute (wasmtime's cache wants it so).
fn plugin_cache_dir(raw: &RawConfig, errors: &mut Vec<ConfigError>) -> Option<std::path::PathBuf> {
    let dir = raw.plugins.cache_dir.as_deref()?;
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::canonicalize(dir)) {
        Ok(dir) => Some(dir),
        Err(e) => {
            errors.push(ConfigError::new(
                "plugins.cache_dir",
                format!("cannot use {dir} as a directory: {e}"),
            ));
            None
        }
    }
}

/// The effective policies of route `index` (route, else service, else global), compiled.
fn route_policies(
    raw: &RawConfig,
    index: usize,
    authenticators: &Authenticators,
    redis: Option<&Arc<RedisStore>>,
    shared: &mut policy::Shared,
    errors: &mut Vec<ConfigError>,
) -> RoutePolicies {
    let route = &raw.routes[index];
    let service = raw
        .services
        .get(&route.service)
        .map_or(&[][..], |s| &s.policies[..]);
    let services: Vec<&String> = raw.services.keys().collect();
    let captures = route
        .matcher
        .path
        .as_deref()
        .map(super::validate::template_captures)
        .unwrap_or_default();
    let mut out = RoutePolicies::default();
    for policy in policy::effective([&route.policies, service, &raw.policies]) {
        // Errors point at the level the policy came from.
        let (level, id) = policy_path(raw, index, policy);
        let path = format!("{level}.{}", policy.key());
        let mut build = policy::Build {
            path: &path,
            id: &id,
            services: &services,
            captures: &captures,
            authenticators,
            redis,
            shared,
            errors,
        };
        out.compile(policy, &mut build);
        if out.split.is_some() && out.versioning.is_some() {
            errors.push(ConfigError::new(
                level,
                "a route chooses its service by `split` or by `versioning`, not both",
            ));
            out.versioning = None;
        }
    }
    out
}

/// Where a policy is written: its config path (for errors) and a name for the level it is
/// written at that survives reordering the file (for state shared across nodes).
fn policy_path(raw: &RawConfig, index: usize, policy: &RawPolicy) -> (String, String) {
    let route = &raw.routes[index];
    if let Some(i) = route.policies.iter().position(|p| std::ptr::eq(p, policy)) {
        return (
            format!("routes[{index}].policies[{i}]"),
            format!("route:{}", route.name),
        );
    }
    if let Some(svc) = raw.services.get(&route.service) {
        if let Some(i) = svc.policies.iter().position(|p| std::ptr::eq(p, policy)) {
            return (
                format!("services.{}.policies[{i}]", route.service),
                format!("service:{}", route.service),
            );
        }
    }
    let i = raw
        .policies
        .iter()
        .position(|p| std::ptr::eq(p, policy))
        .unwrap_or(0);
    (format!("policies[{i}]"), "global".to_string())
}

fn fingerprint(raw: &RawConfig) -> u64 {
    let text = serde_json::to_string(raw).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn trim_trailing_slash(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// The router's view of `match.path` / `match.path_type`.
pub fn path_spec(path: Option<&str>, path_type: Option<PathType>) -> PathSpec {
    let path = path.unwrap_or("/");
    if path.contains('{') {
        PathSpec::Template(path.to_string())
    } else if path_type == Some(PathType::Exact) {
        PathSpec::Exact(path.to_string())
    } else {
        PathSpec::Prefix(trim_trailing_slash(path))
    }
}

fn parse_template(tpl: &str) -> Vec<TemplatePart> {
    let mut parts = Vec::new();
    let mut rest = tpl;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            parts.push(TemplatePart::Literal(rest[..start].to_string()));
        }
        match rest[start..].find('}') {
            Some(len) => {
                let name = rest[start + 1..start + len].trim_start_matches('*');
                parts.push(TemplatePart::Capture(name.to_string()));
                rest = &rest[start + len + 1..];
            }
            None => {
                parts.push(TemplatePart::Literal(rest[start..].to_string()));
                rest = "";
            }
        }
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    parts
}

/// A route's retry (its own, else its service's), breaker, fallback and deadline header.
fn route_resilience(r: &RawRoute, service_retry: &Option<Arc<RetryPolicy>>) -> RouteResilience {
    RouteResilience {
        retry: match &r.retry {
            Some(own) => Some(Arc::new(RetryPolicy::compile(own))),
            None => service_retry.clone(),
        },
        breaker: r
            .circuit_breaker
            .as_ref()
            .map(|b| Arc::new(CircuitBreaker::new(b, format!("route {}", r.name).into()))),
        fallback: r.fallback.as_ref().map(Fallback::compile),
        deadline_header: r
            .deadline_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
    }
}

fn build_service(name: &str, svc: &RawService, errors: &mut Vec<ConfigError>) -> Service {
    let https = svc.targets.iter().any(|t| t.url.starts_with("https://"));
    let tls = crate::tls::upstream::ServiceTls::for_service(name, https, svc.tls.as_ref(), errors);
    let outlier = svc
        .outlier_detection
        .as_ref()
        .map(OutlierDetection::compile);
    let error_window = outlier.as_ref().and_then(|o| o.error_rate.map(|r| r.2));
    let targets: Vec<Arc<Target>> = svc
        .targets
        .iter()
        .filter_map(|t| {
            let (h2c, host, port) = parse_target_url(&t.url).ok()?;
            let address = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Address::Ip((ip, port).into()),
                Err(_) => Address::Dns {
                    host: host.clone(),
                    port,
                    refresh: svc.dns_refresh.0,
                    cache: ArcSwap::from_pointee(None),
                },
            };
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let tls = match &tls {
                Some(tls) if t.url.starts_with("https://") => Some(tls.for_host(&host)?),
                _ => None,
            };
            let h2 = h2c || (tls.is_some() && svc.tls.as_ref().is_some_and(|t| t.http2));
            Some(Arc::new(Target {
                id: upstream::target_id(&t.url),
                url: t.url.as_str().into(),
                authority: HeaderValue::from_str(&authority).ok()?,
                address,
                protocol: if h2 { Protocol::H2c } else { Protocol::Http1 },
                tls,
                weight: t.weight,
                in_flight: AtomicUsize::new(0),
                state: Arc::new(upstream::TargetState::new(error_window)),
            }))
        })
        .collect();
    let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
    let balancer = match &svc.load_balancing {
        RawLoadBalancing::RoundRobin => Balancer::round_robin(&weights),
        RawLoadBalancing::LeastRequest => Balancer::LeastRequest,
        RawLoadBalancing::Random => Balancer::random(&weights),
        RawLoadBalancing::ConsistentHash(on) => {
            let on = if let Some(h) = &on.header {
                HashOn::Header(HeaderName::from_bytes(h.as_bytes()).unwrap_or(http::header::HOST))
            } else if let Some(c) = &on.cookie {
                HashOn::Cookie(c.clone())
            } else {
                HashOn::ClientIp
            };
            let urls: Vec<(String, u32)> = targets
                .iter()
                .map(|t| (t.url.to_string(), t.weight))
                .collect();
            Balancer::consistent_hash(on, &urls)
        }
    };
    Service {
        name: name.into(),
        targets,
        balancer,
        timeouts: UpstreamTimeouts {
            connect: svc.timeouts.connect.0,
            request: svc.timeouts.request.0,
            idle: svc.timeouts.idle.0,
        },
        max_idle_per_target: svc.max_idle_per_target,
        own_http1: false,
        health_check: svc.health_check.as_ref().map(HealthCheck::compile),
        outlier,
        when_all_unhealthy: svc.when_all_unhealthy,
        breaker: svc
            .circuit_breaker
            .as_ref()
            .map(|b| Arc::new(CircuitBreaker::new(b, format!("service {name}").into()))),
        max_concurrent: svc
            .max_concurrent_requests
            .map(|n| Arc::new(ConcurrencyLimit::new(n))),
        // Given by `compile` from the plan's registry.
        metrics: crate::telemetry::metrics::ServiceMetrics::detached(),
        // One budget for the service, shared by every route that inherits the block.
        retry: svc
            .retry
            .as_ref()
            .map(|r| Arc::new(RetryPolicy::compile(r))),
    }
}

/// `0` in a limit that can sensibly be off means "no limit"; the request path then never has to
/// tell the two apart.
fn no_limit_if_zero(limit: u64) -> u64 {
    match limit {
        0 => u64::MAX,
        n => n,
    }
}
