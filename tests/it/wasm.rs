//! The `wasm` policy over real sockets: proxy-wasm filters (written in the WebAssembly text
//! format under `tests/plugins/wat/`, compiled here with the `wat` crate) on real requests to
//! real upstreams.

use crate::support::config::{Config, Route, Service};
#[allow(unused_imports)]
use crate::support::{get, seen, send, upstream, TestGateway};

/// Compiles `tests/plugins/wat/NAME.wat` (or the text given) to a `.wasm` file and returns its
/// path.
fn module_from(name: &str, text: &str) -> String {
    let bytes = wat::parse_str(text).unwrap_or_else(|e| panic!("{name}.wat: {e}"));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    // Tests running at once compile the same filter: each writes its own file and renames it
    // into place, so no gateway reads a file another test is still writing.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!("{name}.{}.{n}.partial", std::process::id()));
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path.to_string_lossy().into_owned()
}

/// A file under `tests/plugins/`.
fn plugin_file(path: &str) -> String {
    format!("{}/tests/plugins/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn module(name: &str) -> String {
    let file = plugin_file(&format!("wat/{name}.wat"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    module_from(name, &text)
}

/// One route `r` on service `a` (the upstream) with a `wasm` policy with `settings` added to
/// the module's path.
fn config(up: &str, module: &str, settings: &str) -> String {
    let policy = format!("{{module: {module:?}{settings}}}");
    Config::new()
        .service(Service::new("a").target(up))
        .route(Route::new("r").service("a").policy("wasm", policy))
        .to_yaml()
}

/// An upstream answering `/secret` with a header the filter removes, and echoing the rest.
async fn upstream_with_secret() -> upstream::Upstream {
    upstream::http1("a")
        .route(
            "/secret",
            upstream::handler(|_req| async {
                http::Response::builder()
                    .header("x-upstream-secret", "s3cret")
                    .header("x-kept", "1")
                    .body(upstream::full("hidden"))
                    .unwrap()
            }),
        )
        .spawn()
        .await
}

#[tokio::test]
async fn a_filter_reads_adds_replaces_and_removes_request_and_response_headers() {
    let up = upstream_with_secret().await;
    let gw = TestGateway::start(&config(&up.url(), &module("headers"), ""));
    let r = send(
        "GET",
        &gw.url("/echo?q=1"),
        &[
            ("x-in", "hello"),
            ("x-remove-me", "bye"),
            ("x-filter", "client"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-seen"), ["hello"], "{echo}");
    assert_eq!(seen(&echo, "x-filter"), ["headers"], "{echo}");
    assert!(seen(&echo, "x-remove-me").is_empty(), "{echo}");
    assert_eq!(seen(&echo, "x-path"), ["/echo?q=1"], "{echo}");
    assert_eq!(r.header("x-response-filter"), "1");
    assert_eq!(r.header("x-status-seen"), "200");
    let r = get(&gw.url("/secret")).await;
    assert_eq!(r.text(), "hidden");
    assert_eq!(r.header("x-upstream-secret"), "");
    assert_eq!(r.header("x-kept"), "1");
}

#[tokio::test]
async fn a_filter_replaces_a_whole_header_map_and_the_status() {
    let up = upstream_with_secret().await;
    let gw = TestGateway::start(&config(&up.url(), &module("set_pairs"), ""));
    let r = get(&gw.url("/secret")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-only"), "yes");
    assert_eq!(r.header("x-kept"), "");
    assert_eq!(r.text(), "hidden");
}

#[tokio::test]
async fn local_replies_carry_the_filters_body_or_the_json_error_shape() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("local_reply"), ""));
    let r = get(&gw.url("/teapot")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("content-type"), "text/plain");
    assert!(!r.header("x-request-id").is_empty());
    let body = get(&gw.url("/orders"))
        .await
        .assert_error(403, "refused_by_plugin");
    assert_eq!(body["message"], "no tenant");
    assert_eq!(up.hits(), 0);
    let r = send("GET", &gw.url("/orders"), &[("x-demo-tenant", "acme")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r.json(), "x-tenant-checked"), ["yes"]);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn properties_and_configuration_reach_the_filter() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &module("config_props"),
        ", configuration: {mode: strict}",
    ));
    let r = send(
        "POST",
        &gw.url("/p/q?x=1"),
        &[("x-request-id", "req-42")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    let one = |name: &str| seen(&echo, name).join(",");
    assert_eq!(one("x-config"), r#"{"mode":"strict"}"#);
    assert_eq!(one("x-prop-path"), "/p/q?x=1");
    assert_eq!(one("x-prop-path-nul"), "/p/q?x=1");
    assert_eq!(one("x-prop-method"), "POST");
    assert!(one("x-prop-source").starts_with("127.0.0.1:"), "{echo}");
    assert_eq!(one("x-prop-route"), "r");
    assert_eq!(one("x-prop-request-id"), "req-42");
    assert_eq!(one("x-prop-consumer"), "none");
    assert_eq!(one("x-set-property-status"), "0");
    assert_eq!(r.header("x-prop-status"), "200");
    assert_eq!(r.header("x-prop-upstream"), up.addr.to_string());
}

#[tokio::test]
async fn two_hundred_concurrent_requests_count_exactly_through_shared_data() {
    let up = upstream::http1("a").spawn().await;
    // Two workers: two instances of the filter share the counter.
    let yaml = format!(
        "workers: 2\n{}",
        config(&up.url(), &module("shared"), ", name: shared-count")
    );
    let gw = TestGateway::start(&yaml);
    let url = gw.url("/count");
    let requests = (0..200).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { get(&url).await })
    });
    let mut counts = Vec::new();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        counts.push(seen(&r.json(), "x-count")[0].parse::<u32>().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=200).collect::<Vec<_>>(),
        "every increment seen once"
    );
    let r = get(&gw.url("/read")).await;
    assert_eq!(r.text(), "200");
}

#[tokio::test]
async fn queued_items_reach_the_instance_that_registered_the_queue() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("queue"), ", name: queue-test"));
    assert_eq!(get(&gw.url("/some/path")).await.status, 200);
    // Delivery is a task of its own: poll until it has run (bounded).
    let mut last = String::new();
    for _ in 0..200 {
        last = get(&gw.url("/last")).await.text();
        if last == "/some/path" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(last, "/some/path");
}

