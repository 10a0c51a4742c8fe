//! A stored consumer as kept in Redis (one JSON document per consumer), what the admin API
//! shows of it (never a key digest or a password hash), and the checks on what a client asks
//! to store, reported as `field: message` like config errors.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::spec::ConfigError;

/// A consumer in the store. Its credentials travel with it, so a change to a consumer is one
/// atomic write of one document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Stable id (`X-Consumer-Id`), the key of the record.
    pub id: String,
    /// Unique name (`X-Consumer-Name`, access log).
    pub name: String,
    /// Groups, for ACLs.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form data of the operator's.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The plan (`plans:`) whose rate limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// API keys, as digests.
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Basic-auth credentials.
    #[serde(default)]
    pub basic: Vec<BasicRecord>,
    /// Token subjects bound to this consumer.
    #[serde(default)]
    pub jwt_subjects: Vec<SubjectRecord>,
    /// Changed on every write: a write based on an older read is refused and retried.
    #[serde(default)]
    pub rev: u64,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
    /// Unix seconds.
    #[serde(default)]
    pub updated_at: u64,
}

/// An API key: only its SHA-256 is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// Key id (`k_...`), for listing and revoking.
    pub id: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The key's first characters (`pk_AbCd`), to recognise it in a list.
    pub prefix: String,
    /// The operator's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Unix seconds after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
}

/// A basic-auth credential: an argon2 hash of the password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BasicRecord {
    /// Credential id (`b_...`).
    pub id: String,
    /// User name (unique across consumers).
    pub username: String,
    /// PHC string (argon2id, or a bcrypt hash given by the operator).
    pub password_hash: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
}

/// A token subject (a provider's `consumer_claim` value) bound to this consumer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubjectRecord {
    /// Binding id (`s_...`).
    pub id: String,
    /// The claim value.
    pub subject: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
}

impl Record {
    /// What the admin API shows: everything but key digests and password hashes.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "groups": self.groups,
            "metadata": self.metadata,
            "plan": self.plan,
            "keys": self.keys.iter().map(KeyRecord::view).collect::<Vec<_>>(),
            "basic": self.basic.iter().map(BasicRecord::view).collect::<Vec<_>>(),
            "jwt_subjects": self.jwt_subjects,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

impl KeyRecord {
    /// The key's id, prefix, label and expiry.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "prefix": self.prefix,
            "label": self.label,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
        })
    }
}

impl BasicRecord {
    /// The credential's id and user name.
    pub fn view(&self) -> Value {
        json!({"id": self.id, "username": self.username, "created_at": self.created_at})
    }
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `bytes` random bytes from the operating system's CSPRNG.
fn random(bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes];
    // The OS generator failing is not something to serve through.
    getrandom::fill(&mut out).expect("the operating system's random generator failed");
    out
}

/// A new API key: `pk_` and 32 base62 characters (190 bits from the OS CSPRNG), a shape secret
/// scanners can be taught to find.
pub fn new_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut key = String::with_capacity(35);
    key.push_str("pk_");
    // Rejection sampling keeps every character uniform (248 = 4 × 62).
    while key.len() < 35 {
        for b in random(48) {
            if b < 248 && key.len() < 35 {
                key.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    key
}

/// A new id: `prefix` and 16 hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut id = String::from(prefix);
    for b in random(8) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fields a client may give when creating or changing a consumer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerInput {
    /// Only on create.
    pub id: Option<String>,
    /// Required on create.
    pub name: Option<String>,
    /// Groups.
    pub groups: Option<Vec<String>>,
    /// Metadata (replaced as a whole).
    pub metadata: Option<Map<String, Value>>,
    /// A plan name; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub plan: Option<Option<String>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A new API key's settings, or a change to a key (rotation: give the old one an expiry).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// A label.
    pub label: Option<String>,
    /// Lifetime from now, e.g. `90d` (or `1h` for a key being rotated out).
    pub expires_in: Option<String>,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
}

/// A new basic credential: a password (hashed here with argon2id) or a ready hash.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicInput {
    /// User name.
    pub username: Option<String>,
    /// The password; only its argon2id hash is stored.
    pub password: Option<String>,
    /// An argon2 or bcrypt hash made elsewhere.
    pub password_hash: Option<String>,
}

/// A new subject binding.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectInput {
    /// The claim value.
    pub subject: Option<String>,
}

