//! Span records of a sampled request: the server span (the whole request, ended with its
//! response body) and a client span per upstream call (ended with the response head or the
//! failure). Built only when a request is recorded, so unsampled requests never allocate here.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::Method;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::{Exporter, Trace};

/// The upstream target a client span called.
pub struct Called<'a> {
    /// The target's URL as configured.
    pub url: &'a str,
    /// Its `host:port`.
    pub authority: &'a [u8],
    /// The path and query sent.
    pub path: &'a str,
}

/// The gateway's span for one request (`SpanKind::Server`).
pub struct ServerSpan {
    exporter: Arc<Exporter>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    start: SystemTime,
    method: Method,
    path: Box<str>,
    host: Box<str>,
    client: IpAddr,
    /// The matched route.
    pub route: Option<Arc<str>>,
    /// The service the request went to.
    pub service: Option<Arc<str>>,
    /// Response status.
    pub status: u16,
    /// The gateway's error code when it answered itself.
    pub error: Option<&'static str>,
}

impl ServerSpan {
    /// Starts the span when `trace` is recorded.
    pub fn start(
        trace: &Trace,
        method: &Method,
        path: &str,
        host: &str,
        client: IpAddr,
    ) -> Option<Box<Self>> {
        let exporter = trace.exporter.as_ref()?;
        Some(Box::new(Self {
            exporter: Arc::clone(exporter),
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_id: trace.parent_id,
            start: SystemTime::now(),
            method: method.clone(),
            path: path.into(),
            host: host.into(),
            client,
            route: None,
            service: None,
            status: 0,
            error: None,
        }))
    }

    /// Ends the span (the response body ended, `complete` or cut short) and queues it.
    pub fn end(self, complete: bool) {
        let s = self;
        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new("http.request.method", s.method.to_string()));
        attributes.push(KeyValue::new("url.path", String::from(s.path)));
        attributes.push(KeyValue::new("server.address", String::from(s.host)));
        attributes.push(KeyValue::new("client.address", s.client.to_string()));
        if s.status != 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(s.status),
            ));
        }
        let name = match &s.route {
            Some(route) => {
                attributes.push(KeyValue::new("http.route", route.to_string()));
                attributes.push(KeyValue::new("portico.route", route.to_string()));
                Cow::Owned(format!("{} {route}", s.method))
            }
            None => Cow::Owned(s.method.to_string()),
        };
        if let Some(service) = &s.service {
            attributes.push(KeyValue::new("portico.service", service.to_string()));
        }
        if let Some(code) = s.error {
            attributes.push(KeyValue::new("error.type", code));
        }
        if !complete {
            attributes.push(KeyValue::new("portico.response.complete", false));
        }
        // Semantic conventions: on a server span only 5xx is an error (4xx is the client's).
        let status = if s.status >= 500 {
            Status::error(s.error.unwrap_or(""))
        } else {
            Status::Unset
        };
        let data = span_data(
            &s.exporter,
            (s.trace_id, s.span_id, s.parent_id),
            SpanKind::Server,
            name,
            s.start,
            attributes,
            status,
        );
        s.exporter.submit(data);
    }
}

/// The gateway's span for one upstream call (`SpanKind::Client`), a child of the server span.
pub struct ClientSpan {
    exporter: Arc<Exporter>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: [u8; 8],
    start: SystemTime,
    attributes: Vec<KeyValue>,
    name: Cow<'static, str>,
}

impl ClientSpan {
    /// Starts the span of call `span_id` (from [`Trace::stamp`]) when `trace` is recorded.
    /// `attempt` counts from 1; `call` names an aggregate call.
    pub fn start(
        trace: &Trace,
        span_id: [u8; 8],
        method: &Method,
        attempt: u32,
        call: Option<&str>,
    ) -> Option<Self> {
        let exporter = trace.exporter.as_ref()?;
        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new("http.request.method", method.to_string()));
        attributes.push(KeyValue::new("portico.attempt", i64::from(attempt)));
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        if let Some(call) = call {
            attributes.push(KeyValue::new("portico.call", call.to_string()));
        }
        Some(Self {
            exporter: Arc::clone(exporter),
            trace_id: trace.trace_id,
            span_id,
            parent_id: trace.span_id,
            start: SystemTime::now(),
            attributes,
            name: Cow::Owned(method.to_string()),
        })
    }

    /// Ends the span with the target called (`None`: none could be picked) and path, the
    /// upstream's status or the gateway's error code when no response came, and queues it.
    pub fn end(mut self, target: Option<Called<'_>>, outcome: Result<u16, &'static str>) {
        if let Some(target) = target {
            let path = target.path;
            let authority = String::from_utf8_lossy(target.authority).into_owned();
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<i64>().ok()),
                None => (authority.clone(), None),
            };
            self.attributes.push(KeyValue::new("server.address", host));
            if let Some(port) = port {
                self.attributes.push(KeyValue::new("server.port", port));
            }
            self.attributes.push(KeyValue::new(
                "url.full",
                format!("{}{path}", target.url.trim_end_matches('/')),
            ));
        }
        // Semantic conventions: on a client span 4xx and 5xx are errors.
        let status = match outcome {
            Ok(code) => {
                self.attributes
                    .push(KeyValue::new("http.response.status_code", i64::from(code)));
                if code >= 400 {
                    self.attributes
                        .push(KeyValue::new("error.type", code.to_string()));
                    Status::error("")
                } else {
                    Status::Unset
                }
            }
            Err(code) => {
                self.attributes.push(KeyValue::new("error.type", code));
                Status::error(code)
            }
        };
        let data = span_data(
            &self.exporter,
            (self.trace_id, self.span_id, Some(self.parent_id)),
            SpanKind::Client,
            self.name,
            self.start,
            self.attributes,
            status,
        );
        self.exporter.submit(data);
    }
}

fn span_data(
    exporter: &Exporter,
    (trace_id, span_id, parent): ([u8; 16], [u8; 8], Option<[u8; 8]>),
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        // The server span's parent is the caller's (remote); a client span's is ours.
        parent_span_is_remote: kind == SpanKind::Server && parent.is_some(),
        span_kind: kind,
        name,
        start_time: start,
        end_time: SystemTime::now(),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: exporter.scope().clone(),
    }
}
