//! JWT issuers: where the token is read from, signature and claim verification (the
//! `jsonwebtoken` crate), claim rules, the claim → header mappings, and the verified-token cache.
//!
//! Owns turning a token into [`Verified`] or an [`AuthFailure::Invalid`] whose text says what
//! was wrong and never contains the token. Keys and the JWKS endpoint are `jwks.rs`'s; claim
//! rules and claim → header mappings `jwt_claims.rs`'s; mapping the subject to a consumer and
//! the ACLs `mod.rs`'s.
//!
//! Decisions worth knowing:
//! - The token's `alg` must be on the issuer's allow-list and each key verifies only the
//!   algorithms of its family (`jwks.rs`): `alg: none` cannot even be parsed, and an HS token is
//!   never checked with an RSA/EC public key as its secret.
//! - `exp` and `iss` are always required; `aud` when `audiences` is set; `nbf` is checked when
//!   present. `leeway` applies to both `exp` and `nbf`.
//! - No key available for a token (the JWKS was never fetched, or does not have the token's
//!   `kid`) is a 401, like any token the gateway cannot verify: a 5xx is never the answer to a
//!   credential, and the JWKS outage is logged as a warning for the operator.
//! - Tokens longer than [`MAX_TOKEN_BYTES`] are refused before any parsing.
//! - Only verified tokens are cached, found by a keyed (randomly seeded) hash of the token and
//!   confirmed by comparing the whole token, until `exp` at the latest (and, for
//!   JWKS issuers, for at most one `jwks_refresh`, so a key withdrawn from the JWKS stops
//!   working within one refresh period). Failures are not cached, so garbage cannot fill it.
//! - The provider's JWKS state and cache survive a config reload when the provider's config
//!   (and its key files) did not change.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::request::Parts;
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::hash::BuildHasher as _;

use super::config::{RawJwtKey, RawJwtProvider, RawTokenSource};
use super::jwks::{self, Key, RemoteJwks};
use super::jwt_claims::ClaimPolicy;
use super::{AuthFailure, Verified};
use crate::spec::ConfigError;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most keys tried for one token (tokens without `kid` against several keys).
const MAX_KEY_ATTEMPTS: usize = 8;
/// Longest `leeway` accepted.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// A configured JWT issuer.
pub struct JwtProvider {
    name: String,
    allowed: Vec<Algorithm>,
    /// One prepared `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    static_keys: Vec<Key>,
    shared: Arc<Shared>,
    claims: ClaimPolicy,
    source: TokenSource,
    /// Longest a cache entry lives (`jwks_refresh` for JWKS issuers).
    cache_cap: Option<Duration>,
}

/// State that outlives a config reload when the provider's config did not change.
struct Shared {
    jwks: Option<Arc<RemoteJwks>>,
    /// Verified tokens by the keyed hash of the token (see `verify`).
    cache: Option<Cache<u64, Arc<Cached>, rustc_hash::FxBuildHasher>>,
    /// The cache's hash key, random per provider state.
    seed: foldhash::quality::RandomState,
}

struct Cached {
    /// The token itself: a hit must be this token, not one whose hash collides.
    token: Box<str>,
    verified: Verified,
    /// The JWKS key that verified the token and the JWKS generation then; `None` for a key from
    /// the config, which only a reload (a new provider and cache) can remove.
    remote_key: Option<(u64, u64)>,
    /// The token's `exp` (seconds since the epoch).
    exp: u64,
    ttl: Duration,
}

struct UntilExp;

impl moka::Expiry<u64, Arc<Cached>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &u64,
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

