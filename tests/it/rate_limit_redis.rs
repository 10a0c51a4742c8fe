//! Rate limiting with the shared Redis store, against a real `redis-server` each test starts on
//! a free port: exactness across a fleet of gateways, one round trip per check, window
//! behaviour, isolation and key expiry, quotas across a gateway restart, Redis dying and
//! coming back under each `on_store_error`, and Redis Cluster and Sentinel deployments.

use std::time::{Duration, Instant};

use crate::support::config::{Config, Route, Service};
use crate::support::redis::RedisServer;
use crate::support::{self, get, send, upstream, Reply, TestGateway};

/// A config with `redis:` at `redis_url` (plus `redis_extra` settings), service `a` at `up`,
/// and routes `(name, path, policy)`.
fn config(redis: &str, up: &str, routes: &[(&str, &str, &str)]) -> String {
    let config = Config::new()
        .set("redis", redis)
        .service(Service::new("a").target(up));
    routes
        .iter()
        .fold(config, |c, (name, path, policy)| {
            c.route(
                Route::new(name)
                    .path(path)
                    .service("a")
                    .policy("rate_limit", policy),
            )
        })
        .to_yaml()
}

fn url_redis(r: &RedisServer, extra: &str) -> String {
    format!("{{url: \"{}\"{extra}}}", r.url())
}

/// Counts 200s and 429s (anything else fails the test).
fn tally(replies: &[Reply]) -> (usize, usize) {
    let mut n = (0, 0);
    for r in replies {
        match r.status.as_u16() {
            200 => n.0 += 1,
            429 => {
                r.assert_error(429, "rate_limited");
                n.1 += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sharing_one_redis_let_exactly_the_limit_through() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    // A generous timeout: this test is about exactness, not about a slow debug build.
    let yaml = config(
        &url_redis(&redis, ", timeout: 2s"),
        &up.url(),
        &[(
            "r",
            "/",
            "{store: redis, limits: [{requests: 100, per: 1m}]}",
        )],
    );
    let fleet: Vec<TestGateway> = (0..3).map(|_| TestGateway::start(&yaml)).collect();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300 {
        let url = fleet[i % 3].url("/x");
        set.spawn(async move { get(&url).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.unwrap());
    }
    assert_eq!(tally(&replies), (100, 200));
    assert_eq!(
        up.hits(),
        100,
        "a rejected request never reaches the upstream"
    );
    // One round trip per check: an EVALSHA each, plus an EVAL only where the server answered
    // NOSCRIPT (requests racing the first load of the script on this fresh server).
    assert_eq!(redis.calls("evalsha"), 300);
    assert_eq!(redis.calls("eval"), redis.errors("NOSCRIPT"));
    assert_eq!(redis.calls("script|load"), 0);
    // Once the script is known: exactly one call per request.
    let (evalsha, eval) = (redis.calls("evalsha"), redis.calls("eval"));
    for gw in &fleet {
        get(&gw.url("/x")).await.assert_error(429, "rate_limited");
    }
    assert_eq!(redis.calls("evalsha"), evalsha + 3);
    assert_eq!(redis.calls("eval"), eval);
}

#[tokio::test]
async fn the_request_over_the_limit_gets_429_with_retry_after_and_passes_after_it() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &url_redis(&redis, ""),
        &up.url(),
        &[
            (
                "sw",
                "/sw",
                "{store: redis, on_store_error: deny, headers: both, limits: [{requests: 2, per: 1s}]}",
            ),
            (
                "gcra",
                "/gcra",
                "{store: redis, on_store_error: deny, limits: [{requests: 2, per: 1s, algorithm: gcra}]}",
            ),
        ],
    ));
    for path in ["/sw", "/gcra"] {
        let first = get(&gw.url(path)).await;
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(get(&gw.url(path)).await.status, 200, "{path}");
        let over = get(&gw.url(path)).await;
        over.assert_error(429, "rate_limited");
        let wait: u64 = over.header("retry-after").parse().unwrap();
        assert!((1..=2).contains(&wait), "{path}: Retry-After {wait}");
        assert!(over.header("ratelimit").contains(";r=0;"), "{path}");
        // The quota comes back when Retry-After says (the window is the point of the test).
        tokio::time::sleep(Duration::from_secs(wait)).await;
        assert_eq!(
            get(&gw.url(path)).await.status,
            200,
            "{path} after Retry-After"
        );
    }
    let sw = get(&gw.url("/sw")).await;
    assert_eq!(sw.header("x-ratelimit-limit"), "2");
}

#[tokio::test]
async fn keys_are_isolated_and_expire_in_redis() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &url_redis(&redis, ", key_prefix: \"gw1:\""),
        &up.url(),
        &[(
            "r",
            "/",
            "{store: redis, on_store_error: deny, key: {header: x-user}, limits: [{requests: 2, per: 10s}]}",
        )],
    ));
    let as_user = |u: &'static str| {
        let url = gw.url("/x");
        async move { send("GET", &url, &[("x-user", u)], "").await }
    };
    for _ in 0..2 {
        assert_eq!(as_user("alice").await.status, 200);
    }
    as_user("alice").await.assert_error(429, "rate_limited");
    assert_eq!(as_user("bob").await.status, 200, "bob has his own counter");
    // Two keys, both named after the prefix and the route, both with a TTL no longer than the
    // windows they hold (two 10s windows plus a second).
    let count = |pattern: &str, ttl_cap_ms: u64| {
        redis.cmd(&[
            "EVAL",
            "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
             local t = redis.call('PTTL', k) if t > 0 and t <= tonumber(ARGV[2]) then n = n + 1 end end \
             return n",
            "0",
            pattern,
            &ttl_cap_ms.to_string(),
        ])
    };
    assert_eq!(count("gw1:rl:route:r:*", 21_000), ":2");
    assert_eq!(count("*", u64::MAX / 2), ":2", "nothing else is written");
}

