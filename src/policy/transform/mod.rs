//! The `transform` policy: changes a request on its way upstream (headers, query, path,
//! method) and the upstream's response on its way back (headers).
//!
//! Owns compiling the operations (templates parsed and validated at config load) and applying
//! them. It does not own the core `rewrite` of a route (applied before), authentication (it
//! reads the [`Identity`]) or hop-by-hop hygiene (the proxy's; hop-by-hop and framing headers
//! cannot be touched by a transform).
//!
//! Files: `config.rs` (YAML), `template.rs` (the `${...}` templates); this file compiles and
//! applies.

pub mod config;
pub mod json;
pub mod template;
pub mod xml;

use crate::body::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use crate::body::{read_whole, RequestBody};
use crate::error::GatewayError;
use crate::spec::ConfigError;
use config::{RawHeaderOps, RawQueryOps, RawTransformPolicy};
use json::{JsonOps, OnOversize};
pub use template::{CallAnswer, Facts, RequestData, Template};

/// A header or query value: fixed, or rendered per request.
#[derive(Debug)]
enum Value {
    Fixed(HeaderValue),
    Template(Template),
}

impl Value {
    fn header_value(&self, data: &RequestData<'_>) -> HeaderValue {
        match self {
            Value::Fixed(v) => v.clone(),
            // A value the request made unrepresentable (a decoded query with a newline) is
            // sent empty rather than failing the request.
            Value::Template(t) => HeaderValue::from_str(&t.render(data))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }
}

/// Compiled header operations.
#[derive(Debug, Default)]
struct HeaderOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
    append: Vec<(HeaderName, Value)>,
}

/// Header operations with their values rendered for one request.
#[derive(Debug, Default)]
pub struct RenderedHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    append: Vec<(HeaderName, HeaderValue)>,
}

/// Compiled query operations.
#[derive(Debug, Default)]
struct QueryOps {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
}

/// A compiled `transform` policy.
pub struct TransformPolicy {
    request_headers: Option<HeaderOps>,
    query: Option<QueryOps>,
    path: Option<(regex::Regex, String)>,
    method: Option<Method>,
    response_headers: Option<HeaderOps>,
    request_body: Option<JsonOps>,
    schema: Option<jsonschema::Validator>,
    response_body: Option<JsonOps>,
    /// Root element for JSON → XML request bodies.
    to_xml: Option<String>,
    from_xml: bool,
    /// Whether any template reads route captures (they are collected only then).
    needs_captures: bool,
}

/// Headers a transform may not touch: the proxy owns connection management and framing, and
/// the upstream `Host` comes from the target (or `preserve_host`).
const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

impl TransformPolicy {
    /// Compiles a `transform` entry for the route's path captures.
    pub fn compile(
        raw: &RawTransformPolicy,
        b: &mut crate::policy::Build<'_>,
    ) -> Option<std::sync::Arc<Self>> {
        Self::build(raw, b.path, b.captures, b.errors).map(std::sync::Arc::new)
    }

