//! HTTP/2 limits for client connections (the `http2:` section): what keeps one abusive
//! connection from starving the others. Applied to hyper's HTTP/2 builder once per worker.
//!
//! What each limit answers:
//! - many concurrent streams: `max_concurrent_streams` (SETTINGS_MAX_CONCURRENT_STREAMS);
//! - huge header blocks and CONTINUATION floods: `limits.max_header_bytes` becomes
//!   SETTINGS_MAX_HEADER_LIST_SIZE, and h2 stops decoding (and closes the connection) once a
//!   header block, CONTINUATION frames included, goes over it;
//! - rapid reset (CVE-2023-44487): a client that opens and cancels streams faster than they are
//!   served gets a GOAWAY (ENHANCE_YOUR_CALM) after `max_pending_accept_reset_streams`;
//! - streams the client makes the server reset by protocol errors (CVE-2025-8671, "MadeYouReset"):
//!   `max_local_error_reset_streams`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// HTTP/2 limits on client connections.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp2 {
    /// Most streams (requests) open at once on one client connection.
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the gateway got to them; one more and the
    /// connection gets a GOAWAY (rapid reset protection).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway may reset because of the client's protocol errors before the
    /// connection gets a GOAWAY.
    pub max_local_error_reset_streams: usize,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

impl RawHttp2 {
    /// Config errors, as (key path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if self.max_concurrent_streams == 0 {
            errs.push((
                "http2.max_concurrent_streams".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if self.max_pending_accept_reset_streams == 0 {
            errs.push((
                "http2.max_pending_accept_reset_streams".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        errs
    }

    /// Applies the limits to a server connection builder.
    pub fn apply<E>(&self, h2: &mut hyper::server::conn::http2::Builder<E>) {
        h2.max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams);
    }
}
