//! Configuration: YAML text to an immutable [`Plan`], in stages.
//!
//! 1. `position`: index where every key and value stands (and catch YAML syntax errors);
//! 2. `expand`: `${ENV}` / `${file:...}` in string values;
//! 3. `raw`: strict serde structs (unknown keys are errors);
//! 4. `validate`: cross-field checks, collecting every error;
//! 5. `compile`: build the router, services and routes.
//!
//! Every error carries the YAML key path and line:column, and quotes the unexpanded text.

pub mod compile;
pub mod expand;
pub mod plan;
pub mod position;
pub mod raw;
pub mod units;
pub mod validate;

use std::fmt;
use std::path::Path;

pub use plan::Plan;
use position::{Position, PositionIndex};
pub use raw::RawConfig;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `routes[3].match.hosts[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Where, when known.
    pub position: Option<Position>,
}

impl ConfigError {
    /// An error at `path`; its position is filled in later from the document index.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }
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

/// Reads and compiles a config file.
pub fn load_file(path: &Path) -> Result<Plan, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError::new("", format!("cannot read the file: {e}"))],
    })?;
    load_str(&text, &file, &expand::ProcessEnv)
}

/// Parses, expands, validates and compiles config text. `file` names it in errors.
pub fn load_str(text: &str, file: &str, env: &dyn expand::Source) -> Result<Plan, ConfigErrors> {
    let raw = parse_str(text, file, env)?;
    let index = PositionIndex::build(text).unwrap_or_default();
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_string(),
        errors: locate(errors, &index),
    };
    let errors = validate::validate(&raw);
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    compile::compile(raw, text).map_err(fail)
}

/// Stages 1 to 3: text to expanded raw structs.
pub fn parse_str(
    text: &str,
    file: &str,
    env: &dyn expand::Source,
) -> Result<RawConfig, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_string(),
        errors,
    };
    let index = match PositionIndex::build(text) {
        Ok(index) => index,
        Err((pos, message)) => {
            return Err(fail(vec![ConfigError {
                path: String::new(),
                message: format!("YAML syntax error: {message}"),
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
        let errors = errors
            .into_iter()
            .map(|e| ConfigError::new(e.path, e.message))
            .collect();
        return Err(fail(locate(errors, &index)));
    }
    serde_path_to_error::deserialize::<_, RawConfig>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        // A value that came from `${...}` may be a secret: never echo it.
        let message = if expanded.contains(&path) {
            let original = index_text(text, &index, &path).unwrap_or_else(|| "${...}".into());
            format!("invalid value (from {original})")
        } else {
            inner
        };
        let position = if message.starts_with("unknown field") {
            index.find_key(&path)
        } else {
            index.find(&path)
        };
        fail(vec![ConfigError {
            path,
            message,
            position,
        }])
    })
}

/// The original (unexpanded) source text of the scalar at `path`, for error messages.
fn index_text(text: &str, index: &PositionIndex, path: &str) -> Option<String> {
    let pos = index.find(path)?;
    let line = text.lines().nth(pos.line - 1)?;
    let from = line.char_indices().nth(pos.column - 1).map(|(i, _)| i)?;
    let rest = line[from..].trim_end();
    let end = rest.find(" #").unwrap_or(rest.len());
    Some(rest[..end].trim_matches(['"', '\'']).to_string())
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