    /// Compiles a policy written at `path` for a route whose path has `captures`.
    pub fn build(
        raw: &RawTransformPolicy,
        path: &str,
        captures: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let before = errors.len();
        let mut policy = TransformPolicy {
            request_headers: None,
            query: None,
            path: None,
            method: None,
            response_headers: None,
            request_body: None,
            schema: None,
            response_body: None,
            to_xml: None,
            from_xml: false,
            needs_captures: false,
        };
        if let Some(req) = &raw.request {
            let at = format!("{path}.request");
            if !req.headers.is_empty() {
                policy.request_headers = Some(header_ops(
                    &req.headers,
                    &format!("{at}.headers"),
                    captures,
                    errors,
                ));
            }
            if !req.query.is_empty() {
                policy.query = Some(query_ops(
                    &req.query,
                    &format!("{at}.query"),
                    captures,
                    errors,
                ));
            }
            if let Some(p) = &req.path {
                match regex::Regex::new(&p.regex) {
                    Ok(re) => {
                        if !p.replacement.starts_with('/') {
                            errors.push(ConfigError::new(
                                format!("{at}.path.replacement"),
                                "must start with `/`",
                            ));
                        }
                        policy.path = Some((re, p.replacement.clone()));
                    }
                    Err(e) => errors.push(ConfigError::new(
                        format!("{at}.path.regex"),
                        format!("invalid regex: {e}"),
                    )),
                }
            }
            if let Some(b) = &req.body {
                policy.request_body =
                    Some(JsonOps::build(b, &format!("{at}.body"), captures, errors));
            }
            if let Some(schema) = &req.json_schema {
                match jsonschema::validator_for(schema) {
                    Ok(v) => policy.schema = Some(v),
                    Err(e) => errors.push(ConfigError::new(
                        format!("{at}.json_schema"),
                        format!("not a valid JSON Schema: {e}"),
                    )),
                }
            }
            if let Some(x) = &req.to_xml {
                if HeaderName::from_bytes(x.root.as_bytes()).is_err() || x.root.contains(':') {
                    errors.push(ConfigError::new(
                        format!("{at}.to_xml.root"),
                        "not a valid element name",
                    ));
                }
                policy.to_xml = Some(x.root.clone());
            }
            if let Some(m) = &req.method {
                match Method::from_bytes(m.as_bytes()) {
                    Ok(m) if m != Method::CONNECT => policy.method = Some(m),
                    _ => errors.push(ConfigError::new(
                        format!("{at}.method"),
                        format!("`{m}` is not a method a request can be sent with"),
                    )),
                }
            }
        }
        if let Some(resp) = &raw.response {
            if !resp.headers.is_empty() {
                policy.response_headers = Some(header_ops(
                    &resp.headers,
                    &format!("{path}.response.headers"),
                    captures,
                    errors,
                ));
            }
            policy.from_xml = resp.from_xml;
            if let Some(b) = &resp.body {
                let at = format!("{path}.response.body");
                let ops = JsonOps::build(b, &at, captures, errors);
                if ops.uses_templates() {
                    errors.push(ConfigError::new(
                        at,
                        "templates (`${...}`) are only available in request bodies",
                    ));
                }
                policy.response_body = Some(ops);
            }
        }
        let uses = |ops: &Option<HeaderOps>| {
            ops.iter().any(|o| {
                o.set
                    .iter()
                    .chain(&o.add)
                    .chain(&o.append)
                    .any(|(_, v)| matches!(v, Value::Template(t) if t.uses_captures()))
            })
        };
        policy.needs_captures = uses(&policy.request_headers)
            || policy
                .request_body
                .as_ref()
                .is_some_and(JsonOps::uses_captures)
            || uses(&policy.response_headers)
            || policy
                .query
                .iter()
                .any(|q| q.set.iter().chain(&q.add).any(|(_, t)| t.uses_captures()));
        (errors.len() == before).then_some(policy)
    }

    /// Whether [`Facts::captures`] must be filled.
    pub fn needs_captures(&self) -> bool {
        self.needs_captures
    }

    /// Whether the upstream response body may be rewritten.
    pub fn has_response_body(&self) -> bool {
        self.response_body.is_some() || self.from_xml
    }

