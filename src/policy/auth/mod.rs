//! Authentication: consumers, credentials (JWT, API keys, basic auth, OAuth2 introspection),
//! ACLs, and the identity headers sent upstream.
//!
//! Owns deciding *who* a request is and whether that identity may use the route. It does not
//! own routing, rate limiting by consumer (that reads the [`Identity`] this returns) or logging
//! (the access log records [`Identity::name`]). Credentials never reach a log line: failures
//! carry descriptions of what was wrong, never the credential itself.
//!
//! Files: `config.rs` (YAML), `consumers.rs` (the registry, O(1) lookups), `jwt.rs` (+ JWKS),
//! `api_key.rs`, `basic.rs`, `introspection.rs`; this file runs a route's policy.

pub mod api_key;
pub mod basic;
pub mod config;
pub mod consumers;
pub mod http_client;
pub mod introspection;
pub mod jwks;
pub mod jwt;
mod jwt_claims;
pub mod stored;

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use rustc_hash::FxHashMap;

use crate::error::GatewayError;
use crate::spec::ConfigError;
use config::{RawAuth, RawAuthPolicy, RawConsumers};
pub use consumers::{Consumer, ConsumerRegistry};

/// `X-Consumer-Name`.
pub const X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
/// `X-Consumer-Id`.
pub const X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
/// `X-Consumer-Groups`.
pub const X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
/// `X-Anonymous-Consumer`.
pub const X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// The credential is wrong, expired, malformed...: 401. The text describes the problem
    /// and never contains the credential.
    Invalid(String),
    /// The gateway could not check the credential (introspection endpoint down): 503.
    Unavailable(String),
    /// A valid token whose claims do not meet the issuer's claim rules (e.g. a missing scope):
    /// 403 with `error="insufficient_scope"` (RFC 6750 section 3.1).
    Insufficient(String),
}

/// What a token provider (JWT issuer, introspection endpoint) vouches for.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Value of the provider's `consumer_claim`, when present.
    pub subject: Option<String>,
    /// Upstream headers from the provider's `claim_headers`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Every claim of the token (or introspection answer), for policies that key on one.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// Who the request is, once authenticated.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The declared consumer, when one matched.
    pub consumer: Option<Arc<Consumer>>,
    /// The name logged and sent upstream: the consumer's name, else the token subject.
    pub name: Option<Arc<str>>,
    /// No credential was presented and the route allows anonymous access.
    pub anonymous: bool,
    /// Extra upstream headers (claim mappings).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The token's claims, when a token authenticated the request.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl Identity {
    /// The text of claim `name` (dotted names walk nested objects), when the request carried a
    /// token with that claim as a string, number or boolean.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        self.claims
            .as_deref()
            .and_then(|c| jwt_claims::claim(c, name))
            .and_then(jwt_claims::scalar_text)
    }
}

/// Every provider declared under `auth:` plus the consumers, built once per plan.
pub struct Authenticators {
    realm: Arc<str>,
    jwt: FxHashMap<String, Arc<jwt::JwtProvider>>,
    introspection: FxHashMap<String, Arc<introspection::Introspector>>,
    api_key: Arc<api_key::ApiKeyAuth>,
    basic: Arc<basic::BasicAuth>,
    consumers: Arc<ConsumerRegistry>,
    /// Consumers managed at run time (`consumers: {store: redis}`).
    stored: Option<Arc<stored::ConsumerStore>>,
    /// Headers that only the gateway may set; removed from every client request.
    pub identity_headers: Vec<HeaderName>,
}

impl Authenticators {
    /// Builds providers and the consumer registry, reporting problems at their config paths.
    pub fn build(
        raw: &RawAuth,
        consumers: &RawConsumers,
        stored: Option<Arc<stored::ConsumerStore>>,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let inline_path = match consumers.store() {
            Some(_) => "consumers.list",
            None => "consumers",
        };
        let registry =
            ConsumerRegistry::build_at(consumers.list(), inline_path, &raw.consumers_files, errors);
        let mut identity_headers = vec![
            X_CONSUMER_NAME,
            X_CONSUMER_ID,
            X_CONSUMER_GROUPS,
            X_ANONYMOUS_CONSUMER,
        ];
        let mut jwt = FxHashMap::default();
        for (name, p) in &raw.jwt {
            if let Some(provider) =
                jwt::JwtProvider::build(name, p, &format!("auth.jwt.{name}"), errors)
            {
                identity_headers.extend(provider.header_names());
                jwt.insert(name.clone(), Arc::new(provider));
            }
        }
        let mut introspection = FxHashMap::default();
        for (name, p) in &raw.introspection {
            if let Some(provider) = introspection::Introspector::build(
                name,
                p,
                &format!("auth.introspection.{name}"),
                errors,
            ) {
                identity_headers.extend(provider.header_names());
                introspection.insert(name.clone(), Arc::new(provider));
            }
        }
        identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();
        Self {
            realm: raw.realm.as_deref().unwrap_or("portico").into(),
            jwt,
            introspection,
            api_key: Arc::new(api_key::ApiKeyAuth::build(
                &raw.api_key,
                "auth.api_key",
                errors,
            )),
            basic: Arc::new(basic::BasicAuth::build(&raw.basic)),
            consumers: Arc::new(registry),
            stored,
            identity_headers,
        }
    }

