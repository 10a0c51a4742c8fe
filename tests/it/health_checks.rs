//! Active health checks over real sockets: a target whose health endpoint fails leaves the
//! rotation and comes back when it recovers; probes that time out, get garbage or miss the
//! expected body fail; `when_all_unhealthy` decides between panic routing and a fast 503; a
//! reload keeps the state of unchanged targets and stops the probes of removed ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::upstream::{self, read_head, Upstream};
use crate::support::{self, get, GatewayProcess, TestGateway};
use tokio::io::AsyncWriteExt;

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An echo upstream whose `/healthz` answers 500 while `sick` is set, 200 otherwise.
async fn switchable(name: &str, sick: &Arc<AtomicBool>) -> Upstream {
    let flag = Arc::clone(sick);
    upstream::http1(name)
        .route(
            "/healthz",
            upstream::handler(move |_req| {
                let sick = flag.load(Ordering::SeqCst);
                async move {
                    let mut r =
                        http::Response::new(upstream::full(if sick { "down" } else { "ok" }));
                    *r.status_mut() = if sick {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        http::StatusCode::OK
                    };
                    r
                }
            }),
        )
        .spawn()
        .await
}

/// Whether target `i` of service `s` is passing its health checks right now.
fn healthy(gw: &TestGateway, service: usize, i: usize) -> bool {
    gw.runtime().active().plan.services[service].targets[i]
        .state
        .snapshot()
        .healthy
}

fn config(urls: &[String], hc: &str, extra: &str) -> String {
    Config::new()
        .service(
            Service::new("s")
                .targets(urls)
                .set("health_check", hc)
                .yaml(extra),
        )
        .route(Route::new("all").service("s"))
        .to_yaml()
}

const FAST: &str =
    "{path: /healthz, interval: 50ms, timeout: 300ms, jitter: 0ms, healthy_threshold: 2, unhealthy_threshold: 2}";

async fn served_by(gw: &TestGateway) -> String {
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["upstream"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_target_failing_its_health_check_leaves_the_rotation_and_returns_when_it_recovers() {
    let sick = Arc::new(AtomicBool::new(false));
    let a = switchable("a", &sick).await;
    let b = upstream::http1("b").spawn().await;
    let gw = TestGateway::start(&config(&[a.url(), b.url()], FAST, ""));

    let mut seen_a = false;
    for _ in 0..10 {
        seen_a |= served_by(&gw).await == "a";
    }
    assert!(seen_a, "both targets serve while healthy");

    sick.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "a is marked unhealthy", || {
        !healthy(&gw, 0, 0)
    })
    .await;
    for _ in 0..20 {
        assert_eq!(served_by(&gw).await, "b", "an unhealthy target got traffic");
    }

    sick.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "a is healthy again", || {
        healthy(&gw, 0, 0)
    })
    .await;
    let mut back = 0;
    for _ in 0..10 {
        back += usize::from(served_by(&gw).await == "a");
    }
    assert_eq!(back, 5, "round robin shares evenly again");
}

#[tokio::test]
async fn when_every_target_is_unhealthy_fail_mode_answers_503_at_once_and_panic_mode_still_tries() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = switchable("a", &sick).await;
    let b = switchable("b", &sick).await;
    let urls = [a.url(), b.url()];
    let gw = TestGateway::start(&config(&urls, FAST, "    when_all_unhealthy: fail\n"));
    wait_until(Duration::from_secs(5), "both targets are unhealthy", || {
        !healthy(&gw, 0, 0) && !healthy(&gw, 0, 1)
    })
    .await;
    let hits = a.hits() + b.hits();
    let started = Instant::now();
    let r = get(&gw.url("/x")).await;
    r.assert_error(503, "no_healthy_upstream");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // Only probes reached the upstreams (they ask for /healthz, never /x).
    assert!(a.hits() + b.hits() <= hits + 4);
    drop(gw);

    // Panic mode (the default): the request goes to a target anyway, which answers it.
    let gw = TestGateway::start(&config(&urls, FAST, ""));
    wait_until(Duration::from_secs(5), "both targets are unhealthy", || {
        !healthy(&gw, 0, 0) && !healthy(&gw, 0, 1)
    })
    .await;
    let name = served_by(&gw).await;
    assert!(name == "a" || name == "b");
}

