//! Writes: each change is a read of the consumer's document, the change made here, and one Lua
//! script that writes it only if nobody changed it meanwhile (`rev`), keeps the unique indexes
//! (names, key digests, user names, subjects) and publishes the change.

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Value as RValue;

use super::record::{now, Record};
use super::{ConsumerStore, Snapshot};
use crate::spec::ConfigError;

/// Why a write was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Redis could not be reached: nothing was written.
    #[error("the consumer store (redis) is unavailable, so nothing was changed: {0}")]
    Unavailable(String),
    /// No such consumer or credential.
    #[error("{0}")]
    NotFound(String),
    /// A name, key, user name or subject already belongs to another consumer.
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid.
    #[error("the request is invalid")]
    Invalid(Vec<ConfigError>),
}

/// Writes (or, with an empty document, deletes) one consumer.
/// KEYS: records, names, keys, basic, subjects, version. ARGV: channel, id, expected rev ("" =
/// absent), document ("" = delete), the version of the writer's copy: a copy ahead of a Redis
/// without a version means Redis lost the set (`lost`: write it back first, then this).
const PUT: &str = r#"
local rec, names, keyidx, basic, subj, ver = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local chan, id, expect, doc = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if tonumber(ARGV[5]) > 0 and redis.call('EXISTS', ver) == 0 then return {'lost'} end
local function claims(r)
  local out = {{names, r.name}}
  if type(r.keys) == 'table' then for _, k in ipairs(r.keys) do out[#out + 1] = {keyidx, k.sha256} end end
  if type(r.basic) == 'table' then for _, b in ipairs(r.basic) do out[#out + 1] = {basic, b.username} end end
  if type(r.jwt_subjects) == 'table' then for _, s in ipairs(r.jwt_subjects) do out[#out + 1] = {subj, s.subject} end end
  return out
end
local oldtext = redis.call('HGET', rec, id)
local old = nil
local rev = ''
if oldtext then
  old = cjson.decode(oldtext)
  rev = string.format('%d', old.rev or 0)
end
if rev ~= expect then return {'stale', rev} end
if doc ~= '' then
  local r = cjson.decode(doc)
  for _, c in ipairs(claims(r)) do
    local owner = redis.call('HGET', c[1], c[2])
    if owner and owner ~= id then return {'taken', c[1], owner} end
  end
  if old then for _, c in ipairs(claims(old)) do redis.call('HDEL', c[1], c[2]) end end
  for _, c in ipairs(claims(r)) do redis.call('HSET', c[1], c[2], id) end
  redis.call('HSET', rec, id, doc)
else
  if not old then return {'missing'} end
  for _, c in ipairs(claims(old)) do redis.call('HDEL', c[1], c[2]) end
  redis.call('HDEL', rec, id)
end
local v = redis.call('INCR', ver)
redis.call('PUBLISH', chan, v .. ' ' .. id)
return {'ok', tostring(v)}
"#;

/// Writes a whole set back when Redis has none (no version key): after a flush or a restart
/// without persistence. ARGV: channel, version, documents...
pub(super) const RESTORE: &str = r#"
local rec, names, keyidx, basic, subj, ver = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('EXISTS', ver) == 1 or redis.call('HLEN', rec) > 0 then return 0 end
for i = 3, #ARGV do
  local r = cjson.decode(ARGV[i])
  redis.call('HSET', rec, r.id, ARGV[i])
  redis.call('HSET', names, r.name, r.id)
  if type(r.keys) == 'table' then for _, k in ipairs(r.keys) do redis.call('HSET', keyidx, k.sha256, r.id) end end
  if type(r.basic) == 'table' then for _, b in ipairs(r.basic) do redis.call('HSET', basic, b.username, r.id) end end
  if type(r.jwt_subjects) == 'table' then for _, s in ipairs(r.jwt_subjects) do redis.call('HSET', subj, s.subject, r.id) end end
end
redis.call('SET', ver, ARGV[2])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' *')
return 1
"#;

static PUT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUT));
pub(super) static RESTORE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(RESTORE));

/// Longest wait for one write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts when another writer changed the consumer between read and write.
const ATTEMPTS: usize = 5;

impl ConsumerStore {
    /// The id of the consumer `id_or_name` names, by the local copy (an id is taken as is).
    pub fn resolve(&self, id_or_name: &str) -> String {
        let snap = self.snapshot.load();
        snap.id_of(id_or_name).unwrap_or(id_or_name).to_string()
    }

