//! A spec's schema as a self-contained JSON Schema 2020-12 document.
//!
//! [`Bundle::schema`] copies the schema at a place in the spec, translating it on the way:
//! - every `$ref` (local or to another file) becomes `#/$defs/<n>`, and the schema it names is
//!   copied (translated too) under `$defs`, once, so cycles stay cycles and a compiled schema
//!   needs nothing outside itself;
//! - for 3.0, the schema object's dialect is rewritten into 2020-12: `nullable: true` adds
//!   `null` to the type (or wraps the schema in `anyOf` with `{type: null}`), boolean
//!   `exclusiveMinimum`/`exclusiveMaximum` become numbers, and siblings of `$ref` are dropped;
//! - `readOnly` properties are not required in requests, `writeOnly` ones not in responses.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{At, Spec, Version};

/// Which way a body goes: decides what `readOnly` and `writeOnly` mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server: `readOnly` properties need not be sent.
    Request,
    /// Server to client: `writeOnly` properties are not returned.
    Response,
}

/// Translates schemas of one spec; see the module's doc.
pub struct Bundle<'a> {
    spec: &'a Spec,
    direction: Direction,
}

/// Keys whose values are data, never schemas: not searched for `$ref`s nor translated.
const DATA_KEYS: [&str; 5] = ["example", "examples", "enum", "const", "default"];
/// The most schemas one bundle copies (a guard against pathological specs).
const MAX_DEFS: usize = 20_000;

impl<'a> Bundle<'a> {
    /// A bundler for `spec`, for bodies going `direction`.
    pub fn new(spec: &'a Spec, direction: Direction) -> Self {
        Self { spec, direction }
    }

    /// The self-contained JSON Schema of the schema `value` found at `at`.
    pub fn schema(&self, at: &At, value: &Value) -> Result<Value, super::SpecError> {
        let mut run = Run {
            b: self,
            keys: HashMap::new(),
            pending: Vec::new(),
            defs: Map::new(),
        };
        let mut root = run.translate(at, value)?;
        while let Some((key, target)) = run.pending.pop() {
            if run.defs.len() > MAX_DEFS {
                return Err(self
                    .spec
                    .error(at, "the schema references too many schemas"));
            }
            let v = self.spec.get(&target).unwrap_or(&Value::Null);
            let t = run.translate(&target, v)?;
            run.defs.insert(key, t);
        }
        if run.defs.is_empty() {
            return Ok(root);
        }
        match &mut root {
            Value::Object(map) => {
                map.insert("$defs".into(), Value::Object(run.defs));
            }
            other => {
                let inner = std::mem::take(other);
                *other = serde_json::json!({"allOf": [inner], "$defs": run.defs});
            }
        }
        Ok(root)
    }
}

struct Run<'b, 'a> {
    b: &'b Bundle<'a>,
    keys: HashMap<At, String>,
    pending: Vec<(String, At)>,
    defs: Map<String, Value>,
}

impl Run<'_, '_> {
    fn translate(&mut self, at: &At, v: &Value) -> Result<Value, super::SpecError> {
        let Value::Object(map) = v else {
            return Ok(v.clone());
        };
        if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
            let target = self
                .b
                .spec
                .target(at.file, reference)
                .map_err(|m| self.b.spec.error(&super::child(at, "$ref"), m))?;
            let n = self.keys.len();
            let key = self
                .keys
                .entry(target.clone())
                .or_insert_with(|| {
                    let key = format!("d{n}");
                    self.pending.push((key.clone(), target));
                    key
                })
                .clone();
            let reference = Value::String(format!("#/$defs/{key}"));
            if self.b.spec.version == Version::V30 || map.len() == 1 {
                return Ok(serde_json::json!({ "$ref": reference }));
            }
            let mut out = self.copy(at, map)?;
            out.insert("$ref".into(), reference);
            return Ok(Value::Object(out));
        }
        let mut out = self.copy(at, map)?;
        if self.b.spec.version == Version::V30 {
            translate_30(&mut out);
        }
        format_ranges(&mut out);
        self.drop_required(at, &mut out);
        Ok(Value::Object(out))
    }

    /// A copy of `map` with its subschemas translated.
    fn copy(
        &mut self,
        at: &At,
        map: &Map<String, Value>,
    ) -> Result<Map<String, Value>, super::SpecError> {
        let mut out = Map::with_capacity(map.len());
        for (k, v) in map {
            if k == "$ref" || k.starts_with("x-") {
                continue;
            }
            if DATA_KEYS.contains(&k.as_str()) || k == "required" && v.is_array() {
                out.insert(k.clone(), v.clone());
                continue;
            }
            let kat = super::child(at, k);
            let t = match v {
                Value::Object(_) if is_schema_map(k) => {
                    // Split specs write `properties: {$ref: attributes.yml#/x}` too.
                    let (kat, v) = self.b.spec.deref(kat, v)?;
                    let mut m = Map::new();
                    for (name, s) in v.as_object().into_iter().flatten() {
                        m.insert(name.clone(), self.translate(&super::child(&kat, name), s)?);
                    }
                    Value::Object(m)
                }
                Value::Object(_) => self.translate(&kat, v)?,
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, s)| self.translate(&super::child(&kat, &i.to_string()), s))
                        .collect::<Result<_, _>>()?,
                ),
                _ => v.clone(),
            };
            out.insert(k.clone(), t);
        }
        Ok(out)
    }

    /// Removes from `required` the properties this direction does not carry.
    fn drop_required(&self, at: &At, out: &mut Map<String, Value>) {
        let flag = match self.b.direction {
            Direction::Request => "readOnly",
            Direction::Response => "writeOnly",
        };
        let Some(props) = out.get("properties").and_then(Value::as_object) else {
            return;
        };
        let spec = self.b.spec;
        let hidden: Vec<String> = props
            .keys()
            .filter(|name| {
                // Looked up in the spec, since a `$ref`'d property was replaced by a `$defs` ref.
                let p = super::child(&super::child(at, "properties"), name);
                spec.get(&p)
                    .and_then(|v| spec.deref(p.clone(), v).ok())
                    .is_some_and(|(_, v)| v.get(flag) == Some(&Value::Bool(true)))
            })
            .cloned()
            .collect();
        if hidden.is_empty() {
            return;
        }
        if let Some(Value::Array(req)) = out.get_mut("required") {
            req.retain(|r| !r.as_str().is_some_and(|r| hidden.iter().any(|h| h == r)));
        }
    }
}

