//! JWT authentication over real sockets: an upstream that echoes what it received, the gateway
//! and a client; tokens signed with the test keys under tests/fixtures/jwt/. JWKS endpoints
//! (rotation, refresh, outage) are tests/it/auth_jwks.rs.

use std::time::Duration;

use crate::support::jwt::*;
use crate::support::{self, seen, send, upstream, Reply, TestGateway};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_identity_and_claim_headers_and_spoofs_are_replaced(
) {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      keys: [{{pem_file: \"{}\"}}]\n      claim_headers: {{sub: X-User-Id, email: X-User-Email, roles: X-User-Roles}}\n",
        fixture_path("rsa-a.pub.pem")
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let token = sign(
        Algorithm::RS256,
        "rsa-a",
        None,
        &claims(json!({"email": "alice@example.com", "roles": ["admin", "ops"]})),
    );
    let mut headers = bearer(&token).to_vec();
    headers.push(("x-consumer-name", "mallory".into()));
    headers.push(("x-user-id", "spoofed".into()));
    headers.push(("x-consumer-groups", "admin".into()));
    let r = get_with(&gw.url("/orders"), &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    assert_eq!(seen(&echo, "x-consumer-id"), ["c-001"]);
    assert_eq!(seen(&echo, "x-consumer-groups"), ["staff"]);
    assert_eq!(seen(&echo, "x-user-id"), ["user-1"]);
    assert_eq!(seen(&echo, "x-user-email"), ["alice@example.com"]);
    assert_eq!(seen(&echo, "x-user-roles"), ["admin, ops"]);

    // The same token again (from the verified-token cache) gives the same identity.
    let echo = get_with(&gw.url("/orders"), &bearer(&token)).await.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    assert_eq!(seen(&echo, "x-user-id"), ["user-1"]);

    // A subject that is no declared consumer passes under its own name (no require_consumer),
    // and a claim header the token has no claim for is not set (nor the client's copy kept).
    let other = sign(
        Algorithm::RS256,
        "rsa-a",
        None,
        &claims(json!({"sub": "svc-42"})),
    );
    let mut headers = bearer(&other).to_vec();
    headers.push(("x-user-email", "spoofed@example.com".into()));
    let echo = get_with(&gw.url("/orders"), &headers).await.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["svc-42"]);
    assert!(seen(&echo, "x-consumer-id").is_empty(), "{echo}");
    assert!(seen(&echo, "x-user-email").is_empty(), "{echo}");

    // Identity headers are stripped on routes without auth too.
    let routes = format!(
        "{}  - name: open\n    match: {{path: /open}}\n    service: a\n",
        route("{jwt: [main]}")
    );
    let gw2 = TestGateway::start(&config(&up.url(), &providers, &routes));
    let echo = send("GET", &gw2.url("/open"), &[("x-user-id", "spoofed")], "")
        .await
        .json();
    assert!(seen(&echo, "x-user-id").is_empty(), "{echo}");
}

#[tokio::test]
async fn bad_tokens_are_401_with_an_rfc6750_challenge_and_never_reach_the_upstream() {
    let up = upstream::http1("a").spawn().await;
    // RS256 and HS256 are both allowed, with an RSA key and an HMAC secret: an HS256 token made
    // with the RSA public key as its secret must still fail.
    let providers = main_provider(&format!(
        "      algorithms: [RS256, HS256]\n      leeway: 5s\n      keys: [{{pem: \"{}\"}}, {{secret: \"{SECRET}\"}}]\n",
        fixture("rsa-a.pub.pem").replace('\n', "\\n")
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let rs = |extra: Value| sign(Algorithm::RS256, "rsa-a", None, &claims(extra));

    let good = rs(json!({}));
    let (h, p, s) = {
        let parts: Vec<&str> = good.split('.').collect();
        (
            parts[0].to_string(),
            parts[1].to_string(),
            parts[2].to_string(),
        )
    };
    let forged_payload = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let confused = sign(
        Algorithm::HS256,
        &fixture("rsa-a.pub.pem"),
        None,
        &claims(json!({})),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", rs(json!({"exp": now() - 3600})), "expired"),
        (
            "not yet valid",
            rs(json!({"nbf": now() + 3600})),
            "not valid yet",
        ),
        (
            "wrong issuer",
            rs(json!({"iss": "https://evil.test"})),
            "issuer",
        ),
        (
            "wrong audience",
            rs(json!({"aud": "other-api"})),
            "audience",
        ),
        (
            "audience list without ours",
            rs(json!({"aud": ["x", "y"]})),
            "audience",
        ),
        (
            "no audience",
            rs(json!({"aud": null})),
            "required claim `aud`",
        ),
        ("no exp", rs(json!({"exp": null})), "required claim `exp`"),
        (
            "tampered payload",
            format!("{h}.{forged_payload}.{s}"),
            "signature is invalid",
        ),
        (
            "signature of another token",
            {
                let other = rs(json!({"sub": "someone"}));
                format!("{h}.{p}.{}", other.rsplit('.').next().unwrap())
            },
            "signature is invalid",
        ),
        ("alg none", format!("{none_header}.{p}."), "alg: none"),
        (
            "alg none with a signature",
            format!("{none_header}.{p}.{s}"),
            "alg: none",
        ),
        (
            "HS256 signed with the RSA public key",
            confused,
            "signature is invalid",
        ),
        (
            "signed by an unknown key",
            sign(Algorithm::RS256, "rsa-b", None, &claims(json!({}))),
            "signature is invalid",
        ),
        (
            "ES256 (not allowed)",
            sign(Algorithm::ES256, "ec-p256", None, &claims(json!({}))),
            "ES256 algorithm is not accepted",
        ),
    ];
    for (what, token, why) in &cases {
        let r = get_with(&gw.url("/x"), &bearer(token)).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_invalid_token(&r, why, token);
    }
    // Within the leeway, an expired token still passes; the good one too.
    let r = get_with(&gw.url("/x"), &bearer(&rs(json!({"exp": now() - 2})))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_with(&gw.url("/x"), &bearer(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A real HS256 token with the configured secret works.
    let hs = sign(Algorithm::HS256, SECRET, None, &claims(json!({})));
    assert_eq!(get_with(&gw.url("/x"), &bearer(&hs)).await.status, 200);
    assert_eq!(up.hits(), 3, "no rejected request reached the upstream");

    // No credential at all: 401 with the bare challenge.
    let r = send("GET", &gw.url("/x"), &[], "").await;
    r.assert_error(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"shop\"");
}

#[tokio::test]
async fn garbage_never_panics_and_never_yields_a_5xx() {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      keys: [{{pem_file: \"{}\"}}]\n",
        fixture_path("rsa-a.pub.pem")
    ));
    let routes = route("{jwt: [main]}");
    let gw = TestGateway::start(&format!(
        "limits: {{max_header_bytes: 256KiB}}\n{}",
        config(&up.url(), &providers, &routes)
    ));
    let big = "a".repeat(100 * 1024);
    let big_three = format!(
        "{}.{}.{}",
        "a".repeat(40_000),
        "b".repeat(40_000),
        "c".repeat(20_000)
    );
    let bad_json = format!("{}.e30.c2ln", b64(b"{not json"));
    let alg_number = format!("{}.e30.c2ln", b64(br#"{"alg": 5}"#));
    let crit = format!(
        "{}.{}.c2ln",
        b64(br#"{"alg":"RS256","crit":["exp"]}"#),
        b64(b"{}")
    );
    let unicode = "Bearer \u{e9}t\u{e9}.\u{e9}.\u{e9}";
    let values: Vec<String> = vec![
        "Bearer".into(),
        "Bearer ".into(),
        "bearer    ".into(),
        "Bearer a.b".into(),
        "Bearer a.b.c".into(),
        "Bearer ...".into(),
        "Bearer !!!.@@@.###".into(),
        "Bearer a b c".into(),
        format!("Bearer {big}"),
        format!("Bearer {big_three}"),
        format!("Bearer {bad_json}"),
        format!("Bearer {alg_number}"),
        format!("Bearer {crit}"),
        format!("Bearer {}.{}.", b64(b"{}"), b64(b"{}")),
        unicode.into(),
    ];
    for v in &values {
        let r = send("GET", &gw.url("/x"), &[("authorization", v.as_str())], "").await;
        let shown: String = v.chars().take(40).collect();
        assert_eq!(r.status, 401, "{shown}: {}", r.text());
        r.assert_error(401, "unauthorized");
        assert!(
            r.header("www-authenticate")
                .contains("error=\"invalid_token\""),
            "{shown}: {}",
            r.header("www-authenticate")
        );
    }
    // Raw bytes that are not UTF-8 in the header.
    let raw = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe.\xfd.\xfc\r\n\r\n".to_vec();
    let reply = support::raw_reply(gw.addr, &raw).await;
    reply.assert_error(401, "unauthorized");
    assert_eq!(up.hits(), 0);

    // With the default header limit a 100 KB token is refused before auth, still as a 4xx.
    let gw2 = TestGateway::start(&config(&up.url(), &providers, &routes));
    let r = send(
        "GET",
        &gw2.url("/x"),
        &[("authorization", &format!("Bearer {big}"))],
        "",
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.status);
}

#[tokio::test]
async fn every_algorithm_family_verifies_with_its_own_keys_only() {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, EdDSA, HS256, HS384, HS512]\n      keys:\n        - {{pem_file: \"{}\"}}\n        - {{pem_file: \"{}\"}}\n        - {{kid: ed, jwk: {}}}\n        - {{kid: hs, secret: \"{SECRET}\"}}\n",
        fixture_path("rsa-a.pub.pem"),
        fixture_path("ec-p256.pub.pem"),
        jwk("ed25519", Algorithm::EdDSA, "ed"),
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let cases = [
        (Algorithm::RS256, "rsa-a", None),
        (Algorithm::RS384, "rsa-a", None),
        (Algorithm::RS512, "rsa-a", None),
        (Algorithm::PS256, "rsa-a", None),
        (Algorithm::PS384, "rsa-a", None),
        (Algorithm::PS512, "rsa-a", None),
        (Algorithm::ES256, "ec-p256", None),
        (Algorithm::EdDSA, "ed25519", Some("ed")),
        (Algorithm::EdDSA, "ed25519", None),
        (Algorithm::HS256, SECRET, Some("hs")),
        (Algorithm::HS384, SECRET, None),
        (Algorithm::HS512, SECRET, Some("hs")),
        (
            Algorithm::RS512,
            "rsa-a",
            Some("unknown-kid-falls-back-to-keys-without-kid"),
        ),
    ];
    for (alg, key, kid) in cases {
        let token = sign(alg, key, kid, &claims(json!({})));
        let r = get_with(&gw.url("/x"), &bearer(&token)).await;
        assert_eq!(r.status, 200, "{alg:?} {kid:?}: {}", r.text());
    }
    // HMAC tokens whose secret is any public key of the issuer, PEM or DER-ish text, fail.
    for public in ["rsa-a.pub.pem", "ec-p256.pub.pem", "ed25519.pub.pem"] {
        let token = sign(Algorithm::HS256, &fixture(public), None, &claims(json!({})));
        let r = get_with(&gw.url("/x"), &bearer(&token)).await;
        assert_invalid_token(&r, "signature is invalid", &token);
    }
    // A token signed by the EC key but labelled RS256 (or the reverse) fails.
    let es = sign(Algorithm::ES256, "ec-p256", None, &claims(json!({})));
    let relabelled = {
        let mut parts = es.splitn(2, '.');
        let _ = parts.next();
        format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            parts.next().unwrap()
        )
    };
    let r = get_with(&gw.url("/x"), &bearer(&relabelled)).await;
    assert_invalid_token(&r, "signature is invalid", &relabelled);
}

#[tokio::test]
async fn claim_rules_and_required_claims() {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [HS256]\n      keys: [{{secret: \"{SECRET}\"}}]\n      required_claims: [email]\n      claims:\n        scope: {{contains: \"orders:read\"}}\n        role: {{in: [admin, ops]}}\n        tenant: {{equals: acme}}\n        realm_access.level: {{equals: 3}}\n"
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let ok = json!({"email": "a@x", "scope": "profile orders:read", "role": "ops", "tenant": "acme", "realm_access": {"level": 3}});
    let with = |change: Value| {
        let mut c = ok.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::HS256, SECRET, None, &claims(c))
    };
    for (what, change) in [
        ("all good", json!({})),
        ("scope as an array", json!({"scope": ["orders:read", "x"]})),
        ("role from an array", json!({"role": ["user", "admin"]})),
    ] {
        let r = get_with(&gw.url("/x"), &bearer(&with(change))).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    // A missing required claim makes the token unacceptable (401 invalid_token); a valid token
    // that fails a claim rule lacks privileges (403 insufficient_scope, RFC 6750 section 3.1).
    let token = with(json!({"email": null}));
    let r = get_with(&gw.url("/x"), &bearer(&token)).await;
    assert_invalid_token(&r, "required claim `email`", &token);
    for (what, change, why) in [
        (
            "scope lacks orders:read",
            json!({"scope": "orders:write orders:readx"}),
            "`scope` claim",
        ),
        (
            "no scope",
            json!({"scope": null}),
            "lacks the claim `scope`",
        ),
        ("role user", json!({"role": "user"}), "`role` claim"),
        (
            "roles without admin/ops",
            json!({"role": ["user"]}),
            "`role` claim",
        ),
        (
            "other tenant",
            json!({"tenant": "globex"}),
            "`tenant` claim",
        ),
        (
            "nested level",
            json!({"realm_access": {"level": 2}}),
            "`realm_access.level` claim",
        ),
    ] {
        let token = with(change);
        let r = get_with(&gw.url("/x"), &bearer(&token)).await;
        let body = r.assert_error(403, "insufficient_scope");
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{what}: {body}"
        );
        let challenge = r.header("www-authenticate");
        assert!(
            challenge.starts_with("Bearer realm=\"shop\", error=\"insufficient_scope\"")
                && challenge.contains(why),
            "{what}: {challenge}"
        );
        assert!(!r.text().contains(&token) && !challenge.contains(&token));
    }
    assert_eq!(
        up.hits(),
        3,
        "only the three good tokens reached the upstream"
    );
}

#[tokio::test]
async fn tokens_are_read_from_the_configured_cookie_query_parameter_or_header() {
    let up = upstream::http1("a").spawn().await;
    let key = |name: &str, token: &str| {
        format!(
            "    {name}:\n      issuer: \"{ISS}\"\n      algorithms: [HS256]\n      keys: [{{secret: \"{SECRET}\"}}]\n      token: {token}\n"
        )
    };
    let providers = [
        key("by_cookie", "{cookie: session}"),
        key("by_query", "{query: access_token}"),
        key("by_header", "{header: X-Token}"),
        key("by_bearer", "{}"),
    ]
    .concat();
    let routes = "  - name: c\n    match: {path: /c}\n    service: a\n    policies: [{auth: {jwt: [by_cookie]}}]\n  - name: q\n    match: {path: /q}\n    service: a\n    policies: [{auth: {jwt: [by_query]}}]\n  - name: h\n    match: {path: /h}\n    service: a\n    policies: [{auth: {jwt: [by_header]}}]\n  - name: any\n    match: {path: /any}\n    service: a\n    policies: [{auth: {jwt: [by_header, by_bearer]}}]\n";
    let gw = TestGateway::start(&config(&up.url(), &providers, routes));
    let token = sign(
        Algorithm::HS256,
        SECRET,
        None,
        &claims(json!({"aud": null})),
    );

    let ok = |r: Reply| {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(seen(&r.json(), "x-consumer-name"), ["alice"]);
    };
    let cookie = format!("theme=dark; session={token}; lang=en");
    ok(send("GET", &gw.url("/c"), &[("cookie", cookie.as_str())], "").await);
    ok(send(
        "GET",
        &gw.url(&format!("/q?a=1&access_token={token}")),
        &[],
        "",
    )
    .await);
    ok(send("GET", &gw.url("/h"), &[("x-token", token.as_str())], "").await);
    let prefixed = format!("Bearer {token}");
    ok(send("GET", &gw.url("/h"), &[("x-token", prefixed.as_str())], "").await);
    // Either of two issuers' locations works on a route that lists both.
    ok(send("GET", &gw.url("/any"), &[("x-token", token.as_str())], "").await);
    ok(get_with(&gw.url("/any"), &bearer(&token)).await);
    let lower = format!("bearer {token}");
    ok(send(
        "GET",
        &gw.url("/any"),
        &[("authorization", lower.as_str())],
        "",
    )
    .await);

    // A token elsewhere than the route's issuer reads it is no credential: 401 without error.
    for (path, headers) in [
        ("/c", vec![("authorization", prefixed.as_str())]),
        ("/q", vec![("cookie", cookie.as_str())]),
        ("/h", vec![("authorization", prefixed.as_str())]),
    ] {
        let r = send("GET", &gw.url(path), &headers, "").await;
        r.assert_error(401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            "Bearer realm=\"shop\"",
            "{path}"
        );
    }
    // A bad token in the cookie is an invalid token.
    let r = send(
        "GET",
        &gw.url("/c"),
        &[("cookie", "session=abc.def.ghi")],
        "",
    )
    .await;
    assert_invalid_token(&r, "malformed", "");
}

#[tokio::test]
async fn anonymous_access_and_require_consumer() {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [HS256]\n      keys: [{{secret: \"{SECRET}\"}}]\n"
    ));
    let routes = "  - name: open\n    match: {path: /open}\n    service: a\n    policies: [{auth: {jwt: [main], anonymous: true}}]\n  - name: strict\n    match: {path: /strict}\n    service: a\n    policies: [{auth: {jwt: [main], require_consumer: true}}]\n";
    let gw = TestGateway::start(&config(&up.url(), &providers, routes));
    let alice = sign(Algorithm::HS256, SECRET, None, &claims(json!({})));
    let stranger = sign(
        Algorithm::HS256,
        SECRET,
        None,
        &claims(json!({"sub": "stranger"})),
    );

    // No credential on the anonymous route: passes, marked anonymous, spoofs removed.
    let r = send("GET", &gw.url("/open"), &[("x-consumer-name", "alice")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-anonymous-consumer"), ["true"]);
    assert!(seen(&echo, "x-consumer-name").is_empty(), "{echo}");
    // A token there still identifies, and a bad one is still refused.
    let echo = get_with(&gw.url("/open"), &bearer(&alice)).await.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    let expired = sign(
        Algorithm::HS256,
        SECRET,
        None,
        &claims(json!({"exp": now() - 3600})),
    );
    let r = get_with(&gw.url("/open"), &bearer(&expired)).await;
    assert_invalid_token(&r, "expired", &expired);
    let r = send("GET", &gw.url("/open"), &[("authorization", "Bearer")], "").await;
    assert_invalid_token(&r, "empty", "");

    // require_consumer: a valid token of an undeclared subject is refused.
    let echo = get_with(&gw.url("/strict"), &bearer(&alice)).await.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    let r = get_with(&gw.url("/strict"), &bearer(&stranger)).await;
    assert_invalid_token(&r, "not a known consumer", &stranger);
}

#[tokio::test]
async fn a_cached_token_stops_working_when_it_expires() {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [HS256]\n      leeway: 0s\n      keys: [{{secret: \"{SECRET}\"}}]\n"
    ));
    let gw = TestGateway::start(&config(&up.url(), &providers, &route("{jwt: [main]}")));
    let exp = now() + 1;
    let token = sign(Algorithm::HS256, SECRET, None, &claims(json!({"exp": exp})));
    assert_eq!(get_with(&gw.url("/x"), &bearer(&token)).await.status, 200);
    assert_eq!(get_with(&gw.url("/x"), &bearer(&token)).await.status, 200);
    // Wait for the wall clock to pass `exp` (what is tested is time itself).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while now() <= exp + 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = get_with(&gw.url("/x"), &bearer(&token)).await;
    assert_invalid_token(&r, "expired", &token);
}

#[tokio::test]
async fn bad_jwt_config_is_reported_at_its_path_without_quoting_key_material() {
    let up = upstream::http1("a").spawn().await;
    let private = fixture("rsa-a.key").replace('\n', "\\n");
    let providers = format!(
        "    main:\n      issuer: \"{ISS}\"\n      algorithms: [RS256, none]\n      keys:\n        - {{pem: \"{private}\"}}\n        - {{secret: \"too-short-secret\"}}\n        - {{pem_file: /nonexistent/key.pem}}\n      claim_headers: {{sub: Authorization}}\n"
    );
    let err = match TestGateway::try_start(&config(&up.url(), &providers, &route("{jwt: [main]}")))
    {
        Ok(_) => panic!("started with a bad config"),
        Err(e) => e,
    };
    for want in [
        "auth.jwt.main.algorithms[1]",
        "auth.jwt.main.keys[0].pem: this is a private key",
        "auth.jwt.main.keys[1].secret",
        "auth.jwt.main.keys[2].pem_file",
        "auth.jwt.main.claim_headers.sub",
    ] {
        assert!(err.contains(want), "{want} missing in:\n{err}");
    }
    assert!(
        !err.contains("MII") && !err.contains("too-short-secret"),
        "{err}"
    );
    // A route naming an unknown issuer is an error too.
    let ok_provider = main_provider(&format!(
        "      algorithms: [HS256]\n      keys: [{{secret: \"{SECRET}\"}}]\n"
    ));
    let err = TestGateway::try_start(&config(&up.url(), &ok_provider, &route("{jwt: [nope]}")))
        .err()
        .expect("unknown provider refused");
    assert!(err.contains("unknown JWT provider `nope`"), "{err}");
}

#[tokio::test]
async fn a_failed_api_key_on_a_route_that_also_takes_tokens_does_not_blame_a_token() {
    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      keys: [{{pem_file: \"{}\"}}]\n",
        fixture_path("rsa-a.pub.pem")
    ));
    let gw = TestGateway::start(&config(
        &up.url(),
        &providers,
        &route("{jwt: [main], api_key: true}"),
    ));
    let r = get_with(&gw.url("/x"), &[("x-api-key", "not-a-real-key".into())]).await;
    r.assert_error(401, "unauthorized");
    let challenges: Vec<String> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(challenges, ["Bearer realm=\"shop\"", "Key realm=\"shop\""]);
    let r = get_with(&gw.url("/x"), &bearer("a.b.c")).await;
    assert!(r
        .header("www-authenticate")
        .contains("error=\"invalid_token\""));
    assert_eq!(up.hits(), 0);
}

#[test]
fn a_key_file_that_is_a_fifo_or_a_misspelled_algorithm_is_one_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      keys: [{{pem_file: \"{}\"}}]\n",
        fifo.display()
    ));
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:9",
        &providers,
        &route("{jwt: [main]}"),
    ))
    .err()
    .expect("a FIFO is not a key file");
    assert!(err.contains("pem_file"), "{err}");
    assert!(err.contains("not a regular file"), "{err}");

    let providers = main_provider(&format!(
        "      algorithms: [RS265]\n      keys: [{{pem_file: \"{}\"}}]\n",
        fixture_path("rsa-a.pub.pem")
    ));
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:9",
        &providers,
        &route("{jwt: [main]}"),
    ))
    .err()
    .expect("RS265 is no algorithm");
    assert!(err.contains("did you mean `RS256`"), "{err}");
}
