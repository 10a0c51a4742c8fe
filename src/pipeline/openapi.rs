//! The `openapi` phase: the request is matched to its operation in the route's spec, checked
//! against it (400 with the list of problems), refused when the spec is the route's contract
//! and describes no such operation (404, 405), or answered from the spec (`mock`). Runs after
//! the rate limit and `request_termination`, before the cache, so a cached answer is never
//! served to a request the spec refuses.

use http::request::Parts;

use super::ctx::RequestCtx;
use super::Exit;
use crate::body::RequestBody;
use crate::config::plan::Route;
use crate::error::GatewayError;
use crate::policy::openapi::{Lookup, OperationRef};

/// Checks the request; the body to send on (read whole when it was checked).
pub(super) async fn run(
    cx: &mut RequestCtx<'_>,
    route: &Route,
    parts: &Parts,
    body: RequestBody,
) -> Result<RequestBody, Exit> {
    let Some(api) = &route.policies.openapi else {
        return Ok(body);
    };
    let path = parts.uri.path();
    let (index, vars) = match api.find(&parts.method, path) {
        Lookup::Found(index, vars) => (index, vars),
        Lookup::NoPath if api.strict || api.mock => {
            return Err(GatewayError::UnknownOperation {
                method: parts.method.clone(),
                path: path.to_string(),
            }
            .into())
        }
        Lookup::NoMethod(allow) if api.strict || api.mock => {
            return Err(GatewayError::MethodNotAllowed {
                method: parts.method.clone(),
                allow,
            }
            .into())
        }
        _ => return Ok(body),
    };
    let op = &api.operations[index];
    if let Some(log) = cx.log.as_deref_mut() {
        log.operation_id = Some(op.id.clone());
    }
    cx.operation = Some(OperationRef {
        index,
        of: api.operations.len(),
        id: op.id.clone(),
    });
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = api.check_request(op, parts, &vars, body).await?;
    if api.mock {
        return Err(Exit::Respond(api.mock_answer(op, &parts.headers)));
    }
    Ok(body)
}
