//! OpenAPI documents: reading a spec (3.0 or 3.1, JSON or YAML), resolving its `$ref`s (local
//! and in relative files), listing its operations, and bundling a schema into a self-contained
//! JSON Schema (2020-12) that the `jsonschema` crate compiles. Also the `portico openapi import`
//! translation into a config fragment (`import.rs`).
//!
//! Owns the reading of the document only: validating requests against it is the `openapi`
//! policy's (`policy/openapi/`), which compiles what this module hands it once per config load.
//! Nothing here runs on the request path. Imports nothing of the crate but `spec/`-level code.

pub mod import;
pub mod schema;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The most files one spec may pull in through `$ref`s.
const MAX_FILES: usize = 10_000;
/// The largest spec file read.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// The longest chain of `$ref`s to `$ref`s followed.
const MAX_REF_CHAIN: usize = 32;

/// The HTTP methods an OpenAPI path item may hold, in the spec's order.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A problem in a spec: the file, the JSON pointer into it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The file, as given or as resolved relative to the file that named it.
    pub file: String,
    /// Where in the file (`#/paths/~1pets/get/responses`); empty for the whole file.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}#{}: {}", self.file, self.pointer, self.message)
        }
    }
}

/// The OpenAPI version family, which decides the schema dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 3.0.x: the schema object (an extended subset of JSON Schema draft 5, `nullable`).
    V30,
    /// 3.1.x: JSON Schema 2020-12.
    V31,
}

/// One file of a spec.
#[derive(Debug)]
pub struct File {
    /// Its path (relative ones against the directory of the file that named it).
    pub path: PathBuf,
    /// Its content as JSON.
    pub value: Value,
}

/// A spec and every file its `$ref`s reach. Index 0 is the root document.
#[derive(Debug)]
pub struct Spec {
    /// The files.
    pub files: Vec<File>,
    /// 3.0 or 3.1.
    pub version: Version,
    /// For each file, the files its `$ref`s name, by the text they name them with.
    links: Vec<HashMap<String, usize>>,
}

/// A place in a spec: a file (index into [`Spec::files`]) and a JSON pointer into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct At {
    /// The file.
    pub file: usize,
    /// The pointer (`/components/schemas/Pet`), empty for the file's root.
    pub pointer: String,
}

/// One operation: a method on a path.
#[derive(Debug)]
pub struct Operation<'a> {
    /// The path template as written (`/pets/{petId}`).
    pub path: &'a str,
    /// The method, lowercase (`get`).
    pub method: &'static str,
    /// `operationId`, when given.
    pub operation_id: Option<&'a str>,
    /// The operation object.
    pub value: &'a Value,
    /// Where the operation object is.
    pub at: At,
    /// The parameters, path-level ones merged with the operation's (the operation's win), each
    /// with `$ref`s followed.
    pub parameters: Vec<(At, &'a Value)>,
}

