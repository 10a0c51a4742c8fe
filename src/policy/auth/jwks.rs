//! JWT signing keys: static keys from the config (PEM, PEM file, JWK, HMAC secret) and a remote
//! JWKS document, fetched at first use, refreshed every `jwks_refresh` and on an unknown `kid`.
//!
//! Owns parsing keys and deciding which algorithms each key may verify: the issuer's allow-list,
//! the key's family (an RSA/EC/Ed public key never serves as an HMAC secret, so HS/RS confusion
//! is impossible), its curve, and the JWK's own `alg`. The remote state is shared without locks
//! on the request path (`ArcSwap` for the key set, atomics for the schedule). Does not own
//! verifying tokens (`jwt.rs`).
//!
//! Failure policy: a fetch that fails (unreachable, non-2xx, unparsable, no usable key) keeps
//! the last good keys and logs one warning per refresh interval, not one per request. Fetches
//! are rate-limited: while no key set was ever fetched, at most one attempt per
//! [`MIN_REFETCH`]; an unknown `kid` triggers at most one refetch per [`MIN_REFETCH`]; the
//! scheduled refresh runs in the background when a request finds the keys older than
//! `jwks_refresh` (no traffic, no fetches), so requests never wait for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::http_client;

/// Least time between two fetches triggered by unknown `kid`s (and between retries while no
/// key set was ever fetched).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Time allowed for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Most keys taken from one JWKS document.
const MAX_JWKS_KEYS: usize = 64;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Smallest HMAC secret accepted from the config, in bytes (RFC 7518 §3.2 for HS256).
pub const MIN_SECRET_BYTES: usize = 32;

/// One verification key (its `Debug` output redacts the material).
#[derive(Debug)]
pub struct Key {
    /// Key id, matched against the token's `kid`.
    pub kid: Option<String>,
    /// Algorithms this key may verify (never empty).
    pub algs: Vec<Algorithm>,
    /// The key material.
    pub key: DecodingKey,
    /// Identifies the key (its `kid` and material): a verified-token cache entry records the
    /// key that verified it, and dies when that key leaves the key set.
    pub fingerprint: u64,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.algs.contains(&alg)
    }
}

/// The family an algorithm belongs to (the key type it needs).
pub fn family(alg: Algorithm) -> AlgorithmFamily {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => AlgorithmFamily::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => AlgorithmFamily::Rsa,
        ES256 | ES384 => AlgorithmFamily::Ec,
        EdDSA => AlgorithmFamily::Ed,
    }
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "an HMAC secret",
        AlgorithmFamily::Rsa => "an RSA key",
        AlgorithmFamily::Ec => "an EC key",
        AlgorithmFamily::Ed => "an Ed25519 key",
    }
}

/// A public key in PEM form (RSA, EC P-256/P-384 or Ed25519; SPKI, or PKCS#1 for RSA).
pub fn key_from_pem(pem: &str, kid: Option<&str>, allowed: &[Algorithm]) -> Result<Key, String> {
    if pem.contains("PRIVATE KEY") {
        return Err("this is a private key: configure the public key only".to_string());
    }
    let bytes = pem.as_bytes();
    let key = DecodingKey::from_rsa_pem(bytes)
        .or_else(|_| DecodingKey::from_ec_pem(bytes))
        .or_else(|_| DecodingKey::from_ed_pem(bytes))
        .map_err(|_| "not a PEM public key (RSA, EC or Ed25519)".to_string())?;
    finish(kid.map(str::to_string), key, None, allowed)
}

/// An HMAC secret.
pub fn key_from_secret(
    secret: &str,
    kid: Option<&str>,
    allowed: &[Algorithm],
) -> Result<Key, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "an HMAC secret must be at least {MIN_SECRET_BYTES} bytes (a short one can be brute-forced)"
        ));
    }
    finish(
        kid.map(str::to_string),
        DecodingKey::from_secret(secret.as_bytes()),
        None,
        allowed,
    )
}

