//! The consumer store (`consumers: {store: redis}`) against a real `redis-server`: the admin
//! write API (token, validation, key shown once, rotation, basic credentials and subjects),
//! propagation between gateways sharing one Redis, revocation reaching caches at once, plans
//! picking the rate limit, Redis down (serving the last set, writes 503, readiness), a flushed
//! Redis getting the set back, and the audit log.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::config::{Config, Route, Service};
use crate::support::redis::RedisServer;
use crate::support::{send, upstream, Reply, TestGateway};

pub const TOKEN: &str = "fleet-admin-token-1";

/// A gateway config: the consumer store in `redis`, a file consumer `filed` (key
/// `file-key-123`), plans `free` (2/min) and `pro` (5/min), and route `/` behind API-key and
/// basic auth. `consumers_extra` goes into the `consumers:` map.
pub fn config(redis_url: &str, up: &str, consumers_extra: &str, admin: &str) -> String {
    Config::new()
        .set("redis", format!("{{url: \"{redis_url}\", timeout: 2s}}"))
        .set(
            "consumers",
            format!(
                "{{store: redis, check_interval: 1s{consumers_extra}, list: [{{name: filed, api_keys: [file-key-123]}}]}}"
            ),
        )
        .set("admin", admin)
        .set(
            "plans",
            "{free: {rate_limit: {limits: [{requests: 2, per: 1m}], key: consumer, store: redis}}, \
             pro: {rate_limit: {limits: [{requests: 5, per: 1m}], key: consumer, store: redis}}}",
        )
        .service(Service::new("a").target(up))
        .route(
            Route::new("r")
                .path("/")
                .service("a")
                .policy("auth", "{api_key: true, basic: true}"),
        )
        .to_yaml()
}

pub fn admin_with_token() -> String {
    format!("{{listen: \"127.0.0.1:0\", token: {TOKEN}}}")
}

/// An admin call with the token.
pub async fn admin(gw: &TestGateway, method: &str, path: &str, body: Value) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(
        method,
        &gw.admin_url(path),
        &[("authorization", &auth), ("x-portico-actor", "tester")],
        body,
    )
    .await
}

/// Creates consumer `name` with a key; returns (consumer id, key id, key).
pub async fn consumer_with_key(gw: &TestGateway, name: &str) -> (String, String, String) {
    let c = admin(gw, "POST", "/consumers", json!({"name": name})).await;
    assert_eq!(c.status, 201, "{}", c.text());
    let id = c.json()["id"].as_str().unwrap().to_string();
    let k = admin(gw, "POST", &format!("/consumers/{id}/keys"), json!({})).await;
    assert_eq!(k.status, 201, "{}", k.text());
    let k = k.json();
    (
        id,
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    )
}