    /// The request body to send upstream: validated and rewritten when it is JSON and small
    /// enough, else the client's stream untouched (or 413 with `on_oversize: reject`).
    pub async fn request_body(
        &self,
        parts: &mut Parts,
        body: RequestBody,
        facts: &Facts<'_>,
    ) -> Result<RequestBody, GatewayError> {
        if self.request_body.is_none() && self.schema.is_none() && self.to_xml.is_none() {
            return Ok(body);
        }
        let len = body.size_hint().exact();
        if len == Some(0) && self.schema.is_none() {
            return Ok(body);
        }
        if !json::is_json(&parts.headers) {
            if self.schema.is_some() && len != Some(0) {
                return Err(GatewayError::InvalidBody {
                    message: "this route expects a JSON body (Content-Type: application/json)"
                        .into(),
                    errors: Vec::new(),
                });
            }
            return Ok(body);
        }
        let (cap, oversize) = self
            .request_body
            .as_ref()
            .map_or((1024 * 1024, OnOversize::Reject), |o| {
                (o.max_bytes, o.on_oversize)
            });
        // A schema cannot be checked on a body that is not read: with one, oversize is refused.
        let oversize = if self.schema.is_some() {
            OnOversize::Reject
        } else {
            oversize
        };
        let cap = cap.min(body.limit());
        if len.is_none_or(|l| l > cap) {
            return match oversize {
                OnOversize::Pass => Ok(body),
                OnOversize::Reject => Err(GatewayError::PayloadTooLarge { limit: cap }),
            };
        }
        let bytes = read_whole(body, cap).await?;
        let value: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return Err(GatewayError::InvalidBody {
                    message: format!("the request body is not valid JSON: {e}"),
                    errors: Vec::new(),
                })
            }
        };
        if let Some(schema) = &self.schema {
            let errors: Vec<String> = schema
                .iter_errors(&value)
                .take(50)
                .map(|e| format!("{}: {e}", display_path(&e.instance_path().to_string())))
                .collect();
            if !errors.is_empty() {
                return Err(GatewayError::InvalidBody {
                    message: format!(
                        "the request body does not match the route's JSON Schema ({} error{})",
                        errors.len(),
                        if errors.len() == 1 { "" } else { "s" }
                    ),
                    errors,
                });
            }
        }
        let value = match &self.request_body {
            Some(ops) => {
                let d = RequestData {
                    headers: &parts.headers,
                    facts,
                    calls: &[],
                    encode_calls: false,
                };
                ops.apply(value, Some(&d))
            }
            None if self.to_xml.is_none() => return Ok(RequestBody::full(bytes)),
            None => value,
        };
        let out = match &self.to_xml {
            Some(root) => {
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/xml; charset=utf-8"),
                );
                Bytes::from(xml::json_to_xml(&value, root))
            }
            None => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(RequestBody::full(out))
    }

    /// Rewrites an upstream response body when it is JSON of known length under the cap.
    /// Returns `Err(incoming)` untouched otherwise. A body that does not parse is passed on as
    /// it came (the upstream's answer is more useful than an error of ours).
    pub async fn response_body(
        &self,
        headers: &mut HeaderMap,
        incoming: UpstreamBody,
        timeout: std::time::Duration,
    ) -> Result<Result<Bytes, UpstreamBody>, GatewayError> {
        if self.from_xml && xml::is_xml(headers) {
            return self.xml_response(headers, incoming, timeout).await.map(Ok);
        }
        let Some(ops) = &self.response_body else {
            return Ok(Err(incoming));
        };
        let len = incoming.size_hint().exact();
        if !json::is_json(headers) || !len.is_some_and(|l| l > 0 && l <= ops.max_bytes) {
            return Ok(Err(incoming));
        }
        let bytes = match tokio::time::timeout(timeout, incoming.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) => return Err(GatewayError::UpstreamProtocol(e.to_string())),
            Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Ok(Ok(bytes));
        };
        let out = Bytes::from(serde_json::to_vec(&ops.apply(value, None)).unwrap_or_default());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(Ok(out))
    }

    /// Applies the request operations to `parts` and returns the new upstream target.
    /// Response header values are rendered now too (they read the request, which is gone by
    /// the time the response arrives).
    pub fn apply_request(
        &self,
        parts: &mut Parts,
        target: PathAndQuery,
        facts: &Facts<'_>,
    ) -> (PathAndQuery, Option<RenderedHeaders>) {
        let d = RequestData {
            headers: &parts.headers,
            facts,
            calls: &[],
            encode_calls: false,
        };
        let request = self.request_headers.as_ref().map(|o| o.render(&d));
        let response = self.response_headers.as_ref().map(|o| o.render(&d));
        let new_target = self.target(&target, &d);
        if let (Some(ops), Some(rendered)) = (&self.request_headers, request) {
            ops.apply(&mut parts.headers, rendered);
        }
        if let Some(m) = &self.method {
            parts.method = m.clone();
        }
        (new_target.unwrap_or(target), response)
    }

    /// Applies the response operations rendered at request time.
    pub fn apply_response(&self, headers: &mut HeaderMap, rendered: RenderedHeaders) {
        if let Some(ops) = &self.response_headers {
            ops.apply(headers, rendered);
        }
    }

    /// Reads an XML upstream body whole (up to the cap), converts it to JSON and applies the
    /// response `body` operations.
    async fn xml_response(
        &self,
        headers: &mut HeaderMap,
        incoming: UpstreamBody,
        timeout: std::time::Duration,
    ) -> Result<Bytes, GatewayError> {
        let cap = self
            .response_body
            .as_ref()
            .map_or(1024 * 1024, |o| o.max_bytes);
        let mut out = BytesMut::new();
        let mut body = incoming;
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| GatewayError::UpstreamProtocol(e.to_string()))?;
                if let Some(d) = frame.data_ref() {
                    out.extend_from_slice(d);
                    if out.len() as u64 > cap {
                        return Err(GatewayError::UpstreamProtocol(format!(
                            "the upstream's XML response is over {cap} bytes and cannot be \
                             converted to JSON"
                        )));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r?,
            Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
        }
        let value = xml::xml_to_json(&out).map_err(|e| {
            GatewayError::UpstreamProtocol(format!("the upstream sent malformed XML: {e}"))
        })?;
        let value = match &self.response_body {
            Some(ops) => ops.apply(value, None),
            None => value,
        };
        let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        headers.remove(header::TRANSFER_ENCODING);
        Ok(bytes)
    }

    /// The rewritten target, or `None` when neither path nor query changes.
    fn target(&self, target: &PathAndQuery, d: &RequestData<'_>) -> Option<PathAndQuery> {
        if self.path.is_none() && self.query.is_none() {
            return None;
        }
        let mut out = match &self.path {
            Some((re, replacement)) => re.replace(target.path(), replacement.as_str()).into_owned(),
            None => target.path().to_string(),
        };
        let query = match &self.query {
            Some(ops) => ops.apply(target.query(), d),
            None => target.query().map(str::to_string),
        };
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            out.push('?');
            out.push_str(&q);
        }
        // A replacement that produced bytes a target cannot hold keeps the old target.
        PathAndQuery::try_from(out).ok()
    }
}

