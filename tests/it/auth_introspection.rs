//! OAuth2 token introspection (RFC 7662) against an authorization server that runs inside the
//! test: it checks the gateway's client credentials, records every call, and answers per token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::upstream::{self, full, handler, Upstream};
use crate::support::{send, Reply, TestGateway};
use base64::Engine as _;
use http::Response;
use http_body_util::BodyExt;

/// What the authorization server was asked.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    token: String,
    hint: String,
    client_ok: bool,
    form: bool,
}

/// The authorization server and the calls it received.
struct Idp {
    server: Upstream,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Idp {
    fn url(&self) -> String {
        format!("{}/introspect", self.server.url())
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls made for `token`.
    fn calls_for(&self, token: &str) -> usize {
        self.calls().iter().filter(|c| c.token == token).count()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Answers by token:
/// - `good-*`: active, `sub: user-7`, a scope, one hour left;
/// - `alice-*`: active, `sub: alice@example.com` (a declared consumer's subject);
/// - `exp-N`: active, `exp: N`;
/// - `expired-*`: active but `exp` in the past;
/// - `garbage-*`: a 200 that is not JSON; `error-*`: a 500; `slow-*`: answers after 10 s;
/// - anything else: inactive.
///
/// Requests without the client credentials `gateway:s3cr3t/+` get a 401.
async fn idp() -> Idp {
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let seen = Arc::clone(&calls);
    let expected = format!(
        "Basic {}",
        // RFC 6749 section 2.3.1: form-encoded, then base64.
        base64::engine::general_purpose::STANDARD.encode("gateway:s3cr3t%2F%2B")
    );
    let server = upstream::http1("idp")
        .route(
            "/introspect",
            handler(move |req| {
                let seen = Arc::clone(&seen);
                let expected = expected.clone();
                async move {
                    let client_ok = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v == expected.as_str());
                    let form = req.method() == "POST"
                        && req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/x-www-form-urlencoded");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut token = String::new();
                    let mut hint = String::new();
                    for (k, v) in form_urlencoded::parse(&body) {
                        match &*k {
                            "token" => token = v.into_owned(),
                            "token_type_hint" => hint = v.into_owned(),
                            _ => {}
                        }
                    }
                    seen.lock().unwrap().push(Call {
                        token: token.clone(),
                        hint,
                        client_ok,
                        form,
                    });
                    let json = |v: serde_json::Value| {
                        let mut r = Response::new(full(v.to_string()));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        r
                    };
                    if !client_ok {
                        let mut r = json(serde_json::json!({"error": "invalid_client"}));
                        *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                        return r;
                    }
                    let now = unix_now();
                    if token.starts_with("good-") {
                        json(serde_json::json!({
                            "active": true, "sub": "user-7", "username": "seven",
                            "scope": "orders:read orders:write", "client_id": "shop",
                            "exp": now + 3600, "iat": now,
                        }))
                    } else if token.starts_with("alice-") {
                        json(serde_json::json!({"active": true, "sub": "alice@example.com"}))
                    } else if let Some(exp) = token.strip_prefix("exp-") {
                        let exp: u64 = exp.parse().unwrap();
                        json(serde_json::json!({"active": true, "sub": "user-7", "exp": exp}))
                    } else if token.starts_with("expired-") {
                        json(serde_json::json!({"active": true, "sub": "user-7", "exp": now - 10}))
                    } else if token.starts_with("garbage-") {
                        Response::new(full("<html>oops</html>"))
                    } else if token.starts_with("error-") {
                        let mut r = json(serde_json::json!({"error": "server_error"}));
                        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    } else if token.starts_with("slow-") {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        json(serde_json::json!({"active": true, "sub": "user-7"}))
                    } else {
                        json(serde_json::json!({"active": false}))
                    }
                }
            }),
        )
        .spawn()
        .await;
    Idp { server, calls }
}

/// The gateway config: provider `idp` at `idp_url` with `extra` provider settings (a YAML flow
/// mapping body, may be empty), one service at `up`, one route using `policy`.
fn config(idp_url: &str, extra: &str, up: &str, policy: &str) -> String {
    let idp = format!(
        "{{url: \"{idp_url}\", client_id: gateway, client_secret: \"s3cr3t/+\", claim_headers: {{sub: X-User-Id, scope: X-Scopes}}{extra}}}"
    );
    Config::new()
        .set("auth", format!("{{introspection: {{idp: {idp}}}}}"))
        .consumer(
            Consumer::new("alice")
                .set("groups", "[admin]")
                .set("jwt_subjects", "[\"alice@example.com\"]"),
        )
        .service(Service::new("a").target(up))
        .route(Route::new("r").service("a").policy("auth", policy))
        .to_yaml()
}

const POLICY: &str = "{introspection: [idp]}";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn get_with(gw: &TestGateway, token: &str) -> Reply {
    send(
        "GET",
        &gw.url("/x"),
        &[("authorization", &bearer(token))],
        "",
    )
    .await
}

fn assert_invalid_token(r: &Reply) {
    r.assert_error(401, "unauthorized");
    let challenge = r.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"portico\", error=\"invalid_token\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn an_active_token_passes_with_its_claim_headers_and_the_client_credentials_are_sent() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&idp.url(), "", &up.url(), POLICY));

    let r = get_with(&gw, "good-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["x-user-id"][0], "user-7");
    assert_eq!(echo["headers"]["x-scopes"][0], "orders:read orders:write");
    // No declared consumer has this subject: the name upstream is the subject.
    assert_eq!(echo["headers"]["x-consumer-name"][0], "user-7");
    assert!(echo["headers"].get("x-consumer-groups").is_none(), "{echo}");

    assert_eq!(
        idp.calls(),
        [Call {
            token: "good-1".into(),
            hint: "access_token".into(),
            client_ok: true,
            form: true,
        }]
    );

    // A subject listed in a consumer's jwt_subjects is that consumer.
    let echo = get_with(&gw, "alice-1").await.json();
    assert_eq!(echo["headers"]["x-consumer-name"][0], "alice");
    assert_eq!(echo["headers"]["x-consumer-groups"][0], "admin");
    assert_eq!(echo["headers"]["x-user-id"][0], "alice@example.com");
}

#[tokio::test]
async fn an_inactive_or_expired_token_is_a_401_and_never_reaches_the_upstream() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&idp.url(), "", &up.url(), POLICY));
    for token in ["revoked-1", "expired-1"] {
        let r = get_with(&gw, token).await;
        assert_invalid_token(&r);
        assert!(!r.text().contains(token), "{}", r.text());
        assert!(r.json()["message"].as_str().unwrap().contains("not active"));
    }
    // An empty token fails without bothering the endpoint; no token at all asks for one.
    assert_invalid_token(&get_with(&gw, "").await);
    let r = send("GET", &gw.url("/x"), &[], "").await;
    r.assert_error(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"portico\"");
    assert_eq!(idp.calls().len(), 2);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn an_active_result_is_cached_per_token() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&idp.url(), "", &up.url(), POLICY));
    for _ in 0..5 {
        let r = get_with(&gw, "good-cached").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["headers"]["x-user-id"][0], "user-7");
    }
    assert_eq!(idp.calls_for("good-cached"), 1);
    // Another token is another entry.
    assert_eq!(get_with(&gw, "good-other").await.status, 200);
    assert_eq!(idp.calls_for("good-other"), 1);
    assert_eq!(up.hits(), 6);
}

