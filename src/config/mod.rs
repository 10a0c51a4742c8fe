//! Configuration: YAML text to an immutable [`Plan`], in stages.
//!
//! 1. `position`: index where every key and value stands, checking the document against
//!    `limits` (size, nesting, alias expansion) and catching YAML syntax errors;
//! 2. `expand`: `${ENV}` / `${file:...}` in string values;
//! 3. `raw`: strict serde structs (unknown keys are errors);
//! 4. `validate`: cross-field checks, collecting every error;
//! 5. `compile`: build the router, services and routes.
//!
//! Every error carries the YAML key path and line:column, and quotes the unexpanded text.

pub mod admin;
pub mod compile;
pub mod guard;
pub mod http2;
pub mod plan;
pub mod raw;
pub mod validate;

// The leaf parts of config reading live in `spec/` (every module may use them); re-exported here
// under their old paths for the tests, benches and fuzz targets.
pub use crate::spec::{expand, limits, position, suggest, units, ConfigError};

use std::fmt;
use std::path::Path;

pub use plan::Plan;
use position::{Position, PositionIndex};
pub use raw::RawConfig;
use rustc_hash::FxHashMap;
use serde_path_to_error::Segment;

/// A config file read and compiled: the [`Plan`] the request path serves, and the raw config it
/// was built from, which only the control plane reads (the admin API's `/config`, `explain`,
/// reload checks, file watching).
pub struct Loaded {
    /// The compiled plan.
    pub plan: Plan,
    /// The config as written, with `${...}` expanded.
    pub raw: RawConfig,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file name as given.
    pub file: String,
    /// The problems, in document order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.position {
                Some(p) => write!(f, "{}:{}:{}: ", self.file, p.line, p.column)?,
                None => write!(f, "{}: ", self.file)?,
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Reads and compiles a config file (see [`load_str`]).
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_file_after(path, None)
}

/// Like [`load_file`], for a plan to follow `previous`: it inherits what `previous` built up at
/// run time (see [`compile::compile`]).
pub fn load_file_after(path: &Path, previous: Option<&Plan>) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let text = read_file(path).map_err(|message| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError::new("", message)],
    })?;
    guarded(&file, || {
        load_str_here(&text, &file, &expand::ProcessEnv, previous)
    })
}

