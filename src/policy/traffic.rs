//! Traffic policies that choose the service of a request: `split` (weighted, optionally sticky,
//! for canaries) and `versioning` (API version from a path segment, a header, a media type or a
//! query parameter, with a default and `Deprecation`/`Sunset` headers per version).
//!
//! Owns the choice only: it runs after authentication (a split may stick by consumer) and
//! before the breaker and the upstream call, which then use the chosen service's targets,
//! balancer, breaker and timeouts. The route's retry policy stays the route's.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::policy::auth::Identity;
use crate::spec::ConfigError;

/// `- split: {services: [{service: stable, weight: 95}, {service: canary, weight: 5}]}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// The services and their weights (relative; 0 takes no traffic).
    pub services: Vec<RawWeighted>,
    /// Keep a client on one side: by `header: NAME`, `cookie: NAME` or `consumer: true`. A
    /// request without the key is split at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<RawSticky>,
}

/// One side of a split.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWeighted {
    /// Service name.
    pub service: String,
    /// Relative weight.
    pub weight: u32,
}

/// Where the sticky key comes from (one of the three).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The authenticated consumer's name.
    #[serde(default)]
    pub consumer: bool,
}

/// Where a version is read from.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VersionFrom {
    /// The first path segment (`/v2/users`); it is removed from the upstream path.
    Path,
    /// A header (`name`, default `accept-version`).
    Header,
    /// The `Accept` media type: `application/vnd.acme.v2+json` gives `v2`.
    MediaType,
    /// A query parameter (`name`, default `version`).
    Query,
}

/// `- versioning: {from: header, default: v1, versions: {v1: {service: a}, v2: {service: b}}}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawVersioning {
    /// Where the version is read.
    pub from: VersionFrom,
    /// Header or query parameter name (`accept-version` / `version` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version of requests that name none. Without it, such requests get 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Each version's service and lifecycle headers.
    pub versions: BTreeMap<String, RawVersion>,
}

/// One API version.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    /// The service serving it.
    pub service: String,
    /// `Deprecation` response header value (RFC 9745, e.g. `@1735689600`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation: Option<String>,
    /// `Sunset` response header value (RFC 8594, an HTTP date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
}

/// Where a sticky key comes from.
#[derive(Debug)]
pub enum Sticky {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// The consumer name.
    Consumer,
}

/// A compiled version.
#[derive(Debug)]
pub struct Version {
    service: usize,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A compiled traffic policy.
#[derive(Debug)]
pub enum TrafficPolicy {
    /// Weighted split.
    Split {
        /// (service index, cumulative weight).
        sides: Vec<(usize, u64)>,
        /// Total weight.
        total: u64,
        /// Sticky key.
        sticky: Option<Sticky>,
    },
    /// Versioning.
    Versioning {
        /// Source.
        from: VersionFrom,
        /// Header name (header source).
        header: HeaderName,
        /// Query name (query source).
        query: String,
        /// Default version key.
        default: Option<String>,
        /// Versions.
        versions: BTreeMap<String, Version>,
    },
}

/// The chosen service index, the response headers of the version, and whether the first path
/// segment (the version) is removed from the upstream path.
pub type Choice<'a> = (usize, &'a [(HeaderName, HeaderValue)], bool);

fn service_index(
    name: &str,
    services: &[&String],
    at: String,
    errors: &mut Vec<ConfigError>,
) -> Option<usize> {
    let i = services.iter().position(|n| *n == name);
    if i.is_none() {
        errors.push(ConfigError::new(at, format!("no service named `{name}`")));
    }
    i
}

impl TrafficPolicy {
    /// Compiles a `split` entry.
    pub fn compile_split(
        raw: &RawSplit,
        b: &mut crate::policy::Build<'_>,
    ) -> Option<std::sync::Arc<Self>> {
        Self::split(raw, b.path, b.services, b.errors).map(std::sync::Arc::new)
    }

    /// Compiles a `versioning` entry.
    pub fn compile_versioning(
        raw: &RawVersioning,
        b: &mut crate::policy::Build<'_>,
    ) -> Option<std::sync::Arc<Self>> {
        Self::versioning(raw, b.path, b.services, b.errors).map(std::sync::Arc::new)
    }