/// Parses a JSON body into `T`; a malformed body is one error at `body`, an unknown or
/// mistyped field at its name.
pub fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Vec<ConfigError>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("unknown field"))
            .unwrap_or("body")
            .to_string();
        let msg = msg.split(" at line").next().unwrap_or(&msg).to_string();
        vec![ConfigError::new(field, msg)]
    })
}

/// Checks a name-like value: non-empty printable text of at most 200 bytes.
pub fn check_text(field: &str, value: &str, errors: &mut Vec<ConfigError>) {
    if value.trim().is_empty() {
        errors.push(ConfigError::new(field, "must not be empty"));
    } else if value.len() > 200 {
        errors.push(ConfigError::new(field, "must be at most 200 bytes"));
    } else if value.chars().any(char::is_control) {
        errors.push(ConfigError::new(
            field,
            "must not contain control characters",
        ));
    }
}

/// Checks an id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_id(field: &str, value: &str, errors: &mut Vec<ConfigError>) {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        errors.push(ConfigError::new(
            field,
            "use 1 to 64 letters, digits, `.`, `_` or `-`",
        ));
    }
}

/// An expiry from `expires_in` or `expires_at` (not both), in the future.
pub fn expiry(
    expires_in: Option<&str>,
    expires_at: Option<u64>,
    errors: &mut Vec<ConfigError>,
) -> Option<u64> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                "expires_in",
                "give `expires_in` or `expires_at`, not both",
            ));
            None
        }
        (Some(text), None) => match crate::spec::units::parse_duration(text) {
            Some(d) => Some(now() + d.as_secs()),
            None => {
                errors.push(ConfigError::new(
                    "expires_in",
                    "a duration like `30s`, `1h` or `90d`",
                ));
                None
            }
        },
        (None, Some(at)) if at <= now() => {
            errors.push(ConfigError::new("expires_at", "must be in the future"));
            None
        }
        (None, at) => at,
    }
}

/// A password's argon2id hash with the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher as _;
    let salt =
        argon2::password_hash::SaltString::encode_b64(&random(16)).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_recognisable() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        assert!(a.starts_with("pk_") && a.len() == 35, "{a}");
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }

    #[test]
    fn views_hold_no_secret() {
        let r = Record {
            id: "c1".into(),
            name: "acme".into(),
            groups: vec![],
            metadata: Map::new(),
            plan: None,
            keys: vec![KeyRecord {
                id: "k1".into(),
                sha256: "ab".repeat(32),
                prefix: "pk_ab".into(),
                label: None,
                expires_at: None,
                created_at: 0,
            }],
            basic: vec![BasicRecord {
                id: "b1".into(),
                username: "u".into(),
                password_hash: "$argon2id$secret".into(),
                created_at: 0,
            }],
            jwt_subjects: vec![],
            rev: 1,
            created_at: 0,
            updated_at: 0,
        };
        let text = r.view().to_string();
        assert!(
            !text.contains(&"ab".repeat(32)) && !text.contains("argon2"),
            "{text}"
        );
    }

    #[test]
    fn bodies_report_fields() {
        let e = parse::<ConsumerInput>(br#"{"nam": "x"}"#).unwrap_err();
        assert_eq!(e[0].path, "nam");
        let e = parse::<ConsumerInput>(b"{").unwrap_err();
        assert_eq!(e[0].path, "body");
        let ok = parse::<ConsumerInput>(br#"{"plan": null}"#).unwrap();
        assert_eq!(ok.plan, Some(None));
    }
}
