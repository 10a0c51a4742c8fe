//! Basic authentication (RFC 7617): `Authorization: Basic base64(user:password)` checked against
//! a consumer's argon2 or bcrypt password hash.
//!
//! Owns parsing the header, verifying the password and the verified-credential cache. It does not
//! own the user table (the [`ConsumerRegistry`]) nor the 401 response (`mod.rs` builds it).
//!
//! Why the care:
//! - A password hash costs milliseconds of CPU by design. Each worker runs a single-threaded event
//!   loop, so verification runs on tokio's blocking pool (`spawn_blocking`), and at most one
//!   verification per CPU core runs at once (a process-wide semaphore): a flood of wrong passwords
//!   queues up instead of starting hundreds of threads each holding argon2's memory.
//! - Verified pairs are cached (keyed by the SHA-256 of `user NUL password`, never the password)
//!   for `auth.basic.cache_ttl`, so a client sending the same credentials on every request pays
//!   the hash once. Failures are not cached: a wrong password never becomes "known".
//! - An unknown user costs the same as a wrong password: the password is checked against a dummy
//!   hash made with the same algorithm and parameters as a real one, so response time does not
//!   tell which user names exist. The message is the same for both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http::request::Parts;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::config::RawBasicSettings;
use super::{AuthFailure, Consumer, ConsumerRegistry};

/// The one message for an unknown user and a wrong password.
const BAD_CREDENTIALS: &str = "invalid user name or password";

/// Basic-auth verifier, one per plan (its cache is dropped with the plan on reload).
pub struct BasicAuth {
    cache: Option<moka::sync::Cache<[u8; 32], Cached>>,
    ttl: Duration,
    /// Lazily made dummy hash for unknown users (see the module docs).
    dummy: Arc<OnceLock<String>>,
    /// Password hashes verified so far (tests and diagnostics: a cache hit does not count).
    verifications: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Cached {
    consumer: Arc<Consumer>,
    /// Tokio time, so tests with a paused clock see entries expire.
    until: Instant,
}

impl BasicAuth {
    /// From the `auth.basic` settings.
    pub fn build(raw: &RawBasicSettings) -> Self {
        let ttl: Duration = raw.cache_ttl.0;
        let cache = (raw.cache_size > 0 && !ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(raw.cache_size)
                .time_to_live(ttl)
                .build()
        });
        Self {
            cache,
            ttl,
            dummy: Arc::new(OnceLock::new()),
            verifications: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The user and password of an `Authorization: Basic` header; `None` without one (or with
    /// another scheme). A malformed value (not base64, no colon, not UTF-8) is an `Invalid`
    /// failure: a 401, never a 5xx.
    pub fn credentials(parts: &Parts) -> Option<Result<(String, String), AuthFailure>> {
        let value = parts.headers.get(http::header::AUTHORIZATION)?.as_bytes();
        let value = value.trim_ascii();
        let (scheme, rest) = match value.iter().position(|b| *b == b' ' || *b == b'\t') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &b""[..]),
        };
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return None;
        }
        Some(parse_basic(rest.trim_ascii()))
    }