    /// The file-defined consumers.
    pub fn registry(&self) -> &Arc<ConsumerRegistry> {
        &self.consumers
    }

    /// Compiles a route's `auth` policy; `path` is its config path for errors.
    pub fn policy(
        &self,
        raw: &RawAuthPolicy,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<AuthPolicy> {
        let mut ok = true;
        let mut jwt = Vec::new();
        for (i, name) in raw.jwt.iter().enumerate() {
            match self.jwt.get(name) {
                Some(p) => jwt.push(Arc::clone(p)),
                None => {
                    ok = false;
                    errors.push(ConfigError::new(
                        format!("{path}.jwt[{i}]"),
                        format!("unknown JWT provider `{name}` (declare it under auth.jwt)"),
                    ));
                }
            }
        }
        let mut introspection = Vec::new();
        for (i, name) in raw.introspection.iter().enumerate() {
            match self.introspection.get(name) {
                Some(p) => introspection.push(Arc::clone(p)),
                None => {
                    ok = false;
                    errors.push(ConfigError::new(
                        format!("{path}.introspection[{i}]"),
                        format!("unknown introspection provider `{name}` (declare it under auth.introspection)"),
                    ));
                }
            }
        }
        if jwt.is_empty()
            && introspection.is_empty()
            && !raw.api_key
            && !raw.basic
            && !raw.mtls
            && !raw.anonymous
        {
            ok = false;
            errors.push(ConfigError::new(
                path.to_string(),
                "accepts no credential: list jwt or introspection providers, or set api_key, basic, mtls or anonymous",
            ));
        }
        for (list, field) in [(&raw.allow, "allow"), (&raw.deny, "deny")] {
            for (i, c) in list.consumers.iter().enumerate() {
                // A stored consumer may be created later: only file names are checked.
                if self.consumers.by_name(c).is_none() && self.stored.is_none() {
                    errors.push(ConfigError::new(
                        format!("{path}.{field}.consumers[{i}]"),
                        format!("unknown consumer `{c}`"),
                    ));
                    ok = false;
                }
            }
        }
        let mut challenges = Vec::new();
        let realm = &self.realm;
        if !jwt.is_empty() || !introspection.is_empty() {
            challenges.push(format!("Bearer realm=\"{realm}\""));
        }
        if raw.basic {
            challenges.push(format!("Basic realm=\"{realm}\""));
        }
        if raw.api_key {
            challenges.push(format!("Key realm=\"{realm}\""));
        }
        ok.then(|| AuthPolicy {
            jwt,
            introspection,
            api_key: raw.api_key.then(|| Arc::clone(&self.api_key)),
            basic: raw.basic.then(|| Arc::clone(&self.basic)),
            mtls: raw.mtls,
            consumers: Arc::clone(&self.consumers),
            stored: self.stored.clone(),
            anonymous: raw.anonymous,
            require_consumer: raw.require_consumer,
            allow: raw.allow.clone(),
            deny: raw.deny.clone(),
            challenges,
        })
    }
}

/// A route's compiled `auth` policy.
pub struct AuthPolicy {
    jwt: Vec<Arc<jwt::JwtProvider>>,
    introspection: Vec<Arc<introspection::Introspector>>,
    api_key: Option<Arc<api_key::ApiKeyAuth>>,
    basic: Option<Arc<basic::BasicAuth>>,
    mtls: bool,
    consumers: Arc<ConsumerRegistry>,
    stored: Option<Arc<stored::ConsumerStore>>,
    anonymous: bool,
    require_consumer: bool,
    allow: config::RawAcl,
    deny: config::RawAcl,
    /// `WWW-Authenticate` challenges (without error parameters), one per accepted scheme.
    challenges: Vec<String>,
}

/// Fetches the JWKS of every issuer the plan's routes use, so keys are there before the first
/// request (at start and after each reload; an unchanged issuer keeps its keys anyway).
pub async fn prefetch_keys(policies: Vec<Arc<AuthPolicy>>) {
    let mut providers: Vec<&Arc<jwt::JwtProvider>> = Vec::new();
    for policy in &policies {
        for provider in &policy.jwt {
            if !providers.iter().any(|p| Arc::ptr_eq(p, provider)) {
                providers.push(provider);
            }
        }
    }
    for provider in providers {
        provider.prefetch().await;
    }
}

impl AuthPolicy {
    /// Compiles a route's `auth` entry.
    pub fn compile(raw: &RawAuthPolicy, b: &mut crate::policy::Build<'_>) -> Option<Arc<Self>> {
        b.authenticators.policy(raw, b.path, b.errors).map(Arc::new)
    }

