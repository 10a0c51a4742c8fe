//! `split` and `versioning` over real sockets: weighted canary splits (random and sticky by
//! header, cookie or consumer) and API versions by path, header, media type and query, with
//! defaults and Deprecation/Sunset headers.

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::{self, send, upstream, TestGateway};

async fn two() -> (support::Upstream, support::Upstream) {
    (
        upstream::http1("stable").spawn().await,
        upstream::http1("canary").spawn().await,
    )
}

fn config(a: &str, b: &str, policy: &str) -> String {
    Config::new()
        .consumer(Consumer::new("alice").api_key("alice-key-0123456789"))
        .consumer(Consumer::new("bob").api_key("bob-key-0123456789"))
        .service(Service::new("stable").target(a))
        .service(Service::new("canary").target(b))
        .route(Route::new("r").service("stable"))
        .yaml(&format!("    policies:\n{policy}"))
        .to_yaml()
}

#[tokio::test]
async fn a_weighted_split_sends_about_its_share_to_each_side() {
    let (a, b) = two().await;
    let gw = TestGateway::start(&config(
        &a.url(),
        &b.url(),
        "      - split: {services: [{service: stable, weight: 80}, {service: canary, weight: 20}]}\n",
    ));
    for _ in 0..400 {
        assert_eq!(send("GET", &gw.url("/x"), &[], "").await.status, 200);
    }
    // 400 draws at p = 0.2: mean 80, standard deviation 8; 40..=130 is beyond 5 sigma.
    assert_eq!(a.hits() + b.hits(), 400);
    assert!((40..=130).contains(&b.hits()), "canary got {}", b.hits());
}

#[tokio::test]
async fn sticky_splits_keep_a_key_on_one_side() {
    let (a, b) = two().await;
    for sticky in ["{header: x-user}", "{cookie: sid}"] {
        let gw = TestGateway::start(&config(
            &a.url(),
            &b.url(),
            &format!("      - split: {{services: [{{service: stable, weight: 50}}, {{service: canary, weight: 50}}], sticky: {sticky}}}\n"),
        ));
        let mut sides = std::collections::HashSet::new();
        for user in 0..20 {
            let key = format!("user-{user}");
            let cookie = format!("a=1; sid={key}");
            let h: [(&str, &str); 1] = if sticky.contains("header") {
                [("x-user", &key)]
            } else {
                [("cookie", &cookie)]
            };
            let first = send("GET", &gw.url("/x"), &h, "").await.json()["upstream"].clone();
            for _ in 0..4 {
                let again = send("GET", &gw.url("/x"), &h, "").await.json()["upstream"].clone();
                assert_eq!(again, first, "{sticky} {key}");
            }
            sides.insert(first.to_string());
        }
        // 20 keys at 50/50 all on one side: 2 in a million.
        assert_eq!(sides.len(), 2, "{sticky}: {sides:?}");
    }
    let gw = TestGateway::start(&config(
        &a.url(),
        &b.url(),
        "      - auth: {api_key: true}\n      - split: {services: [{service: stable, weight: 1}, {service: canary, weight: 1}], sticky: {consumer: true}}\n",
    ));
    for key in ["alice-key-0123456789", "bob-key-0123456789"] {
        let first = send("GET", &gw.url("/x"), &[("x-api-key", key)], "")
            .await
            .json()["upstream"]
            .clone();
        for _ in 0..5 {
            let r = send("GET", &gw.url("/x"), &[("x-api-key", key)], "").await;
            assert_eq!(r.json()["upstream"], first);
        }
    }
}

#[tokio::test]
async fn versions_by_header_media_type_query_and_path_with_a_default_and_lifecycle_headers() {
    let (a, b) = two().await;
    let versions = "versions: {v1: {service: stable, deprecation: \"@1735689600\", sunset: \"Wed, 31 Dec 2025 23:59:59 GMT\"}, v2: {service: canary}}";
    let gw = TestGateway::start(&config(
        &a.url(),
        &b.url(),
        &format!("      - versioning: {{from: header, default: v1, {versions}}}\n"),
    ));
    let r = send("GET", &gw.url("/x"), &[("accept-version", "v2")], "").await;
    assert_eq!(r.json()["upstream"], "canary");
    assert_eq!(r.header("deprecation"), "");
    let r = send("GET", &gw.url("/x"), &[], "").await;
    assert_eq!(r.json()["upstream"], "stable");
    assert_eq!(r.header("deprecation"), "@1735689600");
    assert_eq!(r.header("sunset"), "Wed, 31 Dec 2025 23:59:59 GMT");
    let r = send("GET", &gw.url("/x"), &[("accept-version", "v9")], "").await;
    r.assert_error(400, "bad_request");

    let gw = TestGateway::start(&config(
        &a.url(),
        &b.url(),
        &format!("      - versioning: {{from: media_type, {versions}}}\n"),
    ));
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("accept", "application/vnd.acme.v2+json")],
        "",
    )
    .await;
    assert_eq!(r.json()["upstream"], "canary");
    // No default: a request naming no version is refused.
    let r = send("GET", &gw.url("/x"), &[("accept", "application/json")], "").await;
    r.assert_error(400, "bad_request");

    let gw = TestGateway::start(&config(
        &a.url(),
        &b.url(),
        &format!("      - versioning: {{from: query, name: api, default: v1, {versions}}}\n"),
    ));
    let r = send("GET", &gw.url("/x?api=v2&y=1"), &[], "").await;
    assert_eq!(r.json()["upstream"], "canary");

    let gw = TestGateway::start(&config(
        &a.url(),
        &b.url(),
        &format!("      - versioning: {{from: path, default: v1, {versions}}}\n"),
    ));
    let r = send("GET", &gw.url("/v2/users/7?q=1"), &[], "").await;
    let echo = r.json();
    assert_eq!(echo["upstream"], "canary");
    assert_eq!(echo["uri"], "/users/7?q=1");
    let r = send("GET", &gw.url("/users/7"), &[], "").await;
    assert_eq!(r.json()["upstream"], "stable");
    assert_eq!(r.json()["uri"], "/users/7");
}

#[tokio::test]
async fn unknown_services_and_bad_defaults_are_config_errors() {
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "      - split: {services: [{service: nope, weight: 1}], sticky: {header: x, consumer: true}}\n      - versioning: {from: header, default: v3, versions: {v1: {service: gone}}}\n",
    ))
    .err()
    .expect("refused");
    for needle in [
        "routes[0].policies[0].split.services[0].service: no service named `nope`",
        "routes[0].policies[0].split.sticky",
        "routes[0].policies[1].versioning.versions.v1.service",
        "routes[0].policies[1].versioning.default",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
