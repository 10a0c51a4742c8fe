//! `portico explain`: which route a request would take and why, without sending anything.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::plan::Rewrite;
use crate::config::raw::{RawHeaderMatch, RawLoadBalancing, RawRoute};
use crate::router::{normalize_host, Match, PathSpec};

/// Why `explain` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The method is not a valid HTTP method.
    #[error("`{0}` is not an HTTP method")]
    Method(String),
    /// The URL does not parse.
    #[error("`{0}` is not a URL (try http://host/path)")]
    Url(String),
    /// A `-H` argument is not `name: value`.
    #[error("`{0}` is not a header (expected `name: value`)")]
    Header(String),
    /// The path would be refused before routing.
    #[error("the gateway answers 400: {0}")]
    Path(&'static str),
}

/// The OpenAPI operation a request is on a route with an `openapi` policy.
fn describe_operation(
    api: &crate::policy::openapi::OpenApiPolicy,
    method: &Method,
    path: &str,
) -> String {
    use crate::policy::openapi::Lookup;
    let spec = &api.spec_file;
    match api.find(method, path) {
        Lookup::Found(i, _) => {
            let op = &api.operations[i];
            format!(
                "  openapi operation `{}` ({} {} in {spec})",
                op.id, op.method, op.path
            )
        }
        Lookup::NoPath if api.strict || api.mock => {
            format!("  openapi: no operation of {spec} has this path: answered 404")
        }
        Lookup::NoMethod(allow) if api.strict || api.mock => {
            format!("  openapi: {spec} allows {allow} on this path: answered 405")
        }
        _ => format!("  openapi: no operation of {spec} matches: passed on unchecked"),
    }
}

/// Describes, in plain text, how `plan` would handle `METHOD url` with `headers`.
pub fn explain(
    loaded: &crate::config::Loaded,
    method: &str,
    url: &str,
    headers: &[String],
) -> Result<String, ExplainError> {
    let plan = &loaded.plan;
    let method = Method::from_bytes(method.to_uppercase().as_bytes())
        .map_err(|_| ExplainError::Method(method.to_string()))?;
    let uri: Uri = url
        .parse()
        .map_err(|_| ExplainError::Url(url.to_string()))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| ExplainError::Header(h.clone()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ExplainError::Header(h.clone()))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::Header(h.clone()))?;
        map.append(name, value);
    }
    let host_raw = uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            map.get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let host = normalize_host(&host_raw);
    let normalized = crate::router::normalize::normalize(uri.path(), &plan.paths)
        .map_err(|e| ExplainError::Path(e.message()))?;
    let key = crate::router::normalize::routing_key(&normalized);
    let path: &str = &key;
    let mut out = String::new();
    let _ = writeln!(out, "request: {method} host={host:?} path={path:?}");
    if path != uri.path() {
        let _ = writeln!(out, "normalised from {:?} (see `paths:`)", uri.path());
    }
    match plan.router.find(&host, path, &method, &map) {
        Match::Found(found) => {
            let route = &plan.routes[found.route];
            let service = &plan.services[route.service];
            let _ = writeln!(out, "matched route #{} `{}`", found.route, route.name);
            let raw = &loaded.raw.routes[found.route];
            let hosts = if raw.matcher.hosts.is_empty() {
                "any host".to_string()
            } else {
                raw.matcher.hosts.join(", ")
            };
            let path_desc = match &route.path {
                PathSpec::Prefix(p) => format!("path prefix {p}"),
                PathSpec::Exact(p) => format!("exact path {p}"),
                PathSpec::Template(p) => format!("path template {p}"),
            };
            let methods = if raw.matcher.methods.is_empty() {
                "any method".to_string()
            } else {
                raw.matcher.methods.join(", ")
            };
            let _ = writeln!(
                out,
                "  because: {hosts}; {path_desc}; {methods}; {} header condition(s)",
                raw.matcher.headers.len()
            );
            for (k, v) in found.params.iter() {
                let _ = writeln!(out, "  capture {k} = {v:?}");
            }
            let rewrite = match &route.rewrite {
                Rewrite::None => "none".to_string(),
                Rewrite::StripPrefix(p) => format!("strip_prefix {p}"),
                Rewrite::ReplacePrefix(p) => format!("replace_prefix {p}"),
                Rewrite::Template(_) => format!(
                    "path {}",
                    raw.rewrite
                        .as_ref()
                        .and_then(|r| r.path.clone())
                        .unwrap_or_default()
                ),
            };
            let _ = writeln!(out, "  rewrite: {rewrite}");
            if let Some(api) = &route.policies.openapi {
                let _ = writeln!(out, "{}", describe_operation(api, &method, path));
            }
            let _ = writeln!(
                out,
                "service `{}` (load balancing: {})",
                service.name,
                describe_lb(&loaded.raw.services[&*service.name].load_balancing)
            );
            for t in &service.targets {
                let _ = writeln!(out, "  target {} weight {}", t.url, t.weight);
            }
            let _ = writeln!(
                out,
                "timeouts: connect {:?}, request {:?}, idle {:?}; max body {}",
                service.timeouts.connect,
                route.timeout,
                service.timeouts.idle,
                match route.max_body_bytes {
                    u64::MAX => "unlimited".to_string(),
                    n => format!("{n} bytes"),
                }
            );
            let raw_service = loaded.raw.services.get(&raw.service);
            let service_policies = raw_service.map_or(&[][..], |s| &s.policies[..]);
            let effective =
                crate::policy::effective([&raw.policies, service_policies, &loaded.raw.policies]);
            if effective.is_empty() {
                let _ = writeln!(out, "policies: none");
            } else {
                let _ = writeln!(out, "policies:");
                for p in effective {
                    let level = if raw.policies.iter().any(|q| std::ptr::eq(q, p)) {
                        "route"
                    } else if service_policies.iter().any(|q| std::ptr::eq(q, p)) {
                        "service"
                    } else {
                        "global"
                    };
                    // Policy settings hold names and limits, never credentials.
                    let text = serde_json::to_string(p).unwrap_or_default();
                    let _ = writeln!(out, "  {text} (from the {level} level)");
                }
            }
        }
        Match::MethodNotAllowed(allowed) => {
            let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let _ = writeln!(
                out,
                "no route: the path matches, but {method} is not allowed (405); allowed: {}",
                allowed.join(", ")
            );
        }
        Match::NotFound => {
            let _ = writeln!(out, "no route matches (404)");
            for (i, r) in loaded.raw.routes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  route #{i} `{}`: {}",
                    r.name,
                    why_not(r, &plan.routes[i].path, &host, path, &method, &map)
                );
            }
        }
    }
    Ok(out)
}

