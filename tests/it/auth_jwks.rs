//! JWT issuers with a JWKS endpoint: a JWKS server runs inside the test; its keys are rotated
//! and it is taken down while the gateway runs.

use std::time::Duration;

use crate::support::jwt::*;
use crate::support::{self, upstream, TestGateway};
use jsonwebtoken::Algorithm;
use serde_json::json;

#[tokio::test]
async fn jwks_keys_rotate_without_restart_and_unknown_kids_refetch_at_most_once_per_10s() {
    let up = upstream::http1("a").spawn().await;
    let (jwks, state) = jwks_server(vec![
        jwk("rsa-a", Algorithm::RS256, "a"),
        jwk("ec-p256", Algorithm::ES256, "e"),
    ])
    .await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256, PS256, ES256, EdDSA]\n      jwks_url: \"{}/jwks\"\n",
        jwks.url()
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    assert_eq!(jwks.hits(), 0, "fetched at first use");

    let a = sign(Algorithm::RS256, "rsa-a", Some("a"), &claims(json!({})));
    let r = get_with(&gw.url("/x"), &bearer(&a)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = sign(Algorithm::ES256, "ec-p256", Some("e"), &claims(json!({})));
    assert_eq!(get_with(&gw.url("/x"), &bearer(&e)).await.status, 200);
    assert_eq!(jwks.hits(), 1);

    // The issuer rotates: a new key appears in its JWKS. A token naming it triggers a refetch
    // and is accepted, without a restart.
    state
        .lock()
        .unwrap()
        .keys
        .push(jwk("rsa-b", Algorithm::RS256, "b"));
    let b = sign(Algorithm::RS256, "rsa-b", Some("b"), &claims(json!({})));
    let r = get_with(&gw.url("/x"), &bearer(&b)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks.hits(), 2);

    // Another new key right after: within 10 s of the last refetch, no new fetch happens, so
    // the token is refused (401, not 5xx); random kids cannot make the gateway hammer the IdP.
    state
        .lock()
        .unwrap()
        .keys
        .push(jwk("ed25519", Algorithm::EdDSA, "d"));
    let d = sign(Algorithm::EdDSA, "ed25519", Some("d"), &claims(json!({})));
    for _ in 0..3 {
        let r = get_with(&gw.url("/x"), &bearer(&d)).await;
        assert_invalid_token(&r, "key id (kid) is unknown", &d);
    }
    let junk = sign(
        Algorithm::RS256,
        "rsa-b",
        Some("no-such-kid"),
        &claims(json!({})),
    );
    let r = get_with(&gw.url("/x"), &bearer(&junk)).await;
    assert_invalid_token(&r, "key id (kid) is unknown", &junk);
    assert_eq!(jwks.hits(), 2, "unknown kids refetch at most once per 10 s");

    // A JWK whose `alg` is RS256 does not verify a PS256 token made with the same key.
    let ps = sign(Algorithm::PS256, "rsa-a", Some("a"), &claims(json!({})));
    let r = get_with(&gw.url("/x"), &bearer(&ps)).await;
    assert_invalid_token(&r, "not for the PS256 algorithm", &ps);
}

#[tokio::test]
async fn the_jwks_is_refreshed_on_schedule_so_a_withdrawn_key_stops_working() {
    let up = upstream::http1("a").spawn().await;
    let (jwks, state) = jwks_server(vec![jwk("rsa-a", Algorithm::RS256, "a")]).await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      jwks_url: \"{}/jwks\"\n      jwks_refresh: 1s\n",
        jwks.url()
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let a = sign(Algorithm::RS256, "rsa-a", Some("a"), &claims(json!({})));
    assert_eq!(get_with(&gw.url("/x"), &bearer(&a)).await.status, 200);
    assert_eq!(jwks.hits(), 1);

    // The issuer withdraws key `a` and publishes `b`.
    state.lock().unwrap().keys = vec![jwk("rsa-b", Algorithm::RS256, "b")];
    // Once the keys are older than `jwks_refresh`, a request starts a background refresh and is
    // itself served with the keys it has (it does not wait for the IdP). The refresh interval is
    // real time, so this polls, boundedly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let a2 = sign(
        Algorithm::RS256,
        "rsa-a",
        Some("a"),
        &claims(json!({"sub": "u2"})),
    );
    while jwks.hits() < 2 {
        assert!(std::time::Instant::now() < deadline, "no scheduled refresh");
        let r = get_with(&gw.url("/x"), &bearer(&a2)).await;
        assert!(r.status == 200 || r.status == 401, "{}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After the refresh, a fresh token of the withdrawn key fails and the new key works. (The
    // verified-token cache keeps an entry at most one `jwks_refresh` for JWKS issuers.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let b = sign(Algorithm::RS256, "rsa-b", Some("b"), &claims(json!({})));
    while get_with(&gw.url("/x"), &bearer(&b)).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "key b never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a3 = sign(
        Algorithm::RS256,
        "rsa-a",
        Some("a"),
        &claims(json!({"sub": "u3"})),
    );
    let r = get_with(&gw.url("/x"), &bearer(&a3)).await;
    assert_invalid_token(&r, "kid", &a3);
}

