//! The consumer registry: every declared consumer and O(1) lookups by name, API key digest,
//! token subject and basic-auth user name.

use std::sync::Arc;

use http::HeaderValue;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{RawApiKey, RawConsumer};
use crate::spec::ConfigError;

/// A declared consumer.
#[derive(Debug)]
pub struct Consumer {
    /// Unique name.
    pub name: Arc<str>,
    /// Optional stable id.
    pub id: Option<Arc<str>>,
    /// Groups, for ACLs.
    pub groups: Vec<Arc<str>>,
    /// `X-Consumer-Groups` value, precomputed.
    pub groups_header: Option<HeaderValue>,
    /// The plan whose `rate_limit` applies to this consumer.
    pub plan: Option<Arc<str>>,
}

impl Consumer {
    /// A consumer named `name` (groups header and all derived here).
    pub fn new(name: &str, id: Option<&str>, groups: &[String], plan: Option<&str>) -> Self {
        Consumer {
            name: name.into(),
            id: id.map(Into::into),
            groups_header: (!groups.is_empty())
                .then(|| HeaderValue::from_str(&groups.join(", ")).ok())
                .flatten(),
            groups: groups.iter().map(|g| g.as_str().into()).collect(),
            plan: plan.map(Into::into),
        }
    }
}

/// All consumers, indexed for the request path.
#[derive(Debug, Default)]
pub struct ConsumerRegistry {
    by_name: FxHashMap<String, Arc<Consumer>>,
    /// SHA-256 of each API key: the key itself is never kept in memory.
    api_keys: FxHashMap<[u8; 32], Arc<Consumer>>,
    subjects: FxHashMap<String, Arc<Consumer>>,
    /// Client-certificate names (`mtls_subjects`).
    certificates: FxHashMap<String, Arc<Consumer>>,
    /// User name to (password hash, consumer).
    basic: FxHashMap<String, (String, Arc<Consumer>)>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumersFile {
    consumers: Vec<RawConsumer>,
}

/// The largest consumers file read (about 100,000 consumers with a key each).
pub const MAX_CONSUMERS_FILE_BYTES: u64 = 16 * 1024 * 1024;

impl ConsumerRegistry {
    /// Builds the registry from the inline consumers and the `auth.consumers_files`.
    pub fn build(inline: &[RawConsumer], files: &[String], errors: &mut Vec<ConfigError>) -> Self {
        Self::build_at(inline, "consumers", files, errors)
    }