enum TokenSource {
    Bearer,
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

impl JwtProvider {
    /// Builds the provider; problems are reported under `path`.
    pub fn build(
        name: &str,
        raw: &RawJwtProvider,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        let mut err = |field: String, msg: String| errors.push(ConfigError::new(field, msg));

        if raw.issuer.trim().is_empty() {
            err(format!("{path}.issuer"), "must not be empty".into());
        }
        let mut allowed = Vec::new();
        for (i, a) in raw.algorithms.iter().enumerate() {
            match parse_alg(a) {
                Ok(alg) if !allowed.contains(&alg) => allowed.push(alg),
                Ok(_) => {}
                Err(why) => err(format!("{path}.algorithms[{i}]"), why),
            }
        }
        if raw.algorithms.is_empty() {
            err(
                format!("{path}.algorithms"),
                "list the accepted algorithms, e.g. [RS256]".into(),
            );
        }
        if raw.leeway.0 > MAX_LEEWAY {
            err(format!("{path}.leeway"), "must be at most 1h".into());
        }
        if raw.jwks_refresh.0 < Duration::from_secs(1) {
            err(format!("{path}.jwks_refresh"), "must be at least 1s".into());
        }

        // Keys (only checked against a valid allow-list, or every key would also fail).
        let mut static_keys = Vec::new();
        let mut key_files = Vec::new();
        if !allowed.is_empty() {
            for (i, k) in raw.keys.iter().enumerate() {
                let at = format!("{path}.keys[{i}]");
                match load_key(k, &allowed, &mut key_files) {
                    Ok(key) => static_keys.push(key),
                    Err((field, why)) => err(format!("{at}{field}"), why),
                }
            }
        }
        let jwks = match &raw.jwks_url {
            Some(url) => match check_jwks_url(url) {
                Ok(()) => match RemoteJwks::new(url, raw.jwks_refresh.0, allowed.clone()) {
                    Ok(r) => Some(r),
                    Err(why) => {
                        err(format!("{path}.jwks_url"), why);
                        None
                    }
                },
                Err(why) => {
                    err(format!("{path}.jwks_url"), why);
                    None
                }
            },
            None => None,
        };
        if raw.keys.is_empty() && raw.jwks_url.is_none() {
            err(
                format!("{path}.keys"),
                "configure `keys` or a `jwks_url`: without keys no token can be verified".into(),
            );
        }

        let source = match parse_source(&raw.token) {
            Ok(s) => s,
            Err((field, why)) => {
                err(format!("{path}.token{field}"), why);
                TokenSource::Bearer
            }
        };
        let token_header = match &source {
            TokenSource::Header(h) => Some(h),
            _ => None,
        };
        let claims = ClaimPolicy::build(raw, path, token_header, &mut err);
        if errors.len() > before {
            return None;
        }

        let validations = allowed
            .iter()
            .map(|alg| (*alg, validation(*alg, raw)))
            .collect();
        let shared = shared_state(raw, &key_files, jwks);
        Some(Self {
            name: name.to_string(),
            allowed,
            validations,
            static_keys,
            shared,
            claims,
            source,
            cache_cap: raw.jwks_url.as_ref().map(|_| raw.jwks_refresh.0),
        })
    }

    /// Fetches the JWKS now (when the issuer has one and it was never fetched), so the first
    /// request does not wait for it. A failure is logged like any fetch failure.
    pub async fn prefetch(&self) {
        if let Some(jwks) = &self.shared.jwks {
            jwks.keys().await;
        }
    }

    /// Upstream header names this provider may set (from `claim_headers`).
    pub fn header_names(&self) -> Vec<HeaderName> {
        self.claims.header_names()
    }

    /// The provider's name under `auth.jwt`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// JWKS fetches attempted so far (0 without a `jwks_url`).
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.jwks.as_ref().map_or(0, |j| j.fetches())
    }