    /// Reads consumer `id` from Redis (the source of truth, for a change).
    async fn read(&self, id: &str) -> Result<Option<Record>, WriteError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&self.keys[0]).arg(id);
        let text: Option<String> = self
            .redis
            .query(&cmd, WRITE_TIMEOUT)
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| {
                WriteError::Unavailable(format!("consumer `{id}` is unreadable in redis: {e}"))
            })
        })
        .transpose()
    }

    /// Changes consumer `id`: `change` gets its current document (`None`: absent) and returns
    /// the new one (`None`: delete it) and what to answer. Retried when another writer got in
    /// between. Returns once this node's copy shows the change (or after 1s).
    pub async fn change<T>(
        &self,
        id: &str,
        mut change: impl FnMut(Option<Record>) -> Result<(Option<Record>, T), WriteError>,
    ) -> Result<T, WriteError> {
        for _ in 0..ATTEMPTS {
            let old = self.read(id).await?;
            let expected = old.as_ref().map(|r| r.rev.to_string()).unwrap_or_default();
            let rev = old.as_ref().map_or(0, |r| r.rev);
            let (new, answer) = change(old)?;
            let doc = match &new {
                Some(r) => {
                    let mut r = r.clone();
                    r.rev = rev + 1;
                    r.updated_at = now();
                    if r.created_at == 0 {
                        r.created_at = r.updated_at;
                    }
                    serde_json::to_string(&r).map_err(|e| WriteError::Unavailable(e.to_string()))?
                }
                None => String::new(),
            };
            let args = vec![
                self.channel.clone().into_bytes(),
                id.as_bytes().to_vec(),
                expected.into_bytes(),
                doc.clone().into_bytes(),
                self.copy_version().to_string().into_bytes(),
            ];
            let reply: Vec<RValue> = self
                .redis
                .eval_keys(&PUT_SCRIPT, PUT, &self.keys, &args, WRITE_TIMEOUT)
                .await
                .map_err(|e| WriteError::Unavailable(e.to_string()))?;
            let text = |i: usize| match reply.get(i) {
                Some(RValue::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(RValue::SimpleString(s)) => s.clone(),
                Some(RValue::Int(n)) => n.to_string(),
                _ => String::new(),
            };
            match text(0).as_str() {
                "ok" => {
                    let version: u64 = text(1).parse().unwrap_or(0);
                    self.applied_here(id, (!doc.is_empty()).then_some(doc), version)
                        .await;
                    return Ok(answer);
                }
                "stale" => continue,
                "lost" => {
                    let copy = self.snapshot.load_full();
                    self.restore(&copy).await.map_err(WriteError::Unavailable)?;
                    continue;
                }
                "missing" => return Err(WriteError::NotFound(format!("no consumer `{id}`"))),
                "taken" => {
                    let what = match text(1).rsplit(':').next().unwrap_or("") {
                        "names" => "the name",
                        "keys" => "this API key",
                        "basic" => "the user name",
                        "subjects" => "the subject",
                        _ => "a credential",
                    };
                    return Err(WriteError::Conflict(format!(
                        "{what} already belongs to consumer `{}`",
                        text(2)
                    )));
                }
                other => {
                    return Err(WriteError::Unavailable(format!(
                        "unexpected answer from the store script: {other}"
                    )))
                }
            }
        }
        Err(WriteError::Conflict(format!(
            "consumer `{id}` kept changing under this request; try again"
        )))
    }

    /// The version of this node's copy, once loaded (0 before: it knows nothing to write back).
    fn copy_version(&self) -> u64 {
        if self.loaded.load(Ordering::Relaxed) {
            self.snapshot.load().version
        } else {
            0
        }
    }

    /// Applies this node's own write at once when its copy is at the version just before;
    /// otherwise waits (up to 1s) for the sync thread to bring it there.
    async fn applied_here(&self, id: &str, doc: Option<String>, version: u64) {
        let applied = self.replace(|snap: &Snapshot| {
            (snap.version + 1 == version && self.loaded.load(Ordering::Relaxed))
                .then(|| snap.with(vec![(id.to_string(), doc)], version))
        });
        if applied {
            self.synced();
            return;
        }
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|v| *v >= version)).await;
    }
}
