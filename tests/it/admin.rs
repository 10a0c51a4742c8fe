//! The admin API over real sockets: its own port, token enforcement, status/routes/services,
//! the effective config with secrets redacted, reloads (good and bad) and readiness following a
//! required Redis.

use std::time::{Duration, Instant};

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::redis::RedisServer;
use crate::support::{self, get, send, upstream, TestGateway};

const TOKEN: &str = "admin-token-0123456789";

fn config(up: &str, extra: &str) -> String {
    Config::new()
        .set(
            "admin",
            format!("{{listen: \"127.0.0.1:0\", token: \"{TOKEN}\"}}"),
        )
        .consumer(Consumer::new("shop").api_key("very-secret-api-key-1"))
        .service(Service::new("a").target(up))
        .route(Route::new("first").path("/first").service("a"))
        .yaml(extra)
        .to_yaml()
}

async fn admin_get(gw: &TestGateway, path: &str) -> support::Reply {
    let auth = format!("Bearer {TOKEN}");
    send("GET", &gw.admin_url(path), &[("authorization", &auth)], "").await
}

#[tokio::test]
async fn status_routes_and_services_describe_the_running_gateway() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), ""));
    let status = admin_get(&gw, "/status").await;
    assert_eq!(status.status, 200, "{}", status.text());
    let s = status.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config"]["revision"], 1);
    assert_eq!(s["routes"], 1);
    assert_eq!(s["config"]["hash"].as_str().unwrap().len(), 16);

    let routes = admin_get(&gw, "/routes").await.json();
    assert_eq!(routes["routes"][0]["name"], "first");
    assert_eq!(routes["routes"][0]["service"], "a");
    assert_eq!(routes["routes"][0]["path"], "/first");

    let services = admin_get(&gw, "/services").await.json();
    let target = &services["services"][0]["targets"][0];
    assert_eq!(target["url"], up.url());
    assert_eq!(target["healthy"], true);

    assert_eq!(get(&gw.admin_url("/healthz")).await.status, 200);
    let openapi = admin_get(&gw, "/openapi.json").await.json();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/reload"]["post"].is_object());
    // The dashboard's files are documented as public (no bearer needed).
    assert_eq!(
        openapi["paths"]["/"]["get"]["security"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn the_token_is_enforced_and_the_admin_api_is_not_on_the_public_listener() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), ""));
    for path in ["/status", "/config", "/routes", "/services", "/readyz"] {
        let r = get(&gw.admin_url(path)).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.json()["error"], "unauthorized");
        let wrong = send(
            "GET",
            &gw.admin_url(path),
            &[("authorization", "Bearer admin-token-0123456788")],
            "",
        )
        .await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
    }
    // The public port routes /status like any path: no admin answer there.
    let public = get(&gw.url("/status")).await;
    public.assert_error(404, "no_route");
    let reload = send("POST", &gw.url("/reload"), &[], "").await;
    reload.assert_error(404, "no_route");
}

#[tokio::test]
async fn the_config_endpoint_redacts_every_secret() {
    let up = upstream::http1("a").spawn().await;
    let extra = "redis: {url: \"redis://:redis-pass-42@127.0.0.1:1\"}\n";
    let gw = TestGateway::start(&format!("{extra}{}", config(&up.url(), "")));
    let r = admin_get(&gw, "/config").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for secret in ["very-secret-api-key-1", "redis-pass-42", TOKEN] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let c = r.json();
    assert_eq!(c["consumers"][0]["api_keys"], "<redacted>");
    assert_eq!(c["admin"]["token"], "<redacted>");
    assert_eq!(c["redis"]["url"], "redis://:<redacted>@127.0.0.1:1");
    assert_eq!(c["routes"][0]["name"], "first");
}

