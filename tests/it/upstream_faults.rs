//! Upstream faults over real sockets: a target that is down, silent, cut off mid-response,
//! stalling mid-body, speaking broken HTTP, or closing pooled connections while they sit idle.
//! Each test also checks that the gateway goes on serving afterwards.
//!
//! Faults a real HTTP server would not produce come from `upstream::raw_tcp`, a bare TCP
//! listener whose connections the test script byte by byte.

use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::upstream::{self, read_head, RawUpstream};
use crate::support::{self, client, get, Reply, TestGateway};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

/// A gateway with a catch-all route to the faulty upstream at `url` and route `/ok` to a healthy
/// echo upstream (returned). `service_extra` and `route_extra` are extra YAML flow-mapping
/// entries for the faulty service and route, e.g. `", timeout: 300ms"`.
async fn gateway(
    url: &str,
    service_fields: &str,
    route_fields: &str,
) -> (upstream::Upstream, TestGateway) {
    let ok = upstream::http1("ok").spawn().await;
    let gw = TestGateway::start(
        &Config::new()
            .service(Service::new("faulty").target(url).yaml(service_fields))
            .service(Service::new("ok").target(ok.url()))
            .route(Route::new("faulty").service("faulty").yaml(route_fields))
            .route(Route::new("ok").path("/ok").service("ok"))
            .to_yaml(),
    );
    (ok, gw)
}

/// The gateway still proxies to the healthy upstream.
async fn assert_still_serving(gw: &TestGateway, ok: &upstream::Upstream) {
    let before = ok.hits();
    let r = get(&gw.url("/ok/next")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "ok");
    assert_eq!(ok.hits(), before + 1);
}

#[tokio::test]
async fn upstream_down_gives_502_upstream_unreachable_quickly() {
    // A port nothing listens on: bind, note it, close.
    let (port, _refusing) = support::refusing_port();
    let (ok, gw) = gateway(&format!("http://127.0.0.1:{port}"), "", "").await;
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(&gw.url("/down")).await;
        let took = started.elapsed();
        r.assert_error(502, "upstream_unreachable");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    assert_still_serving(&gw, &ok).await;
}

#[tokio::test]
async fn upstream_that_never_answers_gives_504_after_the_route_timeout() {
    // Accepts, reads the request, never writes; holds the socket until the gateway gives up.
    let silent = upstream::raw_tcp(|mut s, _| async move {
        let _ = read_head(&mut s).await;
        let mut sink = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
    })
    .await;
    let (ok, gw) = gateway(&silent.url(), "", "timeout: 300ms").await;
    let started = Instant::now();
    let r = get(&gw.url("/silent")).await;
    let took = started.elapsed();
    r.assert_error(504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(silent.connections(), 1);
    assert_still_serving(&gw, &ok).await;
}

#[tokio::test]
async fn each_request_on_a_pooled_connection_gets_its_own_routes_timeout() {
    // One keep-alive connection serves requests in turn: `/fast` ones are answered, a `/slow`
    // one never is (the connection is then held until the gateway gives up on it).
    let up = upstream::raw_tcp(|mut s, _| async move {
        while let Some(head) = read_head(&mut s).await {
            if head.contains("/slow") {
                let mut sink = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = TestGateway::start(
        &Config::new()
            .service(Service::new("up").target(up.url()))
            .route(
                Route::new("long")
                    .path("/long")
                    .service("up")
                    .yaml("timeout: 5s"),
            )
            .route(
                Route::new("medium")
                    .path("/medium")
                    .service("up")
                    .yaml("timeout: 800ms"),
            )
            .route(
                Route::new("short")
                    .path("/short")
                    .service("up")
                    .yaml("timeout: 300ms"),
            )
            .to_yaml(),
    );
    let timed = |path: &'static str| {
        let url = gw.url(path);
        async move {
            let started = Instant::now();
            let r = get(&url).await;
            (r, started.elapsed())
        }
    };
    // A request with a long timeout leaves the connection in the pool; the next one on it
    // must end at its own, shorter deadline.
    let (r, _) = timed("/long/fast").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (r, took) = timed("/short/slow").await;
    r.assert_error(504, "upstream_timeout");
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(3)).contains(&took),
        "took {took:?}"
    );
    // A short deadline that passes while its connection sits idle in the pool must not end
    // the next request on it early.
    let (r, _) = timed("/short/fast").await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (r, took) = timed("/medium/slow").await;
    r.assert_error(504, "upstream_timeout");
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(3)).contains(&took),
        "took {took:?}"
    );
    // Both slow requests were sent on a connection a fast one had used before.
    assert_eq!(up.connections(), 2);
}

/// Answers every connection with a head promising 1000 bytes, sends 10, and closes.
async fn truncating_upstream() -> RawUpstream {
    upstream::raw_tcp(|mut s, _| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                .await;
        }
        // Dropping the stream closes it.
    })
    .await
}

