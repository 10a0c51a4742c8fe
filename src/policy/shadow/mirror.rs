//! Sends the copy of a request chosen by a `shadow` policy, in a task of its own: the real
//! request neither waits for it nor sees its failures, and its response is read to the end
//! (so the pooled connection is reused) and discarded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Version};
use http_body_util::BodyExt as _;

use super::{ShadowPolicy, ShadowSlot};
use crate::body::RequestBody;
use crate::error::GatewayError;
use crate::proxy::{client, retry};
use crate::upstream::Service;

/// Marks mirrored requests, so the shadow service can tell them apart.
pub const X_PORTICO_SHADOW: http::HeaderName = http::HeaderName::from_static("x-portico-shadow");

/// What the copy needs from the real request.
pub(crate) struct MirrorOf<'a> {
    pub parts: &'a Parts,
    pub client_ip: IpAddr,
    pub client_host: Option<&'a HeaderValue>,
    pub new_path: &'a PathAndQuery,
    pub preserve_host: bool,
    pub timeout: Duration,
}

/// Mirrors the request when the policy samples it and its body is small and of known length.
/// Returns the body to send to the real upstream (buffered when it was copied).
pub(crate) async fn maybe_mirror(
    policy: &Arc<ShadowPolicy>,
    service: &Arc<Service>,
    copy: MirrorOf<'_>,
    body: RequestBody,
) -> Result<RequestBody, GatewayError> {
    use http_body::Body as _;
    let fits = body
        .size_hint()
        .exact()
        .is_some_and(|len| len <= policy.max_body_bytes);
    if !fits {
        return Ok(body);
    }
    let Some(slot) = policy.sample() else {
        return Ok(body);
    };
    let bytes = crate::body::read_whole(body, u64::MAX).await?;
    let mut req = Request::new(RequestBody::full(bytes.clone()));
    *req.method_mut() = copy.parts.method.clone();
    *req.headers_mut() = copy.parts.headers.clone();
    *req.version_mut() = Version::HTTP_11;
    let (mut parts, b) = req.into_parts();
    parts
        .headers
        .insert(X_PORTICO_SHADOW, HeaderValue::from_static("1"));
    let service = Arc::clone(service);
    let client_host = copy.client_host.cloned();
    let new_path = copy.new_path.clone();
    let (client_ip, preserve_host, timeout) = (copy.client_ip, copy.preserve_host, copy.timeout);
    tokio::spawn(async move {
        send(
            slot,
            &service,
            parts,
            b,
            client_ip,
            client_host,
            new_path,
            preserve_host,
            timeout,
        )
        .await
    });
    Ok(RequestBody::full(bytes))
}

#[allow(clippy::too_many_arguments)]
async fn send(
    _slot: ShadowSlot,
    service: &Service,
    mut parts: Parts,
    body: RequestBody,
    client_ip: IpAddr,
    client_host: Option<HeaderValue>,
    new_path: PathAndQuery,
    preserve_host: bool,
    timeout: Duration,
) {
    let Some(index) = service.pick(&parts.headers, client_ip, None) else {
        return;
    };
    let target = &service.targets[index];
    if retry::prepare(
        &mut parts,
        target,
        preserve_host,
        client_host.as_ref(),
        &new_path,
    )
    .is_err()
    {
        return;
    }
    let req = Request::from_parts(parts, body);
    let Ok(sent) = client::send(service, target, req, client::Attempt::now(timeout)).await else {
        return;
    };
    let drained = tokio::time::timeout(timeout, sent.response.into_body().collect()).await;
    if let (Ok(Ok(_)), Some(pooled)) = (drained, sent.pooled) {
        pooled.release();
    }
}
