//! The cache's shared Redis tier, against a real `redis-server`: two gateway instances share
//! entries, the per-entry size cap keeps big ones in memory only, purge reaches Redis, and a
//! dead Redis makes the tier a bypass (requests go upstream), never an error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::redis::RedisServer;
use crate::support::upstream::{self, full, handler};
use crate::support::{self, get, send, Reply, TestGateway};
use http::Response;
use portico::policy::cache::{purge, Purge};

fn config(redis: &RedisServer, up: &str) -> String {
    Config::new()
        .set(
            "redis",
            format!(
                "{{url: \"{}\", timeout: 500ms, retry_interval: 200ms}}",
                redis.url()
            ),
        )
        .service(Service::new("a").target(up))
        .route(
            Route::new("r")
                .service("a")
                .policy("cache", "{redis: {max_entry_bytes: 1KiB}}"),
        )
        .to_yaml()
}

/// `/big` answers 4 KiB, anything else `body-N`; all cacheable for a minute.
async fn origin() -> support::Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    upstream::http1("a")
        .route(
            "/",
            handler(move |req| {
                let n = n.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let lang = req
                        .headers()
                        .get("accept-language")
                        .map(|v| v.to_str().unwrap().to_string());
                    let body = if req.uri().path() == "/big" {
                        "z".repeat(4096)
                    } else {
                        format!("body-{n}")
                    };
                    let mut r = Response::new(full(body));
                    r.headers_mut()
                        .insert("cache-control", "max-age=60".parse().unwrap());
                    if req.uri().path() == "/lang" {
                        let body = format!("{}-{n}", lang.unwrap_or_default());
                        *r.body_mut() = full(body);
                        r.headers_mut()
                            .insert("vary", "Accept-Language".parse().unwrap());
                    }
                    r
                }
            }),
        )
        .spawn()
        .await
}

fn x_cache(r: &Reply) -> String {
    r.header("x-cache")
}

/// Waits until Redis holds `key` (written from a background task after the response).
async fn wait_for_key(redis: &RedisServer, key: &str) {
    for _ in 0..200 {
        if redis.cmd(&["EXISTS", key]) == ":1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{key} never reached redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_entries_through_redis() {
    let redis = RedisServer::start();
    let up = origin().await;
    let a = TestGateway::start(&config(&redis, &up.url()));
    let b = TestGateway::start(&config(&redis, &up.url()));

    let first = get(&a.url("/shared")).await;
    assert_eq!(
        (first.text(), x_cache(&first)),
        ("body-1".into(), "MISS".into())
    );
    wait_for_key(&redis, "portico:cache:127.0.0.1/shared").await;
    let ttl: i64 = redis.cmd(&["TTL", "portico:cache:127.0.0.1/shared"])[1..]
        .parse()
        .unwrap();
    assert!((50..=60).contains(&ttl), "ttl {ttl}");
    let from_b = get(&b.url("/shared")).await;
    assert_eq!(
        (from_b.text(), x_cache(&from_b)),
        ("body-1".into(), "HIT".into())
    );
    assert_eq!(up.hits(), 1);

    // Over the tier's cap: kept in A's memory only.
    get(&a.url("/big")).await;
    assert_eq!(x_cache(&get(&a.url("/big")).await), "HIT");
    assert_eq!(x_cache(&get(&b.url("/big")).await), "MISS");
    assert_eq!(up.hits(), 3);

    // Purge reaches Redis: B's memory and Redis are cleared, then B misses.
    let n = purge(
        b.runtime().active().plan.cache_policies(),
        Purge::Prefix("127.0.0.1/sh"),
    )
    .await;
    assert_eq!((n.memory, n.redis), (1, Some(1)));
    assert_eq!(
        redis.cmd(&["EXISTS", "portico:cache:127.0.0.1/shared"]),
        ":0"
    );
    assert_eq!(x_cache(&get(&b.url("/shared")).await), "MISS");
    assert_eq!(up.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_are_shared_through_redis_too() {
    let redis = RedisServer::start();
    let up = origin().await;
    let a = TestGateway::start(&config(&redis, &up.url()));
    let b = TestGateway::start(&config(&redis, &up.url()));
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(send("GET", &a.url("/lang"), &en, "").await.text(), "en-1");
    assert_eq!(send("GET", &a.url("/lang"), &fr, "").await.text(), "fr-2");
    // Both variants (and the vary rule) reach Redis.
    for _ in 0..200 {
        if redis.cmd(&["DBSIZE"]) == ":3" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(redis.cmd(&["DBSIZE"]), ":3");
    let r = send("GET", &b.url("/lang"), &fr, "").await;
    assert_eq!((r.text(), x_cache(&r)), ("fr-2".into(), "HIT".into()));
    let r = send("GET", &b.url("/lang"), &en, "").await;
    assert_eq!((r.text(), x_cache(&r)), ("en-1".into(), "HIT".into()));
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_is_a_bypass_not_an_error() {
    let mut redis = RedisServer::start();
    let up = origin().await;
    let a = TestGateway::start(&config(&redis, &up.url()));
    redis.kill();
    for i in 1..=2 {
        let r = get(&a.url(&format!("/down{i}"))).await;
        assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS".into()));
    }
    // The memory tier still works.
    assert_eq!(x_cache(&get(&a.url("/down1")).await), "HIT");
    assert_eq!(up.hits(), 2);
    // Redis back: entries reach it again.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stored = false;
    for i in 0..50 {
        get(&a.url(&format!("/back{i}"))).await;
        if redis.cmd(&["EXISTS", &format!("portico:cache:127.0.0.1/back{i}")]) == ":1" {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "no entry reached the restarted redis");
}
