//! JWT test helpers: test keys (tests/fixtures/jwt/), signing, JWKs, a JWKS server whose keys
//! the test can change while it runs, and gateway configs with JWT issuers.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::config::{Config, Consumer, Service};
use super::upstream::{self, Upstream};
use super::{send, Reply};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const ISS: &str = "https://issuer.test";
pub const AUD: &str = "orders-api";
pub const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

pub fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).expect("fixture")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Valid claims for alice (`sub: user-1`), with `extra` merged over them.
pub fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "user-1", "iat": now(), "exp": now() + 600});
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// The private key for `alg` named `key` (a fixture base name, or the HMAC secret itself).
pub fn encoding_key(alg: Algorithm, key: &str) -> EncodingKey {
    let pem = || fixture(&format!("{key}.key"));
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(key.as_bytes())
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem().as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem().as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem().as_bytes()).unwrap(),
    }
}

pub fn sign(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, key)).expect("sign")
}

/// The public JWK of fixture `key` for `alg`, with `kid`.
pub fn jwk(key: &str, alg: Algorithm, kid: &str) -> Value {
    if alg == Algorithm::EdDSA {
        // jsonwebtoken cannot derive an OKP JWK: the key is the last 32 bytes of the SPKI DER.
        let pem = fixture(&format!("{key}.pub.pem"));
        let b64_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64_body)
            .expect("pem");
        let x = b64(&der[der.len() - 32..]);
        return json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": x});
    }
    let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, key), alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap()
}

pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// What the JWKS server serves, changed by the tests while it runs.
#[derive(Default)]
pub struct JwksState {
    /// The JWKs served.
    pub keys: Vec<Value>,
    /// Answer 503 instead.
    pub down: bool,
}

/// A JWKS server at `/jwks` (and `/jwks-b`, the same document under another URL).
pub async fn jwks_server(keys: Vec<Value>) -> (Upstream, Arc<Mutex<JwksState>>) {
    let state = Arc::new(Mutex::new(JwksState { keys, down: false }));
    let st = Arc::clone(&state);
    let server = upstream::http1("jwks")
        .route(
            "/jwks",
            upstream::handler(move |_req| {
                let st = Arc::clone(&st);
                async move {
                    let (down, doc) = {
                        let s = st.lock().unwrap();
                        (s.down, json!({"keys": s.keys}).to_string())
                    };
                    let mut r = http::Response::new(upstream::full(if down {
                        "unavailable".to_string()
                    } else {
                        doc
                    }));
                    if down {
                        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    r
                }
            }),
        )
        .spawn()
        .await;
    (server, state)
}

/// Consumers, service `a` at `up`, `auth:` with realm `shop` and the JWT providers given as
/// YAML (indented under `jwt:`), then `routes`.
pub fn config(up: &str, providers: &str, routes: &str) -> String {
    Config::new()
        .consumer(
            Consumer::new("alice")
                .set("id", "c-001")
                .set("groups", "[staff]")
                .set("jwt_subjects", "[user-1]"),
        )
        .service(Service::new("a").target(up))
        .set("auth", format!("\n  realm: shop\n  jwt:\n{providers}"))
        .yaml(&format!("routes:\n{routes}"))
        .to_yaml()
}

/// One route `r` on every path with the given auth policy (a YAML flow map).
pub fn route(policy: &str) -> String {
    format!("  - name: r\n    service: a\n    policies: [{{auth: {policy}}}]\n")
}

/// Provider `main` with the usual issuer and audience plus `extra` lines (4-space indented).
pub fn main_provider(extra: &str) -> String {
    format!("    main:\n      issuer: \"{ISS}\"\n      audiences: [{AUD}]\n{extra}")
}

pub fn bearer(token: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {token}"))]
}

pub async fn get_with(url: &str, headers: &[(&str, String)]) -> Reply {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send("GET", url, &h, "").await
}

/// A 401 in the common JSON shape with an RFC 6750 challenge whose description contains
/// `why`; neither the body nor the challenge quotes `token`.
pub fn assert_invalid_token(r: &Reply, why: &str, token: &str) {
    r.assert_error(401, "unauthorized");
    let challenge = r.header("www-authenticate");
    assert!(
        challenge
            .starts_with("Bearer realm=\"shop\", error=\"invalid_token\", error_description=\""),
        "{challenge}"
    );
    assert!(challenge.contains(why), "wanted `{why}` in {challenge}");
    if token.len() > 8 {
        assert!(
            !challenge.contains(token) && !r.text().contains(token),
            "token echoed"
        );
    }
}