/// The status of `GET /` with API key `key`.
pub async fn with_key(gw: &TestGateway, key: &str) -> u16 {
    send("GET", &gw.url("/"), &[("x-api-key", key)], "")
        .await
        .status
        .as_u16()
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_gateway_works_on_another_within_a_second_and_revoking_it_too() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = config(&redis.url(), &up.url(), "", &admin_with_token());
    let (a, b) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let (id, key_id, key) = consumer_with_key(&a, "acme").await;
    // The writing node answers once its own copy has the key.
    assert_eq!(with_key(&a, &key).await, 200);
    let seen = within(Duration::from_secs(1), || async {
        with_key(&b, &key).await == 200
    })
    .await;
    assert!(seen.is_some(), "the key did not reach gateway b within 1s");
    let echo = send("GET", &b.url("/"), &[("x-api-key", &key)], "").await;
    assert_eq!(
        crate::support::seen(&echo.json(), "x-consumer-name"),
        ["acme"]
    );
    assert_eq!(
        crate::support::seen(&echo.json(), "x-consumer-id"),
        [id.as_str()]
    );
    // File consumers keep working beside stored ones.
    assert_eq!(with_key(&b, "file-key-123").await, 200);

    let r = admin(
        &b,
        "DELETE",
        &format!("/consumers/{id}/keys/{key_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(with_key(&b, &key).await, 401);
    let gone = within(Duration::from_secs(1), || async {
        with_key(&a, &key).await == 401
    })
    .await;
    assert!(
        gone.is_some(),
        "the revoked key still worked on gateway a after 1s"
    );
    println!("propagation: create {seen:?}, revoke {gone:?}");
}

#[tokio::test]
async fn managing_consumers_needs_the_admin_token_even_on_loopback() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &redis.url(),
        &up.url(),
        "",
        "{listen: \"127.0.0.1:0\"}",
    ));
    for (method, path) in [("GET", "/consumers"), ("POST", "/consumers")] {
        let r = send(method, &gw.admin_url(path), &[], r#"{"name":"x"}"#).await;
        r.assert_error(403, "admin_token_required");
    }
    // The rest of the admin API stays open on loopback without a token, as before.
    assert_eq!(
        send("GET", &gw.admin_url("/status"), &[], "").await.status,
        200
    );
    // With a token, a call without it is refused.
    let gw = TestGateway::start(&config(&redis.url(), &up.url(), "", &admin_with_token()));
    let r = send("POST", &gw.admin_url("/consumers"), &[], r#"{"name":"x"}"#).await;
    r.assert_error(401, "unauthorized");
    assert_eq!(redis.cmd(&["EXISTS", "portico:{consumers}:version"]), ":0");
}

#[tokio::test]
async fn request_bodies_are_checked_field_by_field() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&redis.url(), &up.url(), "", &admin_with_token()));
    let errors = |r: &Reply| -> Vec<String> {
        let body = r.assert_error(400, "invalid_request");
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["path"].as_str().unwrap(),
                    e["message"].as_str().unwrap()
                )
            })
            .collect()
    };
    let r = admin(
        &gw,
        "POST",
        "/consumers",
        json!({"groups": [""], "plan": "gold", "id": "a b"}),
    )
    .await;
    let e = errors(&r);
    assert!(e.contains(&"name: required".to_string()), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("groups[0]: ")), "{e:?}");
    assert!(
        e.iter().any(|e| e.starts_with("plan: unknown plan `gold`")),
        "{e:?}"
    );
    assert!(e.iter().any(|e| e.starts_with("id: ")), "{e:?}");
    let e = errors(&admin(&gw, "POST", "/consumers", json!({"nmae": "x"})).await);
    assert!(e[0].starts_with("nmae: unknown field"), "{e:?}");
    let e = errors(&admin(&gw, "POST", "/consumers", json!({"name": "filed"})).await);
    assert!(
        e[0].starts_with("name: `filed` is a consumer defined in the config"),
        "{e:?}"
    );
    let c = admin(
        &gw,
        "POST",
        "/consumers",
        json!({"name": "acme", "id": "acme-1"}),
    )
    .await;
    assert_eq!(c.status, 201);
    let e = errors(
        &admin(
            &gw,
            "POST",
            "/consumers/acme-1/keys",
            json!({"expires_in": "soon"}),
        )
        .await,
    );
    assert!(e[0].starts_with("expires_in: "), "{e:?}");
    let e = errors(
        &admin(
            &gw,
            "POST",
            "/consumers/acme-1/basic",
            json!({"username": "u", "password": "short"}),
        )
        .await,
    );
    assert!(e[0].starts_with("password: "), "{e:?}");
    admin(&gw, "POST", "/consumers", json!({"name": "acme"}))
        .await
        .assert_error(409, "conflict");
    admin(
        &gw,
        "POST",
        "/consumers",
        json!({"name": "other", "id": "acme-1"}),
    )
    .await
    .assert_error(409, "conflict");
    admin(&gw, "GET", "/consumers/nobody", Value::Null)
        .await
        .assert_error(404, "not_found");
    admin(&gw, "DELETE", "/consumers/nobody", Value::Null)
        .await
        .assert_error(404, "not_found");
    admin(&gw, "PUT", "/consumers/acme-1", Value::Null)
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn a_key_is_shown_once_and_rotation_keeps_two_keys_until_the_old_one_expires() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&redis.url(), &up.url(), "", &admin_with_token()));
    let (id, old_id, old) = consumer_with_key(&gw, "acme").await;
    assert!(old.starts_with("pk_") && old.len() >= 35, "{old}");
    let new = admin(
        &gw,
        "POST",
        &format!("/consumers/{id}/keys"),
        json!({"label": "2026"}),
    )
    .await;
    let new = new.json()["key"].as_str().unwrap().to_string();
    assert_eq!(
        (with_key(&gw, &old).await, with_key(&gw, &new).await),
        (200, 200)
    );
    // Nothing shows a key again, nor its digest; Redis holds only the digest.
    let all = admin(&gw, "GET", "/consumers", Value::Null).await.text()
        + &admin(&gw, "GET", &format!("/consumers/{id}"), Value::Null)
            .await
            .text()
        + &admin(&gw, "GET", &format!("/consumers/{id}/keys"), Value::Null)
            .await
            .text();
    let digest: String = sha256_hex(&old);
    assert!(
        !all.contains(&old) && !all.contains(&new) && !all.contains(&digest),
        "{all}"
    );
    let stored = redis.cmd(&["HGET", "portico:{consumers}:records", &id]);
    assert!(
        stored.contains(&digest) && !stored.contains(&old),
        "{stored}"
    );
    // Rotation: the old key gets an expiry.
    let r = admin(
        &gw,
        "PATCH",
        &format!("/consumers/{id}/keys/{old_id}"),
        json!({"expires_in": "1s"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["expires_at"].as_u64().is_some());
    let expired = within(Duration::from_secs(3), || async {
        with_key(&gw, &old).await == 401
    })
    .await;
    assert!(expired.is_some(), "the old key did not expire");
    assert_eq!(with_key(&gw, &new).await, 200);
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_basic_credential_is_refused_at_once_despite_the_verified_cache() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&redis.url(), &up.url(), "", &admin_with_token()));
    let c = admin(&gw, "POST", "/consumers", json!({"name": "acme"})).await;
    let id = c.json()["id"].as_str().unwrap().to_string();
    let b = admin(
        &gw,
        "POST",
        &format!("/consumers/{id}/basic"),
        json!({"username": "acme", "password": "correct horse"}),
    )
    .await;
    assert_eq!(b.status, 201, "{}", b.text());
    assert!(!b.text().contains("argon2") && !b.text().contains("correct horse"));
    let cred = b.json()["id"].as_str().unwrap().to_string();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("acme:correct horse")
    );
    let url = gw.url("/");
    let headers = [("authorization", auth.as_str())];
    let call = || send("GET", &url, &headers, "");
    assert_eq!(call().await.status, 200);
    assert_eq!(call().await.status, 200, "served from the verified cache");
    let r = admin(
        &gw,
        "DELETE",
        &format!("/consumers/{id}/basic/{cred}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        call().await.status,
        401,
        "the cached pair must not outlive the credential"
    );
}

