//! The `request_termination` policy over real sockets: the gateway answers, the upstream is
//! never called, authentication and rate limits still apply, and `trigger` narrows it.

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::{get, send, upstream, TestGateway};

/// One route `r` on service `a` with `policies` (name, inline YAML), and consumer `app`.
fn config(url: &str, policies: &[(&str, &str)]) -> String {
    let route = policies
        .iter()
        .fold(Route::new("r").service("a"), |r, (name, value)| {
            r.policy(name, value)
        });
    Config::new()
        .consumer(Consumer::new("app").api_key("app-key-0123456789"))
        .service(Service::new("a").target(url))
        .route(route)
        .to_yaml()
}

#[tokio::test]
async fn a_maintenance_answer_is_given_without_calling_the_upstream() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &[(
            "request_termination",
            "{status: 503, message: \"down for maintenance\", headers: {retry-after: \"600\"}}",
        )],
    ));
    let r = get(&gw.url("/orders")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["message"], "down for maintenance");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("retry-after"), "600");
    assert!(!r.header("x-request-id").is_empty());
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_stub_body_with_its_content_type() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &[(
            "request_termination",
            "{status: 200, body: \"<ok/>\", content_type: application/xml}",
        )],
    ));
    let r = send("POST", &gw.url("/stub"), &[], "ignored").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<ok/>");
    assert_eq!(r.header("content-type"), "application/xml");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn authentication_and_rate_limits_still_apply_before_it() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &[
            ("auth", "{api_key: true}"),
            (
                "rate_limit",
                "{limits: [{requests: 1, per: 1m}], key: consumer}",
            ),
            ("request_termination", "{status: 410, message: gone}"),
        ],
    ));
    get(&gw.url("/old")).await.assert_error(401, "unauthorized");
    let key = [("x-api-key", "app-key-0123456789")];
    let r = send("GET", &gw.url("/old"), &key, "").await;
    assert_eq!(r.status, 410, "{}", r.text());
    assert_eq!(r.json()["message"], "gone");
    send("GET", &gw.url("/old"), &key, "")
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn with_a_trigger_only_requests_carrying_it_are_answered() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &[(
            "request_termination",
            "{status: 200, body: stubbed, trigger: x-stub}",
        )],
    ));
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.text(), "stubbed");
    assert_eq!(up.hits(), 1);
    let r = send("GET", &gw.url("/x"), &[("x-stub", "1")], "").await;
    assert_eq!(r.text(), "stubbed");
    let r = get(&gw.url("/x?x-stub")).await;
    assert_eq!(r.text(), "stubbed");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_bad_entry_is_rejected_with_its_key_path() {
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:1",
        &[("request_termination", "{status: 101}")],
    ))
    .err()
    .expect("a 101 answer must be refused");
    assert!(
        err.contains("routes[0].policies[0].request_termination.status"),
        "{err}"
    );
}
