//! One request's passage through one filter: its context in the worker's instance, the
//! request and response phases (each may pause and be resumed by an HTTP call's answer or a
//! timer), the bodies buffered only while the filter asks for them, and the context's end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{request, response, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::abi;
use super::vm::{
    Action, CallAnswer, Facts, Failure, LocalReply, OutCall, RequestHead, ResponseHead,
    StreamCallback, Vm, VmCell,
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

/// A body after the filter saw what it asked to see before the request (or response) goes on.
pub enum Passed<B> {
    /// Untouched: the filter has no body or trailers callback, or there was no body.
    Untouched(B),
    /// Read whole (and perhaps rewritten), with no trailers.
    Whole(Bytes),
    /// Shown to the filter as it streams on: the part the filter let go first is queued in
    /// it. `reframed`: the filter sees (and may rewrite) the data, so its length is not known
    /// ahead; without it only the trailers go through the filter.
    Filtered(Box<Filtered<B>>, bool),
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

/// A filter paused in a header callback: what it answered, to be waited on.
pub struct Paused(Action);

/// One request's context in one filter's instance; ended (`on_done`, `on_log`, `on_delete`)
/// when its last handle is dropped. Handles are counted in the context's state, under the
/// instance's lock that every use takes anyway: most requests hold one, and none allocates.
pub struct Stream {
    cell: Arc<VmCell>,
    id: u32,
    /// The filter has a callback that runs once the answer is known (its code matters).
    sees_end: bool,
}

/// A filter's pause at a body's end or its trailers, settled by a resume or an answer.
type Pause = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// A body shown to the filter as it streams (`on_request_body`/`on_response_body` for each
/// piece, then `on_request_trailers`/`on_response_trailers`), as Envoy shows it: what the
/// filter answers `Continue` for goes on (as it left it); what it answers `Pause` for is held,
/// up to its `max_body_bytes`, and shown again with what follows; a `Pause` at the end, or at
/// the trailers, waits for `proxy_continue_stream` like a header phase. The context ends
/// (`on_log`, `on_done`) only once the last of these bodies and the request are gone.
pub struct Filtered<B> {
    stream: Stream,
    inner: B,
    response: bool,
    cap: usize,
    deadline: Instant,
    fail_open: bool,
    /// Whether the filter has a body callback (else only its trailers callback runs).
    sees_data: bool,
    /// Body bytes the filter holds (it paused before their end).
    held: BytesMut,
    /// What goes out next, in this order.
    out_data: Option<Bytes>,
    out_trailers: Option<HeaderMap>,
    /// A pause at the body's end or at its trailers, until the filter resumes or answers.
    waiting: Option<(Pause, bool)>,
    /// The inner body is done (its end shown to the filter).
    ended: bool,
    finished: bool,
    /// The filter failed open: the rest goes by unseen.
    bypass: bool,
    /// Why the body stopped (for the phase that waits for the filter's first decision).
    stop: Option<BodyStop>,
}

impl<B> Filtered<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    fn kind(&self) -> (StreamCallback, StreamCallback, i32, i32) {
        if self.response {
            (
                StreamCallback::ResponseBody,
                StreamCallback::ResponseTrailers,
                abi::buffer::RESPONSE_BODY,
                abi::map::RESPONSE_TRAILERS,
            )
        } else {
            (
                StreamCallback::RequestBody,
                StreamCallback::RequestTrailers,
                abi::buffer::REQUEST_BODY,
                abi::map::REQUEST_TRAILERS,
            )
        }
    }

    /// Shows the filter the held data with a new piece (`None`: the end without one).
    fn data(&mut self, piece: Option<Bytes>, end_of_stream: bool) -> Result<(), BodyError> {
        if self.bypass || !self.sees_data {
            if let Some(d) = piece.filter(|d| !d.is_empty()) {
                self.out_data = Some(d);
            }
            self.ended |= end_of_stream;
            return Ok(());
        }
        if let Some(d) = &piece {
            if self.held.len() + d.len() > self.cap {
                self.stop = Some(BodyStop::TooLarge(self.cap as u64));
                return Err(self.too_large());
            }
            self.held.extend_from_slice(d);
        }
        self.ended |= end_of_stream;
        let (which, _, kind, _) = self.kind();
        let size = self.held.len();
        if let Some(s) = self.stream.cell.lock().stream(self.stream.id) {
            s.body = Some(std::mem::take(&mut self.held));
            s.body_kind = kind;
        }
        let first = self.stream.call(which, size, end_of_stream);
        match first {
            // Before the end, a pause asks for more of the body, not for a resume.
            Ok(Action::Pause) if !end_of_stream => match self.stream.state(Action::Pause) {
                None => {
                    self.take_back(false);
                    Ok(())
                }
                Some(v) => self.decided(v, false),
            },
            other => self.answered(other, false),
        }
    }

    /// Acts on the filter's answer at the body's end or at the trailers: decided now, or
    /// waited for.
    fn answered(
        &mut self,
        first: Result<Action, Failure>,
        at_trailers: bool,
    ) -> Result<(), BodyError> {
        match first {
            Ok(action) => match self.stream.state(action) {
                Some(v) => self.decided(v, at_trailers),
                None => {
                    self.wait(at_trailers);
                    Ok(())
                }
            },
            Err(Failure(message)) => self.decided(Verdict::Fail(message), at_trailers),
        }
    }

    /// Shows the filter the trailers (held data goes on with them once it lets them go).
    fn trailers(&mut self, trailers: HeaderMap) -> Result<(), BodyError> {
        self.ended = true;
        let (_, which, _, kind) = self.kind();
        if self.bypass || !self.stream.has(which) {
            self.out_data = (!self.held.is_empty()).then(|| self.held.split().freeze());
            self.out_trailers = Some(trailers);
            return Ok(());
        }
        let count = trailers.len();
        if let Some(s) = self.stream.cell.lock().stream(self.stream.id) {
            s.trailers = Some(trailers);
            s.trailers_kind = kind;
        }
        let first = self.stream.call(which, count, true);
        self.answered(first, true)
    }

    /// Waits for the filter to resume or answer a pause at the end or at the trailers.
    fn wait(&mut self, at_trailers: bool) {
        let stream = self.stream.clone();
        let deadline = self.deadline;
        self.waiting = Some((
            Box::pin(async move { stream.settle(Ok(Action::Pause), deadline).await }),
            at_trailers,
        ));
    }

    /// Takes back what the filter was lent: the held data (as it left it) and the trailers.
    fn take_back(&mut self, at_trailers: bool) -> Option<HeaderMap> {
        let mut vm = self.stream.cell.lock();
        let s = vm.stream(self.stream.id)?;
        if let Some(body) = s.body.take() {
            self.held = body;
        }
        let trailers = s.trailers.take();
        at_trailers.then_some(trailers).flatten()
    }

    /// Acts on the filter's decision about what it was shown.
    fn decided(&mut self, verdict: Verdict, at_trailers: bool) -> Result<(), BodyError> {
        let trailers = self.take_back(at_trailers);
        match verdict {
            Verdict::Continue => {
                self.out_data = (!self.held.is_empty()).then(|| self.held.split().freeze());
                self.out_trailers = trailers;
                Ok(())
            }
            Verdict::Fail(message) if self.fail_open => {
                tracing::warn!(plugin = %self.stream.name(), "{message}; the body goes on unseen (fail_open)");
                self.bypass = true;
                self.out_data = (!self.held.is_empty()).then(|| self.held.split().freeze());
                self.out_trailers = trailers;
                Ok(())
            }
            Verdict::Fail(message) => {
                let e = BodyError::Filter {
                    plugin: self.stream.name(),
                    message: message.clone(),
                };
                self.stop = Some(BodyStop::Verdict(Verdict::Fail(message)));
                self.finished = true;
                Err(e)
            }
            Verdict::Reply(reply) => {
                let message = format!(
                    "the filter answered {} after the {} had begun to go on",
                    reply.status,
                    if self.response { "response" } else { "request" }
                );
                // Kept for the request's error answer: a request body refused part-way is
                // answered with the filter's reply when nothing was answered yet.
                if let Some(s) = self.stream.cell.lock().stream(self.stream.id) {
                    s.local = Some(reply.clone());
                }
                self.stop = Some(BodyStop::Verdict(Verdict::Reply(reply)));
                self.finished = true;
                Err(BodyError::Filter {
                    plugin: self.stream.name(),
                    message,
                })
            }
        }
    }

    fn too_large(&mut self) -> BodyError {
        self.finished = true;
        if self.response {
            BodyError::Filter {
                plugin: self.stream.name(),
                message: format!(
                    "the filter held more than its max_body_bytes ({}) of the response",
                    self.cap
                ),
            }
        } else {
            BodyError::TooLarge(self.cap as u64)
        }
    }
}

impl<B> Body for Filtered<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(d) = this.out_data.take() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if let Some(t) = this.out_trailers.take() {
                this.finished = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some((wait, at_trailers)) = this.waiting.as_mut() {
                let verdict = ready!(wait.as_mut().poll(cx));
                let at_trailers = *at_trailers;
                this.waiting = None;
                if let Err(e) = this.decided(verdict, at_trailers) {
                    return Poll::Ready(Some(Err(e)));
                }
                continue;
            }
            if this.ended {
                this.finished = true;
                continue;
            }
            let step = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => this.data(None, true),
                Some(Err(e)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => {
                        let end = this.inner.is_end_stream();
                        this.data(Some(d), end)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => this.trailers(t),
                        Err(_) => Ok(()),
                    },
                },
            };
            if let Err(e) = step {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.out_data.is_none()
            && self.out_trailers.is_none()
            && self.waiting.is_none()
            && (self.finished || self.ended)
    }

    fn size_hint(&self) -> SizeHint {
        if self.sees_data {
            let mut hint = SizeHint::new();
            if let Some(d) = &self.out_data {
                hint.set_lower(d.len() as u64);
            }
            return hint;
        }
        let rest = self.inner.size_hint();
        match &self.out_data {
            Some(d) => {
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + d.len() as u64);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + d.len() as u64);
                }
                hint
            }
            None => rest,
        }
    }
}

