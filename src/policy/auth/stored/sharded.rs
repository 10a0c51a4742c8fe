//! A hash map in shards that are shared between copies: cloning the map clones one `Arc` per
//! shard, and a change copies only the shard it touches. A change to one consumer among
//! 100,000 then copies about 1/64 of each index instead of all of it.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

/// Shards per map.
const SHARDS: usize = 64;

/// A map of `SHARDS` copy-on-write shards.
pub struct Sharded<K, V> {
    shards: Vec<Arc<FxHashMap<K, V>>>,
    len: usize,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Arc::new(FxHashMap::default()))
                .collect(),
            len: 0,
        }
    }
}

fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    // The high bits: FxHash's low bits are weak for short keys.
    (FxBuildHasher.hash_one(key) >> 58) as usize % SHARDS
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    /// The value of `key`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.shards[shard_of(key)].get(key)
    }

    /// The stored key and value of `key`.
    pub fn get_key_value<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        self.shards[shard_of(key)].get_key_value(key)
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: K, value: V) {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        if shard.insert(key, value).is_none() {
            self.len += 1;
        }
    }

    /// Sets `key` to `value()` unless it has a value.
    pub fn insert_new(&mut self, key: K, value: impl FnOnce() -> V) {
        if self.get(&key).is_none() {
            self.insert(key, value());
        }
    }

    /// Removes `key`, copying its shard only when it is there.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let removed = Arc::make_mut(&mut self.shards[i]).remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every value, in no order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_one_shard_and_leaves_the_original_alone() {
        let mut a: Sharded<Box<str>, u32> = Sharded::default();
        for i in 0..1000 {
            a.insert(format!("k{i}").into(), i);
        }
        let mut b = a.clone();
        b.insert("k1".into(), 7);
        assert_eq!(b.remove("k2"), Some(2));
        assert_eq!(b.remove("absent"), None);
        assert_eq!(
            (a.get("k1"), a.get("k2"), a.len()),
            (Some(&1), Some(&2), 1000)
        );
        assert_eq!((b.get("k1"), b.get("k2"), b.len()), (Some(&7), None, 999));
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "{shared}");
        assert_eq!(b.iter().count(), 999);
    }
}