    /// The token in this provider's location, `None` when absent. `Authorization: Bearer`
    /// with nothing after it counts as an (empty, invalid) token, not as no credential.
    pub fn token<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, str>> {
        match &self.source {
            TokenSource::Bearer => {
                let v = parts.headers.get(http::header::AUTHORIZATION)?.as_bytes();
                let rest = strip_bearer(v)?;
                Some(trimmed(rest))
            }
            TokenSource::Header(name) => {
                let v = parts.headers.get(name)?.as_bytes();
                Some(trimmed(strip_bearer(v).unwrap_or(v)))
            }
            TokenSource::Cookie(name) => {
                for v in parts.headers.get_all(http::header::COOKIE) {
                    let Ok(v) = v.to_str() else { continue };
                    for pair in v.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=') {
                            if k.trim() == name {
                                let val = val.trim();
                                let val = val
                                    .strip_prefix('"')
                                    .and_then(|s| s.strip_suffix('"'))
                                    .unwrap_or(val);
                                return Some(Cow::Borrowed(val));
                            }
                        }
                    }
                }
                None
            }
            TokenSource::Query(name) => {
                let query = parts.uri.query()?;
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| Cow::Owned(v.into_owned()))
            }
        }
    }

    /// Verifies `token`: signature, standard claims, required claims, claim rules.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthFailure> {
        if token.is_empty() {
            return Err(invalid("the token is empty"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is too long"));
        }
        // A keyed hash finds the entry, the whole token confirms it: no cryptographic digest
        // per request. The comparison need not be constant-time: a presented token meets a
        // cached one only when their hashes under the process's random seed collide, which
        // nobody can aim for, so its timing tells nothing about a token someone else holds.
        // (A byte-by-byte constant-time comparison cost about 6,000 instructions a request.)
        let key = match &self.shared.cache {
            Some(cache) => {
                let key = self.shared.seed.hash_one(token.as_bytes());
                if let Some(hit) = cache.get(&key) {
                    let same = *hit.token == *token;
                    if same
                        && hit.exp > jsonwebtoken::get_current_timestamp()
                        && self.key_kept(&hit)
                    {
                        return Ok(hit.verified.clone());
                    }
                    if same {
                        cache.invalidate(&key);
                    }
                }
                key
            }
            None => 0,
        };
        let (claims, remote_key) = self.verify_uncached(token).await?;
        let mut verified = self.claims.verified(&claims);
        let exp = claims.get("exp").and_then(numeric).unwrap_or(0);
        verified.claims = Some(Arc::new(claims));
        if let Some(cache) = &self.shared.cache {
            let now = jsonwebtoken::get_current_timestamp();
            if exp > now {
                let mut ttl = Duration::from_secs(exp - now);
                if let Some(cap) = self.cache_cap {
                    ttl = ttl.min(cap);
                }
                let entry = Cached {
                    token: token.into(),
                    verified: verified.clone(),
                    remote_key,
                    exp,
                    ttl,
                };
                cache.insert(key, Arc::new(entry));
            }
        }
        Ok(verified)
    }

    /// Whether the key that verified a cached token is still published. One atomic load while
    /// no refetch has removed a key; a scan of the (at most 64) keys after one did.
    fn key_kept(&self, hit: &Cached) -> bool {
        match (&hit.remote_key, &self.shared.jwks) {
            (Some((fingerprint, generation)), Some(jwks)) => {
                *generation == jwks.generation() || jwks.still_has(*fingerprint)
            }
            _ => true,
        }
    }

    /// Everything but the cache: returns the token's claims when it is acceptable, and, when a
    /// JWKS key verified it, that key's fingerprint and the JWKS generation it was seen in.
    async fn verify_uncached(
        &self,
        token: &str,
    ) -> Result<(Map<String, Value>, Option<(u64, u64)>), AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_failure(token))?;
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(invalid(
                "the token has critical header parameters, which are not supported",
            ));
        }
        let alg = header.alg;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(AuthFailure::Invalid(format!(
                "the {alg:?} algorithm is not accepted for this issuer"
            )));
        };
        let kid = header.kid.as_deref();

        // Read before the keys: a removal racing with this verification then makes the cached
        // entry check its key again rather than trust a generation newer than its keys.
        let generation = self.shared.jwks.as_ref().map_or(0, |j| j.generation());
        let mut remote = match &self.shared.jwks {
            Some(j) => Some(j.keys().await),
            None => None,
        };
        let has_kid = |keys: &[Key], kid: &str| keys.iter().any(|k| k.kid.as_deref() == Some(kid));
        let known = |remote: &Option<Arc<Vec<Key>>>, kid: &str| {
            has_kid(&self.static_keys, kid) || remote.as_deref().is_some_and(|r| has_kid(r, kid))
        };
        // An unknown kid may be a new key of the issuer: refetch (rate-limited). Not while no
        // key set was ever fetched: `keys()` already retries that on its own schedule.
        if let (Some(kid), Some(j)) = (kid, &self.shared.jwks) {
            if remote.as_ref().is_some_and(|r| !r.is_empty()) && !known(&remote, kid) {
                remote = Some(j.refetch_for_unknown_kid().await);
            }
        }
        let all = || {
            self.static_keys
                .iter()
                .chain(remote.iter().flat_map(|r| r.iter()))
                .filter(|k| k.accepts(alg))
        };
        // Keys named by the token's kid; else keys without a kid (a single configured key).
        let mut candidates: Vec<&Key> = match kid {
            Some(kid) => all().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => all().collect(),
        };
        if candidates.is_empty() && kid.is_some() {
            candidates = all().filter(|k| k.kid.is_none()).collect();
        }
        if candidates.is_empty() {
            let any_key =
                !self.static_keys.is_empty() || remote.as_ref().is_some_and(|r| !r.is_empty());
            return Err(match kid {
                _ if !any_key => invalid(
                    "no signing keys are available for this issuer (its JWKS could not be fetched)",
                ),
                Some(kid) if known(&remote, kid) => AuthFailure::Invalid(format!(
                    "the token's key (kid) is not for the {alg:?} algorithm"
                )),
                Some(_) => invalid("the token's key id (kid) is unknown"),
                None => invalid("no key of this issuer can verify the token's algorithm"),
            });
        }
        let mut failure = invalid("the token's signature is invalid");
        for key in candidates.into_iter().take(MAX_KEY_ATTEMPTS) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    self.claims.check(&data.claims)?;
                    let from_jwks = remote
                        .as_deref()
                        .is_some_and(|r| r.iter().any(|k| std::ptr::eq(k, key)));
                    let remote_key = from_jwks.then_some((key.fingerprint, generation));
                    return Ok((data.claims, remote_key));
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => {
                    failure = describe(e.kind());
                    break;
                }
            }
        }
        Err(failure)
    }

    /// The algorithms this issuer accepts.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.allowed
    }
}