/// Two routes on service `a`: `/slow` with the filter, `/plain` without.
fn two_routes(up: &str, module: &str, settings: &str) -> String {
    let policy = format!("{{module: {module:?}{settings}}}");
    Config::new()
        .service(Service::new("a").target(up))
        .route(
            Route::new("slow")
                .path("/slow")
                .service("a")
                .policy("wasm", policy),
        )
        .route(Route::new("plain").path("/plain").service("a"))
        .to_yaml()
}

#[tokio::test]
async fn a_filter_that_loops_forever_is_stopped_at_its_deadline_and_the_worker_serves_on() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&two_routes(&up.url(), &module("loop"), ", max_cpu: 20ms"));
    for _ in 0..2 {
        let body = get(&gw.url("/slow/x"))
            .await
            .assert_error(500, "plugin_failed");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("deadline"), "{body}");
    }
    // One worker: it was not stalled by the loops.
    assert_eq!(get(&gw.url("/plain/x")).await.status, 200);
    assert_eq!(up.hits(), 1);
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portico_plugin_failures_total{plugin=\"loop\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn fail_open_lets_the_request_go_on_without_a_failing_filter() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&two_routes(
        &up.url(),
        &module("loop"),
        ", max_cpu: 10ms, on_error: fail_open, name: loop-open",
    ));
    let r = get(&gw.url("/slow/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_trapping_instance_is_replaced_and_the_next_request_gets_a_fresh_one() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("trap"), ""));
    let served = |r: &crate::support::Reply| seen(&r.json(), "x-served").join(",");
    assert_eq!(served(&get(&gw.url("/a")).await), "1");
    assert_eq!(served(&get(&gw.url("/a")).await), "2");
    let body = send("GET", &gw.url("/a"), &[("x-trap", "1")], "")
        .await
        .assert_error(500, "plugin_failed");
    assert!(
        body["message"].as_str().unwrap().contains("trapped"),
        "{body}"
    );
    assert_eq!(served(&get(&gw.url("/a")).await), "1", "a new instance");
    assert_eq!(served(&get(&gw.url("/a")).await), "2");
}

#[tokio::test]
async fn memory_beyond_the_cap_is_refused_and_the_filter_fails_without_harm() {
    let up = upstream::http1("a").spawn().await;
    // 1 MiB = 16 pages; the filter starts with 1.
    let gw = TestGateway::start(&config(&up.url(), &module("alloc"), ", max_memory: 1MiB"));
    let r = send("GET", &gw.url("/a"), &[("x-grow-pages", "4")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-grew"), ["yes"]);
    send("GET", &gw.url("/a"), &[("x-grow-pages", "64")], "")
        .await
        .assert_error(500, "plugin_failed");
    let r = send("GET", &gw.url("/a"), &[("x-grow-pages", "15")], "").await;
    assert_eq!(r.status, 200, "a fresh instance grows again: {}", r.text());
}

/// An upstream echoing the request body as its body.
async fn body_echo() -> upstream::Upstream {
    upstream::http1("a")
        .route(
            "/raw",
            upstream::handler(|req| async move {
                use http_body_util::BodyExt as _;
                let length = req
                    .headers()
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                http::Response::builder()
                    .header("x-request-length", length)
                    .body(upstream::full(body))
                    .unwrap()
            }),
        )
        .route(
            "/big",
            upstream::handler(|_req| async {
                http::Response::new(upstream::full(vec![b'x'; 4096]))
            }),
        )
        .spawn()
        .await
}

#[tokio::test]
async fn a_filter_rewrites_request_and_response_bodies_it_buffers() {
    let up = body_echo().await;
    let gw = TestGateway::start(&config(&up.url(), &module("body"), ""));
    let r = send(
        "POST",
        &gw.url("/raw"),
        &[("content-type", "text/plain")],
        "abc",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-request-length"),
        "5",
        "framed from the rewritten body"
    );
    assert_eq!(r.text(), "[abc]\n-- filtered");
    assert_eq!(r.header("content-length"), "17");
}

#[tokio::test]
async fn bodies_beyond_the_filters_buffer_cap_get_413_and_502() {
    let up = body_echo().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &module("body"),
        ", max_body_bytes: 1KiB",
    ));
    send("POST", &gw.url("/raw"), &[], vec![b'y'; 2048])
        .await
        .assert_error(413, "payload_too_large");
    get(&gw.url("/big"))
        .await
        .assert_error(502, "response_too_large");
}

/// A gateway whose route `r` calls service `auth` from its filter.
async fn with_auth(
    answer: u16,
    listed: bool,
) -> (TestGateway, upstream::Upstream, upstream::Upstream) {
    let up = upstream::http1("a").spawn().await;
    let auth = upstream::http1("auth")
        .route(
            "/check",
            upstream::handler(move |_req| async move {
                let mut r = http::Response::new(upstream::full("ok-body"));
                *r.status_mut() = http::StatusCode::from_u16(answer).unwrap();
                r
            }),
        )
        .spawn()
        .await;
    let calls = if listed { ", http_calls: [auth]" } else { "" };
    let policy = format!("{{module: {:?}{calls}}}", module("http_call"));
    let yaml = Config::new()
        .service(Service::new("a").target(up.url()))
        .service(Service::new("auth").target(auth.url()))
        .route(Route::new("r").service("a").policy("wasm", policy))
        .to_yaml();
    (TestGateway::start(&yaml), up, auth)
}

#[tokio::test]
async fn a_filter_pauses_on_an_http_call_and_resumes_with_its_answer() {
    let (gw, up, auth) = with_auth(200, true).await;
    let r = get(&gw.url("/orders")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-auth-status"), ["200"], "{echo}");
    assert_eq!(seen(&echo, "x-auth-body"), ["ok-body"], "{echo}");
    assert_eq!((auth.hits(), up.hits()), (1, 1));
}

#[tokio::test]
async fn a_filter_refuses_on_the_answer_of_its_http_call() {
    let (gw, up, auth) = with_auth(403, true).await;
    let r = get(&gw.url("/orders")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.text(), "denied by auth");
    assert_eq!((auth.hits(), up.hits()), (1, 0));
}

#[tokio::test]
async fn a_filter_cannot_call_a_service_it_is_not_given() {
    let (gw, up, auth) = with_auth(200, false).await;
    let r = get(&gw.url("/orders")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-call-status"), ["2"], "BAD_ARGUMENT");
    assert_eq!((auth.hits(), up.hits()), (0, 1));
}

#[tokio::test]
async fn every_request_context_is_created_logged_done_and_deleted_once() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &module("lifecycle"),
        ", name: lifecycle",
    ));
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/a")).await.status, 200);
    }
    let r = get(&gw.url("/stats")).await;
    assert_eq!(r.text(), "created=6 logs=5 done=5 deleted=5");
}

