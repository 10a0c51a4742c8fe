//! One request's passage through one filter: its context in the worker's instance, the
//! request and response phases (each may pause and be resumed by an HTTP call's answer or a
//! timer), the bodies buffered only while the filter asks for them, and the context's end.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{request, response, Request};
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::abi;
use super::vm::{
    Action, CallAnswer, Facts, Failure, LocalReply, OutCall, RequestHead, ResponseHead,
    StreamCallback, VmCell,
};
use crate::body::{BodyError, RequestBody};
use crate::proxy::retry::{self, Forward, How};
use crate::telemetry::trace::Trace;
use crate::upstream::Service;

/// How a phase ended.
pub enum Verdict {
    /// The request (or response) goes on.
    Continue,
    /// The filter answered instead.
    Reply(LocalReply),
    /// The filter failed (trap, deadline, memory, closed the stream, paused too long).
    Fail(String),
}

/// A body after the filter saw what it asked to see.
pub enum Passed<B> {
    /// Untouched: the filter has no body callback, or there was no body.
    Untouched(B),
    /// Read whole (and perhaps rewritten).
    Whole(Bytes),
    /// The part read before the filter let it go (perhaps rewritten), then the rest unread.
    Prefixed(Bytes, B),
}

/// Why a body phase did not end with a body.
pub enum BodyStop {
    /// The filter answered, failed, or the body could not be read.
    Verdict(Verdict),
    /// More than the filter's `max_body_bytes` arrived while it asked to see all of it.
    TooLarge(u64),
    /// The body broke off.
    Broken(BodyError),
}

/// One request's context in one filter's instance; ended (`on_done`, `on_log`, `on_delete`)
/// when dropped.
pub struct Stream {
    cell: Arc<VmCell>,
    id: u32,
}

impl Stream {
    /// Opens a context for a request in the worker's instance of the filter.
    pub fn open(
        cell: Arc<VmCell>,
        facts: Facts,
        services: &[Arc<Service>],
    ) -> Result<Self, Failure> {
        let id = {
            let mut vm = cell.lock();
            vm.refresh_targets(services);
            let opened = vm.open(facts);
            vm.after(&cell);
            opened?
        };
        Ok(Self { cell, id })
    }

    /// Whether the filter has this callback.
    fn has(&self, which: StreamCallback) -> bool {
        self.cell.lock().has(which)
    }

    /// Calls a stream callback and leaves its follow-up work to run.
    fn call(
        &self,
        which: StreamCallback,
        size: usize,
        end_of_stream: bool,
    ) -> Result<Action, Failure> {
        let mut vm = self.cell.lock();
        let result = vm.stream_call(which, self.id, size, end_of_stream);
        vm.after(&self.cell);
        result
    }

    /// What the request should do now: answered, failed, resumed, or still paused.
    fn state(&self, action: Action) -> Option<Verdict> {
        let mut vm = self.cell.lock();
        let broken = vm.broken;
        let Some(s) = vm.stream(self.id) else {
            return Some(Verdict::Fail("the filter's instance was replaced".into()));
        };
        if let Some(reply) = s.local.take() {
            return Some(Verdict::Reply(reply));
        }
        if let Some(failure) = s.failure.take() {
            return Some(Verdict::Fail(failure));
        }
        if action == Action::Continue || s.resumed {
            return Some(Verdict::Continue);
        }
        if broken {
            return Some(Verdict::Fail("the filter's instance failed".into()));
        }
        None
    }

