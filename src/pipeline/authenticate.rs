//! Authentication and authorization: identity headers the client may not set are removed,
//! the gateway's own (a verified client certificate) added, then the route's `auth` policy
//! names the consumer or refuses.

use http::request::Parts;

use super::ctx::RequestCtx;
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::policy::auth;

/// Strips client-supplied identity, then authenticates (routes with `auth`).
pub(super) async fn run(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut Parts,
) -> Result<(), GatewayError> {
    let plan = cx.plan;
    auth::strip_identity_headers(&mut parts.headers, &plan.identity_headers);
    if let Some(name) = plan.tls.as_ref().and_then(|t| t.forward_header.as_ref()) {
        // Only the gateway vouches for a client certificate: the client's own header goes.
        parts.headers.remove(name);
        if let Some(v) = cx.conn.tls.as_ref().and_then(|t| t.forward_value.clone()) {
            parts.headers.insert(name, v);
        }
    }
    // Decided now, applied to the response: the request's headers are gone by then.
    cx.cors_origin = route
        .policies
        .cors
        .as_ref()
        .map(|c| c.allowed_origin(&parts.headers));
    let Some(policy) = &route.policies.auth else {
        return Ok(());
    };
    let cert = cx.conn.tls.as_ref().and_then(|t| t.client_cert.as_ref());
    let identity = policy.authenticate(parts, cert).await?;
    if let Some(log) = cx.log.as_deref_mut() {
        log.consumer = identity.name.clone();
    }
    cx.identity = Some(identity);
    Ok(())
}
