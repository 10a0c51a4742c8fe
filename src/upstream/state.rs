//! Per-target health state shared by active health checks, outlier detection and the balancer.
//!
//! One small struct of atomics per target: the balancer reads two of them per pick (no clock
//! read unless the target is ejected), the prober and the request path write them. It lives in
//! an `Arc` that a reload hands to the new plan's target when the service's health settings did
//! not change (see `health::Checker::adopt`), so a reload neither forgets a sick target nor
//! restarts its probes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::window::{now_ns, Window};

/// Health of one target.
#[derive(Debug)]
pub struct TargetState {
    /// Active health (false after `unhealthy_threshold` failed probes).
    pub(crate) healthy: AtomicBool,
    /// Ejected by outlier detection until this time (`now_ns`); 0: in rotation.
    pub(crate) ejected_until: AtomicU64,
    /// Ejections in a row (the next ejection lasts this many + 1 base times).
    pub(crate) ejections: AtomicU32,
    /// When the last ejection ended (`now_ns`), to forget old ejections.
    pub(crate) last_return: AtomicU64,
    /// 5xx answers and gateway failures in a row.
    pub(crate) consecutive_errors: AtomicU32,
    /// Failed connection attempts in a row.
    pub(crate) consecutive_connect: AtomicU32,
    /// (requests, failures) for the error-rate condition; built only when configured.
    pub(crate) window: Option<Window>,
    /// Open connections to the target, across all workers (idle in a pool or busy).
    pub connections: std::sync::atomic::AtomicUsize,
}

/// A read-only snapshot of a target's health, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Passing its active health checks (always true without health checks).
    pub healthy: bool,
    /// Time left on an outlier ejection.
    pub ejected_for: Option<Duration>,
    /// Ejections in a row so far.
    pub ejections: u32,
}

impl TargetState {
    /// A healthy, never ejected target; `error_window` is the outlier error-rate window, if any.
    pub fn new(error_window: Option<Duration>) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_return: AtomicU64::new(0),
            consecutive_errors: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            window: error_window.map(Window::new),
            connections: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether the balancer may pick this target: healthy and not ejected. An ejection whose
    /// time is up ends here (the first pick after it), which logs one line.
    #[inline]
    pub fn available(&self, url: &str) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.end_ejection(until, url)
    }

    #[cold]
    fn end_ejection(&self, until: u64, url: &str) -> bool {
        let now = now_ns();
        if now < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.last_return.store(now, Ordering::Relaxed);
            self.consecutive_errors.store(0, Ordering::Relaxed);
            self.consecutive_connect.store(0, Ordering::Relaxed);
            if let Some(w) = &self.window {
                w.reset();
            }
            tracing::info!(
                target_url = url,
                "outlier ejection over; target back in rotation"
            );
        }
        true
    }

    /// Is the target ejected at `now`?
    pub fn ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// The current state, for status output.
    pub fn snapshot(&self) -> HealthSnapshot {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ns();
        HealthSnapshot {
            healthy: self.healthy.load(Ordering::Relaxed),
            ejected_for: (until > now).then(|| Duration::from_nanos(until - now)),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }
}
