//! Plans (tiers): named rate-limit policies that a consumer's `plan` selects.
//!
//! `plans: {free: {rate_limit: ...}, pro: {rate_limit: ...}}`. A request by a consumer with a
//! plan is limited by the plan's policy instead of the route's own `rate_limit` (the most
//! specific level wins, as between route, service and global policies), on every route that
//! authenticates it. Moving a consumer to another plan (the admin API's `PATCH /consumers/{id}`)
//! takes effect on its next request, with no reload. One policy per plan: its counters are
//! shared by every route, and survive a reload that leaves the plan unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::RawRateLimitPolicy;
use super::RateLimitPolicy;
use crate::spec::ConfigError;
use crate::store::redis::RedisStore;

/// One plan.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// The rate limit of the plan's consumers (usually `key: consumer`).
    pub rate_limit: RawRateLimitPolicy,
}

/// The compiled plans, by name.
#[derive(Default)]
pub struct Plans {
    by_name: FxHashMap<Box<str>, Arc<RateLimitPolicy>>,
}

impl Plans {
    /// Compiles `plans:`; problems go to `errors` under `plans.<name>.rate_limit`.
    pub fn build(
        raw: &BTreeMap<String, RawPlan>,
        redis: Option<&Arc<RedisStore>>,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let mut by_name = FxHashMap::default();
        for (name, plan) in raw {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                errors.push(ConfigError::new(
                    format!("plans.{name}"),
                    "a plan name is printable text without spaces",
                ));
                continue;
            }
            let path = format!("plans.{name}.rate_limit");
            if let Some(p) = RateLimitPolicy::build(
                &plan.rate_limit,
                &path,
                &format!("plan:{name}"),
                redis,
                errors,
            ) {
                by_name.insert(name.as_str().into(), Arc::new(p));
            }
        }
        Self { by_name }
    }

    /// The policy of plan `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<RateLimitPolicy>> {
        self.by_name.get(name)
    }

    /// Whether a plan is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The plan names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }

    /// Keeps each plan's policy (and its counters) from `previous` when written the same way.
    pub fn carry_over(&mut self, previous: &Plans) {
        let old: Vec<&Arc<RateLimitPolicy>> = previous.by_name.values().collect();
        for slot in self.by_name.values_mut() {
            super::carry_over(&old, slot);
        }
    }
}