/// OpenAPI's `int32` and `int64` formats are ranges (the Data Types section of both 3.0 and
/// 3.1); JSON Schema's `format` checks strings only, so they become `minimum`/`maximum`.
fn format_ranges(out: &mut Map<String, Value>) {
    let (lo, hi) = match out.get("format").and_then(Value::as_str) {
        Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
        Some("int64") => (i64::MIN, i64::MAX),
        _ => return,
    };
    let tighter = |v: Option<&Value>, bound: i64, low: bool| match v.and_then(Value::as_f64) {
        Some(x) if low => x >= bound as f64,
        Some(x) => x <= bound as f64,
        None => false,
    };
    if !tighter(out.get("minimum"), lo, true) {
        out.insert("minimum".into(), Value::from(lo));
    }
    if !tighter(out.get("maximum"), hi, false) {
        out.insert("maximum".into(), Value::from(hi));
    }
}

/// Keys whose value is a map of names to schemas.
fn is_schema_map(key: &str) -> bool {
    matches!(
        key,
        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
    )
}

/// The 3.0 schema object's own keywords in 2020-12 terms.
fn translate_30(out: &mut Map<String, Value>) {
    for (flag, bound) in [
        ("exclusiveMaximum", "maximum"),
        ("exclusiveMinimum", "minimum"),
    ] {
        if let Some(Value::Bool(b)) = out.get(flag).cloned() {
            out.remove(flag);
            if b {
                if let Some(n) = out.remove(bound) {
                    out.insert(flag.into(), n);
                }
            }
        }
    }
    if out.remove("nullable") != Some(Value::Bool(true)) {
        return;
    }
    if let Some(Value::Array(e)) = out.get_mut("enum") {
        if !e.contains(&Value::Null) {
            e.push(Value::Null);
        }
    }
    match out.get("type").cloned() {
        Some(Value::String(t)) => {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
        _ => {
            let inner = std::mem::take(out);
            out.insert(
                "anyOf".into(),
                serde_json::json!([Value::Object(inner), {"type": "null"}]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::File;

    fn spec(version: Version, doc: Value) -> Spec {
        Spec {
            files: vec![File {
                path: "t.yaml".into(),
                value: doc,
            }],
            version,
            links: vec![Default::default()],
        }
    }

    #[test]
    fn nullable_and_exclusive_bounds_of_30_are_translated() {
        let s = spec(Version::V30, serde_json::json!({}));
        let v = serde_json::json!({"type": "integer", "nullable": true, "maximum": 5, "exclusiveMaximum": true});
        let out = Bundle::new(&s, Direction::Request)
            .schema(
                &At {
                    file: 0,
                    pointer: String::new(),
                },
                &v,
            )
            .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"type": ["integer", "null"], "exclusiveMaximum": 5})
        );
    }

    #[test]
    fn a_ref_cycle_becomes_a_cycle_of_defs() {
        let doc = serde_json::json!({"components": {"schemas": {"Node": {
            "type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}}}}}});
        let s = spec(Version::V31, doc);
        let v = serde_json::json!({"$ref": "#/components/schemas/Node"});
        let out = Bundle::new(&s, Direction::Request)
            .schema(
                &At {
                    file: 0,
                    pointer: "/x".into(),
                },
                &v,
            )
            .unwrap();
        assert_eq!(out["$ref"], "#/$defs/d0");
        assert_eq!(
            out["$defs"]["d0"]["properties"]["next"]["$ref"],
            "#/$defs/d0"
        );
        let validator = jsonschema::validator_for(&out).unwrap();
        assert!(validator.is_valid(&serde_json::json!({"next": {"next": {}}})));
        assert!(!validator.is_valid(&serde_json::json!({"next": {"next": 3}})));
    }

    #[test]
    fn read_only_properties_are_not_required_in_requests() {
        let s = spec(
            Version::V30,
            serde_json::json!({"s": {"type": "object", "required": ["id", "name"],
            "properties": {"id": {"type": "integer", "readOnly": true}, "name": {"type": "string"}}}}),
        );
        let at = At {
            file: 0,
            pointer: "/s".into(),
        };
        let v = s.get(&at).unwrap();
        let req = Bundle::new(&s, Direction::Request).schema(&at, v).unwrap();
        assert_eq!(req["required"], serde_json::json!(["name"]));
        let resp = Bundle::new(&s, Direction::Response).schema(&at, v).unwrap();
        assert_eq!(resp["required"], serde_json::json!(["id", "name"]));
    }
}
