//! Shadow traffic over real sockets: copies reach the shadow service with the same method, path
//! and body, marked `X-Portico-Shadow`; the client's answer never waits for the shadow service
//! and never sees its failures.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::{self, send, upstream, TestGateway};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};

fn config(primary: &str, shadow: &str, policy: &str) -> String {
    Config::new()
        .service(Service::new("main").target(primary))
        .service(Service::new("next").target(shadow))
        .route(Route::new("r").service("main").policy("shadow", policy))
        .to_yaml()
}

/// A shadow upstream that reports each request (method, uri, marker, body) on a channel and
/// answers only once `gate` is notified (when given).
async fn recorder(
    gate: Option<Arc<Notify>>,
) -> (
    support::Upstream,
    mpsc::UnboundedReceiver<(String, String, String, String)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = upstream::http1("next")
        .route(
            "/",
            upstream::handler(move |req| {
                let tx = tx.clone();
                let gate = gate.clone();
                async move {
                    let method = req.method().to_string();
                    let uri = req.uri().to_string();
                    let mark = req
                        .headers()
                        .get("x-portico-shadow")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let _ = tx.send((method, uri, mark, String::from_utf8_lossy(&body).into()));
                    if let Some(g) = gate {
                        g.notified().await;
                    }
                    let mut r = http::Response::new(upstream::full("shadow says no"));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            }),
        )
        .spawn()
        .await;
    (up, rx)
}

#[tokio::test]
async fn copies_reach_the_shadow_service_and_its_errors_are_invisible() {
    let primary = upstream::http1("main").spawn().await;
    let (shadow, mut seen) = recorder(None).await;
    let gw = TestGateway::start(&config(&primary.url(), &shadow.url(), "{service: next}"));
    let r = send(
        "POST",
        &gw.url("/orders?x=1"),
        &[("content-type", "application/json")],
        "{\"a\":1}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "main");
    assert_eq!(r.json()["body_len"], 7);
    let (method, uri, mark, body) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("copy within 10s")
        .unwrap();
    assert_eq!(
        (method.as_str(), uri.as_str(), mark.as_str(), body.as_str()),
        ("POST", "/orders?x=1", "1", "{\"a\":1}")
    );
}

#[tokio::test]
async fn the_client_does_not_wait_for_a_stalled_shadow_service() {
    let primary = upstream::http1("main").spawn().await;
    let gate = Arc::new(Notify::new());
    let (shadow, mut seen) = recorder(Some(Arc::clone(&gate))).await;
    let gw = TestGateway::start(&config(
        &primary.url(),
        &shadow.url(),
        "{service: next, percent: 100}",
    ));
    // The shadow service holds its answer until the client has had its own.
    let r = send("GET", &gw.url("/slow"), &[], "").await;
    assert_eq!(r.json()["upstream"], "main");
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await;
    assert!(got.is_ok(), "the copy was sent");
    gate.notify_waiters();
}

#[tokio::test]
async fn an_unreachable_shadow_service_changes_nothing_and_zero_percent_sends_nothing() {
    let primary = upstream::http1("main").spawn().await;
    let gw = TestGateway::start(&config(
        &primary.url(),
        "http://127.0.0.1:1",
        "{service: next}",
    ));
    for _ in 0..5 {
        assert_eq!(send("GET", &gw.url("/x"), &[], "").await.status, 200);
    }
    let (shadow, mut seen) = recorder(None).await;
    let gw = TestGateway::start(&config(
        &primary.url(),
        &shadow.url(),
        "{service: next, percent: 0}",
    ));
    for _ in 0..20 {
        assert_eq!(send("GET", &gw.url("/x"), &[], "").await.status, 200);
    }
    drop(gw);
    assert!(seen.try_recv().is_err());
    assert_eq!(shadow.hits(), 0);
}

#[tokio::test]
async fn bad_shadow_settings_are_config_errors() {
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "{service: nope, percent: 150}",
    ))
    .err()
    .expect("refused");
    assert!(
        err.contains("routes[0].policies[0].shadow.service"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].policies[0].shadow.percent"),
        "{err}"
    );
}