#[tokio::test]
async fn a_jwks_outage_keeps_the_last_good_keys_and_without_any_keys_tokens_are_401() {
    let up = upstream::http1("a").spawn().await;
    let (jwks, state) = jwks_server(vec![jwk("rsa-a", Algorithm::RS256, "a")]).await;
    let provider_at = |path: &str| {
        main_provider(&format!(
            "      algorithms: [RS256]\n      jwks_url: \"{}{path}\"\n      cache_size: 0\n",
            jwks.url()
        ))
    };
    let gw = TestGateway::start(&config(
        &up.url(),
        &provider_at("/jwks"),
        &route("{jwt: [main]}"),
    ));
    let token = |sub: &str| {
        sign(
            Algorithm::RS256,
            "rsa-a",
            Some("a"),
            &claims(json!({"sub": sub})),
        )
    };
    assert_eq!(
        get_with(&gw.url("/x"), &bearer(&token("u1"))).await.status,
        200
    );

    state.lock().unwrap().down = true;
    // New tokens (no cache here anyway) signed by the known key still pass.
    for sub in ["u2", "u3"] {
        let r = get_with(&gw.url("/x"), &bearer(&token(sub))).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // An unknown kid makes the gateway try the JWKS, which fails: 401, and the old keys stay.
    let unknown = sign(Algorithm::RS256, "rsa-b", Some("b"), &claims(json!({})));
    let r = get_with(&gw.url("/x"), &bearer(&unknown)).await;
    assert_invalid_token(&r, "kid", &unknown);
    assert_eq!(jwks.hits(), 2);
    assert_eq!(
        get_with(&gw.url("/x"), &bearer(&token("u4"))).await.status,
        200
    );

    // A config reload that keeps this issuer unchanged keeps its keys, even with the JWKS
    // still down.
    let routes = format!(
        "{}  - name: extra\n    match: {{path: /extra}}\n    service: a\n",
        route("{jwt: [main]}")
    );
    let outcome = gw.reload(&config(&up.url(), &provider_at("/jwks"), &routes));
    assert!(outcome.is_ok(), "{outcome:?}");
    let r = get_with(&gw.url("/x"), &bearer(&token("u5"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks.hits(), 2, "the reload did not refetch");

    // An issuer whose JWKS was never reachable: every token is a 401, never a 5xx, and the
    // gateway does not retry on every request.
    let gw2 = TestGateway::start(&config(
        &up.url(),
        &provider_at("/jwks-never"),
        &route("{jwt: [main]}"),
    ));
    for _ in 0..3 {
        let r = get_with(&gw2.url("/x"), &bearer(&token("u6"))).await;
        assert_invalid_token(&r, "no signing keys are available", "");
    }
    assert_eq!(jwks.hits(), 3, "one attempt for the never-fetched issuer");
}

/// The real binary fetches the JWKS of the issuers its routes use at start, so the first request
/// does not wait for the identity provider.
#[tokio::test]
async fn the_gateway_fetches_jwks_documents_at_start_before_any_request() {
    let up = upstream::http1("a").spawn().await;
    let (jwks, _state) = jwks_server(vec![jwk("rsa-a", Algorithm::RS256, "a")]).await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      jwks_url: \"{}/jwks\"\n",
        jwks.url()
    ));
    let yaml = config(&up.url(), &providers, &route("{jwt: [main]}"));
    let gw = tokio::task::spawn_blocking(move || support::GatewayProcess::spawn(&yaml, &[]))
        .await
        .unwrap();
    // No request has been sent: wait (bounded) for the prefetch to reach the JWKS server.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while jwks.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the JWKS was not fetched at start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = sign(Algorithm::RS256, "rsa-a", Some("a"), &claims(json!({})));
    let r = get_with(&gw.url("/x"), &bearer(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks.hits(), 1, "the first request used the prefetched keys");
}

#[tokio::test]
async fn a_cached_token_is_refused_as_soon_as_a_refetch_drops_its_key() {
    let up = upstream::http1("a").spawn().await;
    let (jwks, state) = jwks_server(vec![jwk("rsa-a", Algorithm::RS256, "a")]).await;
    // The default `jwks_refresh` (5 min) would keep a cached token alive that long before.
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      jwks_url: \"{}/jwks\"\n",
        jwks.url()
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let a = sign(Algorithm::RS256, "rsa-a", Some("a"), &claims(json!({})));
    for _ in 0..2 {
        // The second answer comes from the verified-token cache.
        assert_eq!(get_with(&gw.url("/x"), &bearer(&a)).await.status, 200);
    }
    assert_eq!(jwks.hits(), 1);

    // The issuer withdraws key `a` (say it leaked) and publishes `b`. The first token of `b`
    // names an unknown kid, which refetches the key set.
    state.lock().unwrap().keys = vec![jwk("rsa-b", Algorithm::RS256, "b")];
    let b = sign(Algorithm::RS256, "rsa-b", Some("b"), &claims(json!({})));
    assert_eq!(get_with(&gw.url("/x"), &bearer(&b)).await.status, 200);
    assert_eq!(jwks.hits(), 2);

    // Right after that refetch, the token verified by `a` is refused, cached or not.
    let r = get_with(&gw.url("/x"), &bearer(&a)).await;
    assert_invalid_token(&r, "kid", &a);
    // A token of a key that stayed published keeps its cache entry.
    assert_eq!(get_with(&gw.url("/x"), &bearer(&b)).await.status, 200);
}
