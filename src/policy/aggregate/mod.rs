//! Aggregation (Backend-for-Frontend): an `aggregate` policy answers the route itself by calling
//! several services and merging their JSON answers into one response.
//!
//! Owns the call graph (which call reads which earlier answer), the fan-out, per-call timeouts,
//! the partial-failure policy and the shaping of results. A call may read an earlier call's
//! answer (`${calls.user.body.id}`): it starts as soon as every call it names has answered, so
//! calls without such references all start at once. Each call goes through its service's
//! breaker, concurrency cap, retries, balancer, outlier detection and the per-worker connection
//! pools (the same `proxy::retry::forward` a proxied request takes); the route's `timeout`
//! bounds the whole fan-out. When the client goes away the response future is dropped, and with
//! it the `JoinSet`, which aborts every call still running.
//!
//! Not owned here: the route's own policies (auth, rate limits, transforms), which run before.

mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::transform::Template;
use crate::spec::units::Dur;
use crate::spec::ConfigError;

/// `X-Portico-Partial: true` on a response missing optional results.
pub const X_PORTICO_PARTIAL: HeaderName = HeaderName::from_static("x-portico-partial");

/// `- aggregate: {calls: [...]}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// The calls. Those that read no other call's answer start at once; the others as soon as
    /// the calls they name have answered.
    pub calls: Vec<RawCall>,
}

/// One backend call.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    /// Name, used in errors, in `${calls.NAME...}` references and as the default `under` key.
    pub name: String,
    /// The service called.
    pub service: String,
    /// Method. Default GET.
    #[serde(default = "get")]
    pub method: String,
    /// Path and query, a template (`/users/${path.id}?expand=${query.expand}`); may read an
    /// earlier call's answer: `/orders?user=${calls.user.body.id}` (values are percent-encoded).
    pub path: String,
    /// Headers set on this call (templates, `${calls.NAME...}` included), besides the client's
    /// request headers, which every call gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for this call (bounded by what is left of the route's timeout). Default:
    /// the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// `true` (default): a failure fails the whole response with 502. `false`: the result is
    /// `null`, the failure is listed in `errors` and `X-Portico-Partial: true` is set.
    #[serde(default = "yes")]
    pub required: bool,
    /// Key the result goes under. Default: the call's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under: Option<String>,
    /// Merge the result's fields at the top level instead.
    #[serde(default)]
    pub merge: bool,
    /// Keep only these top-level fields of the result (allow-list). Empty: keep all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pick: Vec<String>,
}

fn get() -> String {
    "GET".into()
}
fn yes() -> bool {
    true
}

/// A compiled call.
struct Call {
    name: Arc<str>,
    service: usize,
    method: Method,
    path: Template,
    headers: Vec<(HeaderName, Template)>,
    /// Calls whose answers this one reads (indexes, sorted, no duplicates).
    deps: Vec<usize>,
    timeout: Option<Duration>,
    required: bool,
    under: String,
    merge: bool,
    pick: Vec<String>,
}

/// A compiled `aggregate` policy.
pub struct AggregatePolicy {
    calls: Vec<Call>,
}

impl AggregatePolicy {
    /// Compiles an `aggregate` entry for the route's path captures.
    pub fn compile(raw: &RawAggregate, b: &mut crate::policy::Build<'_>) -> Option<Arc<Self>> {
        Self::build(raw, b.path, b.services, b.captures, b.errors).map(Arc::new)
    }

