//! JWT verification cost per token: cold (no cache: signature + claims every time) for RS256,
//! ES256 and EdDSA, and a warm verified-token cache hit (SHA-256 of the token + one lookup).
//!
//! The futures complete on their first poll (static keys, no JWKS), so they are polled once
//! with a no-op waker instead of paying a runtime's `block_on` per iteration.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portico::policy::auth::config::RawJwtProvider;
use portico::policy::auth::jwt::JwtProvider;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn provider(alg: &str, public: &str, cache_size: u64) -> JwtProvider {
    let yaml = format!(
        "issuer: https://issuer.test\naudiences: [api]\nalgorithms: [{alg}]\nkeys: [{{pem_file: \"{}/tests/fixtures/jwt/{public}\"}}]\ncache_size: {cache_size}\nclaim_headers: {{sub: X-User-Id}}\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw: RawJwtProvider = serde_yaml_ng::from_str(&yaml).expect("yaml");
    let mut errors = Vec::new();
    JwtProvider::build("bench", &raw, "auth.jwt.bench", &mut errors)
        .unwrap_or_else(|| panic!("{errors:?}"))
}

fn token(alg: Algorithm, key: EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://issuer.test", "aud": "api", "sub": "user-1",
        "iat": now, "exp": now + 3600, "scope": "orders:read orders:write",
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign")
}

/// Polls a future that must be ready at once.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification waited"),
    }
}

fn verify(c: &mut Criterion) {
    let rsa = EncodingKey::from_rsa_pem(fixture("rsa-a.key").as_bytes()).expect("rsa");
    let ec = EncodingKey::from_ec_pem(fixture("ec-p256.key").as_bytes()).expect("ec");
    let ed = EncodingKey::from_ed_pem(fixture("ed25519.key").as_bytes()).expect("ed");
    let cases = [
        (
            "RS256",
            provider("RS256", "rsa-a.pub.pem", 0),
            token(Algorithm::RS256, rsa.clone()),
        ),
        (
            "ES256",
            provider("ES256", "ec-p256.pub.pem", 0),
            token(Algorithm::ES256, ec),
        ),
        (
            "EdDSA",
            provider("EdDSA", "ed25519.pub.pem", 0),
            token(Algorithm::EdDSA, ed),
        ),
    ];
    let mut group = c.benchmark_group("jwt_verify_cold");
    for (name, p, t) in &cases {
        assert!(now_or_never(p.verify(t)).is_ok());
        group.bench_function(*name, |b| {
            b.iter(|| now_or_never(p.verify(std::hint::black_box(t))).is_ok())
        });
    }
    group.finish();

    let warm = provider("RS256", "rsa-a.pub.pem", 10_000);
    let t = token(Algorithm::RS256, rsa);
    assert!(now_or_never(warm.verify(&t)).is_ok());
    c.bench_function("jwt_verify_warm_cache/RS256", |b| {
        b.iter(|| now_or_never(warm.verify(std::hint::black_box(&t))).is_ok())
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