/// The text of a config file, refusing one over [`limits::MAX_DOCUMENT_BYTES`] without reading
/// it all.
pub fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(limits::MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if text.len() > limits::MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

fn too_large() -> String {
    format!(
        "the config is larger than {} MiB, the most a config file may hold",
        limits::MAX_DOCUMENT_BYTES >> 20
    )
}

/// Parses, expands, validates and compiles config text. `file` names it in errors.
///
/// Reports every problem it can find in one go: a key of the wrong type or an unknown key does
/// not hide the cross-field errors elsewhere in the file (see [`deserialize_collecting`]).
/// Runs [`guard::contained`]: a panic while loading is reported as an error, never ends the
/// process.
pub fn load_str(text: &str, file: &str, env: &dyn expand::Source) -> Result<Loaded, ConfigErrors> {
    guarded(file, || load_str_here(text, file, env, None))
}

/// Runs a loading stage under [`guard::contained`], reporting a panic as the one error.
fn guarded<T>(
    file: &str,
    stage: impl FnOnce() -> Result<T, ConfigErrors>,
) -> Result<T, ConfigErrors> {
    guard::contained(stage).unwrap_or_else(|panic| {
        Err(ConfigErrors {
            file: file.to_string(),
            errors: vec![ConfigError::new(
                "",
                format!(
                    "internal error while loading the config ({panic}); this is a bug in \
                     Portico, please report it with the config that caused it"
                ),
            )],
        })
    })
}

/// [`load_str`] without the guard.
fn load_str_here(
    text: &str,
    file: &str,
    env: &dyn expand::Source,
    previous: Option<&Plan>,
) -> Result<Loaded, ConfigErrors> {
    let parsed = parse_stages(text, file, env)?;
    let mut errors = parsed.errors.clone();
    if let Some(raw) = &parsed.raw {
        errors.extend(
            validate::validate(raw)
                .into_iter()
                .filter(|e| !parsed.is_follow_on(e)),
        );
    }
    let raw = match parsed.raw {
        Some(raw) if errors.is_empty() => raw,
        _ => return Err(parsed.fail(file, errors, text)),
    };
    match compile::compile(&raw, previous) {
        Ok(plan) => Ok(Loaded { plan, raw }),
        Err(errors) => Err(ConfigErrors {
            file: file.to_string(),
            errors: finish(errors, text, &parsed.index, &parsed.expanded),
        }),
    }
}

/// Stages 1 to 3: text to expanded raw structs (guarded like [`load_str`]).
pub fn parse_str(
    text: &str,
    file: &str,
    env: &dyn expand::Source,
) -> Result<RawConfig, ConfigErrors> {
    guarded(file, || {
        let parsed = parse_stages(text, file, env)?;
        match parsed.raw {
            Some(raw) if parsed.errors.is_empty() => Ok(raw),
            _ => Err(parsed.fail(file, parsed.errors.clone(), text)),
        }
    })
}

/// What stages 1 to 3 produced.
struct Parsed {
    /// The config, when the document could be deserialized (possibly after repairs).
    raw: Option<RawConfig>,
    /// Errors from deserializing (wrong types, unknown keys, missing keys).
    errors: Vec<ConfigError>,
    /// Paths whose string came from `${...}`, with the expanded text.
    expanded: FxHashMap<String, String>,
    /// Repairs made to keep deserializing; see [`deserialize_collecting`].
    repairs: Repairs,
    index: PositionIndex,
}

impl Parsed {
    /// True for a validation error that only exists because of a repair: a placeholder for a
    /// missing key, or a reference to a service whose definition was dropped as malformed.
    fn is_follow_on(&self, e: &ConfigError) -> bool {
        let under = |p: &String| {
            e.path == *p
                || e.path.starts_with(&format!("{p}."))
                || e.path.starts_with(&format!("{p}["))
        };
        if self.repairs.placeholders.iter().any(under) {
            return true;
        }
        self.repairs.dropped.iter().any(|d| {
            e.message.starts_with("unknown service `")
                && (d == "services"
                    || d.strip_prefix("services.").is_some_and(|name| {
                        !name.contains(['.', '['])
                            && e.message.starts_with(&format!("unknown service `{name}`"))
                    }))
        })
    }

    fn fail(&self, file: &str, errors: Vec<ConfigError>, text: &str) -> ConfigErrors {
        ConfigErrors {
            file: file.to_string(),
            errors: finish(errors, text, &self.index, &self.expanded),
        }
    }
}

fn parse_stages(text: &str, file: &str, env: &dyn expand::Source) -> Result<Parsed, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_string(),
        errors,
    };
    if text.len() > limits::MAX_DOCUMENT_BYTES {
        return Err(fail(vec![ConfigError::new("", too_large())]));
    }
    let index = match PositionIndex::build(text) {
        Ok(index) => index,
        Err((pos, message)) => {
            return Err(fail(vec![ConfigError {
                path: String::new(),
                message,
                position: Some(pos),
            }]))
        }
    };
    let mut value: serde_yaml_ng::Value = if text.trim().is_empty() {
        serde_yaml_ng::Value::Mapping(Default::default())
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let position = e.location().map(|l| Position {
                line: l.line(),
                column: l.column(),
            });
            fail(vec![ConfigError {
                path: String::new(),
                message: e.to_string(),
                position,
            }])
        })?
    };
    let (expanded, errors) = expand::expand_tree(&mut value, env);
    if !errors.is_empty() {
        // Expansion messages quote only the reference, never a value.
        let errors = errors
            .into_iter()
            .map(|e| ConfigError::new(e.path, e.message))
            .collect();
        return Err(fail(locate(errors, &index)));
    }
    let (raw, errors, repairs) = deserialize_collecting(value, &index, &expanded);
    Ok(Parsed {
        raw,
        errors,
        expanded,
        repairs,
        index,
    })
}