#[tokio::test]
async fn a_filters_counter_gauge_and_histogram_are_exported_on_metrics() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("metrics"), ""));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/a")).await.status, 200);
    }
    let m = get(&gw.admin_url("/metrics")).await.text();
    for line in [
        "portico_plugin_requests_total{plugin=\"metrics\"} 3",
        "portico_plugin_last_status{plugin=\"metrics\"} 200",
        "portico_plugin_header_count_count{plugin=\"metrics\"} 3",
        "# TYPE portico_plugin_header_count histogram",
    ] {
        assert!(m.contains(line), "{line} not in:\n{m}");
    }
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
}

#[tokio::test]
async fn a_timer_set_at_configure_calls_on_tick_repeatedly() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("tick"), ""));
    // The instance exists after its first request; ticks every 10 ms from then on.
    let mut ticks = 0;
    for _ in 0..200 {
        let r = get(&gw.url("/a")).await;
        ticks = seen(&r.json(), "x-ticks")[0].parse::<u32>().unwrap();
        if ticks >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ticks >= 2, "ticks: {ticks}");
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_filters_state_and_restarts_a_changed_one() {
    let up = upstream::http1("a").spawn().await;
    let trap = module("trap");
    let gw = TestGateway::start(&config(&up.url(), &trap, ""));
    let served = |r: &crate::support::Reply| seen(&r.json(), "x-served").join(",");
    assert_eq!(served(&get(&gw.url("/a")).await), "1");
    assert_eq!(served(&get(&gw.url("/a")).await), "2");
    // The same filter under a config that changes something else.
    let same = config(&up.url(), &trap, "").replace("name: r", "name: r2");
    assert!(same.contains("name: r2"), "{same}");
    gw.reload(&same).expect("reload");
    assert_eq!(served(&get(&gw.url("/a")).await), "3", "state kept");
    // A changed setting: a new filter, new instances.
    gw.reload(&config(&up.url(), &trap, ", max_cpu: 50ms"))
        .expect("reload");
    assert_eq!(served(&get(&gw.url("/a")).await), "1", "fresh instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_swaps_the_filter_without_a_failed_request() {
    let up = upstream::http1("a").spawn().await;
    let first = config(&up.url(), &module("headers"), "");
    let second = config(&up.url(), &module("local_reply"), "");
    let gw = std::sync::Arc::new(TestGateway::start(&first));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut before, mut after) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = send("GET", &gw.url("/a"), &[("x-demo-tenant", "t")], "").await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    let echo = r.json();
                    match (
                        seen(&echo, "x-filter").len(),
                        seen(&echo, "x-tenant-checked").len(),
                    ) {
                        (1, 0) => before += 1,
                        (0, 1) => after += 1,
                        other => panic!("neither filter or both: {other:?} {echo}"),
                    }
                }
                (before, after)
            })
        })
        .collect();
    while up.hits() < 50 {
        tokio::task::yield_now().await;
    }
    let g = gw.clone();
    tokio::task::spawn_blocking(move || g.reload(&second).expect("reload"))
        .await
        .unwrap();
    let at_reload = up.hits();
    while up.hits() < at_reload + 50 {
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut before, mut after) = (0, 0);
    for l in load {
        let (b, a) = l.await.unwrap();
        before += b;
        after += a;
    }
    assert!(before > 0 && after > 0, "before {before}, after {after}");
}

