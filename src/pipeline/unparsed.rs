//! Requests that hyper's HTTP/1 parser refuses before the gateway's service ever sees them
//! (a malformed request line or header, an oversized head). hyper answers those itself with a
//! bare status line; the connection layer (`server::conn`) hands the refusal here instead, so
//! the client gets the gateway's JSON error body and the refusal is logged and counted like any
//! other.

use std::time::Instant;

use http::Method;

use super::conn::ConnCtx;
use crate::error::GatewayError;
use crate::proxy::headers;
use crate::telemetry::access_log::{Finish, RequestText};

/// Why hyper refused the request, as told by the status of its canned answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a request line or header field that does not parse.
    Malformed,
    /// 431: the head does not fit the read buffer.
    HeadTooLarge,
    /// 414 (a 431 whose current line is a request line over `limits.max_uri_bytes`).
    TargetTooLong,
}

impl Refusal {
    /// The refusal that hyper's canned `status` stands for (400, 414 or 431).
    pub fn from_status(status: u16) -> Option<Self> {
        match status {
            400 => Some(Refusal::Malformed),
            431 => Some(Refusal::HeadTooLarge),
            414 => Some(Refusal::TargetTooLong),
            _ => None,
        }
    }
}

/// The gateway's answer to a refused request, as bytes for the wire, after logging and
/// counting it. The connection closes after it.
pub fn answer(ctx: &ConnCtx, refusal: Refusal) -> Vec<u8> {
    let active = ctx.runtime.active();
    let limits = &active.plan.limits;
    let error = match refusal {
        Refusal::Malformed => GatewayError::BadRequest(
            "the request is not valid HTTP/1.1 (malformed request line or header field)",
        ),
        Refusal::HeadTooLarge => GatewayError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        },
        Refusal::TargetTooLong => GatewayError::UriTooLong {
            limit: limits.max_uri_bytes,
        },
    };
    let request_id = headers::new_request_id();
    let status = error.kind().status.as_u16();
    // Nothing of the request could be read reliably: the method is logged as `-`.
    let method = Method::from_bytes(b"-").unwrap_or(Method::GET);
    if active.plan.metrics_enabled {
        let m = &ctx.runtime.metrics.unmatched;
        m.refused(&error);
        m.count(&method, status);
    }
    if let Some(logger) = &active.access_log {
        let text = RequestText::new(request_id.as_bytes(), b"", "", None);
        // A trace of its own, so the line is found like any other by its trace id.
        let ids = (
            &fastrand::u128(1..).to_be_bytes(),
            &fastrand::u64(1..).to_be_bytes(),
        );
        let mut finish = Finish::new(
            std::sync::Arc::clone(logger),
            Instant::now(),
            text,
            ctx.peer.ip(),
            ids,
        );
        finish.method = method;
        finish.status = status;
        finish.error = Some(error.kind().code);
        finish.write(0, true);
    }
    error.to_http1_bytes(&request_id)
}
