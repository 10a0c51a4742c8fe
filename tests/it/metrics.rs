//! Prometheus metrics over real sockets: exact counts after known traffic, histogram buckets,
//! bytes, the policy counters (auth failures, rate-limit rejections, cache results, retries),
//! scrape-time state (connections, target health, revision), reload counts, bounded cardinality
//! under many distinct paths, the recent-errors list, and metrics turned off.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::upstream::{self, full, handler};
use crate::support::{get, send, TestGateway};

/// The sample value of the line that starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

async fn scrape(gw: &TestGateway) -> String {
    let r = get(&gw.admin_url("/metrics")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .starts_with("application/openmetrics-text"),
        "{}",
        r.header("content-type")
    );
    r.text()
}

/// Scrapes until `series` reads `want`: values recorded when a response body ends may trail
/// the client's read of that body by a moment.
async fn scrape_until(gw: &TestGateway, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(gw).await;
        if sample(&text, series) == Some(want) || Instant::now() > deadline {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
            return text;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn known_traffic_gives_exact_counts_buckets_and_bytes() {
    let up = upstream::http1("a")
        .route("/api/fail", upstream::reply(500, "boom"))
        .route("/api", upstream::reply(200, "ok"))
        .spawn()
        .await;
    let gw = TestGateway::start(&format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\n\
         routes:\n  - name: api\n    service: a\n    match: {{path: /api}}\n",
        up.url()
    ));
    for _ in 0..7 {
        assert_eq!(get(&gw.url("/api/ok")).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            send("POST", &gw.url("/api/ok"), &[], "hello").await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/api/fail")).await.status, 500);
    }
    for i in 0..4 {
        get(&gw.url(&format!("/nowhere/{i}")))
            .await
            .assert_error(404, "no_route");
    }
    let text = scrape_until(
        &gw,
        "portico_request_duration_seconds_count{route=\"api\"}",
        12.0,
    )
    .await;
    let req = |method: &str, class: &str| {
        sample(
            &text,
            &format!(
                "portico_requests_total{{route=\"api\",service=\"a\",method=\"{method}\",status_class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(req("GET", "2xx"), Some(7.0), "{text}");
    assert_eq!(req("POST", "2xx"), Some(3.0), "{text}");
    assert_eq!(req("GET", "5xx"), Some(2.0), "{text}");
    assert_eq!(req("PUT", "2xx"), None, "series appear only when used");
    assert_eq!(
        sample(
            &text,
            "portico_requests_total{route=\"_unmatched\",service=\"\",method=\"GET\",status_class=\"4xx\"}"
        ),
        Some(4.0),
        "{text}"
    );
    for le in [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
        "2.5", "5.0", "10.0", "+Inf",
    ] {
        let bucket =
            format!("portico_request_duration_seconds_bucket{{le=\"{le}\",route=\"api\"}}");
        assert!(sample(&text, &bucket).is_some(), "no {bucket} in\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            "portico_request_duration_seconds_bucket{le=\"+Inf\",route=\"api\"}"
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(
            &text,
            "portico_upstream_duration_seconds_count{service=\"a\"}"
        ),
        Some(12.0),
        "{text}"
    );
    // 10 × "ok" + 2 × "boom"; 3 × "hello" up.
    assert_eq!(
        sample(&text, "portico_response_bytes_total{route=\"api\"}"),
        Some(28.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "portico_request_bytes_total{route=\"api\"}"),
        Some(15.0),
        "{text}"
    );
    // State read at scrape time.
    assert_eq!(sample(&text, "portico_config_revision"), Some(1.0));
    assert!(sample(&text, "portico_connections_active{side=\"client\"}").is_some());
    let target = format!("{{service=\"a\",target=\"{}\"}}", up.url());
    assert_eq!(
        sample(&text, &format!("portico_target_healthy{target}")),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, &format!("portico_upstream_connections{target}")).unwrap_or(0.0) >= 1.0,
        "pooled connections are counted: {text}"
    );
    assert!(text.ends_with("# EOF\n"));

    // The same errors, listed for the dashboard (newest first).
    let errors = get(&gw.admin_url("/errors")).await.json();
    let list = errors["errors"].as_array().unwrap();
    assert_eq!(list.len(), 6, "{errors}");
    assert_eq!(list[0]["status"], 404);
    assert_eq!(list[0]["error"], "no_route");
    assert_eq!(list[0]["path"], "/nowhere/3");
    assert_eq!(list[0]["route"], serde_json::Value::Null);
    assert_eq!(list[5]["status"], 500);
    assert_eq!(list[5]["route"], "api");
    assert_eq!(list[5]["error"], serde_json::Value::Null);
}

#[tokio::test]
async fn ten_thousand_distinct_paths_add_no_series() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\n\
         routes:\n  - name: items\n    service: a\n    match: {{path: /items}}\n",
        up.url()
    ));
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(get(&gw.url("/items/first")).await.status, 200);
    get(&gw.url("/other/first"))
        .await
        .assert_error(404, "no_route");
    let before = series(&scrape(&gw).await);
    for i in 0..5_000 {
        assert_eq!(get(&gw.url(&format!("/items/{i}?q={i}"))).await.status, 200);
        assert_eq!(get(&gw.url(&format!("/other/{i}"))).await.status, 404);
    }
    let text = scrape_until(
        &gw,
        "portico_request_duration_seconds_count{route=\"items\"}",
        5_001.0,
    )
    .await;
    assert_eq!(series(&text), before, "{text}");
    assert!(!text.contains("/items/"), "a raw path became a label");
    assert!(!text.contains("/other/"), "a raw path became a label");
}

#[tokio::test]
async fn policy_outcomes_are_counted_by_route_and_reason() {
    let sick = Arc::new(AtomicBool::new(true));
    let bad = upstream::flaky("bad", &sick).await;
    let up = upstream::http1("a")
        .route(
            "/",
            handler(|_req| async {
                let mut r = http::Response::new(full("cached"));
                r.headers_mut()
                    .insert("cache-control", "max-age=60".parse().unwrap());
                r
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&format!(
        "consumers:\n  - name: alice\n    api_keys: [\"alice-key-0123456789\"]\n\
         services:\n  a: {{targets: [{{url: \"{a}\"}}]}}\n  pair: {{targets: [{{url: \"{bad}\"}}, {{url: \"{a}\"}}]}}\n\
         routes:\n\
         \x20 - name: keyed\n    service: a\n    match: {{path: /keyed}}\n    policies:\n      - auth: {{api_key: true}}\n\
         \x20 - name: limited\n    service: a\n    match: {{path: /limited}}\n    policies:\n      - rate_limit: {{limits: [{{requests: 2, per: 1m}}]}}\n\
         \x20 - name: cached\n    service: a\n    match: {{path: /cached}}\n    policies:\n      - cache: {{}}\n\
         \x20 - name: retried\n    service: pair\n    match: {{path: /retried}}\n    retry: {{attempts: 2, retry_on: [500], backoff_base: 1ms, backoff_max: 2ms}}\n",
        a = up.url(),
        bad = bad.url(),
    ));
    for _ in 0..2 {
        get(&gw.url("/keyed"))
            .await
            .assert_error(401, "unauthorized");
    }
    for _ in 0..3 {
        send(
            "GET",
            &gw.url("/keyed"),
            &[("x-api-key", "wrong-key-000000")],
            "",
        )
        .await
        .assert_error(401, "unauthorized");
    }
    let ok = send(
        "GET",
        &gw.url("/keyed"),
        &[("x-api-key", "alice-key-0123456789")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    for i in 0..5 {
        let r = get(&gw.url("/limited")).await;
        assert_eq!(r.status, if i < 2 { 200 } else { 429 });
    }
    assert_eq!(get(&gw.url("/cached")).await.header("x-cache"), "MISS");
    assert_eq!(get(&gw.url("/cached")).await.header("x-cache"), "HIT");
    // Round robin over [bad, a]: requests that start on `bad` get its 500, retried on `a`.
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/retried")).await.status, 200);
    }
    let text = scrape(&gw).await;
    let v = |s: &str| sample(&text, s);
    assert_eq!(
        v("portico_auth_failures_total{route=\"keyed\",reason=\"missing_credentials\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v("portico_auth_failures_total{route=\"keyed\",reason=\"invalid_credentials\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v("portico_rate_limit_rejections_total{route=\"limited\",limit=\"rate\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v("portico_cache_requests_total{route=\"cached\",result=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("portico_cache_requests_total{route=\"cached\",result=\"hit\"}"),
        Some(1.0)
    );
    // Every answer of `bad` was retried on `a`, once.
    assert!(bad.hits() >= 1);
    assert_eq!(
        v("portico_retries_total{service=\"pair\"}"),
        Some(bad.hits() as f64),
        "{text}"
    );
    assert_eq!(
        v("portico_requests_total{route=\"keyed\",service=\"a\",method=\"GET\",status_class=\"4xx\"}"),
        Some(5.0)
    );
}

/// A 403 says which policy refused: the ACL counts as an authentication failure, an IP filter
/// and CORS under `portico_denied_total`, a rate limit's missing key under the rate limit.
#[tokio::test]
async fn each_kind_of_denial_has_its_own_metric_reason() {
    let up = upstream::http1("a").spawn().await;
    let route = |name: &str, policy: &str, value: &str| {
        Route::new(name)
            .service("a")
            .path(&format!("/{name}"))
            .policy(policy, value)
    };
    let gw = TestGateway::start(
        &Config::new()
            .consumer(Consumer::new("alice").api_key("alice-key-0123456789"))
            .service(Service::new("a").target(up.url()))
            .route(route(
                "acl",
                "auth",
                "{api_key: true, deny: {consumers: [alice]}}",
            ))
            .route(route("ip", "ip_filter", "{deny: [127.0.0.1]}"))
            .route(route(
                "cors",
                "cors",
                "{allow_origins: [\"https://ok.test\"]}",
            ))
            .route(route(
                "keyless",
                "rate_limit",
                "{limits: [{requests: 9, per: 1m}], key: {header: x-tenant}, missing_key: deny}",
            ))
            .to_yaml(),
    );
    let key = [("x-api-key", "alice-key-0123456789")];
    send("GET", &gw.url("/acl"), &key, "")
        .await
        .assert_error(403, "forbidden");
    get(&gw.url("/ip")).await.assert_error(403, "forbidden");
    get(&gw.url("/ip")).await.assert_error(403, "forbidden");
    let preflight = [
        ("origin", "https://evil.test"),
        ("access-control-request-method", "GET"),
    ];
    send("OPTIONS", &gw.url("/cors"), &preflight, "")
        .await
        .assert_error(403, "forbidden");
    get(&gw.url("/keyless"))
        .await
        .assert_error(403, "forbidden");
    let text = scrape(&gw).await;
    let v = |s: &str| sample(&text, s);
    assert_eq!(
        v("portico_auth_failures_total{route=\"acl\",reason=\"acl\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("portico_denied_total{route=\"ip\",reason=\"ip_filter\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v("portico_denied_total{route=\"cors\",reason=\"cors\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("portico_rate_limit_rejections_total{route=\"keyless\",limit=\"missing_key\"}"),
        Some(1.0),
        "{text}"
    );
    for route in ["ip", "cors", "keyless"] {
        assert!(
            !text.contains(&format!("portico_auth_failures_total{{route=\"{route}\"")),
            "a {route} denial counted as an authentication failure:\n{text}"
        );
    }
}

#[tokio::test]
async fn reloads_are_counted_and_the_revision_follows() {
    let up = upstream::http1("a").spawn().await;
    let yaml = |name: &str| {
        format!(
            "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\n\
             routes:\n  - name: {name}\n    service: a\n",
            up.url()
        )
    };
    let gw = TestGateway::start(&yaml("first"));
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    gw.reload(&yaml("second")).expect("a good config applies");
    assert!(gw.reload("routes: [{name: broken}]\n").is_err());
    gw.reload(&yaml("second")).expect("unchanged");
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    let text = scrape(&gw).await;
    assert_eq!(
        sample(&text, "portico_config_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "portico_config_reloads_total{result=\"rejected\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "portico_config_reloads_total{result=\"unchanged\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "portico_config_revision"), Some(2.0));
    // The renamed route's series went with it.
    assert!(!text.contains("route=\"first\""), "{text}");
    assert!(text.contains("route=\"second\""), "{text}");
}

#[tokio::test]
async fn a_reload_refused_late_in_compiling_leaves_no_series_of_its_routes() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - name: kept\n    service: a\n",
        up.url()
    ));
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    // Two routes matching the same requests: valid one by one, refused when the router is
    // built, after the routes (and their series) were.
    let refused = format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  \
         - {{name: ghost, service: a, match: {{path: /g}}}}\n  \
         - {{name: ghost2, service: a, match: {{path: /g}}}}\n",
        up.url()
    );
    let err = gw
        .reload(&refused)
        .expect_err("indistinguishable routes are refused")
        .to_string();
    assert!(err.contains("could never be chosen"), "{err}");
    let text = scrape(&gw).await;
    assert!(!text.contains("route=\"ghost"), "{text}");
    assert!(text.contains("route=\"kept\""), "{text}");
}

#[tokio::test]
async fn metrics_off_records_no_request_series() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "metrics: {{enabled: false}}\n\
         services:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - name: r\n    service: a\n",
        up.url()
    ));
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    let text = scrape(&gw).await;
    assert!(!text.contains("portico_requests_total{"), "{text}");
    assert_eq!(sample(&text, "portico_config_revision"), Some(1.0));
}