#[tokio::test]
async fn an_inactive_result_is_cached_too() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&idp.url(), "", &up.url(), POLICY));
    for _ in 0..4 {
        assert_invalid_token(&get_with(&gw, "revoked-cached").await);
    }
    assert_eq!(idp.calls_for("revoked-cached"), 1);
}

#[tokio::test]
async fn without_caches_every_request_asks_the_endpoint() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &idp.url(),
        ", cache_ttl: 0s, negative_cache_ttl: 0s",
        &up.url(),
        POLICY,
    ));
    for _ in 0..3 {
        assert_eq!(get_with(&gw, "good-uncached").await.status, 200);
        assert_invalid_token(&get_with(&gw, "revoked-uncached").await);
    }
    assert_eq!(idp.calls_for("good-uncached"), 3);
    assert_eq!(idp.calls_for("revoked-uncached"), 3);
}

#[tokio::test]
async fn a_cached_active_result_does_not_outlive_the_tokens_exp() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    // cache_ttl is an hour, but the token expires one to two seconds after the first call.
    let gw = TestGateway::start(&config(&idp.url(), ", cache_ttl: 1h", &up.url(), POLICY));
    let token = format!("exp-{}", unix_now() + 2);
    let r = get_with(&gw, &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.calls_for(&token), 1);
    // Waiting for wall-clock time to pass (there is no event to wait for): poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_with(&gw, &token).await;
        if r.status == 401 {
            assert_invalid_token(&r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "still accepted after its exp");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        idp.calls_for(&token),
        2,
        "asked again once the entry expired"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_503_auth_unavailable_or_a_401_with_on_error_deny() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/introspect");
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&url, "", &up.url(), POLICY));
    for _ in 0..2 {
        let r = get_with(&gw, "good-while-down").await;
        let body = r.assert_error(503, "auth_unavailable");
        assert!(r.header("www-authenticate").is_empty());
        assert!(!body.to_string().contains("good-while-down"), "{body}");
    }
    let gw = TestGateway::start(&config(&url, ", on_error: deny", &up.url(), POLICY));
    assert_invalid_token(&get_with(&gw, "good-while-down").await);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn an_endpoint_slower_than_the_timeout_is_a_503_in_bounded_time() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&idp.url(), ", timeout: 200ms", &up.url(), POLICY));
    let started = Instant::now();
    let r = get_with(&gw, "slow-1").await;
    let took = started.elapsed();
    r.assert_error(503, "auth_unavailable");
    // The endpoint would take 10 s; the 200 ms timeout answers long before (generous bound).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(idp.calls_for("slow-1"), 1);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn garbage_an_error_status_or_rejected_client_credentials_are_a_503_and_not_cached() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&idp.url(), "", &up.url(), POLICY));
    for token in ["garbage-1", "error-1"] {
        for _ in 0..2 {
            get_with(&gw, token)
                .await
                .assert_error(503, "auth_unavailable");
        }
        assert_eq!(idp.calls_for(token), 2, "{token}: failures are not cached");
    }
    // The gateway's own client credentials are wrong: the endpoint says 401, the client gets 503.
    let bad_client = config(&idp.url(), "", &up.url(), POLICY).replace("s3cr3t/+", "wrong");
    let gw = TestGateway::start(&bad_client);
    get_with(&gw, "good-1")
        .await
        .assert_error(503, "auth_unavailable");
    assert!(idp.calls().iter().any(|c| !c.client_ok));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn the_token_can_come_from_a_cookie_or_a_query_parameter() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &idp.url(),
        ", token: {cookie: session}",
        &up.url(),
        POLICY,
    ));
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("cookie", "theme=dark; session=good-cookie")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A bearer header is not where this provider looks.
    send(
        "GET",
        &gw.url("/x"),
        &[("authorization", "Bearer good-cookie")],
        "",
    )
    .await
    .assert_error(401, "unauthorized");

    let gw = TestGateway::start(&config(
        &idp.url(),
        ", token: {query: access_token}",
        &up.url(),
        POLICY,
    ));
    let r = send("GET", &gw.url("/x?access_token=good-query&a=1"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.calls_for("good-cookie"), 1);
    assert_eq!(idp.calls_for("good-query"), 1);
}

