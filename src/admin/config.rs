//! The `admin:` section, and the redaction of secrets from the config the admin API shows.

use serde_json::Value;

use crate::config::raw::RawConfig;

pub use crate::config::admin::RawAdmin;

/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: &[&str] = &[
    "api_keys",
    "password",
    "password_hash",
    "secret",
    "client_secret",
    "token",
];

/// The effective config as JSON with every secret replaced by `"<redacted>"`: credentials,
/// HMAC keys, client secrets, the admin token, and passwords inside URLs.
pub fn redacted(raw: &RawConfig) -> Value {
    let mut v = serde_json::to_value(raw).unwrap_or(Value::Null);
    redact(&mut v);
    // OTLP headers usually carry a collector's credentials, under any header name.
    if let Some(Value::Object(headers)) = v.pointer_mut("/tracing/otlp/headers") {
        for value in headers.values_mut() {
            *value = Value::String("<redacted>".into());
        }
    }
    v
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) && !child.is_null() {
                    *child = Value::String("<redacted>".into());
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(clean) = strip_url_password(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host...` → `scheme://user:<redacted>@host...`.
fn strip_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (userinfo, _) = rest[..authority_end].rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    let after = &rest[userinfo.len()..];
    Some(format!("{scheme}://{user}:<redacted>{after}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            strip_url_password("redis://:pw@h:1/0").unwrap(),
            "redis://:<redacted>@h:1/0"
        );
        assert_eq!(
            strip_url_password("redis://u:pw@h").unwrap(),
            "redis://u:<redacted>@h"
        );
        assert!(strip_url_password("http://h/a@b").is_none());
        assert!(strip_url_password("plain text").is_none());
    }

    #[test]
    fn otlp_headers_are_redacted_whatever_their_names() {
        let raw: RawConfig = serde_yaml_ng::from_str(
            "tracing: {otlp: {endpoint: 'http://c:4318/v1/traces', headers: {x-honeycomb-team: k1}}}",
        )
        .unwrap();
        let v = redacted(&raw);
        assert_eq!(
            v["tracing"]["otlp"]["headers"]["x-honeycomb-team"],
            "<redacted>"
        );
        assert_eq!(v["tracing"]["otlp"]["endpoint"], "http://c:4318/v1/traces");
    }
}