    /// Compiles a `split`.
    pub fn split(
        raw: &RawSplit,
        path: &str,
        services: &[&String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        let mut sides = Vec::new();
        let mut total = 0u64;
        for (i, s) in raw.services.iter().enumerate() {
            if let Some(idx) = service_index(
                &s.service,
                services,
                format!("{path}.services[{i}].service"),
                errors,
            ) {
                total += u64::from(s.weight);
                sides.push((idx, total));
            }
        }
        if raw.services.is_empty() || (errors.len() == before && total == 0) {
            errors.push(ConfigError::new(
                format!("{path}.services"),
                "list at least one service with a positive weight",
            ));
        }
        let sticky = match &raw.sticky {
            None => None,
            Some(s) => match (&s.header, &s.cookie, s.consumer) {
                (Some(h), None, false) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(h) => Some(Sticky::Header(h)),
                    Err(_) => {
                        errors.push(ConfigError::new(
                            format!("{path}.sticky.header"),
                            "not a valid header name",
                        ));
                        None
                    }
                },
                (None, Some(c), false) => Some(Sticky::Cookie(c.clone())),
                (None, None, true) => Some(Sticky::Consumer),
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.sticky"),
                        "give exactly one of `header`, `cookie` or `consumer: true`",
                    ));
                    None
                }
            },
        };
        (errors.len() == before).then_some(TrafficPolicy::Split {
            sides,
            total,
            sticky,
        })
    }

    /// Compiles a `versioning` policy.
    pub fn versioning(
        raw: &RawVersioning,
        path: &str,
        services: &[&String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        let mut versions = BTreeMap::new();
        if raw.versions.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.versions"),
                "list at least one version",
            ));
        }
        for (key, v) in &raw.versions {
            let at = format!("{path}.versions.{key}");
            let service = service_index(&v.service, services, format!("{at}.service"), errors);
            let mut headers = Vec::new();
            for (name, value, field) in [
                (
                    HeaderName::from_static("deprecation"),
                    &v.deprecation,
                    "deprecation",
                ),
                (
                    header::HeaderName::from_static("sunset"),
                    &v.sunset,
                    "sunset",
                ),
            ] {
                if let Some(text) = value {
                    match HeaderValue::from_str(text) {
                        Ok(hv) => headers.push((name, hv)),
                        Err(_) => errors.push(ConfigError::new(
                            format!("{at}.{field}"),
                            "not a valid header value",
                        )),
                    }
                }
            }
            if let Some(service) = service {
                versions.insert(key.clone(), Version { service, headers });
            }
        }
        if let Some(d) = &raw.default {
            if !raw.versions.contains_key(d) {
                errors.push(ConfigError::new(
                    format!("{path}.default"),
                    format!("`{d}` is not one of the versions"),
                ));
            }
        }
        let header = match raw.name.as_deref() {
            Some(n) if raw.from == VersionFrom::Header => {
                match HeaderName::from_bytes(n.as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        errors.push(ConfigError::new(
                            format!("{path}.name"),
                            "not a valid header name",
                        ));
                        HeaderName::from_static("accept-version")
                    }
                }
            }
            _ => HeaderName::from_static("accept-version"),
        };
        (errors.len() == before).then(|| TrafficPolicy::Versioning {
            from: raw.from,
            header,
            query: raw.name.clone().unwrap_or_else(|| "version".into()),
            default: raw.default.clone(),
            versions,
        })
    }

    /// Chooses the service for a request. Returns its index, the response headers to add,
    /// and whether the first path segment (the version) must be removed.
    pub fn choose(
        &self,
        parts: &Parts,
        identity: Option<&Identity>,
    ) -> Result<Choice<'_>, GatewayError> {
        match self {
            TrafficPolicy::Split {
                sides,
                total,
                sticky,
            } => {
                let key = sticky.as_ref().and_then(|s| sticky_key(s, parts, identity));
                let point = match key {
                    Some(k) => {
                        // A fixed-key hash, so a client stays on its side across workers,
                        // nodes and restarts (as long as the weights do not change).
                        let mut h = rustc_hash::FxHasher::default();
                        k.hash(&mut h);
                        h.finish() % total
                    }
                    None => fastrand::u64(..*total),
                };
                let service = sides
                    .iter()
                    .find(|(_, upto)| point < *upto)
                    .map_or(sides[0].0, |(s, _)| *s);
                Ok((service, &[], false))
            }
            TrafficPolicy::Versioning {
                from,
                header,
                query,
                default,
                versions,
            } => {
                let asked: Option<String> = match from {
                    VersionFrom::Path => parts
                        .uri
                        .path()
                        .trim_start_matches('/')
                        .split('/')
                        .next()
                        .filter(|s| versions.contains_key(*s))
                        .map(str::to_string),
                    VersionFrom::Header => parts
                        .headers
                        .get(header)
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.trim().to_string()),
                    VersionFrom::MediaType => parts
                        .headers
                        .get_all(header::ACCEPT)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(media_type_version),
                    VersionFrom::Query => parts.uri.query().and_then(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .find(|(k, _)| k == query.as_str())
                            .map(|(_, v)| v.into_owned())
                    }),
                };
                let strip = *from == VersionFrom::Path && asked.is_some();
                let key = match (asked, default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d.clone(),
                    (None, None) => {
                        return Err(GatewayError::BadRequest(
                            "this API needs a version and the request names none",
                        ))
                    }
                };
                match versions.get(&key) {
                    Some(v) => Ok((v.service, &v.headers, strip)),
                    None => Err(GatewayError::BadRequest(
                        "the requested API version does not exist",
                    )),
                }
            }
        }
    }
}

/// `application/vnd.acme.v2+json` gives `v2`.
fn media_type_version(accept: &str) -> Option<String> {
    accept.split(',').find_map(|mt| {
        let mt = mt.split(';').next()?.trim();
        let sub = mt.strip_prefix("application/vnd.")?;
        let sub = sub.split('+').next()?;
        let v = sub.rsplit('.').next()?;
        (v.starts_with('v') && v.len() > 1).then(|| v.to_string())
    })
}

fn sticky_key(s: &Sticky, parts: &Parts, identity: Option<&Identity>) -> Option<String> {
    match s {
        Sticky::Header(h) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Sticky::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| v.to_string())
            }),
        Sticky::Consumer => identity.and_then(|i| i.name.as_deref()).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_versions() {
        assert_eq!(
            media_type_version("application/vnd.acme.v2+json").as_deref(),
            Some("v2")
        );
        assert_eq!(
            media_type_version("text/html, application/vnd.acme.v10+json;q=0.9").as_deref(),
            Some("v10")
        );
        assert_eq!(media_type_version("application/json"), None);
    }
}
