//! OAuth2 token introspection, RFC 7662: opaque tokens checked by asking the authorization
//! server, with positive and negative result caches.
//!
//! Owns finding the token in the request (per provider: `Authorization: Bearer`, a header, a
//! cookie or a query parameter), the call to the endpoint (a form POST with the gateway's client
//! credentials in HTTP basic auth, bounded in time and size), reading the answer, and the caches.
//! It does not own the consumer lookup or the response (`mod.rs`).
//!
//! Failure semantics, the point of the design: an *inactive* token is the client's problem (401,
//! cached for `negative_cache_ttl`); an endpoint that is down, slow, answers non-200 or garbage is
//! the gateway's (503 `auth_unavailable` by default, or 401 with `on_error: deny`) and is never
//! cached, so recovery is immediate. An active result is cached for `cache_ttl` but never past the
//! token's `exp`. Cache keys are SHA-256 digests of the token; the token itself is never stored,
//! logged or quoted in a message.
//!
//! Concurrent requests with the same uncached token each call the endpoint (no coalescing): the
//! cache absorbs the steady state, and a burst costs a few duplicate calls.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::config::{OnIntrospectionError, RawIntrospectionProvider, RawTokenSource};
use super::jwt_claims::scalar_text;
use super::{AuthFailure, Verified};
use crate::spec::ConfigError;

/// Largest introspection answer read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longer tokens are refused without calling the endpoint.
const MAX_TOKEN: usize = 8 * 1024;

