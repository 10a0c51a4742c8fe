//! The `cache` policy end to end over real sockets, against upstreams that count their hits:
//! freshness and expiry, no-store, private and credentials, Vary, conditional requests (304 to
//! the client, revalidation upstream), stale-while-revalidate, stale-if-error, coalescing,
//! purge, invalidation, the body cap, HEAD, and the access log.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::upstream::{self, full, handler, UpBody};
use crate::support::{self, get, send, Reply, TestGateway};
use http::{Response, StatusCode};
use portico::policy::cache::{purge, Purge};

/// Service `a` at `url`, one route `r` with the given `cache` policy (inline YAML map).
fn config(url: &str, policy: &str) -> String {
    Config::new()
        .service(Service::new("a").target(url))
        .route(
            Route::new("r")
                .service("a")
                .set("timeout", "500ms")
                .policy("cache", policy),
        )
        .to_yaml()
}

/// A response with `body` and headers.
fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<bytes::Bytes>) -> Response<UpBody> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// An upstream whose `/` answers `body-N` (N counts its answers) with the given headers.
async fn counting(headers: &'static [(&'static str, &'static str)]) -> support::Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    upstream::http1("a")
        .route(
            "/",
            handler(move |_req| {
                let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                async move { resp(200, headers, format!("body-{n}")) }
            }),
        )
        .spawn()
        .await
}

fn x_cache(r: &Reply) -> String {
    r.header("x-cache")
}

async fn get_h(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, "").await
}

