//! `/consumers`: the write side of the consumer store (`consumers: {store: redis}`).
//!
//! Every endpoint needs `admin.token` to be set (and presented): credentials are never
//! managed by whoever can reach a loopback port. Reads come from this node's copy; writes go to
//! Redis (see `policy::auth::stored`) and answer once this node's copy shows them. A new API
//! key is in the answer to its creation only. Each change writes one audit line (JSON: who,
//! from where, what; never a secret) to the application log, and to `consumers.audit_log`
//! when set.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::policy::auth::stored::record::{
    self, BasicInput, BasicRecord, ConsumerInput, KeyInput, KeyRecord, Record, SubjectInput,
    SubjectRecord,
};
use crate::policy::auth::stored::{ConsumerStore, WriteError};
use crate::runtime::{Active, Runtime};
use crate::spec::ConfigError;

/// Who asked, for the audit log.
pub struct Caller {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// `X-Portico-Actor` (the CLI sends the user name), else `admin-token`.
    pub actor: String,
    /// The request id.
    pub request_id: String,
}

/// The kinds of credential under a consumer.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Keys,
    Basic,
    Subjects,
}

/// The methods a `/consumers` path allows, `None` when the path is not one of them.
pub fn allowed(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["consumers"] => Some("GET, POST"),
        ["consumers", _] => Some("GET, PATCH, DELETE"),
        ["consumers", _, "keys" | "basic" | "jwt_subjects"] => Some("GET, POST"),
        ["consumers", _, "keys", _] => Some("PATCH, DELETE"),
        ["consumers", _, "basic" | "jwt_subjects", _] => Some("DELETE"),
        _ => None,
    }
}

/// Answers a `/consumers` request (the path was checked by [`allowed`]).
pub async fn answer(
    runtime: &Runtime,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    caller: &Caller,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let allow = allowed(path).unwrap_or("GET");
    if !allow.split(", ").any(|m| m == method.as_str()) {
        return Err(GatewayError::MethodNotAllowed {
            method: method.clone(),
            allow: allow.into(),
        });
    }
    let active = runtime.active();
    if active.raw.admin.token.is_none() {
        return Err(GatewayError::AdminTokenRequired(
            "managing consumers needs `admin.token` to be set, even on loopback",
        ));
    }
    let Some(store) = active.plan.consumer_store.clone() else {
        return Err(GatewayError::Missing(
            "no consumer store: configure `consumers: {store: redis}`".into(),
        ));
    };
    let parts: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(2)
        .map(percent_decode)
        .collect();
    let kind = match parts.get(1).map(String::as_str) {
        Some("keys") => Some(Kind::Keys),
        Some("basic") => Some(Kind::Basic),
        Some("jwt_subjects") => Some(Kind::Subjects),
        _ => None,
    };
    let op = Op {
        active: &active,
        store: &store,
        caller,
    };
    match (method.as_str(), parts.len(), kind) {
        ("GET", 0, _) => Ok(op.list(query)),
        ("POST", 0, _) => op.create(body).await,
        ("GET", 1, _) => op.get(&parts[0]),
        ("PATCH", 1, _) => op.update(&parts[0], body).await,
        ("DELETE", 1, _) => op.delete(&parts[0]).await,
        ("GET", 2, Some(kind)) => op.list_credentials(&parts[0], kind),
        ("POST", 2, Some(Kind::Keys)) => op.add_key(&parts[0], body).await,
        ("POST", 2, Some(Kind::Basic)) => op.add_basic(&parts[0], body).await,
        ("POST", 2, Some(Kind::Subjects)) => op.add_subject(&parts[0], body).await,
        ("PATCH", 3, Some(Kind::Keys)) => op.change_key(&parts[0], &parts[2], body).await,
        ("DELETE", 3, Some(kind)) => op.remove_credential(&parts[0], kind, &parts[2]).await,
        _ => Err(GatewayError::NotFound(
            "no such admin endpoint; see /openapi.json",
        )),
    }
}

struct Op<'a> {
    active: &'a Arc<Active>,
    store: &'a Arc<ConsumerStore>,
    caller: &'a Caller,
}