#[tokio::test]
async fn all_targets_down_gives_503_within_the_connect_timeout() {
    // Ports that refuse connections (reserved for the test's duration).
    let (a, _a) = support::refusing_port();
    let (b, _b) = support::refusing_port();
    let gw = TestGateway::start(&config(
        &[
            format!("http://127.0.0.1:{a}"),
            format!("http://127.0.0.1:{b}"),
        ],
        "{interval: 50ms, timeout: 200ms, jitter: 0ms, unhealthy_threshold: 1}",
        "    when_all_unhealthy: fail\n    timeouts: {connect: 500ms}\n",
    ));
    wait_until(Duration::from_secs(5), "both targets are unhealthy", || {
        !healthy(&gw, 0, 0) && !healthy(&gw, 0, 1)
    })
    .await;
    for _ in 0..3 {
        let started = Instant::now();
        get(&gw.url("/x"))
            .await
            .assert_error(503, "no_healthy_upstream");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}

#[tokio::test]
async fn probes_fail_on_a_slow_answer_on_garbage_and_on_a_missing_body_text() {
    // Slow: answers after 2 s, beyond the 200 ms probe timeout.
    let slow = upstream::http1("slow")
        .route(
            "/",
            upstream::handler(|_req| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                http::Response::new(upstream::full("late"))
            }),
        )
        .spawn()
        .await;
    // Garbage: not HTTP at all.
    let garbage = upstream::raw_tcp(|mut s, _| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        }
    })
    .await;
    // Healthy status, but the body lacks the text the check wants.
    let wrong_body = upstream::http1("wrong")
        .route("/", upstream::reply(200, "status: degraded"))
        .spawn()
        .await;
    let good = upstream::http1("good")
        .route("/", upstream::reply(200, "status: ok"))
        .spawn()
        .await;
    let urls = [slow.url(), garbage.url(), wrong_body.url(), good.url()];
    let gw = TestGateway::start(&config(
        &urls,
        "{interval: 50ms, timeout: 200ms, jitter: 0ms, unhealthy_threshold: 1, body_contains: \"status: ok\"}",
        "",
    ));
    wait_until(
        Duration::from_secs(5),
        "three targets are unhealthy",
        || !healthy(&gw, 0, 0) && !healthy(&gw, 0, 1) && !healthy(&gw, 0, 2),
    )
    .await;
    // The good one stays in (checked over several probe rounds).
    for _ in 0..10 {
        assert!(healthy(&gw, 0, 3));
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.text(), "status: ok");
    }
}

#[tokio::test]
async fn a_reload_keeps_unchanged_targets_state_and_stops_removed_probes() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = switchable("a", &sick).await;
    let b = upstream::http1("b").spawn().await;
    let c = upstream::http1("c").spawn().await;
    let slow_hc = "{path: /healthz, interval: 50ms, timeout: 300ms, jitter: 0ms, healthy_threshold: 1, unhealthy_threshold: 1}";
    let base = config(&[a.url(), b.url()], slow_hc, "");
    let with_extra = base.replace(
        "routes:",
        &format!(
            "  t:\n    targets: [{{url: \"{}\"}}]\n    health_check: {slow_hc}\nroutes:",
            c.url()
        ),
    );
    let gw = TestGateway::start(&with_extra);
    assert_eq!(gw.runtime().health.probes(), 3);
    wait_until(Duration::from_secs(5), "a is unhealthy", || {
        !healthy(&gw, 0, 0)
    })
    .await;

    // Remove service t and change nothing else: a is still known to be sick at once, and the
    // probe of c stops.
    gw.reload(&base).expect("reload");
    assert!(!healthy(&gw, 0, 0), "the reload forgot that a is unhealthy");
    assert_eq!(gw.runtime().health.probes(), 2);
    let c_hits = c.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.hits(), c_hits, "a removed target is still probed");
    for _ in 0..5 {
        assert_eq!(served_by(&gw).await, "b");
    }
}

#[test]
fn health_changes_log_one_line_each() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sick = Arc::new(AtomicBool::new(false));
    let (a, b) = rt.block_on(async {
        (
            switchable("a", &sick).await,
            upstream::http1("b").spawn().await,
        )
    });
    let mut gw = GatewayProcess::spawn(&config(&[a.url(), b.url()], FAST, ""), &[]);
    sick.store(true, Ordering::SeqCst);
    let line = gw.wait_for_line("out of rotation", Duration::from_secs(10));
    assert!(
        line.contains(&a.url()) && line.contains("status 500"),
        "{line}"
    );
    sick.store(false, Ordering::SeqCst);
    let line = gw.wait_for_line("back in rotation", Duration::from_secs(10));
    assert!(line.contains(&a.url()), "{line}");
}