fn invalid(why: &str) -> AuthFailure {
    AuthFailure::Invalid(why.to_string())
}

/// `Bearer <token>` (scheme case-insensitive, RFC 9110): the bytes after the scheme, or
/// `None` for another scheme.
fn strip_bearer(v: &[u8]) -> Option<&[u8]> {
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = &v[6..];
    match rest.first() {
        None => Some(rest),
        Some(b' ') | Some(b'\t') => Some(rest),
        Some(_) => None,
    }
}

fn trimmed(v: &[u8]) -> Cow<'_, str> {
    // `from_utf8` checks ASCII a word at a time; the lossy path walks a token of several hundred
    // bytes one at a time (3,500 instructions per request under callgrind).
    if let Ok(s) = std::str::from_utf8(v) {
        return Cow::Borrowed(s.trim());
    }
    Cow::Owned(String::from_utf8_lossy(v).trim().to_string())
}

fn numeric(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))
}

/// Why the header did not parse, without quoting any of it.
fn header_failure(token: &str) -> AuthFailure {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let first = token.split('.').next().unwrap_or("");
    let alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<AlgOnly>(&b).ok())
        .map(|h| h.alg);
    match alg {
        Some(a) if a.eq_ignore_ascii_case("none") => {
            invalid("unsigned tokens (alg: none) are never accepted")
        }
        Some(a) if a.parse::<Algorithm>().is_err() => {
            invalid("the token's algorithm is not supported")
        }
        Some(_) => invalid("the token's header is malformed"),
        None => invalid("the token is malformed"),
    }
}

/// A failure description for a token whose signature checked out (or could not be checked).
fn describe(kind: &ErrorKind) -> AuthFailure {
    AuthFailure::Invalid(match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_string(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".to_string(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".to_string(),
        ErrorKind::MissingRequiredClaim(c) => {
            format!("the token lacks the required claim `{}`", safe_claim(c))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            format!("the token's `{}` claim is malformed", safe_claim(c))
        }
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".to_string(),
        ErrorKind::InvalidSignature => "the token's signature is invalid".to_string(),
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => "the token is malformed".to_string(),
        _ => "the token is invalid".to_string(),
    })
}

/// Claim names in jsonwebtoken errors are its own (`exp`, `aud`...); anything else is replaced
/// rather than echoed.
fn safe_claim(c: &str) -> &str {
    match c {
        "exp" | "nbf" | "iss" | "aud" | "sub" => c,
        _ => "?",
    }
}

fn parse_alg(a: &str) -> Result<Algorithm, String> {
    if a.eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never accepted".to_string());
    }
    a.parse::<Algorithm>().map_err(|_| {
        crate::spec::suggest::unknown(
            "algorithm",
            a,
            &[
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
                "HS256", "HS384", "HS512",
            ],
        )
    })
}

fn validation(alg: Algorithm, raw: &RawJwtProvider) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = raw.leeway.0.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[raw.issuer.as_str()]);
    let mut required: HashSet<String> = ["exp", "iss"].iter().map(|s| s.to_string()).collect();
    if raw.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&raw.audiences);
        required.insert("aud".to_string());
    }
    for c in &raw.required_claims {
        if matches!(c.as_str(), "nbf" | "sub") {
            required.insert(c.clone());
        }
    }
    v.required_spec_claims = required;
    v
}