    /// Compiles a policy written at `path`.
    pub fn build(
        raw: &RawAggregate,
        path: &str,
        services: &[&String],
        captures: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        if raw.calls.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.calls"),
                "list at least one call",
            ));
        }
        let names: Vec<&str> = raw.calls.iter().map(|c| c.name.as_str()).collect();
        let mut calls = Vec::new();
        for (i, c) in raw.calls.iter().enumerate() {
            let at = format!("{path}.calls[{i}]");
            if let Some(call) = build_call(c, &at, services, captures, &names, errors) {
                if call.deps.contains(&i) {
                    errors.push(ConfigError::new(
                        at,
                        format!("call `{}` reads its own answer", c.name),
                    ));
                }
                calls.push(call);
            }
            if names[..i].contains(&c.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{path}.calls[{i}].name"),
                    "names must be unique",
                ));
            }
        }
        if errors.len() == before {
            if let Some((first, cycle)) = find_cycle(&calls) {
                errors.push(ConfigError::new(
                    format!("{path}.calls[{first}]"),
                    format!("calls depend on each other in a cycle: {cycle}"),
                ));
            }
        }
        (errors.len() == before).then_some(AggregatePolicy { calls })
    }
}

fn build_call(
    c: &RawCall,
    at: &str,
    services: &[&String],
    captures: &[String],
    names: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Option<Call> {
    let service = services.iter().position(|n| **n == c.service);
    if service.is_none() {
        errors.push(ConfigError::new(
            format!("{at}.service"),
            format!("no service named `{}`", c.service),
        ));
    }
    let method = Method::from_bytes(c.method.as_bytes()).ok();
    if method.is_none() {
        errors.push(ConfigError::new(
            format!("{at}.method"),
            "not a valid method",
        ));
    }
    if !c.path.starts_with('/') {
        errors.push(ConfigError::new(
            format!("{at}.path"),
            "must start with `/`",
        ));
    }
    let template = |text: &str, key: String, errors: &mut Vec<ConfigError>| match Template::parse_in(
        text, captures, names,
    ) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(ConfigError::new(key, e));
            None
        }
    };
    let path = template(&c.path, format!("{at}.path"), errors);
    let mut headers = Vec::new();
    let mut headers_ok = true;
    for (name, value) in &c.headers {
        let key = format!("{at}.headers.{name}");
        let value = template(value, key.clone(), errors);
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => headers.extend(value.map(|v| (name, v))),
            Err(_) => {
                errors.push(ConfigError::new(key, "not a valid header name"));
                headers_ok = false;
            }
        }
    }
    let (service, method, path) = (service?, method?, path?);
    if !headers_ok || headers.len() != c.headers.len() {
        return None;
    }
    let mut deps: Vec<usize> = path
        .call_refs()
        .chain(headers.iter().flat_map(|(_, t)| t.call_refs()))
        .collect();
    deps.sort_unstable();
    deps.dedup();
    Some(Call {
        name: c.name.as_str().into(),
        service,
        method,
        path,
        headers,
        deps,
        timeout: c.timeout.map(|d| d.0),
        required: c.required,
        under: c.under.clone().unwrap_or_else(|| c.name.clone()),
        merge: c.merge,
        pick: c.pick.clone(),
    })
}

/// A dependency cycle, if any: the index of a call on it and the cycle written out
/// (`a → b → a`). Calls on a cycle could never start.
fn find_cycle(calls: &[Call]) -> Option<(usize, String)> {
    // Kahn's algorithm: what is never freed lies on a cycle or behind one.
    let mut waiting: Vec<usize> = calls.iter().map(|c| c.deps.len()).collect();
    let mut ready: Vec<usize> = (0..calls.len()).filter(|&i| waiting[i] == 0).collect();
    let mut freed = vec![false; calls.len()];
    while let Some(i) = ready.pop() {
        freed[i] = true;
        for (j, c) in calls.iter().enumerate() {
            if c.deps.contains(&i) {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    let start = freed.iter().position(|f| !f)?;
    // Every unfreed call waits for an unfreed call: walking that way must come back round.
    let mut walk = vec![start];
    loop {
        let here = *walk.last()?;
        let next = *calls[here].deps.iter().find(|d| !freed[**d])?;
        if let Some(at) = walk.iter().position(|w| *w == next) {
            let on: Vec<&str> = walk[at..]
                .iter()
                .chain(std::iter::once(&next))
                .map(|i| &*calls[*i].name)
                .collect();
            return Some((next, on.join(" → ")));
        }
        walk.push(next);
    }
}
