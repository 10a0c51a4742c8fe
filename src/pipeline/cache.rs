//! The response cache: a fresh entry answers here; a miss goes on with a `Fill` that takes
//! the upstream's response (or serves a stale entry when the upstream fails).

use http::request::Parts;

use super::ctx::RequestCtx;
use super::Exit;
use crate::config::plan::Route;
use crate::policy::cache::Lookup;

/// Looks the request up (routes with `cache`).
pub(super) async fn run(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &mut Parts,
) -> Result<(), Exit> {
    let Some(policy) = &route.policies.cache else {
        return Ok(());
    };
    match policy.lookup(parts, cx.identity.as_ref()).await {
        Lookup::Respond(mut resp) => {
            // The answer ends the request here: its concurrency slot goes with it.
            if let Some(admitted) = cx.admitted.take() {
                for (k, v) in admitted.headers {
                    resp.headers_mut().insert(k, v);
                }
            }
            Err(Exit::Respond(resp))
        }
        Lookup::Forward(fill) => {
            cx.cache = Some(fill);
            Ok(())
        }
    }
}
