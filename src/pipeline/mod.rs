//! The request path: one [`RequestCtx`] per request, carried through the phases in lifecycle
//! order. Each phase is a file; each takes the context and the request and either lets the
//! request go on or ends it with an answer ([`Exit`]). The phase list in [`run`] is the one
//! place that says what runs when (docs/architecture.md and docs/request-lifecycle.md draw it).
//!
//! Policies stay in their folders under `policy/` (declared once, with their YAML key, in
//! `policy/mod.rs`); a phase calls the route's typed slot, so the hot path pays one `Option`
//! check per unused policy and no boxed call.

// An early answer travels as `Err(Exit::Respond(..))` by value: the `Ok` path, taken by almost
// every request, carries nothing, and boxing would allocate for every cache hit or preflight.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

mod admit;
mod authenticate;
mod cache;
pub mod conn;
mod ctx;
mod dispatch;
mod finish;
mod openapi;
#[cfg(feature = "wasm")]
mod plugin;
mod prepare;
mod protect;
mod rate_limit;
mod respond;
mod traffic;
pub mod unparsed;

use std::convert::Infallible;
use std::sync::Arc;

use crate::body::ClientBody;
use http::{Request, Response};

pub use crate::proxy::conn::{ActiveRequest, WriteFlow};
pub use admit::https_redirect;
pub use conn::{ConnCtx, ProxyService};
pub(crate) use ctx::RequestCtx;

use crate::body::GatewayBody;
use crate::body::RequestBody;
use crate::error::GatewayError;
use crate::proxy::retry;

/// How a phase ends a request early.
pub(crate) enum Exit {
    /// With this answer (a cache hit, a CORS preflight, a redirect, an aggregate's merge).
    Respond(Response<GatewayBody>),
    /// With the gateway's error answer.
    Fail(GatewayError),
}

impl From<GatewayError> for Exit {
    fn from(e: GatewayError) -> Self {
        Exit::Fail(e)
    }
}

impl From<Result<Response<GatewayBody>, GatewayError>> for Exit {
    fn from(r: Result<Response<GatewayBody>, GatewayError>) -> Self {
        match r {
            Ok(resp) => Exit::Respond(resp),
            Err(e) => Exit::Fail(e),
        }
    }
}

/// Serves one request: never fails (errors become answers in `finish`).
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<ClientBody>,
) -> Result<Response<GatewayBody>, Infallible> {
    // The context borrows the connection; the guard goes with the response body.
    let guard = ActiveRequest::start(Arc::clone(&conn.state));
    let active = conn.runtime.active();
    let mut cx = RequestCtx::new(&conn, &active, &req);
    let result = run(&mut cx, req).await;
    Ok(finish::run(&mut cx, result, guard))
}

/// The phase list, in lifecycle order.
async fn run(
    cx: &mut RequestCtx<'_>,
    mut req: Request<ClientBody>,
) -> Result<Response<GatewayBody>, Exit> {
    let route = admit::run(cx, &mut req)?;
    let (mut parts, body) = req.into_parts();
    authenticate::run(cx, route, &mut parts).await?;
    traffic::run(cx, route, &parts)?;
    rate_limit::run(cx, route, &parts).await?;
    let termination = route.policies.request_termination.as_ref();
    if let Some(answer) = termination.and_then(|t| t.answer(&parts)) {
        return Ok(answer);
    }
    let body = RequestBody::streaming(body, route.max_body_bytes, cx.plan.request_body_idle);
    #[cfg(feature = "wasm")]
    let body = match route.policies.wasm {
        // In place when the filter settles the request in its callback; boxed only to wait.
        Some(_) => match plugin::request(cx, route, &mut parts, body)? {
            Ok(body) => body,
            Err(later) => Box::pin(plugin::request_later(cx, route, &mut parts, later)).await?,
        },
        None => body,
    };
    // Boxed, and only on routes with the policy: its future (a body read whole) would
    // otherwise be carried, and copied, by every request's.
    let body = match route.policies.openapi {
        Some(_) => Box::pin(openapi::run(cx, route, &parts, body)).await?,
        None => body,
    };
    cache::run(cx, route, &mut parts).await?;
    protect::run(cx, route)?;
    let body = prepare::run(cx, route, &mut parts, body).await?;
    // dispatch: the rare ways out boxed, the plain forward here (see `dispatch`).
    if dispatch::is_elsewhere(cx, route) {
        return Box::pin(dispatch::elsewhere(cx, route, parts, body)).await;
    }
    let Some(service) = cx.service else {
        return Err(GatewayError::Unavailable("no service").into());
    };
    let forward = retry::Forward {
        service,
        how: dispatch::how(cx, route),
        client_ip: cx.client_ip,
        client_host: cx.client_host.take(),
        new_path: dispatch::target_path(cx),
        trace: &cx.trace,
        call: None,
    };
    let result = retry::forward(&forward, parts, body, cx.log.as_deref_mut()).await;
    let answer = match dispatch::settle(cx, result) {
        Ok(answer) => answer,
        #[cfg(feature = "wasm")]
        Err(exit) if cx.plugin.is_some() => return Err(plugin::late(cx, route, exit)),
        Err(exit) => return Err(exit),
    };
    #[cfg(feature = "wasm")]
    if route
        .policies
        .wasm
        .as_ref()
        .is_some_and(|w| w.sees_responses())
    {
        return Box::pin(respond::run_plugin(cx, route, answer)).await;
    }
    if respond::transforms_body(route) {
        return Ok(Box::pin(respond::run_transforming(cx, route, answer)).await?);
    }
    Ok(respond::run(cx, route, answer)?)
}
