//! Value templates: `x-${header.x-tenant}-${path.id}`, parsed once at config load.
//!
//! Owns the template syntax and rendering against a request. A reference to something the
//! request does not carry (a missing header, query parameter, capture, an anonymous consumer,
//! no token) renders as the empty string: a transform never fails a request.
//!
//! Syntax: `${source}` where source is `header.NAME`, `path.CAPTURE`, `query.NAME`,
//! `client_ip`, `request_id`, `consumer.name`, `consumer.id` or `jwt.claims.NAME` (dotted
//! names walk nested claims). `$$` is a literal `$`; any other `$` is literal too.
//!
//! Inside an `aggregate` policy a template may also read what an earlier call answered:
//! `${calls.NAME.body.a.b.0}` (a dotted path into its JSON body, numbers index arrays),
//! `${calls.NAME.headers.HEADER}` and `${calls.NAME.status}`. Unlike request data, such a value
//! must be there: the aggregate checks with [`Template::missing_call_value`] before rendering
//! and fails the call instead of sending it with an empty id.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use crate::policy::auth::Identity;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(Box<str>),
    Header(HeaderName),
    Path(Box<str>),
    Query(Box<str>),
    ClientIp,
    RequestId,
    ConsumerName,
    ConsumerId,
    Claim(Box<str>),
    /// `${calls.NAME...}`: `call` indexes the aggregate's calls; `text` is the reference as
    /// written, for error messages.
    Call {
        call: usize,
        field: CallField,
        text: Box<str>,
    },
}

/// What a `${calls.NAME...}` reference reads from a call's answer.
#[derive(Debug, Clone, PartialEq)]
enum CallField {
    /// Dotted path into the JSON body (empty: the whole body).
    Body(Vec<Box<str>>),
    Header(HeaderName),
    Status,
}

/// What an earlier aggregate call answered, for `${calls.NAME...}`.
#[derive(Debug, Clone)]
pub struct CallAnswer {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The parsed JSON body.
    pub body: Value,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template can read from a request: its headers and the [`Facts`] around them.
pub struct RequestData<'a> {
    /// The request headers as they are when the transform runs.
    pub headers: &'a HeaderMap,
    /// Everything else.
    pub facts: &'a Facts<'a>,
    /// Answers of an aggregate's calls by index (`None`: not answered). Empty elsewhere.
    pub calls: &'a [Option<CallAnswer>],
    /// Percent-encode values taken from call answers: the template builds a URI, and an id
    /// from a backend must not be able to add path segments or query parameters.
    pub encode_calls: bool,
}

/// What a template can read from a request besides its headers.
pub struct Facts<'a> {
    /// Route captures (`{id}` in the route's path).
    pub captures: &'a [(Box<str>, Box<str>)],
    /// The raw query string of the client's request.
    pub query: Option<&'a str>,
    /// The client IP (after `trusted_proxies`).
    pub client_ip: IpAddr,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// Who authenticated, if anyone.
    pub identity: Option<&'a Identity>,
}

impl Template {
    /// Parses `text`; `captures` are the capture names of the route it applies to (a
    /// `${path.x}` naming no capture is an error, it would always be empty).
    pub fn parse(text: &str, captures: &[String]) -> Result<Self, String> {
        Self::parse_in(text, captures, &[])
    }