impl Op<'_> {
    /// Applies `edit` to consumer `id` (404 when absent) and writes it; the edit's answer.
    async fn edit<T>(
        &self,
        id: &str,
        mut edit: impl FnMut(&mut Record) -> Result<T, WriteError>,
    ) -> Result<T, GatewayError> {
        self.store
            .change(id, |old| {
                let mut r = old.ok_or_else(|| not_found(id))?;
                let answer = edit(&mut r)?;
                Ok((Some(r), answer))
            })
            .await
            .map_err(write_error)
    }

    fn list(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let (mut limit, mut offset) = (1000usize, 0usize);
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "limit" => limit = v.parse().unwrap_or(limit).min(10_000),
                "offset" => offset = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        let snap = self.store.snapshot();
        let names = snap.names();
        let page: Vec<Value> = names
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|(_, id)| snap.record(id))
            .map(|r| r.view())
            .collect();
        super::ok(json!({
            "consumers": page,
            "total": names.len(),
            "version": snap.version,
        }))
    }

    fn get(&self, id: &str) -> Result<Response<Full<Bytes>>, GatewayError> {
        let snap = self.store.snapshot();
        let r = snap
            .record(id)
            .ok_or_else(|| GatewayError::Missing(format!("no consumer `{id}`")))?;
        Ok(super::ok(r.view()))
    }

    fn list_credentials(
        &self,
        id: &str,
        kind: Kind,
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        let snap = self.store.snapshot();
        let r = snap
            .record(id)
            .ok_or_else(|| GatewayError::Missing(format!("no consumer `{id}`")))?;
        Ok(super::ok(match kind {
            Kind::Keys => json!({"keys": r.keys.iter().map(KeyRecord::view).collect::<Vec<_>>()}),
            Kind::Basic => {
                json!({"basic": r.basic.iter().map(BasicRecord::view).collect::<Vec<_>>()})
            }
            Kind::Subjects => json!({"jwt_subjects": r.jwt_subjects}),
        }))
    }

    /// Checks the fields of a create or update; `creating` requires a name.
    fn check(&self, input: &ConsumerInput, creating: bool) -> Result<(), GatewayError> {
        let mut errors = Vec::new();
        match (&input.name, creating) {
            (Some(n), _) => {
                record::check_text("name", n, &mut errors);
                if self.active.plan.file_consumers.by_name(n).is_some() {
                    errors.push(ConfigError::new(
                        "name",
                        format!("`{n}` is a consumer defined in the config file"),
                    ));
                }
            }
            (None, true) => errors.push(ConfigError::new("name", "required")),
            (None, false) => {}
        }
        if let Some(id) = &input.id {
            if creating {
                record::check_id("id", id, &mut errors);
            } else {
                errors.push(ConfigError::new("id", "cannot be changed"));
            }
        }
        for (i, g) in input.groups.iter().flatten().enumerate() {
            record::check_text(&format!("groups[{i}]"), g, &mut errors);
        }
        if let Some(Some(plan)) = &input.plan {
            if !self.active.plan.plans.contains(plan) {
                let known = self.active.plan.plans.names().join(", ");
                errors.push(ConfigError::new(
                    "plan",
                    format!("unknown plan `{plan}` (declared: {known})"),
                ));
            }
        }
        invalid(errors)
    }

    async fn create(&self, body: &[u8]) -> Result<Response<Full<Bytes>>, GatewayError> {
        let input: ConsumerInput = parse(body)?;
        self.check(&input, true)?;
        let id = input.id.clone().unwrap_or_else(|| record::new_id("c_"));
        let record = Record {
            id: id.clone(),
            name: input.name.clone().unwrap_or_default(),
            groups: input.groups.clone().unwrap_or_default(),
            metadata: input.metadata.clone().unwrap_or_default(),
            plan: input.plan.clone().flatten(),
            keys: vec![],
            basic: vec![],
            jwt_subjects: vec![],
            rev: 0,
            created_at: 0,
            updated_at: 0,
        };
        self.store
            .change(&id, |old| match old {
                Some(_) => Err(WriteError::Conflict(format!(
                    "a consumer with id `{id}` exists"
                ))),
                None => Ok((Some(record.clone()), ())),
            })
            .await
            .map_err(write_error)?;
        self.audit("consumer.created", &id, None);
        let view = self.store.snapshot().record(&id).map(|r| r.view());
        Ok(created(view.unwrap_or_else(|| json!({"id": id}))))
    }

    async fn update(&self, id: &str, body: &[u8]) -> Result<Response<Full<Bytes>>, GatewayError> {
        let input: ConsumerInput = parse(body)?;
        self.check(&input, false)?;
        let id = self.store.resolve(id);
        let view = self
            .edit(&id, |r| {
                if let Some(n) = &input.name {
                    r.name = n.clone();
                }
                if let Some(g) = &input.groups {
                    r.groups = g.clone();
                }
                if let Some(m) = &input.metadata {
                    r.metadata = m.clone();
                }
                if let Some(p) = &input.plan {
                    r.plan = p.clone();
                }
                Ok(r.view())
            })
            .await?;
        self.audit("consumer.updated", &id, None);
        Ok(super::ok(view))
    }

    async fn delete(&self, id: &str) -> Result<Response<Full<Bytes>>, GatewayError> {
        let id = self.store.resolve(id);
        self.store
            .change(&id, |old| match old {
                Some(_) => Ok((None, ())),
                None => Err(not_found(&id)),
            })
            .await
            .map_err(write_error)?;
        self.audit("consumer.deleted", &id, None);
        Ok(no_content())
    }

    async fn add_key(&self, id: &str, body: &[u8]) -> Result<Response<Full<Bytes>>, GatewayError> {
        let (input, expires_at) = key_input(body)?;
        let id = self.store.resolve(id);
        let key = record::new_key();
        let entry = KeyRecord {
            id: record::new_id("k_"),
            sha256: record::hex(&crate::policy::auth::consumers::sha256(key.as_bytes())),
            prefix: key[..7].to_string(),
            label: input.label.clone(),
            expires_at,
            created_at: record::now(),
        };
        self.edit(&id, |r| {
            r.keys.push(entry.clone());
            Ok(())
        })
        .await?;
        self.audit("key.created", &id, Some(&entry.id));
        let mut view = entry.view();
        view["key"] = json!(key);
        view["consumer"] = json!(id);
        view["note"] = json!("the key is shown once: store it now");
        Ok(created(view))
    }

    async fn change_key(
        &self,
        id: &str,
        key_id: &str,
        body: &[u8],
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        let (input, expires_at) = key_input(body)?;
        let id = self.store.resolve(id);
        let view = self
            .edit(&id, |r| {
                let k = r
                    .keys
                    .iter_mut()
                    .find(|k| k.id == key_id)
                    .ok_or_else(|| WriteError::NotFound(format!("no key `{key_id}`")))?;
                if expires_at.is_some() {
                    k.expires_at = expires_at;
                }
                if input.label.is_some() {
                    k.label = input.label.clone();
                }
                Ok(k.view())
            })
            .await?;
        self.audit("key.updated", &id, Some(key_id));
        Ok(super::ok(view))
    }

    async fn add_basic(
        &self,
        id: &str,
        body: &[u8],
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        let input: BasicInput = parse(body)?;
        let mut errors = Vec::new();
        match &input.username {
            Some(u) if u.contains(':') => {
                errors.push(ConfigError::new("username", "must not contain `:`"))
            }
            Some(u) => record::check_text("username", u, &mut errors),
            None => errors.push(ConfigError::new("username", "required")),
        }
        if let Some(u) = &input.username {
            if self.active.plan.file_consumers.basic(u).is_some() {
                errors.push(ConfigError::new(
                    "username",
                    format!("`{u}` is a user of a consumer defined in the config file"),
                ));
            }
        }
        match (&input.password, &input.password_hash) {
            (Some(p), None) if p.len() < 8 => errors.push(ConfigError::new(
                "password",
                "must be at least 8 characters",
            )),
            (Some(_), None) => {}
            (None, Some(h)) => {
                if let Err(why) = crate::policy::auth::basic::check_hash_format(h) {
                    errors.push(ConfigError::new("password_hash", why));
                }
            }
            _ => errors.push(ConfigError::new(
                "password",
                "give `password` or `password_hash` (exactly one)",
            )),
        }
        invalid(errors)?;
        let hash = match (&input.password, &input.password_hash) {
            (Some(p), _) => {
                let p = p.clone();
                // Hashing costs milliseconds by design: off this thread's event loop.
                tokio::task::spawn_blocking(move || record::hash_password(&p))
                    .await
                    .map_err(|e| GatewayError::Internal(format!("hashing the password: {e}")))?
                    .map_err(|e| GatewayError::Internal(format!("hashing the password: {e}")))?
            }
            (None, Some(h)) => h.clone(),
            // Refused by the field checks above; answered the same way should they change.
            (None, None) => {
                return Err(fields(vec![ConfigError::new(
                    "password",
                    "give `password` or `password_hash` (exactly one)",
                )]))
            }
        };
        let id = self.store.resolve(id);
        let entry = BasicRecord {
            id: record::new_id("b_"),
            username: input.username.clone().unwrap_or_default(),
            password_hash: hash,
            created_at: record::now(),
        };
        self.edit(&id, |r| {
            r.basic.push(entry.clone());
            Ok(())
        })
        .await?;
        self.audit("basic.created", &id, Some(&entry.id));
        Ok(created(entry.view()))
    }

    async fn add_subject(
        &self,
        id: &str,
        body: &[u8],
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        let input: SubjectInput = parse(body)?;
        let mut errors = Vec::new();
        match &input.subject {
            Some(s) => {
                record::check_text("subject", s, &mut errors);
                if self.active.plan.file_consumers.by_subject(s).is_some() {
                    errors.push(ConfigError::new(
                        "subject",
                        "bound to a consumer defined in the config file",
                    ));
                }
            }
            None => errors.push(ConfigError::new("subject", "required")),
        }
        invalid(errors)?;
        let id = self.store.resolve(id);
        let entry = SubjectRecord {
            id: record::new_id("s_"),
            subject: input.subject.clone().unwrap_or_default(),
            created_at: record::now(),
        };
        self.edit(&id, |r| {
            r.jwt_subjects.push(entry.clone());
            Ok(())
        })
        .await?;
        self.audit("jwt_subject.created", &id, Some(&entry.id));
        Ok(created(json!(entry)))
    }

    async fn remove_credential(
        &self,
        id: &str,
        kind: Kind,
        cred: &str,
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        let id = self.store.resolve(id);
        self.edit(&id, |r| {
            let before = r.keys.len() + r.basic.len() + r.jwt_subjects.len();
            match kind {
                Kind::Keys => r.keys.retain(|k| k.id != cred),
                Kind::Basic => r.basic.retain(|b| b.id != cred),
                Kind::Subjects => r.jwt_subjects.retain(|s| s.id != cred),
            }
            if r.keys.len() + r.basic.len() + r.jwt_subjects.len() == before {
                return Err(WriteError::NotFound(format!(
                    "consumer `{id}` has no credential `{cred}`"
                )));
            }
            Ok(())
        })
        .await?;
        let event = match kind {
            Kind::Keys => "key.revoked",
            Kind::Basic => "basic.deleted",
            Kind::Subjects => "jwt_subject.deleted",
        };
        self.audit(event, &id, Some(cred));
        Ok(no_content())
    }

    /// One JSON line per change: never a key, password or hash.
    fn audit(&self, event: &str, consumer: &str, credential: Option<&str>) {
        let line = json!({
            "audit": event,
            "time": httpdate::fmt_http_date(std::time::SystemTime::now()),
            "actor": self.caller.actor,
            "remote": self.caller.remote.map(|a| a.ip().to_string()),
            "consumer": consumer,
            "credential": credential,
            "request_id": self.caller.request_id,
        })
        .to_string();
        tracing::info!(target: "portico::audit", "{line}");
        if let Some(path) = self.store.audit_log() {
            use std::io::Write as _;
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = written {
                tracing::error!(path, "cannot write the consumer audit log: {e}");
            }
        }
    }
}

