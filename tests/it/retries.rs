//! Retries over real sockets: a per-try timeout on a slow target followed by a retry on another
//! one; 503s retried elsewhere; the retry budget bounding upstream attempts when everything
//! fails (counted at the upstreams); POST retried only when allowed; large and chunked uploads
//! never retried; the whole-request deadline bounding all tries; the deadline header.

use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::upstream::{self, Upstream};
use crate::support::{self, get, send, TestGateway};

async fn slow(name: &'static str, delay: Duration) -> Upstream {
    upstream::http1(name)
        .route(
            "/",
            upstream::handler(move |req| async move {
                tokio::time::sleep(delay).await;
                upstream::echo(name, req).await
            }),
        )
        .spawn()
        .await
}

/// Reads the whole request body (so large uploads are complete), then answers `status`.
async fn failing(name: &str, status: u16) -> Upstream {
    upstream::http1(name)
        .route(
            "/",
            upstream::handler(move |req| async move {
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                let mut r = http::Response::new(upstream::full("failed"));
                *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                r
            }),
        )
        .spawn()
        .await
}

fn config(urls: &[String], route_extra: &str) -> String {
    Config::new()
        .service(Service::new("s").targets(urls))
        .route(Route::new("all").service("s"))
        .yaml(route_extra)
        .to_yaml()
}

#[tokio::test]
async fn a_slow_target_hits_the_per_try_timeout_and_the_retry_elsewhere_succeeds() {
    let slow = slow("slow", Duration::from_secs(3)).await;
    let fast = upstream::http1("fast").spawn().await;
    let gw = TestGateway::start(&config(
        &[slow.url(), fast.url()],
        "    timeout: 5s\n    retry: {attempts: 2, per_try_timeout: 200ms}\n",
    ));
    for _ in 0..6 {
        let started = Instant::now();
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["upstream"], "fast");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(slow.hits() >= 1, "the slow target was never tried");
    assert_eq!(fast.hits(), 6);
}

#[tokio::test]
async fn a_503_is_retried_on_the_other_target() {
    let bad = failing("bad", 503).await;
    let good = upstream::http1("good").spawn().await;
    let gw = TestGateway::start(&config(&[bad.url(), good.url()], "    retry: {}\n"));
    for _ in 0..10 {
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(good.hits(), 10);
    assert!(
        bad.hits() >= 3,
        "round robin sent about half of the first tries to bad"
    );
}

#[tokio::test]
async fn with_every_target_failing_upstream_attempts_stay_within_the_budget() {
    let a = failing("a", 503).await;
    let b = failing("b", 503).await;
    let gw = TestGateway::start(&config(
        &[a.url(), b.url()],
        "    retry: {attempts: 3, backoff_base: 1ms, backoff_max: 2ms, budget: {percent: 20, min_per_second: 1, window: 10s}}\n",
    ));
    let requests = 50;
    for _ in 0..requests {
        assert_eq!(get(&gw.url("/x")).await.status, 503);
    }
    let attempts = a.hits() + b.hits();
    // Without a budget: 3 tries each, 150. With it: 20 % of 50 plus 1/s over the 10 s window.
    let allowed_retries = requests * 20 / 100 + 10;
    assert!(
        attempts <= requests + allowed_retries,
        "{attempts} upstream attempts for {requests} requests"
    );
    assert!(attempts > requests, "no retry at all: {attempts}");
}

#[tokio::test]
async fn post_is_not_retried_unless_the_route_allows_it() {
    let up = failing("up", 503).await;
    let gw = TestGateway::start(&format!(
        "{}  - name: allowed\n    service: s\n    match: {{path: /allowed}}\n    retry: {{attempts: 2, retry_non_idempotent: true}}\n",
        config(&[up.url()], "    retry: {attempts: 2}\n")
    ));
    let r = send("POST", &gw.url("/x"), &[], "order=1").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 1, "a POST was retried");
    let r = send("GET", &gw.url("/x"), &[], "").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 3, "a GET was not retried");
    let r = send("POST", &gw.url("/allowed"), &[], "order=1").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 5, "an allowed POST was not retried");
}

#[tokio::test]
async fn large_and_streamed_uploads_are_not_retried_small_ones_are() {
    let up = failing("up", 503).await;
    let gw = TestGateway::start(&config(&[up.url()], "    retry: {attempts: 2}\n"));
    // 1 KiB with a Content-Length: buffered, retried.
    let r = send("PUT", &gw.url("/x"), &[], vec![b'x'; 1024]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 2);
    // 100 KiB, over the 64 KiB default buffer: streamed once.
    let r = send("PUT", &gw.url("/x"), &[], vec![b'x'; 100 * 1024]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 3, "a large upload was retried");
    // A chunked upload (unknown length), however small: streamed once.
    let reply = support::raw_reply(
        gw.addr,
        b"PUT /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 503, "{:?}", reply.wire);
    assert_eq!(up.hits(), 4, "a streamed upload was retried");
}

#[tokio::test]
async fn the_whole_request_deadline_bounds_every_try_and_the_deadline_header_tells_the_upstream() {
    let slow = slow("slow", Duration::from_secs(3)).await;
    let gw = TestGateway::start(&config(
        &[slow.url()],
        "    timeout: 500ms\n    retry: {attempts: 5, per_try_timeout: 300ms, backoff_base: 1ms, backoff_max: 1ms}\n    deadline_header: x-deadline-ms\n",
    ));
    let started = Instant::now();
    let r = get(&gw.url("/x")).await;
    let took = started.elapsed();
    r.assert_error(504, "upstream_timeout");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(1200), "{took:?}");
    assert_eq!(slow.hits(), 2, "300 ms + the 200 ms left");

    // The header carries the attempt's time left (the route timeout without retries).
    let echo = upstream::http1("echo").spawn().await;
    let gw = TestGateway::start(&config(
        &[echo.url()],
        "    timeout: 2s\n    deadline_header: x-deadline-ms\n",
    ));
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.json()["headers"]["x-deadline-ms"][0], "2000");
}