#[tokio::test]
async fn require_consumer_rejects_an_active_token_of_an_unknown_subject() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &idp.url(),
        "",
        &up.url(),
        "{introspection: [idp], require_consumer: true}",
    ));
    assert_invalid_token(&get_with(&gw, "good-1").await);
    let r = get_with(&gw, "alice-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-consumer-name"][0], "alice");
}

#[tokio::test]
async fn a_client_cannot_spoof_a_claim_header() {
    let idp = idp().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "{}  - name: open\n    match: {{path: /open}}\n    service: a\n",
        config(&idp.url(), "", &up.url(), POLICY)
    ));
    // alice-1's answer has no scope: a client-sent X-Scopes must not survive.
    let r = send(
        "GET",
        &gw.url("/x"),
        &[
            ("authorization", "Bearer alice-1"),
            ("x-scopes", "admin:all"),
            ("x-user-id", "root"),
        ],
        "",
    )
    .await;
    let echo = r.json();
    assert!(echo["headers"].get("x-scopes").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-user-id"][0], "alice@example.com");
    // Also on a route without auth.
    let echo = send("GET", &gw.url("/open"), &[("x-user-id", "root")], "")
        .await
        .json();
    assert!(echo["headers"].get("x-user-id").is_none(), "{echo}");
}