/// A JWK (JSON object). `kid` overrides the JWK's own `kid`.
pub fn key_from_jwk(
    value: &serde_json::Value,
    kid: Option<&str>,
    allowed: &[Algorithm],
) -> Result<Key, String> {
    if value.get("d").is_some() {
        return Err("this JWK holds a private key: configure the public key only".to_string());
    }
    let jwk: Jwk = serde_json::from_value(value.clone())
        .map_err(|e| format!("not a usable JWK: {}", strip_position(&e.to_string())))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("this JWK is an encryption key (`use: enc`)".to_string());
    }
    let jwk_alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signing_alg(a).ok_or("the JWK's `alg` is not a signature algorithm")?),
    };
    let key = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve != EllipticCurve::Ed25519 => {
            return Err("only the Ed25519 curve is supported for OKP keys".to_string())
        }
        _ => DecodingKey::from_jwk(&jwk).map_err(|_| "the JWK's key material is malformed")?,
    };
    let kid = kid.map(str::to_string).or(jwk.common.key_id.clone());
    finish(kid, key, jwk_alg, allowed)
}

fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match a {
        K::HS256 => Algorithm::HS256,
        K::HS384 => Algorithm::HS384,
        K::HS512 => Algorithm::HS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Checks the key material and settles which allowed algorithms it can verify.
fn finish(
    kid: Option<String>,
    key: DecodingKey,
    jwk_alg: Option<Algorithm>,
    allowed: &[Algorithm],
) -> Result<Key, String> {
    let fam = key.family();
    match (fam, key.kind()) {
        (AlgorithmFamily::Rsa, kind) => {
            let public = match kind {
                DecodingKeyKind::SecretOrDer(der) => rsa::RsaPublicKey::from_pkcs1_der(der)
                    .map_err(|_| "the RSA key is malformed".to_string())?,
                DecodingKeyKind::RsaModulusExponent { n, e } => rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(n),
                    rsa::BigUint::from_bytes_be(e),
                )
                .map_err(|e| format!("the RSA key is unusable: {e}"))?,
            };
            let bits = public.n().bits();
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
        }
        // The Ed25519 verifier slices the first 32 bytes: anything else must never reach it.
        (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(b)) if b.len() != 32 => {
            return Err("the Ed25519 key must be 32 bytes".to_string())
        }
        (AlgorithmFamily::Hmac, DecodingKeyKind::SecretOrDer(b)) if b.is_empty() => {
            return Err("the HMAC secret is empty".to_string())
        }
        _ => {}
    }
    let algs: Vec<Algorithm> = allowed
        .iter()
        .copied()
        .filter(|a| family(*a) == fam)
        .filter(|a| jwk_alg.is_none_or(|j| j == *a))
        .filter(|a| usable(&key, *a))
        .collect();
    if algs.is_empty() {
        let wanted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        return Err(match jwk_alg {
            Some(j) if !allowed.contains(&j) => {
                format!("the key is for {j:?}, which the issuer's `algorithms` do not allow")
            }
            _ => format!(
                "{} cannot verify any of the allowed algorithms ({})",
                family_name(fam),
                wanted.join(", ")
            ),
        });
    }
    let fingerprint = fingerprint(kid.as_deref(), &key);
    Ok(Key {
        kid,
        algs,
        key,
        fingerprint,
    })
}

/// A hash of the key id and material. Not a secret and not on the request path (computed when
/// a key is loaded): it only tells whether the same key is still published.
fn fingerprint(kid: Option<&str>, key: &DecodingKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    kid.hash(&mut h);
    match key.kind() {
        DecodingKeyKind::SecretOrDer(b) => b.hash(&mut h),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            n.hash(&mut h);
            e.hash(&mut h);
        }
    }
    h.finish()
}

/// Whether `key` is valid for `alg` (for EC keys: on the algorithm's curve). Verifying a dummy
/// signature fails either way; only an unusable key makes the verifier itself an error.
fn usable(key: &DecodingKey, alg: Algorithm) -> bool {
    match family(alg) {
        AlgorithmFamily::Ec | AlgorithmFamily::Ed => {
            jsonwebtoken::crypto::verify("AAAA", b"probe", key, alg).is_ok()
        }
        AlgorithmFamily::Rsa | AlgorithmFamily::Hmac => true,
    }
}

/// serde_json errors end with "at line 1 column 42": noise in a config message.
fn strip_position(msg: &str) -> &str {
    msg.split(" at line ").next().unwrap_or(msg)
}

