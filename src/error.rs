//! The gateway's error taxonomy and the one table that turns an error into an HTTP response.
//!
//! Every error knows its status, its stable machine-readable code (the `error` field of the JSON
//! body, also used as a log and metric label) and which side caused it. Nothing else in the crate
//! picks a status code for a failure.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

/// The request id header: every answer carries one, error answers in their body as well.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// One way a request breaks its OpenAPI operation, as listed in a 400's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// A JSON pointer into the request seen as a document: `/query/limit`,
    /// `/body/items/0/price`.
    pub pointer: String,
    /// Where, for people: `query.limit`, `header.x-trace`, `body/items/0/price`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse, or is not allowed.
    Client,
    /// The upstream failed or was unreachable.
    Upstream,
    /// The gateway itself (shutting down, a store it depends on).
    Gateway,
}

/// How an upstream exchange failed, when a retry may help: what `retry_on` conditions and
/// outlier detection read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing reached the upstream (connect refused or timed out): safe to retry any method.
    Connect,
    /// The upstream took too long to answer.
    Timeout,
    /// The upstream broke the exchange (reset, closed, invalid response).
    Reset,
}

/// Which counter a refusal goes to, with its reason label: metrics read this, never the
/// variant or its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// `portico_auth_failures_total{reason}`: authentication or the consumer ACL.
    Auth(&'static str),
    /// `portico_rate_limited_total{limit}`.
    RateLimit(&'static str),
    /// `portico_denied_total{reason}`: refused by an access policy (IP filter, CORS).
    Access(&'static str),
}

/// Everything the rest of the process needs to know about an error, read from one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The HTTP status answered.
    pub status: StatusCode,
    /// The stable machine-readable code: the `error` field of the JSON body, a log and metric
    /// label.
    pub code: &'static str,
    /// `Some` when another attempt (at another target) may succeed, and under which
    /// `retry_on` condition.
    pub retryable: Option<Failure>,
    /// The connection cannot carry another request after this answer (the rest of the body
    /// is still on its way, or never comes).
    pub closes_connection: bool,
    /// Whose fault it is: only `Upstream` failures count against a breaker.
    pub side: Side,
    /// The metric a refusal is counted under, besides the request counters.
    pub denial: Option<Denial>,
}

/// The access policy that refused a request with 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuser {
    /// The route's consumer `allow`/`deny` lists.
    Acl,
    /// The route's `ip_filter`.
    IpFilter,
    /// A CORS preflight the route's `cors` refuses.
    Cors,
    /// A rate limit with `missing_key: deny` and no key value.
    RateLimitKey,
}

