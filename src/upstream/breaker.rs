//! Circuit breakers (per service, or per route) and the per-service cap on requests in flight.
//!
//! The breaker is a three-state machine: closed (count outcomes; open on an error rate over a
//! window with a minimum volume, or on failures in a row), open (refuse everything until
//! `open_for` has passed), half-open (admit `half_open_requests` probes; any failure opens
//! again, all succeeding closes). A closed breaker costs one atomic read per request and atomic
//! counts per outcome, no lock; requests refused while open read two atomics and leave. Only
//! what is rare takes the breaker's small lock: a transition, and the few requests of a
//! half-open period. Each transition logs one line.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    pub name: Arc<str>,
    /// The state, read without the lock on every request; written only under it.
    state: AtomicU8,
    /// When the breaker last opened (`now_ns`), readable without the lock so that requests
    /// refused while open never take it.
    opened_at: AtomicU64,
    /// Failures in a row while closed.
    consecutive: AtomicU32,
    /// (requests, failures) while closed, for the error rate.
    window: Window,
    /// The half-open bookkeeping. Taken only off the fast path: while half-open, on a
    /// transition, and by a probe's outcome.
    cycle: Mutex<Cycle>,
}

#[derive(Debug, Default)]
struct Cycle {
    /// Probes let through in this half-open period.
    admitted: u32,
    /// Probes of this period that succeeded.
    passed: u32,
    /// Bumped on every transition, so the outcome (or the drop) of a probe admitted in an
    /// earlier period cannot touch the counts of the current one.
    generation: u64,
}

/// Leave to send one request; report how it went with [`Permit::record`]. Dropped unreported
/// (the client went away), a half-open probe gives its place back.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    /// The half-open period this probe belongs to; `None` for a request admitted while closed.
    probe: Option<u64>,
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
            cycle: Mutex::new(Cycle::default()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Cycle> {
        self.cycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request at `now`, or says how long until the breaker may let one through.
    pub fn admit(self: &Arc<Self>, now: u64) -> Result<Permit, Duration> {
        let permit = |probe| Permit {
            breaker: Arc::clone(self),
            probe,
            done: false,
        };
        let open_until = |at: u64| at + self.config.open_for.as_nanos() as u64;
        match self.state.load(Ordering::Acquire) {
            CLOSED => return Ok(permit(None)),
            OPEN => {
                let until = open_until(self.opened_at.load(Ordering::Acquire));
                if now < until {
                    return Err(Duration::from_nanos(until - now));
                }
            }
            _ => {}
        }
        let mut cycle = self.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => return Ok(permit(None)),
            OPEN => {
                let until = open_until(self.opened_at.load(Ordering::Acquire));
                if now < until {
                    return Err(Duration::from_nanos(until - now));
                }
                cycle.admitted = 0;
                cycle.passed = 0;
                cycle.generation += 1;
                self.state.store(HALF_OPEN, Ordering::Release);
                tracing::info!(
                    breaker = %self.name,
                    "circuit breaker half-open: admitting {} probe requests",
                    self.config.half_open_requests
                );
            }
            _ => {}
        }
        if cycle.admitted < self.config.half_open_requests {
            cycle.admitted += 1;
            return Ok(permit(Some(cycle.generation)));
        }
        // Every probe is in flight; their outcome decides. Ask to come back soon.
        Err(Duration::from_secs(1))
    }

    /// Opens the breaker (the caller holds the lock).
    fn open(&self, cycle: &mut Cycle, now: u64, why: &str) {
        self.opened_at.store(now, Ordering::Release);
        cycle.generation += 1;
        self.state.store(OPEN, Ordering::Release);
        tracing::warn!(
            breaker = %self.name,
            "circuit breaker open for {:?}: {why}",
            self.config.open_for
        );
    }

    fn record_probe(&self, generation: u64, failed: bool, now: u64) {
        let mut cycle = self.lock();
        if cycle.generation != generation || self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        if failed {
            self.open(&mut cycle, now, "a half-open probe failed");
            return;
        }
        cycle.passed += 1;
        if cycle.passed >= self.config.half_open_requests {
            self.window.reset();
            self.consecutive.store(0, Ordering::Relaxed);
            cycle.generation += 1;
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!(breaker = %self.name, "circuit breaker closed");
        }
    }

    fn record_closed(&self, failed: bool, now: u64) {
        if self.state.load(Ordering::Acquire) != CLOSED {
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
        let why = if self.config.consecutive_failures > 0 && row >= self.config.consecutive_failures
        {
            "consecutive failures"
        } else {
            match self.config.error_rate {
                Some((percent, min, _)) => {
                    let (total, bad) = self.window.sums(now);
                    if total >= u64::from(min) && bad * 100 >= total * u64::from(percent) {
                        "error rate over the threshold"
                    } else {
                        return;
                    }
                }
                None => return,
            }
        };
        let mut cycle = self.lock();
        if self.state.load(Ordering::Acquire) == CLOSED {
            self.open(&mut cycle, now, why);
        }
    }
}

impl Permit {
    /// Reports the request's outcome (a 5xx or a gateway failure is a failure).
    pub fn record(mut self, failed: bool, now: u64) {
        self.done = true;
        match self.probe {
            Some(generation) => self.breaker.record_probe(generation, failed, now),
            None => self.breaker.record_closed(failed, now),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (Some(generation), false) = (self.probe, self.done) {
            let mut cycle = self.breaker.lock();
            if cycle.generation == generation {
                cycle.admitted = cycle.admitted.saturating_sub(1);
            }
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
    use crate::spec::units::Dur;

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
    fn a_probe_of_an_earlier_half_open_period_cannot_disturb_the_next() {
        let b = breaker(1);
        b.admit(S).unwrap().record(true, S);
        let stale = b.admit(12 * S).expect("probe 1");
        b.admit(12 * S).expect("probe 2").record(true, 12 * S);
        assert_eq!(b.state(), BreakerState::Open);
        // Dropped after the breaker reopened: its place belongs to a finished period.
        drop(stale);
        let p1 = b.admit(23 * S).expect("probe 1 of the next period");
        let p2 = b.admit(23 * S).expect("probe 2 of the next period");
        assert!(b.admit(23 * S).is_err());
        p1.record(false, 23 * S);
        p2.record(false, 23 * S);
        assert_eq!(b.state(), BreakerState::Closed);
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
