//! Preparation of the upstream request: protocol upgrades allowed or stripped, hop-by-hop
//! headers removed, forwarding headers added, the consumer's identity headers set, the body
//! wrapped (size limit, idle timeout) and, last, the route's transforms, so they can rename or
//! remove what the gateway added.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Version;

use super::ctx::RequestCtx;
use crate::body::RequestBody;
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::proxy::headers::{self, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};

/// Turns the client's request into the upstream's; the body to send.
pub(super) async fn run(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut Parts,
    body: RequestBody,
) -> Result<RequestBody, GatewayError> {
    let upgrade = parts.version == Version::HTTP_11
        && headers::wants_upgrade(&parts.headers)
        && headers::allow_upgrades(&mut parts.headers, &route.upgrades);
    if upgrade {
        cx.upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    }
    // The target's authority (HTTP/2, HTTP/1.1 absolute-form) wins over `Host` (RFC 9112
    // §3.2.2), as it did for routing: the two are never mixed.
    cx.client_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => headers::first(&parts.headers, &header::HOST).cloned(),
    };
    // gRPC servers may insist on `te: trailers` (the one TE value HTTP/2 allows): keep it.
    let te_trailers = parts.version == Version::HTTP_2
        && parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let h = &mut parts.headers;
    if te_trailers {
        // Kept for HTTP/2 targets only (see `retry::prepare`).
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    add_forwarding(cx, h);
    h.insert(X_REQUEST_ID, cx.request_id.clone());
    if let Some(identity) = &cx.identity {
        identity.apply(h);
    }
    let Some(transform) = &route.policies.transform else {
        return Ok(body);
    };
    let Some(original) = cx.upstream_target.take() else {
        return Ok(body);
    };
    let facts = cx.facts(original.query());
    let (target, rendered) = transform.apply_request(parts, original.clone(), &facts);
    let body = transform.request_body(parts, body, &facts).await?;
    cx.upstream_target = Some(target);
    cx.response_headers = rendered;
    Ok(body)
}

/// `X-Forwarded-*`, `Forwarded` and `Via`, as the plan's `forwarding` says.
fn add_forwarding(cx: &RequestCtx<'_>, h: &mut http::HeaderMap) {
    let (plan, conn) = (cx.plan, cx.conn);
    if plan.forwarding.x_forwarded {
        headers::append_forwarded_for(h, &conn.peer_header);
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls.is_some() { "https" } else { "http" }),
        );
        if let Some(v) = &cx.client_host {
            h.insert(X_FORWARDED_HOST, v.clone());
        }
    }
    if plan.forwarding.forwarded {
        let host = cx.client_host.as_ref();
        if let Some(v) = forwarded_value(conn.peer.ip(), host, conn.tls.is_some()) {
            h.append(header::FORWARDED, v);
        }
    }
    if let Some(via) = &plan.forwarding.via {
        h.append(header::VIA, via.clone());
    }
}

/// RFC 7239 `Forwarded: for=...;host=...;proto=http` (or `https`).
fn forwarded_value(peer: IpAddr, host: Option<&HeaderValue>, https: bool) -> Option<HeaderValue> {
    let mut v = match peer {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    };
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        v.push_str(";host=\"");
        // The Host comes from the client: escape `"` and `\` (RFC 9110 quoted-pair) so it cannot
        // close the quoted-string and append parameters of its own (`for=` spoofing).
        for c in h.chars() {
            if c == '"' || c == '\\' {
                v.push('\\');
            }
            v.push(c);
        }
        v.push('"');
    }
    v.push_str(if https { ";proto=https" } else { ";proto=http" });
    HeaderValue::from_str(&v).ok()
}
