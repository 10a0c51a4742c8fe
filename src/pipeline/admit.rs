//! Admission: what must hold before a request is worth anything. Framing, Host and path
//! checks, path normalisation, routing, the route's own gates (escaped slashes, HTTPS redirect,
//! IP filter, CORS preflight, body size). Nothing here awaits.

use std::borrow::Cow;

use crate::body::ClientBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};

use super::ctx::{request_host, RequestCtx};
use super::Exit;
use crate::body::GatewayBody;
use crate::config::plan::{Rewrite, Route, TemplatePart};
use crate::config::Plan;
use crate::error::GatewayError;
use crate::policy::cors;
use crate::router::{normalize, normalize_host, Match};

/// Checks, normalises and routes the request; the route it matched, or the answer.
pub(super) fn run<'a>(
    cx: &mut RequestCtx<'a>,
    req: &mut Request<ClientBody>,
) -> Result<&'a Route, Exit> {
    let plan = cx.plan;
    check_request(plan, req)?;
    if let Cow::Owned(path) = normalize::normalize(req.uri().path(), &plan.paths)
        .map_err(|e| GatewayError::BadRequest(e.message()))?
    {
        set_path(req.uri_mut(), path);
    }
    let host = match request_host(req) {
        Some(h) => normalize_host(h),
        None => "".into(),
    };
    let key = normalize::routing_key(req.uri().path());
    let found = match find(plan, &host, &key, req) {
        Match::Found(found) => found,
        Match::MethodNotAllowed(allow) => {
            let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
            return Err(GatewayError::MethodNotAllowed {
                method: req.method().clone(),
                allow: allow.join(", "),
            }
            .into());
        }
        Match::NotFound => {
            return Err(GatewayError::NoRoute {
                method: req.method().clone(),
                path: key.chars().take(200).collect(),
            }
            .into())
        }
    };
    cx.route = Some(found.route);
    let route = &plan.routes[found.route];
    if let Some(log) = cx.log.as_deref_mut() {
        log.route = Some(std::sync::Arc::clone(&route.name));
    }
    if let Some(span) = cx.span.as_deref_mut() {
        span.route = Some(std::sync::Arc::clone(&route.name));
    }
    cx.set_service(&plan.services[route.service]);
    // The rewritten path needs the route's captures, which borrow the routing key.
    cx.rewritten = rewrite_target_path(route, &key, found.matched_len, &found.params);
    cx.captures = transform_captures(route, &found.params);
    gates(cx, route, req)?;
    Ok(route)
}

/// The route for `host` and `path`. A CORS preflight is routed by the method it asks about,
/// so a route need not list OPTIONS to have its preflights answered.
fn find<'r, 'k>(
    plan: &'r Plan,
    host: &str,
    path: &'k str,
    req: &Request<ClientBody>,
) -> Match<'r, 'k> {
    let found = plan.router.find(host, path, req.method(), req.headers());
    if let Match::MethodNotAllowed(_) = found {
        if let Some(asked) = cors::preflight_method(req) {
            if let Match::Found(f) = plan.router.find(host, path, &asked, req.headers()) {
                if plan.routes[f.route].policies.cors.is_some() {
                    return Match::Found(f);
                }
            }
        }
    }
    found
}

/// The matched route's own gates, before anything is spent on the request.
fn gates(cx: &mut RequestCtx<'_>, route: &Route, req: &Request<ClientBody>) -> Result<(), Exit> {
    if route.escaped_slashes == normalize::EscapedSlashes::Reject
        && normalize::has_escaped_slash(req.uri().path())
    {
        return Err(GatewayError::BadRequest(
            "the path contains an encoded slash (%2F or %5C), which this route does not accept",
        )
        .into());
    }
    if route.https_redirect && cx.conn.tls.is_none() {
        let port = cx.plan.tls.as_ref().map_or(443, |t| t.https_port);
        return Err(Exit::Respond(https_redirect(req, port)?));
    }
    if let Some(filter) = &route.policies.ip_filter {
        filter.check(cx.client_ip)?;
    }
    if let Some(cors) = &route.policies.cors {
        if cors::preflight_method(req).is_some() {
            return Err(Exit::Respond(cors.preflight(req)?));
        }
    }
    // The declared length, read once on arrival (0 when absent).
    if cx.request_bytes > route.max_body_bytes {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_body_bytes,
        }
        .into());
    }
    Ok(())
}

