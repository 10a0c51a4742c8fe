//! Keeping a node's copy in step with Redis: subscribe, full read, change messages, the
//! periodic version check, and writing the set back after Redis lost it (see `mod.rs`).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Weak;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use rustc_hash::FxHashMap;

use super::write::{RESTORE, RESTORE_SCRIPT};
use super::{ConsumerStore, Snapshot};

/// Longest wait for one read of a page, a version check or the subscription.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Consumers read per `HSCAN` page.
const PAGE: usize = 1000;

/// Follows Redis for as long as the store exists; reports the first load's outcome (the number
/// of consumers, or why not) on `first`.
pub(super) async fn follow(weak: Weak<ConsumerStore>, first: Sender<Result<usize, String>>) {
    let mut first = Some(first);
    loop {
        let Some(store) = weak.upgrade() else { return };
        let retry = store.check_interval.min(Duration::from_secs(1));
        let interval = store.check_interval;
        let connected = match store.redis.subscribe(&store.channel, CALL_TIMEOUT).await {
            Ok(pubsub) => store.load().await.map(|()| pubsub),
            Err(e) => Err(e.to_string()),
        };
        let pubsub = match connected {
            Ok(p) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(store.snapshot.load().len()));
                }
                p
            }
            Err(e) => {
                store.lost(&e);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                }
                drop(store);
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        drop(store);
        let mut messages = pubsub.into_on_message();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        if let Some(s) = weak.upgrade() {
                            s.lost("the subscription connection closed");
                        }
                        break;
                    };
                    let mut batch = vec![msg];
                    while let Some(Some(m)) = messages.next().now_or_never() {
                        batch.push(m);
                    }
                    let Some(store) = weak.upgrade() else { return };
                    let payloads = batch
                        .iter()
                        .filter_map(|m| m.get_payload::<String>().ok())
                        .collect();
                    if let Err(e) = store.apply(payloads).await {
                        store.lost(&e);
                        break;
                    }
                }
                _ = tick.tick() => {
                    let Some(store) = weak.upgrade() else { return };
                    if let Err(e) = store.check().await {
                        // The subscription may have died silently with the link: renew it.
                        store.lost(&e);
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

impl ConsumerStore {
    /// Reads the whole set (writing this node's copy back first when Redis has lost it).
    async fn load(&self) -> Result<(), String> {
        let mut version = self.version().await?;
        let current = self.snapshot.load_full();
        if version.is_none() && self.loaded.load(Ordering::Relaxed) && !current.is_empty() {
            self.restore(&current).await?;
            version = self.version().await?;
        }
        // By id: a scan may return an entry twice.
        let mut docs: FxHashMap<String, String> = FxHashMap::default();
        let mut cursor = "0".to_string();
        loop {
            let mut cmd = redis::cmd("HSCAN");
            cmd.arg(&self.keys[0]).arg(&cursor).arg("COUNT").arg(PAGE);
            let (next, items): (String, Vec<String>) = self
                .redis
                .query(&cmd, CALL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let mut items = items.into_iter();
            while let (Some(id), Some(doc)) = (items.next(), items.next()) {
                docs.insert(id, doc);
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let snapshot = Snapshot::build(docs.into_values(), version.unwrap_or(0));
        self.replace(|_| Some(snapshot));
        self.loaded.store(true, Ordering::Relaxed);
        self.synced();
        Ok(())
    }

    /// The store's version in Redis (`None`: no consumer was ever written, or Redis lost them).
    async fn version(&self) -> Result<Option<u64>, String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.keys[5]);
        self.redis
            .query(&cmd, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// The periodic check: a version other than the copy's means a missed change.
    async fn check(&self) -> Result<(), String> {
        let remote = self.version().await?;
        let local = self.snapshot.load().version;
        if remote == Some(local) || (remote.is_none() && local == 0) {
            self.synced();
            return Ok(());
        }
        tracing::info!(
            local,
            remote = ?remote,
            "consumer store: copy behind redis; reading the whole set"
        );
        self.load().await
    }

    /// Applies change messages (`version id`); a gap in the versions means a message was
    /// missed, and the whole set is read instead.
    async fn apply(&self, payloads: Vec<String>) -> Result<(), String> {
        let local = self.snapshot.load().version;
        let mut changes: Vec<(u64, String)> = payloads
            .iter()
            .filter_map(|p| {
                let (v, id) = p.split_once(' ')?;
                Some((v.parse().ok()?, id.to_string()))
            })
            .filter(|(v, _)| *v > local)
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        changes.sort();
        if changes.iter().any(|(_, id)| id == "*") {
            return self.load().await;
        }
        let mut ids: Vec<&str> = changes.iter().map(|(_, id)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.keys[0]).arg(&ids);
        let docs: Vec<Option<String>> = self
            .redis
            .query(&cmd, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let docs: FxHashMap<&str, Option<String>> = ids.iter().copied().zip(docs).collect();
        let mut gap = false;
        self.replace(|snap| {
            let pending: Vec<&(u64, String)> =
                changes.iter().filter(|(v, _)| *v > snap.version).collect();
            let contiguous = pending
                .iter()
                .enumerate()
                .all(|(i, (v, _))| *v == snap.version + 1 + i as u64);
            if pending.is_empty() {
                return None;
            }
            if !contiguous {
                gap = true;
                return None;
            }
            let last = pending.last().map_or(snap.version, |(v, _)| *v);
            let batch = pending
                .iter()
                .map(|(_, id)| (id.clone(), docs.get(id.as_str()).cloned().flatten()))
                .collect();
            Some(snap.with(batch, last))
        });
        if gap {
            return self.load().await;
        }
        self.synced();
        Ok(())
    }

    /// Writes `copy` back into a Redis that has no set (flushed, or restarted empty). Only one
    /// node's write lands: the script checks again that the set is absent.
    pub(super) async fn restore(&self, copy: &Snapshot) -> Result<(), String> {
        let mut args = vec![
            self.channel.clone().into_bytes(),
            copy.version.to_string().into_bytes(),
        ];
        args.extend(copy.docs().map(|d| d.as_bytes().to_vec()));
        let wrote: i64 = self
            .redis
            .eval_keys(
                &RESTORE_SCRIPT,
                RESTORE,
                &self.keys,
                &args,
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| e.to_string())?;
        if wrote == 1 {
            tracing::warn!(
                consumers = copy.len(),
                version = copy.version,
                "consumer store: redis had lost the stored consumers; wrote this node's copy back"
            );
        }
        Ok(())
    }

    /// Records that the copy may be behind; logged once per outage.
    fn lost(&self, why: &str) {
        if self.in_sync.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "consumer store: lost redis; serving the last loaded consumers until it returns"
            );
        }
    }
}