#[tokio::test]
async fn upstream_closing_mid_response_gives_the_client_an_incomplete_response_and_the_gateway_keeps_serving(
) {
    let up = truncating_upstream().await;
    let (ok, gw) = gateway(&up.url(), "", "").await;

    // Byte-level view: the head (with the promised length) and the 10 bytes, then the gateway
    // closes the client connection: fewer bytes than Content-Length is how HTTP/1.1 says
    // "incomplete".
    let text = support::raw(
        gw.addr,
        b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let r = Reply::parse(&text);
    assert_eq!(r.status, 200, "{text:?}");
    assert_eq!(r.header("content-length"), "1000", "{text:?}");
    assert_eq!(r.body, "0123456789", "{text:?}");

    // Client-library view: reading the body fails.
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(gw.url("/cut").parse().unwrap()),
    )
    .await
    .expect("head in time")
    .expect("head");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("body ended in time");
    assert!(body.is_err(), "a truncated body was reported as complete");

    assert_eq!(up.connections(), 2, "a broken connection was reused");
    assert_still_serving(&gw, &ok).await;
}

#[tokio::test]
async fn upstream_stalling_mid_body_beyond_the_idle_timeout_aborts_the_client_response() {
    // Sends one chunk, then keeps the body open without sending more (the sender is parked in
    // the channel below until the test ends).
    let (park_tx, park_rx) = tokio::sync::mpsc::unbounded_channel();
    let up = upstream::http1("stall")
        .route(
            "/",
            upstream::handler(move |_req| {
                let park_tx = park_tx.clone();
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
                    tx.send(Bytes::from_static(b"first")).await.expect("send");
                    let _ = park_tx.send(tx);
                    http::Response::new(ChannelBody(rx).boxed())
                }
            }),
        )
        .spawn()
        .await;
    let (ok, gw) = gateway(&up.url(), "timeouts: {idle: 300ms}", "").await;

    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(gw.url("/stall").parse().unwrap()),
    )
    .await
    .expect("head in time")
    .expect("head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("first chunk");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from_static(b"first")
    );
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the stalled body was not aborted within 5 s");
    let took = started.elapsed();
    assert!(
        matches!(end, Some(Err(_))),
        "the stalled body ended cleanly or produced data: {end:?}"
    );
    assert!(
        took >= Duration::from_millis(300),
        "aborted before the idle timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The parked senders kept the upstream body open until here.
    drop(park_rx);
    assert_still_serving(&gw, &ok).await;
}

/// A response body fed from a channel: frames arrive when the test sends them, and the body
/// stays open (pending) while the sender lives.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn malformed_upstream_response_gives_502_json() {
    let responses: &[&[u8]] = &[
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        // The head cut short, and no head at all: the upstream closes first.
        b"HTTP/1.1 200 OK\r\ncontent-",
        b"",
    ];
    for resp in responses {
        let bytes = resp.to_vec();
        let bad = upstream::raw_tcp(move |mut s, _| {
            let resp = bytes.clone();
            async move {
                if read_head(&mut s).await.is_some() {
                    let _ = s.write_all(&resp).await;
                    let _ = s.flush().await;
                }
            }
        })
        .await;
        let (ok, gw) = gateway(&bad.url(), "", "").await;
        let r = get(&gw.url("/bad")).await;
        let what = String::from_utf8_lossy(resp);
        assert_eq!(r.status, 502, "{what:?} -> {}", r.text());
        r.assert_error(502, "upstream_error");
        assert_still_serving(&gw, &ok).await;
    }
}

#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_while_idle_is_not_an_error_for_the_next_request()
{
    // The gateway must see the upstream's FIN before the next request: not while the kernel is
    // under TCP memory pressure (the gateway then reuses the dead connection and answers 502).
    let _quiet = support::prompt_tcp().await;
    // A keep-alive upstream: it answers any number of requests per connection (`conn-N` names
    // the connection) until told to close its idle connection, then reports the close.
    let close_idle = std::sync::Arc::new(tokio::sync::Notify::new());
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let cmd = std::sync::Arc::clone(&close_idle);
    let up = upstream::raw_tcp(move |mut s, n| {
        let (cmd, closed_tx) = (std::sync::Arc::clone(&cmd), closed_tx.clone());
        async move {
            loop {
                tokio::select! {
                    head = read_head(&mut s) => {
                        if head.is_none() {
                            return;
                        }
                        let body = format!("conn-{n}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    _ = cmd.notified() => break,
                }
            }
            drop(s);
            let _ = closed_tx.send(n);
        }
    })
    .await;
    let (_ok, gw) = gateway(&up.url(), "", "").await;
    let http = client();
    let fetch = |i: usize| {
        let req = http.get(gw.url(&format!("/pooled/{i}")).parse().unwrap());
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(5), req)
                .await
                .expect("answer in time")
                .expect("answer");
            let r = Reply::read(resp).await;
            assert_eq!(r.status, 200, "request {i}: {:?}", r.text());
            r.text()
        }
    };

    // The gateway pools: two requests, one upstream connection.
    assert_eq!(fetch(0).await, "conn-0");
    assert_eq!(fetch(1).await, "conn-0");
    assert_eq!(up.connections(), 1);

    for round in 0..10 {
        // The upstream closes the connection sitting idle in the gateway's pool...
        close_idle.notify_one();
        let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
            .await
            .expect("the upstream closed its idle connection")
            .expect("close report");
        assert_eq!(closed, round);
        // ...and the next request is served on a new one, without an error.
        assert_eq!(fetch(round + 2).await, format!("conn-{}", round + 1));
    }
    assert_eq!(up.connections(), 11);
}
