//! Purge: removing entries by exact key or by key prefix, from memory and Redis. The admin API
//! (a later issue) calls [`purge`]; until then it is a library function.

use std::sync::Arc;

/// What a purge removed: entries from memory, keys from Redis (`None`: Redis failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCount {
    /// Memory entries removed (a resource with variants counts once for its vary rule).
    pub memory: u64,
    /// Redis keys removed; `None` when Redis did not answer.
    pub redis: Option<u64>,
}

/// What to purge.
#[derive(Debug, Clone, Copy)]
pub enum Purge<'a> {
    /// Exactly this key (with its variants).
    Key(&'a str),
    /// Every key starting with this.
    Prefix(&'a str),
}

/// Purges from each of `policies` (each once, however many routes share it): the function the
/// admin API calls with the serving plan's cache policies. Returns the totals.
pub async fn purge(policies: Vec<Arc<super::CachePolicy>>, what: Purge<'_>) -> PurgeCount {
    // Addresses as integers (the future must stay `Send` for the admin API's tasks).
    let mut seen: Vec<usize> = Vec::new();
    let mut total = PurgeCount {
        memory: 0,
        redis: Some(0),
    };
    for policy in &policies {
        let id = Arc::as_ptr(policy) as usize;
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let n = match what {
            Purge::Key(k) => policy.purge_key(k).await,
            Purge::Prefix(p) => policy.purge_prefix(p).await,
        };
        total.memory += n.memory;
        total.redis = match (total.redis, n.redis) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    total
}