/// Reads one configured key; on error, the field suffix (`.pem`...) and the reason.
fn load_key(
    k: &RawJwtKey,
    allowed: &[Algorithm],
    key_files: &mut Vec<String>,
) -> Result<Key, (String, String)> {
    let kid = k.kid.as_deref();
    let given = [
        k.pem.is_some(),
        k.pem_file.is_some(),
        k.jwk.is_some(),
        k.secret.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err((
            String::new(),
            "give exactly one of `pem`, `pem_file`, `jwk`, `secret`".to_string(),
        ));
    }
    if let Some(pem) = &k.pem {
        return jwks::key_from_pem(pem, kid, allowed).map_err(|e| (".pem".to_string(), e));
    }
    if let Some(file) = &k.pem_file {
        let text =
            crate::spec::expand::read_regular_file(file, crate::spec::expand::MAX_FILE_BYTES)
                .map_err(|e| {
                    (
                        ".pem_file".to_string(),
                        format!("cannot read `{file}`: {e}"),
                    )
                })?;
        let key = jwks::key_from_pem(&text, kid, allowed)
            .map_err(|e| (".pem_file".to_string(), format!("`{file}`: {e}")))?;
        key_files.push(text);
        return Ok(key);
    }
    if let Some(jwk) = &k.jwk {
        return jwks::key_from_jwk(jwk, kid, allowed).map_err(|e| (".jwk".to_string(), e));
    }
    let secret = k.secret.as_deref().unwrap_or_default();
    jwks::key_from_secret(secret, kid, allowed).map_err(|e| (".secret".to_string(), e))
}

fn check_jwks_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("`{url}` must be an http:// or https:// URL"))
    }
}

fn parse_source(raw: &RawTokenSource) -> Result<TokenSource, (String, String)> {
    match (&raw.header, &raw.cookie, &raw.query) {
        (None, None, None) => Ok(TokenSource::Bearer),
        (Some(h), None, None) => HeaderName::from_bytes(h.as_bytes())
            .map(TokenSource::Header)
            .map_err(|_| {
                (
                    ".header".to_string(),
                    format!("`{h}` is not a valid header name"),
                )
            }),
        (None, Some(c), None) if !c.is_empty() => Ok(TokenSource::Cookie(c.clone())),
        (None, None, Some(q)) if !q.is_empty() => Ok(TokenSource::Query(q.clone())),
        (None, Some(_), None) => Err((".cookie".to_string(), "must not be empty".to_string())),
        (None, None, Some(_)) => Err((".query".to_string(), "must not be empty".to_string())),
        _ => Err((
            String::new(),
            "give at most one of `header`, `cookie`, `query`".to_string(),
        )),
    }
}

type Registry = Mutex<Vec<([u8; 32], Weak<Shared>)>>;