    /// Like [`build`](Self::build), with the inline consumers' config path (`consumers.list`
    /// beside a consumer store).
    pub fn build_at(
        inline: &[RawConsumer],
        inline_path: &str,
        files: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let mut registry = ConsumerRegistry::default();
        for (i, c) in inline.iter().enumerate() {
            registry.add(c, &format!("{inline_path}[{i}]"), errors);
        }
        for (f, path) in files.iter().enumerate() {
            let at = format!("auth.consumers_files[{f}]");
            // Read like the config itself: a regular file of bounded size (a FIFO or a device
            // must not hang a reload), checked for nesting and alias bombs before it is built.
            let text = match crate::spec::expand::read_regular_file(path, MAX_CONSUMERS_FILE_BYTES)
            {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::new(at, format!("cannot read `{path}`: {e}")));
                    continue;
                }
            };
            if let Err((pos, why)) = crate::spec::position::PositionIndex::build(&text) {
                errors.push(ConfigError::new(
                    at,
                    format!("{path}:{}:{}: {why}", pos.line, pos.column),
                ));
                continue;
            }
            match serde_yaml_ng::from_str::<ConsumersFile>(&text) {
                Ok(file) => {
                    for (i, c) in file.consumers.iter().enumerate() {
                        registry.add(c, &format!("{at} ({path}) consumers[{i}]"), errors);
                    }
                }
                Err(e) => {
                    let pos = e
                        .location()
                        .map(|l| format!("{path}:{}:{}", l.line(), l.column()))
                        .unwrap_or_else(|| path.clone());
                    // serde_yaml's message may quote a value; keep only its description.
                    let msg = e.to_string();
                    let msg = msg.split(" at line").next().unwrap_or(&msg);
                    errors.push(ConfigError::new(at, format!("{pos}: {msg}")));
                }
            }
        }
        registry
    }

    fn add(&mut self, raw: &RawConsumer, at: &str, errors: &mut Vec<ConfigError>) {
        if raw.name.trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{at}.name"),
                "a consumer needs a name",
            ));
            return;
        }
        if self.by_name.contains_key(&raw.name) {
            errors.push(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate consumer name `{}`", raw.name),
            ));
            return;
        }
        let consumer = Arc::new(Consumer::new(
            &raw.name,
            raw.id.as_deref(),
            &raw.groups,
            raw.plan.as_deref(),
        ));
        for (i, key) in raw.api_keys.iter().enumerate() {
            let digest = match key {
                RawApiKey::Plain(k) if k.len() < 8 => {
                    errors.push(ConfigError::new(
                        format!("{at}.api_keys[{i}]"),
                        "an API key must be at least 8 characters",
                    ));
                    continue;
                }
                RawApiKey::Plain(k) => sha256(k.as_bytes()),
                RawApiKey::Hashed { sha256: hex } => match parse_hex32(hex) {
                    Some(d) => d,
                    None => {
                        errors.push(ConfigError::new(
                            format!("{at}.api_keys[{i}].sha256"),
                            "must be 64 hex digits (the SHA-256 of the key)",
                        ));
                        continue;
                    }
                },
            };
            if self
                .api_keys
                .insert(digest, Arc::clone(&consumer))
                .is_some()
            {
                // Say which entry, never which key.
                errors.push(ConfigError::new(
                    format!("{at}.api_keys[{i}]"),
                    "this API key is already assigned to a consumer",
                ));
            }
        }
        if let Some(b) = &raw.basic {
            if let Err(why) = super::basic::check_hash_format(&b.password_hash) {
                errors.push(ConfigError::new(format!("{at}.basic.password_hash"), why));
            } else if self
                .basic
                .insert(
                    b.username.clone(),
                    (b.password_hash.clone(), Arc::clone(&consumer)),
                )
                .is_some()
            {
                errors.push(ConfigError::new(
                    format!("{at}.basic.username"),
                    format!(
                        "user name `{}` is already taken by another consumer",
                        b.username
                    ),
                ));
            }
        }
        for (i, s) in raw.jwt_subjects.iter().enumerate() {
            if self
                .subjects
                .insert(s.clone(), Arc::clone(&consumer))
                .is_some()
            {
                errors.push(ConfigError::new(
                    format!("{at}.jwt_subjects[{i}]"),
                    format!("subject `{s}` already identifies another consumer"),
                ));
            }
        }
        for (i, s) in raw.mtls_subjects.iter().enumerate() {
            if self
                .certificates
                .insert(s.clone(), Arc::clone(&consumer))
                .is_some()
            {
                errors.push(ConfigError::new(
                    format!("{at}.mtls_subjects[{i}]"),
                    format!("`{s}` already identifies another consumer"),
                ));
            }
        }
        self.by_name.insert(raw.name.clone(), consumer);
    }

    /// The consumer a client certificate identifies: looked up by its common name, its whole
    /// subject, then each SAN (with and without its `DNS:`/`URI:` prefix).
    pub fn by_certificate(&self, cert: &crate::tls::ClientCert) -> Option<&Arc<Consumer>> {
        if self.certificates.is_empty() {
            return None;
        }
        let names = cert.common_name.iter().chain([&cert.subject]);
        let sans = cert.sans.iter().flat_map(|s| {
            let bare = s.split_once(':').map(|(_, v)| v);
            [Some(s.as_str()), bare].into_iter().flatten()
        });
        names
            .map(String::as_str)
            .chain(sans)
            .find_map(|n| self.certificates.get(n))
    }

    /// The consumer called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    /// The consumer owning API key `key`. The key is hashed, looked up by digest, and the
    /// digests are compared in constant time.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        self.by_key_digest(&sha256(key))
    }

    /// The consumer owning the API key whose SHA-256 is `digest` (compared in constant time).
    pub fn by_key_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Consumer>> {
        let (stored, consumer) = self.api_keys.get_key_value(digest)?;
        bool::from(stored.ct_eq(digest)).then_some(consumer)
    }

    /// The consumer whose `jwt_subjects` lists `subject`.
    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.subjects.get(subject)
    }

    /// The password hash and consumer of basic-auth user `username`.
    pub fn basic(&self, username: &str) -> Option<(&str, &Arc<Consumer>)> {
        self.basic.get(username).map(|(h, c)| (h.as_str(), c))
    }

    /// Every basic-auth password hash (to imitate their cost for unknown users).
    pub fn basic_hashes(&self) -> impl Iterator<Item = &str> {
        self.basic.values().map(|(h, _)| h.as_str())
    }

    /// Every consumer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.by_name.values()
    }

    /// Number of consumers.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// No consumers declared.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str, keys: Vec<RawApiKey>) -> RawConsumer {
        RawConsumer {
            name: name.into(),
            id: None,
            groups: vec!["staff".into()],
            api_keys: keys,
            basic: None,
            jwt_subjects: vec![format!("{name}@example.com")],
            mtls_subjects: vec![],
            plan: None,
        }
    }

    #[test]
    fn looks_up_plain_and_hashed_keys() {
        let hashed: String = sha256(b"hashed-key-123")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut errors = Vec::new();
        let r = ConsumerRegistry::build(
            &[
                consumer("alice", vec![RawApiKey::Plain("alice-key-123".into())]),
                consumer("bob", vec![RawApiKey::Hashed { sha256: hashed }]),
            ],
            &[],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(&*r.by_api_key(b"alice-key-123").unwrap().name, "alice");
        assert_eq!(&*r.by_api_key(b"hashed-key-123").unwrap().name, "bob");
        assert!(r.by_api_key(b"alice-key-124").is_none());
        assert_eq!(&*r.by_subject("bob@example.com").unwrap().name, "bob");
        assert_eq!(
            r.by_name("alice").unwrap().groups_header.as_ref().unwrap(),
            "staff"
        );
    }

    #[test]
    fn rejects_duplicates_and_bad_hashes_without_quoting_keys() {
        let mut errors = Vec::new();
        ConsumerRegistry::build(
            &[
                consumer("alice", vec![RawApiKey::Plain("shared-key-1".into())]),
                consumer("bob", vec![RawApiKey::Plain("shared-key-1".into())]),
                consumer("alice", vec![]),
                consumer(
                    "carol",
                    vec![
                        RawApiKey::Hashed {
                            sha256: "zz".into(),
                        },
                        RawApiKey::Plain("short".into()),
                    ],
                ),
            ],
            &[],
            &mut errors,
        );
        let text = format!("{errors:?}");
        assert_eq!(errors.len(), 4, "{text}");
        assert!(!text.contains("shared-key-1"), "{text}");
    }
}
