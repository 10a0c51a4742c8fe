//! JSON body transforms by JSON pointer (RFC 6901): add, set, remove, rename, wrap and unwrap.
//!
//! Owns the operations on a parsed `serde_json::Value` and deciding which bodies qualify (a
//! JSON content type, no content coding, a known length under the cap). Reading and writing
//! the body, and correcting `Content-Length`, is the proxy's side (`policy/transform/mod.rs`).

use std::collections::BTreeMap;

use http::{header, HeaderMap};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::template::{RequestData, Template};
use crate::spec::units::ByteSize;
use crate::spec::ConfigError;

/// What to do with a JSON body over `max_bytes` (or of unknown length).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnOversize {
    /// Pass it on untouched, streaming (default).
    #[default]
    Pass,
    /// Refuse the request with 413 (request bodies only; a response is always passed).
    Reject,
}

/// `body: {set: {/meta/source: gateway}, remove: [/password], wrap: data}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJsonOps {
    /// Replace the body by the value at this pointer (`/data`); applied first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwrap: Option<String>,
    /// Pointers to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// `/old: /new`: move a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Set the value at a pointer (creating missing objects). String values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, Value>,
    /// Like `set`, only where nothing is there yet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, Value>,
    /// Put the (transformed) body under this key: `{"KEY": body}`; applied last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap: Option<String>,
    /// Largest body transformed (it is buffered whole). Default 1MiB, at most 64MiB.
    #[serde(default = "default_max", skip_serializing_if = "is_default_max")]
    pub max_bytes: ByteSize,
    /// Bodies over `max_bytes` or of unknown length: `pass` (default) or `reject` (413).
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_oversize: OnOversize,
}

/// The largest `max_bytes`: each request or response being transformed holds this much.
const MAX_BUFFERED: u64 = 64 * 1024 * 1024;

fn default_max() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn is_default_max(b: &ByteSize) -> bool {
    b.0 == 1024 * 1024
}
fn is_default(o: &OnOversize) -> bool {
    *o == OnOversize::Pass
}

#[derive(Debug)]
enum JsonValue {
    Fixed(Value),
    Template(Template),
}

/// Compiled JSON operations.
#[derive(Debug)]
pub struct JsonOps {
    unwrap: Option<Vec<String>>,
    remove: Vec<Vec<String>>,
    rename: Vec<(Vec<String>, Vec<String>)>,
    set: Vec<(Vec<String>, JsonValue)>,
    add: Vec<(Vec<String>, JsonValue)>,
    wrap: Option<String>,
    /// Largest body transformed.
    pub max_bytes: u64,
    /// Over the cap.
    pub on_oversize: OnOversize,
}