    /// Checks `password` against the consumer's hash (off the event loop), using the cache.
    pub async fn verify(
        &self,
        registry: &impl UserTable,
        user: &str,
        password: &str,
    ) -> Result<Arc<Consumer>, AuthFailure> {
        let key = cache_key(user, password);
        let found = registry.basic_user(user);
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            // Only while the user still belongs to the same consumer record: a credential
            // revoked or changed in the consumer store stops working at once, not at the TTL.
            let current = found.is_some_and(|(_, c)| Arc::ptr_eq(c, &hit.consumer));
            if current && hit.until > Instant::now() {
                return Ok(hit.consumer);
            }
        }
        let (hash, consumer) = match found {
            Some((hash, consumer)) => (Some(hash.to_string()), Some(Arc::clone(consumer))),
            None => (None, None),
        };
        // No basic user at all: there is nothing to enumerate and nothing to imitate.
        let representative = match (&hash, registry.any_hash()) {
            (Some(_), _) => None,
            (None, Some(like)) => Some(like.to_string()),
            (None, None) => return Err(AuthFailure::Invalid(BAD_CREDENTIALS.into())),
        };
        let password = password.to_string();
        let dummy = Arc::clone(&self.dummy);
        let counter = Arc::clone(&self.verifications);
        let permit = permits()
            .acquire()
            .await
            .map_err(|_| AuthFailure::Unavailable("password verification is shut down".into()))?;
        let outcome = tokio::task::spawn_blocking(move || {
            // Held by the hashing thread, so a client that goes away does not free its slot
            // while the hash still runs.
            let _permit = permit;
            counter.fetch_add(1, Ordering::Relaxed);
            match (hash, representative) {
                (Some(hash), _) => check_password(password.as_bytes(), &hash),
                (None, Some(rep)) => {
                    let dummy = dummy.get_or_init(|| dummy_hash_like(&rep));
                    // Same work as a real check; the answer is always "no".
                    let _ = check_password(password.as_bytes(), dummy);
                    Ok(false)
                }
                (None, None) => Ok(false),
            }
        })
        .await;
        match (outcome, consumer) {
            (Ok(Ok(true)), Some(consumer)) => {
                if let Some(cache) = &self.cache {
                    cache.insert(
                        key,
                        Cached {
                            consumer: Arc::clone(&consumer),
                            until: Instant::now() + self.ttl,
                        },
                    );
                }
                Ok(consumer)
            }
            (Ok(Ok(_)), _) => Err(AuthFailure::Invalid(BAD_CREDENTIALS.into())),
            (Ok(Err(why)), _) => {
                // Config validation parses every hash, so this is unexpected; no password here.
                tracing::warn!(user, "basic auth: stored password hash unusable: {why}");
                Err(AuthFailure::Invalid(BAD_CREDENTIALS.into()))
            }
            (Err(e), _) => Err(AuthFailure::Unavailable(format!(
                "password verification failed: {e}"
            ))),
        }
    }

    /// How many password hashes this verifier has computed (cache hits do not count).
    pub fn hash_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }
}

/// Where basic-auth users are looked up: the file registry, or it and the consumer store.
pub trait UserTable {
    /// The password hash and consumer of user `user`.
    fn basic_user(&self, user: &str) -> Option<(&str, &Arc<Consumer>)>;
    /// One password hash of the table (to imitate its cost for unknown users).
    fn any_hash(&self) -> Option<&str>;
}

impl UserTable for ConsumerRegistry {
    fn basic_user(&self, user: &str) -> Option<(&str, &Arc<Consumer>)> {
        self.basic(user)
    }
    fn any_hash(&self) -> Option<&str> {
        self.basic_hashes().min()
    }
}

/// The file registry, then the consumer store's copy.
pub struct Users<'a> {
    /// File-defined consumers.
    pub file: &'a ConsumerRegistry,
    /// The store's copy, when there is a store.
    pub stored: Option<&'a super::stored::Snapshot>,
}

impl UserTable for Users<'_> {
    fn basic_user(&self, user: &str) -> Option<(&str, &Arc<Consumer>)> {
        self.file
            .basic(user)
            .or_else(|| self.stored.and_then(|s| s.basic(user)))
    }
    fn any_hash(&self) -> Option<&str> {
        self.file
            .any_hash()
            .or_else(|| self.stored.and_then(|s| s.any_basic_hash()))
    }
}

/// `base64(user:password)` to its parts.
fn parse_basic(encoded: &[u8]) -> Result<(String, String), AuthFailure> {
    let invalid = |why: &str| Err(AuthFailure::Invalid(why.to_string()));
    if encoded.is_empty() {
        return invalid("the basic credentials are empty");
    }
    let Ok(decoded) = BASE64.decode(encoded) else {
        return invalid("the basic credentials are not valid base64");
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return invalid("the basic credentials are not UTF-8");
    };
    let Some((user, password)) = text.split_once(':') else {
        return invalid("the basic credentials lack the `:` between user name and password");
    };
    if user.is_empty() {
        return invalid("the basic credentials have no user name");
    }
    Ok((user.to_string(), password.to_string()))
}

/// Standard alphabet, padding optional (some clients drop it).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0u8]);
    h.update(password.as_bytes());
    h.finalize().into()
}

/// At most one password hash per core at a time, across all workers.
fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores.max(1))
    })
}

/// Which kind of hash a stored string is.
enum HashKind {
    Argon2,
    Bcrypt,
}

