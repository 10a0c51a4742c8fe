//! The upstream's response on its way back: hop-by-hop headers removed, the response work
//! decided on the way in applied (transform, CORS, version and rate-limit headers, `Via`), the
//! body wrapped with what must happen when it ends, and the cache given its copy.

use http::{header, Response, StatusCode, Version};

use super::ctx::RequestCtx;
use crate::body::GatewayBody;
use crate::body::UpstreamBody;
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::proxy::client::PooledSender;
use crate::proxy::exchange::Exchange;
use crate::proxy::{headers, retry};
use crate::upstream::InFlight;

/// The client's response from the upstream's answer. Synchronous: a response body transform
/// (the one step that awaits) goes through [`run_transforming`] instead.
pub(super) fn run(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    answer: retry::Answer,
) -> Result<Response<GatewayBody>, GatewayError> {
    let retry::Answer { sent, in_flight } = answer;
    let (mut parts, incoming) = sent.response.into_parts();
    head(cx, route, &mut parts)?;
    let mut resp = finish_body(
        cx,
        route,
        parts,
        Outgoing::Stream(None, incoming),
        sent.pooled,
        in_flight,
    );
    if let Some(raw) = sent.raw_head {
        resp.body_mut().carry_head(raw);
    }
    Ok(resp)
}

/// Whether the upstream's answer head may stay its own bytes all the way to the client
/// ([`crate::body::head::RawHead`]): the gateway's own HTTP/1.1 server writes the response
/// (hyper's would not see such a head), and nothing on the route reads or rewrites answer
/// fields (cache, transform, CORS, OpenAPI, a wasm filter, a gRPC status). What the gateway
/// adds (the request id, rate-limit and version headers, `Via`) goes into the response's map,
/// and the server writes it instead of the upstream's field of the same name.
pub(super) fn keeps_raw_head(cx: &RequestCtx<'_>, route: &Route) -> bool {
    let p = &route.policies;
    cx.conn.own_http1()
        && !cx.grpc
        && cx.cache.is_none()
        && p.cache.is_none()
        && p.transform.is_none()
        && p.cors.is_none()
        && p.openapi.is_none()
        && p.wasm.is_none()
}

/// What goes to the client as the response body.
enum Outgoing {
    /// Made (or rewritten) whole at the gateway.
    Full(bytes::Bytes),
    /// The upstream's body, behind the bytes a filter read from its front.
    Stream(Option<bytes::Bytes>, UpstreamBody),
}

/// Whether the route rewrites response bodies (and so must await the upstream's whole body).
pub(super) fn transforms_body(route: &Route) -> bool {
    route
        .policies
        .transform
        .as_ref()
        .is_some_and(|t| t.has_response_body())
        || route
            .policies
            .openapi
            .as_ref()
            .is_some_and(|o| o.checks_responses())
}

/// Like [`run`], reading the upstream's body whole for the route's response body transform.
pub(super) async fn run_transforming(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    answer: retry::Answer,
) -> Result<Response<GatewayBody>, GatewayError> {
    let retry::Answer { sent, in_flight } = answer;
    let (mut parts, incoming) = sent.response.into_parts();
    headers::fill_from_raw(&mut parts.headers, sent.raw_head);
    head(cx, route, &mut parts)?;
    let body = rewrite_body(cx, route, &mut parts, incoming).await?;
    Ok(finish_body(cx, route, parts, body, sent.pooled, in_flight))
}

/// The route's response body transform and OpenAPI check, on the upstream's whole body.
async fn rewrite_body(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut http::response::Parts,
    incoming: UpstreamBody,
) -> Result<Outgoing, GatewayError> {
    let body = match &route.policies.transform {
        Some(t) => {
            t.response_body(&mut parts.headers, incoming, route.timeout)
                .await?
        }
        None => Err(incoming),
    };
    let body = match (&route.policies.openapi, &cx.operation) {
        (Some(api), Some(op)) if api.checks_responses() => {
            let mismatch = || route.metrics.openapi_mismatch(&op.id);
            api.check_response(op, &route.name, parts, body, route.timeout, mismatch)
                .await?
        }
        _ => body,
    };
    Ok(match body {
        Ok(bytes) => Outgoing::Full(bytes),
        Err(incoming) => Outgoing::Stream(None, incoming),
    })
}

