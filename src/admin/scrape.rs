//! `GET /metrics`: the recorded series plus the state read at scrape time (targets, breakers,
//! connections, config), encoded by `telemetry::metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::runtime::Runtime;
use crate::telemetry::metrics::{encode_scrape, StateNow, TargetNow};

/// The whole `/metrics` answer.
pub fn scrape(runtime: &Runtime) -> String {
    encode_scrape(
        &runtime.metrics,
        state_now(runtime),
        crate::policy::wasm::encode_metrics,
    )
}

/// Reads the state `/metrics` reports besides the recorded series.
fn state_now(runtime: &Runtime) -> StateNow {
    use crate::upstream::breaker::BreakerState;
    let active = runtime.active();
    let plan = &active.plan;
    let mut targets = Vec::new();
    let mut breakers = Vec::new();
    let state_name = |s: BreakerState| match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    };
    for s in &plan.services {
        for t in &s.targets {
            let h = t.state.snapshot();
            targets.push(TargetNow {
                service: Arc::clone(&s.name),
                url: Arc::clone(&t.url),
                connections: t.state.connections.load(Ordering::Relaxed),
                in_flight: t.in_flight.load(Ordering::Relaxed),
                healthy: h.healthy,
                ejected: h.ejected_for.is_some(),
            });
        }
        if let Some(b) = &s.breaker {
            breakers.push((Arc::clone(&b.name), state_name(b.state())));
        }
    }
    for r in &plan.routes {
        if let Some(b) = &r.resilience.breaker {
            breakers.push((Arc::clone(&b.name), state_name(b.state())));
        }
    }
    let started = std::time::SystemTime::now()
        .checked_sub(runtime.started.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64().floor());
    StateNow {
        revision: active.revision,
        started,
        client_connections: runtime.connections.load(Ordering::Relaxed),
        access_log_dropped: active
            .access_log
            .as_ref()
            .map_or(0, |l| l.dropped.load(Ordering::Relaxed)),
        targets,
        spans: active.tracer.as_ref().map(|t| t.stats()),
        breakers,
        consumer_store: plan.consumer_store.as_ref().map(|s| {
            let s = s.status();
            (s.consumers, s.age_seconds.unwrap_or(-1.0), s.in_sync)
        }),
    }
}