fn kind(hash: &str) -> Option<HashKind> {
    if hash.starts_with("$argon2") {
        Some(HashKind::Argon2)
    } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        Some(HashKind::Bcrypt)
    } else {
        None
    }
}

/// Checks that `hash` is a usable argon2 (PHC string) or bcrypt hash; the message never quotes
/// the hash. Used by config validation.
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    match kind(hash) {
        Some(HashKind::Argon2) => {
            let parsed = argon2::PasswordHash::new(hash)
                .map_err(|e| format!("not a valid argon2 PHC string ({e})"))?;
            argon2::Algorithm::try_from(parsed.algorithm)
                .map_err(|e| format!("unknown argon2 variant ({e})"))?;
            argon2::Params::try_from(&parsed)
                .map_err(|e| format!("invalid argon2 parameters ({e})"))?;
            if parsed.hash.is_none() || parsed.salt.is_none() {
                return Err("the argon2 string lacks its salt or hash".into());
            }
            Ok(())
        }
        Some(HashKind::Bcrypt) => hash
            .parse::<bcrypt::HashParts>()
            .map(|_| ())
            .map_err(|e| format!("not a valid bcrypt hash ({e})")),
        None => Err(
            "must be an argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash, never a plaintext password"
                .into(),
        ),
    }
}

