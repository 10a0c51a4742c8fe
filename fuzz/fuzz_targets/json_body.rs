//! JSON body operations (`unwrap`, `remove`, `rename`, `set`, `add`, `wrap` by JSON pointer)
//! on any body, then JSON → XML as `to_xml` sends it.
//!
//! Invariants besides "no panic": the result serializes; `wrap: K` gives a one-key object `K`;
//! the XML made from any JSON value is a document that the XML → JSON side reads back.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico::policy::transform::json::{JsonOps, RawJsonOps};
use portico::policy::transform::xml::{json_to_xml, xml_to_json};
use portico::policy::transform::{Facts, RequestData};
use serde_json::{json, Map, Value};

/// One operation per line, then an empty line, then the body:
/// `unwrap /p`, `remove /p`, `rename /from /to`, `set /p VALUE`, `add /p VALUE`, `wrap KEY`,
/// `capture NAME=VALUE`. A VALUE that is not JSON is a string (so a template).
#[derive(Default)]
struct Input<'a> {
    unwrap: Option<&'a str>,
    remove: Vec<&'a str>,
    rename: Vec<(&'a str, &'a str)>,
    set: Vec<(&'a str, &'a str)>,
    add: Vec<(&'a str, &'a str)>,
    wrap: Option<&'a str>,
    captures: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let split = data.windows(2).position(|w| w == b"\n\n")?;
    let ops = std::str::from_utf8(&data[..split]).ok()?;
    let mut input = Input {
        body: &data[split + 2..],
        ..Input::default()
    };
    for line in ops.split('\n') {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let pair = || rest.split_once(' ').unwrap_or((rest, ""));
        match op {
            "unwrap" => input.unwrap = Some(rest),
            "remove" => input.remove.push(rest),
            "rename" => input.rename.push(pair()),
            "set" => input.set.push(pair()),
            "add" => input.add.push(pair()),
            "wrap" => input.wrap = Some(rest),
            "capture" => input
                .captures
                .push(rest.split_once('=').unwrap_or((rest, ""))),
            _ => {}
        }
    }
    Some(input)
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else {
        return;
    };
    // As the proxy reads a body: the whole of it, refused when it is not JSON.
    let Ok(body) = serde_json::from_slice::<Value>(input.body) else {
        return;
    };
    let mut raw = Map::new();
    if let Some(u) = input.unwrap {
        raw.insert("unwrap".into(), json!(u));
    }
    raw.insert("remove".into(), json!(input.remove));
    let pairs = |list: &[(&str, &str)], parse: bool| -> Map<String, Value> {
        list.iter()
            .map(|(k, v)| {
                let v = if parse { value(v) } else { json!(v) };
                (k.to_string(), v)
            })
            .collect()
    };
    raw.insert("rename".into(), Value::Object(pairs(&input.rename, false)));
    raw.insert("set".into(), Value::Object(pairs(&input.set, true)));
    raw.insert("add".into(), Value::Object(pairs(&input.add, true)));
    if let Some(w) = input.wrap {
        raw.insert("wrap".into(), json!(w));
    }
    let raw: RawJsonOps =
        serde_json::from_value(Value::Object(raw)).expect("ops of the right shape");
    let capture_names: Vec<String> = input.captures.iter().map(|(k, _)| k.to_string()).collect();
    let mut errors = Vec::new();
    let ops = JsonOps::build(&raw, "body", &capture_names, &mut errors);
    if !errors.is_empty() {
        // The config would be refused; the operations are never applied.
        return;
    }

    let captures: Vec<(Box<str>, Box<str>)> = input
        .captures
        .iter()
        .map(|(k, v)| (Box::from(*k), Box::from(*v)))
        .collect();
    let request_id = HeaderValue::from_static("fuzz-request");
    let facts = Facts {
        captures: &captures,
        query: Some("a=1&b=two"),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        request_id: &request_id,
        identity: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    let data = RequestData {
        headers: &headers,
        facts: &facts,
        calls: &[],
        encode_calls: false,
    };
    let _ = ops.uses_captures();
    let _ = ops.uses_templates();
    let out = ops.apply(body.clone(), Some(&data));
    let without_data = ops.apply(body, None);
    if let Some(w) = input.wrap {
        let obj = out.as_object().expect("a wrapped body is an object");
        assert_eq!(obj.len(), 1);
        assert!(obj.contains_key(w));
        assert!(without_data.as_object().is_some_and(|o| o.contains_key(w)));
    }
    let bytes = serde_json::to_vec(&out).expect("the result serializes");
    // A long pointer in the config (`set: {/a/b/c/...}`) may nest the body deeper than readers
    // accept (serde_json: 128, the XML reader: 256); that is the config's doing, not a request's.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(again) => assert_eq!(again, out),
        Err(e) => assert!(e.to_string().contains("recursion limit"), "{e}"),
    }

    let xml = json_to_xml(&out, "request");
    if let Err(e) = xml_to_json(xml.as_bytes()) {
        assert!(
            e.contains("nested deeper than"),
            "json_to_xml made XML its own reader refuses ({e}): {xml}"
        );
    }
});
