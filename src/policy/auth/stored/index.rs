//! The in-memory copy of the stored consumers, indexed for the request path like the file
//! registry: O(1) by API-key digest, user name and subject. A copy is never changed: a change
//! makes a new copy (only the changed consumers are rebuilt) that is published whole, so a
//! request sees one version of the set.
//!
//! Each consumer is kept as its JSON document (parsed again only for the admin API's reads and
//! when it changes) beside what requests need: its [`Consumer`] and the index entries. A parsed
//! `Record` kept per consumer cost about twice the memory.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::record::{now, Record};
use super::sharded::Sharded;
use crate::policy::auth::consumers::sha256;
use crate::policy::auth::Consumer;

/// One version of the stored consumers.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// The store's version this copy reflects.
    pub version: u64,
    records: Sharded<Arc<str>, Entry>,
    names: Sharded<Arc<str>, Arc<str>>,
    keys: Sharded<[u8; 32], Key>,
    basic: Sharded<Box<str>, (Arc<str>, Arc<Consumer>)>,
    subjects: Sharded<Box<str>, Arc<Consumer>>,
}

#[derive(Clone)]
struct Entry {
    doc: Arc<str>,
    consumer: Arc<Consumer>,
}

#[derive(Clone)]
struct Key {
    expires_at: Option<u64>,
    consumer: Arc<Consumer>,
}

impl Snapshot {
    /// A copy holding the consumers of `docs` (JSON documents; an unreadable one is skipped
    /// with a warning).
    pub fn build(docs: impl IntoIterator<Item = String>, version: u64) -> Self {
        let mut s = Snapshot {
            version,
            ..Snapshot::default()
        };
        for d in docs {
            s.insert(d);
        }
        s
    }

    /// This copy with `changes` applied (`None`: the consumer was deleted), at `version`.
    pub fn with(&self, changes: Vec<(String, Option<String>)>, version: u64) -> Self {
        let mut s = self.clone();
        for (id, doc) in changes {
            s.remove(&id);
            if let Some(d) = doc {
                s.insert(d);
            }
        }
        s.version = version;
        s
    }