#[tokio::test]
async fn reload_applies_a_good_config_and_rejects_a_bad_one_with_its_errors() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), ""));
    let auth = format!("Bearer {TOKEN}");
    let post = |gw: &TestGateway| {
        let url = gw.admin_url("/reload");
        let auth = auth.clone();
        async move { send("POST", &url, &[("authorization", &auth)], "").await }
    };
    let second = "  - name: second\n    match: {path: /second}\n    service: a\n";
    std::fs::write(
        gw.config_path(),
        support::with_defaults(&config(&up.url(), second)),
    )
    .unwrap();
    let r = post(&gw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "applied");
    assert_eq!(r.json()["revision"], 2);
    assert_eq!(get(&gw.url("/second")).await.status, 200);
    assert_eq!(post(&gw).await.json()["result"], "unchanged");

    let bad = "  - name: third\n    match: {path: /third}\n    service: missing\n";
    std::fs::write(
        gw.config_path(),
        support::with_defaults(&config(&up.url(), bad)),
    )
    .unwrap();
    let r = post(&gw).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "config_invalid");
    let e = &body["errors"][0];
    assert_eq!(e["path"], "routes[1].service");
    assert!(e["line"].as_u64().unwrap() > 1, "{e}");
    assert!(e["message"].as_str().unwrap().contains("missing"), "{e}");
    // The previous config keeps serving.
    assert_eq!(get(&gw.url("/second")).await.status, 200);
    get(&gw.url("/third")).await.assert_error(404, "no_route");
    assert_eq!(
        admin_get(&gw, "/status").await.json()["config"]["revision"],
        2
    );
}

#[tokio::test]
async fn readiness_follows_a_required_redis() {
    let mut redis = RedisServer::start();
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "redis: {{url: \"{}\", required: true, timeout: 200ms}}\n{}",
        redis.url(),
        config(&up.url(), "")
    ));
    let ready = admin_get(&gw, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["checks"]["redis"]["reachable"], true);

    redis.kill();
    let unready = admin_get(&gw, "/readyz").await;
    assert_eq!(unready.status, 503, "{}", unready.text());
    assert_eq!(unready.json()["status"], "unready");
    // Liveness is not readiness: the process is fine.
    assert_eq!(get(&gw.admin_url("/healthz")).await.status, 200);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_get(&gw, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "not ready after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn an_admin_api_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "admin: {listen: \"0.0.0.0:9901\"}\n").unwrap();
    let e = portico::config::load_file(&path).err().unwrap().to_string();
    assert!(e.contains("admin.token"), "{e}");
    std::fs::write(&path, "admin: {listen: \"localhost\", token: short}\n").unwrap();
    let e = portico::config::load_file(&path).err().unwrap().to_string();
    assert!(
        e.contains("admin.listen") && e.contains("16 characters"),
        "{e}"
    );
}