fn pointer(text: &str, at: String, errors: &mut Vec<ConfigError>) -> Option<Vec<String>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    if !text.starts_with('/') {
        errors.push(ConfigError::new(
            at,
            format!("`{text}` is not a JSON pointer (they start with `/`, e.g. `/user/id`)"),
        ));
        return None;
    }
    Some(
        text[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

impl JsonOps {
    /// Compiles the operations written at `at`.
    pub fn build(
        raw: &RawJsonOps,
        at: &str,
        captures: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let value = |v: &Value, key: String, errors: &mut Vec<ConfigError>| match v {
            Value::String(s) => match Template::parse(s, captures) {
                Ok(t) => match t.as_literal() {
                    Some(lit) => Some(JsonValue::Fixed(Value::String(lit.to_string()))),
                    None => Some(JsonValue::Template(t)),
                },
                Err(e) => {
                    errors.push(ConfigError::new(key, e));
                    None
                }
            },
            other => Some(JsonValue::Fixed(other.clone())),
        };
        if raw.max_bytes.0 == 0 || raw.max_bytes.0 > MAX_BUFFERED {
            errors.push(ConfigError::new(
                format!("{at}.max_bytes"),
                "must be between 1 and 64MiB: a transformed body is buffered whole, so there is \
                 no unlimited (larger bodies stream through untouched, or get 413 with \
                 `on_oversize: reject`)",
            ));
        }
        let mut ops = JsonOps {
            unwrap: raw
                .unwrap
                .as_deref()
                .and_then(|u| pointer(u, format!("{at}.unwrap"), errors)),
            remove: Vec::new(),
            rename: Vec::new(),
            set: Vec::new(),
            add: Vec::new(),
            wrap: raw.wrap.clone(),
            max_bytes: raw.max_bytes.0,
            on_oversize: raw.on_oversize,
        };
        for (i, p) in raw.remove.iter().enumerate() {
            ops.remove
                .extend(pointer(p, format!("{at}.remove[{i}]"), errors));
        }
        for (from, to) in &raw.rename {
            let key = format!("{at}.rename.{from}");
            if let (Some(f), Some(t)) =
                (pointer(from, key.clone(), errors), pointer(to, key, errors))
            {
                ops.rename.push((f, t));
            }
        }
        for (p, v) in &raw.set {
            let key = format!("{at}.set.{p}");
            if let (Some(p), Some(v)) = (pointer(p, key.clone(), errors), value(v, key, errors)) {
                ops.set.push((p, v));
            }
        }
        for (p, v) in &raw.add {
            let key = format!("{at}.add.{p}");
            if let (Some(p), Some(v)) = (pointer(p, key.clone(), errors), value(v, key, errors)) {
                ops.add.push((p, v));
            }
        }
        ops
    }

    /// Applies the operations to a parsed body.
    pub fn apply(&self, mut body: Value, d: Option<&RequestData<'_>>) -> Value {
        if let Some(p) = &self.unwrap {
            body = take(&mut body, p).unwrap_or(Value::Null);
        }
        for p in &self.remove {
            take(&mut body, p);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(&mut body, from) {
                put(&mut body, to, v);
            }
        }
        let render = |v: &JsonValue| match (v, d) {
            (JsonValue::Fixed(v), _) => v.clone(),
            (JsonValue::Template(t), Some(d)) => Value::String(t.render(d)),
            (JsonValue::Template(_), None) => Value::String(String::new()),
        };
        for (p, v) in &self.set {
            put(&mut body, p, render(v));
        }
        for (p, v) in &self.add {
            if get(&body, p).is_none() {
                put(&mut body, p, render(v));
            }
        }
        if let Some(key) = &self.wrap {
            let mut m = serde_json::Map::new();
            m.insert(key.clone(), body);
            body = Value::Object(m);
        }
        body
    }

    /// Whether a template reads route captures.
    pub fn uses_captures(&self) -> bool {
        self.set
            .iter()
            .chain(&self.add)
            .any(|(_, v)| matches!(v, JsonValue::Template(t) if t.uses_captures()))
    }

    /// Whether templates are used (the request facts must be kept for the response).
    pub fn uses_templates(&self) -> bool {
        self.set
            .iter()
            .chain(&self.add)
            .any(|(_, v)| matches!(v, JsonValue::Template(_)))
    }
}

/// Whether headers describe a JSON body we may rewrite: `application/json` or `*/*+json`, and
/// no content coding (a gzipped body is passed on untouched).
pub fn is_json(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn get<'v>(v: &'v Value, p: &[String]) -> Option<&'v Value> {
    let mut cur = v;
    for t in p {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn take(v: &mut Value, p: &[String]) -> Option<Value> {
    let Some((last, parent)) = p.split_last() else {
        return Some(std::mem::take(v));
    };
    let mut cur = v;
    for t in parent {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match cur {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok()?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// Sets the value at `p`, creating objects where nothing is; `-` appends to an array. A path
/// through a scalar is left alone (the body is not the shape the config expects).
fn put(v: &mut Value, p: &[String], new: Value) {
    let Some((last, parent)) = p.split_last() else {
        *v = new;
        return;
    };
    let mut cur = v;
    for t in parent {
        if cur.is_null() {
            *cur = Value::Object(serde_json::Map::new());
        }
        cur = match cur {
            Value::Object(m) => m
                .entry(t.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new())),
            Value::Array(a) => match t.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
    }
    if cur.is_null() {
        *cur = Value::Object(serde_json::Map::new());
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), new);
        }
        Value::Array(a) if last == "-" => a.push(new),
        Value::Array(a) => {
            if let Some(x) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *x = new;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(yaml: &str) -> JsonOps {
        let raw: RawJsonOps = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let ops = JsonOps::build(&raw, "b", &[], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        ops
    }

    #[test]
    fn operations_apply_in_order_unwrap_remove_rename_set_add_wrap() {
        let o = ops(
            "{unwrap: /result, remove: [/password, /items/0], rename: {/name: /user/full_name}, \
             set: {/meta/source: gw, /items/-: 9, /a~1b: 1}, add: {/user/id: 0, /user/role: guest}, wrap: data}",
        );
        let body = json!({"result": {"password": "x", "name": "Ann", "items": [1, 2], "user": {"id": 7}}, "other": 1});
        assert_eq!(
            o.apply(body, None),
            json!({"data": {"items": [2, 9], "a/b": 1, "meta": {"source": "gw"},
                            "user": {"id": 7, "full_name": "Ann", "role": "guest"}}})
        );
    }

    #[test]
    fn shapes_that_do_not_fit_are_left_alone() {
        let o = ops("{set: {/a/b: 1}, remove: [/x/y], rename: {/nope: /there}}");
        assert_eq!(o.apply(json!({"a": 5}), None), json!({"a": 5}));
        assert_eq!(o.apply(json!([1]), None), json!([1]));
    }

    #[test]
    fn only_uncoded_json_content_types_qualify() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/vnd.acme.v2+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(!is_json(&h));
    }

    #[test]
    fn bad_pointers_are_config_errors() {
        let raw: RawJsonOps = serde_yaml_ng::from_str("{remove: [password]}").unwrap();
        let mut errors = Vec::new();
        JsonOps::build(&raw, "b", &[], &mut errors);
        assert_eq!(errors[0].path, "b.remove[0]");
    }
}