#[tokio::test]
async fn a_quota_survives_a_gateway_restart() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = config(
        &url_redis(&redis, ""),
        &up.url(),
        &[("r", "/", "{store: redis, limits: [{requests: 3, per: 1d}]}")],
    );
    let first = TestGateway::start(&yaml);
    for _ in 0..2 {
        assert_eq!(get(&first.url("/x")).await.status, 200);
    }
    first.shutdown();
    let second = TestGateway::start(&yaml);
    assert_eq!(get(&second.url("/x")).await.status, 200);
    let over = get(&second.url("/x")).await;
    over.assert_error(429, "rate_limited");
    let wait: u64 = over.header("retry-after").parse().unwrap();
    assert!(wait > 3600, "a daily quota waits hours, not {wait}s");
}

#[tokio::test]
async fn redis_dying_is_handled_per_on_store_error_and_limits_resume_when_it_returns() {
    let mut redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let policy = |on_error: &str| {
        format!("{{store: redis, on_store_error: {on_error}, limits: [{{requests: 2, per: 1m}}]}}")
    };
    let (allow, deny, local) = (policy("allow"), policy("deny"), policy("local"));
    let gw = TestGateway::start(&config(
        &url_redis(&redis, ", timeout: 100ms, retry_interval: 200ms"),
        &up.url(),
        &[
            ("allow", "/allow", &allow),
            ("deny", "/deny", &deny),
            ("local", "/local", &local),
        ],
    ));
    for path in ["/allow", "/deny", "/local"] {
        for _ in 0..2 {
            assert_eq!(get(&gw.url(path)).await.status, 200, "{path}");
        }
        get(&gw.url(path)).await.assert_error(429, "rate_limited");
    }

    redis.kill();
    // Every request is answered, none waits much beyond the 100ms timeout.
    let timed = |path: &'static str| {
        let url = gw.url(path);
        async move {
            let start = Instant::now();
            let r = get(&url).await;
            let took = start.elapsed();
            assert!(took < Duration::from_secs(2), "{path} took {took:?}");
            r
        }
    };
    for _ in 0..5 {
        assert_eq!(timed("/allow").await.status, 200, "allow: let through");
        let denied = timed("/deny").await;
        denied.assert_error(503, "rate_limit_unavailable");
        assert_eq!(denied.header("retry-after"), "1");
    }
    // `local`: this node's own counter, fresh, takes over.
    let replies = [
        timed("/local").await,
        timed("/local").await,
        timed("/local").await,
    ];
    assert_eq!(tally(&replies), (2, 1));

    redis.restart();
    // Redis lost its data with the process; once the retry interval has passed, the counter in
    // Redis is used again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&gw.url("/deny")).await;
        if r.status == 200 {
            break;
        }
        r.assert_error(503, "rate_limit_unavailable");
        assert!(
            Instant::now() < deadline,
            "limits did not resume after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&gw.url("/deny")).await.status, 200);
    get(&gw.url("/deny"))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test]
