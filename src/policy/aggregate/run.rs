//! Running an aggregate: starting each call once the answers it reads are in, sending it with
//! its service's resilience, and merging the answers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{AggregatePolicy, Call, X_PORTICO_PARTIAL};
use crate::body::{GatewayBody, RequestBody};
use crate::error::GatewayError;
use crate::policy::transform::{CallAnswer, Facts, RequestData};
use crate::proxy::retry::{self, Forward, How};
use crate::telemetry::trace::Trace;
use crate::upstream::window::now_ns;
use crate::upstream::Service;

/// Where each call stands.
#[derive(Clone)]
enum State {
    /// Waiting for the calls it reads.
    Waiting,
    Running,
    Answered(CallAnswer),
    Failed(String),
}

/// A call ready to go: everything it needs, owned, so it can run as its own task.
struct Outgoing {
    service: Arc<Service>,
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    client_ip: IpAddr,
    timeout: Duration,
}

impl AggregatePolicy {
    /// Runs the calls (each as soon as the answers it reads are in) and merges the answers.
    /// `headers` are forwarded to each call (identity headers and the request id included; the
    /// gateway already removed hop-by-hop headers and credentials the auth policy consumed).
    pub async fn run(
        &self,
        services: &[Arc<Service>],
        headers: &HeaderMap,
        facts: &Facts<'_>,
        client_ip: IpAddr,
        deadline: Duration,
        trace: &Trace,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let end = Instant::now() + deadline;
        let mut forwarded = headers.clone();
        for h in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::HOST] {
            forwarded.remove(h);
        }
        let mut states = vec![State::Waiting; self.calls.len()];
        let mut set = tokio::task::JoinSet::new();
        let fan_out = async {
            loop {
                self.start_ready(&mut states, |i, states| {
                    let out =
                        self.outgoing(i, states, services, &forwarded, facts, client_ip, end)?;
                    // Each call is a span of its own in the request's trace.
                    let (trace, call) = (trace.clone(), Arc::clone(&self.calls[i].name));
                    set.spawn(async move { (i, out.send(&trace, &call).await) });
                    Ok(())
                });
                match set.join_next().await {
                    Some(Ok((i, result))) => {
                        states[i] = match result {
                            Ok(answer) => State::Answered(answer),
                            Err(e) => State::Failed(e),
                        }
                    }
                    // A call's task cannot panic short of a bug; its call stays unanswered.
                    Some(Err(_)) => {}
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout_at(end, fan_out).await;
        // Calls still running are aborted here, not left to finish unobserved.
        drop(set);
        self.merge(states, deadline)
    }

    /// Starts (with `spawn`) every waiting call whose dependencies have all answered, and
    /// fails every waiting call a failed dependency blocks, until nothing changes.
    fn start_ready(
        &self,
        states: &mut [State],
        mut spawn: impl FnMut(usize, &[State]) -> Result<(), String>,
    ) {
        let mut changed = true;
        while changed {
            changed = false;
            for (i, call) in self.calls.iter().enumerate() {
                if !matches!(states[i], State::Waiting) {
                    continue;
                }
                let failed = call
                    .deps
                    .iter()
                    .find(|d| matches!(states[**d], State::Failed(_)));
                states[i] = if let Some(d) = failed {
                    State::Failed(format!("not called: `{}` failed", self.calls[*d].name))
                } else if call
                    .deps
                    .iter()
                    .all(|d| matches!(states[*d], State::Answered(_)))
                {
                    match spawn(i, states) {
                        Ok(()) => State::Running,
                        Err(e) => State::Failed(e),
                    }
                } else {
                    continue;
                };
                changed = true;
            }
        }
    }

    /// Renders call `i` against the request and the answers so far.
    #[allow(clippy::too_many_arguments)]
    fn outgoing(
        &self,
        i: usize,
        states: &[State],
        services: &[Arc<Service>],
        forwarded: &HeaderMap,
        facts: &Facts<'_>,
        client_ip: IpAddr,
        end: Instant,
    ) -> Result<Outgoing, String> {
        let call: &Call = &self.calls[i];
        // Only the answers this call reads are copied out of `states`.
        let mut answers: Vec<Option<CallAnswer>> = vec![None; states.len()];
        for d in &call.deps {
            if let State::Answered(a) = &states[*d] {
                answers[*d] = Some(a.clone());
            }
        }
        let missing = std::iter::once(&call.path)
            .chain(call.headers.iter().map(|(_, t)| t))
            .find_map(|t| t.missing_call_value(&answers));
        if let Some(text) = missing {
            return Err(format!("not called: {text} has no value"));
        }
        let mut data = RequestData {
            headers: forwarded,
            facts,
            calls: &answers,
            encode_calls: true,
        };
        let path = call.path.render(&data);
        let path = PathAndQuery::try_from(path.as_str())
            .map_err(|_| format!("not called: invalid path `{path}`"))?;
        data.encode_calls = false;
        let mut headers = forwarded.clone();
        for (name, t) in &call.headers {
            let v = t.render(&data);
            let v = HeaderValue::from_str(&v)
                .map_err(|_| format!("not called: invalid value for header {name}"))?;
            headers.insert(name.clone(), v);
        }
        let left = end.saturating_duration_since(Instant::now());
        Ok(Outgoing {
            service: Arc::clone(&services[call.service]),
            method: call.method.clone(),
            path,
            headers,
            client_ip,
            timeout: call.timeout.map_or(left, |t| t.min(left)),
        })
    }

    /// The merged response, or a 502 naming the first required call that failed.
    fn merge(
        &self,
        states: Vec<State>,
        deadline: Duration,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let mut out = Map::new();
        let mut errors = Vec::new();
        for (call, state) in self.calls.iter().zip(states) {
            let result = match state {
                State::Answered(a) => Ok(a.body),
                State::Failed(e) => Err(e),
                State::Running => Err(format!("no answer within {deadline:?}")),
                State::Waiting => Err(format!(
                    "not called: the route's {deadline:?} ran out while it waited"
                )),
            };
            match result {
                Ok(mut v) => {
                    if let (false, Value::Object(m)) = (call.pick.is_empty(), &mut v) {
                        m.retain(|k, _| call.pick.contains(k));
                    }
                    match (call.merge, v) {
                        (true, Value::Object(m)) => out.extend(m),
                        (_, v) => {
                            out.insert(call.under.clone(), v);
                        }
                    }
                }
                Err(e) if call.required => {
                    return Err(GatewayError::UpstreamProtocol(format!(
                        "aggregate call `{}` failed: {e}",
                        call.name
                    )))
                }
                Err(e) => {
                    if !call.merge {
                        out.insert(call.under.clone(), Value::Null);
                    }
                    errors.push(serde_json::json!({"call": &*call.name, "error": e}));
                }
            }
        }
        let partial = !errors.is_empty();
        if partial {
            out.insert("errors".into(), Value::Array(errors));
        }
        let body = Bytes::from(serde_json::to_vec(&Value::Object(out)).unwrap_or_default());
        let mut resp = Response::new(GatewayBody::full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if partial {
            resp.headers_mut()
                .insert(X_PORTICO_PARTIAL, HeaderValue::from_static("true"));
        }
        Ok(resp)
    }
}

impl Outgoing {
    /// Sends the call through its service's breaker, concurrency cap and retries, and reads
    /// its JSON answer, all within the call's timeout.
    async fn send(self, trace: &Trace, call: &str) -> Result<CallAnswer, String> {
        let service = &*self.service;
        let name = &service.name;
        let permit = match &service.breaker {
            Some(b) => Some(b.admit(now_ns()).map_err(|wait| {
                format!(
                    "{name}: circuit breaker open (retry in {}s)",
                    wait.as_secs_f64().ceil() as u64
                )
            })?),
            None => None,
        };
        let _slot = match &service.max_concurrent {
            Some(limit) => Some(
                limit
                    .try_acquire()
                    .ok_or_else(|| format!("{name}: max_concurrent_requests reached"))?,
            ),
            None => None,
        };
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method;
        *req.headers_mut() = self.headers;
        let (parts, body) = req.into_parts();
        let timeout = self.timeout;
        let forward = Forward {
            service,
            how: How {
                name,
                retry: service.retry.as_deref(),
                timeout,
                preserve_host: false,
                deadline_header: None,
                max_body_bytes: 0,
                keep_raw_head: false,
            },
            client_ip: self.client_ip,
            client_host: None,
            new_path: self.path,
            trace,
            call: Some(call),
        };
        let work = async {
            let result = retry::forward(&forward, parts, body, None).await;
            if let Some(permit) = permit {
                retry::settle(permit, &result);
            }
            let retry::Answer { sent, in_flight } = result.map_err(|e| match e {
                GatewayError::UpstreamTimeout(_) => {
                    format!("{name} did not answer within {timeout:?}")
                }
                e => format!("{name}: {e}"),
            })?;
            let (head, body) = sent.response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| format!("{name}: {e}"))?
                .to_bytes();
            if let Some(p) = sent.pooled {
                p.release();
            }
            drop(in_flight);
            if !head.status.is_success() {
                return Err(format!("{name} answered {}", head.status.as_u16()));
            }
            let body = serde_json::from_slice::<Value>(&bytes)
                .map_err(|_| format!("{name} answered with a body that is not JSON"))?;
            Ok(CallAnswer {
                status: head.status,
                headers: head.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("{name} did not answer within {timeout:?}")),
        }
    }
}
