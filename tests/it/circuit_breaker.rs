//! Circuit breakers and the concurrency cap over real sockets: the breaker opens after the
//! threshold, fails fast without reaching the upstream (counted there), half-opens after its
//! cool-down, closes on successful probes or reopens on a failed one; a route's fallback is
//! served while open; `max_concurrent_requests` sheds with 503 instead of queueing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::upstream::{self, flaky};
use crate::support::{get, TestGateway};

fn breaker_state(gw: &TestGateway) -> portico::upstream::breaker::BreakerState {
    let active = gw.runtime().active();
    let service = active
        .plan
        .services
        .iter()
        .find(|s| &*s.name == "s")
        .expect("service s");
    service.breaker.as_ref().expect("a breaker").state()
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    use portico::upstream::breaker::BreakerState;
    let sick = Arc::new(AtomicBool::new(true));
    let up = flaky("up", &sick).await;
    let gw = TestGateway::start(&format!(
        "services:\n  s:\n    targets: [{{url: \"{}\"}}]\n    circuit_breaker: {{consecutive_failures: 3, open_for: 1500ms, half_open_requests: 2}}\nroutes:\n  - {{name: all, service: s}}\n",
        up.url()
    ));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/x")).await.status, 500);
    }
    assert_eq!(breaker_state(&gw), BreakerState::Open);
    let opened = Instant::now();

    // Open: fail fast, nothing reaches the upstream.
    let hits = up.hits();
    for _ in 0..5 {
        let started = Instant::now();
        let r = get(&gw.url("/x")).await;
        r.assert_error(503, "circuit_open");
        let retry_after: u64 = r.header("retry-after").parse().expect("Retry-After");
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        assert!(started.elapsed() < Duration::from_millis(200));
    }
    assert_eq!(
        up.hits(),
        hits,
        "requests reached the upstream while the breaker was open"
    );

    // After the cool-down, the upstream has recovered: two probes pass and the breaker closes.
    sick.store(false, Ordering::SeqCst);
    assert!(
        opened.elapsed() < Duration::from_millis(1500),
        "the machine is too slow for this test's timing"
    );
    let wait = Duration::from_millis(1550).saturating_sub(opened.elapsed());
    tokio::time::sleep(wait).await;
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/x")).await.status, 200);
    }
    assert_eq!(breaker_state(&gw), BreakerState::Closed);
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/x")).await.status, 200);
    }
    assert_eq!(up.hits(), hits + 7);
}

#[tokio::test]
async fn a_failed_half_open_probe_reopens_the_breaker() {
    use portico::upstream::breaker::BreakerState;
    let sick = Arc::new(AtomicBool::new(true));
    let up = flaky("up", &sick).await;
    let gw = TestGateway::start(&format!(
        "services:\n  s:\n    targets: [{{url: \"{}\"}}]\n    circuit_breaker: {{consecutive_failures: 2, open_for: 500ms, half_open_requests: 1}}\nroutes:\n  - {{name: all, service: s}}\n",
        up.url()
    ));
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/x")).await.status, 500);
    }
    assert_eq!(breaker_state(&gw), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(550)).await;
    let hits = up.hits();
    // The probe reaches the upstream, fails, and the breaker opens again.
    assert_eq!(get(&gw.url("/x")).await.status, 500);
    assert_eq!(up.hits(), hits + 1);
    assert_eq!(breaker_state(&gw), BreakerState::Open);
    get(&gw.url("/x")).await.assert_error(503, "circuit_open");
    assert_eq!(up.hits(), hits + 1);
}

#[tokio::test]
async fn an_error_rate_breaker_waits_for_the_minimum_volume_and_a_route_serves_its_fallback() {
    let sick = Arc::new(AtomicBool::new(true));
    let up = flaky("up", &sick).await;
    let gw = TestGateway::start(&format!(
        r#"
services:
  s:
    targets: [{{url: "{}"}}]
routes:
  - name: all
    service: s
    circuit_breaker: {{error_rate: {{percent: 50, min_requests: 6, window: 10s}}, open_for: 30s}}
    fallback: {{status: 200, headers: {{content-type: application/json, x-fallback: "1"}}, body: '{{"items": []}}'}}
"#,
        up.url()
    ));
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/x")).await.status, 500);
    }
    // Five failures are below the volume: still closed, the sixth reaches the upstream.
    assert_eq!(get(&gw.url("/x")).await.status, 500);
    assert_eq!(up.hits(), 6);
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-fallback"), "1");
    assert_eq!(r.json()["items"], serde_json::json!([]));
    assert_eq!(up.hits(), 6);
    // The route's breaker, not a service one.
    assert!(gw.runtime().active().plan.services[0].breaker.is_none());
}

#[tokio::test]
async fn max_concurrent_requests_sheds_the_excess_with_503() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let g = Arc::clone(&gate);
    let up = upstream::http1("up")
        .route(
            "/slow",
            upstream::handler(move |_req| {
                let g = Arc::clone(&g);
                let entered = entered_tx.clone();
                async move {
                    let released = g.notified();
                    let _ = entered.send(());
                    released.await;
                    http::Response::new(upstream::full("done"))
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&format!(
        "services:\n  s:\n    targets: [{{url: \"{}\"}}]\n    max_concurrent_requests: 2\nroutes:\n  - {{name: all, service: s}}\n",
        up.url()
    ));
    let slow = gw.url("/slow");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = slow.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), entered_rx.recv())
            .await
            .expect("both slow requests reached the upstream");
    }
    let hits = up.hits();
    let started = Instant::now();
    get(&gw.url("/other"))
        .await
        .assert_error(503, "service_overloaded");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(up.hits(), hits);
    gate.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    // Places are given back when the response bodies end.
    assert_eq!(get(&gw.url("/other")).await.status, 200);
}

#[tokio::test]
async fn a_reload_that_keeps_the_breaker_config_keeps_it_open() {
    use portico::upstream::breaker::BreakerState;
    let sick = Arc::new(AtomicBool::new(true));
    let up = flaky("up", &sick).await;
    let other = upstream::http1("other").spawn().await;
    let yaml = |extra: &str| {
        format!(
            "services:\n  s:\n    targets: [{{url: \"{}\"}}]\n    circuit_breaker: {{consecutive_failures: 1, open_for: 30s}}\n  o:\n    targets: [{{url: \"{}\"}}]\nroutes:\n  - {{name: all, service: s}}\n{extra}",
            up.url(),
            other.url()
        )
    };
    let gw = TestGateway::start(&yaml(""));
    assert_eq!(get(&gw.url("/x")).await.status, 500);
    assert_eq!(breaker_state(&gw), BreakerState::Open);
    gw.reload(&yaml("  - {name: o, service: o, match: {path: /o}}\n"))
        .expect("reload");
    assert_eq!(breaker_state(&gw), BreakerState::Open);
    get(&gw.url("/x")).await.assert_error(503, "circuit_open");
}
