//! Aggregation (Backend-for-Frontend): an `aggregate` policy answers the route itself by calling
//! several services concurrently and merging their JSON answers into one response.
//!
//! Owns the fan-out, per-call timeouts, the partial-failure policy and the shaping of results.
//! Each call goes through the core's balancer and per-worker connection pools; the route's
//! `timeout` bounds the whole fan-out. When the client goes away the response future is dropped,
//! and with it the `JoinSet`, which aborts every call still running.
//!
//! Not done yet (see the issue): calls that use an earlier call's response
//! (`${calls.user.body.id}`), retries and breakers per call.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::units::Dur;
use crate::config::ConfigError;
use crate::error::GatewayError;
use crate::policy::transform::{Facts, RequestData, Template};
use crate::proxy::body::{GatewayBody, RequestBody};
use crate::proxy::client;
use crate::telemetry::trace::{ClientSpan, Trace};
use crate::upstream::Service;

/// `X-Portico-Partial: true` on a response missing optional results.
pub const X_PORTICO_PARTIAL: HeaderName = HeaderName::from_static("x-portico-partial");

/// `- aggregate: {calls: [...]}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// The calls, all started at once.
    pub calls: Vec<RawCall>,
}

/// One backend call.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    /// Name, used in errors and as the default `under` key.
    pub name: String,
    /// The service called.
    pub service: String,
    /// Method. Default GET.
    #[serde(default = "get")]
    pub method: String,
    /// Path and query, a template (`/users/${path.id}?expand=${query.expand}`).
    pub path: String,
    /// Time allowed for this call (bounded by the route's timeout). Default: the route's.
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

struct Call {
    name: Arc<str>,
    service: usize,
    method: Method,
    path: Template,
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
        let mut calls = Vec::new();
        for (i, c) in raw.calls.iter().enumerate() {
            let at = format!("{path}.calls[{i}]");
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
            let template = match Template::parse(&c.path, captures) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{at}.path"), e));
                    None
                }
            };
            if raw.calls[..i].iter().any(|o| o.name == c.name) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    "names must be unique",
                ));
            }
            if let (Some(service), Some(method), Some(path)) = (service, method, template) {
                calls.push(Call {
                    name: c.name.as_str().into(),
                    service,
                    method,
                    path,
                    timeout: c.timeout.map(|d| d.0),
                    required: c.required,
                    under: c.under.clone().unwrap_or_else(|| c.name.clone()),
                    merge: c.merge,
                    pick: c.pick.clone(),
                });
            }
        }
        (errors.len() == before).then_some(AggregatePolicy { calls })
    }

    /// Runs every call concurrently and merges the answers. `headers` are forwarded to each
    /// call (identity headers and the request id included; the gateway already removed
    /// hop-by-hop headers and credentials the auth policy consumed). Each call is a span of
    /// its own in the request's `trace`.
    pub async fn run(
        &self,
        services: &[Arc<Service>],
        headers: &HeaderMap,
        facts: &Facts<'_>,
        client_ip: IpAddr,
        deadline: Duration,
        trace: &Trace,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let data = RequestData { headers, facts };
        let mut forwarded = headers.clone();
        for h in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::HOST] {
            forwarded.remove(h);
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, call) in self.calls.iter().enumerate() {
            let service = Arc::clone(&services[call.service]);
            let target_path = call.path.render(&data);
            let method = call.method.clone();
            let mut headers = forwarded.clone();
            let span_id = trace.stamp(&mut headers);
            let span = ClientSpan::start(trace, span_id, &method, 1, Some(&call.name));
            let timeout = call.timeout.map_or(deadline, |t| t.min(deadline));
            let sending = Sending {
                method,
                headers,
                client_ip,
                timeout,
                span,
            };
            set.spawn(async move { (i, one(&service, &target_path, sending).await) });
        }
        let mut results: Vec<Option<Result<Value, String>>> = vec![None; self.calls.len()];
        let all = async {
            while let Some(done) = set.join_next().await {
                if let Ok((i, r)) = done {
                    results[i] = Some(r);
                }
            }
        };
        let _ = tokio::time::timeout(deadline, all).await;
        let mut out = Map::new();
        let mut errors = Vec::new();
        for (call, result) in self.calls.iter().zip(results) {
            let result = result.unwrap_or_else(|| Err(format!("no answer within {deadline:?}")));
            match result {
                Ok(mut v) => {
                    if let (false, Value::Object(m)) = (call.pick.is_empty(), &mut v) {
                        m.retain(|k, _| call.pick.contains(k));
                    }
                    match (call.merge, v) {
                        (true, Value::Object(m)) => out.extend(m),
                        (_, v) => {
                            out.insert(call.under.clone(), v);
                        }
                    }
                }
                Err(e) if call.required => {
                    return Err(GatewayError::UpstreamProtocol(format!(
                        "aggregate call `{}` failed: {e}",
                        call.name
                    )))
                }
                Err(e) => {
                    if !call.merge {
                        out.insert(call.under.clone(), Value::Null);
                    }
                    errors.push(serde_json::json!({"call": &*call.name, "error": e}));
                }
            }
        }
        let partial = !errors.is_empty();
        if partial {
            out.insert("errors".into(), Value::Array(errors));
        }
        let body = Bytes::from(serde_json::to_vec(&Value::Object(out)).unwrap_or_default());
        let mut resp = Response::new(GatewayBody::full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if partial {
            resp.headers_mut()
                .insert(X_PORTICO_PARTIAL, HeaderValue::from_static("true"));
        }
        Ok(resp)
    }
}

/// One call's request, ready to go.
struct Sending {
    method: Method,
    headers: HeaderMap,
    client_ip: IpAddr,
    timeout: Duration,
    /// The call's client span (recorded requests only).
    span: Option<ClientSpan>,
}

async fn one(service: &Service, path: &str, sending: Sending) -> Result<Value, String> {
    let Sending {
        method,
        headers,
        client_ip,
        timeout,
        span,
    } = sending;
    let path = PathAndQuery::try_from(path).map_err(|_| format!("invalid path `{path}`"))?;
    let Some(index) = service.pick(&headers, client_ip, None) else {
        if let Some(span) = span {
            span.end(None, Err("no_healthy_upstream"));
        }
        return Err(format!("no healthy target in service {}", service.name));
    };
    let target = &service.targets[index];
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = method;
    *req.headers_mut() = headers;
    let (mut parts, body) = req.into_parts();
    crate::proxy::retry::prepare(&mut parts, target, false, None, &path)
        .map_err(|e| e.to_string())?;
    let work = async {
        let sent = client::send(service, target, Request::from_parts(parts, body), timeout).await;
        crate::proxy::retry::end_span(span, target, &path, &sent);
        let sent = sent.map_err(|e| e.to_string())?;
        let status = sent.response.status();
        let bytes = sent
            .response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if let Some(p) = sent.pooled {
            p.release();
        }
        if !status.is_success() {
            return Err(format!("{} answered {}", service.name, status.as_u16()));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|_| format!("{} answered with a body that is not JSON", service.name))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{} did not answer within {timeout:?}",
            service.name
        )),
    }
}