/// A configured introspection endpoint.
pub struct Introspector {
    name: String,
    uri: Uri,
    /// `Basic base64(client_id:client_secret)`, marked sensitive.
    authorization: HeaderValue,
    timeout: Duration,
    cache_ttl: Duration,
    negative_ttl: Duration,
    on_error: OnIntrospectionError,
    source: TokenSource,
    consumer_claim: String,
    claim_headers: Vec<(String, HeaderName)>,
    cache: Option<moka::sync::Cache<[u8; 32], Cached>>,
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (scheme case-insensitive).
    Bearer,
    /// A header with the bare token or `Bearer <token>`.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

#[derive(Clone)]
struct Cached {
    /// `None`: the token is inactive.
    verified: Option<Verified>,
    /// Tokio time, so tests with a paused clock see entries expire.
    until: Instant,
}

/// What the endpoint said.
#[derive(Debug)]
enum Answer {
    Active {
        verified: Verified,
        /// Seconds until `exp`, when the answer has one.
        expires_in: Option<Duration>,
    },
    Inactive,
}

impl Introspector {
    /// Builds the provider; problems are reported under `path`.
    pub fn build(
        name: &str,
        raw: &RawIntrospectionProvider,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let uri = match parse_endpoint(&raw.url) {
            Ok(u) => Some(u),
            Err(why) => {
                errors.push(ConfigError::new(format!("{path}.url"), why));
                None
            }
        };
        let source = TokenSource::build(&raw.token, &format!("{path}.token"), errors);
        let mut claim_headers = Vec::new();
        for (claim, header_name) in &raw.claim_headers {
            match claim_header_name(header_name) {
                Ok(h) => claim_headers.push((claim.clone(), h)),
                Err(why) => errors.push(ConfigError::new(
                    format!("{path}.claim_headers.{claim}"),
                    why,
                )),
            }
        }
        if raw.client_id.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.client_id"),
                "the client id must not be empty",
            ));
        }
        let timeout = raw.timeout.0;
        if timeout.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "must be more than 0",
            ));
        }
        let credentials = format!(
            "{}:{}",
            form_urlencoded::byte_serialize(raw.client_id.as_bytes()).collect::<String>(),
            form_urlencoded::byte_serialize(raw.client_secret.as_bytes()).collect::<String>()
        );
        let mut authorization = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
        .ok()?;
        authorization.set_sensitive(true);
        let (cache_ttl, negative_ttl) = (raw.cache_ttl.0, raw.negative_cache_ttl.0);
        let longest = cache_ttl.max(negative_ttl);
        let cache = (raw.cache_size > 0 && !longest.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(raw.cache_size)
                .time_to_live(longest)
                .build()
        });
        // With errors the plan is not built; the provider is still returned, so routes naming it
        // do not also get a misleading "unknown provider" error.
        Some(Self {
            name: name.to_string(),
            uri: uri.unwrap_or_else(|| Uri::from_static("http://invalid/")),
            authorization,
            timeout,
            cache_ttl,
            negative_ttl,
            on_error: raw.on_error,
            source,
            consumer_claim: raw.consumer_claim.clone(),
            claim_headers,
            cache,
        })
    }

    /// Upstream header names this provider may set (from `claim_headers`).
    pub fn header_names(&self) -> Vec<HeaderName> {
        self.claim_headers.iter().map(|(_, h)| h.clone()).collect()
    }

    /// The token in this provider's location, `None` when absent.
    pub fn token<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>> {
        self.source.find(parts)
    }

    /// Asks the endpoint (or the cache) whether `token` is active.
    pub async fn introspect(&self, token: &str) -> Result<Verified, AuthFailure> {
        if token.is_empty() {
            return Err(AuthFailure::Invalid("the token is empty".into()));
        }
        if token.len() > MAX_TOKEN {
            return Err(AuthFailure::Invalid("the token is too long".into()));
        }
        let key = super::consumers::sha256(token.as_bytes());
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            if hit.until > Instant::now() {
                return hit.verified.ok_or_else(inactive);
            }
        }
        match self.call(token).await {
            Ok(Answer::Active {
                verified,
                expires_in,
            }) => {
                let ttl = match expires_in {
                    Some(left) if left.is_zero() => return Err(inactive()),
                    Some(left) => left.min(self.cache_ttl),
                    None => self.cache_ttl,
                };
                self.remember(key, Some(verified.clone()), ttl);
                Ok(verified)
            }
            Ok(Answer::Inactive) => {
                self.remember(key, None, self.negative_ttl);
                Err(inactive())
            }
            Err(why) => {
                tracing::warn!(provider = %self.name, "token introspection failed: {why}");
                match self.on_error {
                    OnIntrospectionError::Unavailable => Err(AuthFailure::Unavailable(format!(
                        "the token introspection endpoint `{}` could not be reached or answered badly",
                        self.name
                    ))),
                    OnIntrospectionError::Deny => Err(AuthFailure::Invalid(
                        "the token could not be verified".into(),
                    )),
                }
            }
        }
    }

    fn remember(&self, key: [u8; 32], verified: Option<Verified>, ttl: Duration) {
        if let (Some(cache), false) = (&self.cache, ttl.is_zero()) {
            cache.insert(
                key,
                Cached {
                    verified,
                    until: Instant::now() + ttl,
                },
            );
        }
    }

    /// One exchange with the endpoint. Errors describe the failure, never the token.
    async fn call(&self, token: &str) -> Result<Answer, String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let req = Request::post(self.uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let fetched = super::http_client::fetch(req, self.timeout, MAX_RESPONSE).await?;
        match fetched.status {
            StatusCode::OK => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(format!(
                    "{}: answered {s}: check client_id and client_secret",
                    self.uri
                ))
            }
            s => return Err(format!("{}: answered {s}", self.uri)),
        }
        let doc: Map<String, Value> = serde_json::from_slice(&fetched.body)
            .map_err(|e| format!("{}: the answer is not a JSON object: {e}", self.uri))?;
        self.read_answer(&doc, unix_now())
            .map_err(|why| format!("{}: {why}", self.uri))
    }

    /// Interprets an RFC 7662 answer at `now` (seconds since the epoch).
    fn read_answer(&self, doc: &Map<String, Value>, now: f64) -> Result<Answer, String> {
        match doc.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Ok(Answer::Inactive),
            _ => return Err("the answer has no boolean `active` field".into()),
        }
        let expires_in = match doc.get("exp") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let exp = v.as_f64().ok_or("`exp` is not a number")?;
                Some(Duration::from_secs_f64((exp - now).clamp(0.0, 1e9)))
            }
        };
        // A token that is not valid yet is not active either (RFC 7662 section 2.2: `nbf`).
        if doc
            .get("nbf")
            .and_then(Value::as_f64)
            .is_some_and(|nbf| nbf > now)
        {
            return Ok(Answer::Inactive);
        }
        let subject = doc.get(&self.consumer_claim).and_then(scalar_text);
        let headers = self
            .claim_headers
            .iter()
            .filter_map(|(claim, name)| {
                let text = doc.get(claim).and_then(claim_text)?;
                Some((name.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        Ok(Answer::Active {
            verified: Verified {
                subject,
                headers,
                claims: Some(Arc::new(doc.clone())),
            },
            expires_in,
        })
    }
}

fn inactive() -> AuthFailure {
    AuthFailure::Invalid("the token is not active".into())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A claim as a header value: scalars as text, a list of scalars joined by `, `.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        }
        other => scalar_text(other),
    }
}

