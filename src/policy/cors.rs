//! The `cors` policy: answers CORS preflights at the gateway and adds the CORS response headers
//! to upstream responses for allowed origins.
//!
//! Owns origin matching (exact, `*`, or one `*` wildcard such as `https://*.example.com`), the
//! preflight decision and the header values (precomputed at load). A preflight is answered
//! before authentication (browsers send no credentials on it) and never reaches the upstream.
//! An actual request from an origin that is not allowed is passed on without CORS headers: the
//! browser withholds the response, and non-browser clients are unaffected.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::spec::units::Dur;
use crate::spec::ConfigError;

/// `- cors: {allow_origins: ["https://app.example.com"], allow_credentials: true}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Allowed origins: exact (`https://app.example.com`), `*` (any; not with credentials) or
    /// with one `*` wildcard (`https://*.example.com`, which does not match the bare domain).
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default: GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive). Empty (default): any
    /// requested header is allowed and echoed back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, HTTP auth).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur>,
}

#[derive(Debug)]
enum Origin {
    Any,
    Exact(String),
    Wildcard(String, String),
}

/// A compiled `cors` policy.
#[derive(Debug)]
pub struct CorsPolicy {
    origins: Vec<Origin>,
    methods: Vec<Method>,
    methods_header: HeaderValue,
    headers: Option<Vec<String>>,
    headers_header: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl CorsPolicy {
    /// Compiles a `cors` entry.
    pub fn compile(
        raw: &RawCors,
        b: &mut crate::policy::Build<'_>,
    ) -> Option<std::sync::Arc<Self>> {
        Self::build(raw, b.path, b.errors).map(std::sync::Arc::new)
    }

    /// Compiles a policy written at `path`.
    pub fn build(raw: &RawCors, path: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let before = errors.len();
        if raw.allow_origins.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.allow_origins"),
                "list at least one origin (or `*`)",
            ));
        }
        let mut origins = Vec::new();
        for (i, o) in raw.allow_origins.iter().enumerate() {
            let at = format!("{path}.allow_origins[{i}]");
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                if raw.allow_credentials {
                    errors.push(ConfigError::new(
                        at,
                        "`*` cannot be used with `allow_credentials: true` (browsers refuse it); \
                         list the origins",
                    ));
                }
                origins.push(Origin::Any);
            } else if !(o.starts_with("http://") || o.starts_with("https://")) {
                errors.push(ConfigError::new(
                    at,
                    "an origin is `scheme://host[:port]`, e.g. `https://app.example.com`",
                ));
            } else if let Some((a, b)) = o.split_once('*') {
                if b.contains('*') {
                    errors.push(ConfigError::new(at, "at most one `*` in an origin"));
                }
                origins.push(Origin::Wildcard(a.to_string(), b.to_string()));
            } else {
                origins.push(Origin::Exact(o));
            }
        }
        let methods: Vec<Method> = if raw.allow_methods.is_empty() {
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("static method"))
                .collect()
        } else {
            raw.allow_methods
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match Method::from_bytes(m.as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        errors.push(ConfigError::new(
                            format!("{path}.allow_methods[{i}]"),
                            "not a valid method",
                        ));
                        None
                    }
                })
                .collect()
        };
        let list = |items: &[String], key: &str, errors: &mut Vec<ConfigError>| {
            for (i, h) in items.iter().enumerate() {
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errors.push(ConfigError::new(
                        format!("{path}.{key}[{i}]"),
                        "not a valid header name",
                    ));
                }
            }
            (!items.is_empty())
                .then(|| HeaderValue::from_str(&items.join(", ")).ok())
                .flatten()
        };
        let headers_header = list(&raw.allow_headers, "allow_headers", errors);
        let expose = list(&raw.expose_headers, "expose_headers", errors);
        let methods_header = HeaderValue::from_str(
            &methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        )
        .ok()?;
        let max_age = raw
            .max_age
            .map(|d| HeaderValue::from(d.0.as_secs().min(Duration::from_secs(86_400).as_secs())));
        (errors.len() == before).then(|| CorsPolicy {
            origins,
            methods,
            methods_header,
            headers: (!raw.allow_headers.is_empty()).then(|| {
                raw.allow_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect()
            }),
            headers_header,
            expose,
            credentials: raw.allow_credentials,
            max_age,
        })
    }

    fn allows_origin(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => *e == origin,
            Origin::Wildcard(a, b) => {
                origin.len() > a.len() + b.len()
                    && origin.starts_with(a.as_str())
                    && origin.ends_with(b.as_str())
                    // The wildcard stands for host labels, never for a path or a port.
                    && !origin[a.len()..origin.len() - b.len()].contains(['/', ':'])
            }
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request with these headers, when its
    /// origin is allowed.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        if !self.allows_origin(origin.to_str().ok()?) {
            return None;
        }
        // `*` is only answered as such without credentials and when every origin is allowed;
        // otherwise the origin is echoed (and `Vary: Origin` keeps caches honest).
        if !self.credentials && self.origins.iter().any(|o| matches!(o, Origin::Any)) {
            return Some(HeaderValue::from_static("*"));
        }
        Some(origin.clone())
    }

    /// Adds the CORS headers of an actual (non-preflight) response.
    pub fn apply(&self, h: &mut HeaderMap, allow_origin: Option<HeaderValue>) {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = allow_origin else {
            return;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }

    /// Answers a preflight: 204 with the CORS headers, or 403 saying what was refused.
    pub fn preflight<B>(&self, req: &Request<B>) -> Result<Response<GatewayBody>, GatewayError> {
        let h = req.headers();
        let Some(origin) = self.allowed_origin(h) else {
            return Err(GatewayError::Forbidden {
                message: "CORS preflight refused: the origin is not allowed",
                by: crate::error::Refuser::Cors,
            });
        };
        let method = h
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.is_some_and(|m| self.methods.contains(&m)) {
            return Err(GatewayError::Forbidden {
                message: "CORS preflight refused: the requested method is not allowed",
                by: crate::error::Refuser::Cors,
            });
        }
        let requested = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let (Some(allowed), Some(req_headers)) = (&self.headers, requested) {
            let text = req_headers.to_str().unwrap_or("\u{0}");
            let ok = text
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .all(|s| allowed.contains(&s));
            if !ok {
                return Err(GatewayError::Forbidden {
                    message: "CORS preflight refused: a requested header is not allowed",
                    by: crate::error::Refuser::Cors,
                });
            }
        }
        let mut resp = Response::new(GatewayBody::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_header.clone(),
        );
        match (&self.headers_header, requested) {
            (Some(v), _) => {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            (None, Some(v)) => {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            (None, None) => {}
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(m) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, m.clone());
        }
        out.insert(header::VARY, VARY_PREFLIGHT);
        Ok(resp)
    }
}

/// The method a CORS preflight asks about: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. `None` for every other request.
pub fn preflight_method<B>(req: &Request<B>) -> Option<Method> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(header::ORIGIN) {
        return None;
    }
    Method::from_bytes(
        req.headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
            .as_bytes(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> CorsPolicy {
        let raw: RawCors = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        CorsPolicy::build(&raw, "p", &mut errors).unwrap_or_else(|| panic!("{errors:?}"))
    }

    #[test]
    fn origins_match_exactly_or_by_one_wildcard_label_set() {
        let p = policy("allow_origins: [\"https://app.example.com\", \"https://*.acme.io\"]");
        assert!(p.allows_origin("https://app.example.com"));
        assert!(p.allows_origin("HTTPS://App.Example.com"));
        assert!(!p.allows_origin("http://app.example.com"));
        assert!(p.allows_origin("https://x.y.acme.io"));
        assert!(!p.allows_origin("https://acme.io"));
        assert!(!p.allows_origin("https://evil.com/.acme.io"));
        assert!(!p.allows_origin("https://evil.com:1.acme.io"));
    }

    #[test]
    fn star_with_credentials_and_bad_entries_are_config_errors() {
        let raw: RawCors = serde_yaml_ng::from_str(
            "{allow_origins: [\"*\", \"app.example.com\"], allow_credentials: true, allow_methods: [\"B D\"]}",
        )
        .unwrap();
        let mut errors = Vec::new();
        assert!(CorsPolicy::build(&raw, "p", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "p.allow_origins[0]",
                "p.allow_origins[1]",
                "p.allow_methods[0]"
            ]
        );
    }
}