/// Changes made to the document so deserializing could go on past an error.
#[derive(Debug, Default)]
struct Repairs {
    /// Paths of required keys that were missing and got a placeholder.
    placeholders: Vec<String>,
    /// Paths of keys that were removed (unknown, or of the wrong type).
    dropped: Vec<String>,
}

/// Stage 3, collecting every error: serde stops at the first one, so after each error the
/// offending key is removed (an unknown key, or a value of the wrong type; the field then takes
/// its default) or a missing required key gets a placeholder, and deserializing runs again.
/// An error inside a list item that cannot be dropped without renumbering the items after it
/// ends the search. Validation then runs on the repaired config, minus the errors the repairs
/// themselves would cause ([`Parsed::is_follow_on`]).
///
/// Expansion always yields text; where a number or boolean is expected (`workers: ${WORKERS}`),
/// expanded text that reads as one is converted and deserializing tries again.
fn deserialize_collecting(
    mut value: serde_yaml_ng::Value,
    index: &PositionIndex,
    expanded: &FxHashMap<String, String>,
) -> (Option<RawConfig>, Vec<ConfigError>, Repairs) {
    const MAX_ERRORS: usize = 100;
    let max_attempts = (limits::MAX_COLLECTING_WORK / index.nodes().max(1))
        .clamp(2, 4 * MAX_ERRORS as u64) as usize;
    let mut errors = Vec::new();
    let mut repairs = Repairs::default();
    // Paths of the keys that unknown keys were probably meant to be (`servce` → `service`).
    let mut misspelled: Vec<String> = Vec::new();
    let mut attempts = 0;
    while errors.len() < MAX_ERRORS && attempts < max_attempts {
        attempts += 1;
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(&value) {
            Ok(raw) => return (Some(raw), errors, repairs),
            Err(err) => err,
        };
        let segments: Vec<Segment> = err.path().iter().cloned().collect();
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = suggest::serde_message(friendly(err.into_inner().to_string()), &path);
        if message.starts_with("invalid type: string")
            && expanded.contains_key(&path)
            && retype_scalar(&mut value, &segments)
        {
            continue;
        }
        // One mistake, one error: a misspelled key's removal makes the key it was meant to be
        // "missing", and removing a policy of unknown name leaves its one-key map empty. Both
        // follow-ons are the repair's doing, so they are not reported again.
        let mut follow_on = false;
        let repaired = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            Some(field) => {
                let full = if path.is_empty() {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                };
                follow_on = misspelled.contains(&full);
                let fresh = !repairs.placeholders.contains(&full);
                repairs.placeholders.push(full);
                fresh && insert_placeholder(&mut value, &segments, field)
            }
            None if message == "invalid value: map, expected map with a single key" => {
                follow_on = repairs.dropped.iter().any(|d| {
                    d.strip_prefix(path.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                });
                false
            }
            None => {
                if let Some(meant) = message
                    .split_once("(did you mean `")
                    .and_then(|(_, m)| m.split_once('`'))
                    .map(|(m, _)| m)
                    .filter(|_| message.starts_with("unknown field"))
                {
                    let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
                    misspelled.push(if parent.is_empty() {
                        meant.to_string()
                    } else {
                        format!("{parent}.{meant}")
                    });
                }
                repairs.dropped.push(path.clone());
                remove_at(&mut value, &segments)
            }
        };
        if follow_on {
            if repaired {
                continue;
            }
            break;
        }
        let position =
            if message.starts_with("unknown field") || message.starts_with("unknown policy") {
                index.find_key(&path)
            } else {
                index.find(&path)
            };
        errors.push(ConfigError {
            path,
            message,
            position,
        });
        if !repaired {
            break;
        }
    }
    (None, errors, repairs)
}

