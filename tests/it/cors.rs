//! The `cors` policy over real sockets: preflights answered at the gateway (never reaching the
//! upstream, even on a route that does not list OPTIONS), refused preflights, and the CORS
//! headers on actual responses.

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::{send, upstream, TestGateway};

fn config(url: &str, policy: &str) -> String {
    Config::new()
        .consumer(Consumer::new("app").api_key("app-key-0123456789"))
        .service(Service::new("a").target(url))
        .route(
            Route::new("r")
                .matching("methods", "[GET, POST, DELETE]")
                .service("a")
                .policy("auth", "{api_key: true}")
                .policy("cors", policy),
        )
        .to_yaml()
}

const POLICY: &str = "{allow_origins: [\"https://app.example.com\", \"https://*.acme.io\"], allow_methods: [GET, POST], allow_headers: [content-type, x-api-key], expose_headers: [x-total], allow_credentials: true, max_age: 10m}";

#[tokio::test]
async fn a_preflight_is_answered_at_the_gateway_before_auth() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), POLICY));
    let r = send(
        "OPTIONS",
        &gw.url("/orders"),
        &[
            ("origin", "https://shop.acme.io"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "Content-Type, X-Api-Key"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://shop.acme.io"
    );
    assert_eq!(r.header("access-control-allow-methods"), "GET, POST");
    assert_eq!(
        r.header("access-control-allow-headers"),
        "content-type, x-api-key"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-max-age"), "600");
    assert!(r.header("vary").contains("Origin"));
    assert!(!r.header("x-request-id").is_empty());
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn invalid_preflights_are_refused_with_the_reason() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), POLICY));
    for (origin, method, headers, why) in [
        ("https://evil.com", "GET", "", "origin"),
        ("https://acme.io", "GET", "", "origin"),
        ("https://app.example.com", "DELETE", "", "method"),
        ("https://app.example.com", "GET", "x-secret", "header"),
    ] {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if !headers.is_empty() {
            h.push(("access-control-request-headers", headers));
        }
        let r = send("OPTIONS", &gw.url("/orders"), &h, "").await;
        let body = r.assert_error(403, "forbidden");
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{origin} {method} {headers}: {body}"
        );
        assert_eq!(r.header("access-control-allow-origin"), "");
    }
    // A bare OPTIONS (no Origin) is not a preflight: the route does not allow it.
    let r = send("OPTIONS", &gw.url("/orders"), &[], "").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn actual_responses_carry_cors_headers_only_for_allowed_origins() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), POLICY));
    let key = ("x-api-key", "app-key-0123456789");
    let r = send(
        "GET",
        &gw.url("/orders"),
        &[key, ("origin", "https://app.example.com")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert_eq!(r.header("access-control-expose-headers"), "x-total");
    assert!(r.header("vary").contains("Origin"));
    let r = send(
        "GET",
        &gw.url("/orders"),
        &[key, ("origin", "https://evil.com")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), "");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn any_origin_without_credentials_is_answered_with_a_star() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), "{allow_origins: [\"*\"]}"));
    let r = send(
        "OPTIONS",
        &gw.url("/x"),
        &[
            ("origin", "https://anything.test"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-custom"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), "*");
    // No allow_headers configured: the requested headers are echoed.
    assert_eq!(r.header("access-control-allow-headers"), "x-custom");
    assert_eq!(r.header("access-control-allow-credentials"), "");
}
