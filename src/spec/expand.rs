//! `${ENV_VAR}` and `${file:/path/to/secret}` expansion in config string values.
//!
//! The only place that reads environment variables or secret files for the config. Expansion runs
//! on the parsed YAML tree, string by string, so positions of the original text stay valid and
//! error messages can quote the unexpanded `${...}` text instead of a secret.

use rustc_hash::FxHashMap;
use serde_yaml_ng::Value;

/// A reference that could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// Config path of the string that holds the reference.
    pub path: String,
    /// What went wrong, quoting only the reference.
    pub message: String,
}

/// Where the values come from; the process environment in production, a map in tests.
pub trait Source {
    /// The value of environment variable `name`.
    fn var(&self, name: &str) -> Option<String>;
    /// The contents of the file at `path`.
    fn file(&self, path: &str) -> std::io::Result<String>;
}

/// Reads the real environment and file system.
pub struct ProcessEnv;

/// The most a `${file:...}` reference may read: secrets and certificates are a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl Source for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        read_secret_file(path)
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`] for `${file:...}`.
pub fn read_secret_file(path: &str) -> std::io::Result<String> {
    read_regular_file(path, MAX_FILE_BYTES)
}

/// [`read_regular_bytes`] as UTF-8 text.
pub fn read_regular_file(path: &str, max_bytes: u64) -> std::io::Result<String> {
    String::from_utf8(read_regular_bytes(path, max_bytes)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Reads a regular file of at most `max_bytes`. Anything else is refused before a byte is
/// read: a FIFO would block the reload forever, and a device such as `/dev/zero` never ends.
/// For every file the config names (secrets, certificates, consumer lists).
pub fn read_regular_bytes(path: &str, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, Read as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    // Opening a FIFO for reading blocks until a writer comes, unless non-blocking; for a
    // regular file the flag changes nothing. (Checking the type before opening would leave a
    // window for the path to be swapped.)
    const O_NONBLOCK: i32 = 0o4000;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::other("not a regular file"));
    }
    let too_large = || Error::other(format!("larger than {} KiB", max_bytes / 1024));
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The size can change after the check (a file being written): read one byte past the cap.
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Expands every string in `value` in place. Returns the paths of the strings that changed, with
/// their new text (it may hold a secret, so errors must not quote it), and every error found.
pub fn expand_tree(
    value: &mut Value,
    source: &dyn Source,
) -> (FxHashMap<String, String>, Vec<ExpandError>) {
    let mut expanded = FxHashMap::default();
    let mut errors = Vec::new();
    walk(
        value,
        String::new(),
        false,
        source,
        &mut expanded,
        &mut errors,
    );
    (expanded, errors)
}

/// Keys whose strings are request templates (`${header.x}`, `${client_ip}`, ...), rendered per
/// request by the policy: there, only `${file:...}` and environment variables that are not
/// template references are expanded at load.
const TEMPLATE_KEYS: &[&str] = &["transform", "aggregate"];

/// Whether `reference` is left for the template parser (which reports the ones it does not
/// know, with the list of valid ones): anything but `file:` and plain variable names, and the
/// two template references that look like variable names.
fn is_template_ref(reference: &str) -> bool {
    matches!(reference, "client_ip" | "request_id")
        || !(reference.starts_with("file:") || is_var_name(reference))
}

fn walk(
    value: &mut Value,
    path: String,
    templates: bool,
    source: &dyn Source,
    expanded: &mut FxHashMap<String, String>,
    errors: &mut Vec<ExpandError>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, source, templates) {
            // A template string left as written is not an expansion (its errors may quote it).
            Ok(new) if new == *s => {}
            Ok(new) => {
                expanded.insert(path, new.clone());
                *s = new;
            }
            Err(message) => errors.push(ExpandError { path, message }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(
                    item,
                    format!("{path}[{i}]"),
                    templates,
                    source,
                    expanded,
                    errors,
                );
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                let templates = templates
                    || matches!(k, Value::String(s) if TEMPLATE_KEYS.contains(&s.as_str()));
                walk(v, child, templates, source, expanded, errors);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, templates, source, expanded, errors),
        _ => {}
    }
}

/// Expands `${NAME}`, `${file:PATH}` and the escape `$${` (a literal `${`) in one string.
pub fn expand_str(text: &str, source: &dyn Source) -> Result<String, String> {
    expand(text, source, false)
}

/// [`expand_str`]; with `templates`, request template references and the `$${` escape are
/// left for the template parser.
fn expand(text: &str, source: &dyn Source, templates: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str(if templates { "$${" } else { "${" });
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            if templates {
                out.push_str(tail);
                return Ok(out);
            }
            return Err("unterminated `${`: write `$${` for a literal `${`".to_string());
        };
        let reference = &body_start[..end];
        if templates && is_template_ref(reference) {
            out.push_str(&tail[..end + 3]);
        } else if let Some(file) = reference.strip_prefix("file:") {
            let content = source
                .file(file)
                .map_err(|e| format!("cannot read `${{file:{file}}}`: {e}"))?;
            out.push_str(content.trim_end_matches(['\n', '\r']));
        } else if is_var_name(reference) {
            let v = source
                .var(reference)
                .ok_or_else(|| format!("environment variable `{reference}` is not set"))?;
            out.push_str(&v);
        } else {
            return Err(format!(
                "`${{{reference}}}` is not a variable name ([A-Za-z_][A-Za-z0-9_]*) or file:PATH"
            ));
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);
    impl Source for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn file(&self, path: &str) -> std::io::Result<String> {
            self.0
                .get(path)
                .map(|s| format!("{s}\n"))
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
        }
    }

    #[test]
    fn expands_vars_files_and_escapes() {
        let src = Fake(HashMap::from([("HOST", "db"), ("/run/secret", "s3cr3t")]));
        assert_eq!(expand_str("http://${HOST}:1", &src).unwrap(), "http://db:1");
        assert_eq!(
            expand_str("k=${file:/run/secret}", &src).unwrap(),
            "k=s3cr3t"
        );
        assert_eq!(expand_str("$${HOST} $5", &src).unwrap(), "${HOST} $5");
        assert!(expand_str("${MISSING}", &src)
            .unwrap_err()
            .contains("MISSING"));
        assert!(expand_str("${bad name}", &src).is_err());
        assert!(expand_str("${HOST", &src).is_err());
    }

    #[test]
    fn secret_files_must_be_regular_and_at_most_1_mib() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "s3cr3t\n").unwrap();
        assert_eq!(read_secret_file(ok.to_str().unwrap()).unwrap(), "s3cr3t\n");
        let max = dir.path().join("max");
        std::fs::write(&max, vec![b'x'; MAX_FILE_BYTES as usize]).unwrap();
        assert!(read_secret_file(max.to_str().unwrap()).is_ok());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        for (path, why) in [
            (big.to_str().unwrap(), "larger than 1024 KiB"),
            (fifo.to_str().unwrap(), "not a regular file"),
            ("/dev/zero", "not a regular file"),
            (dir.path().to_str().unwrap(), "not a regular file"),
        ] {
            let err = read_secret_file(path).unwrap_err().to_string();
            assert!(err.contains(why), "{path}: {err}");
        }
    }

    #[test]
    fn tree_expansion_reports_paths() {
        let src = Fake(HashMap::from([("A", "1")]));
        let mut v: Value = serde_yaml_ng::from_str("x: [\"${A}\", \"${B}\"]\ny: plain").unwrap();
        let (changed, errors) = expand_tree(&mut v, &src);
        assert_eq!(changed["x[0]"], "1");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "x[1]");
    }

    #[test]
    fn template_references_under_transform_are_left_for_the_policy() {
        let src = Fake(HashMap::from([("TOKEN", "t0k"), ("client_ip", "env")]));
        let mut v: Value = serde_yaml_ng::from_str(
            "transform: {a: \"Bearer ${TOKEN} ${header.x} ${client_ip} $${lit} ${x\"}\nb: \"${client_ip}\"",
        )
        .unwrap();
        let (changed, errors) = expand_tree(&mut v, &src);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            v["transform"]["a"].as_str().unwrap(),
            "Bearer t0k ${header.x} ${client_ip} $${lit} ${x"
        );
        // Outside a transform, `${client_ip}` is an environment variable as before.
        assert_eq!(v["b"].as_str().unwrap(), "env");
        assert_eq!(changed.len(), 2);
    }
}
