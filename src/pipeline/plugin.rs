//! The route's wasm filter: on the request after rate limiting (so a refused request costs no
//! filter work, and the filter sees the consumer), and on the upstream's response before the
//! response work decided on the way in. Only routes with a `wasm` policy come here. The request
//! headers phase runs in place when the filter settles it in its callback; what waits (a pause,
//! a body the filter watches, the response phases) is a future the caller boxes, so other
//! requests do not carry it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{response, Response, StatusCode};
use http_body::Body as _;
use tokio::time::Instant;

use super::ctx::RequestCtx;
use super::Exit;
use crate::body::{GatewayBody, RequestBody, UpstreamBody};
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::policy::wasm::stream::{BodyStop, Passed, Paused, Stream, Verdict};
use crate::policy::wasm::vm::{self, Facts, LocalReply};
use crate::policy::wasm::{OnError, WasmPolicy};

/// What the request phases still have to wait for (a pause, or a body the filter watches).
pub(super) struct Later {
    stream: Stream,
    paused: Option<Paused>,
    body: RequestBody,
}

/// Runs the filter's request headers phase, in place when the filter settles it in its
/// callback (the common case: no future is made). `Err(Later)` when the request must wait
/// for the filter (a pause) or its body goes through the filter: [`request_later`] finishes
/// it. The stream stays in the context for the response and the request's end.
pub(super) fn request(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut Parts,
    body: RequestBody,
) -> Result<Result<RequestBody, Later>, Exit> {
    let Some(policy) = &route.policies.wasm else {
        return Ok(Ok(body));
    };
    let stream = match open(cx, route, policy, parts) {
        Ok(s) => s,
        Err(message) => return failed(policy, message).map(|()| Ok(body)),
    };
    let (verdict, path_changed) = match stream.request_headers(parts, body.is_end_stream()) {
        Ok(settled) => settled,
        Err(paused) => {
            return Ok(Err(Later {
                stream,
                paused: Some(paused),
                body,
            }))
        }
    };
    if !headers_settled(cx, policy, &stream, parts, verdict, path_changed)? {
        return Ok(Ok(body));
    }
    if body.is_end_stream() || !stream.sees_body(false) {
        cx.plugin = Some(stream);
        return Ok(Ok(body));
    }
    Ok(Err(Later {
        stream,
        paused: None,
        body,
    }))
}

/// What a settled request headers phase means for the request: `Err` when it ends here,
/// `Ok(false)` when the filter failed open (the request goes on without it).
fn headers_settled(
    cx: &mut RequestCtx<'_>,
    policy: &WasmPolicy,
    stream: &Stream,
    parts: &Parts,
    verdict: Verdict,
    path_changed: bool,
) -> Result<bool, Exit> {
    match verdict {
        Verdict::Continue => {}
        Verdict::Reply(reply) => return Err(answer(cx, policy, stream.clone(), reply)),
        Verdict::Fail(message) => {
            // Failed open: the request goes on without the filter (its context ends here).
            failed(policy, message)?;
            return Ok(false);
        }
    }
    if path_changed {
        // The filter rewrote `:path`: that is what goes upstream (the route stays chosen).
        cx.upstream_target = parts.uri.path_and_query().cloned();
    }
    Ok(true)
}