    /// Parses `text` in an aggregate whose calls are named `calls` (so `${calls.NAME...}` is
    /// allowed and resolved to a call index).
    pub fn parse_in(text: &str, captures: &[String], calls: &[&str]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                literal.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("unclosed `${{` in template `{text}`"))?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal).into()));
                }
                parts.push(parse_ref(&r[..end], captures, calls)?);
                rest = &r[end + 1..];
            } else {
                literal.push('$');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        Ok(Self { parts })
    }

    /// The template's text if it has no references (rendered once at load).
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders against a request, appending to `out`.
    pub fn render_into(&self, data: &RequestData<'_>, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Header(name) => {
                    if let Some(v) = data.headers.get(name).and_then(|v| v.to_str().ok()) {
                        out.push_str(v);
                    }
                }
                Part::Path(name) => {
                    if let Some((_, v)) = data.facts.captures.iter().find(|(k, _)| **k == **name) {
                        out.push_str(v);
                    }
                }
                Part::Query(name) => {
                    if let Some(q) = data.facts.query {
                        if let Some((_, v)) =
                            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == &**name)
                        {
                            out.push_str(&v);
                        }
                    }
                }
                Part::ClientIp => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "{}", data.facts.client_ip);
                }
                Part::RequestId => out.push_str(data.facts.request_id.to_str().unwrap_or("")),
                Part::ConsumerName => {
                    if let Some(n) = data.facts.identity.and_then(|i| i.name.as_deref()) {
                        out.push_str(n);
                    }
                }
                Part::ConsumerId => {
                    if let Some(n) = data
                        .facts
                        .identity
                        .and_then(|i| i.consumer.as_ref())
                        .and_then(|c| c.id.as_deref())
                    {
                        out.push_str(n);
                    }
                }
                Part::Claim(name) => {
                    if let Some(v) = data.facts.identity.and_then(|i| i.claim_text(name)) {
                        out.push_str(&v);
                    }
                }
                Part::Call { call, field, .. } => {
                    let answer = data.calls.get(*call).and_then(Option::as_ref);
                    if let Some(v) = answer.and_then(|a| call_value(a, field)) {
                        if data.encode_calls {
                            percent_encode_into(&v, out);
                        } else {
                            out.push_str(&v);
                        }
                    }
                }
            }
        }
    }

    /// The calls this template reads answers from (indexes into the aggregate's calls).
    pub fn call_refs(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Call { call, .. } => Some(*call),
            _ => None,
        })
    }

    /// The first `${calls...}` reference with no value in `calls` (an unanswered call, a
    /// missing or null field), as written.
    pub fn missing_call_value(&self, calls: &[Option<CallAnswer>]) -> Option<&str> {
        self.parts.iter().find_map(|p| match p {
            Part::Call { call, field, text } => {
                let answer = calls.get(*call).and_then(Option::as_ref);
                answer
                    .and_then(|a| call_value(a, field))
                    .is_none()
                    .then_some(&**text)
            }
            _ => None,
        })
    }

    /// Renders against a request.
    pub fn render(&self, data: &RequestData<'_>) -> String {
        let mut out = String::new();
        self.render_into(data, &mut out);
        out
    }

    /// Whether the template reads route captures.
    pub fn uses_captures(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Path(_)))
    }
}

