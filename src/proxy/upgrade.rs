//! `Upgrade` requests (WebSocket and friends): forward the handshake on a dedicated upstream
//! connection, then copy bytes both ways until either side closes.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{Epilogue, GatewayBody, RequestBody};
use super::{client, headers};
use crate::error::GatewayError;
use crate::upstream::{InFlight, Service, Target};

/// Sends the upgrade handshake upstream. On `101` the two upgraded connections are joined in a
/// background task; any other answer is passed back as a normal response.
pub async fn proxy_upgrade(
    service: &Service,
    target: &Arc<Target>,
    mut req: Request<RequestBody>,
    client_upgrade: OnUpgrade,
    timeout: Duration,
) -> Result<Response<GatewayBody>, GatewayError> {
    // The client's `Connection` header was hop-by-hop and has been stripped, but `Upgrade` only
    // means something next to `Connection: upgrade` (RFC 9110 section 7.8): without it the
    // upstream ignores the upgrade or, like most WebSocket servers, refuses the handshake.
    req.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    let in_flight = InFlight::start(target);
    let mut resp = client::send_upgradable(service, target, req, timeout).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let body = GatewayBody::upstream(
            incoming,
            service.timeouts.idle,
            Epilogue {
                in_flight: Some(in_flight),
                ..Epilogue::default()
            },
        );
        return Ok(Response::from_parts(parts, body));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
    let (mut parts, _) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    parts.headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    Ok(Response::from_parts(parts, GatewayBody::empty()))
}