/// The rest of the request phases: the wait for a paused filter, then the body when the
/// filter has a body or trailers callback.
pub(super) async fn request_later(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut Parts,
    later: Later,
) -> Result<RequestBody, Exit> {
    let Some(policy) = &route.policies.wasm else {
        return Ok(later.body);
    };
    let Later {
        stream,
        paused,
        body,
    } = later;
    let deadline = Instant::now() + route.timeout;
    if let Some(paused) = paused {
        let (verdict, path_changed) = stream.request_headers_paused(parts, paused, deadline).await;
        if !headers_settled(cx, policy, &stream, parts, verdict, path_changed)? {
            return Ok(body);
        }
    }
    let completion = body.completion();
    let fail_open = policy.on_error == OnError::FailOpen;
    let body = match stream
        .body(body, false, policy.spec.max_body, deadline, fail_open)
        .await
    {
        Ok(Passed::Untouched(body)) => body,
        Ok(Passed::Whole(bytes)) => {
            // Framed from the body as the filter left it.
            parts.headers.remove(header::CONTENT_LENGTH);
            RequestBody::full(bytes)
        }
        Ok(Passed::Filtered(rest, reframed)) => {
            if reframed {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            RequestBody::replaced(Box::into_pin(rest), completion)
        }
        Err(BodyStop::TooLarge(limit)) => {
            return Err(GatewayError::PayloadTooLarge { limit }.into())
        }
        Err(BodyStop::Broken(e)) => return Err(GatewayError::from(e).into()),
        Err(BodyStop::Verdict(Verdict::Reply(reply))) => {
            return Err(answer(cx, policy, stream, reply))
        }
        Err(BodyStop::Verdict(Verdict::Fail(message))) => {
            // Fail-open after part of the body was read: nothing can be sent in its place.
            return Err(GatewayError::PluginFailed {
                plugin: Arc::clone(&policy.name),
                message,
            }
            .into());
        }
        Err(BodyStop::Verdict(Verdict::Continue)) => RequestBody::empty(),
    };
    cx.plugin = Some(stream);
    Ok(body)
}

/// What the filter made of the upstream's response.
pub(super) enum Answered {
    /// The response goes on with this body.
    Body(Passed<UpstreamBody>),
    /// The filter answered instead.
    Replaced(Exit),
}

/// Runs the filter's response phases on the upstream's response head and body.
pub(super) async fn response(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut response::Parts,
    body: UpstreamBody,
    upstream: Option<HeaderValue>,
    with_body: bool,
) -> Answered {
    let (Some(policy), Some(stream)) = (&route.policies.wasm, cx.plugin.take()) else {
        return Answered::Body(Passed::Untouched(body));
    };
    let deadline = Instant::now() + route.timeout;
    let verdict = stream
        .response_headers(parts, body.is_end_stream(), upstream, deadline)
        .await;
    match verdict {
        Verdict::Continue => {}
        Verdict::Reply(reply) => return Answered::Replaced(answer(cx, policy, stream, reply)),
        Verdict::Fail(message) => {
            // The context lives on to the request's end either way (`on_log` sees it).
            cx.plugin = Some(stream);
            return match failed(policy, message) {
                Ok(()) => Answered::Body(Passed::Untouched(body)),
                Err(e) => Answered::Replaced(e),
            };
        }
    }
    if !with_body {
        cx.plugin = Some(stream);
        return Answered::Body(Passed::Untouched(body));
    }
    let fail_open = policy.on_error == OnError::FailOpen;
    let passed = match stream
        .body(body, true, policy.spec.max_body, deadline, fail_open)
        .await
    {
        Ok(p) => p,
        Err(BodyStop::TooLarge(limit)) => {
            return Answered::Replaced(GatewayError::ResponseTooLarge { limit }.into())
        }
        Err(BodyStop::Broken(e)) => {
            return Answered::Replaced(
                GatewayError::UpstreamProtocol(format!("the response body broke off: {e}")).into(),
            )
        }
        Err(BodyStop::Verdict(Verdict::Reply(reply))) => {
            return Answered::Replaced(answer(cx, policy, stream, reply))
        }
        Err(BodyStop::Verdict(Verdict::Fail(message))) => {
            return Answered::Replaced(
                GatewayError::PluginFailed {
                    plugin: Arc::clone(&policy.name),
                    message,
                }
                .into(),
            )
        }
        Err(BodyStop::Verdict(Verdict::Continue)) => Passed::Whole(Bytes::new()),
    };
    if matches!(passed, Passed::Whole(_) | Passed::Filtered(_, true)) {
        // Framed from the body as the filter left it.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    cx.plugin = Some(stream);
    Answered::Body(passed)
}

/// The facts and context of a request in the worker's instance of the filter.
fn open(
    cx: &RequestCtx<'_>,
    route: &Route,
    policy: &WasmPolicy,
    parts: &Parts,
) -> Result<Stream, String> {
    let cell = vm::instance(&policy.spec, &policy.alive).map_err(|f| f.0)?;
    let facts = Facts {
        route: Arc::clone(&route.name),
        service: cx.service.map(|s| Arc::clone(&s.name)),
        source: cx.conn.peer,
        client_ip: cx.client_ip,
        destination: None,
        request_id: cx.request_id.clone(),
        consumer: cx.identity.as_ref().and_then(|i| i.name.clone()),
        trace_id: cx.trace.trace_id,
        protocol: match parts.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        },
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        method: parts.method.clone(),
        host: match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => parts.headers.get(header::HOST).cloned(),
        },
        scheme: if cx.conn.tls.is_some() {
            "https"
        } else {
            "http"
        },
    };
    Stream::open(cell, facts, &cx.plan.services).map_err(|f| f.0)
}

/// The answer for a request that failed upstream: the filter's own, when it answered while
/// the request's body was streaming through it (it refused part of the body), else `exit`.
pub(super) fn late(cx: &mut RequestCtx<'_>, route: &Route, exit: Exit) -> Exit {
    let (Some(policy), Some(stream)) = (&route.policies.wasm, cx.plugin.take()) else {
        return exit;
    };
    match stream.late_reply() {
        Some(reply) => answer(cx, policy, stream, reply),
        None => {
            cx.plugin = Some(stream);
            exit
        }
    }
}

/// A failed filter: `fail_open` goes on without it (logged with the failure), `fail_closed`
/// answers 500.
fn failed(policy: &WasmPolicy, message: String) -> Result<(), Exit> {
    match policy.on_error {
        OnError::FailOpen => Ok(()),
        OnError::FailClosed => Err(GatewayError::PluginFailed {
            plugin: Arc::clone(&policy.name),
            message,
        }
        .into()),
    }
}

/// The filter's own answer: its body and headers as given, or (without a body) the common
/// JSON error body with its status.
fn answer(cx: &mut RequestCtx<'_>, policy: &WasmPolicy, stream: Stream, reply: LocalReply) -> Exit {
    stream.answered(reply.status);
    cx.plugin = Some(stream);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if reply.body.is_empty() {
        let message = if reply.details.is_empty() {
            format!("refused by the {} filter", policy.name)
        } else {
            reply.details
        };
        let framing = [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
            header::UPGRADE,
            header::CONTENT_TYPE,
        ];
        let headers = reply
            .headers
            .into_iter()
            .filter(|(k, _)| !framing.contains(k))
            .collect();
        return GatewayError::PluginReply {
            status,
            message,
            headers,
        }
        .into();
    }
    let mut resp = Response::new(GatewayBody::full(reply.body));
    *resp.status_mut() = status;
    for (k, v) in reply.headers {
        resp.headers_mut().append(k, v);
    }
    // The gateway frames its own answer.
    let headers = resp.headers_mut();
    crate::proxy::headers::strip_hop_by_hop(headers, false);
    headers.remove(header::CONTENT_LENGTH);
    Exit::Respond(resp)
}
