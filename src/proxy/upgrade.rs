//! `Upgrade` requests (WebSocket and friends): forward the handshake on a dedicated upstream
//! connection, then copy bytes both ways until either side closes.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::exchange::Exchange;
use super::{client, headers};
use crate::body::{GatewayBody, RequestBody};
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
    let req_upgrade = req.headers().get(http::header::UPGRADE).cloned();
    let in_flight = InFlight::start(target);
    let mut resp = client::send_upgradable(service, target, req, timeout).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let body = Exchange {
            in_flight: Some(in_flight),
            ..Exchange::default()
        }
        .owed_by(GatewayBody::upstream(
            incoming.into(),
            service.timeouts.idle,
        ));
        return Ok(Response::from_parts(parts, body));
    }
    if !switched_to_offered(&req_upgrade, resp.headers()) {
        return Err(GatewayError::UpstreamProtocol(
            "the upstream switched to a protocol the client did not ask for".into(),
        ));
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

/// Whether the upstream's `101` names one of the protocols the gateway forwarded (RFC 9110
/// §7.8: a server switches only to a protocol the client listed).
fn switched_to_offered(offered: &Option<http::HeaderValue>, answer: &http::HeaderMap) -> bool {
    let (Some(offered), Some(chosen)) = (offered, answer.get(http::header::UPGRADE)) else {
        return false;
    };
    let (Ok(offered), Ok(chosen)) = (offered.to_str(), chosen.to_str()) else {
        return false;
    };
    let name = |t: &str| {
        t.trim()
            .split('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    chosen
        .split(',')
        .all(|c| offered.split(',').any(|o| name(o) == name(c)))
}
