//! Dispatch: the request leaves the gateway. An aggregate route fans out to its calls; an
//! allowed upgrade becomes a tunnel; a shadow copy is mirrored; a stale cache entry may answer
//! while a refresh goes on alone; otherwise the request is forwarded, with retries.
//!
//! The plain forward is awaited directly in the phase list (`pipeline::run`): a request
//! future nested one level deeper is copied whole each time it is created, and the forward's
//! is the largest. The rare ways out live in [`elsewhere`], boxed.

use std::sync::Arc;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response};

use super::ctx::RequestCtx;
use super::Exit;
use crate::body::{GatewayBody, RequestBody};
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::policy::cache;
use crate::policy::shadow;
use crate::proxy::{retry, upgrade};
use crate::upstream::Service;

/// Whether the request leaves another way than a plain forward: an aggregate, a shadow copy,
/// an upgrade tunnel, or a stale answer with a refresh behind it. Those go through
/// [`elsewhere`]; the plain forward stays in the phase list, unboxed.
pub(super) fn is_elsewhere(cx: &RequestCtx<'_>, route: &Route) -> bool {
    route.policies.aggregate.is_some()
        || route.policies.shadow.is_some()
        || cx.upgrade.is_some()
        || cx.cache.as_ref().is_some_and(cache::Fill::has_background)
}

/// The upstream path and query decided by the phases before.
pub(super) fn target_path(cx: &mut RequestCtx<'_>) -> PathAndQuery {
    cx.upstream_target
        .take()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The forwarding settings of `route` to `service`.
pub(super) fn how<'r>(cx: &RequestCtx<'_>, route: &'r Route) -> retry::How<'r> {
    retry::How {
        name: &route.name,
        retry: route.resilience.retry.as_deref(),
        timeout: route.timeout,
        preserve_host: route.preserve_host,
        deadline_header: route.resilience.deadline_header.as_ref(),
        max_body_bytes: route.max_body_bytes,
        keep_raw_head: super::respond::keeps_raw_head(cx, route),
    }
}

/// The forward's result, after the breaker heard of it: the upstream's answer, or (when the
/// upstream failed) the error or a stale cache entry (stale-if-error).
pub(super) fn settle(
    cx: &mut RequestCtx<'_>,
    result: Result<retry::Answer, GatewayError>,
) -> Result<retry::Answer, Exit> {
    if let Some(permit) = cx.permit.take() {
        retry::settle(permit, &result);
    }
    result.map_err(|e| match cx.cache.take() {
        Some(fill) => fill.upstream_failed(e).into(),
        None => e.into(),
    })
}

/// The rare ways out, awaited behind a box by the phase list.
pub(super) async fn elsewhere(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    mut parts: Parts,
    body: RequestBody,
) -> Result<Response<GatewayBody>, Exit> {
    let plan = cx.plan;
    let target_path = target_path(cx);
    if let Some(aggregate) = &route.policies.aggregate {
        drop(body);
        let facts = cx.facts(target_path.query());
        let answer = aggregate.run(
            &plan.services,
            &parts.headers,
            &facts,
            cx.client_ip,
            route.timeout,
            &cx.trace,
        );
        return Err(answer.await.into());
    }
    let Some(service) = cx.service else {
        return Err(GatewayError::Unavailable("no service").into());
    };
    let body = match &route.policies.shadow {
        Some(policy) if cx.upgrade.is_none() => {
            // The mirrored copy is a call of its own (the main one is stamped again).
            cx.trace.stamp(&mut parts.headers);
            let copy = shadow::MirrorOf {
                parts: &parts,
                client_ip: cx.client_ip,
                client_host: cx.client_host.as_ref(),
                new_path: &target_path,
                preserve_host: route.preserve_host,
                timeout: route.timeout,
            };
            shadow::maybe_mirror(policy, &plan.services[policy.service], copy, body).await?
        }
        _ => body,
    };
    if let Some(client_upgrade) = cx.upgrade.take() {
        drop(body);
        return Err(tunnel(cx, route, service, parts, &target_path, client_upgrade).await);
    }
    if let Some(stale) = cx.cache.as_mut().and_then(cache::Fill::take_background) {
        refresh_in_background(cx, route, service, parts, body, &target_path)?;
        return Err(Exit::Respond(stale));
    }
    let forward = retry::Forward {
        service,
        how: how(cx, route),
        client_ip: cx.client_ip,
        client_host: cx.client_host.take(),
        new_path: target_path,
        trace: &cx.trace,
        call: None,
    };
    let result = retry::forward(&forward, parts, body, cx.log.as_deref_mut()).await;
    let answer = settle(cx, result)?;
    if super::respond::transforms_body(route) {
        return Ok(super::respond::run_transforming(cx, route, answer).await?);
    }
    Ok(super::respond::run(cx, route, answer)?)
}

/// An allowed protocol upgrade: the exchange becomes a tunnel to one target.
async fn tunnel(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    service: &Arc<Service>,
    mut parts: Parts,
    target_path: &PathAndQuery,
    client_upgrade: hyper::upgrade::OnUpgrade,
) -> Exit {
    let Some(index) = service.pick(&parts.headers, cx.client_ip, None) else {
        return GatewayError::NoHealthyUpstream(Arc::clone(&service.name)).into();
    };
    let target = &service.targets[index];
    if let Some(log) = cx.log.as_deref_mut() {
        log.target = Some(Arc::clone(&target.url));
    }
    cx.trace.stamp(&mut parts.headers);
    let host = cx.client_host.as_ref();
    if let Err(e) = retry::prepare(&mut parts, target, route.preserve_host, host, target_path) {
        return e.into();
    }
    let req = Request::from_parts(parts, RequestBody::empty());
    let tunnel = upgrade::proxy_upgrade(service, target, req, client_upgrade, route.timeout);
    Box::pin(tunnel).await.into()
}

/// stale-while-revalidate: the client has its answer; the refresh goes on alone, to one
/// target, without retries.
fn refresh_in_background(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    service: &Arc<Service>,
    mut parts: Parts,
    body: RequestBody,
    target_path: &PathAndQuery,
) -> Result<(), GatewayError> {
    let picked = service.pick(&parts.headers, cx.client_ip, None);
    if let (Some(fill), Some(index)) = (cx.cache.take(), picked) {
        let target = Arc::clone(&service.targets[index]);
        cx.trace.stamp(&mut parts.headers);
        let host = cx.client_host.as_ref();
        retry::prepare(&mut parts, &target, route.preserve_host, host, target_path)?;
        let upstream_req = Request::from_parts(parts, body);
        fill.refresh_in_background(Arc::clone(service), target, upstream_req, route.timeout);
    }
    Ok(())
}