fn describe_lb(lb: &RawLoadBalancing) -> String {
    match lb {
        RawLoadBalancing::RoundRobin => "round_robin".into(),
        RawLoadBalancing::LeastRequest => "least_request".into(),
        RawLoadBalancing::Random => "random".into(),
        RawLoadBalancing::ConsistentHash(on) => match (&on.header, &on.cookie) {
            (Some(h), _) => format!("consistent_hash on header {h}"),
            (None, Some(c)) => format!("consistent_hash on cookie {c}"),
            (None, None) => "consistent_hash on client_ip".into(),
        },
    }
}

/// The first condition of `route` that the request fails, in the router's order of comparison
/// (host, path, headers, method). Only used when nothing matched, so it need not be fast.
fn why_not(
    route: &RawRoute,
    spec: &PathSpec,
    host: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> String {
    let m = &route.matcher;
    let host_ok = m.hosts.is_empty()
        || m.hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => h == host,
            }
        });
    if !host_ok {
        return format!("host {host:?} is not one of {}", m.hosts.join(", "));
    }
    let path_ok = match spec {
        PathSpec::Prefix(p) => {
            p == "/"
                || path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        }
        PathSpec::Exact(p) => path == p,
        PathSpec::Template(t) => {
            let mut one = matchit::Router::new();
            one.insert(t.as_str(), ()).is_ok() && one.at(path).is_ok()
        }
    };
    if !path_ok {
        let what = match spec {
            PathSpec::Prefix(p) => format!("under the prefix {p}"),
            PathSpec::Exact(p) => format!("exactly {p}"),
            PathSpec::Template(t) => format!("matched by the template {t}"),
        };
        return format!("path {path:?} is not {what}");
    }
    for (name, cond) in &m.headers {
        let value = headers.get(name.as_str());
        let text = value.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let fails = match cond {
            RawHeaderMatch::Exact(want) => text.as_deref() != Some(want.as_str()),
            RawHeaderMatch::Rule(rule) => match (&rule.present, &rule.regex) {
                (Some(p), _) => *p != value.is_some(),
                (None, Some(re)) => !text
                    .as_deref()
                    .is_some_and(|t| regex::Regex::new(re).is_ok_and(|re| re.is_match(t))),
                (None, None) => false,
            },
        };
        if fails {
            let want = match cond {
                RawHeaderMatch::Exact(v) => format!("= {v:?}"),
                RawHeaderMatch::Rule(r) => match (&r.present, &r.regex) {
                    (Some(true), _) => "present".to_string(),
                    (Some(false), _) => "absent".to_string(),
                    (None, Some(re)) => format!("matching /{re}/"),
                    (None, None) => String::new(),
                },
            };
            let got = match &text {
                Some(t) => format!("{t:?}"),
                None => "absent".to_string(),
            };
            return format!("header {name} must be {want}, but it is {got}");
        }
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == method.as_str()) {
        return format!("method {method} is not one of {}", m.methods.join(", "));
    }
    "matches, but a more specific route takes precedence".to_string()
}