impl Stream {
    /// Opens a context for a request in the worker's instance of the filter.
    pub fn open(
        cell: Arc<VmCell>,
        facts: Facts,
        services: &[Arc<Service>],
    ) -> Result<Self, Failure> {
        let (id, sees_end) = {
            let mut vm = cell.lock();
            vm.refresh_targets(services);
            let opened = vm.open(facts);
            vm.after(&cell);
            (opened?, vm.store.data().spec.sees_end)
        };
        Ok(Self { cell, id, sees_end })
    }

    /// Whether the filter has this callback.
    fn has(&self, which: StreamCallback) -> bool {
        self.cell.lock().has(which)
    }

    /// Whether the filter has a body or trailers callback for the request (or the response):
    /// without one, [`Stream::body`] leaves the body untouched.
    pub fn sees_body(&self, response: bool) -> bool {
        let vm = self.cell.lock();
        if response {
            vm.has(StreamCallback::ResponseBody) || vm.has(StreamCallback::ResponseTrailers)
        } else {
            vm.has(StreamCallback::RequestBody) || vm.has(StreamCallback::RequestTrailers)
        }
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
        Self::state_of(&mut self.cell.lock(), self.id, action)
    }

    /// [`Stream::state`] of context `id` in the locked instance `vm`.
    fn state_of(vm: &mut Vm, id: u32, action: Action) -> Option<Verdict> {
        let broken = vm.broken;
        let Some(s) = vm.stream(id) else {
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
    /// included) and taken back with its edits. Settled at once when the filter lets the
    /// request go on, answers or fails in the callback (the common case: nothing is awaited);
    /// `Err(Paused)` when it paused, for [`Stream::request_headers_paused`]. The `bool` says
    /// whether the filter rewrote `:path`.
    pub fn request_headers(
        &self,
        parts: &mut request::Parts,
        end_of_stream: bool,
    ) -> Result<(Verdict, bool), Paused> {
        let mut vm = self.cell.lock();
        if !vm.has(StreamCallback::RequestHeaders) {
            return Ok((Verdict::Continue, false));
        }
        let Some(s) = vm.stream(self.id) else {
            return Ok((Verdict::Continue, false));
        };
        // The host the request was opened with (`Facts::host`), not looked up again.
        let authority = s.facts.host.clone();
        let count = parts.headers.len() + 4;
        s.request = Some(RequestHead {
            headers: std::mem::take(&mut parts.headers),
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            authority: authority.unwrap_or_else(|| HeaderValue::from_static("")),
            scheme: "http",
            line_edited: false,
        });
        let first = vm.stream_call(
            StreamCallback::RequestHeaders,
            self.id,
            count,
            end_of_stream,
        );
        vm.after(&self.cell);
        let verdict = match first {
            Ok(action) => match Self::state_of(&mut vm, self.id, action) {
                Some(v) => v,
                None => return Err(Paused(action)),
            },
            Err(Failure(message)) => Verdict::Fail(message),
        };
        let head = vm.stream(self.id).and_then(|s| s.request.take());
        let path_changed = head.is_some_and(|head| apply_request(parts, head));
        Ok((verdict, path_changed))
    }

    /// Waits for a filter that paused in `on_request_headers` to resume or answer, until
    /// `deadline`, then takes the request head back (the `bool`: `:path` rewritten).
    pub async fn request_headers_paused(
        &self,
        parts: &mut request::Parts,
        paused: Paused,
        deadline: Instant,
    ) -> (Verdict, bool) {
        let verdict = self.settle(Ok(paused.0), deadline).await;
        let head = self
            .cell
            .lock()
            .stream(self.id)
            .and_then(|s| s.request.take());
        let path_changed = head.is_some_and(|head| apply_request(parts, head));
        (verdict, path_changed)
    }

    /// `on_response_headers`, with the response head lent to the filter.
    pub async fn response_headers(
        &self,
        parts: &mut response::Parts,
        end_of_stream: bool,
        upstream: Option<HeaderValue>,
        deadline: Instant,
    ) -> Verdict {
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
        verdict
    }

    /// The request's answer code, for `on_log` (a local reply or an error answer).
    pub fn answered(&self, status: u16) {
        if !self.sees_end {
            return;
        }
        if let Some(s) = self.cell.lock().stream(self.id) {
            if s.response_code == 0 {
                s.response_code = status;
            }
        }
    }

    /// The filter's name.
    fn name(&self) -> Arc<str> {
        Arc::clone(&self.cell.lock().store.data().spec.name)
    }

    /// A late answer the filter made while a body it had let go on was still streaming.
    pub fn late_reply(&self) -> Option<LocalReply> {
        self.cell.lock().stream(self.id)?.local.take()
    }

    /// Shows the filter a body as it arrives, until it lets the body go on (then the rest
    /// streams through it: see [`Filtered`]) or answers. Bodies of filters without a body or
    /// trailers callback, and empty bodies, are not touched.
    pub async fn body<B>(
        &self,
        body: B,
        response: bool,
        cap: usize,
        deadline: Instant,
        fail_open: bool,
    ) -> Result<Passed<B>, BodyStop>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        let (data, trailers) = if response {
            (
                StreamCallback::ResponseBody,
                StreamCallback::ResponseTrailers,
            )
        } else {
            (StreamCallback::RequestBody, StreamCallback::RequestTrailers)
        };
        if body.is_end_stream() {
            return Ok(Passed::Untouched(body));
        }
        let sees_data = self.has(data);
        if !(sees_data || self.has(trailers)) {
            return Ok(Passed::Untouched(body));
        }
        let mut filtered = Filtered {
            stream: self.clone(),
            inner: body,
            response,
            cap,
            deadline,
            fail_open,
            sees_data,
            held: BytesMut::new(),
            out_data: None,
            out_trailers: None,
            waiting: None,
            ended: false,
            finished: false,
            bypass: false,
            stop: None,
        };
        if !sees_data {
            return Ok(Passed::Filtered(Box::new(filtered), false));
        }
        match filtered.frame().await {
            None => Ok(Passed::Whole(Bytes::new())),
            Some(Err(e)) => Err(filtered.stop.take().unwrap_or(BodyStop::Broken(e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if filtered.is_end_stream() => Ok(Passed::Whole(d)),
                Ok(d) => {
                    filtered.out_data = Some(d);
                    Ok(Passed::Filtered(Box::new(filtered), true))
                }
                Err(frame) => {
                    filtered.out_trailers = frame.into_trailers().ok();
                    filtered.finished = false;
                    Ok(Passed::Filtered(Box::new(filtered), true))
                }
            },
        }
    }
}

impl Clone for Stream {
    fn clone(&self) -> Self {
        if let Some(s) = self.cell.lock().stream(self.id) {
            s.handles += 1;
        }
        Self {
            cell: Arc::clone(&self.cell),
            id: self.id,
            sees_end: self.sees_end,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut vm = self.cell.lock();
        if let Some(s) = vm.stream(self.id) {
            if s.handles > 1 {
                s.handles -= 1;
                return;
            }
        }
        vm.close(self.id);
        vm.after(&self.cell);
    }
}

/// Takes the filter's edits of the request head back into the request; true when it
/// rewrote the path.
fn apply_request(parts: &mut request::Parts, head: RequestHead) -> bool {
    parts.headers = head.headers;
    if !head.line_edited {
        return false;
    }
    parts.method = head.method;
    let mut path_changed = false;
    if parts.uri.path_and_query() != Some(&head.path) {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(head.path);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
            path_changed = true;
        }
    }
    if !head.authority.is_empty() && parts.headers.get(header::HOST) != Some(&head.authority) {
        parts.headers.insert(header::HOST, head.authority);
    }
    path_changed
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
            keep_raw_head: false,
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
