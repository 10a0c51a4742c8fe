//! Finish: the gateway's own answer for an error, then what every response carries out: the
//! request id, the metrics and the access-log record (completed when the body ends), the
//! server span, and the connection's accounting.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, Version};

use super::conn::ConnCtx;
use super::ctx::RequestCtx;
use super::Exit;
use crate::body::{GatewayBody, Guard};
use crate::error::{Denial, GatewayError};
use crate::policy::cache;
use crate::proxy::conn::ActiveRequest;
use crate::proxy::exchange::Exchange;
use crate::proxy::grpc;
use crate::proxy::headers::X_REQUEST_ID;
use crate::telemetry::access_log::{rfc3339, Finish};
use crate::telemetry::metrics::{Measure, RecentError, RouteMetrics};
use crate::telemetry::trace::ServerSpan;

/// The response for the phases' `result`, with everything the end of its body must do.
pub(super) fn run(
    cx: &mut RequestCtx<'_>,
    result: Result<Response<GatewayBody>, Exit>,
    guard: ActiveRequest,
) -> Response<GatewayBody> {
    // Taken, not moved out whole: the context is large, and the request is over.
    let (conn, plan, route, grpc, version) = (cx.conn, cx.plan, cx.route, cx.grpc, cx.version);
    let request_id = std::mem::replace(&mut cx.request_id, HeaderValue::from_static(""));
    let (mut log, mut span, target) = (cx.log.take(), cx.span.take(), cx.target.take());
    let mut end = RequestEnd {
        exchange: None,
        measure: None,
        finish: None,
        span: None,
        active: guard,
    };
    let route_metrics = plan.metrics_enabled.then(|| match route {
        Some(i) => &plan.routes[i].metrics,
        None => &conn.runtime.metrics.unmatched,
    });
    let mut error_code = None;
    let mut resp = match result {
        Ok(resp) => {
            // The upstream's response (when it is one) owes its exchange: ended with the rest.
            end.exchange = cx.exchange.take();
            resp
        }
        Err(Exit::Respond(resp)) => resp,
        Err(Exit::Fail(e)) => {
            error_code = Some(e.kind().code);
            let (log, span) = (log.as_deref_mut(), span.as_deref_mut());
            note_error(&e, log, span, route_metrics);
            answer(&e, grpc, &request_id)
        }
    };
    if conn.draining.load(Ordering::Relaxed) && version == Version::HTTP_11 {
        // hyper closes the connection after a response saying so: the client opens a new one
        // instead of racing a close of its idle connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let (status, cache_status, grpc_status) = outcome(&resp, grpc);
    #[cfg(feature = "wasm")]
    if let Some(p) = &cx.plugin {
        p.answered(status);
    }
    if let Some(m) = route_metrics {
        let recorded = Recorded {
            request_id: &request_id,
            routed: route.is_some(),
            method: &cx.method,
            target,
            status,
            error: error_code,
            cache: cache_status,
            grpc_status,
        };
        record(m, conn, recorded);
        if let Some(op) = &cx.operation {
            m.operation(op.index, op.of, &op.id, status);
        }
        end.measure = Some(Measure {
            route: Arc::clone(m),
            start: cx.start,
            request_bytes: cx.request_bytes,
            grpc: grpc && grpc_status.is_none(),
        });
    }
    if let Some(mut log) = log {
        log.status = status;
        log.cache = cache_status;
        log.grpc_status = grpc_status;
        end.finish = Some(log);
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    if let Some(mut s) = span {
        s.status = status;
        end.span = Some(s);
    }
    if version <= Version::HTTP_11 && conn.paced.load(Ordering::Relaxed) {
        resp.body_mut().pace(end.active.pace());
    }
    resp.body_mut().guard(Box::new(end));
    resp
}

/// The request's part of its response body's end: metrics recorded, the access-log line
/// written and the span ended with the bytes sent, and the request counted active on its
/// connection until then.
struct RequestEnd {
    exchange: Option<Exchange>,
    measure: Option<Measure>,
    finish: Option<Box<Finish>>,
    span: Option<Box<ServerSpan>>,
    active: ActiveRequest,
}

impl Guard for RequestEnd {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        // gRPC reports its status in the trailers.
        let Some(code) = grpc::status_of(trailers) else {
            return;
        };
        if let Some(f) = &mut self.finish {
            f.grpc_status = Some(code);
        }
        if let Some(m) = self.measure.as_ref().filter(|m| m.grpc) {
            m.route.grpc(code);
        }
    }

    fn end(self: Box<Self>, sent: u64, complete: bool) {
        let RequestEnd {
            exchange,
            measure,
            finish,
            span,
            active,
        } = *self;
        if let Some(exchange) = exchange {
            exchange.end(complete);
        }
        if let Some(measure) = measure {
            measure.finish(sent);
        }
        if let Some(finish) = finish {
            finish.write(sent, complete);
        }
        if let Some(span) = span {
            span.end(complete);
        }
        drop(active);
    }
}

/// The response's status, cache result and gRPC status (trailers-only answers carry it in the
/// head; others in the trailers, which the body records when they pass).
fn outcome(resp: &Response<GatewayBody>, grpc: bool) -> (u16, Option<&'static str>, Option<u16>) {
    let cache = resp
        .extensions()
        .get::<cache::CacheStatus>()
        .map(|s| s.as_str());
    let grpc_status = grpc.then(|| grpc::status_of(resp.headers())).flatten();
    (resp.status().as_u16(), cache, grpc_status)
}

/// Notes the gateway's error in the request's log record, span and refusal metrics.
fn note_error(
    e: &GatewayError,
    log: Option<&mut Finish>,
    span: Option<&mut ServerSpan>,
    metrics: Option<&Arc<RouteMetrics>>,
) {
    let kind = e.kind();
    if let Some(log) = log {
        log.error = Some(kind.code);
        log.rate_limit = match kind.denial {
            Some(Denial::RateLimit("store_unavailable")) => Some("unavailable"),
            Some(Denial::RateLimit(_)) => Some("rejected"),
            _ => log.rate_limit,
        };
    }
    if let Some(m) = metrics {
        m.refused(e);
    }
    if let Some(s) = span {
        s.error = Some(kind.code);
    }
}

/// The gateway's answer for `error`: JSON, or trailers-only for a gRPC call.
fn answer(error: &GatewayError, grpc: bool, request_id: &HeaderValue) -> Response<GatewayBody> {
    if grpc {
        grpc::error_response(error)
    } else {
        error.to_response(Some(request_id))
    }
}

/// What the metrics record of a response, besides its body's measure.
struct Recorded<'a> {
    request_id: &'a HeaderValue,
    routed: bool,
    method: &'a Method,
    target: Option<PathAndQuery>,
    status: u16,
    error: Option<&'static str>,
    cache: Option<&'static str>,
    grpc_status: Option<u16>,
}

/// Counts the response on its route's series; an error goes to the recent-errors list.
fn record(m: &Arc<RouteMetrics>, conn: &ConnCtx, r: Recorded<'_>) {
    m.count(r.method, r.status);
    if let Some(c) = r.cache {
        m.cache(c);
    }
    if let Some(code) = r.grpc_status {
        m.grpc(code);
    }
    if r.error.is_some() || r.status >= 500 {
        conn.runtime.metrics.note_error(RecentError {
            time: rfc3339(SystemTime::now()),
            request_id: String::from_utf8_lossy(r.request_id.as_bytes()).into_owned(),
            route: r.routed.then(|| m.route().to_string()),
            service: r.routed.then(|| m.service().to_string()),
            method: r.method.to_string(),
            path: r
                .target
                .map_or_else(String::new, |p| p.path().chars().take(200).collect()),
            status: r.status,
            error: r.error,
        });
    }
}