#[tokio::test]
async fn fresh_entries_are_served_without_the_upstream_and_expire() {
    let up = counting(&[("cache-control", "max-age=1")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    let url = gw.url("/items?b=2&a=1");
    let first = get(&url).await;
    assert_eq!(
        (first.status.as_u16(), first.text()),
        (200, "body-1".into())
    );
    assert_eq!(x_cache(&first), "MISS");
    // The same query in another order is the same entry.
    let second = get(&gw.url("/items?a=1&b=2")).await;
    assert_eq!(
        (second.text(), x_cache(&second)),
        ("body-1".into(), "HIT".into())
    );
    assert_eq!(second.header("age"), "0");
    assert_eq!(second.header("cache-control"), "max-age=1");
    assert_eq!(up.hits(), 1);
    // Waiting for the TTL to pass is the point here.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = get(&url).await;
    assert_eq!(
        (third.text(), x_cache(&third)),
        ("body-2".into(), "MISS".into())
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn no_store_and_private_are_not_cached() {
    for cc in ["no-store, max-age=60", "private, max-age=60"] {
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(vec![("cache-control", cc)].into_boxed_slice());
        let up = counting(headers).await;
        let gw = TestGateway::start(&config(&up.url(), "{}"));
        for _ in 0..2 {
            let r = get(&gw.url("/p")).await;
            assert_eq!(x_cache(&r), "MISS", "{cc}");
        }
        assert_eq!(up.hits(), 2, "{cc}");
    }
    // Overridden on request of the config.
    let up = counting(&[("cache-control", "no-store, max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{ignore_no_store: true}"));
    get(&gw.url("/p")).await;
    assert_eq!(x_cache(&get(&gw.url("/p")).await), "HIT");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn requests_with_authorization_use_only_entries_that_allow_it() {
    // `private` is never stored, with or without credentials.
    let up = counting(&[("cache-control", "private, max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    let auth = [("authorization", "Bearer abc")];
    for _ in 0..2 {
        assert_eq!(x_cache(&get_h(&gw.url("/me"), &auth).await), "MISS");
    }
    assert_eq!(up.hits(), 2);

    // max-age alone: an authorized request neither stores nor uses a shared entry.
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get_h(&gw.url("/x"), &auth).await;
    get_h(&gw.url("/x"), &auth).await;
    assert_eq!(up.hits(), 2);
    // An anonymous request stores it; the authorized one still does not get it.
    assert_eq!(get(&gw.url("/x")).await.text(), "body-3");
    assert_eq!(x_cache(&get(&gw.url("/x")).await), "HIT");
    assert_eq!(x_cache(&get_h(&gw.url("/x"), &auth).await), "MISS");
    assert_eq!(up.hits(), 4);

    // `public` (or s-maxage) allows it.
    let up = counting(&[("cache-control", "public, max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get_h(&gw.url("/x"), &auth).await;
    let r = get_h(&gw.url("/x"), &[("authorization", "Bearer other")]).await;
    assert_eq!((r.text(), x_cache(&r)), ("body-1".into(), "HIT".into()));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn key_by_consumer_gives_each_consumer_its_own_entries() {
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let gw = TestGateway::start(&format!(
        "consumers:\n  - {{name: alice, api_keys: [alice-key-1234]}}\n  - {{name: bob, api_keys: [bob-key-12345]}}\n\
         services:\n  a: {{targets: [{{url: \"{}\"}}]}}\n\
         routes:\n  - name: r\n    service: a\n    policies:\n      - auth: {{api_key: true}}\n      - cache: {{key: [consumer]}}\n",
        up.url()
    ));
    let alice = [("x-api-key", "alice-key-1234")];
    let bob = [("x-api-key", "bob-key-12345")];
    assert_eq!(get_h(&gw.url("/me"), &alice).await.text(), "body-1");
    assert_eq!(get_h(&gw.url("/me"), &bob).await.text(), "body-2");
    let r = get_h(&gw.url("/me"), &alice).await;
    assert_eq!((r.text(), x_cache(&r)), ("body-1".into(), "HIT".into()));
    assert_eq!(get_h(&gw.url("/me"), &bob).await.text(), "body-2");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let up = upstream::http1("a")
        .route(
            "/",
            handler(|req| async move {
                let enc = req
                    .headers()
                    .get("accept-encoding")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                resp(
                    200,
                    &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
                    format!("enc={enc}"),
                )
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    let url = gw.url("/v");
    let gz = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    assert_eq!(x_cache(&get_h(&url, &gz).await), "MISS");
    assert_eq!(x_cache(&get_h(&url, &br).await), "MISS");
    let a = get_h(&url, &gz).await;
    let b = get_h(&url, &br).await;
    let none = get(&url).await;
    assert_eq!((a.text(), x_cache(&a)), ("enc=gzip".into(), "HIT".into()));
    assert_eq!((b.text(), x_cache(&b)), ("enc=br".into(), "HIT".into()));
    assert_eq!(
        (none.text(), x_cache(&none)),
        ("enc=".into(), "MISS".into())
    );
    assert_eq!(up.hits(), 3);
}

/// An upstream answering with ETag "v1" and `cache-control`, and 304 to a matching
/// If-None-Match; counts the conditional requests it saw.
async fn etag_upstream(cc: &'static str) -> (support::Upstream, Arc<AtomicUsize>) {
    let conditional = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&conditional);
    let up = upstream::http1("a")
        .route(
            "/",
            handler(move |req| {
                let inm = req.headers().get("if-none-match").cloned();
                if inm.is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if inm.is_some_and(|v| v == "\"v1\"") {
                        return resp(304, &[("etag", "\"v1\""), ("cache-control", cc)], "");
                    }
                    resp(
                        200,
                        &[("etag", "\"v1\""), ("cache-control", cc)],
                        "the-body",
                    )
                }
            }),
        )
        .spawn()
        .await;
    (up, conditional)
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_cache() {
    let (up, _) = etag_upstream("max-age=60").await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/c")).await;
    let r = get_h(&gw.url("/c"), &[("if-none-match", "\"v0\", W/\"v1\"")]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(
        (r.header("etag"), x_cache(&r)),
        ("\"v1\"".into(), "HIT".into())
    );
    let r = get_h(&gw.url("/c"), &[("if-none-match", "\"v2\"")]).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "the-body".into()));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_their_etag() {
    let (up, conditional) = etag_upstream("max-age=1").await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/c")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&gw.url("/c")).await;
    // The upstream saw If-None-Match and answered 304; the client gets the stored body.
    assert_eq!((r.status.as_u16(), r.text()), (200, "the-body".into()));
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!((up.hits(), conditional.load(Ordering::SeqCst)), (2, 1));
    // Fresh again after the 304.
    assert_eq!(x_cache(&get(&gw.url("/c")).await), "HIT");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let n = Arc::new(AtomicUsize::new(0));
    // The refresh waits for this gate, so the requests below all arrive while it is under way.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    let up = upstream::http1("a")
        .route(
            "/",
            handler(move |_req| {
                let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                let gate = Arc::clone(&g);
                async move {
                    if n > 1 {
                        let _ = gate.acquire().await;
                    }
                    resp(
                        200,
                        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
                        format!("body-{n}"),
                    )
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/s")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        let r = get(&gw.url("/s")).await;
        assert_eq!((r.text(), x_cache(&r)), ("body-1".into(), "STALE".into()));
    }
    gate.add_permits(100);
    // Exactly one background refresh; once it is stored, fresh hits carry the new body.
    let mut refreshed = None;
    for _ in 0..100 {
        let r = get(&gw.url("/s")).await;
        if r.text() == "body-2" {
            refreshed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = refreshed.expect("the background refresh was stored");
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_and_timeouts() {
    let fail = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicBool::new(false));
    let (f, s) = (Arc::clone(&fail), Arc::clone(&slow));
    let up = upstream::http1("a")
        .route(
            "/",
            handler(move |_req| {
                let (fail, slow) = (f.load(Ordering::SeqCst), s.load(Ordering::SeqCst));
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    if fail {
                        return resp(503, &[], "down");
                    }
                    resp(
                        200,
                        &[("cache-control", "max-age=1, stale-if-error=60")],
                        "good",
                    )
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/e")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fail.store(true, Ordering::SeqCst);
    let r = get(&gw.url("/e")).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "good".into()));
    assert_eq!(x_cache(&r), "STALE");
    // A timeout (the route's is 500ms) too.
    slow.store(true, Ordering::SeqCst);
    let r = get(&gw.url("/e")).await;
    assert_eq!(
        (r.status.as_u16(), r.text(), x_cache(&r)),
        (200, "good".into(), "STALE".into())
    );
    assert_eq!(up.hits(), 3);
    // Without stale-if-error the failure goes through.
    let up2 = upstream::http1("b")
        .route("/", upstream::reply(503, "down"))
        .spawn()
        .await;
    let gw2 = TestGateway::start(&config(&up2.url(), "{}"));
    let r = get(&gw2.url("/e")).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (503, "MISS".into()));
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let up = upstream::http1("a")
        .route(
            "/",
            handler(|_req| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                resp(200, &[("cache-control", "max-age=60")], "shared")
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&format!("workers: 2\n{}", config(&up.url(), "{}")));
    let url = gw.url("/hot");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let url = url.clone();
        set.spawn(async move { get(&url).await });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert_eq!((r.status.as_u16(), r.text()), (200, "shared".into()));
        *statuses.entry(x_cache(&r)).or_insert(0) += 1;
    }
    assert_eq!(up.hits(), 1, "{statuses:?}");
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
}

#[tokio::test]
async fn purge_by_key_and_prefix() {
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    for p in ["/products?page=1", "/products/7", "/other"] {
        get(&gw.url(p)).await;
    }
    assert_eq!(up.hits(), 3);
    let host = "127.0.0.1";
    let active = gw.runtime().active();
    let n = purge(
        active.plan.cache_policies(),
        Purge::Key(&format!("{host}/products?page=1")),
    )
    .await;
    assert_eq!((n.memory, n.redis), (1, Some(0)));
    assert_eq!(x_cache(&get(&gw.url("/products?page=1")).await), "MISS");
    assert_eq!(x_cache(&get(&gw.url("/products/7")).await), "HIT");
    let n = purge(
        active.plan.cache_policies(),
        Purge::Prefix(&format!("{host}/products")),
    )
    .await;
    assert_eq!(n.memory, 2);
    assert_eq!(x_cache(&get(&gw.url("/products/7")).await), "MISS");
    assert_eq!(x_cache(&get(&gw.url("/other")).await), "HIT");
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn a_successful_post_invalidates_the_get_entry() {
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/cart")).await;
    assert_eq!(x_cache(&get(&gw.url("/cart")).await), "HIT");
    let post = send("POST", &gw.url("/cart"), &[], "item=1").await;
    assert_eq!(x_cache(&post), "BYPASS");
    let r = get(&gw.url("/cart")).await;
    assert_eq!((r.text(), x_cache(&r)), ("body-3".into(), "MISS".into()));
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn bodies_over_the_cap_stream_and_are_not_cached() {
    let big = "x".repeat(4096);
    let up = upstream::http1("a")
        .route(
            "/known",
            handler(move |_req| {
                let big = big.clone();
                async move { resp(200, &[("cache-control", "max-age=60")], big) }
            }),
        )
        .route(
            "/chunked",
            handler(|_req| async {
                let mut left = 8;
                let mut r = Response::new(upstream::generated(move || {
                    (left > 0).then(|| {
                        left -= 1;
                        bytes::Bytes::from(vec![b'y'; 1000])
                    })
                }));
                r.headers_mut()
                    .insert("cache-control", "max-age=60".parse().unwrap());
                r
            }),
        )
        .route(
            "/small",
            handler(|_req| async {
                let mut left = 2;
                let mut r = Response::new(upstream::generated(move || {
                    (left > 0).then(|| {
                        left -= 1;
                        bytes::Bytes::from_static(b"ab")
                    })
                }));
                r.headers_mut()
                    .insert("cache-control", "max-age=60".parse().unwrap());
                r
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(&up.url(), "{max_entry_bytes: 2KiB}"));
    for path in ["/known", "/chunked"] {
        for _ in 0..2 {
            let r = get(&gw.url(path)).await;
            assert_eq!(x_cache(&r), "MISS", "{path}");
            assert!(r.body.len() >= 4096, "{path}: {}", r.body.len());
        }
    }
    assert_eq!(up.hits(), 4);
    // A small chunked body is stored once complete.
    get(&gw.url("/small")).await;
    let r = get(&gw.url("/small")).await;
    assert_eq!((r.text(), x_cache(&r)), ("abab".into(), "HIT".into()));
    // It was chunked upstream; the entry knows its length, so HEAD says it.
    let head = send("HEAD", &gw.url("/small"), &[], "").await;
    assert_eq!(
        (head.header("content-length"), x_cache(&head)),
        ("4".into(), "HIT".into())
    );
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn head_is_served_from_the_get_entry() {
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/h")).await;
    let r = send("HEAD", &gw.url("/h"), &[], "").await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "HIT".into()));
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), "6");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn responses_without_freshness_are_cached_only_when_configured() {
    let up = counting(&[]).await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/n")).await;
    assert_eq!(x_cache(&get(&gw.url("/n")).await), "MISS");
    assert_eq!(up.hits(), 2);
    let up = counting(&[("cache-control", "max-age=0")]).await;
    let gw = TestGateway::start(&config(&up.url(), "{ttl: 60s, status_header: X-Gw-Cache}"));
    get(&gw.url("/n")).await;
    let r = get(&gw.url("/n")).await;
    assert_eq!(
        (r.header("x-gw-cache"), r.header("x-cache")),
        ("HIT".into(), "".into())
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn the_access_log_records_the_cache_status() {
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "access_log: {{path: \"{}\"}}\n{}",
        log.display(),
        config(&up.url(), "{}")
    ));
    get(&gw.url("/l")).await;
    get(&gw.url("/l")).await;
    let mut lines = Vec::new();
    for _ in 0..200 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text.lines().map(str::to_string).collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caches: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["cache"].to_string())
        .collect();
    assert_eq!(caches, vec!["\"miss\"", "\"hit\""]);
}

#[tokio::test]
async fn config_errors_are_reported_at_their_paths() {
    let err = TestGateway::try_start(
        "services:\n  a: {targets: [{url: \"http://127.0.0.1:1\"}]}\n\
         routes:\n  - name: r\n    service: a\n    policies:\n      - cache: {ttl: 0s, key: [{header: \"bad header\"}], redis: {}, max_entry_bytes: 2MiB, max_size: 1MiB}\n",
    )
    .err()
    .expect("invalid");
    for path in [
        "routes[0].policies[0].cache.ttl",
        "routes[0].policies[0].cache.key[0].header",
        "routes[0].policies[0].cache.redis",
        "routes[0].policies[0].cache.max_entry_bytes",
    ] {
        assert!(err.contains(path), "{path} not in:\n{err}");
    }
}

#[tokio::test]
async fn entries_survive_a_reload_that_keeps_the_policy() {
    let up = counting(&[("cache-control", "max-age=60")]).await;
    let yaml = config(&up.url(), "{max_size: 1MiB}");
    let gw = TestGateway::start(&yaml);
    get(&gw.url("/k")).await;
    // Another route added: the policy is unchanged and keeps its entries.
    let more = format!("{yaml}  - name: other\n    match: {{path: /other}}\n    service: a\n");
    gw.reload(&more).expect("reload");
    assert_eq!(x_cache(&get(&gw.url("/k")).await), "HIT");
    // A changed policy starts empty.
    gw.reload(&config(&up.url(), "{max_size: 2MiB}"))
        .expect("reload");
    assert_eq!(x_cache(&get(&gw.url("/k")).await), "MISS");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn waiting_for_a_slow_leader_is_bounded() {
    // The upstream answers nobody until all five requests reached it: the four that wait for
    // the first must give up waiting (after 100ms) and come themselves, or nobody is answered.
    let all_here = Arc::new(tokio::sync::Barrier::new(5));
    let up = upstream::http1("a")
        .route(
            "/",
            handler(move |_req| {
                let all_here = Arc::clone(&all_here);
                async move {
                    all_here.wait().await;
                    resp(200, &[("cache-control", "max-age=60")], "slow")
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\n\
         routes:\n  - name: r\n    service: a\n    policies:\n      - cache: {{coalesce_wait: 100ms}}\n",
        up.url()
    ));
    let url = gw.url("/slow");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let url = url.clone();
        set.spawn(async move { get(&url).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().text(), "slow");
    }
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn must_revalidate_forbids_stale_answers_and_request_no_cache_revalidates() {
    let fail = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&fail);
    let up = upstream::http1("a")
        .route(
            "/",
            handler(move |_req| {
                let fail = f.load(Ordering::SeqCst);
                async move {
                    if fail {
                        return resp(503, &[], "down");
                    }
                    resp(
                        200,
                        &[(
                            "cache-control",
                            "max-age=1, must-revalidate, stale-if-error=60",
                        )],
                        "good",
                    )
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(&up.url(), "{}"));
    get(&gw.url("/m")).await;
    // A fresh entry, but the client asks for validation: the upstream is asked.
    let r = get_h(&gw.url("/m"), &[("cache-control", "no-cache")]).await;
    assert_eq!((r.text(), x_cache(&r)), ("good".into(), "MISS".into()));
    assert_eq!(up.hits(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fail.store(true, Ordering::SeqCst);
    let r = get(&gw.url("/m")).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (503, "MISS".into()));
}
