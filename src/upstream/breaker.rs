//! Circuit breakers (per service, or per route) and the per-service cap on requests in flight.
//!
//! The breaker is a three-state machine in atomics: closed (count outcomes; open on an error
//! rate over a window with a minimum volume, or on failures in a row), open (refuse everything
//! until `open_for` has passed), half-open (admit `half_open_requests` probes; any failure opens
//! again, all succeeding closes). No lock: every worker admits and records concurrently, and the
//! transitions are compare-and-swaps, so exactly one caller logs each change.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::config::RawCircuitBreaker;
use super::window::Window;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Compiled `circuit_breaker` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// (percent, minimum requests, window).
    pub error_rate: Option<(u32, u32, Duration)>,
    /// Failures in a row that open (0: off).
    pub consecutive_failures: u32,
    /// Time open before probing.
    pub open_for: Duration,
    /// Probes admitted while half-open.
    pub half_open_requests: u32,
}

/// The state of a breaker, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused.
    Open,
    /// A few probe requests are let through.
    HalfOpen,
}

/// A circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// What it was built from (a reload keeps a breaker whose config did not change).
    pub config: BreakerConfig,
    /// Whose breaker this is, for logs and errors (`service api`, `route orders`).
    pub name: std::sync::Arc<str>,
    state: AtomicU8,
    opened_at: AtomicU64,
    consecutive: AtomicU32,
    probes_admitted: AtomicU32,
    probes_passed: AtomicU32,
    window: Window,
}

/// Leave to send one request; report how it went with [`Permit::record`]. Dropped unreported
/// (the client went away), a half-open probe gives its place back.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    done: bool,
}

impl CircuitBreaker {
    /// From the YAML (validated); `name` is for logs.
    pub fn new(raw: &RawCircuitBreaker, name: Arc<str>) -> Self {
        let error_rate = raw
            .error_rate
            .as_ref()
            .map(|r| (r.percent, r.min_requests, r.window.0));
        Self {
            window: Window::new(error_rate.map_or(Duration::from_secs(10), |r| r.2)),
            config: BreakerConfig {
                error_rate,
                consecutive_failures: raw.consecutive_failures,
                open_for: raw.open_for.0,
                half_open_requests: raw.half_open_requests,
            },
            name,
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probes_admitted: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Admits a request at `now`, or says how long until the breaker may let one through.
    pub fn admit(self: &Arc<Self>, now: u64) -> Result<Permit, Duration> {
        let permit = |probe| Permit {
            breaker: Arc::clone(self),
            probe,
            done: false,
        };
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(permit(false)),
                OPEN => {
                    let reopen = self.opened_at.load(Ordering::Acquire)
                        + self.config.open_for.as_nanos() as u64;
                    if now < reopen {
                        return Err(Duration::from_nanos(reopen - now));
                    }
                    self.probes_admitted.store(0, Ordering::Relaxed);
                    self.probes_passed.store(0, Ordering::Relaxed);
                    if self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        tracing::info!(
                            breaker = %self.name,
                            "circuit breaker half-open: admitting {} probe requests",
                            self.config.half_open_requests
                        );
                    }
                }
                _ => {
                    let n = self.probes_admitted.fetch_add(1, Ordering::AcqRel);
                    if n < self.config.half_open_requests {
                        return Ok(permit(true));
                    }
                    self.probes_admitted.fetch_sub(1, Ordering::AcqRel);
                    // Probes are in flight; their outcome decides. Ask to come back soon.
                    return Err(Duration::from_secs(1));
                }
            }
        }
    }

    fn open(&self, from: u8, now: u64, why: &str) {
        self.opened_at.store(now, Ordering::Release);
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                breaker = %self.name,
                "circuit breaker open for {:?}: {why}",
                self.config.open_for
            );
        }
    }

    fn record(&self, probe: bool, failed: bool, now: u64) {
        let state = self.state.load(Ordering::Acquire);
        if probe {
            if state != HALF_OPEN {
                return;
            }
            if failed {
                self.open(HALF_OPEN, now, "a half-open probe failed");
            } else {
                let passed = self.probes_passed.fetch_add(1, Ordering::AcqRel) + 1;
                if passed >= self.config.half_open_requests {
                    self.window.reset();
                    self.consecutive.store(0, Ordering::Relaxed);
                    if self
                        .state
                        .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        tracing::info!(breaker = %self.name, "circuit breaker closed");
                    }
                }
            }
            return;
        }
        if state != CLOSED {
            // Answers to requests admitted before the breaker opened say nothing new.
            return;
        }
        if self.config.error_rate.is_some() {
            self.window.add(now, 1, u64::from(failed));
        }
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return;
        }
        let row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.consecutive_failures > 0 && row >= self.config.consecutive_failures {
            self.open(CLOSED, now, "consecutive failures");
            return;
        }
        if let Some((percent, min, _)) = self.config.error_rate {
            let (total, bad) = self.window.sums(now);
            if total >= u64::from(min) && bad * 100 >= total * u64::from(percent) {
                self.open(CLOSED, now, "error rate over the threshold");
            }
        }
    }
}