#[tokio::test]
async fn an_h2c_target_is_probed_over_http2() {
    let sick = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&sick);
    let up = upstream::h2c("h2")
        .route(
            "/healthz",
            upstream::handler(move |req| {
                let sick = flag.load(Ordering::SeqCst);
                async move {
                    assert_eq!(req.version(), http::Version::HTTP_2);
                    let mut r = http::Response::new(upstream::full("ok"));
                    if sick {
                        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    r
                }
            }),
        )
        .spawn()
        .await;
    let url = up.url().replace("http://", "h2c://");
    let gw = TestGateway::start(&config(&[url], FAST, ""));
    wait_until(Duration::from_secs(5), "the h2c target was probed", || {
        up.hits() >= 2
    })
    .await;
    assert!(healthy(&gw, 0, 0));
    sick.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(5),
        "the h2c target is unhealthy",
        || !healthy(&gw, 0, 0),
    )
    .await;
}

#[test]
fn resilience_config_errors_are_all_reported_at_their_key_paths() {
    let err = TestGateway::try_start(
        r#"
services:
  api:
    targets: [{url: "http://127.0.0.1:1"}]
    health_check: {interval: 0s, expected_statuses: ["300-200"], method: get}
    outlier_detection: {consecutive_5xx: 0, consecutive_connect_failures: 0, max_ejection_percent: 0}
    circuit_breaker: {open_for: 10s}
    max_concurrent_requests: 0
routes:
  - name: r
    service: api
    retry: {attempts: 0, retry_on: [bogus, 404], backoff_base: 1s, backoff_max: 10ms}
    fallback: {status: 42}
    deadline_header: "bad header"
"#,
    )
    .err()
    .expect("the config is refused");
    for needle in [
        "services.api.health_check.interval",
        "services.api.health_check.expected_statuses[0]",
        "services.api.health_check.method",
        "services.api.outlier_detection.consecutive_5xx",
        "services.api.outlier_detection.max_ejection_percent",
        "services.api.circuit_breaker.error_rate",
        "services.api.max_concurrent_requests",
        "routes[0].retry.attempts",
        "routes[0].retry.retry_on[0]",
        "routes[0].retry.retry_on[1]",
        "routes[0].retry.backoff_max",
        "routes[0].fallback.status",
        "routes[0].deadline_header",
    ] {
        assert!(err.contains(needle), "no error at {needle}:\n{err}");
    }
}

#[tokio::test]
async fn probes_stop_when_the_gateway_shuts_down() {
    let sick = Arc::new(AtomicBool::new(false));
    let a = switchable("a", &sick).await;
    let gw = TestGateway::start(&config(&[a.url()], FAST, ""));
    wait_until(Duration::from_secs(5), "probes run", || a.hits() >= 3).await;
    tokio::task::spawn_blocking(move || gw.shutdown())
        .await
        .expect("shutdown");
    // One probe may have been under way; after that, silence (the interval is 50 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = a.hits();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.hits(), hits, "a stopped gateway is still probing");
}

/// An h2c upstream answering `grpc.health.v1.Health/Check` with SERVING while `serving` holds
/// (NOT_SERVING otherwise), status in the trailers as gRPC servers send it.
async fn grpc_health_target(serving: &Arc<AtomicBool>) -> Upstream {
    let flag = Arc::clone(serving);
    upstream::h2c("grpc")
        .route(
            "/grpc.health.v1.Health/Check",
            upstream::handler(move |_req| {
                let status = if flag.load(Ordering::SeqCst) { 1u8 } else { 2 };
                async move {
                    use http_body_util::BodyExt;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames = vec![
                        Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                            0, 0, 0, 0, 2, 0x08, status,
                        ]))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed();
                    let mut r = http::Response::new(body);
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    r
                }
            }),
        )
        .spawn()
        .await
}

#[tokio::test]
async fn grpc_health_checks_follow_the_serving_status() {
    let serving = Arc::new(AtomicBool::new(true));
    let up = grpc_health_target(&serving).await;
    let gw = TestGateway::start(&config(
        &[format!("h2c://{}", up.addr)],
        "{grpc_service: \"\", interval: 50ms, timeout: 1s, jitter: 0ms, healthy_threshold: 1, unhealthy_threshold: 1}",
        "    when_all_unhealthy: fail\n",
    ));
    let status_until = |want: u16| {
        let url = gw.url("/x");
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let r = get(&url).await;
                if r.status == want {
                    return r;
                }
                assert!(Instant::now() < deadline, "never {want}; last {}", r.status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    status_until(200).await;
    serving.store(false, Ordering::SeqCst);
    status_until(503)
        .await
        .assert_error(503, "no_healthy_upstream");
    serving.store(true, Ordering::SeqCst);
    status_until(200).await;
}