    /// Waits while the filter keeps the request paused (for an HTTP call or a timer).
    async fn settle(&self, first: Result<Action, Failure>, deadline: Instant) -> Verdict {
        let action = match first {
            Ok(a) => a,
            Err(Failure(message)) => return Verdict::Fail(message),
        };
        if let Some(v) = self.state(action) {
            return v;
        }
        // Paused: from now on host calls that resume or answer it wake it. Made, and the state
        // looked at again, under the instance's lock, so no wake-up falls between the two.
        let wake = {
            let mut vm = self.cell.lock();
            match vm.stream(self.id) {
                Some(s) => Arc::clone(s.wake.get_or_insert_with(|| Arc::new(Notify::new()))),
                None => return Verdict::Fail("the filter's instance was replaced".into()),
            }
        };
        loop {
            if let Some(v) = self.state(action) {
                return v;
            }
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                return Verdict::Fail("the filter kept the request paused past its timeout".into());
            }
        }
    }

    /// `on_request_headers`, with the request head lent to the filter (pseudo-headers
    /// included) and taken back with its edits; waits while the filter pauses, until
    /// `deadline`.
    pub async fn request_headers(
        &self,
        parts: &mut request::Parts,
        end_of_stream: bool,
        deadline: Instant,
    ) -> Verdict {
        let framing = Framing::of(&parts.headers);
        let first = {
            let mut vm = self.cell.lock();
            if !vm.has(StreamCallback::RequestHeaders) {
                return Verdict::Continue;
            }
            let authority = match parts.uri.authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => parts.headers.get(header::HOST).cloned(),
            };
            let head = RequestHead {
                headers: std::mem::take(&mut parts.headers),
                method: parts.method.clone(),
                path: parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
                authority: authority.unwrap_or_else(|| HeaderValue::from_static("")),
                scheme: "http",
            };
            let count = head.headers.len() + 4;
            if let Some(s) = vm.stream(self.id) {
                s.request = Some(head);
            }
            let first = vm.stream_call(
                StreamCallback::RequestHeaders,
                self.id,
                count,
                end_of_stream,
            );
            vm.after(&self.cell);
            // The common case, a filter that lets the request go on, is settled under the same
            // lock: the head comes back and nothing waits.
            if let (Ok(Action::Continue), Some(s)) = (&first, vm.stream(self.id)) {
                if s.local.is_none() && s.failure.is_none() {
                    if let Some(head) = s.request.take() {
                        apply_request(parts, head);
                    }
                    drop(vm);
                    framing.restore(&mut parts.headers);
                    return Verdict::Continue;
                }
            }
            first
        };
        let verdict = self.settle(first, deadline).await;
        let head = self
            .cell
            .lock()
            .stream(self.id)
            .and_then(|s| s.request.take());
        if let Some(head) = head {
            apply_request(parts, head);
        }
        framing.restore(&mut parts.headers);
        verdict
    }

    /// `on_response_headers`, with the response head lent to the filter.
    pub async fn response_headers(
        &self,
        parts: &mut response::Parts,
        end_of_stream: bool,
        upstream: Option<HeaderValue>,
        deadline: Instant,
    ) -> Verdict {
        let framing = Framing::of(&parts.headers);
        let head = ResponseHead {
            headers: std::mem::take(&mut parts.headers),
            status: parts.status.as_u16(),
        };
        let count = head.headers.len() + 1;
        {
            let mut vm = self.cell.lock();
            let has = vm.has(StreamCallback::ResponseHeaders);
            let Some(s) = vm.stream(self.id) else {
                parts.headers = head.headers;
                return Verdict::Continue;
            };
            s.response_code = parts.status.as_u16();
            s.upstream = upstream;
            if !has {
                parts.headers = head.headers;
                return Verdict::Continue;
            }
            s.response = Some(head);
        }
        let first = self.call(StreamCallback::ResponseHeaders, count, end_of_stream);
        let verdict = self.settle(first, deadline).await;
        let head = self
            .cell
            .lock()
            .stream(self.id)
            .and_then(|s| s.response.take());
        if let Some(head) = head {
            parts.headers = head.headers;
            if let Ok(status) = http::StatusCode::from_u16(head.status) {
                parts.status = status;
            }
            if let Some(s) = self.cell.lock().stream(self.id) {
                s.response_code = head.status;
            }
        }
        framing.restore(&mut parts.headers);
        verdict
    }

    /// The request's answer code, for `on_log` (a local reply or an error answer).
    pub fn answered(&self, status: u16) {
        if let Some(s) = self.cell.lock().stream(self.id) {
            if s.response_code == 0 {
                s.response_code = status;
            }
        }
    }

    /// Shows the filter a body as it arrives (`on_request_body`/`on_response_body` per
    /// piece), buffering while it answers `Pause` before the end, up to `cap` bytes. Once it
    /// answers `Continue`, what was read (as the filter left it) goes on, then the rest of the
    /// body unread; a `Pause` at the end waits for a resume like a header phase.
    pub async fn body<B>(
        &self,
        mut body: B,
        response: bool,
        cap: usize,
        deadline: Instant,
    ) -> Result<Passed<B>, BodyStop>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        let which = if response {
            StreamCallback::ResponseBody
        } else {
            StreamCallback::RequestBody
        };
        if body.is_end_stream() || !self.has(which) {
            return Ok(Passed::Untouched(body));
        }
        let kind = if response {
            abi::buffer::RESPONSE_BODY
        } else {
            abi::buffer::REQUEST_BODY
        };
        let mut buf = BytesMut::new();
        loop {
            let end_of_stream = match body.frame().await {
                None => true,
                Some(Err(e)) => return Err(BodyStop::Broken(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if buf.len() + data.len() > cap {
                            return Err(BodyStop::TooLarge(cap as u64));
                        }
                        buf.extend_from_slice(&data);
                        body.is_end_stream()
                    }
                    // Trailers: the body's end (Portico does not forward them).
                    Err(_) => true,
                },
            };
            if !end_of_stream && buf.is_empty() {
                continue;
            }
            let size = buf.len();
            if let Some(s) = self.cell.lock().stream(self.id) {
                s.body = Some(std::mem::take(&mut buf));
                s.body_kind = kind;
            }
            let first = self.call(which, size, end_of_stream);
            let verdict = match first {
                // Before the end, a pause asks for more of the body, not for a resume.
                Ok(Action::Pause) if !end_of_stream => self.state(Action::Pause),
                other => Some(self.settle(other, deadline).await),
            };
            if let Some(s) = self.cell.lock().stream(self.id) {
                buf = s.body.take().unwrap_or_default();
            }
            match verdict {
                None => continue,
                Some(Verdict::Continue) if end_of_stream => return Ok(Passed::Whole(buf.freeze())),
                Some(Verdict::Continue) => return Ok(Passed::Prefixed(buf.freeze(), body)),
                Some(other) => return Err(BodyStop::Verdict(other)),
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut vm = self.cell.lock();
        vm.close(self.id);
        vm.after(&self.cell);
    }
}

