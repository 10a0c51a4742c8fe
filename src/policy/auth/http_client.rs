//! A small outbound HTTP client for the control plane of authentication (JWKS documents,
//! token introspection): bounded time, bounded body, per-worker connection reuse.
//!
//! Not used for proxied traffic (that is `proxy::client`).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    /// Status.
    pub status: StatusCode,
    /// Body (at most the caller's cap).
    pub body: Bytes,
}

thread_local! {
    // One pool per worker thread: connections stay on the runtime that opened them.
    static CLIENT: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
}

/// Sends `req` and reads the whole response, failing after `timeout` or when the body exceeds
/// `max_body` bytes. Errors are descriptions fit for logs (no credentials).
pub async fn fetch(
    req: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, String> {
    let url = req.uri().clone();
    let client = CLIENT.with(Client::clone);
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the body: {e}"))?
            .to_bytes();
        Ok(Fetched { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}