/// The 308 answer for `req`: same host (its port replaced), path and query, on `https://`.
/// Without a Host (HTTP/1.0) there is nowhere to send the client: 400.
pub fn https_redirect<B>(
    req: &Request<B>,
    port: u16,
) -> Result<Response<GatewayBody>, GatewayError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return Err(GatewayError::BadRequest(
            "a Host header is required to redirect to https",
        ));
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{}{path}", host.host())
    } else {
        format!("https://{}:{port}{path}", host.host())
    };
    let mut resp = Response::new(GatewayBody::full(Bytes::new()));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Rejects what a gateway must never pass on, before any routing.
fn check_request(plan: &Plan, req: &Request<ClientBody>) -> Result<(), GatewayError> {
    use hyper::body::Body as _;
    let limits = &plan.limits;
    if req.method() == Method::CONNECT {
        return Err(GatewayError::MethodNotSupported(Method::CONNECT));
    }
    // hyper frames a request by its final transfer coding when that is `chunked` and ignores
    // the others; upstream we re-frame the body as plain chunked, so any other coding
    // (`gzip, chunked`) or a doubled `chunked` would be silently dropped. Only a lone `chunked`
    // is passed on. Bodies of known length (no Transfer-Encoding) skip the header lookup.
    if req.body().size_hint().exact().is_none() && !is_plain_chunked(req.headers()) {
        return Err(GatewayError::BadRequest(
            "unsupported Transfer-Encoding: only a single `chunked` is accepted",
        ));
    }
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    check_host(req)?;
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest(
            "the request target must be an absolute path",
        ));
    }
    if has_dot_segment(path) {
        return Err(GatewayError::BadRequest(
            "the request path contains `.` or `..` segments",
        ));
    }
    Ok(())
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and a valid one; HTTP/2's
/// `:authority` and `Host` name the same thing (RFC 9113 §8.3.1). Anything else is a 400:
/// routing on one of two hosts, or forwarding a malformed one, lets a client pick what the
/// gateway and the upstream each believe.
fn check_host(req: &Request<ClientBody>) -> Result<(), GatewayError> {
    let (host, repeated) = crate::proxy::headers::first_and_repeated(req.headers(), &header::HOST);
    if repeated {
        return Err(GatewayError::BadRequest(
            "the request has more than one Host header",
        ));
    }
    match host {
        None if req.version() == Version::HTTP_11 => Err(GatewayError::BadRequest(
            "an HTTP/1.1 request must carry a Host header",
        )),
        None => Ok(()),
        Some(h) if !valid_authority(h.as_bytes()) => Err(GatewayError::BadRequest(
            "the Host header is not a valid host[:port]",
        )),
        Some(h) => match req.uri().authority() {
            // HTTP/1.1 absolute-form: the target's authority is the one used and forwarded
            // (RFC 9112 §3.2.2); Host is only checked for syntax.
            Some(a)
                if req.version() == Version::HTTP_2
                    && !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) =>
            {
                Err(GatewayError::BadRequest(
                    "the Host header and :authority name different hosts",
                ))
            }
            _ => Ok(()),
        },
    }
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2): a registered name (unreserved, sub-delims and
/// percent-escapes) or a bracketed IP literal, then an optional numeric port. No userinfo, no
/// whitespace. An empty value is allowed, as RFC 9112 §3.2 says for a target without authority.
fn valid_authority(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &value[end + 1..] {
            [] => (&value[..0], None),
            [b':', port @ ..] => (&value[..0], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    // A byte class as a match, not a search of a list per byte: this runs on every request.
    let host_ok = host.iter().all(|&b| {
        matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b'%')
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// True when the request carries no `Transfer-Encoding`, or exactly one saying `chunked`.
fn is_plain_chunked(headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// True when a path segment is `.` or `..`, written plainly or percent-encoded. Such paths could
/// slip past a prefix route (`/public/../admin`), so they are refused rather than normalised.
fn has_dot_segment(path: &str) -> bool {
    // Cheap pre-check: most paths have no `.` and no `%` at all.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|seg| {
        if seg.len() > 6 {
            return false;
        }
        let rest = seg.as_bytes();
        let mut dots = 0;
        let mut i = 0;
        while i < rest.len() {
            if rest[i] == b'.' {
                i += 1;
            } else if rest[i..].len() >= 3
                && rest[i] == b'%'
                && rest[i + 1] == b'2'
                && rest[i + 2].eq_ignore_ascii_case(&b'e')
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

/// Replaces the path of `uri` with the normalised `path`, keeping its query, scheme and
/// authority.
fn set_path(uri: &mut Uri, path: String) {
    let mut target = path;
    if let Some(q) = uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let Ok(pq) = PathAndQuery::try_from(target) else {
        return;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

/// The route captures a transform's templates read; empty (no allocation) otherwise.
fn transform_captures(
    route: &Route,
    params: &matchit::Params<'_, '_>,
) -> Vec<(Box<str>, Box<str>)> {
    match &route.policies.transform {
        Some(t) if t.needs_captures() => params.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        _ if route.policies.aggregate.is_some() => {
            params.iter().map(|(k, v)| (k.into(), v.into())).collect()
        }
        _ => Vec::new(),
    }
}

/// The rewritten path (no query), or `None` when the route does not rewrite.
fn rewrite_target_path(
    route: &Route,
    path: &str,
    matched_len: usize,
    params: &matchit::Params<'_, '_>,
) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(path.len() + 32);
    match &route.rewrite {
        Rewrite::None => return None,
        Rewrite::StripPrefix(prefix) => {
            let rest = if prefix == "/" {
                path
            } else {
                match path.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                    _ => path,
                }
            };
            if !rest.starts_with('/') {
                out.put_u8(b'/');
            }
            out.put_slice(rest.as_bytes());
        }
        Rewrite::ReplacePrefix(replacement) => {
            let rest = &path[matched_len.min(path.len())..];
            let base = if replacement == "/" && rest.starts_with('/') {
                ""
            } else {
                replacement.as_str()
            };
            out.put_slice(base.as_bytes());
            if rest.is_empty() && base.is_empty() {
                out.put_u8(b'/');
            }
            out.put_slice(rest.as_bytes());
        }
        Rewrite::Template(parts) => {
            for part in parts {
                match part {
                    TemplatePart::Literal(s) => out.put_slice(s.as_bytes()),
                    TemplatePart::Capture(name) => {
                        out.put_slice(params.get(name).unwrap_or("").as_bytes())
                    }
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PathSpec;
    use std::time::Duration;

    fn route(rewrite: Rewrite) -> Route {
        Route {
            name: "r".into(),
            service: 0,
            path: PathSpec::Prefix("/api".into()),
            rewrite,
            preserve_host: false,
            upgrades: Box::default(),
            escaped_slashes: crate::router::normalize::EscapedSlashes::Reject,
            https_redirect: false,
            max_body_bytes: 0,
            timeout: Duration::from_secs(1),
            policies: Default::default(),
            resilience: Default::default(),
            metrics: crate::telemetry::metrics::RouteMetrics::detached(),
        }
    }

    fn rewrite_path(
        route: &Route,
        path: &str,
        matched_len: usize,
        params: &matchit::Params<'_, '_>,
    ) -> Option<String> {
        rewrite_target_path(route, path, matched_len, params)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn prefix_rewrites() {
        let none = matchit::Params::new();
        let r = route(Rewrite::StripPrefix("/api".into()));
        assert_eq!(
            rewrite_path(&r, "/api/users/7", 4, &none).unwrap(),
            "/users/7"
        );
        let r = route(Rewrite::ReplacePrefix("/internal/v2".into()));
        assert_eq!(
            rewrite_path(&r, "/api/users/7", 4, &none).unwrap(),
            "/internal/v2/users/7"
        );
        let r = route(Rewrite::StripPrefix("/api".into()));
        assert_eq!(rewrite_path(&r, "/api", 4, &none).unwrap(), "/");
        let r = route(Rewrite::None);
        assert_eq!(rewrite_path(&r, "/api/users/7", 4, &none), None);
    }

    #[test]
    fn template_rewrite_uses_captures() {
        let mut router = matchit::Router::new();
        router.insert("/users/{id}", ()).unwrap();
        let m = router.at("/users/42").unwrap();
        let r = route(Rewrite::Template(vec![
            TemplatePart::Literal("/v2/people/".into()),
            TemplatePart::Capture("id".into()),
        ]));
        assert_eq!(
            rewrite_path(&r, "/users/42", 9, &m.params).unwrap(),
            "/v2/people/42"
        );
    }

    #[test]
    fn dot_segments_are_detected_plain_and_encoded() {
        assert!(has_dot_segment("/a/../b"));
        assert!(has_dot_segment("/a/%2e%2E/b"));
        assert!(has_dot_segment("/a/."));
        assert!(!has_dot_segment("/a/..b/c.d"));
    }
}
