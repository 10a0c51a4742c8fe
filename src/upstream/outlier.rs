//! Passive health (outlier detection): targets that fail real requests are ejected from the
//! rotation for a while, longer each time in a row, with a cap on how many are out at once.
//!
//! The request path reports every upstream attempt through [`record`]; a success costs two
//! relaxed loads (no store unless a failure streak was running), so a healthy service pays
//! almost nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::config::RawOutlierDetection;
use super::state::TargetState;
use super::Target;

/// Compiled `outlier_detection`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// 5xx and gateway failures in a row that eject (0: off).
    pub consecutive_5xx: u32,
    /// Connect failures in a row that eject (0: off).
    pub consecutive_connect: u32,
    /// (percent, minimum requests, window).
    pub error_rate: Option<(u32, u32, Duration)>,
    /// First ejection length.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
    /// Most targets out at once, in percent (at least one).
    pub max_percent: u32,
}

impl OutlierDetection {
    /// From the YAML (validated).
    pub fn compile(raw: &RawOutlierDetection) -> Self {
        Self {
            consecutive_5xx: raw.consecutive_5xx,
            consecutive_connect: raw.consecutive_connect_failures,
            error_rate: raw
                .error_rate
                .as_ref()
                .map(|r| (r.percent, r.min_requests, r.window.0)),
            base: raw.base_ejection_time.0,
            max: raw.max_ejection_time.0,
            max_percent: raw.max_ejection_percent,
        }
    }
}

/// How one upstream attempt went, as far as the target's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response.
    ServerError,
    /// The connection could not be opened.
    ConnectFailure,
    /// Timeout or reset after connecting.
    GatewayFailure,
}

impl Outcome {
    /// Whether this counts as a failure.
    pub fn failed(self) -> bool {
        self != Outcome::Success
    }
}

/// Records an attempt on `targets[index]` and ejects it when a condition trips.
pub fn record(
    cfg: &OutlierDetection,
    service: &str,
    targets: &[Arc<Target>],
    index: usize,
    outcome: Outcome,
    now: u64,
) {
    let target = &targets[index];
    let s = &target.state;
    if let Some(w) = &s.window {
        w.add(now, 1, u64::from(outcome.failed()));
    }
    let reason = match outcome {
        Outcome::Success => {
            // Loads first: a healthy target's cache line is not written on every request.
            if s.consecutive_errors.load(Ordering::Relaxed) != 0 {
                s.consecutive_errors.store(0, Ordering::Relaxed);
            }
            if s.consecutive_connect.load(Ordering::Relaxed) != 0 {
                s.consecutive_connect.store(0, Ordering::Relaxed);
            }
            None
        }
        _ => {
            let errors = s.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
            let connects = if outcome == Outcome::ConnectFailure {
                s.consecutive_connect.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                s.consecutive_connect.store(0, Ordering::Relaxed);
                0
            };
            if cfg.consecutive_connect > 0 && connects >= cfg.consecutive_connect {
                Some("consecutive connect failures")
            } else if cfg.consecutive_5xx > 0 && errors >= cfg.consecutive_5xx {
                Some("consecutive 5xx or gateway failures")
            } else {
                match (&cfg.error_rate, &s.window) {
                    (Some((percent, min, _)), Some(w)) => {
                        let (total, failed) = w.sums(now);
                        (total >= u64::from(*min) && failed * 100 >= total * u64::from(*percent))
                            .then_some("error rate over the threshold")
                    }
                    _ => None,
                }
            }
        }
    };
    if let Some(reason) = reason {
        eject(cfg, service, targets, index, reason, now);
    }
}

fn eject(
    cfg: &OutlierDetection,
    service: &str,
    targets: &[Arc<Target>],
    index: usize,
    reason: &str,
    now: u64,
) {
    let s: &TargetState = &targets[index].state;
    let current = s.ejected_until.load(Ordering::Acquire);
    if current != 0 && now < current {
        return;
    }
    let out = targets.iter().filter(|t| t.state.ejected(now)).count();
    let allowed = (targets.len() * cfg.max_percent as usize / 100).max(1);
    if out >= allowed {
        return;
    }
    // A target that stayed in rotation for a whole max_ejection_time starts over at the base.
    let last = s.last_return.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) > cfg.max.as_nanos() as u64 {
        s.ejections.store(0, Ordering::Relaxed);
    }
    let n = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let length = cfg.base.saturating_mul(n).min(cfg.max);
    let until = now + length.as_nanos() as u64;
    if s.ejected_until
        .compare_exchange(current, until, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        s.consecutive_errors.store(0, Ordering::Relaxed);
        s.consecutive_connect.store(0, Ordering::Relaxed);
        tracing::warn!(
            service,
            target_url = %targets[index].url,
            ejection = n,
            "target ejected for {length:?}: {reason}"
        );
    } else {
        s.ejections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Address, Protocol};
    use std::sync::atomic::AtomicUsize;

    const S: u64 = 1_000_000_000;

    fn targets(n: usize) -> Vec<Arc<Target>> {
        (0..n)
            .map(|i| {
                Arc::new(Target {
                    id: i as u64,
                    url: format!("http://10.0.0.{i}:80").into(),
                    authority: http::HeaderValue::from_static("x"),
                    address: Address::Ip(([127, 0, 0, 1], 1).into()),
                    protocol: Protocol::Http1,
                    tls: None,
                    weight: 1,
                    in_flight: AtomicUsize::new(0),
                    state: Arc::new(TargetState::new(None)),
                })
            })
            .collect()
    }

    fn cfg(max_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 2,
            consecutive_connect: 0,
            error_rate: None,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
            max_percent,
        }
    }

    fn until(t: &Target) -> u64 {
        t.state.ejected_until.load(Ordering::Relaxed)
    }

    #[test]
    fn a_success_breaks_the_streak() {
        let t = targets(2);
        let c = cfg(50);
        record(&c, "s", &t, 0, Outcome::ServerError, S);
        record(&c, "s", &t, 0, Outcome::Success, S);
        record(&c, "s", &t, 0, Outcome::ServerError, S);
        assert_eq!(until(&t[0]), 0);
        record(&c, "s", &t, 0, Outcome::GatewayFailure, S);
        assert_eq!(until(&t[0]), S + 10 * S);
    }

    #[test]
    fn ejections_in_a_row_grow_up_to_the_cap() {
        let t = targets(2);
        let c = cfg(50);
        let mut now = S;
        for expected in [10, 20, 25, 25] {
            record(&c, "s", &t, 0, Outcome::ServerError, now);
            record(&c, "s", &t, 0, Outcome::ServerError, now);
            assert_eq!(until(&t[0]), now + expected * S, "ejection of {expected}s");
            // Failing again as soon as the ejection is over: the next one is longer.
            now = until(&t[0]);
        }
    }

    #[test]
    fn max_ejection_percent_keeps_targets_in_but_one_may_always_go() {
        let t = targets(4);
        let c = cfg(10);
        for i in 0..4 {
            record(&c, "s", &t, i, Outcome::ServerError, S);
            record(&c, "s", &t, i, Outcome::ServerError, S);
        }
        let out = t.iter().filter(|t| t.state.ejected(S)).count();
        assert_eq!(
            out, 1,
            "10 % of 4 rounds down to 0, and one may always be ejected"
        );
    }
}
