//! JWT header and claims, through the issuer's whole check: token extraction, header parsing,
//! algorithm allow-list, key choice by `kid`, signature, the standard claims and the issuer's
//! claim rules and claim → header mappings.
//!
//! A random token almost never gets past the signature, so most inputs are built: the fuzzer
//! writes the header and claims JSON and the target signs them (with one of the issuer's
//! secrets or with a secret the issuer does not know), optionally patching `exp`/`iss` so that
//! the claim checks behind the signature are reached.
//!
//! Invariants besides "no panic": a token signed with an unknown secret is never accepted; an
//! accepted token has the issuer's `iss`, a future `exp` and an allowed algorithm.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use portico::policy::auth::jwt::JwtProvider;
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;

const ISSUER: &str = "fuzz-issuer";
const SECRET_1: &str = "fuzz-secret-one-0123456789abcdef-0123456789";
const SECRET_2: &str = "fuzz-secret-two-0123456789abcdef-0123456789";
const UNKNOWN: &str = "not-a-secret-of-the-issuer-0123456789abcdef";

fn provider() -> &'static JwtProvider {
    static P: OnceLock<JwtProvider> = OnceLock::new();
    P.get_or_init(|| {
        let raw = json!({
            "issuer": ISSUER,
            "audiences": ["api", "admin"],
            "algorithms": ["HS256", "HS384"],
            "keys": [
                {"kid": "k1", "secret": SECRET_1},
                {"kid": "k2", "secret": SECRET_2},
            ],
            "leeway": "30s",
            "required_claims": ["sub", "tenant.id"],
            "claims": {
                "scope": {"contains": "read"},
                "tier": {"in": ["gold", "silver", 3]},
                "tenant.region": {"equals": "eu"},
            },
            "claim_headers": {"sub": "x-user", "groups": "x-groups", "tenant.id": "x-tenant"},
            "cache_size": 64,
        });
        let raw = serde_json::from_value(raw).expect("a provider config");
        let mut errors = Vec::new();
        JwtProvider::build("fuzz", &raw, "auth.jwt.fuzz", &mut errors)
            .unwrap_or_else(|| panic!("the fixed provider is invalid: {errors:?}"))
    })
}

/// The first line says what the rest is:
/// - `raw`: the token;
/// - `header`: an `Authorization` header value, read as the proxy reads it;
/// - `sign KEY ALG [patch]`: the header JSON on the next line, the claims JSON after it, signed
///   by the target with secret KEY (`1`, `2`, or anything else for a secret the issuer does not
///   have) and ALG (`HS256`, `HS384`, `HS512`); `patch` gives an object of claims a future
///   `exp` and the issuer's `iss`, so the checks behind the standard claims are reached.
enum Input<'a> {
    Raw(&'a str),
    Header(&'a [u8]),
    Signed {
        header: &'a [u8],
        claims: &'a [u8],
        key: u8,
        alg: Algorithm,
        patch: bool,
    },
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let first = std::str::from_utf8(&data[..split]).ok()?;
    let rest = data.get(split + 1..).unwrap_or_default();
    let mut words = first.split(' ');
    Some(match words.next()? {
        "raw" => Input::Raw(std::str::from_utf8(rest).ok()?),
        "header" => Input::Header(rest),
        "sign" => {
            let key = match words.next() {
                Some("1") => 0,
                Some("2") => 1,
                _ => 2,
            };
            let alg = match words.next() {
                Some("HS384") => Algorithm::HS384,
                Some("HS512") => Algorithm::HS512,
                _ => Algorithm::HS256,
            };
            let patch = words.next() == Some("patch");
            let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            Input::Signed {
                header: &rest[..split],
                claims: rest.get(split + 1..).unwrap_or_default(),
                key,
                alg,
                patch,
            }
        }
        _ => return None,
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn patched(claims: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(claims) {
        Ok(Value::Object(mut m)) => {
            let now = jsonwebtoken::get_current_timestamp();
            m.insert("exp".into(), json!(now + 3600));
            m.insert("iss".into(), json!(ISSUER));
            serde_json::to_vec(&Value::Object(m)).expect("serializes")
        }
        _ => claims.to_vec(),
    }
}

fn verify(
    token: &str,
) -> Result<portico::policy::auth::Verified, portico::policy::auth::AuthFailure> {
    let _ = jsonwebtoken::decode_header(token);
    common::runtime().block_on(provider().verify(token))
}

fn check_accepted(token: &str, verified: &portico::policy::auth::Verified) {
    let header = jsonwebtoken::decode_header(token).expect("an accepted token has a header");
    assert!(
        provider().algorithms().contains(&header.alg),
        "accepted {:?}",
        header.alg
    );
    let claims = verified.claims.as_ref().expect("claims are kept");
    assert_eq!(claims.get("iss"), Some(&json!(ISSUER)));
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .expect("a numeric exp");
    assert!(exp + 30.0 >= jsonwebtoken::get_current_timestamp() as f64);
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = parse(data) else {
        return;
    };
    match input {
        Input::Raw(token) => {
            if let Ok(v) = verify(token) {
                check_accepted(token, &v);
            }
        }
        Input::Header(value) => {
            let Ok(value) = http::HeaderValue::from_bytes(value) else {
                return;
            };
            let (mut parts, ()) = http::Request::new(()).into_parts();
            parts.headers.insert(http::header::AUTHORIZATION, value);
            if let Some(token) = provider().token(&parts) {
                if let Ok(v) = verify(&token) {
                    check_accepted(&token, &v);
                }
            }
        }
        Input::Signed {
            header,
            claims,
            key,
            alg,
            patch,
        } => {
            let claims = if patch {
                patched(claims)
            } else {
                claims.to_vec()
            };
            let secret = match key {
                0 => SECRET_1,
                1 => SECRET_2,
                _ => UNKNOWN,
            };
            let signing_input = format!("{}.{}", b64(header), b64(&claims));
            let signature = jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &EncodingKey::from_secret(secret.as_bytes()),
                alg,
            )
            .expect("HMAC signing");
            let token = format!("{signing_input}.{signature}");
            match verify(&token) {
                Ok(v) => {
                    assert!(
                        key < 2,
                        "a token signed with an unknown secret was accepted"
                    );
                    check_accepted(&token, &v);
                }
                Err(e) => {
                    let text = format!("{e:?}");
                    assert!(!text.contains(&token), "the failure quotes the token");
                }
            }
        }
    }
});