fn parse<T: for<'de> serde::Deserialize<'de> + Default>(body: &[u8]) -> Result<T, GatewayError> {
    record::parse(body).map_err(fields)
}

/// A key's settings from `body`, checked, with the expiry they give.
fn key_input(body: &[u8]) -> Result<(KeyInput, Option<u64>), GatewayError> {
    let input: KeyInput = parse(body)?;
    let mut errors = Vec::new();
    if let Some(l) = &input.label {
        record::check_text("label", l, &mut errors);
    }
    let expires_at = record::expiry(input.expires_in.as_deref(), input.expires_at, &mut errors);
    invalid(errors)?;
    Ok((input, expires_at))
}

fn invalid(errors: Vec<ConfigError>) -> Result<(), GatewayError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(fields(errors))
    }
}

fn fields(errors: Vec<ConfigError>) -> GatewayError {
    GatewayError::InvalidFields {
        errors: errors
            .into_iter()
            .map(|e| json!({"path": e.path, "message": e.message}))
            .collect(),
    }
}

fn not_found(id: &str) -> WriteError {
    WriteError::NotFound(format!("no consumer `{id}`"))
}

fn write_error(e: WriteError) -> GatewayError {
    match e {
        WriteError::Unavailable(_) => GatewayError::StoreUnavailable(e.to_string()),
        WriteError::NotFound(m) => GatewayError::Missing(m),
        WriteError::Conflict(m) => GatewayError::Conflict(m),
        WriteError::Invalid(errors) => fields(errors),
    }
}

fn created(body: Value) -> Response<Full<Bytes>> {
    let mut resp = super::ok(body);
    *resp.status_mut() = StatusCode::CREATED;
    resp
}

fn no_content() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}
