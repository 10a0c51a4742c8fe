//! The gateway's error taxonomy and the one table that turns an error into an HTTP response.
//!
//! Every error knows its status, its stable machine-readable code (the `error` field of the JSON
//! body, also used as a log and metric label) and which side caused it. Nothing else in the crate
//! picks a status code for a failure.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::proxy::body::GatewayBody;

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed or was unreachable.
    Upstream,
    /// The gateway itself.
    Internal,
}

/// Everything the gateway can answer with instead of an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed request (bad host, framing, path).
    #[error("{0}")]
    BadRequest(&'static str),
    /// No route matches.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
    },
    /// A route matches the path, but not the method.
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed {
        /// Request method.
        method: Method,
        /// The `Allow` header value.
        allow: String,
    },
    /// Request body over the route's limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Request target over the limit.
    #[error("request target exceeds the limit of {limit} bytes")]
    UriTooLong {
        /// The limit.
        limit: usize,
    },
    /// Request headers over the limit.
    #[error("request headers exceed the limit of {limit} bytes")]
    HeadersTooLarge {
        /// The limit.
        limit: usize,
    },
    /// CONNECT and other methods a gateway does not tunnel.
    #[error("method {0} is not supported by this gateway")]
    MethodNotSupported(Method),
    /// Could not open a connection to any target.
    #[error("could not connect to the upstream service: {0}")]
    UpstreamConnect(String),
    /// Connecting took longer than the connect timeout.
    #[error("connecting to the upstream service timed out")]
    UpstreamConnectTimeout,
    /// The upstream did not send its response head in time.
    #[error("the upstream service did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The TLS handshake with the upstream failed (expired, untrusted or misnamed certificate).
    #[error("the TLS handshake with the upstream service failed: {0}")]
    UpstreamTls(String),
    /// The upstream broke the exchange (reset, closed, invalid response).
    #[error("the upstream service failed: {0}")]
    UpstreamProtocol(String),
    /// The client stopped sending its body or sent a broken one.
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// The client paused its request body for too long (or had not finished it when the
    /// upstream's time ran out): its fault, never the upstream's.
    #[error("the request body was not received in time (idle or unfinished after {0:?})")]
    RequestBodyTimeout(std::time::Duration),
    /// The gateway is shutting down or over capacity.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Missing or invalid credentials (the message never contains the credential).
    #[error("{message}")]
    Unauthorized {
        /// What was wrong.
        message: String,
        /// `WWW-Authenticate` challenges, one per accepted scheme.
        challenges: Vec<HeaderValue>,
        /// Credentials were presented and refused (not merely missing); for the metrics.
        presented: bool,
    },
    /// Authenticated, but not allowed on this route (ACL).
    #[error("{0}")]
    Forbidden(&'static str),
    /// A valid token lacking what the route's issuer requires (claim rules).
    #[error("{message}")]
    InsufficientScope {
        /// Which rule failed (never the token).
        message: String,
        /// The `WWW-Authenticate` challenge with `error="insufficient_scope"`.
        challenge: Option<HeaderValue>,
    },
    /// Over a rate or concurrency limit: 429 (or 503 for a concurrency limit so configured).
    #[error("{message}")]
    RateLimited {
        /// What limit was hit.
        message: &'static str,
        /// 429, or 503 for a concurrency limit configured so.
        status: StatusCode,
        /// Seconds until a request may pass (`Retry-After`).
        retry_after: Option<u64>,
        /// `RateLimit-Policy`/`RateLimit` (and/or legacy) headers.
        headers: Vec<(http::HeaderName, HeaderValue)>,
    },
    /// The credential could not be checked (e.g. the introspection endpoint is down).
    #[error("authentication is unavailable: {0}")]
    AuthUnavailable(String),
    /// The shared rate-limit store failed and the policy says `on_store_error: deny`.
    #[error("rate limiting is unavailable; try again shortly")]
    RateLimitUnavailable,
    /// Every target of the service is out of rotation and the service says `fail`.
    #[error("no healthy target in service {0}")]
    NoHealthyUpstream(std::sync::Arc<str>),
    /// The circuit breaker is open: fail fast without calling the upstream.
    #[error("the circuit breaker of {breaker} is open")]
    CircuitOpen {
        /// Whose breaker (`service api`, `route orders`).
        breaker: std::sync::Arc<str>,
        /// Seconds until it lets a probe through (`Retry-After`).
        retry_after: u64,
    },
    /// The request body is not what the route accepts (not JSON, or against its JSON Schema).
    #[error("{message}")]
    InvalidBody {
        /// What is wrong, in one line.
        message: String,
        /// Each problem found (JSON Schema errors with their instance paths); listed in the
        /// response as `errors`.
        errors: Vec<String>,
    },
    /// The service's `max_concurrent_requests` is reached: shed rather than queue.
    #[error("service {0} has too many requests in flight")]
    ServiceOverloaded(std::sync::Arc<str>),
}