/// A message's framing headers as they arrived. A filter edits fields, not framing: the
/// gateway frames a body from what it sends (a `Content-Length` a filter set on a chunked
/// request would otherwise go upstream beside `Transfer-Encoding`, a smuggling vector), so
/// these are put back as they were after the filter's header phase.
struct Framing {
    content_length: Option<HeaderValue>,
    transfer_encoding: Vec<HeaderValue>,
}

impl Framing {
    fn of(headers: &HeaderMap) -> Self {
        Self {
            content_length: headers.get(header::CONTENT_LENGTH).cloned(),
            transfer_encoding: headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .cloned()
                .collect(),
        }
    }

    fn restore(self, headers: &mut HeaderMap) {
        let same = headers.get(header::CONTENT_LENGTH) == self.content_length.as_ref()
            && headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .eq(self.transfer_encoding.iter());
        if same {
            return;
        }
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        if let Some(v) = self.content_length {
            headers.insert(header::CONTENT_LENGTH, v);
        }
        for v in self.transfer_encoding {
            headers.append(header::TRANSFER_ENCODING, v);
        }
    }
}

/// Takes the filter's edits of the request head back into the request.
fn apply_request(parts: &mut request::Parts, head: RequestHead) {
    parts.headers = head.headers;
    parts.method = head.method;
    if parts.uri.path_and_query() != Some(&head.path) {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(head.path);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    if !head.authority.is_empty() && parts.headers.get(header::HOST) != Some(&head.authority) {
        parts.headers.insert(header::HOST, head.authority);
    }
}

/// An HTTP call a filter made: sent through the service's pools, breaker and retries; its
/// answer (or failure) is handed to the filter, which may then resume its request.
pub(super) async fn run_call(cell: Arc<VmCell>, call: OutCall, service: Arc<Service>) {
    let max_body = cell.lock().store.data().spec.max_body;
    let answer = send(&call, &service, max_body).await;
    let mut vm = cell.lock();
    vm.deliver_answer(&cell, call.context, call.token, answer);
}

async fn send(call: &OutCall, service: &Service, max_body: usize) -> Option<CallAnswer> {
    let path = PathAndQuery::try_from(call.path.as_str()).ok()?;
    let mut req = Request::new(RequestBody::full(call.body.clone()));
    *req.method_mut() = call.method.clone();
    *req.headers_mut() = call.headers.clone();
    if !call.body.is_empty() {
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(call.body.len()));
    }
    let (parts, body) = req.into_parts();
    let trace = Trace::start(&HeaderMap::new(), None);
    let forward = Forward {
        service,
        how: How {
            name: &service.name,
            retry: service.retry.as_deref(),
            timeout: call.timeout,
            preserve_host: false,
            deadline_header: None,
            max_body_bytes: call.body.len() as u64,
        },
        client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        client_host: None,
        new_path: path,
        trace: &trace,
        call: Some("wasm"),
    };
    let work = async {
        let retry::Answer { sent, in_flight } =
            retry::forward(&forward, parts, body, None).await.ok()?;
        let (head, body) = sent.response.into_parts();
        let bytes = http_body_util::Limited::new(body, max_body)
            .collect()
            .await
            .ok()?
            .to_bytes();
        if let Some(p) = sent.pooled {
            p.release();
        }
        drop(in_flight);
        Some(CallAnswer {
            status: head.status.as_u16(),
            headers: head.headers,
            body: bytes,
        })
    };
    tokio::time::timeout(call.timeout, work)
        .await
        .ok()
        .flatten()
}
