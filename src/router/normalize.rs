//! Path normalisation before routing (RFC 3986 §6.2.2, in the manner of Envoy's
//! `normalize_path` and `merge_slashes`).
//!
//! A route's policies protect the path the upstream serves, so the gateway must route on the
//! spelling the upstream will understand: `/%73ecure`, `//secure` and `/secur%65` are all
//! `/secure` to most backends. The gateway routes on the normalised path and forwards that same
//! path, so what was routed is what the upstream sees.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `paths:` in the config: how request paths are normalised before routing.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    /// Merge repeated slashes (`//a///b` → `/a/b`) before routing and forwarding. Default true.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// Route without regard to case, for case-insensitive backends: the path is lowercased
    /// (percent-escapes aside) before routing and is forwarded lowercased. Route paths must
    /// then be written in lowercase. Default false.
    #[serde(default)]
    pub case_insensitive: bool,
    /// What to do with an encoded slash or backslash (`%2F`, `%5C`) in a path: `reject` (400,
    /// the default) or `keep` it encoded. A route may say `escaped_slashes: keep` for itself.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            case_insensitive: false,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

fn yes() -> bool {
    true
}

/// The answer to `%2F` / `%5C` in a path: backends disagree on whether it separates segments,
/// so by default the gateway does not guess.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 Bad Request.
    #[default]
    Reject,
    /// Route and forward the path with the slash still encoded.
    Keep,
}

/// Why a path cannot be normalised (each a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    MalformedEscape,
    /// `%00`: C backends end the path there.
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
}

impl PathError {
    /// The error's text, for the JSON answer.
    pub fn message(self) -> &'static str {
        match self {
            PathError::MalformedEscape => "the path has a malformed percent-encoding",
            PathError::EncodedNul => "the path contains an encoded NUL (%00)",
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path as the gateway routes and forwards it: percent-encoded unreserved characters
/// decoded, the other escapes in uppercase, repeated slashes merged (when `rules` say so), and
/// lowercased under `case_insensitive`. Borrows when nothing changes, as for most paths.
pub fn normalize<'a>(path: &'a str, rules: &RawPaths) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    let needs_work = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            || (rules.merge_slashes && b == b'/' && bytes.get(i + 1) == Some(&b'/'))
            || (rules.case_insensitive && b.is_ascii_uppercase())
    });
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value = match (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                (Some(hi), Some(lo)) => hi << 4 | lo,
                _ => return Err(PathError::MalformedEscape),
            };
            if value == 0 {
                return Err(PathError::EncodedNul);
            }
            if is_unreserved(value) {
                out.push(if rules.case_insensitive {
                    value.to_ascii_lowercase()
                } else {
                    value
                });
                // A decoded character may complete a `//` only if it is `/`, which is reserved.
            } else {
                out.extend_from_slice(&[
                    b'%',
                    HEX[(value >> 4) as usize],
                    HEX[(value & 15) as usize],
                ]);
            }
            i += 3;
            continue;
        }
        if b == b'/' && rules.merge_slashes && out.last() == Some(&b'/') {
            i += 1;
            continue;
        }
        out.push(if rules.case_insensitive {
            b.to_ascii_lowercase()
        } else {
            b
        });
        i += 1;
    }
    // Only ASCII was replaced by ASCII, so the bytes are still the UTF-8 they came as.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::MalformedEscape)
}

/// The key the router looks up: the normalised path without `;parameters` in its segments
/// (`/secure;a=b/x` routes as `/secure/x`), since servlet-style backends drop them when they map
/// the path. The forwarded path keeps them. Borrows when the path has no `;`.
pub fn routing_key(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// Whether the normalised path still holds an encoded `/` or `\`.
pub fn has_escaped_slash(path: &str) -> bool {
    path.contains("%2F") || path.contains("%5C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, &RawPaths::default()).map(Cow::into_owned)
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(norm("/%73ecure/x").unwrap(), "/secure/x");
        assert_eq!(norm("/secur%65").unwrap(), "/secure");
        assert_eq!(norm("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/%7E%2D%2E%5F").unwrap(), "/~-._");
    }

    #[test]
    fn repeated_slashes_are_merged_unless_switched_off() {
        assert_eq!(norm("//secure///x//").unwrap(), "/secure/x/");
        let keep = RawPaths {
            merge_slashes: false,
            ..RawPaths::default()
        };
        assert_eq!(normalize("//secure", &keep).unwrap(), "//secure");
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/users/7", &RawPaths::default()).unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(routing_key("/api/users/7"), Cow::Borrowed(_)));
    }

    #[test]
    fn malformed_and_nul_escapes_are_errors() {
        assert_eq!(norm("/a%zz"), Err(PathError::MalformedEscape));
        assert_eq!(norm("/a%4"), Err(PathError::MalformedEscape));
        assert_eq!(norm("/a%00b"), Err(PathError::EncodedNul));
    }

    #[test]
    fn case_insensitive_lowercases_but_keeps_escapes_upper() {
        let ci = RawPaths {
            case_insensitive: true,
            ..RawPaths::default()
        };
        assert_eq!(normalize("/SeCuRe/%2f/%41", &ci).unwrap(), "/secure/%2F/a");
    }

    #[test]
    fn segment_parameters_are_left_out_of_the_routing_key() {
        assert_eq!(routing_key("/secure;a=b/x"), "/secure/x");
        assert_eq!(routing_key("/a;x/b;y;z/c"), "/a/b/c");
        assert!(has_escaped_slash("/a%2Fb"));
        assert!(has_escaped_slash("/a%5Cb"));
        assert!(!has_escaped_slash("/a%2Eb"));
    }
}
