//! Tracing over real sockets: W3C `traceparent`/`tracestate` propagated upstream (continued,
//! started, or replaced when invalid), one span id per aggregate call and per retry, and spans
//! exported to a real OTLP/HTTP receiver run by the test (decoded protobuf): server and client
//! spans with their parent links and attributes, the sampling ratio, a collector that is down,
//! and the flush on graceful shutdown.

use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::otlp::{Collector, Received};
use crate::support::{self, get, send, upstream, TestGateway};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WAIT: Duration = Duration::from_secs(10);

/// `(trace id, parent id, flags)` of a valid version-00 `traceparent`; panics otherwise.
fn parse(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    assert!(hex(parts[1], 32) && hex(parts[2], 16), "{tp}");
    assert!(parts[3] == "00" || parts[3] == "01", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// `extra` (top-level sections), then one service `a` at `url` and its route, last (a test
/// appends routes to it).
fn one_route(url: &str, extra: &str) -> String {
    let routes = Config::new()
        .service(Service::new("a").target(url))
        .route(Route::new("all").service("a"));
    format!("{extra}{}", routes.to_yaml())
}

/// What the echo upstream received as `traceparent` (and `tracestate`).
fn upstream_trace(r: &support::Reply) -> (String, Option<String>) {
    let echo = r.json();
    let headers = &echo["headers"];
    assert_eq!(
        headers["traceparent"].as_array().map(Vec::len),
        Some(1),
        "{echo}"
    );
    (
        headers["traceparent"][0].as_str().unwrap().to_string(),
        headers["tracestate"][0].as_str().map(String::from),
    )
}

#[tokio::test]
async fn an_incoming_trace_is_continued_upstream_under_a_new_span() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(&up.url(), ""));
    let r = send(
        "GET",
        &gw.url("/x"),
        &[
            ("traceparent", SAMPLED),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (tp, state) = upstream_trace(&r);
    let (trace, parent, flags) = parse(&tp);
    assert_eq!(trace, TRACE);
    assert_ne!(parent, PARENT, "the parent upstream is the gateway's span");
    assert_eq!(flags, "01", "the caller's sampled flag is kept");
    assert_eq!(
        state.as_deref(),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );

    // An unsampled caller stays unsampled.
    let r = send(
        "GET",
        &gw.url("/x"),
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )],
        "",
    )
    .await;
    assert_eq!(parse(&upstream_trace(&r).0).2, "00");
}

#[tokio::test]
async fn without_a_traceparent_a_new_trace_starts_per_request() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(&up.url(), ""));
    let (a, state) = upstream_trace(&get(&gw.url("/x")).await);
    let (b, _) = upstream_trace(&get(&gw.url("/x")).await);
    let (ta, _, flags) = parse(&a);
    let (tb, _, _) = parse(&b);
    assert_ne!(ta, tb);
    assert_eq!(
        flags, "00",
        "nothing exports, so a new trace is not sampled"
    );
    assert_eq!(state, None);
}

#[tokio::test]
async fn an_invalid_traceparent_is_replaced_and_its_tracestate_dropped() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(&up.url(), ""));
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "hello",
    ] {
        let r = send(
            "GET",
            &gw.url("/x"),
            &[("traceparent", bad), ("tracestate", "k=v")],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{bad}: {}", r.text());
        let (tp, state) = upstream_trace(&r);
        let (trace, _, _) = parse(&tp);
        assert_ne!(trace, TRACE, "{bad}");
        assert_eq!(state, None, "{bad}");
    }
}

