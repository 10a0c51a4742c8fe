//! What a JWT issuer requires of a verified token's claims (`required_claims`, the `claims`
//! rules) and what it derives from them (the subject for the consumer lookup, `claim_headers`).
//!
//! Pure functions over the claims map; signatures and the standard claims (`exp`, `nbf`, `iss`,
//! `aud`) are `jwt.rs`'s. Failure texts name the claim and never quote its value.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::config::{RawClaimRule, RawJwtProvider};
use super::{AuthFailure, Verified};

/// Headers a claim mapping may not set: framing, routing, credentials and the gateway's own
/// identity headers.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    "x-consumer-name",
    "x-consumer-id",
    "x-consumer-groups",
    "x-anonymous-consumer",
];

/// A condition on one claim.
enum Rule {
    Equals(Value),
    /// A space-separated string (`scope`) or an array holds this item.
    Contains(String),
    /// The claim, or one item of an array claim, is one of these.
    OneOf(Vec<Value>),
}

/// An issuer's claim requirements and mappings.
pub(super) struct ClaimPolicy {
    required: Vec<String>,
    rules: Vec<(String, Rule)>,
    consumer_claim: String,
    headers: Vec<(String, HeaderName)>,
}

impl ClaimPolicy {
    /// From the provider's config; problems go to `err(path, message)`. `token_header` is the
    /// header the issuer reads tokens from, which no mapping may overwrite.
    pub(super) fn build(
        raw: &RawJwtProvider,
        path: &str,
        token_header: Option<&HeaderName>,
        err: &mut impl FnMut(String, String),
    ) -> Self {
        if raw.consumer_claim.is_empty() {
            err(format!("{path}.consumer_claim"), "must not be empty".into());
        }
        let mut rules = Vec::new();
        for (claim, rule) in &raw.claims {
            match parse_rule(rule) {
                Ok(r) => rules.push((claim.clone(), r)),
                Err(why) => err(format!("{path}.claims.{claim}"), why),
            }
        }
        let mut headers = Vec::new();
        for (claim, header) in &raw.claim_headers {
            let at = format!("{path}.claim_headers.{claim}");
            match HeaderName::from_bytes(header.as_bytes()) {
                Err(_) => err(at, format!("`{header}` is not a valid header name")),
                Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => err(
                    at,
                    format!("`{header}` is reserved (framing, routing, credentials or identity)"),
                ),
                Ok(h) if token_header == Some(&h) => err(
                    at,
                    format!("`{header}` is where this issuer reads its tokens"),
                ),
                Ok(h) => headers.push((claim.clone(), h)),
            }
        }
        Self {
            required: raw.required_claims.clone(),
            rules,
            consumer_claim: raw.consumer_claim.clone(),
            headers,
        }
    }

    /// Upstream header names the mappings may set.
    pub(super) fn header_names(&self) -> Vec<HeaderName> {
        self.headers.iter().map(|(_, h)| h.clone()).collect()
    }

    /// Required claims present and every rule satisfied.
    pub(super) fn check(&self, claims: &Map<String, Value>) -> Result<(), AuthFailure> {
        for name in &self.required {
            if claim(claims, name).is_none_or(Value::is_null) {
                return Err(AuthFailure::Invalid(format!(
                    "the token lacks the required claim `{name}`"
                )));
            }
        }
        for (name, rule) in &self.rules {
            let Some(value) = claim(claims, name) else {
                return Err(AuthFailure::Insufficient(format!(
                    "the token lacks the claim `{name}`"
                )));
            };
            let ok = match rule {
                Rule::Equals(want) => value == want,
                Rule::Contains(item) => match value {
                    Value::String(s) => s.split_whitespace().any(|w| w == item),
                    Value::Array(a) => a.iter().any(|v| v.as_str() == Some(item)),
                    _ => false,
                },
                Rule::OneOf(list) => match value {
                    Value::Array(a) => a.iter().any(|v| list.contains(v)),
                    v => list.contains(v),
                },
            };
            if !ok {
                return Err(AuthFailure::Insufficient(format!(
                    "the token's `{name}` claim does not satisfy this issuer's rule"
                )));
            }
        }
        Ok(())
    }

    /// The subject and the mapped headers. Arrays of scalars are joined with ", " (as
    /// `X-Consumer-Groups` is);
    /// objects, and values that are not valid in a header, are left out.
    pub(super) fn verified(&self, claims: &Map<String, Value>) -> Verified {
        let subject = claim(claims, &self.consumer_claim).and_then(scalar_text);
        let headers = self
            .headers
            .iter()
            .filter_map(|(name, header)| {
                let text = match claim(claims, name)? {
                    Value::Array(items) => {
                        let parts: Option<Vec<String>> = items.iter().map(scalar_text).collect();
                        parts?.join(", ")
                    }
                    v => scalar_text(v)?,
                };
                Some((header.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        Verified {
            subject,
            headers,
            claims: None,
        }
    }
}

/// A claim by name; a dotted name that is not a top-level claim walks nested objects
/// (`realm_access.roles`).
pub(super) fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// A string, number or boolean claim as text; `None` for arrays, objects and null.
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_rule(rule: &RawClaimRule) -> Result<Rule, String> {
    match (&rule.equals, &rule.contains, &rule.one_of) {
        (Some(v), None, None) => Ok(Rule::Equals(v.clone())),
        (None, Some(item), None) => Ok(Rule::Contains(item.clone())),
        (None, None, Some(list)) if !list.is_empty() => Ok(Rule::OneOf(list.clone())),
        (None, None, Some(_)) => Err("`in` needs at least one value".to_string()),
        _ => Err("give exactly one of `equals`, `contains`, `in`".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_on_strings_arrays_and_nested_claims() {
        let p = ClaimPolicy {
            required: vec!["email".into()],
            rules: vec![
                ("scope".into(), Rule::Contains("orders:read".into())),
                (
                    "role".into(),
                    Rule::OneOf(vec![Value::from("admin"), Value::from("ops")]),
                ),
                ("tenant.id".into(), Rule::Equals(Value::from(7))),
            ],
            consumer_claim: "sub".into(),
            headers: vec![("roles".into(), HeaderName::from_static("x-roles"))],
        };
        let check = |v: Value| p.check(v.as_object().unwrap()).is_ok();
        assert!(check(
            serde_json::json!({"email": "e", "scope": "a orders:read", "role": "ops", "tenant": {"id": 7}})
        ));
        assert!(check(
            serde_json::json!({"email": "e", "scope": ["orders:read"], "role": ["x", "admin"], "tenant.id": 7})
        ));
        assert!(!check(
            serde_json::json!({"email": "e", "scope": "orders:readx", "role": "ops", "tenant": {"id": 7}})
        ));
        assert!(!check(
            serde_json::json!({"email": "e", "scope": "orders:read", "role": "user", "tenant": {"id": 7}})
        ));
        assert!(!check(
            serde_json::json!({"email": null, "scope": "orders:read", "role": "ops", "tenant": {"id": 7}})
        ));
        let v = serde_json::json!({"sub": 42, "roles": ["a", "b"]});
        let verified = p.verified(v.as_object().unwrap());
        assert_eq!(verified.subject.as_deref(), Some("42"));
        assert_eq!(verified.headers[0].1, "a, b");
        // A value that cannot be a header value is left out, not sent mangled.
        let v = serde_json::json!({"roles": "line\nbreak"});
        assert!(p.verified(v.as_object().unwrap()).headers.is_empty());
    }
}
