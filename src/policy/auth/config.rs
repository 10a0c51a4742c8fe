//! The YAML of authentication: consumers, named providers (`auth:`), and the route policy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::Dur;

/// A consumer: an identity of the gateway (a user, an application, a partner).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    /// Unique name; sent upstream as `X-Consumer-Name` and written to the access log.
    pub name: String,
    /// Optional stable id; sent upstream as `X-Consumer-Id`.
    #[serde(default)]
    pub id: Option<String>,
    /// Groups, for ACLs; sent upstream as `X-Consumer-Groups`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys: plaintext strings, or `{sha256: "<hex digest of the key>"}`.
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// Basic-auth credential with an argon2 or bcrypt password hash.
    #[serde(default)]
    pub basic: Option<RawBasicCredential>,
    /// Values of a JWT/introspection provider's `consumer_claim` (default `sub`) that identify
    /// this consumer.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    /// Names of client certificates (mutual TLS) that identify this consumer: a common name,
    /// a whole subject (`CN=a,O=b`) or a SAN (`spiffe://...`, `DNS:...`).
    #[serde(default)]
    pub mtls_subjects: Vec<String>,
    /// The consumer's plan: a name under the top-level `plans:`, whose `rate_limit` applies to
    /// this consumer instead of a route's own.
    #[serde(default)]
    pub plan: Option<String>,
}

/// The top-level `consumers:` section: a list of consumers, or `{store: redis, ...}` for
/// consumers managed at run time through the admin API (with a `list` of file-defined ones
/// beside them).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawConsumers {
    /// Consumers defined in the file.
    List(Vec<RawConsumer>),
    /// A consumer store, plus file-defined consumers.
    Store(RawConsumerStore),
}

impl Default for RawConsumers {
    fn default() -> Self {
        RawConsumers::List(Vec::new())
    }
}

impl RawConsumers {
    /// The consumers defined in the file.
    pub fn list(&self) -> &[RawConsumer] {
        match self {
            RawConsumers::List(l) => l,
            RawConsumers::Store(s) => &s.list,
        }
    }

    /// The store settings, with `{store: ...}`.
    pub fn store(&self) -> Option<&RawConsumerStore> {
        match self {
            RawConsumers::List(_) => None,
            RawConsumers::Store(s) => Some(s),
        }
    }

    /// The config path of file-defined consumer `i`.
    pub fn path_of(&self, i: usize) -> String {
        match self {
            RawConsumers::List(_) => format!("consumers[{i}]"),
            RawConsumers::Store(_) => format!("consumers.list[{i}]"),
        }
    }
}

// A list or a map, each deserialized by its own type so its errors keep their positions
// (an untagged enum would only say "data did not match any variant").
impl<'de> Deserialize<'de> for RawConsumers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawConsumers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of consumers, or {store: redis, ...}")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RawConsumers, E> {
                Ok(RawConsumers::default())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<RawConsumers, E> {
                Ok(RawConsumers::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<RawConsumers, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(a))
                    .map(RawConsumers::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<RawConsumers, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(a))
                    .map(RawConsumers::Store)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where run-time managed consumers live.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerStoreKind {
    /// The top-level `redis:` (required).
    Redis,
}

/// `consumers: {store: redis, ...}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConsumerStore {
    /// `redis`: consumers and their credentials are kept in the shared Redis, managed through
    /// the admin API (`/consumers`), and every node serves them from memory.
    pub store: ConsumerStoreKind,
    /// `/readyz` answers 503 until this node has loaded the stored consumers at least once (a
    /// node started while Redis is down serves the file-defined consumers only).
    #[serde(default)]
    pub required: bool,
    /// How often each node compares its copy's version with Redis's, to catch a missed change
    /// message or a partition that healed. Default 5s.
    #[serde(default = "default_check_interval")]
    pub check_interval: Dur,
    /// A file that receives the audit log (one JSON line per change) besides the application
    /// log.
    #[serde(default)]
    pub audit_log: Option<String>,
    /// File-defined consumers, served beside the stored ones.
    #[serde(default)]
    pub list: Vec<RawConsumer>,
}

fn default_check_interval() -> Dur {
    Dur::from_secs(5)
}

/// An API key as stored in config.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawApiKey {
    /// The key itself (use `${file:...}` or `${ENV}` to keep it out of the file).
    Plain(String),
    /// Only the SHA-256 digest of the key, hex-encoded.
    Hashed {
        /// Hex SHA-256 of the key.
        sha256: String,
    },
}

/// A basic-auth credential.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBasicCredential {
    /// User name.
    pub username: String,
    /// PHC-format argon2 hash (`$argon2id$...`) or bcrypt hash (`$2b$...`).
    pub password_hash: String,
}

/// The top-level `auth:` section: named providers that route policies refer to.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Realm named in `WWW-Authenticate` challenges.
    pub realm: Option<String>,
    /// JWT issuers, by name.
    pub jwt: BTreeMap<String, RawJwtProvider>,
    /// OAuth2 token introspection endpoints (RFC 7662), by name.
    pub introspection: BTreeMap<String, RawIntrospectionProvider>,
    /// Where API keys are read from.
    pub api_key: RawApiKeySettings,
    /// Basic-auth settings.
    pub basic: RawBasicSettings,
    /// Extra YAML files, each `consumers: [...]`, loaded with (and reloaded with) the config.
    pub consumers_files: Vec<String>,
}