#[tokio::test]
async fn aggregate_calls_carry_distinct_spans_of_the_same_trace() {
    let a = upstream::http1("a").spawn().await;
    let b = upstream::http1("b").spawn().await;
    let gw = TestGateway::start(&format!(
        r#"services:
  a: {{targets: [{{url: "{}"}}]}}
  b: {{targets: [{{url: "{}"}}]}}
routes:
  - name: both
    service: a
    policies:
      - aggregate:
          calls:
            - {{name: one, service: a, path: /one}}
            - {{name: two, service: b, path: /two}}
            - {{name: three, service: b, path: /three}}
"#,
        a.url(),
        b.url()
    ));
    let r = send("GET", &gw.url("/x"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let merged = r.json();
    let mut parents = Vec::new();
    for call in ["one", "two", "three"] {
        let tp = merged[call]["headers"]["traceparent"][0].as_str().unwrap();
        let (trace, parent, flags) = parse(tp);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{call}");
        assert_ne!(parent, PARENT);
        parents.push(parent);
    }
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 3, "each call has its own span id");
}

fn exporting(collector: &Collector, extra: &str) -> String {
    format!(
        "tracing:\n  service_name: edge\n  otlp: {{endpoint: \"{}\", export_interval: 50ms, timeout: 2s}}\n{extra}",
        collector.endpoint()
    )
}

/// The `SERVER` span and the `CLIENT` spans among `spans`.
fn split(spans: Vec<Received>) -> (Received, Vec<Received>) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let (server, clients): (Vec<_>, Vec<_>) = spans
        .into_iter()
        .partition(|s| s.span.kind == SpanKind::Server as i32);
    assert_eq!(server.len(), 1, "{server:#?}");
    assert!(clients
        .iter()
        .all(|s| s.span.kind == SpanKind::Client as i32));
    (server.into_iter().next().unwrap(), clients)
}

