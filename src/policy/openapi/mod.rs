//! The `openapi` policy: a route's requests (and optionally its answers) checked against an
//! OpenAPI operation, or answered from the spec's examples (`mock: true`).
//!
//! Everything is prepared at config load ([`OpenApiPolicy::compile`]): the spec is read once,
//! its path templates become a lookup table, and every parameter, request body and response
//! body schema is bundled (`openapi::schema`) and compiled into a `jsonschema` validator
//! (identical schemas share one). A request then costs a template match, the parameters'
//! parsing and the validators' runs; the spec is never read again.
//!
//! Owns: finding the operation, parameter and body checks, response checks, mock answers. Not
//! the reading of specs (`crate::openapi`) and not where it runs (`pipeline/openapi.rs`, after
//! the rate limit; the response check in `respond`).

pub mod config;
pub mod mock;
pub mod params;
mod table;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use serde_json::Value;

use crate::body::{read_whole, GatewayBody, RequestBody};
use crate::error::{GatewayError, Problem};
use crate::openapi::schema::{Bundle, Direction};
use crate::openapi::{child, At, Spec, SpecError};
use crate::spec::ConfigError;
pub use config::{RawOpenApi, ResponseMode};
use params::{Place, Shape, Style};
pub use table::Lookup;

/// The most problems listed in one 400.
pub const MAX_PROBLEMS: usize = 10;
/// The largest upstream answer whose body is checked (larger or unsized ones pass unchecked).
pub const MAX_CHECKED_RESPONSE: u64 = 1024 * 1024;
/// The longest error message kept (a `oneOf` failure quotes the whole instance).
const MAX_MESSAGE: usize = 300;

type Validator = Arc<jsonschema::Validator>;

/// A compiled `openapi` policy.
pub struct OpenApiPolicy {
    /// The spec file, as written in the config.
    pub spec_file: String,
    /// The root document as JSON, served by the admin API at `/openapi/{route}`.
    pub document: Bytes,
    prefix: String,
    validate_requests: bool,
    responses: ResponseMode,
    /// A path or method the spec does not describe is refused.
    pub strict: bool,
    /// Answer from the spec, never the upstream.
    pub mock: bool,
    table: table::Table,
    /// The operations, in document order.
    pub operations: Vec<Operation>,
}

impl std::fmt::Debug for OpenApiPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApiPolicy")
            .field("spec_file", &self.spec_file)
            .field("operations", &self.operations.len())
            .finish_non_exhaustive()
    }
}

/// One compiled operation.
pub struct Operation {
    /// `operationId`, else `METHOD /path`: the access log's `operation_id` and metric label.
    pub id: Arc<str>,
    /// The method.
    pub method: Method,
    /// The path template as the spec writes it.
    pub path: String,
    params: Vec<Param>,
    body: Option<Content>,
    responses: Vec<(StatusKey, Option<Content>)>,
    mocks: Vec<mock::MockResponse>,
}

/// Which operation a request is, remembered for its response.
#[derive(Debug, Clone)]
pub struct OperationRef {
    /// Index into [`OpenApiPolicy::operations`].
    pub index: usize,
    /// How many operations the spec has.
    pub of: usize,
    /// The operation's id.
    pub id: Arc<str>,
}

struct Param {
    name: String,
    header: Option<HeaderName>,
    place: Place,
    required: bool,
    style: Style,
    explode: bool,
    shape: Shape,
    validator: Option<Validator>,
}