impl Spec {
    /// Reads the spec at `path` and every file its `$ref`s name.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let root = read(path)?;
        let version = match root.get("openapi").and_then(Value::as_str) {
            Some(v) if v.starts_with("3.0") => Version::V30,
            Some(v) if v.starts_with("3.1") => Version::V31,
            Some(v) => {
                return Err(err(
                    path,
                    "/openapi",
                    format!("version `{v}` is not 3.0 or 3.1"),
                ));
            }
            None if root.get("swagger").is_some() => {
                return Err(err(
                    path,
                    "/swagger",
                    "Swagger 2.0 is not supported; convert it to OpenAPI 3 first",
                ));
            }
            None => {
                return Err(err(path, "", "not an OpenAPI document (no `openapi` key)"));
            }
        };
        if !root.get("paths").is_none_or(Value::is_object) {
            return Err(err(path, "/paths", "must be a map of path templates"));
        }
        let mut spec = Spec {
            files: vec![File {
                path: path.to_path_buf(),
                value: root,
            }],
            version,
            links: vec![HashMap::new()],
        };
        let mut by_path: HashMap<PathBuf, usize> = HashMap::from([(path.to_path_buf(), 0)]);
        // Every file reachable through `$ref`s, read once, breadth first.
        let mut next = 0;
        while next < spec.files.len() {
            let mut refs = Vec::new();
            collect_refs(&spec.files[next].value, &mut String::new(), &mut refs);
            for (pointer, reference) in refs {
                let (file_part, _) = split_ref(&reference);
                if file_part.is_empty()
                    || is_remote(file_part)
                    || spec.links[next].contains_key(file_part)
                {
                    continue;
                }
                let target = resolve_path(&spec.files[next].path, file_part);
                if let Some(&known) = by_path.get(&target) {
                    spec.links[next].insert(file_part.to_string(), known);
                    continue;
                }
                if spec.files.len() >= MAX_FILES {
                    return Err(err(
                        &spec.files[next].path,
                        &pointer,
                        format!("more than {MAX_FILES} files are referenced"),
                    ));
                }
                let value = read(&target).map_err(|mut e| {
                    e.message = format!(
                        "{} (referenced from {}#{pointer})",
                        e.message,
                        spec.files[next].path.display()
                    );
                    e
                })?;
                let index = spec.files.len();
                by_path.insert(target.clone(), index);
                spec.links[next].insert(file_part.to_string(), index);
                spec.files.push(File {
                    path: target,
                    value,
                });
                spec.links.push(HashMap::new());
            }
            next += 1;
        }
        Ok(spec)
    }

    /// A spec of no files (for tests that build one by hand).
    pub fn empty() -> Spec {
        Spec {
            files: Vec::new(),
            version: Version::V31,
            links: vec![HashMap::new()],
        }
    }

    /// The root document.
    pub fn root(&self) -> &Value {
        &self.files[0].value
    }

    /// The value at `at`.
    pub fn get(&self, at: &At) -> Option<&Value> {
        self.files.get(at.file)?.value.pointer(&at.pointer)
    }

    /// An error at `at`.
    pub fn error(&self, at: &At, message: impl Into<String>) -> SpecError {
        err(&self.files[at.file].path, &at.pointer, message)
    }

    /// Where the `$ref` string `reference`, written in file `from`, points.
    pub fn target(&self, from: usize, reference: &str) -> Result<At, String> {
        let (file_part, fragment) = split_ref(reference);
        if is_remote(file_part) {
            return Err(format!("remote reference `{reference}` is not followed"));
        }
        let file = if file_part.is_empty() {
            from
        } else {
            *self.links[from]
                .get(file_part)
                .ok_or_else(|| format!("file `{file_part}` was not read"))?
        };
        let pointer = percent_decode(fragment);
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(format!(
                "`{reference}`: only JSON pointer fragments (`#/...`) are supported"
            ));
        }
        if self.files[file].value.pointer(&pointer).is_none() {
            return Err(format!("`{reference}` points at nothing"));
        }
        Ok(At { file, pointer })
    }

    /// Follows `$ref`s from the object at `at` until one that is not a reference.
    pub fn deref<'a>(&'a self, at: At, value: &'a Value) -> Result<(At, &'a Value), SpecError> {
        let (mut at, mut value) = (at, value);
        for _ in 0..MAX_REF_CHAIN {
            let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
                return Ok((at, value));
            };
            let target = self
                .target(at.file, reference)
                .map_err(|m| self.error(&child(&at, "$ref"), m))?;
            value = self.get(&target).unwrap_or(&Value::Null);
            at = target;
        }
        Err(self.error(&at, "a cycle of `$ref`s that never reaches a value"))
    }

    /// Every operation, in document order (paths as written, methods in [`METHODS`] order).
    pub fn operations(&self) -> Result<Vec<Operation<'_>>, SpecError> {
        let mut out = Vec::new();
        let Some(paths) = self.root().get("paths").and_then(Value::as_object) else {
            return Ok(out);
        };
        for (path, item) in paths {
            let item_at = At {
                file: 0,
                pointer: format!("/paths/{}", escape(path)),
            };
            if !path.starts_with('/') {
                return Err(self.error(&item_at, "a path must start with `/`"));
            }
            let (item_at, item) = self.deref(item_at, item)?;
            let Some(map) = item.as_object() else {
                return Err(self.error(&item_at, "a path item must be a map"));
            };
            let shared = self.parameters(&item_at, map.get("parameters"))?;
            for method in METHODS {
                let Some(op) = map.get(method) else { continue };
                // Not allowed by the spec, but common in split specs (and resolved by bundlers).
                let (at, op) = self.deref(child(&item_at, method), op)?;
                if !op.is_object() {
                    return Err(self.error(&at, "an operation must be a map"));
                }
                let own = self.parameters(&at, op.get("parameters"))?;
                let mut parameters = shared.clone();
                for p in own {
                    let key = param_key(p.1);
                    parameters.retain(|q| param_key(q.1) != key);
                    parameters.push(p);
                }
                out.push(Operation {
                    path,
                    method,
                    operation_id: op.get("operationId").and_then(Value::as_str),
                    value: op,
                    at,
                    parameters,
                });
            }
        }
        Ok(out)
    }

    fn parameters<'a>(
        &'a self,
        at: &At,
        list: Option<&'a Value>,
    ) -> Result<Vec<(At, &'a Value)>, SpecError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let at = child(at, "parameters");
        let Some(items) = list.as_array() else {
            return Err(self.error(&at, "must be a list"));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, p) in items.iter().enumerate() {
            let (pat, p) = self.deref(child(&at, &i.to_string()), p)?;
            let name = p.get("name").and_then(Value::as_str);
            let place = p.get("in").and_then(Value::as_str);
            match (name, place) {
                (Some(_), Some("path" | "query" | "header" | "cookie")) => out.push((pat, p)),
                (None, _) => return Err(self.error(&pat, "a parameter needs a `name`")),
                (_, other) => {
                    return Err(self.error(
                        &pat,
                        format!(
                            "`in` must be path, query, header or cookie, not {}",
                            other.map_or("nothing".to_string(), |o| format!("`{o}`"))
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// A parameter's identity: its name and location (header names in any case).
fn param_key(p: &Value) -> (String, &str) {
    let place = p.get("in").and_then(Value::as_str).unwrap_or("");
    let name = p.get("name").and_then(Value::as_str).unwrap_or("");
    let name = if place == "header" {
        name.to_ascii_lowercase()
    } else {
        name.to_string()
    };
    (name, place)
}

/// `at` + `/key` (escaped).
pub fn child(at: &At, key: &str) -> At {
    At {
        file: at.file,
        pointer: format!("{}/{}", at.pointer, escape(key)),
    }
}

/// A key escaped for a JSON pointer (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn err(path: &Path, pointer: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        file: path.display().to_string(),
        pointer: pointer.to_string(),
        message: message.into(),
    }
}

/// Reads one file as JSON or YAML (YAML is a superset of JSON, but JSON is parsed as JSON for
/// its better messages and speed).
fn read(path: &Path) -> Result<Value, SpecError> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| err(path, "", format!("cannot read the file: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(err(path, "", "larger than 64 MiB"));
    }
    parse(&text).map_err(|m| err(path, "", m))
}

/// Parses spec text (JSON or YAML) into JSON; YAML map keys that are numbers (`200:`) become
/// strings.
pub fn parse(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"));
    }
    let docs =
        yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let doc = docs.into_iter().next().ok_or("an empty document")?;
    yaml_to_json(doc, 0)
}

fn yaml_to_json(v: yaml_rust2::Yaml, depth: usize) -> Result<Value, String> {
    use yaml_rust2::Yaml as Y;
    if depth > 256 {
        return Err("nested more than 256 levels deep".into());
    }
    Ok(match v {
        Y::Null | Y::BadValue => Value::Null,
        Y::Boolean(b) => Value::Bool(b),
        Y::Integer(i) => Value::from(i),
        // Reals, and integers too large for 64 bits.
        Y::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(r), Value::Number),
        Y::String(s) => Value::String(s),
        Y::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| yaml_to_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Hash(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    Y::String(s) | Y::Real(s) => s,
                    Y::Integer(n) => n.to_string(),
                    Y::Boolean(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    other => return Err(format!("a map key that is not a string: {other:?}")),
                };
                out.insert(key, yaml_to_json(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Alias(_) => Value::Null,
    })
}

/// Every `$ref` string in `v`, with the pointer where it is written.
fn collect_refs(v: &Value, at: &mut String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((at.clone(), r.to_string()));
                    }
                    continue;
                }
                if matches!(
                    k.as_str(),
                    "example" | "examples" | "enum" | "const" | "default"
                ) {
                    continue;
                }
                let len = at.len();
                at.push('/');
                at.push_str(&escape(k));
                collect_refs(v, at, out);
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                collect_refs(v, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

fn split_ref(reference: &str) -> (&str, &str) {
    reference.split_once('#').unwrap_or((reference, ""))
}

fn is_remote(file_part: &str) -> bool {
    file_part.contains("://")
}

fn resolve_path(from: &Path, relative: &str) -> PathBuf {
    let relative = percent_decode(relative);
    let joined = from
        .parent()
        .unwrap_or_else(|| Path::new(""))
        .join(relative);
    // `a/../b` → `b`, so one file read twice under two names is one file.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// `%7B` → `{` (references are URIs; the pointers inside are not encoded).
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_reference_fragments() {
        assert_eq!(
            percent_decode("/paths/~1pets~1%7Bid%7D"),
            "/paths/~1pets~1{id}"
        );
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a%20"), "a ");
    }

    #[test]
    fn yaml_numeric_keys_become_strings() {
        let v = parse("responses:\n  200: {description: ok}\n").unwrap();
        assert!(v.pointer("/responses/200").is_some());
    }
}