/// Whether `password` matches `hash`. Runs the full hash: call it off the event loop.
fn check_password(password: &[u8], hash: &str) -> Result<bool, String> {
    use argon2::PasswordVerifier as _;
    match kind(hash) {
        Some(HashKind::Argon2) => {
            let parsed = argon2::PasswordHash::new(hash).map_err(|e| e.to_string())?;
            match argon2::Argon2::default().verify_password(password, &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        }
        Some(HashKind::Bcrypt) => bcrypt::verify(password, hash).map_err(|e| e.to_string()),
        None => Err("unknown hash format".into()),
    }
}

/// A hash of a random password with the same algorithm and parameters as `like`, so checking a
/// password against it costs what checking against `like` costs.
fn dummy_hash_like(like: &str) -> String {
    let mut salt = [0u8; 16];
    salt.iter_mut().for_each(|b| *b = fastrand::u8(..));
    let secret: String = (0..24).map(|_| fastrand::alphanumeric()).collect();
    let made = match kind(like) {
        Some(HashKind::Bcrypt) => like
            .parse::<bcrypt::HashParts>()
            .ok()
            .and_then(|p| bcrypt::hash_with_salt(&secret, p.get_cost(), salt).ok())
            .map(|p| p.format_for_version(bcrypt::Version::TwoB)),
        Some(HashKind::Argon2) => argon2_like(like, &secret, &salt),
        None => None,
    };
    made.unwrap_or_else(|| {
        argon2_like(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &secret,
            &salt,
        )
        .unwrap_or_default()
    })
}

fn argon2_like(like: &str, secret: &str, salt: &[u8]) -> Option<String> {
    use argon2::PasswordHasher as _;
    let parsed = argon2::PasswordHash::new(like).ok()?;
    let params = argon2::Params::try_from(&parsed).ok()?;
    let salt = argon2::password_hash::SaltString::encode_b64(salt).ok()?;
    argon2::Argon2::default()
        .hash_password_customized(
            secret.as_bytes(),
            Some(parsed.algorithm),
            parsed.version,
            params,
            &salt,
        )
        .ok()
        .map(|h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::auth::config::{RawBasicCredential, RawConsumer};

    /// A cheap argon2id hash (tests only: real deployments use the defaults or stronger).
    fn argon2_hash(password: &str) -> String {
        use argon2::PasswordHasher as _;
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        a.hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn registry(users: &[(&str, String)]) -> ConsumerRegistry {
        let consumers: Vec<RawConsumer> = users
            .iter()
            .map(|(u, h)| RawConsumer {
                name: format!("{u}-consumer"),
                id: None,
                groups: vec![],
                api_keys: vec![],
                basic: Some(RawBasicCredential {
                    username: u.to_string(),
                    password_hash: h.clone(),
                }),
                jwt_subjects: vec![],
                mtls_subjects: vec![],
                plan: None,
            })
            .collect();
        let mut errors = Vec::new();
        let r = ConsumerRegistry::build(&consumers, &[], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        r
    }

    fn parts(authorization: &[u8]) -> Parts {
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(authorization).unwrap(),
        );
        req.into_parts().0
    }

    #[test]
    fn parses_the_header_and_rejects_malformed_values() {
        let ok = BasicAuth::credentials(&parts(b"Basic YWxpY2U6czNjcjN0OjI=")).unwrap();
        assert_eq!(ok.unwrap(), ("alice".into(), "s3cr3t:2".into()));
        let lower = BasicAuth::credentials(&parts(b"bAsIc   YWxpY2U6eA")).unwrap();
        assert_eq!(lower.unwrap(), ("alice".into(), "x".into()));
        assert!(BasicAuth::credentials(&parts(b"Bearer abc")).is_none());
        for bad in [
            &b"Basic"[..],
            b"Basic ",
            b"Basic !!!not-base64!!!",
            b"Basic YWxpY2U=", // "alice": no colon
            b"Basic OnB3",     // ":pw": no user
            b"Basic /w==",     // 0xff: not UTF-8
            b"Basic \xe9\xe9", // non-ASCII header bytes
        ] {
            match BasicAuth::credentials(&parts(bad)) {
                Some(Err(AuthFailure::Invalid(_))) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn hash_formats_are_checked() {
        assert!(check_hash_format(&argon2_hash("pw")).is_ok());
        assert!(check_hash_format(&bcrypt::hash("pw", 4).unwrap()).is_ok());
        for bad in ["hunter2", "$argon2id$garbage", "$2b$04$short"] {
            let e = check_hash_format(bad).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn a_verified_pair_is_cached_and_a_wrong_one_is_not() {
        let reg = registry(&[
            ("alice", argon2_hash("wonderland")),
            ("bob", bcrypt::hash("builder", 4).unwrap()),
        ]);
        let auth = BasicAuth::build(&RawBasicSettings::default());
        let c = auth.verify(&reg, "alice", "wonderland").await.unwrap();
        assert_eq!(&*c.name, "alice-consumer");
        assert_eq!(auth.hash_verifications(), 1);
        for _ in 0..5 {
            auth.verify(&reg, "alice", "wonderland").await.unwrap();
        }
        assert_eq!(auth.hash_verifications(), 1, "cache hits must not hash");

        let c = auth.verify(&reg, "bob", "builder").await.unwrap();
        assert_eq!(&*c.name, "bob-consumer");
        assert_eq!(auth.hash_verifications(), 2);

        for _ in 0..2 {
            assert!(auth.verify(&reg, "alice", "wrong").await.is_err());
        }
        assert_eq!(auth.hash_verifications(), 4, "failures are not cached");
    }

    #[tokio::test]
    async fn an_unknown_user_pays_a_hash_like_a_known_one() {
        let reg = registry(&[("alice", argon2_hash("wonderland"))]);
        let auth = BasicAuth::build(&RawBasicSettings::default());
        let e = auth
            .verify(&reg, "mallory", "wonderland")
            .await
            .unwrap_err();
        let w = auth.verify(&reg, "alice", "nope").await.unwrap_err();
        assert_eq!(e, w, "same message for unknown user and wrong password");
        assert_eq!(auth.hash_verifications(), 2);
        // The dummy imitates alice's algorithm and parameters.
        let dummy = auth.dummy.get().unwrap();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=256,t=1,p=1$"),
            "{dummy}"
        );
        let bc = dummy_hash_like(&bcrypt::hash("x", 5).unwrap());
        assert!(bc.starts_with("$2b$05$"), "{bc}");
    }

    #[tokio::test(start_paused = true)]
    async fn cached_pairs_expire_after_the_ttl() {
        let reg = registry(&[("alice", argon2_hash("wonderland"))]);
        let auth = BasicAuth::build(&RawBasicSettings {
            cache_ttl: crate::spec::units::Dur(Duration::from_secs(10)),
            cache_size: 100,
        });
        auth.verify(&reg, "alice", "wonderland").await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        auth.verify(&reg, "alice", "wonderland").await.unwrap();
        assert_eq!(auth.hash_verifications(), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        auth.verify(&reg, "alice", "wonderland").await.unwrap();
        assert_eq!(auth.hash_verifications(), 2);
    }
}