/// Clearer wording for serde messages that name Rust types (`expected struct RawTarget`).
fn friendly(message: String) -> String {
    if message.contains("untagged enum RawHeaderMatch") {
        return "expected a string (exact value), {present: true|false} or {regex: \"...\"}"
            .to_string();
    }
    let Some(at) = message
        .find("struct Raw")
        .or_else(|| message.find("enum Raw"))
    else {
        return message;
    };
    let name_start = at + message[at..].find("Raw").unwrap_or(0);
    let name_end = message[name_start..]
        .find(|c: char| !c.is_ascii_alphanumeric())
        .map_or(message.len(), |i| name_start + i);
    let what = match &message[name_start..name_end] {
        "RawService" => "a service: a map with `targets`",
        "RawTarget" => "a target such as {url: \"http://host:port\"}",
        "RawRoute" => "a route: a map with `name`, `service` and usually `match`",
        "RawMatch" => "a map of match conditions (hosts, path, methods, headers)",
        "RawRewrite" => "a map with one of strip_prefix, replace_prefix, path",
        "RawLoadBalancing" => {
            "round_robin, least_request, random or {consistent_hash: {header|cookie|client_ip}}"
        }
        _ => "a map",
    };
    format!("{}{what}{}", &message[..at], &message[name_end..])
}

fn child_mut<'v>(
    value: &'v mut serde_yaml_ng::Value,
    segment: &Segment,
) -> Option<&'v mut serde_yaml_ng::Value> {
    let value = match value {
        serde_yaml_ng::Value::Tagged(t) => &mut t.value,
        v => v,
    };
    match segment {
        Segment::Seq { index } => value.as_sequence_mut()?.get_mut(*index),
        Segment::Map { key } | Segment::Enum { variant: key } => {
            value.as_mapping_mut()?.get_mut(key.as_str())
        }
        Segment::Unknown => None,
    }
}

fn walk_mut<'v>(
    mut value: &'v mut serde_yaml_ng::Value,
    segments: &[Segment],
) -> Option<&'v mut serde_yaml_ng::Value> {
    for s in segments {
        value = child_mut(value, s)?;
    }
    match value {
        serde_yaml_ng::Value::Tagged(t) => Some(&mut t.value),
        v => Some(v),
    }
}

/// Turns the string at `segments` into the number or boolean it spells; false when it spells
/// neither (or is not a string).
fn retype_scalar(value: &mut serde_yaml_ng::Value, segments: &[Segment]) -> bool {
    let Some(node) = walk_mut(value, segments) else {
        return false;
    };
    let Some(text) = node.as_str().map(str::trim) else {
        return false;
    };
    let typed = if let Ok(n) = text.parse::<u64>() {
        serde_yaml_ng::Value::Number(n.into())
    } else if let Ok(n) = text.parse::<i64>() {
        serde_yaml_ng::Value::Number(n.into())
    } else if let Ok(b) = text.parse::<bool>() {
        serde_yaml_ng::Value::Bool(b)
    } else {
        return false;
    };
    *node = typed;
    true
}

/// Removes the map entry at `segments`; false when it is not a map entry (a list item, the root).
fn remove_at(value: &mut serde_yaml_ng::Value, segments: &[Segment]) -> bool {
    let Some((Segment::Map { key } | Segment::Enum { variant: key }, parent)) =
        segments.split_last()
    else {
        return false;
    };
    walk_mut(value, parent)
        .and_then(|p| p.as_mapping_mut())
        .and_then(|m| m.remove(key.as_str()))
        .is_some()
}

/// Adds `field` with an empty value to the map at `segments`.
fn insert_placeholder(value: &mut serde_yaml_ng::Value, segments: &[Segment], field: &str) -> bool {
    let placeholder = if field == "targets" {
        serde_yaml_ng::Value::Sequence(Vec::new())
    } else {
        serde_yaml_ng::Value::String(String::new())
    };
    match walk_mut(value, segments).and_then(|m| m.as_mapping_mut()) {
        Some(m) => {
            m.insert(serde_yaml_ng::Value::String(field.to_string()), placeholder);
            true
        }
        None => false,
    }
}

