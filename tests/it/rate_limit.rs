//! Rate limiting end to end over real sockets: exactness under concurrency, window behaviour
//! with Retry-After, isolation between consumers, header values and client IPs (with and without
//! trusted proxies), the concurrency limit with a slow upstream, response headers and the access
//! log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::{self, get, send, upstream, Reply, TestGateway};

/// One service `a` at `url`, then `rest`.
fn config(url: &str, rest: &str) -> String {
    Config::new()
        .service(Service::new("a").target(url))
        .yaml(rest)
        .to_yaml()
}

/// A route `r` on service `a` with one `rate_limit` policy written inline.
fn limited(url: &str, policy: &str) -> String {
    Config::new()
        .service(Service::new("a").target(url))
        .route(Route::new("r").service("a").policy("rate_limit", policy))
        .to_yaml()
}

fn get_with<'a>(
    url: &'a str,
    headers: &'a [(&'a str, &'a str)],
) -> impl std::future::Future<Output = Reply> + 'a {
    send("GET", url, headers, "")
}

#[tokio::test]
async fn two_hundred_concurrent_requests_against_a_limit_of_fifty_let_exactly_fifty_through() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "workers: 2\n{}",
        limited(&up.url(), "{limits: [{requests: 50, per: 1m}]}")
    ));
    let url = gw.url("/x");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let url = url.clone();
        set.spawn(async move { get(&url).await });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                r.assert_error(429, "rate_limited");
                limited += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!((ok, limited), (50, 150));
    assert_eq!(
        up.hits(),
        50,
        "a rejected request must never reach the upstream"
    );
}

#[tokio::test]
async fn over_the_limit_the_answer_is_429_with_retry_after_and_requests_pass_again_after_it() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&limited(&up.url(), "{limits: [{requests: 5, per: 2s}]}"));
    let url = gw.url("/x");
    for _ in 0..5 {
        assert_eq!(get(&url).await.status, 200);
    }
    let r = get(&url).await;
    r.assert_error(429, "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    // 5 per 2 s, all in the key's first window: they weigh fully until it ends, then (4/5 of
    // them) slide out over the next 2/5 s.
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    assert!(r.header("ratelimit").contains("r=0"), "{:?}", r.headers);
    assert_eq!(up.hits(), 5);
    // Retry-After is the signal to wait for.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again = get(&url).await;
    assert_eq!(again.status, 200, "{}", again.text());
}

#[tokio::test]
async fn consumers_are_limited_separately() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "consumers:\n  - {{name: alice, api_keys: [alice-key-0123456789]}}\n  - {{name: bob, api_keys: [bob-key-0123456789]}}\n{}",
        config(
            &up.url(),
            "routes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true}\n      - rate_limit: {limits: [{requests: 2, per: 1m}], key: consumer}\n"
        )
    ));
    let url = gw.url("/x");
    let alice = [("x-api-key", "alice-key-0123456789")];
    let bob = [("x-api-key", "bob-key-0123456789")];
    assert_eq!(get_with(&url, &alice).await.status, 200);
    assert_eq!(get_with(&url, &alice).await.status, 200);
    get_with(&url, &alice)
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(get_with(&url, &bob).await.status, 200);
    assert_eq!(get_with(&url, &bob).await.status, 200);
    get_with(&url, &bob).await.assert_error(429, "rate_limited");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn header_keys_are_limited_separately_and_a_missing_header_can_be_denied() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&limited(
        &up.url(),
        "{limits: [{requests: 1, per: 1m}], key: {header: x-tenant}, missing_key: deny}",
    ));
    let url = gw.url("/x");
    assert_eq!(get_with(&url, &[("x-tenant", "a")]).await.status, 200);
    get_with(&url, &[("x-tenant", "a")])
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(get_with(&url, &[("x-tenant", "b")]).await.status, 200);
    get(&url).await.assert_error(403, "forbidden");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn per_ip_limits_honour_x_forwarded_for_only_from_trusted_proxies() {
    let up = upstream::http1("a").spawn().await;
    let policy = "{limits: [{requests: 1, per: 1m}], key: client_ip}";
    let trusted = TestGateway::start(&format!(
        "trusted_proxies: [127.0.0.1/32]\n{}",
        limited(&up.url(), policy)
    ));
    let url = trusted.url("/x");
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(get_with(&url, &from("10.0.0.1")).await.status, 200);
    get_with(&url, &from("10.0.0.1"))
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(get_with(&url, &from("10.0.0.2")).await.status, 200);

    // Not a trusted proxy: the header is ignored and every request is the peer's.
    let untrusted = TestGateway::start(&format!(
        "trusted_proxies: [192.0.2.1/32]\n{}",
        limited(&up.url(), policy)
    ));
    let url = untrusted.url("/x");
    assert_eq!(get_with(&url, &from("10.0.0.1")).await.status, 200);
    get_with(&url, &from("10.0.0.2"))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test]