#[tokio::test]
async fn server_and_client_spans_are_exported_with_their_links_and_attributes() {
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let mut collector = Collector::start().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(&up.url(), &exporting(&collector, "")));
    let r = send(
        "GET",
        &gw.url("/things/7?q=1"),
        &[("traceparent", SAMPLED), ("host", "api.example.com")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, upstream_parent, _) = parse(&upstream_trace(&r).0);

    let (server, clients) = split(collector.spans(2, WAIT).await);
    assert_eq!(server.service, "edge");
    assert_eq!(server.trace_id(), TRACE);
    assert_eq!(
        server.parent_id(),
        PARENT,
        "the caller's span is the parent"
    );
    assert_eq!(server.span.name, "GET all");
    let attrs = server.attrs();
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/things/7"),
        ("http.route", "all"),
        ("portico.route", "all"),
        ("portico.service", "a"),
        ("http.response.status_code", "200"),
        ("server.address", "api.example.com"),
        ("client.address", "127.0.0.1"),
    ] {
        assert_eq!(attrs.get(k).map(String::as_str), Some(v), "{k}: {attrs:?}");
    }
    assert!(server.span.end_time_unix_nano >= server.span.start_time_unix_nano);

    let client = &clients[0];
    assert_eq!(client.trace_id(), TRACE);
    assert_eq!(client.parent_id(), server.span_id());
    assert_eq!(
        client.span_id(),
        upstream_parent,
        "the upstream saw the client span as its parent"
    );
    let attrs = client.attrs();
    assert_eq!(attrs["http.response.status_code"], "200");
    assert_eq!(attrs["server.address"], "127.0.0.1");
    assert_eq!(attrs["server.port"], up.addr.port().to_string());
    assert_eq!(attrs["portico.attempt"], "1");
    assert_eq!(attrs["url.full"], format!("{}/things/7?q=1", up.url()));
    assert_ne!(
        client.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // The gateway's own answer: error code on the server span, no client span.
    let r = send("GET", &gw.url("/x"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(r.status, 200);
    collector.spans(2, WAIT).await;
    gw.reload(&format!(
        "{}services:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: a, match: {{path: /only}}}}\n",
        exporting(&collector, ""),
        up.url()
    ))
    .unwrap();
    let r = send("GET", &gw.url("/x"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(r.status, 404);
    let (server, clients) = split(collector.spans(1, WAIT).await);
    assert!(clients.is_empty());
    assert_eq!(server.attrs()["error.type"], "no_route");
    assert_eq!(server.attrs()["http.response.status_code"], "404");
}

#[tokio::test]
async fn retries_and_aggregate_calls_are_client_spans_of_their_own() {
    let mut collector = Collector::start().await;
    let down = upstream::http1("down")
        .route("/", upstream::reply(503, "busy"))
        .spawn()
        .await;
    let down2 = upstream::http1("down2")
        .route("/", upstream::reply(503, "busy"))
        .spawn()
        .await;
    let a = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        r#"{}services:
  flaky: {{targets: [{{url: "{}"}}, {{url: "{}"}}]}}
  a: {{targets: [{{url: "{}"}}]}}
routes:
  - name: retried
    match: {{path: /retried}}
    service: flaky
    retry: {{attempts: 2, backoff_base: 1ms, backoff_max: 2ms}}
  - name: fan
    match: {{path: /fan}}
    service: a
    policies:
      - aggregate:
          calls:
            - {{name: one, service: a, path: /one}}
            - {{name: two, service: a, path: /two}}
"#,
        exporting(&collector, ""),
        down.url(),
        down2.url(),
        a.url()
    ));
    let r = get(&gw.url("/retried")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let (server, clients) = split(collector.spans(3, WAIT).await);
    assert!(
        server.parent_id().is_empty(),
        "a new trace: the server span is its root"
    );
    assert_eq!(
        server.span.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );
    let mut attempts: Vec<String> = clients
        .iter()
        .map(|c| c.attrs()["portico.attempt"].clone())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"]);
    for c in &clients {
        assert_eq!(c.trace_id(), server.trace_id());
        assert_eq!(c.parent_id(), server.span_id());
        assert_eq!(c.attrs()["http.response.status_code"], "503");
    }
    assert_ne!(clients[0].span_id(), clients[1].span_id());

    let r = get(&gw.url("/fan")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (server, clients) = split(collector.spans(3, WAIT).await);
    assert_eq!(server.attrs()["portico.route"], "fan");
    let mut calls: Vec<String> = clients
        .iter()
        .map(|c| c.attrs()["portico.call"].clone())
        .collect();
    calls.sort();
    assert_eq!(calls, ["one", "two"]);
    let merged = r.json();
    for c in &clients {
        assert_eq!(c.parent_id(), server.span_id());
        let name = &c.attrs()["portico.call"];
        let tp = merged[name.as_str()]["headers"]["traceparent"][0]
            .as_str()
            .unwrap();
        assert_eq!(parse(tp).1, c.span_id(), "{name}");
    }
}

#[tokio::test]
async fn a_zero_ratio_exports_no_new_trace_but_follows_sampled_callers() {
    let mut collector = Collector::start().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(
        &up.url(),
        &exporting(&collector, "  sampling_ratio: 0.0\n"),
    ));
    for _ in 0..20 {
        let r = get(&gw.url("/new")).await;
        assert_eq!(r.status, 200);
        assert_eq!(parse(&upstream_trace(&r).0).2, "00");
    }
    // A sampled caller is exported (parent-based). Spans leave in the order they ended, so when
    // its spans arrive, any of the 20 before would have arrived first.
    let r = send("GET", &gw.url("/sampled"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(parse(&upstream_trace(&r).0).2, "01");
    let spans = collector.spans(2, WAIT).await;
    assert!(spans.iter().all(|s| s.trace_id() == TRACE), "{spans:#?}");
}

#[tokio::test]
async fn with_the_collector_down_requests_still_succeed_and_losses_are_counted() {
    let (port, _guard) = support::refusing_port();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(
        &up.url(),
        &format!(
            "tracing:\n  otlp: {{endpoint: \"http://127.0.0.1:{port}/v1/traces\", export_interval: 20ms, timeout: 1s, max_queue_size: 8, max_export_batch_size: 4}}\n"
        ),
    ));
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The losses are on /metrics too (the exporter's counts at scrape time).
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portico_trace_spans_total{result=\"exported\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("portico_trace_spans_total{result=\"dropped\"}"));
    let tracer = gw.runtime().active().tracer.clone().expect("export is on");
    // Shutdown drains the connections (every response body, so every server span, has ended)
    // and then flushes.
    let stats = tokio::task::spawn_blocking(move || {
        gw.shutdown();
        tracer.stats()
    })
    .await
    .unwrap();
    assert_eq!(stats.exported, 0);
    assert_eq!(stats.failed + stats.dropped, 60, "{stats:?}");
    assert!(stats.failed > 0, "{stats:?}");
}

#[tokio::test]
async fn queued_spans_are_flushed_on_graceful_shutdown() {
    let mut collector = Collector::start().await;
    let up = upstream::http1("a").spawn().await;
    // An export interval far longer than the test: only the shutdown flush sends the spans.
    let gw = TestGateway::start(&one_route(
        &up.url(),
        &format!(
            "tracing:\n  otlp: {{endpoint: \"{}\", export_interval: 1h}}\n",
            collector.endpoint()
        ),
    ));
    let r = send("GET", &gw.url("/x"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(r.status, 200);
    tokio::task::spawn_blocking(move || gw.shutdown())
        .await
        .unwrap();
    let (server, _) = split(collector.spans(2, WAIT).await);
    assert_eq!(server.service, "portico");
    assert_eq!(server.trace_id(), TRACE);
}

#[tokio::test]
async fn bad_tracing_settings_are_reported_by_key_path() {
    let err = TestGateway::try_start(
        "tracing:\n  sampling_ratio: 2\n  otlp: {endpoint: \"https://collector:4318/v1/traces\", protocol: grpc}\nservices: {}\nroutes: []\n",
    )
    .err()
    .expect("refused");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (line, key) in lines.iter().zip([
        "tracing.sampling_ratio:",
        "tracing.otlp.endpoint:",
        "tracing.otlp.protocol:",
    ]) {
        // `FILE:LINE:COL: key.path: message`
        let (place, rest) = line.split_once(": ").unwrap();
        assert!(rest.starts_with(key), "{line}");
        let mut at = place.rsplit(':');
        let (col, row) = (at.next().unwrap(), at.next().unwrap());
        assert!(
            col.parse::<u32>().is_ok() && row.parse::<u32>().is_ok(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_reload_that_changes_tracing_moves_export_to_the_new_collector() {
    let mut first = Collector::start().await;
    let mut second = Collector::start().await;
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_route(&up.url(), &exporting(&first, "")));
    let r = send("GET", &gw.url("/x"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(r.status, 200);
    first.spans(2, WAIT).await;
    // Another route, unchanged `tracing:`: the same exporter carries on.
    let before = gw.runtime().active().tracer.clone().unwrap();
    let outcome = gw
        .reload(&format!(
            "{}  - {{name: more, service: a, match: {{path: /more}}}}\n",
            one_route(&up.url(), &exporting(&first, ""))
        ))
        .unwrap();
    assert!(matches!(
        outcome,
        portico::runtime::ReloadOutcome::Applied { .. }
    ));
    let kept = gw.runtime().active().tracer.clone().unwrap();
    assert!(std::sync::Arc::ptr_eq(&before, &kept));
    drop((before, kept));

    gw.reload(&one_route(&up.url(), &exporting(&second, "")))
        .unwrap();
    let r = send("GET", &gw.url("/x"), &[("traceparent", SAMPLED)], "").await;
    assert_eq!(r.status, 200);
    let spans = second.spans(2, WAIT).await;
    assert!(spans.iter().all(|s| s.trace_id() == TRACE));
    assert!(first.next(Duration::from_millis(200)).await.is_none());

    // Export switched off: propagation goes on, unsampled for new traces.
    gw.reload(&one_route(&up.url(), "")).unwrap();
    assert!(gw.runtime().active().tracer.is_none());
    let (tp, _) = upstream_trace(&get(&gw.url("/x")).await);
    assert_eq!(parse(&tp).2, "00");
}
