//! Load balancing over real upstreams: weighted round robin shares, least-request avoiding a busy
//! target, consistent hashing on a header and on a cookie, random, and DNS-name targets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::{get, send, upstream, TestGateway, Upstream};
use tokio::sync::{mpsc, Notify};

/// A gateway with one service `s` over `targets` (`(url, weight)`) using `lb`, routing every path.
fn gateway(targets: &[(String, u32)], lb: &str) -> TestGateway {
    let service = targets
        .iter()
        .fold(Service::new("s"), |s, (url, w)| s.weighted_target(url, *w))
        .set("load_balancing", lb);
    TestGateway::start(
        &Config::new()
            .service(service)
            .route(Route::new("all").service("s"))
            .to_yaml(),
    )
}

async fn two_upstreams() -> (Upstream, Upstream) {
    (
        upstream::http1("a").spawn().await,
        upstream::http1("b").spawn().await,
    )
}

/// Which upstream answered (the echo's `upstream` field).
async fn served_by(url: &str, headers: &[(&str, &str)]) -> String {
    let r = send("GET", url, headers, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["upstream"]
        .as_str()
        .expect("upstream name")
        .to_string()
}

#[tokio::test]
async fn round_robin_weights_2_to_1_give_exact_shares_over_30_requests() {
    let (a, b) = two_upstreams().await;
    let gw = gateway(&[(a.url(), 2), (b.url(), 1)], "round_robin");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        *counts
            .entry(served_by(&gw.url("/x"), &[]).await)
            .or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    assert_eq!((a.hits(), b.hits()), (20, 10));
}

#[tokio::test]
async fn least_request_avoids_the_target_with_a_slow_in_flight_request() {
    // Both upstreams hold `/slow` open until released, reporting who got it.
    let gate = Arc::new(Notify::new());
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel::<&'static str>();
    let slow = |name: &'static str| {
        let gate = Arc::clone(&gate);
        let entered = entered_tx.clone();
        upstream::handler(move |_req| {
            let gate = Arc::clone(&gate);
            let entered = entered.clone();
            async move {
                let released = gate.notified();
                let _ = entered.send(name);
                released.await;
                http::Response::new(upstream::full("slow done"))
            }
        })
    };
    let a = upstream::http1("a").route("/slow", slow("a")).spawn().await;
    let b = upstream::http1("b").route("/slow", slow("b")).spawn().await;
    let gw = gateway(&[(a.url(), 1), (b.url(), 1)], "least_request");

    let slow_url = gw.url("/slow");
    let slow_req = tokio::spawn(async move { get(&slow_url).await });
    let busy = tokio::time::timeout(Duration::from_secs(10), entered_rx.recv())
        .await
        .expect("the slow request reached an upstream")
        .expect("channel open");
    let idle = if busy == "a" { "b" } else { "a" };
    // With two targets the two random choices are always both targets, so every request must go
    // to the one without the in-flight request.
    for i in 0..20 {
        assert_eq!(served_by(&gw.url("/x"), &[]).await, idle, "request {i}");
    }
    gate.notify_waiters();
    let r = tokio::time::timeout(Duration::from_secs(10), slow_req)
        .await
        .expect("slow request finished")
        .expect("task");
    assert_eq!(r.text(), "slow done");
    // Once it finished, both targets are eligible again.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(served_by(&gw.url("/x"), &[]).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// Sends `key` 5 times through `header(key)`; asserts one upstream served all; returns it.
async fn sticky_target(gw: &TestGateway, name: &str, value: &str) -> String {
    let first = served_by(&gw.url("/x"), &[(name, value)]).await;
    for _ in 0..4 {
        assert_eq!(
            served_by(&gw.url("/x"), &[(name, value)]).await,
            first,
            "{name}: {value} moved"
        );
    }
    first
}

#[tokio::test]
async fn consistent_hash_on_header_is_sticky_and_spreads() {
    let (a, b) = two_upstreams().await;
    let gw = gateway(
        &[(a.url(), 1), (b.url(), 1)],
        "{consistent_hash: {header: x-user}}",
    );
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for user in 0..24 {
        let t = sticky_target(&gw, "x-user", &format!("user-{user}")).await;
        *per_target.entry(t).or_default() += 1;
    }
    assert_eq!(
        per_target.len(),
        2,
        "keys all landed on one target: {per_target:?}"
    );
}

#[tokio::test]
async fn consistent_hash_on_cookie_is_sticky_and_spreads() {
    let (a, b) = two_upstreams().await;
    let gw = gateway(
        &[(a.url(), 1), (b.url(), 1)],
        "{consistent_hash: {cookie: session}}",
    );
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for user in 0..24 {
        // Other cookies around it change nothing: only `session` is hashed.
        let cookie = format!("theme=dark; session=s{user}; lang=en");
        let t = sticky_target(&gw, "cookie", &cookie).await;
        let other = format!("session=s{user}");
        assert_eq!(served_by(&gw.url("/x"), &[("cookie", &other)]).await, t);
        *per_target.entry(t).or_default() += 1;
    }
    assert_eq!(
        per_target.len(),
        2,
        "keys all landed on one target: {per_target:?}"
    );
}

#[tokio::test]
async fn consistent_hash_on_client_ip_uses_trusted_forwarded_for() {
    let (a, b) = two_upstreams().await;
    let list = format!("{{url: \"{}\"}}, {{url: \"{}\"}}", a.url(), b.url());
    let gw = TestGateway::start(&format!(
        "trusted_proxies: [127.0.0.1/32]\nservices:\n  s:\n    targets: [{list}]\n    load_balancing: {{consistent_hash: {{client_ip: true}}}}\nroutes:\n  - {{name: all, service: s}}\n"
    ));
    // The peer (127.0.0.1) is a trusted proxy, so the client is the X-Forwarded-For entry.
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for client in 1..=24 {
        let t = sticky_target(&gw, "x-forwarded-for", &format!("198.51.100.{client}")).await;
        *per_target.entry(t).or_default() += 1;
    }
    assert_eq!(
        per_target.len(),
        2,
        "clients all landed on one target: {per_target:?}"
    );
}

#[tokio::test]
async fn random_reaches_both_targets() {
    let (a, b) = two_upstreams().await;
    let gw = gateway(&[(a.url(), 1), (b.url(), 1)], "random");
    for _ in 0..60 {
        get(&gw.url("/x")).await;
    }
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 60);
}

#[tokio::test]
async fn dns_name_target_is_resolved_and_proxied() {
    let up = upstream::http1("named").spawn().await;
    let url = format!("http://localhost:{}", up.addr.port());
    let gw = gateway(&[(url, 1)], "round_robin");
    let r = get(&gw.url("/dns?q=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["upstream"], "named");
    assert_eq!(echo["uri"], "/dns?q=1");
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!([format!("localhost:{}", up.addr.port())])
    );
}
