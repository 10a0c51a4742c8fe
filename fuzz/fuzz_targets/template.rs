//! Transform templates (`x-${header.x-tenant}-${path.id}`, `${calls.user.body.id}`): parsing
//! any text and rendering it against any request data.
//!
//! Invariants besides "no panic": a template without references renders as its literal text;
//! text without `$` parses to itself; rendering is deterministic.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use portico::policy::auth::Identity;
use portico::policy::transform::{CallAnswer, Facts, RequestData, Template};

/// The template on the first line; then one fact per line, by its first letter:
/// `h name: value` (header), `c name=value` (capture), `q query`, `i ip`, `r request id`,
/// `j {claims}`, `u consumer`, `n` (anonymous), `a name status {body}` (a call's answer),
/// `h +name: value` (a header of that answer),
/// `a name -` (an unanswered call), `e` (percent-encode call values).
#[derive(Default)]
struct Input<'a> {
    template: &'a str,
    captures: Vec<(&'a str, &'a str)>,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
    ip: Option<&'a str>,
    request_id: &'a [u8],
    claims: Option<&'a str>,
    consumer: Option<&'a str>,
    anonymous: bool,
    calls: Vec<(&'a str, Option<Call<'a>>)>,
    encode_calls: bool,
}

struct Call<'a> {
    status: u16,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a str,
}

fn parse(text: &str) -> Input<'_> {
    let mut lines = text.split('\n');
    let mut input = Input {
        template: lines.next().unwrap_or(""),
        ..Input::default()
    };
    for line in lines {
        let (Some(kind), Some(rest)) = (line.get(..1), line.get(1..)) else {
            continue;
        };
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match kind {
            "h" => {
                if let Some((n, v)) = rest.split_once(':') {
                    let v = v.trim_start().as_bytes();
                    // A header line right after a call's answer belongs to that answer.
                    match input.calls.last_mut() {
                        Some((_, Some(call))) if n.starts_with('+') => {
                            call.headers.push((&n[1..], v))
                        }
                        _ => input.headers.push((n, v)),
                    }
                }
            }
            "c" => input
                .captures
                .push(rest.split_once('=').unwrap_or((rest, ""))),
            "q" => input.query = Some(rest),
            "i" => input.ip = Some(rest),
            "r" => input.request_id = rest.as_bytes(),
            "j" => input.claims = Some(rest),
            "u" => input.consumer = Some(rest),
            "n" => input.anonymous = true,
            "e" => input.encode_calls = true,
            "a" => {
                let mut f = rest.splitn(3, ' ');
                let name = f.next().unwrap_or("");
                let call = match (f.next(), f.next()) {
                    (Some(status), body) if status != "-" => Some(Call {
                        status: status.parse().unwrap_or(200),
                        headers: Vec::new(),
                        body: body.unwrap_or("null"),
                    }),
                    _ => None,
                };
                input.calls.push((name, call));
            }
            _ => {}
        }
    }
    input
}

fn header_map(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = parse(text);
    let capture_names: Vec<String> = input.captures.iter().map(|(k, _)| k.to_string()).collect();
    let call_names: Vec<&str> = input.calls.iter().map(|(name, _)| *name).collect();

    if !input.template.contains('$') {
        let t = Template::parse(input.template, &capture_names).expect("text without `$`");
        assert_eq!(t.as_literal(), Some(input.template));
    }
    let plain = Template::parse(input.template, &capture_names);
    let template = match Template::parse_in(input.template, &capture_names, &call_names) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };

    let captures: Vec<(Box<str>, Box<str>)> = input
        .captures
        .iter()
        .map(|(k, v)| (Box::from(*k), Box::from(*v)))
        .collect();
    let request_id = HeaderValue::from_bytes(input.request_id)
        .unwrap_or_else(|_| HeaderValue::from_static("rid"));
    let claims = input
        .claims
        .and_then(|c| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(c).ok());
    let identity = Identity {
        consumer: None,
        name: input.consumer.map(Arc::from),
        anonymous: input.anonymous,
        headers: Vec::new(),
        claims: claims.map(Arc::new),
    };
    let facts = Facts {
        captures: &captures,
        query: input.query,
        client_ip: input
            .ip
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        request_id: &request_id,
        identity: Some(&identity),
    };
    let calls: Vec<Option<CallAnswer>> = input
        .calls
        .iter()
        .map(|(_, c)| {
            let c = c.as_ref()?;
            Some(CallAnswer {
                status: StatusCode::from_u16(c.status).unwrap_or(StatusCode::OK),
                headers: header_map(&c.headers),
                body: serde_json::from_str(c.body).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    let headers = header_map(&input.headers);
    let data = RequestData {
        headers: &headers,
        facts: &facts,
        calls: &calls,
        encode_calls: input.encode_calls,
    };

    let out = template.render(&data);
    assert_eq!(
        out,
        template.render(&data),
        "rendering is not deterministic"
    );
    if let Some(literal) = template.as_literal() {
        assert_eq!(out, literal);
    }
    let _ = template.missing_call_value(&calls);
    for call in template.call_refs() {
        assert!(call < call_names.len());
    }
    let _ = template.uses_captures();
    // Outside an aggregate the same text either parses the same way or fails on `${calls.`.
    if let Ok(plain) = plain {
        let _ = plain.render(&data);
    }
});