#[tokio::test]
async fn a_filter_cannot_change_how_a_message_is_framed() {
    let up = body_echo().await;
    let gw = TestGateway::start(&config(&up.url(), &module("framing"), ""));
    let r = send("POST", &gw.url("/raw"), &[], "hello world").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-length"), "11");
    assert_eq!(r.text(), "hello world", "the whole body, both ways");
    assert_eq!(r.header("transfer-encoding"), "");
    assert_eq!(up.hits(), 1, "no second request smuggled in the body");
}

/// The filter built with a real SDK (AssemblyScript, `tests/plugins/assemblyscript/`).
fn tenant_gate() -> String {
    plugin_file("assemblyscript/tenant-gate.wasm")
}

#[tokio::test]
async fn a_filter_built_with_the_assemblyscript_sdk_refuses_and_adds_headers() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &tenant_gate(),
        ", configuration: '{\"header\": \"x-tenant-id\"}'",
    ));
    let body = get(&gw.url("/orders"))
        .await
        .assert_error(403, "refused_by_plugin");
    assert_eq!(body["message"], "missing tenant header x-tenant-id");
    assert_eq!(up.hits(), 0);
    let r = send("GET", &gw.url("/orders"), &[("x-tenant-id", "acme")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-tenant"), ["acme"]);
    assert_eq!(r.header("x-plugin"), "tenant-gate");
    // An empty header is refused too (and costs the filter no memory: no allocation).
    send("GET", &gw.url("/orders"), &[("x-tenant-id", "")], "")
        .await
        .assert_error(403, "refused_by_plugin");
}

/// The filter built with the Rust SDK (the `proxy-wasm` crate, `tests/plugins/rust-sdk/`).
fn rust_gate() -> String {
    plugin_file("rust-sdk/rust-gate.wasm")
}

#[tokio::test]
async fn a_filter_built_with_the_rust_sdk_runs_unchanged() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &rust_gate(),
        ", name: rust-gate, configuration: x-tenant-id",
    ));
    // Refused with the filter's own reply (its body and header, not the JSON error).
    let r = get(&gw.url("/orders")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text(), "no tenant\n");
    assert_eq!(r.header("x-refused-by"), "rust-sdk");
    assert_eq!(up.hits(), 0);
    let r = send(
        "GET",
        &gw.url("/orders?page=2"),
        &[("x-tenant-id", "acme")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-rust-tenant"), ["acme"], "{echo}");
    assert_eq!(seen(&echo, "x-rust-path"), ["/orders?page=2"], "{echo}");
    assert_eq!(r.header("x-rust-filter"), "seen");
    assert_eq!(r.header("x-rust-status"), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filters_log_lines_reach_the_log_with_its_name_and_level() {
    use crate::support::GatewayProcess;
    let up = upstream::http1("a").spawn().await;
    let yaml = config(&up.url(), &module("metrics"), ", name: counting-filter");
    let mut gw = tokio::task::spawn_blocking(move || GatewayProcess::spawn(&yaml, &[]))
        .await
        .unwrap();
    assert_eq!(get(&gw.url("/a")).await.status, 200);
    let line = tokio::task::spawn_blocking(move || {
        gw.wait_for_line(
            "metrics filter saw a request",
            std::time::Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("counting-filter"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_failing_in_a_loop_is_logged_once_per_interval() {
    use crate::support::GatewayProcess;
    let up = upstream::http1("a").spawn().await;
    let trap = format!("{{module: {:?}, name: trapper}}", module("trap"));
    let marker = format!("{{module: {:?}}}", module("metrics"));
    let yaml = Config::new()
        .service(Service::new("a").target(up.url()))
        .route(Route::new("t").path("/t").service("a").policy("wasm", trap))
        .route(
            Route::new("m")
                .path("/m")
                .service("a")
                .policy("wasm", marker),
        )
        .to_yaml();
    let mut gw = tokio::task::spawn_blocking(move || GatewayProcess::spawn(&yaml, &[]))
        .await
        .unwrap();
    for _ in 0..3 {
        send("GET", &gw.url("/t"), &[("x-trap", "1")], "")
            .await
            .assert_error(500, "plugin_failed");
    }
    // A line logged after the three failures: every line before it has been printed.
    assert_eq!(get(&gw.url("/m")).await.status, 200);
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        loop {
            let line = gw.wait_for_line("", std::time::Duration::from_secs(10));
            if line.contains("metrics filter saw a request") {
                return failures;
            }
            if line.contains("wasm filter failed") {
                failures.push(line);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(failures[0].contains("trapper"), "{failures:#?}");
}

#[tokio::test]
async fn a_request_paused_by_a_filter_is_resumed_from_its_timer() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("tick_resume"), ""));
    for _ in 0..3 {
        let r = get(&gw.url("/a")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(seen(&r.json(), "x-resumed-by"), ["tick"]);
    }
}

#[tokio::test]
async fn a_request_map_set_back_with_its_pseudo_headers_keeps_every_header() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), &module("round_trip"), ""));
    let r = send("GET", &gw.url("/p?q=1"), &[("x-kept", "yes")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-kept"), ["yes"], "{echo}");
    assert_eq!(echo["uri"], "/p?q=1", "{echo}");
}

/// Every file under `dir`, however deep.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `portico_plugin_compilations_total{source="cache"}` (process-wide: this is the only test
/// that configures a compilation cache).
async fn loaded_from_cache(gw: &TestGateway) -> u64 {
    let m = get(&gw.admin_url("/metrics")).await.text();
    m.lines()
        .find_map(|l| l.strip_prefix("portico_plugin_compilations_total{source=\"cache\"} "))
        .unwrap_or_else(|| panic!("no compilations counter in:\n{m}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_compiled_filter_is_kept_in_the_cache_dir_and_the_next_gateway_loads_it_from_there() {
    let up = upstream::http1("a").spawn().await;
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plugin-cache-{}", std::process::id()))
        .join("nested");
    let _ = std::fs::remove_dir_all(cache.parent().unwrap());
    let text = std::fs::read_to_string(plugin_file("wat/headers.wat")).unwrap();
    let module = module_from("cached", &text);
    let with_cache = |name: &str| {
        format!(
            "{}plugins: {{cache_dir: {:?}}}\n",
            config(&up.url(), &module, &format!(", name: {name}")),
            cache.to_str().unwrap()
        )
    };

    let first = TestGateway::start(&with_cache("first"));
    assert_eq!(get(&first.url("/a")).await.status, 200);
    assert!(
        !files_under(&cache).is_empty(),
        "the missing directory was made and the compiled filter written to it"
    );
    let before = loaded_from_cache(&first).await;

    // Another name: not the first gateway's loaded filter, so its module is made ready again.
    let second = TestGateway::start(&with_cache("second"));
    let r = get(&second.url("/a")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-response-filter"), "1", "the cached code runs");
    assert_eq!(loaded_from_cache(&second).await, before + 1);
}

#[test]
fn a_cache_dir_that_cannot_be_made_is_refused_at_its_key() {
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache-is-a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let yaml = format!(
        "{}plugins: {{cache_dir: {:?}}}\n",
        Config::new()
            .service(Service::new("a").target("http://127.0.0.1:9"))
            .route(Route::new("r").service("a"))
            .to_yaml(),
        file.join("sub").to_str().unwrap()
    );
    let err = match portico::config::load_str(&yaml, "x.yaml", &portico::config::expand::ProcessEnv)
    {
        Ok(_) => panic!("a cache directory under a file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("x.yaml:") && err.contains("plugins.cache_dir"),
        "{err}"
    );
}

/// An h2c upstream answering `/trail` with the request's body (one piece) and its trailers,
/// plus `x-upstream-trailer: up`; it records what it got in `seen`.
async fn trailer_echo(
    seen: std::sync::Arc<std::sync::Mutex<Option<(bytes::Bytes, http::HeaderMap)>>>,
) -> upstream::Upstream {
    upstream::h2c("a")
        .route(
            "/trail",
            upstream::handler(move |req| {
                let seen = std::sync::Arc::clone(&seen);
                async move {
                    use http_body_util::BodyExt as _;
                    let got = req.into_body().collect().await.unwrap();
                    let mut trailers = got.trailers().cloned().unwrap_or_default();
                    let body = got.to_bytes();
                    *seen.lock().unwrap() = Some((body.clone(), trailers.clone()));
                    trailers.insert("x-upstream-trailer", "up".parse().unwrap());
                    let frames = [
                        Ok(hyper::body::Frame::data(body)),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    http::Response::new(http_body_util::BodyExt::boxed(body))
                }
            }),
        )
        .spawn()
        .await
}

#[tokio::test]
async fn a_filter_sees_every_piece_of_a_body_it_lets_go_on_and_edits_both_trailers() {
    use http_body_util::BodyExt as _;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let up = trailer_echo(std::sync::Arc::clone(&seen)).await;
    let gw = TestGateway::start(&config(
        &format!("h2c://{}", up.addr),
        &module("stream"),
        "",
    ));

    // HTTP/2 with prior knowledge: two DATA frames, then trailers.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-in-trailer", "t1".parse().unwrap());
    trailers.insert("x-drop-trailer", "d".parse().unwrap());
    let frames: [Result<_, std::convert::Infallible>; 3] = [
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"ab"))),
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"cd"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let req = http::Request::post(format!("http://{}/trail", gw.addr))
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(20), client.send_request(req))
        .await
        .expect("an answer within 20s")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap();
    let answer_trailers = got.trailers().cloned().unwrap_or_default();
    let answer = got.to_bytes();

    let (body, trailers) = seen
        .lock()
        .unwrap()
        .take()
        .expect("the upstream was called");
    assert_eq!(body, "<ab><cd>", "each piece went through on_request_body");
    assert_eq!(trailers.get("x-seen-trailer").unwrap(), "t1");
    assert_eq!(trailers.get("x-in-trailer").unwrap(), "t1");
    assert!(trailers.get("x-drop-trailer").is_none(), "{trailers:?}");

    assert_eq!(answer, "<<ab><cd>>");
    assert_eq!(answer_trailers.get("x-upstream-trailer").unwrap(), "up");
    assert_eq!(answer_trailers.get("x-response-trailer").unwrap(), "seen");
    assert_eq!(answer_trailers.get("x-seen-trailer").unwrap(), "t1");
}

#[tokio::test]
async fn a_filter_refusing_part_way_through_a_request_body_answers_with_its_reply() {
    let up = body_echo().await;
    let gw = TestGateway::start(&config(&up.url(), &module("stream"), ""));
    // The first chunk is let go (and goes upstream); the second starts with '!'.
    let reply = crate::support::raw_reply(
        gw.addr,
        b"POST /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\n!x\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], "refused_by_plugin", "{body}");
    assert_eq!(body["message"], "refused mid-body", "{body}");
}

/// A filter that rewrites the request line (`:path`, `:method`, `:authority`) when the request
/// carries `x-rewrite`, and removes the `host` field when it carries `x-drop-host`.
const REQUEST_LINE_WAT: &str = r#"
(module
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) ":path")
  (data (i32.const 120) "/echo/rewritten?by=filter")
  (data (i32.const 160) ":method")
  (data (i32.const 180) "PUT")
  (data (i32.const 200) ":authority")
  (data (i32.const 220) "rewritten.example")
  (data (i32.const 260) "x-rewrite")
  (data (i32.const 280) "x-drop-host")
  (data (i32.const 300) "host")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 260) (i32.const 9) (i32.const 400) (i32.const 404)))
      (then
        (drop (call $replace (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 120) (i32.const 25)))
        (drop (call $replace (i32.const 0) (i32.const 160) (i32.const 7) (i32.const 180) (i32.const 3)))
        (drop (call $replace (i32.const 0) (i32.const 200) (i32.const 10) (i32.const 220) (i32.const 17)))))
    (if (i32.eqz (call $get (i32.const 0) (i32.const 280) (i32.const 11) (i32.const 400) (i32.const 404)))
      (then (drop (call $remove (i32.const 0) (i32.const 300) (i32.const 4)))))
    (i32.const 0)))
"#;

#[tokio::test]
async fn a_rewritten_request_line_is_what_goes_upstream_and_a_removed_host_comes_back() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &module_from("request_line", REQUEST_LINE_WAT),
        "",
    ));
    // Untouched: the request goes as it came.
    let r = send("GET", &gw.url("/echo/asis"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["uri"], "/echo/asis", "{echo}");
    assert_eq!(echo["method"], "GET", "{echo}");
    let client_host = format!("127.0.0.1:{}", gw.addr.port());
    assert_eq!(
        seen(&echo, "x-forwarded-host"),
        [client_host.as_str()],
        "{echo}"
    );

    let r = send("GET", &gw.url("/echo/asis"), &[("x-rewrite", "1")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["uri"], "/echo/rewritten?by=filter", "{echo}");
    assert_eq!(echo["method"], "PUT", "{echo}");
    assert_eq!(
        seen(&echo, "x-forwarded-host"),
        ["rewritten.example"],
        "{echo}"
    );

    // The `host` field the filter removed is the authority again: the request keeps its host.
    let r = send("GET", &gw.url("/echo/asis"), &[("x-drop-host", "1")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-forwarded-host"), [client_host], "{echo}");
}
