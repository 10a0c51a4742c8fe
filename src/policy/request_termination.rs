//! The `request_termination` policy: the gateway answers the route itself with a fixed status,
//! body and headers, and the upstream is never called. For maintenance windows, retired APIs
//! (410) and stubs while a service is being built; Kong's plugin of the same name.
//!
//! It runs after authentication and rate limiting (as Kong's does), so a stubbed route still
//! needs its credentials and still counts against its limits. With `trigger`, it answers only
//! requests carrying that header or query parameter (a way to test the stub on a live route).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::body::GatewayBody;
use crate::spec::ConfigError;

/// The largest `body` accepted: a stub, not a file server.
const MAX_BODY: usize = 64 * 1024;

/// `- request_termination: {status: 503, message: "down for maintenance", headers: {retry-after: "600"}}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRequestTermination {
    /// The status answered (200–599). Default 503.
    #[serde(default)]
    pub status: Option<u16>,
    /// A message, answered as `{"message": ...}` (JSON). Default: the status's reason phrase.
    /// Not with `body`.
    #[serde(default)]
    pub message: Option<String>,
    /// A literal body (at most 64 KiB), answered with `content_type`. Not with `message`.
    #[serde(default)]
    pub body: Option<String>,
    /// The `Content-Type` of `body`. Default `text/plain; charset=utf-8`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Response headers to add (`retry-after`, `cache-control`, ...).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Answer only requests carrying this header or query parameter; others pass on to the
    /// upstream as if the policy were not there.
    #[serde(default)]
    pub trigger: Option<String>,
}

/// A compiled `request_termination` policy: the answer, made once.
#[derive(Debug)]
pub struct RequestTermination {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trigger: Option<HeaderName>,
}

impl RequestTermination {
    /// Compiles a `request_termination` entry.
    pub fn compile(raw: &RawRequestTermination, b: &mut super::Build<'_>) -> Option<Arc<Self>> {
        Self::build(raw, b.path, b.errors).map(Arc::new)
    }

    /// Checks and renders the answer; errors at `path.<key>`.
    pub fn build(
        raw: &RawRequestTermination,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        let code = raw.status.unwrap_or(503);
        let status = match StatusCode::from_u16(code) {
            Ok(s) if (200..=599).contains(&code) => s,
            _ => {
                errors.push(ConfigError::new(
                    format!("{path}.status"),
                    format!("`{code}` is not a final HTTP status (200–599)"),
                ));
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut headers = HeaderMap::new();
        let body = match (&raw.message, &raw.body) {
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new(
                    path,
                    "give `message` (a JSON answer) or `body`, not both",
                ));
                Bytes::new()
            }
            (None, Some(body)) => {
                if body.len() > MAX_BODY {
                    errors.push(ConfigError::new(
                        format!("{path}.body"),
                        format!("is {} bytes; at most {MAX_BODY}", body.len()),
                    ));
                }
                let content_type = raw
                    .content_type
                    .as_deref()
                    .unwrap_or("text/plain; charset=utf-8");
                match HeaderValue::from_str(content_type) {
                    Ok(v) => {
                        headers.insert(header::CONTENT_TYPE, v);
                    }
                    Err(_) => errors.push(ConfigError::new(
                        format!("{path}.content_type"),
                        "is not a valid header value",
                    )),
                }
                Bytes::from(body.clone())
            }
            (message, None) => {
                if raw.content_type.is_some() {
                    errors.push(ConfigError::new(
                        format!("{path}.content_type"),
                        "applies to `body` only (a `message` is answered as JSON)",
                    ));
                }
                let message = message
                    .as_deref()
                    .unwrap_or(status.canonical_reason().unwrap_or(""));
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                let mut json = serde_json::to_vec(&serde_json::json!({ "message": message }))
                    .unwrap_or_default();
                json.push(b'\n');
                Bytes::from(json)
            }
        };
        for (name, value) in &raw.headers {
            let at = format!("{path}.headers.{name}");
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), _) if is_framing(&n) => errors.push(ConfigError::new(
                    at,
                    "is set by the gateway (framing and connection headers cannot be configured)",
                )),
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                (Err(_), _) => errors.push(ConfigError::new(at, "is not a valid header name")),
                (_, Err(_)) => errors.push(ConfigError::new(at, "is not a valid header value")),
            }
        }
        let trigger = match raw.trigger.as_deref() {
            None => None,
            Some(t) => match HeaderName::from_bytes(t.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(ConfigError::new(
                        format!("{path}.trigger"),
                        "is not a valid header or query parameter name",
                    ));
                    None
                }
            },
        };
        (errors.len() == before).then_some(Self {
            status,
            headers,
            body,
            trigger,
        })
    }

    /// The answer for this request, or `None` when a `trigger` is set and the request does
    /// not carry it.
    pub fn answer(&self, request: &Parts) -> Option<Response<GatewayBody>> {
        if let Some(trigger) = &self.trigger {
            if !request.headers.contains_key(trigger) && !has_query_param(request, trigger) {
                return None;
            }
        }
        let mut resp = Response::new(GatewayBody::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        Some(resp)
    }
}

/// Headers whose value the gateway owns on every answer.
fn is_framing(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::UPGRADE,
    ]
    .contains(name)
}

/// Whether the query has a parameter named `name` (`?name`, `?name=`, `?a=1&name=x`), in any
/// case: the trigger is written once for both places, and header names have none.
fn has_query_param(request: &Parts, name: &HeaderName) -> bool {
    request.uri.query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            key.eq_ignore_ascii_case(name.as_str())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<RequestTermination, Vec<ConfigError>> {
        let raw: RawRequestTermination = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        RequestTermination::build(&raw, "p", &mut errors).ok_or(errors)
    }

    fn parts(uri: &str, header: Option<&str>) -> Parts {
        let mut req = http::Request::get(uri);
        if let Some(h) = header {
            req = req.header(h, "1");
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_default_is_a_503_json_answer() {
        let t = build("{}").unwrap();
        let resp = t.answer(&parts("/", None)).unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(&t.body[..], b"{\"message\":\"Service Unavailable\"}\n");
    }

    #[test]
    fn a_trigger_answers_only_requests_carrying_it() {
        let t = build("{status: 200, body: stub, trigger: x-stub}").unwrap();
        assert!(t.answer(&parts("/a", None)).is_none());
        assert!(t.answer(&parts("/a?x-stubby=1", None)).is_none());
        assert!(t.answer(&parts("/a", Some("x-stub"))).is_some());
        assert!(t.answer(&parts("/a?b=2&x-stub", None)).is_some());
        assert!(t.answer(&parts("/a?x-stub=yes", None)).is_some());
        let mixed = build("{status: 200, body: stub, trigger: X-Stub}").unwrap();
        assert!(mixed.answer(&parts("/a?X-Stub", None)).is_some());
        assert!(mixed.answer(&parts("/a", Some("x-stub"))).is_some());
        assert!(mixed.answer(&parts("/a?X-Stubby", None)).is_none());
    }

    #[test]
    fn mistakes_are_reported_at_their_key() {
        let errors = build("{status: 101}").unwrap_err();
        assert_eq!(errors[0].path, "p.status");
        let errors = build("{message: a, body: b}").unwrap_err();
        assert_eq!(errors[0].path, "p");
        let errors = build("{headers: {content-length: \"5\"}}").unwrap_err();
        assert_eq!(errors[0].path, "p.headers.content-length");
        let errors = build("{message: a, content_type: text/html}").unwrap_err();
        assert_eq!(errors[0].path, "p.content_type");
    }
}