/// A request or response body: its media types, JSON ones with their schema.
struct Content {
    required: bool,
    media: Vec<(String, Option<Validator>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusKey {
    Exact(u16),
    Class(u16),
    Default,
}

/// Whether a media type (or range) is JSON: `application/json`, `application/*+json`.
pub fn is_json_media(media: &str) -> bool {
    let essence = media.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

impl OpenApiPolicy {
    /// Compiles an `openapi` entry (once per place it is written: routes inheriting it share it).
    pub fn compile(raw: &RawOpenApi, b: &mut super::Build<'_>) -> Option<Arc<Self>> {
        if let Some(done) = b.shared.openapi.get(b.path) {
            return done.clone();
        }
        let out = match Self::build(raw) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                b.errors
                    .push(ConfigError::new(format!("{}.spec", b.path), e.to_string()));
                None
            }
        };
        b.shared.openapi.insert(b.path.to_string(), out.clone());
        out
    }

    /// Reads and compiles the spec `raw` names.
    pub fn build(raw: &RawOpenApi) -> Result<Self, SpecError> {
        let spec = Spec::load(std::path::Path::new(&raw.spec))?;
        let mut c = Compiler {
            spec: &spec,
            cache: HashMap::new(),
        };
        let mut operations = Vec::new();
        for op in spec.operations()? {
            operations.push(c.operation(
                &op,
                raw.validate_responses != ResponseMode::Off,
                raw.mock,
            )?);
        }
        let table = table::Table::new(operations.iter().map(|o| (o.path.as_str(), &o.method)));
        let prefix = raw.prefix.clone().unwrap_or_default();
        Ok(Self {
            spec_file: raw.spec.clone(),
            document: Bytes::from(serde_json::to_vec(spec.root()).unwrap_or_default()),
            prefix: prefix.trim_end_matches('/').to_string(),
            validate_requests: raw.validate_requests,
            responses: raw.validate_responses,
            strict: raw.strict,
            mock: raw.mock,
            table,
            operations,
        })
    }

    /// Whether answers are checked (so `respond` reads them whole).
    pub fn checks_responses(&self) -> bool {
        self.responses != ResponseMode::Off
    }

    /// The operation `method path` is, with the path's variables.
    pub fn find<'a>(&'a self, method: &Method, path: &'a str) -> Lookup<'a> {
        let Some(rest) = path.strip_prefix(self.prefix.as_str()) else {
            return Lookup::NoPath;
        };
        if !(self.prefix.is_empty() || rest.is_empty() || rest.starts_with('/')) {
            return Lookup::NoPath;
        }
        self.table
            .find(method, if rest.is_empty() { "/" } else { rest })
    }

    /// Checks the request's parameters and body against `op`; the body to send on (read
    /// whole when it was checked).
    pub async fn check_request(
        &self,
        op: &Operation,
        parts: &Parts,
        vars: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<RequestBody, GatewayError> {
        if !self.validate_requests {
            return Ok(body);
        }
        let mut problems = self.check_params(op, parts, vars);
        let body = match &op.body {
            None => body,
            Some(content) => {
                let empty = http_body::Body::size_hint(&body).exact() == Some(0);
                match content_plan(content, &parts.headers, empty) {
                    Ok(None) => body,
                    Ok(Some(validator)) => {
                        let cap = body.limit();
                        let bytes = read_whole(body, cap).await?;
                        check_json(&validator, &bytes, "body", &mut problems);
                        RequestBody::full(bytes)
                    }
                    Err(p) => {
                        problems.push(p);
                        body
                    }
                }
            }
        };
        if problems.is_empty() {
            return Ok(body);
        }
        Err(refusal(problems))
    }

    /// The problems of a request whose body is already read (`cargo bench --bench openapi`
    /// measures this: what [`Self::check_request`] does minus reading the body).
    pub fn check_buffered(
        &self,
        op: &Operation,
        parts: &Parts,
        vars: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<Problem> {
        let mut problems = self.check_params(op, parts, vars);
        if let Some(content) = &op.body {
            match content_plan(content, &parts.headers, body.is_empty()) {
                Ok(None) => {}
                Ok(Some(v)) => check_json(&v, body, "body", &mut problems),
                Err(p) => problems.push(p),
            }
        }
        problems
    }

    /// The parameter problems of a request.
    pub fn check_params(
        &self,
        op: &Operation,
        parts: &Parts,
        vars: &[(&str, &str)],
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut query: Option<Vec<(String, String)>> = None;
        let mut cookies: Option<Vec<(String, String)>> = None;
        for p in &op.params {
            let value = match p.place {
                Place::Path => vars
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map(|(_, v)| params::path_value(v, &p.name, p.style, p.explode, &p.shape))
                    .transpose(),
                Place::Query => {
                    let q = query.get_or_insert_with(|| {
                        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                            .into_owned()
                            .collect()
                    });
                    params::query_value(q, &p.name, p.style, p.explode, &p.shape)
                }
                Place::Header => {
                    let h = p.header.as_ref().and_then(|h| parts.headers.get(h));
                    match h.map(|v| v.to_str()) {
                        None => Ok(None),
                        Some(Ok(text)) => {
                            params::header_value(text, p.style, p.explode, &p.shape).map(Some)
                        }
                        Some(Err(_)) => Err("is not visible ASCII text".to_string()),
                    }
                }
                Place::Cookie => {
                    let c = cookies.get_or_insert_with(|| {
                        parts
                            .headers
                            .get_all(header::COOKIE)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .flat_map(params::cookies)
                            .collect()
                    });
                    params::query_value(c, &p.name, p.style, p.explode, &p.shape)
                }
            };
            // Named only when there is a problem (no formatting on the passing path).
            let location = || format!("{}.{}", p.place.as_str(), p.name);
            let pointer = || format!("/{}/{}", p.place.as_str(), crate::openapi::escape(&p.name));
            match value {
                Err(message) => problems.push(Problem {
                    pointer: pointer(),
                    location: location(),
                    message,
                }),
                Ok(None) if p.required => problems.push(Problem {
                    pointer: pointer(),
                    location: location(),
                    message: "is required".into(),
                }),
                Ok(None) => {}
                Ok(Some(v)) => {
                    // `is_valid` first: it stops at the first failure and builds no error.
                    if let Some(validator) = p.validator.as_ref().filter(|x| !x.is_valid(&v)) {
                        for e in validator.iter_errors(&v).take(MAX_PROBLEMS) {
                            let at = e.instance_path().to_string();
                            problems.push(Problem {
                                pointer: format!("{}{at}", pointer()),
                                location: format!("{}{at}", location()),
                                message: short(e.to_string()),
                            });
                        }
                    }
                }
            }
        }
        problems
    }

    /// Checks an upstream answer to `op`; the body to send on. A mismatch is counted and
    /// logged (`log`) or becomes a 502 (`enforce`).
    pub async fn check_response(
        &self,
        op: &OperationRef,
        route: &str,
        parts: &http::response::Parts,
        body: Result<Bytes, crate::body::UpstreamBody>,
        timeout: std::time::Duration,
        mismatch: impl FnOnce(),
    ) -> Result<Result<Bytes, crate::body::UpstreamBody>, GatewayError> {
        use http_body_util::BodyExt as _;
        let Some(operation) = self.operations.get(op.index) else {
            return Ok(body);
        };
        let verdict = match response_content(operation, parts.status.as_u16()) {
            Err(m) => Some(m),
            Ok(None) => None,
            Ok(Some(content)) => {
                let empty = match &body {
                    Ok(b) => b.is_empty(),
                    Err(i) => http_body::Body::size_hint(i).exact() == Some(0),
                };
                match content_plan(content, &parts.headers, empty) {
                    Err(p) => Some(format!("{}: {}", p.location, p.message)),
                    Ok(None) => None,
                    Ok(Some(validator)) => {
                        let bytes: Bytes = match body {
                            Ok(b) => b,
                            Err(incoming) => {
                                let len = http_body::Body::size_hint(&incoming).exact();
                                if len.is_none_or(|l| l > MAX_CHECKED_RESPONSE) {
                                    return Ok(Err(incoming));
                                }
                                match tokio::time::timeout(timeout, incoming.collect()).await {
                                    Ok(Ok(c)) => c.to_bytes(),
                                    Ok(Err(e)) => {
                                        return Err(GatewayError::UpstreamProtocol(e.to_string()))
                                    }
                                    Err(_) => return Err(GatewayError::UpstreamTimeout(timeout)),
                                }
                            }
                        };
                        let mut problems = Vec::new();
                        check_json(&validator, &bytes, "body", &mut problems);
                        let verdict = problems
                            .first()
                            .map(|p| format!("{}: {}", p.location, p.message));
                        return self.verdict(op, route, parts.status, verdict, Ok(bytes), mismatch);
                    }
                }
            }
        };
        self.verdict(op, route, parts.status, verdict, body, mismatch)
    }

    fn verdict<B>(
        &self,
        op: &OperationRef,
        route: &str,
        status: StatusCode,
        verdict: Option<String>,
        body: B,
        mismatch: impl FnOnce(),
    ) -> Result<B, GatewayError> {
        let Some(what) = verdict else {
            return Ok(body);
        };
        mismatch();
        tracing::warn!(
            route,
            operation = &*op.id,
            status = status.as_u16(),
            "upstream answer does not follow the OpenAPI spec: {what}"
        );
        match self.responses {
            ResponseMode::Enforce => Err(GatewayError::ResponseInvalid(what)),
            _ => Ok(body),
        }
    }

    /// The mock answer to `op` for a request with these headers.
    pub fn mock_answer(&self, op: &Operation, headers: &http::HeaderMap) -> Response<GatewayBody> {
        let (code, example) = headers
            .get("prefer")
            .and_then(|v| v.to_str().ok())
            .map_or((None, None), mock::prefer);
        let pick = match code {
            Some(c) => op.mocks.iter().find(|m| m.status == c),
            None => op
                .mocks
                .iter()
                .find(|m| (200..300).contains(&m.status))
                .or_else(|| op.mocks.first()),
        };
        let Some(m) = pick else {
            let mut resp = Response::new(GatewayBody::empty());
            *resp.status_mut() = if code.is_some() {
                StatusCode::NOT_IMPLEMENTED
            } else {
                StatusCode::NO_CONTENT
            };
            return resp;
        };
        let body = example
            .and_then(|name| m.examples.iter().find(|(n, _)| n == name))
            .map_or_else(|| m.body.clone(), |(_, b)| b.clone());
        let mut resp = Response::new(GatewayBody::full(body));
        *resp.status_mut() = StatusCode::from_u16(m.status).unwrap_or(StatusCode::OK);
        if let Some(ct) = m
            .content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        resp
    }
}

/// The 400 for these problems.
fn refusal(mut problems: Vec<Problem>) -> GatewayError {
    let n = problems.len();
    problems.truncate(MAX_PROBLEMS);
    let more = if n > MAX_PROBLEMS {
        format!(" ({MAX_PROBLEMS} listed)")
    } else {
        String::new()
    };
    GatewayError::RequestInvalid {
        message: format!(
            "the request does not follow the API description: {n} problem{}{more}",
            if n == 1 { "" } else { "s" }
        ),
        errors: problems,
    }
}

/// What to do with a body: nothing, read it and check it as JSON, or refuse its media type.
fn content_plan(
    content: &Content,
    headers: &http::HeaderMap,
    empty: bool,
) -> Result<Option<Validator>, Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if empty && ct.is_none() {
        if content.required {
            return Err(Problem {
                pointer: "/body".into(),
                location: "body".into(),
                message: "a body is required".into(),
            });
        }
        return Ok(None);
    }
    if content.media.is_empty() {
        return Ok(None);
    }
    let essence = ct
        .unwrap_or("application/octet-stream")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let found = content
        .media
        .iter()
        .find(|(m, _)| media_matches(m, &essence));
    match found {
        Some((_, v)) if empty && content.required => {
            let _ = v;
            Err(Problem {
                pointer: "/body".into(),
                location: "body".into(),
                message: "a body is required".into(),
            })
        }
        Some((_, v)) => Ok(v.clone()),
        None => Err(Problem {
            pointer: "/header/content-type".into(),
            location: "header.content-type".into(),
            message: format!(
                "`{essence}` is not one of the media types described: {}",
                content
                    .media
                    .iter()
                    .map(|(m, _)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Whether a spec's media range (`application/json`, `image/*`, `*/*`) covers `essence`.
fn media_matches(range: &str, essence: &str) -> bool {
    let range = range
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if range == "*/*" || range == essence {
        return true;
    }
    range
        .strip_suffix("/*")
        .is_some_and(|t| essence.split('/').next() == Some(t))
}

/// The documented answer for `status`: its content, `None` when it has none, or why the status
/// is not documented.
fn response_content(op: &Operation, status: u16) -> Result<Option<&Content>, String> {
    let find = |key: StatusKey| op.responses.iter().find(|(k, _)| *k == key);
    let found = find(StatusKey::Exact(status))
        .or_else(|| find(StatusKey::Class(status / 100)))
        .or_else(|| find(StatusKey::Default));
    match found {
        Some((_, c)) => Ok(c.as_ref()),
        None => Err(format!("status {status} is not described")),
    }
}

/// Parses `bytes` as JSON and checks it; problems at `place` (`body/items/0`).
fn check_json(
    validator: &jsonschema::Validator,
    bytes: &[u8],
    place: &str,
    problems: &mut Vec<Problem>,
) {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.push(Problem {
                pointer: format!("/{place}"),
                location: place.to_string(),
                message: format!("not valid JSON: {e}"),
            });
            return;
        }
    };
    if validator.is_valid(&value) {
        return;
    }
    for e in validator.iter_errors(&value).take(MAX_PROBLEMS + 1) {
        let at = e.instance_path().to_string();
        problems.push(Problem {
            pointer: format!("/{place}{at}"),
            location: format!("{place}{at}"),
            message: short(e.to_string()),
        });
    }
}

fn short(mut m: String) -> String {
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// Compiles the parts of operations, sharing validators of identical schemas.
struct Compiler<'a> {
    spec: &'a Spec,
    cache: HashMap<(String, bool), Validator>,
}

impl Compiler<'_> {
    fn operation(
        &mut self,
        op: &crate::openapi::Operation<'_>,
        responses: bool,
        mock: bool,
    ) -> Result<Operation, SpecError> {
        let method =
            Method::from_bytes(op.method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
        let id: Arc<str> = match op.operation_id {
            Some(id) => id.into(),
            None => format!("{method} {}", op.path).into(),
        };
        let mut params = Vec::new();
        for (at, p) in &op.parameters {
            params.push(self.param(at, p)?);
        }
        let body = match op.value.get("requestBody") {
            None => None,
            Some(b) => {
                let (bat, b) = self.spec.deref(child(&op.at, "requestBody"), b)?;
                Some(self.content(&bat, b, Direction::Request)?)
            }
        };
        let mut resps = Vec::new();
        let rat = child(&op.at, "responses");
        let empty = Value::Null;
        let all = op.value.get("responses").unwrap_or(&empty);
        if let Some(map) = all.as_object() {
            for (code, r) in map {
                let key = match code.as_str() {
                    "default" => StatusKey::Default,
                    c if c.len() == 3 && c[1..].eq_ignore_ascii_case("XX") => {
                        StatusKey::Class(c[..1].parse().unwrap_or(0))
                    }
                    c => match c.parse() {
                        Ok(n) => StatusKey::Exact(n),
                        Err(_) => {
                            return Err(self.spec.error(
                                &child(&rat, code),
                                "not a status code, `1XX`-`5XX` or `default`",
                            ))
                        }
                    },
                };
                let content = if responses {
                    let (at, r) = self.spec.deref(child(&rat, code), r)?;
                    Some(self.content(&at, r, Direction::Response)?)
                } else {
                    None
                };
                resps.push((key, content));
            }
        }
        Ok(Operation {
            id,
            method,
            path: op.path.to_string(),
            params,
            body,
            responses: resps,
            mocks: if mock {
                mock::responses(self.spec, &rat, all)
            } else {
                Vec::new()
            },
        })
    }

    fn param(&mut self, at: &At, p: &Value) -> Result<Param, SpecError> {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let place = Place::parse(p.get("in").and_then(Value::as_str).unwrap_or(""))
            .ok_or_else(|| self.spec.error(at, "unknown `in`"))?;
        let mut style = Style::parse(p.get("style").and_then(Value::as_str), place)
            .ok_or_else(|| self.spec.error(&child(at, "style"), "unknown style"))?;
        let explode = p
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == Style::Form);
        let (sat, schema) = match (p.get("schema"), p.get("content").and_then(Value::as_object)) {
            (Some(s), _) => (child(at, "schema"), Some(s)),
            (None, Some(c)) => {
                style = Style::Json;
                match c.iter().next() {
                    Some((m, media)) => {
                        let mat = child(&child(at, "content"), m);
                        (child(&mat, "schema"), media.get("schema"))
                    }
                    None => (at.clone(), None),
                }
            }
            (None, None) => (at.clone(), None),
        };
        let (shape, validator) = match schema {
            None => (Shape::Scalar(params::Prim::String), None),
            Some(s) => {
                let (dat, d) = self.spec.deref(sat.clone(), s)?;
                let items = d
                    .get("items")
                    .map(|i| self.spec.deref(child(&dat, "items"), i))
                    .transpose()?
                    .map(|(_, v)| v);
                let mut props = Vec::new();
                if let Some(ps) = d.get("properties").and_then(Value::as_object) {
                    for (n, v) in ps {
                        let pat = child(&child(&dat, "properties"), n);
                        props.push((n.clone(), self.spec.deref(pat, v).ok().map(|(_, v)| v)));
                    }
                }
                let shape = Shape::of(d, items, &props);
                (shape, Some(self.validator(&sat, s, Direction::Request)?))
            }
        };
        let header = (place == Place::Header)
            .then(|| HeaderName::from_bytes(name.as_bytes()).ok())
            .flatten();
        Ok(Param {
            required: place == Place::Path
                || p.get("required").and_then(Value::as_bool).unwrap_or(false),
            name,
            header,
            place,
            style,
            explode,
            shape,
            validator,
        })
    }

    fn content(
        &mut self,
        at: &At,
        body: &Value,
        direction: Direction,
    ) -> Result<Content, SpecError> {
        let mut media = Vec::new();
        if let Some(map) = body.get("content").and_then(Value::as_object) {
            for (m, v) in map {
                let mat = child(&child(at, "content"), m);
                let validator = match v.get("schema") {
                    Some(s) if is_json_media(m) => {
                        Some(self.validator(&child(&mat, "schema"), s, direction)?)
                    }
                    _ => None,
                };
                media.push((m.to_ascii_lowercase(), validator));
            }
        }
        Ok(Content {
            required: body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            media,
        })
    }

    fn validator(
        &mut self,
        at: &At,
        schema: &Value,
        direction: Direction,
    ) -> Result<Validator, SpecError> {
        let bundled = Bundle::new(self.spec, direction).schema(at, schema)?;
        let key = (
            serde_json::to_string(&bundled).unwrap_or_default(),
            direction == Direction::Request,
        );
        if let Some(v) = self.cache.get(&key) {
            return Ok(Arc::clone(v));
        }
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&bundled)
            .map_err(|e| self.spec.error(at, format!("not a valid schema: {e}")))?;
        let v = Arc::new(v);
        self.cache.insert(key, Arc::clone(&v));
        Ok(v)
    }
}
