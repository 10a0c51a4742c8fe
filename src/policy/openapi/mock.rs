//! Mock answers: made once, at compile time, from each response's `example`, `examples` or, when
//! there is none, a minimal instance of its schema; picked per request by `Prefer: code=404,
//! example=name` (the header Prism and Stoplight use).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::openapi::{child, At, Spec};

/// How deep a generated instance goes (cycles end here).
const MAX_DEPTH: usize = 8;

/// One answer of an operation: a status with its bodies.
#[derive(Debug)]
pub struct MockResponse {
    /// The status (`default` is answered as 200, or 500 when 2xx answers exist).
    pub status: u16,
    /// The media type answered, when the response has content.
    pub content_type: Option<String>,
    /// The body when no example is named.
    pub body: Bytes,
    /// Named examples (`examples: {name: {value}}`).
    pub examples: Vec<(String, Bytes)>,
}

/// The mock answers of one operation, from its `responses` object at `at`.
pub fn responses(spec: &Spec, at: &At, responses: &Value) -> Vec<MockResponse> {
    let mut out = Vec::new();
    let Some(map) = responses.as_object() else {
        return out;
    };
    let has_2xx = map.keys().any(|k| k.starts_with('2'));
    for (code, resp) in map {
        let status = match code.as_str() {
            "default" if has_2xx => 500,
            "default" => 200,
            c => match c.replace(['X', 'x'], "0").parse::<u16>() {
                Ok(s) if (100..=599).contains(&s) => s,
                _ => continue,
            },
        };
        let Ok((rat, resp)) = spec.deref(child(at, code), resp) else {
            continue;
        };
        let content = resp.get("content").and_then(Value::as_object);
        let Some((media, mat, m)) = content.and_then(|c| pick_media(spec, &rat, c)) else {
            out.push(MockResponse {
                status,
                content_type: None,
                body: Bytes::new(),
                examples: Vec::new(),
            });
            continue;
        };
        let mut examples = Vec::new();
        if let Some(ex) = m.get("examples").and_then(Value::as_object) {
            for (name, e) in ex {
                let eat = child(&child(&mat, "examples"), name);
                if let Ok((_, e)) = spec.deref(eat, e) {
                    if let Some(v) = e.get("value") {
                        examples.push((name.clone(), render(&media, v)));
                    }
                }
            }
        }
        let body = if let Some(v) = m.get("example") {
            render(&media, v)
        } else if let Some((_, first)) = examples.first() {
            first.clone()
        } else if let Some(schema) = m.get("schema") {
            let v = generate(spec, &child(&mat, "schema"), schema, 0);
            render(&media, &v)
        } else {
            Bytes::new()
        };
        out.push(MockResponse {
            status,
            content_type: Some(media),
            body,
            examples,
        });
    }
    out.sort_by_key(|r| r.status);
    out
}

/// The JSON media type if there is one, else the first.
fn pick_media<'a>(
    spec: &'a Spec,
    at: &At,
    content: &'a Map<String, Value>,
) -> Option<(String, At, &'a Value)> {
    let (name, m) = content
        .iter()
        .find(|(k, _)| super::is_json_media(k))
        .or_else(|| content.iter().next())?;
    let mat = child(&child(at, "content"), name);
    let (mat, m) = spec.deref(mat, m).ok()?;
    Some((name.clone(), mat, m))
}

fn render(media: &str, v: &Value) -> Bytes {
    match v {
        Value::String(s) if !super::is_json_media(media) => Bytes::from(s.clone()),
        v => Bytes::from(serde_json::to_vec_pretty(v).unwrap_or_default()),
    }
}

