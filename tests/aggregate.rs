//! Aggregation over real sockets: concurrent calls merged into one JSON answer, identity headers
//! forwarded, optional calls failing (timeout, 500, non-JSON) as a partial answer, a required
//! call failing as 502 naming it.

mod support;

use std::time::{Duration, Instant};

use support::{send, upstream, TestGateway};

fn json(body: &'static str) -> upstream::Handler {
    upstream::handler(move |req| async move {
        let consumer = req
            .headers()
            .get("x-consumer-name")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = body
            .replace("CONSUMER", &consumer)
            .replace("URI", &req.uri().to_string());
        let mut r = http::Response::new(upstream::full(body));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    })
}

async fn backends() -> Vec<support::Upstream> {
    let users = upstream::http1("users")
        .route(
            "/users/",
            json(r#"{"id": 7, "name": "Ann", "secret": "x", "seen_by": "CONSUMER"}"#),
        )
        .spawn()
        .await;
    let orders = upstream::http1("orders")
        .route("/orders", json(r#"{"orders": [{"id": 1}], "uri": "URI"}"#))
        .spawn()
        .await;
    let flaky = upstream::http1("flaky")
        .route(
            "/slow",
            upstream::handler(|_req| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                http::Response::new(upstream::full("{}"))
            }),
        )
        .route("/boom", upstream::reply(500, "{\"e\":1}"))
        .route("/text", upstream::reply(200, "not json"))
        .spawn()
        .await;
    vec![users, orders, flaky]
}

fn config(b: &[support::Upstream], extra_call: &str) -> String {
    format!(
        r#"consumers: [{{name: app, api_keys: ["app-key-0123456789"]}}]
services:
  users: {{targets: [{{url: "{}"}}]}}
  orders: {{targets: [{{url: "{}"}}]}}
  flaky: {{targets: [{{url: "{}"}}]}}
routes:
  - name: profile
    match: {{path: "/api/profile/{{id}}"}}
    service: users
    policies:
      - auth: {{api_key: true}}
      - aggregate:
          calls:
            - {{name: user, service: users, path: "/users/${{path.id}}", pick: [id, name, seen_by]}}
            - {{name: orders, service: orders, path: "/orders?user=${{path.id}}&by=${{consumer.name}}", merge: true}}
{extra_call}"#,
        b[0].url(),
        b[1].url(),
        b[2].url()
    )
}

const KEY: (&str, &str) = ("x-api-key", "app-key-0123456789");

#[tokio::test]
async fn calls_are_merged_with_identity_forwarded_and_fields_picked() {
    let b = backends().await;
    let gw = TestGateway::start(&config(&b, ""));
    let r = send("GET", &gw.url("/api/profile/7"), &[KEY], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"id": 7, "name": "Ann", "seen_by": "app"},
                           "orders": [{"id": 1}], "uri": "/orders?user=7&by=app"})
    );
    assert_eq!(r.header("x-portico-partial"), "");
    // Auth still guards the route.
    send("GET", &gw.url("/api/profile/7"), &[], "")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn optional_failures_give_a_partial_answer_without_waiting_past_their_timeout() {
    let b = backends().await;
    let gw = TestGateway::start(&config(
        &b,
        "            - {name: slow, service: flaky, path: /slow, timeout: 200ms, required: false}\n            - {name: boom, service: flaky, path: /boom, required: false}\n            - {name: text, service: flaky, path: /text, required: false}\n",
    ));
    let started = Instant::now();
    let r = send("GET", &gw.url("/api/profile/7"), &[KEY], "").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the slow call"
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-portico-partial"), "true");
    let v = r.json();
    assert_eq!(v["user"]["name"], "Ann");
    assert!(
        v["slow"].is_null() && v["boom"].is_null() && v["text"].is_null(),
        "{v}"
    );
    let errors = v["errors"].as_array().unwrap();
    let text = serde_json::to_string(errors).unwrap();
    assert_eq!(errors.len(), 3, "{text}");
    assert!(text.contains("did not answer within"), "{text}");
    assert!(text.contains("answered 500"), "{text}");
    assert!(text.contains("not JSON"), "{text}");
}

#[tokio::test]
async fn a_required_failure_is_a_502_naming_the_call() {
    let b = backends().await;
    let gw = TestGateway::start(&config(
        &b,
        "            - {name: boom, service: flaky, path: /boom}\n",
    ));
    let r = send("GET", &gw.url("/api/profile/7"), &[KEY], "").await;
    let body = r.assert_error(502, "upstream_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("aggregate call `boom` failed"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_calls_are_config_errors() {
    let b = backends().await;
    let err = TestGateway::try_start(&config(
        &b,
        "            - {name: user, service: nope, path: \"x/${path.nope}\"}\n",
    ))
    .err()
    .expect("refused");
    for needle in [
        "routes[0].policies[1].aggregate.calls[2].service",
        "routes[0].policies[1].aggregate.calls[2].path: must start with",
        "routes[0].policies[1].aggregate.calls[2].name",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
