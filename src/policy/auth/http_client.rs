//! A small outbound HTTP client for the control plane of authentication (JWKS documents,
//! token introspection): bounded time, bounded body, per-worker connection reuse.
//!
//! Speaks http:// and https:// (rustls with the `ring` provider, Mozilla's root certificates
//! from `webpki-roots`; the system trust store is not consulted).
//!
//! Not used for proxied traffic (that is `proxy::client`).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
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

type Connector = HttpsConnector<HttpConnector>;

thread_local! {
    // One pool per worker thread: connections stay on the runtime that opened them.
    static CLIENT: Client<Connector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector());
}

fn connector() -> Connector {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    // The ring provider supports rustls' default protocol versions, so this cannot fail; the
    // provider is explicit so no process-wide default has to be installed.
    let builder = builder
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("the ring provider supports TLS 1.2 and 1.3");
    builder.https_or_http().enable_http1().build()
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