impl GatewayError {
    /// Status, stable code and side.
    pub fn kind(&self) -> (StatusCode, &'static str, Side) {
        use GatewayError::*;
        use Side::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", Downstream),
            NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route", Downstream),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                Downstream,
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Downstream,
            ),
            UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "uri_too_long", Downstream),
            HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Downstream,
            ),
            MethodNotSupported(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_supported",
                Downstream,
            ),
            UpstreamConnect(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable", Upstream),
            UpstreamConnectTimeout => (
                StatusCode::BAD_GATEWAY,
                "upstream_connect_timeout",
                Upstream,
            ),
            UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", Upstream),
            UpstreamProtocol(_) => (StatusCode::BAD_GATEWAY, "upstream_error", Upstream),
            UpstreamTls(_) => (StatusCode::BAD_GATEWAY, "upstream_tls_error", Upstream),
            ClientBody(_) => (StatusCode::BAD_REQUEST, "bad_request_body", Downstream),
            RequestBodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                Downstream,
            ),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Internal),
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized", Downstream),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", Downstream),
            InsufficientScope { .. } => (StatusCode::FORBIDDEN, "insufficient_scope", Downstream),
            RateLimited { status, .. } => (*status, "rate_limited", Downstream),
            InvalidBody { .. } => (StatusCode::BAD_REQUEST, "invalid_body", Downstream),
            AuthUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                Upstream,
            ),
            RateLimitUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                Internal,
            ),
            NoHealthyUpstream(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_upstream",
                Upstream,
            ),
            CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit_open", Upstream),
            ServiceOverloaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_overloaded",
                Upstream,
            ),
        }
    }

    /// The JSON error response for this error.
    pub fn to_response(&self, request_id: Option<&HeaderValue>) -> Response<GatewayBody> {
        let (status, code, _) = self.kind();
        if let GatewayError::InvalidBody { message, errors } = self {
            return invalid_body(status, code, message, errors, request_id);
        }
        let mut resp = json_error(status, code, &self.to_string(), request_id);
        match self {
            GatewayError::Unauthorized { challenges, .. } => {
                for c in challenges {
                    resp.headers_mut()
                        .append(header::WWW_AUTHENTICATE, c.clone());
                }
            }
            GatewayError::InsufficientScope {
                challenge: Some(c), ..
            } => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, c.clone());
            }
            GatewayError::RateLimited {
                retry_after,
                headers,
                ..
            } => {
                let h = resp.headers_mut();
                if let Some(s) = retry_after {
                    h.insert(header::RETRY_AFTER, HeaderValue::from((*s).max(1)));
                }
                for (k, v) in headers {
                    h.insert(k.clone(), v.clone());
                }
            }
            GatewayError::RateLimitUnavailable => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::CircuitOpen { retry_after, .. } => {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after).max(1)),
                );
            }
            GatewayError::MethodNotAllowed { allow, .. } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
            }
            // The rest of the body is still on its way (or never comes): the connection cannot
            // carry another request.
            GatewayError::MethodNotSupported(_)
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::RequestBodyTimeout(_) => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

impl GatewayError {
    /// The gRPC status code for this error: what a gRPC client should make of it.
    pub fn grpc_code(&self) -> u16 {
        match self.kind().0.as_u16() {
            400 => 3,                   // INVALID_ARGUMENT
            401 => 16,                  // UNAUTHENTICATED
            403 => 7,                   // PERMISSION_DENIED
            404 | 405 => 12,            // UNIMPLEMENTED
            413 | 414 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
            502 | 503 => 14,            // UNAVAILABLE
            504 => 4,                   // DEADLINE_EXCEEDED
            _ => 13,                    // INTERNAL
        }
    }

    /// The answer to a gRPC call: HTTP 200, trailers-only, with `grpc-status` and a
    /// `grpc-message` naming the stable error code, so gRPC clients see a status instead of
    /// failing to parse a JSON body.
    pub fn to_grpc_response(&self) -> Response<GatewayBody> {
        use crate::proxy::grpc::{encode_message, GRPC_MESSAGE, GRPC_STATUS};
        let (_, code, _) = self.kind();
        let mut resp = Response::new(GatewayBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS, HeaderValue::from(self.grpc_code()));
        h.insert(GRPC_MESSAGE, encode_message(&format!("{code}: {self}")));
        resp
    }
}

impl GatewayError {
    /// The whole HTTP/1.1 answer, head and JSON body, for a connection the gateway closes after
    /// it: used where no hyper response can be sent (a request hyper could not parse).
    pub fn to_http1_bytes(&self, request_id: &HeaderValue) -> Vec<u8> {
        let (status, code, _) = self.kind();
        let id = request_id.to_str().unwrap_or("");
        let body =
            serde_json::json!({"error": code, "message": self.to_string(), "request_id": id});
        let mut body = serde_json::to_vec(&body).unwrap_or_default();
        body.push(b'\n');
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(
            b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\nx-request-id: ",
        );
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
        out
    }
}

/// A response with the common JSON error body:
/// `{"error": code, "message": ..., "request_id": ...}`.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
) -> Response<GatewayBody> {
    let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let body = serde_json::json!({"error": code, "message": message, "request_id": id});
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(GatewayBody::full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = request_id {
        h.insert(crate::proxy::headers::X_REQUEST_ID, v.clone());
    }
    resp
}

/// The error body with the list of problems: `{"error", "message", "errors": [...],
/// "request_id"}`.
fn invalid_body(
    status: StatusCode,
    code: &str,
    message: &str,
    errors: &[String],
    request_id: Option<&HeaderValue>,
) -> Response<GatewayBody> {
    let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let body =
        serde_json::json!({"error": code, "message": message, "errors": errors, "request_id": id});
    let mut resp = json_error(status, code, message, request_id);
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    *resp.body_mut() = GatewayBody::full(Bytes::from(bytes));
    resp
}