async fn the_concurrency_limit_holds_a_slot_until_the_response_ends() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let g = Arc::clone(&gate);
    let up = upstream::http1("a")
        .route(
            "/slow",
            upstream::handler(move |_req| {
                let g = Arc::clone(&g);
                let tx = arrived_tx.clone();
                async move {
                    let _ = tx.send(());
                    g.acquire().await.unwrap().forget();
                    http::Response::new(upstream::full("done"))
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&limited(
        &up.url(),
        "{concurrency: {max: 2, status: 503}, headers: none}",
    ));
    let url = gw.url("/slow");
    let spawn_get = |url: String| tokio::spawn(async move { get(&url).await });
    let first = spawn_get(url.clone());
    let second = spawn_get(url.clone());
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .expect("both requests reach the upstream")
            .unwrap();
    }
    // Two in flight: the third is refused without reaching the upstream.
    let third = get(&url).await;
    third.assert_error(503, "rate_limited");
    assert_eq!(up.hits(), 2);
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    // The slots are released when the gateway drops the finished bodies, which may be a moment
    // after the client has read them: retry (bounded) without holding anything.
    gate.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&url).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never released: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn allowed_responses_carry_ietf_and_legacy_headers() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&limited(
        &up.url(),
        "{limits: [{requests: 10, per: 1m}, {requests: 100, per: 1h, name: hourly}], headers: both}",
    ));
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        "\"default\";q=10;w=60, \"hourly\";q=100;w=3600"
    );
    assert_eq!(r.header("ratelimit"), "\"default\";r=9;t=60");
    assert_eq!(r.header("x-ratelimit-limit"), "10");
    assert_eq!(r.header("x-ratelimit-remaining"), "9");
    assert_eq!(r.header("x-ratelimit-reset"), "60");

    let quiet = TestGateway::start(&limited(
        &up.url(),
        "{limits: [{requests: 10, per: 1m}], headers: none}",
    ));
    let r = get(&quiet.url("/x")).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("ratelimit").is_none() && r.headers.get("ratelimit-policy").is_none());
}

#[tokio::test]
async fn the_access_log_marks_rate_limited_requests() {
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "access_log: {{enabled: true, format: json, path: \"{}\"}}\n{}",
        log.display(),
        limited(&up.url(), "{limits: [{requests: 1, per: 1m}]}")
    ));
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    get(&gw.url("/x")).await.assert_error(429, "rate_limited");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "log: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines[1]["status"], 429);
    assert_eq!(lines[1]["error"], "rate_limited");
    assert_eq!(lines[1]["route"], "r");
    assert!(lines[0]["error"].is_null());
}

#[tokio::test]
async fn counters_survive_a_reload_that_leaves_the_policy_unchanged_and_restart_when_it_changes() {
    let up = upstream::http1("a").spawn().await;
    let yaml = limited(&up.url(), "{limits: [{requests: 2, per: 1m}]}");
    let gw = TestGateway::start(&yaml);
    let url = gw.url("/x");
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(get(&url).await.status, 200);
    get(&url).await.assert_error(429, "rate_limited");
    // Another change elsewhere in the file: the policy keeps its counters.
    let outcome = gw.reload(&format!("{yaml}forwarding: {{via: true}}\n"));
    assert!(
        matches!(outcome, Ok(portico::runtime::ReloadOutcome::Applied { .. })),
        "{outcome:?}"
    );
    get(&url).await.assert_error(429, "rate_limited");
    // The policy itself changed: new counters.
    gw.reload(&limited(&up.url(), "{limits: [{requests: 3, per: 1m}]}"))
        .expect("reload");
    assert_eq!(get(&url).await.status, 200);
}

#[tokio::test]
async fn gcra_lets_the_burst_through_then_refills() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&limited(
        &up.url(),
        "{limits: [{requests: 10, per: 10s, algorithm: gcra, burst: 3}]}",
    ));
    let url = gw.url("/x");
    for _ in 0..3 {
        assert_eq!(get(&url).await.status, 200);
    }
    let r = get(&url).await;
    r.assert_error(429, "rate_limited");
    // One token a second: the wait is under a second, rounded up.
    assert_eq!(r.header("retry-after"), "1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn a_jwt_claim_keys_the_limit_per_tenant() {
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    use support::jwt::{bearer, claims, config, fixture_path, get_with, main_provider, sign};

    let up = upstream::http1("a").spawn().await;
    let providers = main_provider(&format!(
        "      algorithms: [RS256]\n      keys: [{{pem_file: \"{}\"}}]\n",
        fixture_path("rsa-a.pub.pem")
    ));
    let route = "  - name: r\n    service: a\n    policies:\n      - auth: {jwt: [main]}\n      \
                 - rate_limit: {key: {claim: org.id}, missing_key: deny, limits: [{requests: 2, per: 1m}]}\n";
    let gw = TestGateway::start(&config(&up.url(), &providers, route));
    let token = |org: serde_json::Value| {
        sign(
            Algorithm::RS256,
            "rsa-a",
            None,
            &claims(json!({ "org": org })),
        )
    };
    // Two users of tenant 7 share its quota; tenant 8 has its own.
    let (t7a, t7b) = (token(json!({"id": 7})), token(json!({"id": 7, "x": 1})));
    let t8 = token(json!({"id": "8"}));
    assert_eq!(get_with(&gw.url("/x"), &bearer(&t7a)).await.status, 200);
    assert_eq!(get_with(&gw.url("/x"), &bearer(&t7b)).await.status, 200);
    get_with(&gw.url("/x"), &bearer(&t7a))
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(get_with(&gw.url("/x"), &bearer(&t8)).await.status, 200);
    // A token without the claim has no key: `missing_key: deny`.
    let none = sign(Algorithm::RS256, "rsa-a", None, &claims(json!({})));
    get_with(&gw.url("/x"), &bearer(&none))
        .await
        .assert_error(403, "forbidden");
}