/// Which limit refused a request with 429 (or 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A request-rate limit.
    Rate,
    /// A concurrency (in-flight) limit.
    Concurrency,
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
    /// Not allowed on this route: by the ACL, an IP filter, CORS or a rate limit's key rule.
    #[error("{message}")]
    Forbidden {
        /// What was refused (never a credential).
        message: &'static str,
        /// Which policy refused: a metric reason of its own.
        by: Refuser,
    },
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
        /// Rate or concurrency: the metric's `limit` label.
        limit: Limit,
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
    /// The request does not follow the route's OpenAPI operation (parameters or body).
    #[error("{message}")]
    RequestInvalid {
        /// What is wrong, in one line.
        message: String,
        /// Each problem (capped); listed in the response as `errors`.
        errors: Vec<Problem>,
    },
    /// The route's OpenAPI spec (`strict: true`) has no operation at this path.
    #[error("no operation of the API matches {method} {path}")]
    UnknownOperation {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
    },
    /// The upstream's answer does not follow the route's OpenAPI operation
    /// (`validate_responses: enforce`).
    #[error("the upstream's answer does not follow the API's description: {0}")]
    ResponseInvalid(String),
    /// The service's `max_concurrent_requests` is reached: shed rather than queue.
    #[error("service {0} has too many requests in flight")]
    ServiceOverloaded(std::sync::Arc<str>),
    /// The listener is at its connection limit: answered without reading the request.
    #[error("the gateway is at its connection limit")]
    TooManyConnections,
    /// No such resource (the admin API's unknown endpoints).
    #[error("{0}")]
    NotFound(&'static str),
    /// A malformed request whose description is built at run time (an admin call's JSON).
    #[error("{0}")]
    InvalidRequest(String),
    /// A config handed to a reload was rejected; the previous one keeps serving.
    #[error("the new config was rejected; the previous config keeps serving")]
    ConfigRejected {
        /// The file read.
        file: String,
        /// Each error: `{path, message, line, column}`.
        errors: Vec<serde_json::Value>,
    },
    /// A reload failed for another reason than the config (e.g. the access log destination).
    #[error("{0}")]
    ReloadFailed(String),
    /// An admin operation failed inside the gateway (not because of the request): for example
    /// hashing a new password.
    #[error("{0}")]
    Internal(String),
    /// An admin request body with invalid fields; `errors` lists `{path, message}` like a
    /// rejected config.
    #[error("the request is invalid")]
    InvalidFields {
        /// Each problem, `{"path": ..., "message": ...}`.
        errors: Vec<serde_json::Value>,
    },
    /// An admin write that would take what belongs to another (a consumer name, a user name).
    #[error("{0}")]
    Conflict(String),
    /// The admin API has nothing by that name.
    #[error("{0}")]
    Missing(String),
    /// A shared store (the consumer store in Redis) is unreachable, so a write was not made.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The endpoint changes credentials, which the admin API only allows with `admin.token`
    /// set (even on loopback).
    #[error("{0}")]
    AdminTokenRequired(&'static str),
    /// A wasm filter answered the request itself, giving no body: the common JSON body with
    /// the filter's status, message (its details) and headers.
    #[error("{message}")]
    PluginReply {
        /// The filter's status.
        status: StatusCode,
        /// The filter's details, or a message naming it.
        message: String,
        /// Headers the filter added to its answer.
        headers: Vec<(http::HeaderName, HeaderValue)>,
    },
    /// A wasm filter failed (trapped, ran past its deadline or memory cap, closed the
    /// request) and the filter is `fail_closed`.
    #[error("wasm filter {plugin} failed: {message}")]
    PluginFailed {
        /// The filter's name.
        plugin: std::sync::Arc<str>,
        /// What happened (no request data).
        message: String,
    },
    /// The upstream's body is larger than a filter that asked to see it whole may buffer.
    #[error("the upstream's response body exceeds the {limit} bytes a filter may buffer")]
    ResponseTooLarge {
        /// The filter's `max_body_bytes`.
        limit: u64,
    },
}

impl From<crate::body::BodyError> for GatewayError {
    /// What the client is answered when its body fails this way.
    fn from(e: crate::body::BodyError) -> Self {
        use crate::body::BodyError;
        match e {
            BodyError::TooLarge(limit) => GatewayError::PayloadTooLarge { limit },
            BodyError::ClientIdle(idle) => GatewayError::RequestBodyTimeout(idle),
            BodyError::Filter { plugin, message } => GatewayError::PluginFailed { plugin, message },
            other => GatewayError::ClientBody(other.to_string()),
        }
    }
}

impl GatewayError {
    /// The error's row in the table: status, code, side, retryability, metric.
    pub fn kind(&self) -> Kind {
        use GatewayError::*;
        use Side::*;
        let (status, code, side) = match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", Client),
            NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route", Client),
            MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Client)
            }
            PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Client),
            UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "uri_too_long", Client),
            HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Client,
            ),
            MethodNotSupported(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_supported",
                Client,
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
            ClientBody(_) => (StatusCode::BAD_REQUEST, "bad_request_body", Client),
            RequestBodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_body_timeout", Client),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Gateway),
            TooManyConnections => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                Gateway,
            ),
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized", Client),
            Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", Client),
            InsufficientScope { .. } => (StatusCode::FORBIDDEN, "insufficient_scope", Client),
            RateLimited { status, .. } => (*status, "rate_limited", Client),
            InvalidBody { .. } => (StatusCode::BAD_REQUEST, "invalid_body", Client),
            RequestInvalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request", Client),
            UnknownOperation { .. } => (StatusCode::NOT_FOUND, "unknown_operation", Client),
            ResponseInvalid(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream_contract_violation",
                Upstream,
            ),
            AuthUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                Upstream,
            ),
            RateLimitUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                Gateway,
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
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found", Client),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", Client),
            ConfigRejected { .. } => (StatusCode::BAD_REQUEST, "config_invalid", Client),
            ReloadFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", Gateway),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", Gateway),
            InvalidFields { .. } => (StatusCode::BAD_REQUEST, "invalid_request", Client),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", Client),
            Missing(_) => (StatusCode::NOT_FOUND, "not_found", Client),
            StoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                Gateway,
            ),
            AdminTokenRequired(_) => (StatusCode::FORBIDDEN, "admin_token_required", Client),
            PluginReply { status, .. } if status.is_client_error() => {
                (*status, "refused_by_plugin", Client)
            }
            PluginReply { status, .. } => (*status, "plugin_reply", Gateway),
            PluginFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed", Gateway),
            ResponseTooLarge { .. } => (StatusCode::BAD_GATEWAY, "response_too_large", Upstream),
        };
        let retryable = match self {
            UpstreamConnect(_) | UpstreamConnectTimeout => Some(Failure::Connect),
            UpstreamTimeout(_) => Some(Failure::Timeout),
            UpstreamProtocol(_) => Some(Failure::Reset),
            _ => None,
        };
        let closes_connection = matches!(
            self,
            MethodNotSupported(_)
                | PayloadTooLarge { .. }
                | RequestBodyTimeout(_)
                | TooManyConnections
        );
        let denial = match self {
            Unauthorized {
                presented: true, ..
            } => Some(Denial::Auth("invalid_credentials")),
            Unauthorized {
                presented: false, ..
            } => Some(Denial::Auth("missing_credentials")),
            InsufficientScope { .. } => Some(Denial::Auth("insufficient_scope")),
            AuthUnavailable(_) => Some(Denial::Auth("unavailable")),
            Forbidden { by, .. } => Some(match by {
                Refuser::Acl => Denial::Auth("acl"),
                Refuser::IpFilter => Denial::Access("ip_filter"),
                Refuser::Cors => Denial::Access("cors"),
                Refuser::RateLimitKey => Denial::RateLimit("missing_key"),
            }),
            RateLimited {
                limit: Limit::Rate, ..
            } => Some(Denial::RateLimit("rate")),
            RateLimited {
                limit: Limit::Concurrency,
                ..
            } => Some(Denial::RateLimit("concurrency")),
            RateLimitUnavailable => Some(Denial::RateLimit("store_unavailable")),
            _ => None,
        };
        Kind {
            status,
            code,
            retryable,
            closes_connection,
            side,
            denial,
        }
    }

    /// The JSON error response for this error, in the listener's body type.
    pub fn to_response<B: From<Bytes>>(&self, request_id: Option<&HeaderValue>) -> Response<B> {
        self.render(request_id).map(B::from)
    }

    /// The error as a response with the common JSON body (`error`, `message`, `request_id`,
    /// and the list of problems where there is one) and the headers its kind calls for. Every
    /// listener's error answers are built here; each wraps the bytes in its own body type.
    pub fn render(&self, request_id: Option<&HeaderValue>) -> Response<Bytes> {
        let kind = self.kind();
        let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
        let message = self.to_string();
        let body = match self {
            GatewayError::InvalidBody { message, errors } => serde_json::json!(
                {"error": kind.code, "message": message, "errors": errors, "request_id": id}
            ),
            GatewayError::RequestInvalid { message, errors } => serde_json::json!(
                {"error": kind.code, "message": message, "errors": errors, "request_id": id}
            ),
            GatewayError::InvalidFields { errors } => serde_json::json!(
                {"error": kind.code, "message": message, "request_id": id, "errors": errors}
            ),
            GatewayError::ConfigRejected { file, errors } => serde_json::json!(
                {"error": kind.code, "message": message, "request_id": id, "file": file, "errors": errors}
            ),
            _ => serde_json::json!({"error": kind.code, "message": message, "request_id": id}),
        };
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        let mut resp = Response::new(Bytes::from(bytes));
        *resp.status_mut() = kind.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(v) = request_id {
            h.insert(X_REQUEST_ID, v.clone());
        }
        if kind.closes_connection {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match self {
            GatewayError::Unauthorized { challenges, .. } => {
                for c in challenges {
                    h.append(header::WWW_AUTHENTICATE, c.clone());
                }
            }
            GatewayError::InsufficientScope {
                challenge: Some(c), ..
            } => {
                h.insert(header::WWW_AUTHENTICATE, c.clone());
            }
            GatewayError::RateLimited {
                retry_after,
                headers,
                ..
            } => {
                if let Some(s) = retry_after {
                    h.insert(header::RETRY_AFTER, HeaderValue::from((*s).max(1)));
                }
                for (k, v) in headers {
                    h.insert(k.clone(), v.clone());
                }
            }
            GatewayError::RateLimitUnavailable
            | GatewayError::TooManyConnections
            | GatewayError::StoreUnavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::CircuitOpen { retry_after, .. } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after).max(1)),
                );
            }
            GatewayError::MethodNotAllowed { allow, .. } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    h.insert(header::ALLOW, v);
                }
            }
            GatewayError::PluginReply { headers, .. } => {
                for (k, v) in headers {
                    h.append(k.clone(), v.clone());
                }
            }
            _ => {}
        }
        resp
    }
}

impl GatewayError {
    /// The gRPC status code for this error: what a gRPC client should make of it.
    pub fn grpc_code(&self) -> u16 {
        match self.kind().status.as_u16() {
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
}

impl GatewayError {
    /// The whole HTTP/1.1 answer, head and JSON body, for a connection the gateway closes after
    /// it: used where no hyper response can be sent (a request hyper could not parse, a
    /// connection over the limit).
    pub fn to_http1_bytes(&self, request_id: &HeaderValue) -> Vec<u8> {
        let resp = self.render(Some(request_id));
        let status = resp.status();
        let mut out = Vec::with_capacity(256 + resp.body().len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in resp.headers() {
            if name == header::CONNECTION {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"connection: close\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(resp.body().len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(resp.body());
        out
    }
}