/// Parses a JWKS document; keys that are not usable for the allowed algorithms are skipped
/// (a JWKS often also carries encryption keys or keys for other algorithms).
pub fn parse_jwks(body: &[u8], allowed: &[Algorithm]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the document is not a JWKS: {}",
            strip_position(&e.to_string())
        )
    })?;
    let keys: Vec<Key> = doc
        .keys
        .iter()
        .take(MAX_JWKS_KEYS)
        .filter_map(|v| key_from_jwk(v, None, allowed).ok())
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "none of its {} keys can verify the allowed algorithms",
            doc.keys.len()
        ));
    }
    Ok(keys)
}

/// A JWKS endpoint and the keys last fetched from it.
pub struct RemoteJwks {
    url: String,
    uri: Uri,
    refresh: Duration,
    allowed: Vec<Algorithm>,
    keys: ArcSwap<Vec<Key>>,
    loaded: AtomicBool,
    fetching: AtomicBool,
    done: Notify,
    epoch: Instant,
    /// Times below are milliseconds since `epoch` plus one; 0 means never.
    last_attempt: AtomicU64,
    last_kid_refetch: AtomicU64,
    last_warning: AtomicU64,
    fetches: AtomicU64,
    /// Bumped whenever a fetched key set drops a key, so cached verifications can tell with
    /// one atomic load that the keys they were made with may be gone.
    generation: AtomicU64,
}

impl RemoteJwks {
    /// An endpoint not fetched yet. `url` must parse as an absolute http(s) URI.
    pub fn new(url: &str, refresh: Duration, allowed: Vec<Algorithm>) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("`{url}` is not a valid URL"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("`{url}` must be an http:// or https:// URL")),
        }
        if uri.host().is_none() {
            return Err(format!("`{url}` has no host"));
        }
        Ok(Self {
            url: url.to_string(),
            uri,
            refresh,
            allowed,
            keys: ArcSwap::from_pointee(Vec::new()),
            loaded: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
            done: Notify::new(),
            epoch: Instant::now(),
            last_attempt: AtomicU64::new(0),
            last_kid_refetch: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        })
    }

    /// Fetches attempted so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The current keys. The first call fetches them (and waits); later calls start a
    /// background refresh when the keys are older than `jwks_refresh`.
    pub async fn keys(self: &Arc<Self>) -> Arc<Vec<Key>> {
        if !self.loaded.load(Ordering::Acquire) {
            let start = self.claim(&self.last_attempt, MIN_REFETCH);
            self.fetch_and_wait(start).await;
        } else if self.claim(&self.last_attempt, self.refresh) {
            self.start_fetch();
        }
        self.keys.load_full()
    }

    /// Changes whenever a refetch removed a key (see [`RemoteJwks::still_has`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the key with `fingerprint` is in the current key set.
    pub fn still_has(&self, fingerprint: u64) -> bool {
        self.keys
            .load()
            .iter()
            .any(|k| k.fingerprint == fingerprint)
    }

    /// After a token named a `kid` the keys do not have: refetches unless that was done less
    /// than [`MIN_REFETCH`] ago, and returns the keys (new or not).
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) -> Arc<Vec<Key>> {
        let start = self.claim(&self.last_kid_refetch, MIN_REFETCH);
        if start {
            self.last_attempt.store(self.now(), Ordering::Relaxed);
        }
        self.fetch_and_wait(start).await;
        self.keys.load_full()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Takes the right to act now if the last time in `slot` is at least `every` ago.
    fn claim(&self, slot: &AtomicU64, every: Duration) -> bool {
        let now = self.now();
        let last = slot.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < every.as_millis() as u64 {
            return false;
        }
        slot.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Starts a fetch (if `start` and none is running) and waits for the running one, if any.
    async fn fetch_and_wait(self: &Arc<Self>, start: bool) {
        let notified = self.done.notified();
        tokio::pin!(notified);
        // Registered before looking at `fetching`, so the end of a fetch cannot be missed.
        notified.as_mut().enable();
        let started = start && self.start_fetch();
        if !(started || self.fetching.load(Ordering::Acquire)) {
            return; // nothing to wait for
        }
        notified.await;
    }

    /// Spawns a fetch unless one is running; true when it did. The fetch is its own task, so
    /// a client that goes away cannot cancel it halfway.
    fn start_fetch(self: &Arc<Self>) -> bool {
        if self
            .fetching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _done = FetchDone(&me);
            me.fetch_once().await;
        });
        true
    }

    async fn fetch_once(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.download().await.and_then(|body| {
            parse_jwks(&body, &self.allowed).map_err(|e| format!("{}: {e}", self.url))
        });
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let old = self.keys.swap(Arc::new(keys));
                let current = self.keys.load();
                let dropped = old
                    .iter()
                    .any(|k| !current.iter().any(|c| c.fingerprint == k.fingerprint));
                if dropped {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                self.loaded.store(true, Ordering::Release);
            }
            Err(why) => {
                let kept = if self.loaded.load(Ordering::Acquire) {
                    "keeping the keys fetched before"
                } else {
                    "no keys yet: tokens of this issuer are rejected"
                };
                if self.claim(&self.last_warning, self.refresh.max(MIN_REFETCH)) {
                    tracing::warn!("JWKS fetch failed ({kept}): {why}");
                } else {
                    tracing::debug!("JWKS fetch failed ({kept}): {why}");
                }
            }
        }
    }

    async fn download(&self) -> Result<Bytes, String> {
        let req = Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portico")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{}: {e}", self.url))?;
        let resp = http_client::fetch(req, FETCH_TIMEOUT, MAX_JWKS_BYTES).await?;
        if !resp.status.is_success() {
            return Err(format!("{}: answered {}", self.url, resp.status));
        }
        Ok(resp.body)
    }
}

