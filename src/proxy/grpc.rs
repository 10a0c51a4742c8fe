//! gRPC awareness: telling a gRPC call from other HTTP/2 requests, the gRPC status of a
//! response (for the access log), and answering gateway errors the way gRPC clients read
//! them: a trailers-only response with `grpc-status` and `grpc-message`, not a JSON body.
//!
//! Proxying itself needs nothing special: HTTP/2 streams, bodies and trailers pass through
//! frame by frame. Which gRPC code an error becomes is decided in `error.rs`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;

use crate::body::GatewayBody;
use crate::error::GatewayError;

/// `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether the request is a gRPC call (`content-type: application/grpc`, `+proto`, `+json`...).
/// Only asked of HTTP/2 requests, so HTTP/1.1 traffic never pays for the lookup.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in `headers` (response headers of a trailers-only answer, or trailers).
pub fn status_of(headers: &HeaderMap) -> Option<u16> {
    std::str::from_utf8(headers.get(GRPC_STATUS)?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): everything outside printable
/// ASCII, and `%` itself.
pub fn encode_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("gateway error"))
}

/// The answer to a gRPC call: HTTP 200, trailers-only, with `grpc-status` and a
/// `grpc-message` naming the stable error code, so gRPC clients see a status instead of
/// failing to parse a JSON body.
pub fn error_response(error: &GatewayError) -> Response<GatewayBody> {
    let code = error.kind().code;
    let mut resp = Response::new(GatewayBody::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(error.grpc_code()));
    h.insert(GRPC_MESSAGE, encode_message(&format!("{code}: {error}")));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route: 100%"), "no route: 100%25");
        assert_eq!(encode_message("é\n"), "%C3%A9%0A");
    }
}
