//! Value templates: `x-${header.x-tenant}-${path.id}`, parsed once at config load.
//!
//! Owns the template syntax and rendering against a request. A reference to something the
//! request does not carry (a missing header, query parameter, capture, an anonymous consumer,
//! no token) renders as the empty string: a transform never fails a request.
//!
//! Syntax: `${source}` where source is `header.NAME`, `path.CAPTURE`, `query.NAME`,
//! `client_ip`, `request_id`, `consumer.name`, `consumer.id` or `jwt.claims.NAME` (dotted
//! names walk nested claims). `$$` is a literal `$`; any other `$` is literal too.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

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
                parts.push(parse_ref(&r[..end], captures)?);
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
            }
        }
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

fn parse_ref(r: &str, captures: &[String]) -> Result<Part, String> {
    let r = r.trim();
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
                facts: &f
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
}