#[tokio::test]
async fn cache_entries_are_purged_by_key_and_by_prefix() {
    let up = upstream::http1("a").spawn().await;
    let cached = "    policies:\n      - cache: {default_ttl: 1m}\n";
    let gw = TestGateway::start(&config(&up.url(), cached));
    let auth = format!("Bearer {TOKEN}");
    let purge = |body: &'static str| {
        let url = gw.admin_url("/cache/purge");
        let auth = auth.clone();
        async move { send("POST", &url, &[("authorization", &auth)], body).await }
    };
    let x_cache = |r: &support::Reply| r.header("x-cache");
    assert_eq!(x_cache(&get(&gw.url("/first")).await), "MISS");
    assert_eq!(x_cache(&get(&gw.url("/first")).await), "HIT");
    assert_eq!(
        admin_get(&gw, "/routes").await.json()["routes"][0]["policies"],
        serde_json::json!(["cache"])
    );
    let r = purge(r#"{"key": "127.0.0.1/first"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"]["memory"], 1);
    assert_eq!(x_cache(&get(&gw.url("/first")).await), "MISS");
    assert_eq!(x_cache(&get(&gw.url("/first?page=2")).await), "MISS");
    let r = purge(r#"{"prefix": "127.0.0.1/fir"}"#).await;
    assert_eq!(r.json()["purged"]["memory"], 2, "{}", r.text());
    assert_eq!(x_cache(&get(&gw.url("/first?page=2")).await), "MISS");
    assert_eq!(up.hits(), 4);
    purge(r#"{"key": "a", "prefix": "b"}"#).await.json()["error"]
        .as_str()
        .map(|e| assert_eq!(e, "bad_request"))
        .unwrap();
    assert_eq!(purge("not json").await.status, 400);
}

/// Asserts the common error body with `code`, and that its request id is the `X-Request-Id`
/// header's.
#[track_caller]
fn assert_common_error(r: &support::Reply, status: u16, code: &str) {
    let body = r.assert_error(status, code);
    assert_eq!(
        body["request_id"].as_str(),
        Some(r.header("x-request-id").as_str()),
        "{body}"
    );
}

#[tokio::test]
async fn admin_errors_have_the_common_json_body_and_an_x_request_id() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), ""));
    let auth = format!("Bearer {TOKEN}");
    let auth = [("authorization", auth.as_str())];

    // Before: `{"error","message"}` only, and no X-Request-Id.
    assert_common_error(
        &send("GET", &gw.admin_url("/nope"), &auth, "").await,
        404,
        "not_found",
    );
    assert_common_error(&get(&gw.admin_url("/status")).await, 401, "unauthorized");
    let wrong_method = send("DELETE", &gw.admin_url("/status"), &auth, "").await;
    assert_common_error(&wrong_method, 405, "method_not_allowed");
    assert_eq!(wrong_method.header("allow"), "GET");
    let big = vec![b'x'; 65 * 1024];
    assert_common_error(
        &send("POST", &gw.admin_url("/cache/purge"), &auth, big).await,
        413,
        "payload_too_large",
    );
    assert_common_error(
        &send("POST", &gw.admin_url("/cache/purge"), &auth, "{}").await,
        400,
        "bad_request",
    );
    std::fs::write(gw.config_path(), "routes: [{name: x}]\n").expect("write");
    let rejected = send("POST", &gw.admin_url("/reload"), &auth, "").await;
    assert_common_error(&rejected, 400, "config_invalid");

    // A caller's valid request id is kept; an invalid one is replaced.
    let mine = send(
        "GET",
        &gw.admin_url("/nope"),
        &[auth[0], ("x-request-id", "ops-check-42")],
        "",
    )
    .await;
    assert_eq!(mine.json()["request_id"], "ops-check-42");
    let bad = send(
        "GET",
        &gw.admin_url("/nope"),
        &[auth[0], ("x-request-id", "a b")],
        "",
    )
    .await;
    assert_common_error(&bad, 404, "not_found");
    assert_ne!(bad.header("x-request-id"), "a b");
    // Successful answers carry the header too.
    let ok = admin_get(&gw, "/status").await;
    assert_eq!(ok.status, 200);
    assert!(!ok.header("x-request-id").is_empty());
}

#[tokio::test]
async fn the_openapi_document_lists_every_error_response_the_admin_api_gives() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), ""));
    let doc = admin_get(&gw, "/openapi.json").await.json();
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(
        error["required"],
        serde_json::json!(["error", "message", "request_id"])
    );
    let responses = &doc["components"]["responses"];
    for name in [
        "Unauthorized",
        "NotFound",
        "MethodNotAllowed",
        "PayloadTooLarge",
        "BadRequest",
        "ReloadFailed",
    ] {
        assert_eq!(
            responses[name]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{name}"
        );
        assert!(
            responses[name]["headers"]["X-Request-Id"].is_object(),
            "{name}"
        );
    }
    let auth = format!("Bearer {TOKEN}");
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let listed = &op["responses"];
            let public = op["security"] == serde_json::json!([]);
            assert_eq!(!public, listed["401"].is_object(), "{method} {path}: 401");
            assert!(listed["413"].is_object(), "{method} {path}: 413");
            // What the running API answers for another method is what the document says.
            let other = ["GET", "DELETE", "PUT"]
                .into_iter()
                .find(|m| ops.get(m.to_ascii_lowercase()).is_none())
                .expect("a method the path does not list");
            let r = send(other, &gw.admin_url(path), &[("authorization", &auth)], "").await;
            assert_common_error(&r, 405, "method_not_allowed");
        }
    }
    let reload = &doc["paths"]["/reload"]["post"]["responses"];
    assert_eq!(reload["500"]["$ref"], "#/components/responses/ReloadFailed");
    assert!(
        reload["400"]["content"]["application/json"]["schema"]["properties"]["request_id"]
            .is_object()
    );
    assert_eq!(
        doc["paths"]["/cache/purge"]["post"]["responses"]["400"]["$ref"],
        "#/components/responses/BadRequest"
    );
}