/// `http(s)://host[:port]/path`, without credentials in it.
fn parse_endpoint(url: &str) -> Result<Uri, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a valid URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(
            "put the client credentials in client_id and client_secret, not in the URL".into(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

/// A `claim_headers` target: a valid header name the gateway does not own.
pub fn claim_header_name(name: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    const RESERVED: &[&str] = &[
        "host",
        "authorization",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "x-request-id",
        "x-consumer-name",
        "x-consumer-id",
        "x-consumer-groups",
        "x-anonymous-consumer",
    ];
    if RESERVED.contains(&h.as_str()) {
        return Err(format!(
            "`{name}` is set by the gateway itself and cannot carry a claim"
        ));
    }
    Ok(h)
}

// === impl TokenSource ===

impl TokenSource {
    /// From a `token:` setting; at most one location may be set.
    pub fn build(raw: &RawTokenSource, path: &str, errors: &mut Vec<ConfigError>) -> Self {
        let set = [
            raw.header.is_some(),
            raw.cookie.is_some(),
            raw.query.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set > 1 {
            errors.push(ConfigError::new(
                path,
                "set at most one of header, cookie, query",
            ));
        }
        if let Some(h) = &raw.header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) if name == header::AUTHORIZATION => TokenSource::Bearer,
                Ok(name) => TokenSource::Header(name),
                Err(_) => {
                    errors.push(ConfigError::new(
                        format!("{path}.header"),
                        format!("`{h}` is not a valid header name"),
                    ));
                    TokenSource::Bearer
                }
            }
        } else if let Some(c) = &raw.cookie {
            if c.is_empty() || c.contains([';', '=', ' ']) {
                errors.push(ConfigError::new(
                    format!("{path}.cookie"),
                    format!("`{c}` is not a valid cookie name"),
                ));
            }
            TokenSource::Cookie(c.clone())
        } else if let Some(q) = &raw.query {
            if q.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.query"),
                    "the parameter name must not be empty",
                ));
            }
            TokenSource::Query(q.clone())
        } else {
            TokenSource::Bearer
        }
    }

    /// The token in this location, `None` when absent. A present but empty token is
    /// `Some("")`, so it fails as a bad credential rather than passing as no credential.
    pub fn find<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>> {
        match self {
            TokenSource::Bearer => {
                let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
                let v = v.trim();
                let (scheme, token) = v.split_once([' ', '\t']).unwrap_or((v, ""));
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| Cow::Borrowed(token.trim()))
            }
            TokenSource::Header(name) => {
                let v = parts.headers.get(name)?.to_str().ok()?.trim();
                let token = match v.split_once([' ', '\t']) {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                    _ => v,
                };
                Some(Cow::Borrowed(token))
            }
            TokenSource::Cookie(name) => parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| Cow::Borrowed(v.trim().trim_matches('"')))
                }),
            TokenSource::Query(name) => {
                let query = parts.uri.query()?;
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name.as_str())
                    .map(|(_, v)| Cow::Owned(v.into_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn raw(url: &str) -> RawIntrospectionProvider {
        serde_yaml_ng::from_str(&format!(
            "{{url: \"{url}\", client_id: gw, client_secret: s3cret}}"
        ))
        .unwrap()
    }

    fn provider(mut r: RawIntrospectionProvider) -> Introspector {
        r.claim_headers = BTreeMap::from([
            ("sub".to_string(), "X-User-Id".to_string()),
            ("scope".to_string(), "x-scopes".to_string()),
            ("roles".to_string(), "x-roles".to_string()),
        ]);
        let mut errors = Vec::new();
        let p = Introspector::build("idp", &r, "auth.introspection.idp", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        p.unwrap()
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn reads_an_active_answer_into_subject_headers_and_expiry() {
        let p = provider(raw("http://127.0.0.1:9/introspect"));
        let doc = serde_json::json!({
            "active": true, "sub": "user-7", "scope": "orders:read orders:write",
            "roles": ["admin", "ops"], "exp": 1_000_030, "client_id": "app"
        });
        let Answer::Active {
            verified,
            expires_in,
        } = p
            .read_answer(doc.as_object().unwrap(), 1_000_000.0)
            .unwrap()
        else {
            panic!("not active")
        };
        assert_eq!(verified.subject.as_deref(), Some("user-7"));
        let h: BTreeMap<String, String> = verified
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(h["x-user-id"], "user-7");
        assert_eq!(h["x-scopes"], "orders:read orders:write");
        assert_eq!(h["x-roles"], "admin, ops");
        assert_eq!(expires_in, Some(Duration::from_secs(30)));
    }

    #[test]
    fn inactive_not_yet_valid_and_malformed_answers() {
        let p = provider(raw("http://127.0.0.1:9/introspect"));
        let read = |v: Value| p.read_answer(v.as_object().unwrap(), 1_000_000.0);
        assert!(matches!(
            read(serde_json::json!({"active": false})),
            Ok(Answer::Inactive)
        ));
        assert!(matches!(
            read(serde_json::json!({"active": true, "nbf": 1_000_100})),
            Ok(Answer::Inactive)
        ));
        assert!(read(serde_json::json!({"active": "yes"})).is_err());
        assert!(read(serde_json::json!({"sub": "x"})).is_err());
        assert!(read(serde_json::json!({"active": true, "exp": "soon"})).is_err());
        // Expired but "active": expires_in is zero, which introspect() turns into a 401.
        let Ok(Answer::Active { expires_in, .. }) =
            read(serde_json::json!({"active": true, "exp": 999_000}))
        else {
            panic!()
        };
        assert_eq!(expires_in, Some(Duration::ZERO));
    }

    #[test]
    fn config_problems_are_reported_at_their_paths() {
        let mut r = raw("ftp://idp.example/introspect");
        r.claim_headers = BTreeMap::from([
            ("sub".to_string(), "x-consumer-name".to_string()),
            ("scope".to_string(), "bad header".to_string()),
        ]);
        r.token = RawTokenSource {
            header: Some("x-token".into()),
            cookie: Some("tok".into()),
            query: None,
        };
        let mut errors = Vec::new();
        Introspector::build("idp", &r, "auth.introspection.idp", &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "auth.introspection.idp.url",
                "auth.introspection.idp.token",
                "auth.introspection.idp.claim_headers.scope",
                "auth.introspection.idp.claim_headers.sub",
            ],
            "{errors:?}"
        );
        let text = format!("{errors:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn finds_the_token_in_each_location() {
        let mut errors = Vec::new();
        let mut src = |header: Option<&str>, cookie: Option<&str>, query: Option<&str>| {
            TokenSource::build(
                &RawTokenSource {
                    header: header.map(Into::into),
                    cookie: cookie.map(Into::into),
                    query: query.map(Into::into),
                },
                "t",
                &mut errors,
            )
        };
        let bearer = src(None, None, None);
        let header = src(Some("X-Token"), None, None);
        let cookie = src(None, Some("session"), None);
        let query = src(None, None, Some("access_token"));
        let p = parts(
            "/x?a=1&access_token=q%2Btok",
            &[
                ("authorization", "bEaReR   abc.def "),
                ("x-token", "Bearer htok"),
                ("cookie", "a=b; session=ctok; c=d"),
            ],
        );
        assert_eq!(bearer.find(&p).as_deref(), Some("abc.def"));
        assert_eq!(header.find(&p).as_deref(), Some("htok"));
        assert_eq!(cookie.find(&p).as_deref(), Some("ctok"));
        assert_eq!(query.find(&p).as_deref(), Some("q+tok"));
        let none = parts("/x", &[("authorization", "Basic YTpi")]);
        for s in [&bearer, &header, &cookie, &query] {
            assert_eq!(s.find(&none), None);
        }
        let empty = parts("/x", &[("authorization", "Bearer")]);
        assert_eq!(bearer.find(&empty).as_deref(), Some(""));
        assert!(errors.is_empty(), "{errors:?}");
    }
}
