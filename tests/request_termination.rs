//! The `request_termination` policy over real sockets: the gateway answers, the upstream is
//! never called, authentication and rate limits still apply, and `trigger` narrows it.

mod support;

use support::{get, send, upstream, TestGateway};

fn config(url: &str, policies: &str) -> String {
    format!(
        "consumers: [{{name: app, api_keys: [\"app-key-0123456789\"]}}]\n\
         services:\n  a: {{targets: [{{url: \"{url}\"}}]}}\n\
         routes:\n  - name: r\n    service: a\n    policies:\n{policies}"
    )
}

#[tokio::test]
async fn a_maintenance_answer_is_given_without_calling_the_upstream() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "      - request_termination: {status: 503, message: \"down for maintenance\", headers: {retry-after: \"600\"}}\n",
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
        "      - request_termination: {status: 200, body: \"<ok/>\", content_type: application/xml}\n",
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
        "      - auth: {api_key: true}\n      - rate_limit: {limits: [{requests: 1, per: 1m}], key: consumer}\n      - request_termination: {status: 410, message: gone}\n",
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
        "      - request_termination: {status: 200, body: stubbed, trigger: x-stub}\n",
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
        "      - request_termination: {status: 101}\n",
    ))
    .err()
    .expect("a 101 answer must be refused");
    assert!(
        err.contains("routes[0].policies[0].request_termination.status"),
        "{err}"
    );
}