impl HeaderOps {
    fn render(&self, d: &RequestData<'_>) -> RenderedHeaders {
        let r = |v: &Vec<(HeaderName, Value)>| {
            v.iter()
                .map(|(n, v)| (n.clone(), v.header_value(d)))
                .collect()
        };
        RenderedHeaders {
            set: r(&self.set),
            add: r(&self.add),
            append: r(&self.append),
        }
    }

    fn apply(&self, h: &mut HeaderMap, rendered: RenderedHeaders) {
        for name in &self.remove {
            h.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = match h.entry(from) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => continue,
            };
            h.remove(to);
            for v in values {
                h.append(to.clone(), v);
            }
        }
        for (name, v) in rendered.set {
            h.insert(name, v);
        }
        for (name, v) in rendered.add {
            if !h.contains_key(&name) {
                h.insert(name, v);
            }
        }
        for (name, v) in rendered.append {
            h.append(name, v);
        }
    }
}

impl QueryOps {
    fn apply(&self, query: Option<&str>, d: &RequestData<'_>) -> Option<String> {
        let mut pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        pairs.retain(|(k, _)| !self.remove.contains(k));
        for (from, to) in &self.rename {
            if pairs.iter().any(|(k, _)| k == from) {
                pairs.retain(|(k, _)| k != to);
                for (k, _) in pairs.iter_mut().filter(|(k, _)| k == from) {
                    k.clone_from(to);
                }
            }
        }
        for (name, t) in &self.set {
            let value = t.render(d);
            pairs.retain(|(k, _)| k != name);
            pairs.push((name.clone(), value));
        }
        for (name, t) in &self.add {
            if !pairs.iter().any(|(k, _)| k == name) {
                pairs.push((name.clone(), t.render(d)));
            }
        }
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            s.append_pair(k, v);
        }
        Some(s.finish())
    }
}

fn header_name(name: &str, at: &str, errors: &mut Vec<ConfigError>) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) if RESERVED.contains(&n.as_str()) => {
            errors.push(ConfigError::new(
                at,
                format!("`{n}` is managed by the gateway and cannot be transformed"),
            ));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            errors.push(ConfigError::new(at, "not a valid header name"));
            None
        }
    }
}

fn header_ops(
    raw: &RawHeaderOps,
    at: &str,
    captures: &[String],
    errors: &mut Vec<ConfigError>,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    for (i, n) in raw.remove.iter().enumerate() {
        ops.remove
            .extend(header_name(n, &format!("{at}.remove[{i}]"), errors));
    }
    for (from, to) in &raw.rename {
        let key = format!("{at}.rename.{from}");
        if let (Some(f), Some(t)) = (
            header_name(from, &key, errors),
            header_name(to, &key, errors),
        ) {
            ops.rename.push((f, t));
        }
    }
    let values = |map: &std::collections::BTreeMap<String, String>,
                  kind: &str,
                  errors: &mut Vec<ConfigError>| {
        let mut out = Vec::new();
        for (name, text) in map {
            let key = format!("{at}.{kind}.{name}");
            let Some(n) = header_name(name, &key, errors) else {
                continue;
            };
            match Template::parse(text, captures) {
                Ok(t) => match t.as_literal() {
                    Some(lit) => match HeaderValue::from_str(lit) {
                        Ok(v) => out.push((n, Value::Fixed(v))),
                        Err(_) => errors.push(ConfigError::new(key, "not a valid header value")),
                    },
                    None => out.push((n, Value::Template(t))),
                },
                Err(e) => errors.push(ConfigError::new(key, e)),
            }
        }
        out
    };
    ops.set = values(&raw.set, "set", errors);
    ops.add = values(&raw.add, "add", errors);
    ops.append = values(&raw.append, "append", errors);
    ops
}

fn query_ops(
    raw: &RawQueryOps,
    at: &str,
    captures: &[String],
    errors: &mut Vec<ConfigError>,
) -> QueryOps {
    let mut ops = QueryOps {
        remove: raw.remove.clone(),
        rename: raw
            .rename
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
        ..QueryOps::default()
    };
    for (kind, map, out) in [
        ("set", &raw.set, &mut ops.set),
        ("add", &raw.add, &mut ops.add),
    ] {
        for (name, text) in map {
            match Template::parse(text, captures) {
                Ok(t) => out.push((name.clone(), t)),
                Err(e) => errors.push(ConfigError::new(format!("{at}.{kind}.{name}"), e)),
            }
        }
    }
    ops
}

/// `""` (the root) reads better as `/`.
fn display_path(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}