    fn insert(&mut self, doc: String) {
        let r: Record = match serde_json::from_str(&doc) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("consumer store: unreadable record skipped: {e}");
                return;
            }
        };
        // Written only through the store's script, which keeps these unique; a copy that
        // somehow holds a clash keeps the first holder rather than failing.
        self.remove(&r.id);
        let consumer = Arc::new(Consumer::new(
            &r.name,
            Some(&r.id),
            &r.groups,
            r.plan.as_deref(),
        ));
        for k in &r.keys {
            if let Some(digest) = parse_hex32(&k.sha256) {
                self.keys.insert_new(digest, || Key {
                    expires_at: k.expires_at,
                    consumer: Arc::clone(&consumer),
                });
            }
        }
        for b in &r.basic {
            self.basic.insert_new(b.username.as_str().into(), || {
                (b.password_hash.as_str().into(), Arc::clone(&consumer))
            });
        }
        for s in &r.jwt_subjects {
            self.subjects
                .insert_new(s.subject.as_str().into(), || Arc::clone(&consumer));
        }
        let id: Arc<str> = r.id.as_str().into();
        self.names.insert(r.name.as_str().into(), Arc::clone(&id));
        self.records.insert(
            id,
            Entry {
                doc: doc.into(),
                consumer,
            },
        );
    }

    fn remove(&mut self, id: &str) {
        let Some(old) = self.records.remove(id) else {
            return;
        };
        let Ok(record) = serde_json::from_str::<Record>(&old.doc) else {
            return;
        };
        let mine = |c: &Arc<Consumer>| Arc::ptr_eq(c, &old.consumer);
        for k in &record.keys {
            if let Some(d) = parse_hex32(&k.sha256) {
                if self.keys.get(&d).is_some_and(|k| mine(&k.consumer)) {
                    self.keys.remove(&d);
                }
            }
        }
        for b in &record.basic {
            if self
                .basic
                .get(b.username.as_str())
                .is_some_and(|(_, c)| mine(c))
            {
                self.basic.remove(b.username.as_str());
            }
        }
        for s in &record.jwt_subjects {
            if self.subjects.get(s.subject.as_str()).is_some_and(mine) {
                self.subjects.remove(s.subject.as_str());
            }
        }
        if self
            .names
            .get(record.name.as_str())
            .is_some_and(|i| **i == *id)
        {
            self.names.remove(record.name.as_str());
        }
    }

    /// The consumer owning API key `key`, unless the key expired. Hashed, looked up by digest,
    /// digests compared in constant time.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        self.by_key_digest(&sha256(key))
    }

    /// The consumer owning the unexpired API key whose SHA-256 is `digest`.
    pub fn by_key_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Consumer>> {
        let (stored, k) = self.keys.get_key_value(digest)?;
        if !bool::from(stored.ct_eq(digest)) {
            return None;
        }
        match k.expires_at {
            Some(at) if now() >= at => None,
            _ => Some(&k.consumer),
        }
    }

    /// The consumer bound to token subject `subject`.
    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.subjects.get(subject)
    }

    /// The password hash and consumer of basic-auth user `username`.
    pub fn basic(&self, username: &str) -> Option<(&str, &Arc<Consumer>)> {
        self.basic.get(username).map(|(h, c)| (&**h, c))
    }

    /// One stored password hash (to imitate its cost for unknown users).
    pub fn any_basic_hash(&self) -> Option<&str> {
        self.basic.values().next().map(|(h, _)| &**h)
    }

    /// The record with id `id`, else the one named `id`.
    pub fn record(&self, id: &str) -> Option<Record> {
        let id = self.names.get(id).map_or(id, |i| &**i);
        self.records
            .get(id)
            .and_then(|e| serde_json::from_str(&e.doc).ok())
    }

    /// The id of the consumer named `name`.
    pub fn id_of(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(|i| &**i)
    }

    /// The consumers' names, sorted, with their ids (for listing a page of records).
    pub fn names(&self) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = self.names.iter().map(|(n, i)| (&**n, &**i)).collect();
        out.sort_unstable();
        out
    }

    /// Every document, in no order (to write them back after Redis lost them).
    pub fn docs(&self) -> impl Iterator<Item = &str> {
        self.records.values().map(|e| &*e.doc)
    }

    /// Number of consumers.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No consumer.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// 64 hex digits to bytes.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::record::{hex, KeyRecord, SubjectRecord};
    use super::*;

    fn record(id: &str, name: &str, key: &str, expires_at: Option<u64>) -> String {
        let r = Record {
            id: id.into(),
            name: name.into(),
            groups: vec!["g".into()],
            metadata: Default::default(),
            plan: Some("pro".into()),
            keys: vec![KeyRecord {
                id: "k".into(),
                sha256: hex(&sha256(key.as_bytes())),
                prefix: "pk_".into(),
                label: None,
                expires_at,
                created_at: 0,
            }],
            basic: vec![],
            jwt_subjects: vec![SubjectRecord {
                id: "s".into(),
                subject: format!("{name}@x"),
                created_at: 0,
            }],
            rev: 1,
            created_at: 0,
            updated_at: 0,
        };
        serde_json::to_string(&r).unwrap()
    }

    #[test]
    fn changes_replace_and_remove_credentials() {
        let s = Snapshot::build(
            [
                record("c1", "acme", "pk_one", None),
                record("c2", "beta", "pk_two", Some(1)),
            ],
            3,
        );
        let acme = s.by_api_key(b"pk_one").unwrap();
        assert_eq!(&*acme.name, "acme");
        assert_eq!(acme.plan.as_deref(), Some("pro"));
        assert!(s.by_api_key(b"pk_two").is_none(), "expired");
        assert!(s.by_subject("beta@x").is_some());
        let s2 = s.with(
            vec![
                ("c1".into(), Some(record("c1", "acme2", "pk_new", None))),
                ("c2".into(), None),
            ],
            5,
        );
        assert!(s2.by_api_key(b"pk_one").is_none());
        assert_eq!(&*s2.by_api_key(b"pk_new").unwrap().name, "acme2");
        assert!(s2.by_subject("beta@x").is_none());
        assert!(s2.record("acme").is_none());
        assert_eq!(s2.record("acme2").unwrap().id, "c1");
        assert_eq!((s2.len(), s2.version), (1, 5));
        // The old copy is untouched.
        assert!(s.by_api_key(b"pk_one").is_some());
    }
}
