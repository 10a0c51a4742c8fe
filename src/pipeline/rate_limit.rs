//! Rate limiting: after authentication (a limit may key on the consumer) and before anything
//! is sent upstream or read from the cache, so a refused request costs no upstream work and a
//! cache hit counts against the limits too.

use http::request::Parts;

use super::ctx::RequestCtx;
use crate::config::plan::Route;
use crate::error::GatewayError;

/// Admits the request under the route's rate and concurrency limits, or refuses it.
pub(super) async fn run(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &Parts,
) -> Result<(), GatewayError> {
    // A consumer's plan, when it names a declared one, replaces the route's own policy.
    let plan = cx
        .identity
        .as_ref()
        .and_then(|i| i.consumer.as_ref())
        .and_then(|c| c.plan.as_deref())
        .and_then(|p| cx.plan.plans.get(p));
    let Some(policy) = plan.or(route.policies.rate_limit.as_ref()) else {
        return Ok(());
    };
    let admitted = policy
        .check(
            &route.name,
            cx.identity.as_ref(),
            &parts.headers,
            cx.client_ip,
        )
        .await?;
    if let Some(log) = cx.log.as_deref_mut() {
        log.rate_limit = Some("allowed");
    }
    cx.admitted = Some(admitted);
    Ok(())
}