async fn a_redis_unreachable_at_startup_does_not_stop_the_gateway() {
    // Nothing listens there: the gateway starts, and the policy's fallback answers.
    let (port, _refusing) = support::refusing_port();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &format!("{{url: \"redis://127.0.0.1:{port}\"}}"),
        &up.url(),
        &[("r", "/", "{store: redis, limits: [{requests: 1, per: 1m}]}")],
    ));
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    get(&gw.url("/x")).await.assert_error(429, "rate_limited");
}

/// Five requests through a gateway using the `redis:` section `redis` with a limit of three
/// (`on_store_error: deny`, so a Redis failure shows as a 503, not as a pass).
async fn three_of_five_pass(redis: &str) {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        redis,
        &up.url(),
        &[(
            "r",
            "/",
            "{store: redis, on_store_error: deny, limits: [{requests: 3, per: 1m}]}",
        )],
    ));
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(get(&gw.url("/x")).await);
    }
    assert_eq!(tally(&replies), (3, 2));
}

#[tokio::test]
async fn a_single_node_redis_cluster_is_used_through_cluster_urls() {
    let redis = RedisServer::start_cluster();
    three_of_five_pass(&format!("{{cluster: [\"{}\"], timeout: 1s}}", redis.url())).await;
    assert_eq!(redis.calls("evalsha"), 5);
}

#[tokio::test]
async fn a_sentinel_managed_primary_is_found_through_the_sentinels() {
    let primary = RedisServer::start();
    let sentinel = RedisServer::start_sentinel("portico-primary", primary.port);
    three_of_five_pass(&format!(
        "{{sentinel: {{urls: [\"{}\"], master: portico-primary}}, timeout: 1s}}",
        sentinel.url()
    ))
    .await;
    assert_eq!(primary.calls("evalsha"), 5, "the checks ran on the primary");
}

#[test]
fn redis_settings_are_checked_at_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str| -> String {
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, yaml).unwrap();
        match portico::config::load_file(&path) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let svc = "services:\n  a: {targets: [{url: \"http://127.0.0.1:1\"}]}\n";
    let route = |policy: &str| {
        format!(
            "routes:\n  - name: r\n    service: a\n    policies:\n      - rate_limit: {policy}\n"
        )
    };
    let e = check(&format!(
        "{svc}{}",
        route("{store: redis, limits: [{requests: 1, per: 1m}]}")
    ));
    assert!(e.contains("routes[0].policies[0].rate_limit.store"), "{e}");
    assert!(e.contains("needs the top-level `redis:`"), "{e}");
    let e = check(&format!(
        "redis: {{url: \"http://:hunter2@x\"}}\n{svc}{}",
        route("{store: redis, limits: [{requests: 1, per: 1m}]}")
    ));
    assert!(e.contains("redis.url"), "{e}");
    assert!(!e.contains("hunter2"), "the password is never echoed: {e}");
    let e = check(&format!(
        "redis: {{url: \"redis://x\", cluster: [\"redis://y\"]}}\n{svc}{}",
        route("{limits: [{requests: 1, per: 1m}], on_store_error: deny}")
    ));
    assert!(e.contains("set exactly one of"), "{e}");
    assert!(e.contains("only apply to `store: redis`"), "{e}");
}

#[test]
fn a_failing_redis_is_logged_once_per_interval_without_its_password() {
    let (port, _refusing) = support::refusing_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(upstream::http1("a").spawn());
    let mut gw = support::GatewayProcess::spawn(
        &config(
            &format!(
                "{{url: \"redis://:s3cr3t-pw@127.0.0.1:{port}\", timeout: 50ms, retry_interval: 20ms}}"
            ),
            &up.url(),
            &[("r", "/", "{store: redis, on_store_error: allow, limits: [{requests: 1, per: 1m}]}")],
        ),
        &[],
    );
    // Many failing calls, several retry intervals apart.
    rt.block_on(async {
        for _ in 0..30 {
            assert_eq!(get(&gw.url("/x")).await.status, 200);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let first = gw.wait_for_line("redis store unavailable", Duration::from_secs(5));
    assert!(first.contains("failed_calls=1"), "{first}");
    // The same condition a moment later: still that one line (the next may come after 10 s).
    rt.block_on(async {
        for _ in 0..10 {
            assert_eq!(get(&gw.url("/x")).await.status, 200);
        }
    });
    let later = gw.lines_so_far();
    let repeats = later.iter().filter(|l| l.contains("redis store")).count();
    assert_eq!(repeats, 0, "{later:#?}");
    assert!(!first.contains("s3cr3t") && later.iter().all(|l| !l.contains("s3cr3t")));
}