/// A JWT issuer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; the token must carry at least one. Empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512).
    /// `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Static keys.
    #[serde(default)]
    pub keys: Vec<RawJwtKey>,
    /// JWKS endpoint (http:// or https://); fetched at first use, refreshed every `jwks_refresh`
    /// and on an unknown `kid` (at most once per 10 s). A failed fetch keeps the last good keys.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the JWKS is refreshed.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claims that must be present (`exp` and `iss` always are; `aud` when `audiences` is set).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claim conditions, e.g. `scope: {contains: "orders:read"}`, `role: {in: [admin, ops]}`.
    #[serde(default)]
    pub claims: BTreeMap<String, RawClaimRule>,
    /// Where the token is read from (default: `Authorization: Bearer`).
    #[serde(default)]
    pub token: RawTokenSource,
    /// Claim whose value maps the token to a consumer's `jwt_subjects`.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Claims copied to upstream request headers, e.g. `sub: X-User-Id`.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Verified tokens cached (entries never outlive the token's `exp`); 0 turns the cache off.
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
}

/// One static JWT key; exactly one of `pem`, `pem_file`, `jwk`, `secret`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    /// Key id matched against the token's `kid` (optional with a single key).
    #[serde(default)]
    pub kid: Option<String>,
    /// PEM public key (RSA of at least 2048 bits, EC P-256/P-384 or Ed25519).
    #[serde(default)]
    pub pem: Option<String>,
    /// Path of a PEM public key file.
    #[serde(default)]
    pub pem_file: Option<String>,
    /// A JWK (JSON object).
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
    /// HMAC secret (for HS256/384/512), at least 32 bytes.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A claim condition; exactly one field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    /// The claim equals this value.
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    /// The claim (a space-separated string such as `scope`, or an array) contains this item.
    #[serde(default)]
    pub contains: Option<String>,
    /// The claim is one of these values.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<serde_json::Value>>,
}

/// Where a token is read from; at most one field. Default: `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTokenSource {
    /// A header carrying the bare token (or `Bearer <token>`).
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// A query parameter.
    #[serde(default)]
    pub query: Option<String>,
}

/// An OAuth2 token introspection endpoint (RFC 7662).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospectionProvider {
    /// Introspection endpoint URL.
    pub url: String,
    /// Client id for HTTP basic authentication at the endpoint.
    pub client_id: String,
    /// Client secret (use `${ENV}` or `${file:...}`).
    pub client_secret: String,
    /// Time allowed for one introspection call.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Dur,
    /// How long an active token's result is reused (never past its `exp`).
    #[serde(default = "default_positive_ttl")]
    pub cache_ttl: Dur,
    /// How long an inactive token's result is reused.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: Dur,
    /// Most cached results.
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
    /// Endpoint down or slow: `unavailable` (503, the default) or `deny` (401).
    #[serde(default)]
    pub on_error: OnIntrospectionError,
    /// Where the token is read from (default: `Authorization: Bearer`).
    #[serde(default)]
    pub token: RawTokenSource,
    /// Response field that maps the token to a consumer's `jwt_subjects`.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Response fields copied to upstream request headers.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
}

/// What to answer when the introspection endpoint fails.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnIntrospectionError {
    /// 503: the token may be fine, the gateway could not tell.
    #[default]
    Unavailable,
    /// 401, as if the token were invalid.
    Deny,
}

/// Where API keys are read from.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawApiKeySettings {
    /// Header carrying the key.
    pub header: String,
    /// Query parameter carrying the key (off unless set).
    pub query: Option<String>,
    /// Pass the key on to the upstream (default: removed).
    pub forward: bool,
}

impl Default for RawApiKeySettings {
    fn default() -> Self {
        Self {
            header: "x-api-key".to_string(),
            query: None,
            forward: false,
        }
    }
}

/// Basic-auth settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawBasicSettings {
    /// How long a verified user/password pair is remembered (so the hash is not recomputed on
    /// every request).
    pub cache_ttl: Dur,
    /// Most remembered pairs.
    pub cache_size: u64,
}

impl Default for RawBasicSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Dur::from_secs(300),
            cache_size: 10_000,
        }
    }
}

/// The `auth` route policy.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuthPolicy {
    /// Accepted JWT issuers (names under `auth.jwt`).
    #[serde(default)]
    pub jwt: Vec<String>,
    /// Accepted introspection providers (names under `auth.introspection`).
    #[serde(default)]
    pub introspection: Vec<String>,
    /// Accept consumers' API keys.
    #[serde(default)]
    pub api_key: bool,
    /// Accept consumers' basic-auth credentials.
    #[serde(default)]
    pub basic: bool,
    /// Accept the client certificate verified on an HTTPS listener (`tls.client_auth`); a
    /// consumer lists its names in `mtls_subjects`.
    #[serde(default)]
    pub mtls: bool,
    /// Let requests without any credential through as anonymous (bad credentials are still
    /// rejected).
    #[serde(default)]
    pub anonymous: bool,
    /// A valid token whose subject is no declared consumer is rejected (401); without this,
    /// such a request passes with an identity built from its claims.
    #[serde(default)]
    pub require_consumer: bool,
    /// Only these consumers or groups may pass (empty: everyone authenticated).
    #[serde(default)]
    pub allow: RawAcl,
    /// These consumers or groups are refused (403), whatever `allow` says.
    #[serde(default)]
    pub deny: RawAcl,
}

/// An ACL list.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAcl {
    /// Consumer names.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_jwks_refresh() -> Dur {
    Dur::from_secs(300)
}
fn default_leeway() -> Dur {
    Dur::from_secs(30)
}
fn default_consumer_claim() -> String {
    "sub".to_string()
}
fn default_cache_size() -> u64 {
    10_000
}
fn default_introspection_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_positive_ttl() -> Dur {
    Dur::from_secs(60)
}
fn default_negative_ttl() -> Dur {
    Dur::from_secs(10)
}