/// Ends a fetch, even if its task panicked or was cancelled: clears the flag, wakes waiters.
struct FetchDone<'a>(&'a RemoteJwks);

impl Drop for FetchDone<'_> {
    fn drop(&mut self) {
        self.0.fetching.store(false, Ordering::Release);
        self.0.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hmac_only_and_long() {
        let all = [Algorithm::HS256, Algorithm::RS256];
        assert!(key_from_secret("short", None, &all).is_err());
        let k = key_from_secret(&"s".repeat(32), Some("a"), &all).expect("key");
        assert_eq!(k.algs, vec![Algorithm::HS256]);
        assert!(key_from_secret(&"s".repeat(32), None, &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn jwk_rules() {
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let k = key_from_jwk(&ed, None, &[Algorithm::EdDSA, Algorithm::HS256]).expect("ed");
        assert_eq!(k.algs, vec![Algorithm::EdDSA]);
        // An Ed25519 key with a short `x` must be refused, not reach the verifier.
        let short = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"});
        assert!(key_from_jwk(&short, None, &[Algorithm::EdDSA]).is_err());
        let private = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "d": "AAAA"});
        assert!(key_from_jwk(&private, None, &[Algorithm::EdDSA])
            .unwrap_err()
            .contains("private"));
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"});
        assert!(key_from_jwk(&oct, None, &[Algorithm::RS256]).is_err());
        assert!(parse_jwks(
            b"{\"keys\": [{\"kty\": \"weird\"}, 1]}",
            &[Algorithm::RS256]
        )
        .is_err());
        assert!(parse_jwks(b"nope", &[Algorithm::RS256]).is_err());
    }

    /// A `MakeWriter` that keeps what was logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn failed_fetches_warn_once_per_interval_and_are_rate_limited() {
        // Port 1 on loopback refuses connections at once: every fetch fails fast.
        let jwks = Arc::new(
            RemoteJwks::new(
                "http://127.0.0.1:1/jwks",
                Duration::from_secs(60),
                vec![Algorithm::RS256],
            )
            .expect("url"),
        );
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || {
            rt.block_on(async {
                for _ in 0..3 {
                    jwks.fetch_once().await;
                }
                // The request path: the first use fetches (and fails), the next ones within
                // MIN_REFETCH do not fetch again.
                assert!(jwks.keys().await.is_empty());
                assert!(jwks.keys().await.is_empty());
                assert!(jwks.refetch_for_unknown_kid().await.is_empty());
            })
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("JWKS fetch failed").count(), 1, "{text}");
        assert_eq!(jwks.fetches(), 5, "3 direct, 1 first use, 1 unknown kid");
    }

    #[test]
    fn pem_private_keys_are_refused() {
        let e = key_from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
            &[Algorithm::RS256],
        )
        .unwrap_err();
        assert!(e.contains("private"));
        assert!(key_from_pem("garbage", None, &[Algorithm::RS256]).is_err());
    }
}