/// Like [`run`], with the route's wasm filter on the response head and (unless the route
/// rewrites response bodies itself) its body.
#[cfg(feature = "wasm")]
pub(super) async fn run_plugin(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    answer: retry::Answer,
) -> Result<Response<GatewayBody>, super::Exit> {
    use super::plugin::{self, Answered};
    use crate::policy::wasm::stream::Passed;
    let retry::Answer { sent, in_flight } = answer;
    let (mut parts, incoming) = sent.response.into_parts();
    headers::fill_from_raw(&mut parts.headers, sent.raw_head);
    head(cx, route, &mut parts)?;
    let upstream = Some(in_flight.target().authority.clone());
    let rewrites = transforms_body(route);
    let passed = match plugin::response(cx, route, &mut parts, incoming, upstream, !rewrites).await
    {
        Answered::Body(passed) => passed,
        Answered::Replaced(exit) => return Err(exit),
    };
    let body = match passed {
        Passed::Untouched(incoming) if rewrites => {
            rewrite_body(cx, route, &mut parts, incoming).await?
        }
        Passed::Untouched(incoming) => Outgoing::Stream(None, incoming),
        Passed::Whole(bytes) => Outgoing::Full(bytes),
        Passed::Filtered(rest, _) => {
            Outgoing::Stream(None, crate::body::HyperOrOwn::Own(Box::into_pin(rest)))
        }
    };
    Ok(finish_body(cx, route, parts, body, sent.pooled, in_flight))
}

/// The response head: version, hop-by-hop headers, and the header work decided on the way in.
fn head(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut http::response::Parts,
) -> Result<(), GatewayError> {
    // The version is hop-by-hop: an HTTP/1.0 upstream's answer goes to an HTTP/1.1 client as
    // HTTP/1.1 (hyper would otherwise write `HTTP/1.0` and treat the connection as such).
    parts.version = Version::HTTP_11;
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // No upgrade was forwarded on this request: relaying the switch would turn the client
        // connection into a tunnel to the upstream that no route or policy sees.
        return Err(GatewayError::UpstreamProtocol(
            "the upstream switched protocols (101) although no upgrade was requested".into(),
        ));
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if let (Some(t), Some(rendered)) = (&route.policies.transform, cx.response_headers.take()) {
        t.apply_response(&mut parts.headers, rendered);
    }
    if let (Some(c), Some(origin)) = (&route.policies.cors, cx.cors_origin.take()) {
        c.apply(&mut parts.headers, origin);
    }
    for (name, value) in cx.version_headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Ok(())
}

/// The response body (rewritten, or the upstream's stream) with what must happen when it ends,
/// the rate-limit headers and `Via`, and the cache's copy.
fn finish_body(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    mut parts: http::response::Parts,
    body: Outgoing,
    pooled: Option<PooledSender>,
    in_flight: InFlight,
) -> Response<GatewayBody> {
    let mut held = None;
    if let Some(admitted) = cx.admitted.take() {
        for (k, v) in admitted.headers {
            parts.headers.insert(k, v);
        }
        held = admitted
            .slot
            .map(|slot| Box::new(slot) as Box<dyn Send + Sync>);
    }
    if let Some(via) = &cx.plan.forwarding.via {
        parts.headers.append(header::VIA, via.clone());
    }
    cx.exchange = Some(Exchange {
        pooled,
        in_flight: Some(in_flight),
        held,
        service_slot: cx.service_slot.take(),
    });
    let idle = cx.service.map_or(route.timeout, |s| s.timeouts.idle);
    let body = match body {
        Outgoing::Full(rewritten) => GatewayBody::full(rewritten),
        Outgoing::Stream(None, incoming) => GatewayBody::upstream(incoming, idle),
        Outgoing::Stream(Some(prefix), incoming) => {
            GatewayBody::upstream_after(prefix, incoming, idle)
        }
    };
    let resp = Response::from_parts(parts, body);
    match cx.cache.take() {
        Some(fill) => fill.respond(resp),
        None => resp,
    }
}