/// A call answer's value as text: strings as they are, numbers and booleans printed, objects
/// and arrays as compact JSON; `None` for a missing or null value.
fn call_value(answer: &CallAnswer, field: &CallField) -> Option<String> {
    match field {
        CallField::Status => Some(answer.status.as_str().to_string()),
        CallField::Header(name) => answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        CallField::Body(path) => {
            let mut v = &answer.body;
            for seg in path {
                v = match v {
                    Value::Object(m) => m.get(&**seg)?,
                    Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(v: &str, out: &mut String) {
    use std::fmt::Write as _;
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `calls.NAME.body.a.b`, `calls.NAME.headers.X`, `calls.NAME.status`.
fn parse_call_ref(r: &str, rest: &str, calls: &[&str]) -> Result<Part, String> {
    let (name, field) = rest.split_once('.').unwrap_or((rest, ""));
    let call = calls.iter().position(|c| *c == name).ok_or_else(|| {
        format!(
            "`${{{r}}}`: no call named `{name}` in this aggregate (calls: {})",
            calls.join(", ")
        )
    })?;
    let field = if field == "status" {
        CallField::Status
    } else if field == "body" {
        CallField::Body(Vec::new())
    } else if let Some(path) = field.strip_prefix("body.") {
        if path.split('.').any(str::is_empty) {
            return Err(format!("`${{{r}}}`: empty segment in the body path"));
        }
        CallField::Body(path.split('.').map(Into::into).collect())
    } else if let Some(h) = field.strip_prefix("headers.") {
        CallField::Header(
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("`{h}` in `${{{r}}}` is not a valid header name"))?,
        )
    } else {
        return Err(format!(
            "`${{{r}}}`: expected calls.{name}.body.PATH, calls.{name}.headers.NAME or \
             calls.{name}.status"
        ));
    };
    Ok(Part::Call {
        call,
        field,
        text: format!("${{{r}}}").into(),
    })
}

fn parse_ref(r: &str, captures: &[String], calls: &[&str]) -> Result<Part, String> {
    let r = r.trim();
    if let (false, Some(rest)) = (calls.is_empty(), r.strip_prefix("calls.")) {
        return parse_call_ref(r, rest, calls);
    }
    let part = match r {
        "client_ip" => Part::ClientIp,
        "request_id" => Part::RequestId,
        "consumer.name" => Part::ConsumerName,
        "consumer.id" => Part::ConsumerId,
        _ => {
            if let Some(h) = r.strip_prefix("header.") {
                Part::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("`{h}` in `${{{r}}}` is not a valid header name"))?,
                )
            } else if let Some(c) = r.strip_prefix("path.") {
                if !captures.iter().any(|have| have == c) {
                    return Err(format!(
                        "`${{{r}}}`: the route's path has no capture `{{{c}}}`"
                    ));
                }
                Part::Path(c.into())
            } else if let Some(q) = r.strip_prefix("query.").filter(|q| !q.is_empty()) {
                Part::Query(q.into())
            } else if let Some(c) = r.strip_prefix("jwt.claims.").filter(|c| !c.is_empty()) {
                Part::Claim(c.into())
            } else {
                return Err(format!(
                    "unknown reference `${{{r}}}`; expected header.NAME, path.CAPTURE, \
                     query.NAME, client_ip, request_id, consumer.name, consumer.id or \
                     jwt.claims.NAME"
                ));
            }
        }
    };
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(captures: &'a [(Box<str>, Box<str>)], rid: &'a HeaderValue) -> Facts<'a> {
        Facts {
            captures,
            query: Some("page=3&q=a%20b"),
            client_ip: "10.1.2.3".parse().unwrap(),
            request_id: rid,
            identity: None,
        }
    }

    #[test]
    fn renders_every_source_and_missing_ones_as_empty() {
        let caps = vec!["id".to_string()];
        let t = Template::parse(
            "t=${header.x-tenant};id=${path.id};p=${query.page};q=${query.q};ip=${client_ip};\
             r=${request_id};c=${consumer.name};s=${jwt.claims.sub};m=${header.missing};$$5;$x",
            &caps,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("acme"));
        let c = vec![("id".into(), "42".into())];
        let rid = HeaderValue::from_static("rid1");
        let f = facts(&c, &rid);
        assert_eq!(
            t.render(&RequestData {
                headers: &h,
                facts: &f,
                calls: &[],
                encode_calls: false,
            }),
            "t=acme;id=42;p=3;q=a b;ip=10.1.2.3;r=rid1;c=;s=;m=;$5;$x"
        );
        assert!(t.uses_captures());
        assert_eq!(
            Template::parse("plain", &caps).unwrap().as_literal(),
            Some("plain")
        );
    }

    #[test]
    fn bad_templates_are_rejected_with_a_reason() {
        let e = Template::parse("${nope}", &[]).unwrap_err();
        assert!(e.contains("unknown reference `${nope}`"), "{e}");
        let e = Template::parse("${path.id}", &[]).unwrap_err();
        assert!(e.contains("no capture `{id}`"), "{e}");
        let e = Template::parse("${header.a b}", &[]).unwrap_err();
        assert!(e.contains("not a valid header name"), "{e}");
        let e = Template::parse("x${header.a", &[]).unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
    }

    #[test]
    fn call_references_read_answers_and_encode_for_uris() {
        let calls = ["user", "orders"];
        let t = Template::parse_in(
            "/o/${calls.user.body.id}?t=${calls.user.body.tags.1}&s=${calls.user.status}\
             &e=${calls.user.headers.etag}&all=${calls.user.body.tags}",
            &[],
            &calls,
        )
        .unwrap();
        assert_eq!(t.call_refs().collect::<Vec<_>>(), vec![0, 0, 0, 0, 0]);
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        let answers = vec![
            Some(CallAnswer {
                status: StatusCode::OK,
                headers,
                body: serde_json::json!({"id": "a/b c", "tags": ["x", 7]}),
            }),
            None,
        ];
        assert_eq!(t.missing_call_value(&answers), None);
        let h = HeaderMap::new();
        let rid = HeaderValue::from_static("r");
        let f = facts(&[], &rid);
        let mut d = RequestData {
            headers: &h,
            facts: &f,
            calls: &answers,
            encode_calls: true,
        };
        assert_eq!(
            t.render(&d),
            "/o/a%2Fb%20c?t=7&s=200&e=%22v1%22&all=%5B%22x%22%2C7%5D"
        );
        d.encode_calls = false;
        assert_eq!(t.render(&d), "/o/a/b c?t=7&s=200&e=\"v1\"&all=[\"x\",7]");
        // A field that is absent or null, or an unanswered call, has no value.
        let missing = Template::parse_in("${calls.user.body.nope}", &[], &calls).unwrap();
        assert_eq!(
            missing.missing_call_value(&answers),
            Some("${calls.user.body.nope}")
        );
        let unanswered = Template::parse_in("${calls.orders.status}", &[], &calls).unwrap();
        assert!(unanswered.missing_call_value(&answers).is_some());
    }

    #[test]
    fn bad_call_references_are_rejected_with_a_reason() {
        let calls = ["user"];
        let e = Template::parse_in("${calls.nobody.body.id}", &[], &calls).unwrap_err();
        assert!(e.contains("no call named `nobody`"), "{e}");
        let e = Template::parse_in("${calls.user.bdy.id}", &[], &calls).unwrap_err();
        assert!(e.contains("expected calls.user.body.PATH"), "{e}");
        let e = Template::parse_in("${calls.user.body..id}", &[], &calls).unwrap_err();
        assert!(e.contains("empty segment"), "{e}");
        // Outside an aggregate, `calls.` is no reference at all.
        let e = Template::parse("${calls.user.status}", &[]).unwrap_err();
        assert!(e.contains("unknown reference"), "{e}");
    }
}