#[tokio::test]
async fn a_consumers_plan_picks_its_rate_limit_and_changing_it_needs_no_reload() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&redis.url(), &up.url(), "", &admin_with_token()));
    let c = admin(
        &gw,
        "POST",
        "/consumers",
        json!({"name": "acme", "plan": "free"}),
    )
    .await;
    let id = c.json()["id"].as_str().unwrap().to_string();
    let k = admin(&gw, "POST", &format!("/consumers/{id}/keys"), json!({})).await;
    let key = k.json()["key"].as_str().unwrap().to_string();
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(with_key(&gw, &key).await);
    }
    assert_eq!(codes, [200, 200, 429], "free: 2 per minute");
    let r = admin(
        &gw,
        "PATCH",
        &format!("/consumers/{id}"),
        json!({"plan": "pro"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(with_key(&gw, &key).await);
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 429], "pro: 5 per minute");
    // No plan: the route has no limit of its own.
    admin(
        &gw,
        "PATCH",
        &format!("/consumers/{id}"),
        json!({"plan": null}),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(with_key(&gw, &key).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_last_set_serves_writes_fail_503_and_the_copy_converges_after() {
    let mut redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = config(&redis.url(), &up.url(), "", &admin_with_token());
    let gw = TestGateway::start(&yaml);
    let (id, _, key) = consumer_with_key(&gw, "acme").await;
    redis.kill();
    for _ in 0..5 {
        assert_eq!(with_key(&gw, &key).await, 200);
    }
    let r = admin(&gw, "POST", &format!("/consumers/{id}/keys"), json!({})).await;
    let body = r.assert_error(503, "store_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{body}"
    );
    assert_eq!(r.header("retry-after"), "1");
    // The copy's age grows on /status and /metrics.
    let aged = within(Duration::from_secs(5), || async {
        let s = admin(&gw, "GET", "/status", Value::Null).await.json();
        let store = &s["consumers"]["store"];
        store["in_sync"] == false && store["age_seconds"].as_f64().unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(aged.is_some(), "the store's age did not show");
    let metrics = admin(&gw, "GET", "/metrics", Value::Null).await.text();
    assert!(
        metrics.contains("portico_consumer_store_in_sync 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_consumer_store_age_seconds "),
        "{metrics}"
    );
    // Redis returns (empty: no persistence): this node writes its copy back.
    redis.restart();
    let back = within(Duration::from_secs(5), || async {
        let s = admin(&gw, "GET", "/status", Value::Null).await.json();
        s["consumers"]["store"]["in_sync"] == true
    })
    .await;
    assert!(back.is_some(), "the store did not reconnect");
    assert!(redis
        .cmd(&["HGET", "portico:{consumers}:records", &id])
        .contains("acme"));
    let r = admin(&gw, "POST", &format!("/consumers/{id}/keys"), json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(with_key(&gw, &key).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_redis_is_down_serves_file_consumers_and_is_unready_if_required() {
    let mut redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = config(
        &redis.url(),
        &up.url(),
        ", required: true",
        &admin_with_token(),
    );
    let key = {
        let seed = TestGateway::start(&yaml);
        consumer_with_key(&seed, "beta").await.2
    };
    redis.kill();
    let gw = TestGateway::start(&yaml);
    assert_eq!(with_key(&gw, "file-key-123").await, 200);
    assert_eq!(with_key(&gw, &key).await, 401);
    let ready = admin(&gw, "GET", "/readyz", Value::Null).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let checks = &ready.json()["checks"]["consumers"];
    assert_eq!(checks["loaded"], false);
    assert!(checks["note"]
        .as_str()
        .unwrap()
        .contains("file-defined consumers only"));
    redis.restart();
    // The restarted Redis is empty and nobody holds a copy: the stored set is gone, and the
    // node, now loaded, is ready.
    let loaded = within(Duration::from_secs(5), || async {
        admin(&gw, "GET", "/readyz", Value::Null).await.status == 200
    })
    .await;
    assert!(
        loaded.is_some(),
        "the node did not become ready once redis answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_gets_the_set_back_and_no_request_fails() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = config(&redis.url(), &up.url(), "", &admin_with_token());
    let (a, b) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let (id, _, key) = consumer_with_key(&a, "acme").await;
    within(Duration::from_secs(1), || async {
        with_key(&b, &key).await == 200
    })
    .await;
    redis.cmd(&["FLUSHALL"]);
    let start = Instant::now();
    let mut failed = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        for gw in [&a, &b] {
            if with_key(gw, &key).await != 200 {
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 0);
    let restored = redis.cmd(&["HGET", "portico:{consumers}:records", &id]);
    assert!(
        restored.contains("acme"),
        "the set was not written back: {restored:?}"
    );
    // Both nodes agree with the restored Redis, and writes work again.
    let (_, _, key2) = consumer_with_key(&a, "beta").await;
    let seen = within(Duration::from_secs(1), || async {
        with_key(&b, &key2).await == 200
    })
    .await;
    assert!(seen.is_some());
}

#[tokio::test]
async fn each_change_writes_one_audit_line_without_the_secret() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let extra = format!(", audit_log: \"{}\"", log.display());
    let gw = TestGateway::start(&config(
        &redis.url(),
        &up.url(),
        &extra,
        &admin_with_token(),
    ));
    let (id, key_id, key) = consumer_with_key(&gw, "acme").await;
    admin(
        &gw,
        "DELETE",
        &format!("/consumers/{id}/keys/{key_id}"),
        Value::Null,
    )
    .await;
    admin(&gw, "DELETE", &format!("/consumers/{id}"), Value::Null).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["audit"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "consumer.created",
            "key.created",
            "key.revoked",
            "consumer.deleted"
        ]
    );
    assert_eq!(lines[1]["actor"], "admin-token:tester");
    assert_eq!(lines[1]["remote"], "127.0.0.1");
    assert_eq!(lines[1]["consumer"], id.as_str());
    assert_eq!(lines[1]["credential"], key_id.as_str());
    assert!(
        !text.contains(&key) && !text.contains(&sha256_hex(&key)),
        "{text}"
    );
}

/// `portico consumers ARGS` against `gw`'s admin API: (success, stdout, stderr).
fn cli(gw: &TestGateway, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write as _;
    let admin = gw.admin_url("");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("consumers")
        .args(args)
        .env("PORTICO_ADMIN", admin)
        .env("PORTICO_ADMIN_TOKEN", TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run portico consumers");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_wraps_the_admin_api() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&redis.url(), &up.url(), "", &admin_with_token()));
    let (ok, out, err) = cli(
        &gw,
        &["create", "acme", "--plan", "free", "--group", "partners"],
        "",
    );
    assert!(ok, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = cli(&gw, &["add-key", "acme", "--label", "ci"], "");
    assert!(ok, "{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    let key = added["key"].as_str().unwrap().to_string();
    assert_eq!(with_key(&gw, &key).await, 200);
    let (ok, out, _) = cli(&gw, &["keys", "acme"], "");
    assert!(ok && out.contains("\"ci\"") && !out.contains(&key), "{out}");
    let (ok, _, err) = cli(&gw, &["add-basic", &id, "acme-user"], "a long password\n");
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&gw, &["update", "acme", "--plan", "gold"], "");
    assert!(
        !ok && err.contains("400") && err.contains("plan: unknown plan"),
        "{err}"
    );
    let key_id = added["id"].as_str().unwrap();
    let (ok, _, err) = cli(&gw, &["revoke-key", "acme", key_id], "");
    assert!(ok, "{err}");
    assert_eq!(with_key(&gw, &key).await, 401);
    let (ok, out, _) = cli(&gw, &["list"], "");
    assert!(ok && out.contains("acme-user"), "{out}");
}

#[tokio::test]
async fn a_bound_token_subject_names_the_stored_consumer_until_the_binding_is_deleted() {
    use crate::support::jwt::{claims, sign, AUD, ISS, SECRET};
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = Config::new()
        .set("redis", format!("{{url: \"{}\", timeout: 2s}}", redis.url()))
        .set("consumers", "{store: redis}")
        .set("admin", admin_with_token())
        .set(
            "auth",
            format!("{{jwt: {{main: {{issuer: \"{ISS}\", audiences: [{AUD}], algorithms: [HS256], keys: [{{secret: \"{SECRET}\"}}]}}}}}}"),
        )
        .service(Service::new("a").target(up.url()))
        .route(
            Route::new("r")
                .path("/")
                .service("a")
                .policy("auth", "{jwt: [main], require_consumer: true}"),
        )
        .to_yaml();
    let gw = TestGateway::start(&yaml);
    let token = sign(
        jsonwebtoken::Algorithm::HS256,
        SECRET,
        None,
        &claims(json!({"sub": "partner-7"})),
    );
    let bearer = format!("Bearer {token}");
    let url = gw.url("/");
    let headers = [("authorization", bearer.as_str())];
    let call = || send("GET", &url, &headers, "");
    call().await.assert_error(401, "unauthorized");
    let c = admin(
        &gw,
        "POST",
        "/consumers",
        json!({"name": "partner", "id": "p-7"}),
    )
    .await;
    assert_eq!(c.status, 201);
    let s = admin(
        &gw,
        "POST",
        "/consumers/p-7/jwt_subjects",
        json!({"subject": "partner-7"}),
    )
    .await;
    assert_eq!(s.status, 201, "{}", s.text());
    let echo = call().await;
    assert_eq!(echo.status, 200, "{}", echo.text());
    assert_eq!(
        crate::support::seen(&echo.json(), "x-consumer-name"),
        ["partner"]
    );
    // The verified token stays cached; the binding's removal still applies at once.
    let sid = s.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &gw,
        "DELETE",
        &format!("/consumers/p-7/jwt_subjects/{sid}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    call().await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn the_store_and_plans_are_checked_when_the_config_loads() {
    let up = upstream::http1("a").spawn().await;
    let base = |consumers: &str, plans: &str| {
        let mut c = Config::new();
        if consumers.contains("check_interval") {
            c = c.set("redis", "{url: \"redis://127.0.0.1:1\"}");
        }
        c.set("consumers", consumers)
            .set("plans", plans)
            .service(Service::new("a").target(up.url()))
            .route(Route::new("r").path("/").service("a"))
            .to_yaml()
    };
    let e = TestGateway::try_start(&base(
        "{store: redis, list: [{name: a, api_keys: [short]}]}",
        "{}",
    ))
    .err()
    .unwrap();
    assert!(
        e.contains("consumers.store") && e.contains("needs the top-level `redis:`"),
        "{e}"
    );
    assert!(e.contains("consumers.list[0].api_keys[0]"), "{e}");
    let e = TestGateway::try_start(&base("{store: redis, check_interval: 1ms}", "{}"))
        .err()
        .unwrap();
    assert!(e.contains("consumers.check_interval"), "{e}");
    let e = TestGateway::try_start(&base(
        "[{name: a, plan: gold}]",
        "{free: {rate_limit: {limits: [{requests: 1, per: 1m}]}}}",
    ))
    .err()
    .unwrap();
    assert!(
        e.contains("consumers.a.plan") && e.contains("unknown plan `gold`"),
        "{e}"
    );
    let e = TestGateway::try_start(&base(
        "[]",
        "{free: {rate_limit: {limits: [{requests: 0, per: 1m}]}}}",
    ))
    .err()
    .unwrap();
    assert!(
        e.contains("plans.free.rate_limit.limits[0].requests"),
        "{e}"
    );
    let e = TestGateway::try_start(&base("{store: redis, lits: []}", "{}"))
        .err()
        .unwrap();
    assert!(e.contains("unknown field `lits`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_stored_consumers_serving() {
    let redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let yaml = config(&redis.url(), &up.url(), "", &admin_with_token());
    let gw = TestGateway::start(&yaml);
    let (_, _, key) = consumer_with_key(&gw, "acme").await;
    // Unchanged store settings: the same copy carries on.
    let other = yaml.replace("requests: 5,", "requests: 6,");
    assert_ne!(other, yaml);
    gw.reload(&other).unwrap();
    assert_eq!(with_key(&gw, &key).await, 200);
    // Changed store settings: a new store, loaded before the new config serves.
    gw.reload(&config(
        &redis.url(),
        &up.url(),
        ", required: true",
        &admin_with_token(),
    ))
    .unwrap();
    assert_eq!(with_key(&gw, &key).await, 200);
    let s = admin(&gw, "GET", "/status", Value::Null).await.json();
    assert_eq!(s["consumers"]["store"]["required"], true, "{s}");
    assert_eq!(s["consumers"]["store"]["consumers"], 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_redis_that_lost_the_set_writes_the_set_back_first() {
    let mut redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    // A version check too rare to notice the loss first: the write has to.
    let yaml = config(&redis.url(), &up.url(), "", &admin_with_token())
        .replace("check_interval: 1s", "check_interval: 1h");
    let gw = TestGateway::start(&yaml);
    let (old_id, _, old_key) = consumer_with_key(&gw, "acme").await;
    redis.restart();
    let created = within(Duration::from_secs(5), || async {
        admin(&gw, "POST", "/consumers", json!({"name": "beta"}))
            .await
            .status
            == 201
    })
    .await;
    assert!(created.is_some(), "no write succeeded after the restart");
    assert!(redis
        .cmd(&["HGET", "portico:{consumers}:records", &old_id])
        .contains("acme"));
    assert_eq!(with_key(&gw, &old_key).await, 200);
    let list = admin(&gw, "GET", "/consumers", Value::Null).await.json();
    assert_eq!(list["total"], 2, "{list}");
}