/// Makes errors safe to print and puts them in document order: a value that came from `${...}`
/// may be a secret, so wherever an error message quotes it, the unexpanded text is quoted
/// instead; then each error gets its line:column.
fn finish(
    mut errors: Vec<ConfigError>,
    text: &str,
    index: &PositionIndex,
    expanded: &FxHashMap<String, String>,
) -> Vec<ConfigError> {
    for e in &mut errors {
        for (path, value) in expanded {
            let own = e.path == *path;
            // A short value quoted under another key is left alone: it is unlikely to be a
            // secret, and replacing it would garble unrelated words.
            if !own && (value.len() < 8 || !e.message.contains(value.as_str())) {
                continue;
            }
            let original = index_text(text, index, path).unwrap_or_else(|| "${...}".into());
            let mut message = if value.is_empty() {
                e.message.clone()
            } else {
                e.message.replace(value.as_str(), &original)
            };
            if own {
                message = redact_quoted(&message, value, &original);
                if !value.is_empty() && message.contains(value.as_str()) {
                    message = format!("invalid value (from {original})");
                } else if !message.contains(&original) {
                    message = format!("invalid value (from {original}): {message}");
                }
            }
            e.message = message;
        }
    }
    locate(errors, index)
}

/// Replaces every `backtick-quoted` span that is part of `value` (e.g. the host of a URL) with
/// the unexpanded text.
fn redact_quoted(message: &str, value: &str, original: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        let Some(len) = rest[open + 1..].find('`') else {
            break;
        };
        let span = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..=open]);
        if !span.is_empty() && value.contains(span) {
            out.push_str(original);
        } else {
            out.push_str(span);
        }
        out.push('`');
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// The original (unexpanded) source text of the scalar at `path`, for error messages.
fn index_text(text: &str, index: &PositionIndex, path: &str) -> Option<String> {
    let pos = index.find(path)?;
    let line = text.lines().nth(pos.line - 1)?;
    let from = line.char_indices().nth(pos.column - 1).map(|(i, _)| i)?;
    let rest = &line[from..];
    if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = &rest[1..];
        let end = inner.find(quote).unwrap_or(inner.len());
        return Some(inner[..end].to_string());
    }
    // A plain scalar ends at a comment, or at a flow indicator outside a `${...}`.
    let mut depth = 0usize;
    let mut prev = ' ';
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match c {
            '{' if prev == '$' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            ',' | ']' | '}' if depth == 0 => {
                end = i;
                break;
            }
            '#' if prev == ' ' => {
                end = i;
                break;
            }
            _ => {}
        }
        prev = c;
    }
    Some(rest[..end].trim().to_string())
}

fn locate(mut errors: Vec<ConfigError>, index: &PositionIndex) -> Vec<ConfigError> {
    for e in &mut errors {
        if e.position.is_none() {
            e.position = index.find(&e.path);
        }
    }
    errors.sort_by_key(|e| e.position.map(|p| (p.line, p.column)));
    errors
}

/// The JSON Schema of the config file.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawConfig);
    serde_json::to_value(schema).unwrap_or_default()
}

/// The PEM files a config refers to (listener and upstream), and the OpenAPI specs its
/// `openapi` policies name (their root files), for the reload fingerprint.
pub fn referenced_files(raw: &RawConfig) -> Vec<&str> {
    let mut files = Vec::new();
    if let Some(tls) = &raw.tls {
        for c in &tls.certificates {
            files.push(c.cert.as_str());
            files.push(c.key.as_str());
        }
        if let Some(ca) = &tls.client_auth {
            files.extend(ca.ca.iter().map(String::as_str));
        }
    }
    for svc in raw.services.values() {
        if let Some(t) = &svc.tls {
            files.extend(
                [&t.ca, &t.client_cert, &t.client_key]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
    }
    let levels = raw.services.values().map(|s| &s.policies);
    let levels = levels.chain(raw.routes.iter().map(|r| &r.policies));
    for policy in levels.flatten().chain(&raw.policies) {
        if let crate::policy::RawPolicy::Openapi(o) = policy {
            files.push(o.spec.as_str());
        }
    }
    files
}

/// Modification time and size of every PEM file the config refers to: the control loop
/// compares them once a second and reloads when a certificate was renewed in place.
pub fn file_stamps(raw: &RawConfig) -> Vec<Option<(std::time::SystemTime, u64)>> {
    referenced_files(raw)
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}
