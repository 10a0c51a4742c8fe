//! Traffic: `split` (weighted, canary) or `versioning` may send the request to another service
//! than the route's, and set response headers for the version chosen.

use http::request::Parts;
use http::uri::PathAndQuery;

use super::ctx::RequestCtx;
use crate::config::plan::Route;
use crate::error::GatewayError;

/// Chooses the service (routes with `split` or `versioning`).
pub(super) fn run<'a>(
    cx: &mut RequestCtx<'a>,
    route: &'a Route,
    parts: &Parts,
) -> Result<(), GatewayError> {
    // The upstream target takes the query as it is now: authentication may have removed an
    // API key from it.
    let mut target = upstream_path_and_query(cx.rewritten.take(), &parts.uri);
    let policies = &route.policies;
    if let Some(policy) = policies.split.as_ref().or(policies.versioning.as_ref()) {
        let (index, headers, strip) = policy.choose(parts, cx.identity.as_ref())?;
        cx.version_headers = headers;
        if strip {
            target = strip_first_segment(&target);
        }
        cx.set_service(&cx.plan.services[index]);
    }
    cx.upstream_target = Some(target);
    Ok(())
}

/// The upstream request target: the rewritten path (if any) with the request's current query.
/// Reuses the client's bytes when nothing was rewritten.
fn upstream_path_and_query(rewritten: Option<bytes::BytesMut>, uri: &http::Uri) -> PathAndQuery {
    use bytes::BufMut;
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(mut out) = rewritten else {
        return original;
    };
    if let Some(q) = original.query() {
        out.put_u8(b'?');
        out.put_slice(q.as_bytes());
    }
    PathAndQuery::from_maybe_shared(out.freeze()).unwrap_or(original)
}

/// `/v2/users?x=1` without its first segment: `/users?x=1` (path versioning).
fn strip_first_segment(target: &PathAndQuery) -> PathAndQuery {
    let path = target.path();
    let rest = path[1..].find('/').map_or("/", |i| &path[i + 1..]);
    let text = match target.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    PathAndQuery::try_from(text).unwrap_or_else(|_| target.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_follows_a_rewritten_path() {
        let uri: http::Uri = "/api/users/7?x=1".parse().unwrap();
        let rewritten = bytes::BytesMut::from(&b"/users/7"[..]);
        assert_eq!(
            upstream_path_and_query(Some(rewritten), &uri).as_str(),
            "/users/7?x=1"
        );
        assert_eq!(
            upstream_path_and_query(None, &uri).as_str(),
            "/api/users/7?x=1"
        );
    }

    #[test]
    fn path_versioning_strips_the_first_segment() {
        let t = PathAndQuery::from_static("/v2/users?x=1");
        assert_eq!(strip_first_segment(&t).as_str(), "/users?x=1");
        let t = PathAndQuery::from_static("/v2");
        assert_eq!(strip_first_segment(&t).as_str(), "/");
    }
}
