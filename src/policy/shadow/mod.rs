//! The `shadow` policy: mirrors a percentage of a route's requests to another service. The
//! mirrored responses are discarded, and the mirror never delays or fails the real request.
//!
//! Owns the sampling decision and the bound on mirrored requests in flight. Sending is the
//! proxy's (`proxy/shadow.rs`), as it reuses the upstream pools and balancers.

mod mirror;

pub(crate) use mirror::{maybe_mirror, MirrorOf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::units::ByteSize;
use crate::spec::ConfigError;

/// `- shadow: {service: orders-next, percent: 10}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// The service that receives the copies.
    pub service: String,
    /// Share of requests mirrored, 0 to 100 (fractions allowed). Default 100.
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Largest request body mirrored (bodies of known length only; they are buffered, which
    /// the real request barely notices at this size). Larger ones are not mirrored.
    /// Default 64KiB.
    #[serde(default = "default_body")]
    pub max_body_bytes: ByteSize,
    /// Mirrored requests in flight at most; beyond it copies are skipped, so a slow shadow
    /// service cannot pile up work in the gateway. Default 100.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

fn hundred() -> f64 {
    100.0
}
fn default_body() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_in_flight() -> usize {
    100
}

/// A compiled `shadow` policy.
#[derive(Debug)]
pub struct ShadowPolicy {
    /// Index of the shadow service in the plan.
    pub service: usize,
    threshold: u64,
    /// Largest body mirrored.
    pub max_body_bytes: u64,
    max_in_flight: usize,
    in_flight: AtomicUsize,
}

/// Counts a mirrored request until it is done.
pub struct ShadowSlot(Arc<ShadowPolicy>);

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ShadowPolicy {
    /// Compiles a `shadow` entry.
    pub fn compile(raw: &RawShadow, b: &mut crate::policy::Build<'_>) -> Option<Arc<Self>> {
        Self::build(raw, b.path, b.services, b.errors).map(Arc::new)
    }

    /// Compiles a policy written at `path`.
    pub fn build(
        raw: &RawShadow,
        path: &str,
        services: &[&String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        let service = services.iter().position(|n| **n == raw.service);
        if service.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.service"),
                format!("no service named `{}`", raw.service),
            ));
        }
        if !(0.0..=100.0).contains(&raw.percent) {
            errors.push(ConfigError::new(
                format!("{path}.percent"),
                "must be between 0 and 100",
            ));
        }
        (errors.len() == before).then(|| ShadowPolicy {
            service: service.unwrap_or_default(),
            threshold: (raw.percent / 100.0 * u32::MAX as f64) as u64,
            max_body_bytes: raw.max_body_bytes.0,
            max_in_flight: raw.max_in_flight,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Whether this request is mirrored; the slot is held until the copy is done.
    pub fn sample(self: &Arc<Self>) -> Option<ShadowSlot> {
        if u64::from(fastrand::u32(..)) >= self.threshold && self.threshold < u32::MAX as u64 {
            return None;
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ShadowSlot(Arc::clone(self)))
    }
}