    /// Authenticates the request and applies the ACLs. Removes credentials that must not go
    /// upstream (API keys unless `forward`). Never returns a 5xx for bad credentials.
    /// `client_cert` is the certificate the connection's TLS handshake verified, if any.
    pub async fn authenticate(
        &self,
        parts: &mut Parts,
        client_cert: Option<&crate::tls::ClientCert>,
    ) -> Result<Identity, GatewayError> {
        // The last failure, and whether it was a bearer token (only then does the Bearer challenge
        // carry `error="invalid_token"`).
        let mut failure: Option<(String, bool)> = None;
        let mut presented = false;
        // A verified client certificate is the strongest credential and costs no I/O: first.
        if let (true, Some(cert)) = (self.mtls, client_cert) {
            return match self.consumers.by_certificate(cert) {
                Some(c) => self.accept_consumer(Arc::clone(c), Vec::new(), None),
                None if self.require_consumer => Err(self.unauthorized(Some((
                    "the client certificate identifies no known consumer".to_string(),
                    false,
                )))),
                None => self.check_acl(Identity {
                    name: Some(
                        cert.common_name
                            .as_ref()
                            .unwrap_or(&cert.subject)
                            .as_str()
                            .into(),
                    ),
                    ..Identity::default()
                }),
            };
        }
        for provider in &self.jwt {
            let Some(token) = provider.token(parts) else {
                continue;
            };
            presented = true;
            match provider.verify(&token).await {
                Ok(v) => return self.accept_token(v),
                Err(AuthFailure::Invalid(why)) => failure = Some((why, true)),
                Err(AuthFailure::Unavailable(why)) => {
                    return Err(GatewayError::AuthUnavailable(why))
                }
                Err(AuthFailure::Insufficient(why)) => return Err(self.insufficient(why)),
            }
        }
        for provider in &self.introspection {
            let Some(token) = provider.token(parts) else {
                continue;
            };
            presented = true;
            // Boxed: an introspection call's future is large, and every authentication's
            // future would carry its size.
            match Box::pin(provider.introspect(&token)).await {
                Ok(v) => return self.accept_token(v),
                Err(AuthFailure::Invalid(why)) => failure = Some((why, true)),
                Err(AuthFailure::Unavailable(why)) => {
                    return Err(GatewayError::AuthUnavailable(why))
                }
                Err(AuthFailure::Insufficient(why)) => return Err(self.insufficient(why)),
            }
        }
        if let Some(basic) = &self.basic {
            if let Some(creds) = basic::BasicAuth::credentials(parts) {
                presented = true;
                match creds {
                    Ok((user, password)) => {
                        let snapshot = self.stored.as_ref().map(|s| s.snapshot());
                        let users = basic::Users {
                            file: &self.consumers,
                            stored: snapshot.as_deref().map(|s| &**s),
                        };
                        match basic.verify(&users, &user, &password).await {
                            Ok(consumer) => {
                                // The password has done its job: the upstream gets the
                                // consumer headers, not the credential.
                                parts.headers.remove(http::header::AUTHORIZATION);
                                return self.accept_consumer(consumer, Vec::new(), None);
                            }
                            Err(AuthFailure::Invalid(why))
                            | Err(AuthFailure::Insufficient(why)) => failure = Some((why, false)),
                            Err(AuthFailure::Unavailable(why)) => {
                                return Err(GatewayError::AuthUnavailable(why))
                            }
                        }
                    }
                    Err(AuthFailure::Invalid(why))
                    | Err(AuthFailure::Unavailable(why))
                    | Err(AuthFailure::Insufficient(why)) => failure = Some((why, false)),
                }
            }
        }
        if let Some(api_key) = &self.api_key {
            if let Some(key) = api_key.take(parts) {
                presented = true;
                match self.by_api_key(key.as_bytes()) {
                    Some(consumer) => return self.accept_consumer(consumer, Vec::new(), None),
                    None => failure = Some(("invalid API key".to_string(), false)),
                }
            }
        }
        if !presented && self.anonymous {
            return self.check_acl(Identity {
                anonymous: true,
                ..Identity::default()
            });
        }
        Err(self.unauthorized(failure))
    }

    fn accept_token(&self, v: Verified) -> Result<Identity, GatewayError> {
        let consumer = v.subject.as_deref().and_then(|s| self.by_subject(s));
        match consumer {
            Some(c) => self.accept_consumer(c, v.headers, v.claims),
            None if self.require_consumer => Err(self.unauthorized(Some((
                "the token's subject is not a known consumer".to_string(),
                true,
            )))),
            None => self.check_acl(Identity {
                consumer: None,
                name: v.subject.map(|s| s.into()),
                anonymous: false,
                headers: v.headers,
                claims: v.claims,
            }),
        }
    }

