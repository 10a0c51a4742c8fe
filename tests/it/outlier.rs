//! Outlier detection over real sockets: a target answering 500s, or refusing connections, is
//! ejected and the traffic moves to the healthy one; it returns when its ejection ends; repeated
//! ejections last longer; `max_ejection_percent` keeps targets in rotation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::upstream::{self, flaky};
use crate::support::{self, get, TestGateway};

fn config(urls: &[String], outlier: &str) -> String {
    Config::new()
        .service(
            Service::new("s")
                .targets(urls)
                .set("outlier_detection", outlier)
                .set("timeouts", "{connect: 500ms}"),
        )
        .route(Route::new("all").service("s"))
        .to_yaml()
}

fn snapshot(gw: &TestGateway, i: usize) -> portico::upstream::state::HealthSnapshot {
    gw.runtime().active().plan.services[0].targets[i]
        .state
        .snapshot()
}

/// Sends `n` requests; returns how many each upstream name served (errors under "error").
async fn spread(gw: &TestGateway, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = get(&gw.url("/x")).await;
        let key = if r.status == 200 {
            r.json()["upstream"].as_str().unwrap_or("").to_string()
        } else {
            "error".to_string()
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn a_target_answering_500s_is_ejected_and_returns_after_its_ejection() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = flaky("a", &sick).await;
    let b = upstream::http1("b").spawn().await;
    let gw = TestGateway::start(&config(
        &[a.url(), b.url()],
        "{consecutive_5xx: 3, base_ejection_time: 2s, max_ejection_time: 10s}",
    ));
    // Round robin alternates: a fails 3 times in a row within 6 requests, then is ejected.
    let first = spread(&gw, 6).await;
    assert_eq!(first.get("error"), Some(&3), "{first:?}");
    assert_eq!(a.hits(), 3);
    let s = snapshot(&gw, 0);
    assert!(s.ejected_for.is_some() && s.ejections == 1, "{s:?}");
    let during = spread(&gw, 20).await;
    assert_eq!(during.get("b"), Some(&20), "{during:?}");
    assert_eq!(a.hits(), 3, "an ejected target got traffic");

    // Recovered and the ejection over: a is back.
    sick.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshot(&gw, 0).ejected_for.is_some() {
        assert!(Instant::now() < deadline, "the ejection never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = spread(&gw, 10).await;
    assert_eq!(after.get("a"), Some(&5), "{after:?}");
    assert_eq!(after.get("b"), Some(&5), "{after:?}");
}

#[tokio::test]
async fn a_second_ejection_in_a_row_lasts_longer() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = flaky("a", &sick).await;
    let b = upstream::http1("b").spawn().await;
    let gw = TestGateway::start(&config(
        &[a.url(), b.url()],
        "{consecutive_5xx: 1, base_ejection_time: 500ms, max_ejection_time: 10s}",
    ));
    let _ = spread(&gw, 2).await;
    assert_eq!(snapshot(&gw, 0).ejections, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Keep sending: once the first ejection ends, a fails again and is ejected for 2 × 500 ms.
    while snapshot(&gw, 0).ejections < 2 {
        assert!(Instant::now() < deadline, "no second ejection");
        let _ = get(&gw.url("/x")).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = snapshot(&gw, 0).ejected_for.expect("ejected");
    assert!(left > Duration::from_millis(500), "{left:?}");
}

#[tokio::test]
async fn connect_failures_eject_a_dead_target() {
    let (port, _refusing) = support::refusing_port();
    let b = upstream::http1("b").spawn().await;
    let gw = TestGateway::start(&config(
        &[format!("http://127.0.0.1:{port}"), b.url()],
        "{consecutive_connect_failures: 2, consecutive_5xx: 0, base_ejection_time: 30s}",
    ));
    let first = spread(&gw, 4).await;
    assert_eq!(first.get("error"), Some(&2), "{first:?}");
    let during = spread(&gw, 10).await;
    assert_eq!(during.get("b"), Some(&10), "{during:?}");
}

#[tokio::test]
async fn max_ejection_percent_keeps_a_target_in_rotation() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = flaky("a", &sick).await;
    let b = flaky("b", &sick).await;
    let gw = TestGateway::start(&config(
        &[a.url(), b.url()],
        "{consecutive_5xx: 1, base_ejection_time: 30s, max_ejection_percent: 50}",
    ));
    let _ = spread(&gw, 10).await;
    let ejected = (0..2)
        .filter(|&i| snapshot(&gw, i).ejected_for.is_some())
        .count();
    assert_eq!(ejected, 1);
    // The one left keeps getting the traffic (and answering 500).
    let before = a.hits() + b.hits();
    let _ = spread(&gw, 5).await;
    assert_eq!(a.hits() + b.hits(), before + 5);
}

#[tokio::test]
async fn an_error_rate_over_the_window_ejects() {
    // a fails every other request: never 3 in a row, but half of them.
    let flip = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flip);
    let a = upstream::http1("a")
        .route(
            "/",
            upstream::handler(move |req| {
                let fail = !f.fetch_xor(true, Ordering::SeqCst);
                async move {
                    if fail {
                        let mut r = http::Response::new(upstream::full("a"));
                        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                        r
                    } else {
                        upstream::echo("a", req).await
                    }
                }
            }),
        )
        .spawn()
        .await;
    let b = upstream::http1("b").spawn().await;
    let gw = TestGateway::start(&config(
        &[a.url(), b.url()],
        "{consecutive_5xx: 3, error_rate: {percent: 40, min_requests: 6, window: 10s}, base_ejection_time: 30s}",
    ));
    // The rate is judged when a failure is recorded: a's 7th answer is its 4th failure.
    let _ = spread(&gw, 14).await;
    assert_eq!(a.hits(), 7);
    assert!(
        snapshot(&gw, 0).ejected_for.is_some(),
        "{:?}",
        snapshot(&gw, 0)
    );
    let during = spread(&gw, 6).await;
    assert_eq!(during.get("b"), Some(&6), "{during:?}");
}