/// The provider's JWKS state and cache: reused from the running plan when the provider's
/// config and key files are unchanged (a reload then keeps fetched keys and cached tokens),
/// new otherwise. The registry is only touched while building a plan, never per request.
fn shared_state(
    raw: &RawJwtProvider,
    key_files: &[String],
    jwks: Option<RemoteJwks>,
) -> Arc<Shared> {
    static REGISTRY: Registry = Mutex::new(Vec::new());
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(raw).unwrap_or_default());
    for f in key_files {
        h.update(f.as_bytes());
    }
    let fingerprint: [u8; 32] = h.finalize().into();
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|(_, w)| w.strong_count() > 0);
    if let Some(existing) = registry
        .iter()
        .find(|(f, _)| *f == fingerprint)
        .and_then(|(_, w)| w.upgrade())
    {
        return existing;
    }
    let cache = (raw.cache_size > 0).then(|| {
        Cache::builder()
            .max_capacity(raw.cache_size)
            .expire_after(UntilExp)
            .build_with_hasher(rustc_hash::FxBuildHasher)
    });
    let shared = Arc::new(Shared {
        jwks: jwks.map(Arc::new),
        cache,
        seed: foldhash::quality::RandomState::default(),
    });
    registry.push((fingerprint, Arc::downgrade(&shared)));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], uri: &str) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn provider(token: RawTokenSource) -> JwtProvider {
        let raw: RawJwtProvider = serde_yaml_ng::from_str(
            "issuer: https://issuer.example\nalgorithms: [HS256]\nkeys: [{secret: 0123456789abcdef0123456789abcdef}]",
        )
        .expect("raw");
        let raw = RawJwtProvider { token, ..raw };
        let mut errors = Vec::new();
        JwtProvider::build("t", &raw, "auth.jwt.t", &mut errors).expect("provider")
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_bare_scheme_is_an_empty_token() {
        let p = provider(RawTokenSource::default());
        let t = |v: &str| {
            p.token(&parts(&[("authorization", v)], "/"))
                .map(|c| c.into_owned())
        };
        assert_eq!(t("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(t("bEaReR   abc ").as_deref(), Some("abc"));
        assert_eq!(t("Bearer").as_deref(), Some(""));
        assert_eq!(t("Bearerabc"), None);
        assert_eq!(t("Basic abc"), None);
        assert_eq!(p.token(&parts(&[], "/")), None);
    }

    #[test]
    fn cookie_query_and_header_sources() {
        let p = provider(RawTokenSource {
            cookie: Some("session".into()),
            ..Default::default()
        });
        let req = parts(&[("cookie", "a=1; session=\"tok\"; b=2")], "/");
        assert_eq!(p.token(&req).as_deref(), Some("tok"));
        let p = provider(RawTokenSource {
            query: Some("access_token".into()),
            ..Default::default()
        });
        let req = parts(&[], "/x?a=1&access_token=t%2Bk");
        assert_eq!(p.token(&req).as_deref(), Some("t+k"));
        let p = provider(RawTokenSource {
            header: Some("x-token".into()),
            ..Default::default()
        });
        assert_eq!(
            p.token(&parts(&[("x-token", "Bearer tk")], "/")).as_deref(),
            Some("tk")
        );
        assert_eq!(
            p.token(&parts(&[("x-token", "tk")], "/")).as_deref(),
            Some("tk")
        );
    }

    #[test]
    fn config_errors_point_at_fields() {
        let raw: RawJwtProvider = serde_yaml_ng::from_str(
            "issuer: ''\nalgorithms: [none, RS256, XX1]\nkeys: [{secret: s3cr3t}, {pem: x, secret: y}]\nclaims: {a: {}}\ntoken: {header: x, cookie: y}\nclaim_headers: {sub: Host, x: 'bad name'}\njwks_url: ftp://x",
        )
        .expect("raw");
        let mut errors = Vec::new();
        assert!(JwtProvider::build("t", &raw, "auth.jwt.t", &mut errors).is_none());
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "auth.jwt.t.issuer",
            "auth.jwt.t.algorithms[0]",
            "auth.jwt.t.algorithms[2]",
            "auth.jwt.t.keys[0].secret",
            "auth.jwt.t.keys[1]",
            "auth.jwt.t.claims.a",
            "auth.jwt.t.token",
            "auth.jwt.t.claim_headers.sub",
            "auth.jwt.t.claim_headers.x",
            "auth.jwt.t.jwks_url",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        assert!(
            errors.iter().all(|e| !e.message.contains("s3cr3t")),
            "secrets are never quoted: {errors:?}"
        );
    }

    fn hs256(sub: &str) -> String {
        let claims = serde_json::json!({
            "iss": "https://issuer.example",
            "sub": sub,
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .expect("token")
    }

    #[tokio::test]
    async fn a_cache_entry_answers_only_the_token_it_was_made_for() {
        let p = provider(RawTokenSource::default());
        let genuine = hs256("alice");
        assert!(p.verify(&genuine).await.is_ok());
        let cache = p.shared.cache.as_ref().expect("cache on by default");
        let key = p.shared.seed.hash_one(genuine.as_bytes());
        assert!(cache.get(&key).is_some(), "a verified token is cached");
        // A forged token placed where the genuine one's entry is, as a hash collision would:
        // the comparison of whole tokens refuses it, and the signature check then does.
        let forged = format!("{}x", genuine);
        let forged_key = p.shared.seed.hash_one(forged.as_bytes());
        let entry = cache.get(&key).expect("entry");
        cache.insert(forged_key, entry);
        assert!(p.verify(&forged).await.is_err());
        assert!(p.verify(&genuine).await.is_ok());
    }
}