impl Permit {
    /// Reports the request's outcome (a 5xx or a gateway failure is a failure).
    pub fn record(mut self, failed: bool, now: u64) {
        self.done = true;
        self.breaker.record(self.probe, failed, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.done {
            self.breaker.probes_admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// `max_concurrent_requests`: requests to a service in flight at once (until their response
/// body ends), beyond which new ones are shed with 503 instead of queueing.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    /// The cap.
    pub max: usize,
    current: AtomicUsize,
}

/// A place under a [`ConcurrencyLimit`], given back on drop.
#[derive(Debug)]
pub struct ConcurrencyGuard(Arc<ConcurrencyLimit>);

impl ConcurrencyLimit {
    /// A cap of `max`.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            current: AtomicUsize::new(0),
        }
    }

    /// Takes a place, or `None` when the cap is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyGuard> {
        let before = self.current.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConcurrencyGuard(Arc::clone(self)))
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;

    const S: u64 = 1_000_000_000;

    fn breaker(consecutive: u32) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            &RawCircuitBreaker {
                error_rate: None,
                consecutive_failures: consecutive,
                open_for: Dur::from_secs(10),
                half_open_requests: 2,
            },
            "test".into(),
        ))
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let b = breaker(3);
        for _ in 0..3 {
            b.admit(S).expect("closed").record(true, S);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(2 * S).unwrap_err(), Duration::from_secs(9));
        // After open_for: two probes, a third waits.
        let p1 = b.admit(11 * S).expect("probe 1");
        let p2 = b.admit(11 * S).expect("probe 2");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit(11 * S).is_err());
        p1.record(false, 11 * S);
        p2.record(false, 11 * S);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_probe_frees_its_place() {
        let b = breaker(1);
        b.admit(S).unwrap().record(true, S);
        let p = b.admit(12 * S).expect("probe");
        drop(p);
        let p = b
            .admit(12 * S)
            .expect("the dropped probe's place is free again");
        let _q = b.admit(12 * S).expect("second probe");
        p.record(true, 12 * S);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit(13 * S).is_err());
    }

    #[test]
    fn error_rate_needs_the_minimum_volume() {
        let b = Arc::new(CircuitBreaker::new(
            &RawCircuitBreaker {
                error_rate: Some(crate::upstream::config::RawErrorRate {
                    percent: 50,
                    min_requests: 10,
                    window: Dur::from_secs(10),
                }),
                consecutive_failures: 0,
                open_for: Dur::from_secs(10),
                half_open_requests: 1,
            },
            "test".into(),
        ));
        for i in 0..9 {
            b.admit(S).unwrap().record(i % 2 == 0, S);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "9 requests are below the volume"
        );
        b.admit(S).unwrap().record(true, S);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn concurrency_limit_sheds_beyond_the_cap() {
        let l = Arc::new(ConcurrencyLimit::new(2));
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
    }
}
