//! Protection of the service: its circuit breaker and its concurrency cap come before any
//! target is picked (and before a request body is read for a transform), so an open breaker or
//! a full service answers without touching the upstream.

use std::sync::Arc;

use super::ctx::RequestCtx;
use super::Exit;
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::upstream::window::now_ns;

/// Takes the breaker's permit and a place under the service's cap, or answers.
pub(super) fn run(cx: &mut RequestCtx<'_>, route: &Route) -> Result<(), Exit> {
    let Some(service) = cx.service else {
        return Ok(());
    };
    // An aggregate route calls other services, each through its own breaker and cap (see
    // `aggregate`): only the route's own breaker applies here, not its nominal service's.
    let aggregate = route.policies.aggregate.is_some();
    let breaker = route
        .resilience
        .breaker
        .as_ref()
        .or(service.breaker.as_ref().filter(|_| !aggregate));
    if let Some(b) = breaker {
        match b.admit(now_ns()) {
            Ok(permit) => cx.permit = Some(permit),
            Err(wait) => {
                if let Some(fallback) = &route.resilience.fallback {
                    return Err(Exit::Respond(fallback.response()));
                }
                let open = GatewayError::CircuitOpen {
                    breaker: Arc::clone(&b.name),
                    retry_after: wait.as_secs_f64().ceil() as u64,
                };
                // stale-if-error covers an open breaker too.
                return Err(match cx.cache.take() {
                    Some(fill) => fill.upstream_failed(open).into(),
                    None => open.into(),
                });
            }
        }
    }
    if let Some(limit) = service.max_concurrent.as_ref().filter(|_| !aggregate) {
        let slot = limit
            .try_acquire()
            .ok_or_else(|| GatewayError::ServiceOverloaded(Arc::clone(&service.name)))?;
        cx.service_slot = Some(slot);
    }
    Ok(())
}