/// A small instance of the schema: its example or default where it has one, required
/// properties only, the least items and length allowed.
pub fn generate(spec: &Spec, at: &At, schema: &Value, depth: usize) -> Value {
    let Ok((at, schema)) = spec.deref(at.clone(), schema) else {
        return Value::Null;
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    for key in ["example", "default", "const"] {
        if let Some(v) = schema.get(key) {
            return v.clone();
        }
    }
    if let Some(v) = schema
        .get("examples")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return v.clone();
    }
    if let Some(v) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return v.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return generate(spec, &child(&child(&at, key), "0"), first, depth + 1);
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        let mut merged = Map::new();
        for (i, s) in all.iter().enumerate() {
            match generate(
                spec,
                &child(&child(&at, "allOf"), &i.to_string()),
                s,
                depth + 1,
            ) {
                Value::Object(m) => merged.extend(m),
                other if all.len() == 1 => return other,
                _ => {}
            }
        }
        return Value::Object(merged);
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ if schema.get("items").is_some() => "array",
        _ => "null",
    };
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    match ty {
        "object" => {
            let mut out = Map::new();
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    if required.contains(&name.as_str()) {
                        let pat = child(&child(&at, "properties"), name);
                        out.insert(name.clone(), generate(spec, &pat, p, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = num("minItems").unwrap_or(0.0) as usize;
            let item = schema.get("items").map_or(Value::Null, |i| {
                generate(spec, &child(&at, "items"), i, depth + 1)
            });
            Value::Array(vec![item; n.min(16)])
        }
        "integer" => Value::from(low(schema).map_or(0, |(m, exclusive)| {
            m.floor() as i64 + i64::from(exclusive || m.fract() != 0.0)
        })),
        "number" => Value::from(low(schema).map_or(
            0.0,
            |(m, exclusive)| {
                if exclusive {
                    m + 1.0
                } else {
                    m
                }
            },
        )),
        "boolean" => Value::Bool(false),
        "string" => Value::String(string_for(schema)),
        _ => Value::Null,
    }
}

/// The schema's lower bound and whether it is exclusive (3.1's numeric `exclusiveMinimum`, or
/// 3.0's boolean one beside `minimum`).
fn low(schema: &Value) -> Option<(f64, bool)> {
    let min = schema.get("minimum").and_then(Value::as_f64);
    match schema.get("exclusiveMinimum") {
        Some(Value::Bool(true)) => min.map(|m| (m, true)),
        Some(v) => match (v.as_f64(), min) {
            (Some(e), Some(m)) if m > e => Some((m, false)),
            (Some(e), _) => Some((e, true)),
            (None, _) => min.map(|m| (m, false)),
        },
        None => min.map(|m| (m, false)),
    }
}

fn string_for(schema: &Value) -> String {
    let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
    let s = match format {
        "date-time" => "1970-01-01T00:00:00Z",
        "date" => "1970-01-01",
        "time" => "00:00:00Z",
        "email" => "user@example.com",
        "uuid" => "00000000-0000-0000-0000-000000000000",
        "uri" | "url" => "https://example.com/",
        "hostname" => "example.com",
        "ipv4" => "192.0.2.1",
        "ipv6" => "2001:db8::1",
        _ => "",
    };
    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let mut s = s.to_string();
    while s.len() < min.min(256) {
        s.push('x');
    }
    s
}

/// `Prefer: code=404, example=name` (RFC 7240 preferences; either may be missing).
pub fn prefer(value: &str) -> (Option<u16>, Option<&str>) {
    let (mut code, mut example) = (None, None);
    for pref in value.split([',', ';']) {
        let Some((k, v)) = pref.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "code" => code = v.parse().ok(),
            "example" => example = Some(v),
            _ => {}
        }
    }
    (code, example)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_numbers_respect_exclusive_minimums() {
        let mut spec = Spec::empty();
        spec.files.push(crate::openapi::File {
            path: "t".into(),
            value: Value::Null,
        });
        let at = At {
            file: 0,
            pointer: String::new(),
        };
        let gen = |s: Value| generate(&spec, &at, &s, 0);
        assert_eq!(
            gen(serde_json::json!({"type": "integer", "exclusiveMinimum": 0})),
            1
        );
        assert_eq!(
            gen(serde_json::json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true})),
            1
        );
        assert_eq!(
            gen(serde_json::json!({"type": "number", "minimum": 2.5})),
            2.5
        );
        assert_eq!(
            gen(serde_json::json!({"type": "integer", "minimum": 2.5})),
            3
        );
    }

    #[test]
    fn prefer_names_a_code_and_an_example() {
        assert_eq!(
            prefer("code=404, example=missing"),
            (Some(404), Some("missing"))
        );
        assert_eq!(prefer("example=\"a\""), (None, Some("a")));
        assert_eq!(prefer("respond-async"), (None, None));
    }
}