    /// The consumer owning API key `key`: a file-defined one, else a stored one.
    fn by_api_key(&self, key: &[u8]) -> Option<Arc<Consumer>> {
        // Hashed once for both tables.
        let digest = consumers::sha256(key);
        if let Some(c) = self.consumers.by_key_digest(&digest) {
            return Some(Arc::clone(c));
        }
        let store = self.stored.as_ref()?;
        store.snapshot().by_key_digest(&digest).cloned()
    }

    /// The consumer bound to token subject `subject`: a file-defined one, else a stored one.
    fn by_subject(&self, subject: &str) -> Option<Arc<Consumer>> {
        if let Some(c) = self.consumers.by_subject(subject) {
            return Some(Arc::clone(c));
        }
        let store = self.stored.as_ref()?;
        store.snapshot().by_subject(subject).cloned()
    }

    fn accept_consumer(
        &self,
        consumer: Arc<Consumer>,
        headers: Vec<(HeaderName, HeaderValue)>,
        claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    ) -> Result<Identity, GatewayError> {
        self.check_acl(Identity {
            name: Some(Arc::clone(&consumer.name)),
            consumer: Some(consumer),
            anonymous: false,
            headers,
            claims,
        })
    }

    fn check_acl(&self, identity: Identity) -> Result<Identity, GatewayError> {
        let listed = |acl: &config::RawAcl| match &identity.consumer {
            Some(c) => {
                acl.consumers.iter().any(|n| **n == *c.name)
                    || acl
                        .groups
                        .iter()
                        .any(|g| c.groups.iter().any(|cg| **cg == **g))
            }
            None => false,
        };
        if listed(&self.deny) {
            return Err(GatewayError::Forbidden {
                message: "this consumer is not allowed on this route",
                by: crate::error::Refuser::Acl,
            });
        }
        let restricted = !self.allow.consumers.is_empty() || !self.allow.groups.is_empty();
        if restricted && !listed(&self.allow) {
            return Err(GatewayError::Forbidden {
                message: if identity.consumer.is_some() {
                    "this consumer is not allowed on this route"
                } else {
                    "this route is restricted to listed consumers"
                },
                by: crate::error::Refuser::Acl,
            });
        }
        Ok(identity)
    }

    fn insufficient(&self, why: String) -> GatewayError {
        let challenge = self
            .challenges
            .iter()
            .find(|c| c.starts_with("Bearer"))
            .and_then(|c| {
                HeaderValue::from_str(&format!(
                    "{c}, error=\"insufficient_scope\", error_description=\"{}\"",
                    why.replace(['"', '\\'], "'")
                ))
                .ok()
            });
        GatewayError::InsufficientScope {
            message: why,
            challenge,
        }
    }

    fn unauthorized(&self, failure: Option<(String, bool)>) -> GatewayError {
        let (message, error) = match &failure {
            Some((why, true)) => (why.clone(), Some(why.as_str())),
            Some((why, false)) => (why.clone(), None),
            None => ("credentials are required".to_string(), None),
        };
        let challenges = self
            .challenges
            .iter()
            .filter_map(|c| {
                let text = match (error, c.starts_with("Bearer")) {
                    (Some(why), true) => format!(
                        "{c}, error=\"invalid_token\", error_description=\"{}\"",
                        why.replace(['"', '\\'], "'")
                    ),
                    _ => c.clone(),
                };
                HeaderValue::from_str(&text).ok()
            })
            .collect();
        GatewayError::Unauthorized {
            message,
            challenges,
            presented: failure.is_some(),
        }
    }
}

impl Identity {
    /// Adds the identity headers to an upstream request (after the client's copies were removed).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        if self.anonymous {
            headers.insert(X_ANONYMOUS_CONSUMER, HeaderValue::from_static("true"));
            return;
        }
        if let Some(name) = self
            .name
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            headers.insert(X_CONSUMER_NAME, name);
        }
        if let Some(c) = &self.consumer {
            if let Some(id) = c.id.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(X_CONSUMER_ID, id);
            }
            if let Some(groups) = &c.groups_header {
                headers.insert(X_CONSUMER_GROUPS, groups.clone());
            }
        }
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Removes every identity header a client sent (they are the gateway's to set), with one pass
/// over the request's header names when none is present.
pub fn strip_identity_headers(headers: &mut http::HeaderMap, names: &[HeaderName]) {
    if names.is_empty() || !headers.keys().any(|k| names.contains(k)) {
        return;
    }
    for name in names {
        headers.remove(name);
    }
}
