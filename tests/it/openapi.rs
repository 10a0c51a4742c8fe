//! The `openapi` policy and `portico openapi import` over real sockets: requests checked
//! against real public specs (the OpenAPI Petstore in 3.0 and 3.1, DigitalOcean's API for size)
//! and a spec written for the parameter styles and schema keywords the docs claim; 400s with
//! their `errors` list, strict 404/405, response checks (`log`, `enforce`), mock answers, the
//! admin API's copy of the spec, and import output that loads as it is.

use std::path::PathBuf;
use std::time::Instant;

use crate::support::config::{quoted, Config, Route, Service};
use crate::support::{get, send, upstream, TestGateway};

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/openapi/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// One route `api` (every path) on service `a` with an `openapi` policy on `spec` plus `extra`
/// keys (`, strict: true`).
fn config(url: &str, spec: &str, extra: &str) -> String {
    Config::new()
        .service(Service::new("a").target(url))
        .route(Route::new("api").service("a").policy(
            "openapi",
            format!("{{spec: {}{extra}}}", quoted(&fixture(spec))),
        ))
        .to_yaml()
}

async fn echo_gateway(spec: &str, extra: &str) -> (upstream::Upstream, TestGateway) {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), spec, extra));
    (up, gw)
}

/// Sends `body` as `application/json`.
async fn send_json(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: impl ToString,
) -> crate::support::Reply {
    let json = [("content-type", "application/json")];
    send(method, &gw.url(path), &json, body.to_string()).await
}

/// The `location`s of a 400's errors.
fn locations(r: &crate::support::Reply) -> Vec<String> {
    let body = r.assert_error(400, "invalid_request");
    body["errors"]
        .as_array()
        .expect("an errors list")
        .iter()
        .map(|e| e["location"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn petstore_30_passes_valid_requests_and_refuses_invalid_ones_with_their_errors() {
    let (up, gw) = echo_gateway("petstore-expanded.yaml", "").await;
    let r = get(&gw.url("/pets?limit=5&tags=a&tags=b")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&gw.url("/pets?limit=many")).await;
    let body = r.assert_error(400, "invalid_request");
    let e = &body["errors"][0];
    assert_eq!(e["location"], "query.limit");
    assert_eq!(e["pointer"], "/query/limit");
    assert!(e["message"].as_str().unwrap().contains("integer"), "{e}");
    assert!(!body["request_id"].as_str().unwrap().is_empty());

    let b = r#"{"name": "rex", "tag": "dog"}"#;
    assert_eq!(send_json(&gw, "POST", "/pets", b).await.status, 200);
    let b = r#"{"tag": 7}"#;
    let r = send_json(&gw, "POST", "/pets", b).await;
    let mut got = locations(&r);
    got.sort();
    assert_eq!(got, ["body", "body/tag"], "{}", r.text());
    let r = send_json(&gw, "POST", "/pets", "{not json").await;
    assert_eq!(locations(&r), ["body"]);
    let r = get(&gw.url("/pets/seven")).await;
    assert_eq!(locations(&r), ["path.id"]);
    assert_eq!(up.hits(), 2, "only the valid requests reach the upstream");
}

#[tokio::test]
async fn petstore_31_uses_json_schema_2020_12() {
    let (_up, gw) = echo_gateway("petstore-expanded-3.1.yaml", "").await;
    let ok = send_json(&gw, "POST", "/pets", r#"{"name": "rex", "tag": null}"#).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let r = send_json(&gw, "POST", "/pets", r#"{"name": 5}"#).await;
    assert_eq!(locations(&r), ["body/name"]);
}

#[tokio::test]
async fn a_body_is_required_and_its_media_type_checked() {
    let (_up, gw) = echo_gateway("petstore-expanded.yaml", "").await;
    let r = send("POST", &gw.url("/pets"), &[], "").await;
    assert_eq!(locations(&r), ["body"]);
    let r = send(
        "POST",
        &gw.url("/pets"),
        &[("content-type", "text/plain")],
        "rex",
    )
    .await;
    assert_eq!(locations(&r), ["header.content-type"]);
}

#[tokio::test]
async fn query_parameter_styles() {
    let (_up, gw) = echo_gateway("features.yaml", "").await;
    let ok = [
        "/search?limit=1",
        "/search?limit=1&tags=a&tags=b",
        "/search?limit=1&ids=1,2,3",
        "/search?limit=1&sp=1%202",
        "/search?limit=1&pp=1|2",
        "/search?limit=1&filter[min]=1&filter[max]=9",
        "/search?limit=1&q=%7B%22term%22%3A%22x%22%7D",
    ];
    for path in ok {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let bad = [
        ("/search", "query.limit"),
        ("/search?limit=0", "query.limit"),
        ("/search?limit=1&tags=a&tags=b&tags=c&tags=d", "query.tags"),
        ("/search?limit=1&ids=1,x", "query.ids/1"),
        ("/search?limit=1&sp=1%20x", "query.sp/1"),
        ("/search?limit=1&pp=x|2", "query.pp/0"),
        ("/search?limit=1&filter[min]=x", "query.filter/min"),
        ("/search?limit=1&filter[other]=1", "query.filter"),
        ("/search?limit=1&q=%7B%7D", "query.q"),
        ("/search?limit=1&q=nojson", "query.q"),
    ];
    for (path, location) in bad {
        let r = get(&gw.url(path)).await;
        assert_eq!(locations(&r), [location], "{path}");
    }
}

#[tokio::test]
async fn path_header_and_cookie_parameter_styles() {
    let (_up, gw) = echo_gateway("features.yaml", "").await;
    let trace = [("x-trace", "0a1b2c3d")];
    assert_eq!(
        send("GET", &gw.url("/items/3"), &trace, "").await.status,
        200
    );
    let r = send("GET", &gw.url("/items/0"), &trace, "").await;
    assert_eq!(locations(&r), ["path.id"]);
    let r = get(&gw.url("/items/3")).await;
    assert_eq!(locations(&r), ["header.x-trace"]);
    let r = send("GET", &gw.url("/items/3"), &[("x-trace", "nothex!!")], "").await;
    assert_eq!(locations(&r), ["header.x-trace"]);
    let cookie = [
        ("x-trace", "0a1b2c3d"),
        ("cookie", "theme=dark; session=12"),
    ];
    assert_eq!(
        send("GET", &gw.url("/items/3"), &cookie, "").await.status,
        200
    );
    let cookie = [("x-trace", "0a1b2c3d"), ("cookie", "session=abc")];
    let r = send("GET", &gw.url("/items/3"), &cookie, "").await;
    assert_eq!(locations(&r), ["cookie.session"]);
    let flags = [("x-flags", "true, false")];
    assert_eq!(
        send("GET", &gw.url("/search?limit=1"), &flags, "")
            .await
            .status,
        200
    );
    let r = send(
        "GET",
        &gw.url("/search?limit=1"),
        &[("x-flags", "true,maybe")],
        "",
    )
    .await;
    assert_eq!(locations(&r), ["header.x-flags/1"]);

    assert_eq!(get(&gw.url("/label/.1.2.3")).await.status, 200);
    assert_eq!(
        locations(&get(&gw.url("/label/.1.x")).await),
        ["path.ids/1"]
    );
    assert_eq!(locations(&get(&gw.url("/label/1")).await), ["path.ids"]);
    assert_eq!(get(&gw.url("/matrix/;x=1;y=2")).await.status, 200);
    assert_eq!(
        locations(&get(&gw.url("/matrix/;y=2")).await),
        ["path.point"]
    );
}

#[tokio::test]
async fn bodies_with_one_of_all_of_nullable_and_read_only() {
    let (_up, gw) = echo_gateway("features.yaml", "").await;
    let post = |b: &'static str| send_json(&gw, "POST", "/shapes", b);
    // `id` is readOnly: not required in a request; `label` is nullable (3.0).
    let r = post(r#"{"kind": "circle", "radius": 2, "label": null}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        post(r#"{"kind": "square", "side": 2, "label": "a"}"#)
            .await
            .status,
        200
    );
    // Neither a circle (radius > 0, exclusive) nor a square.
    let r = post(r#"{"kind": "circle", "radius": 0, "label": "a"}"#).await;
    assert_eq!(locations(&r), ["body"]);
    let r = post(r#"{"kind": "circle", "radius": 1}"#).await;
    assert_eq!(locations(&r), ["body"], "label is required");
    // A relative file `$ref` (common.yaml), readOnly `id` left out of a request body.
    let r = send_json(&gw, "PUT", "/items/1", r#"{"name": "a", "price": 1}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send_json(
        &gw,
        "PUT",
        "/items/1",
        r#"{"name": "a", "price": 1, "tags": ["x", "much-too-long"]}"#,
    )
    .await;
    assert_eq!(locations(&r), ["body/tags/1"]);
}

#[tokio::test]
async fn a_ref_cycle_validates_recursive_bodies() {
    let (_up, gw) = echo_gateway("features.yaml", "").await;
    let deep = r#"{"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}"#;
    assert_eq!(send_json(&gw, "POST", "/trees", deep).await.status, 200);
    let bad = r#"{"value": 1, "children": [{"value": 2, "children": [{"value": "x"}]}]}"#;
    let r = send_json(&gw, "POST", "/trees", bad).await;
    assert_eq!(locations(&r), ["body/children/0/children/0/value"]);
}

#[tokio::test]
async fn the_error_list_is_capped() {
    let (_up, gw) = echo_gateway("features.yaml", "").await;
    let many: Vec<String> = (0..30).map(|i| format!("\"{i}\"")).collect();
    let body = format!(r#"{{"value": 1, "children": [{}]}}"#, many.join(","));
    let r = send_json(&gw, "POST", "/trees", body).await;
    let json = r.assert_error(400, "invalid_request");
    assert_eq!(json["errors"].as_array().unwrap().len(), 10);
    assert!(
        json["message"].as_str().unwrap().contains("10 listed"),
        "{json}"
    );
}

#[tokio::test]
async fn a_body_over_the_route_limit_is_refused_before_it_is_read_whole() {
    let up = upstream::http1("a").spawn().await;
    let yaml = Config::new()
        .service(Service::new("a").target(up.url()))
        .route(
            Route::new("api")
                .service("a")
                .set("max_body_bytes", "64")
                .policy(
                    "openapi",
                    format!("{{spec: {}}}", quoted(&fixture("petstore-expanded.yaml"))),
                ),
        )
        .to_yaml();
    let gw = TestGateway::start(&yaml);
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(100));
    let r = send_json(&gw, "POST", "/pets", big).await;
    r.assert_error(413, "payload_too_large");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn strict_refuses_paths_and_methods_the_spec_does_not_describe() {
    let (up, gw) = echo_gateway("petstore.yaml", ", strict: true").await;
    get(&gw.url("/cats"))
        .await
        .assert_error(404, "unknown_operation");
    let r = send("PATCH", &gw.url("/pets"), &[], "").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), "GET, POST");
    assert_eq!(get(&gw.url("/pets")).await.status, 200);
    assert_eq!(up.hits(), 1);
    // Without strict, the same requests pass unchecked.
    let (up, gw) = echo_gateway("petstore.yaml", "").await;
    assert_eq!(get(&gw.url("/cats")).await.status, 200);
    assert_eq!(up.hits(), 1);
}

/// An upstream answering every request with `body` (JSON) and `status`.
async fn answering(status: u16, body: &'static str) -> upstream::Upstream {
    upstream::http1("a")
        .route(
            "/",
            upstream::handler(move |_req| async move {
                let mut r = http::Response::new(upstream::full(body));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }),
        )
        .spawn()
        .await
}

#[tokio::test]
async fn enforce_turns_a_mismatching_answer_into_a_502() {
    let up = answering(200, r#"{"name": "rex"}"#).await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "petstore-expanded.yaml",
        ", validate_responses: enforce",
    ));
    let r = get(&gw.url("/pets/1")).await;
    let body = r.assert_error(502, "upstream_contract_violation");
    assert!(body["message"].as_str().unwrap().contains("id"), "{body}");
    let good = answering(200, r#"{"id": 1, "name": "rex"}"#).await;
    let gw = TestGateway::start(&config(
        &good.url(),
        "petstore-expanded.yaml",
        ", validate_responses: enforce",
    ));
    let r = get(&gw.url("/pets/1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "rex");
}

#[tokio::test]
async fn log_passes_a_mismatching_answer_on_and_counts_it() {
    let up = answering(200, r#"[{"name": 1}]"#).await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "petstore-expanded.yaml",
        ", validate_responses: log",
    ));
    let r = get(&gw.url("/pets")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["name"], 1);
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("portico_openapi_response_mismatch_total{"))
        .unwrap_or_else(|| panic!("no mismatch series in:\n{metrics}"));
    assert!(line.contains("route=\"api\""), "{line}");
    assert!(line.contains("operation=\"findPets\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn mock_answers_from_examples_and_honours_prefer() {
    let (up, gw) = echo_gateway("features.yaml", ", mock: true").await;
    let trace = ("x-trace", "0a1b2c3d");
    let r = send(
        "GET",
        &gw.url("/items/1"),
        &[trace, ("prefer", "example=small")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "small");
    assert_eq!(r.header("content-type"), "application/json");
    let r = send(
        "GET",
        &gw.url("/items/1"),
        &[trace, ("prefer", "example=big")],
        "",
    )
    .await;
    assert_eq!(r.json()["price"], 99);
    let r = send(
        "GET",
        &gw.url("/items/1"),
        &[trace, ("prefer", "code=404")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "no such item");
    // No example: a minimal instance of the schema (required properties only).
    let r = send_json(&gw, "PUT", "/items/1", r#"{"name": "a", "price": 1}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"id": 0, "name": "x", "price": 0.0})
    );
    // Requests are still checked, and unknown operations are 404s.
    locations(&get(&gw.url("/items/1")).await);
    get(&gw.url("/nothing"))
        .await
        .assert_error(404, "unknown_operation");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn the_admin_api_serves_each_routes_spec() {
    let (_up, gw) = echo_gateway("petstore.yaml", "").await;
    let r = get(&gw.admin_url("/openapi/api")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["info"]["title"], "Swagger Petstore");
    let routes = get(&gw.admin_url("/routes")).await.json();
    assert_eq!(routes["routes"][0]["openapi"], "/openapi/api");
    get(&gw.admin_url("/openapi/nope"))
        .await
        .assert_error(404, "not_found");
}

#[test]
fn a_broken_spec_is_a_config_error_naming_its_file_and_pointer() {
    let yaml = config("http://127.0.0.1:9", "broken.yaml", "");
    let err = match TestGateway::try_start(&yaml) {
        Ok(_) => panic!("a broken spec was accepted"),
        Err(e) => e,
    };
    assert!(err.contains("routes[0].policies[0].openapi.spec"), "{err}");
    assert!(
        err.contains(
            "broken.yaml#/paths/~1things/post/requestBody/content/application~1json/schema/$ref"
        ),
        "{err}"
    );
    assert!(err.contains("points at nothing"), "{err}");
    let missing = config("http://127.0.0.1:9", "nope.yaml", "");
    let err = TestGateway::try_start(&missing).err().expect("an error");
    assert!(err.contains("nope.yaml: cannot read the file"), "{err}");
}

/// `portico openapi import SPEC ARGS`, run as the CLI: (stdout, stderr).
fn import_cli(spec: &str, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["openapi", "import", spec])
        .args(args)
        .output()
        .expect("run portico");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The same through the library (what the CLI prints: the config, and the untranslated lines
/// joined as on stderr).
fn import(spec: &str, service: Option<&str>, prefix: Option<&str>) -> (String, String) {
    let options = portico::openapi::import::Options {
        service: service.map(str::to_string),
        prefix: prefix.map(str::to_string),
    };
    let out = portico::openapi::import::import(std::path::Path::new(spec), &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stderr: String = out
        .untranslated
        .iter()
        .map(|l| format!("not translated: {l}\n"))
        .collect();
    stderr.push_str(&format!("{} routes\n", out.routes));
    (out.config, stderr)
}

/// What `portico validate` does with `yaml` in a file: the plan, or the errors as printed.
fn validate(yaml: &str) -> portico::config::Plan {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imported.yaml");
    std::fs::write(&path, yaml).unwrap();
    portico::config::load_file(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .plan
}

#[test]
fn import_of_the_petstore_writes_one_route_per_operation_that_validates() {
    let (yaml, stderr) = import_cli(&fixture("petstore.yaml"), &[]);
    assert!(yaml.contains("name: \"listPets\""), "{yaml}");
    assert!(yaml.contains("path: \"/pets/{petId}\""), "{yaml}");
    assert!(
        yaml.contains("url: \"http://petstore.swagger.io:80\""),
        "{yaml}"
    );
    // The server's base path goes upstream.
    assert!(yaml.contains("path: \"/v1/pets/{petId}\""), "{yaml}");
    assert!(stderr.contains("3 routes"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imported.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run portico");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (3 routes, 1 services)"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_imported_config_serves_and_checks_requests() {
    let up = upstream::http1("a").spawn().await;
    let target = format!("petstore={}", up.url());
    let (yaml, _) = import(
        &fixture("petstore-expanded.yaml"),
        Some(&target),
        Some("/api"),
    );
    let gw = TestGateway::start(&yaml);
    let r = get(&gw.url("/api/pets?limit=3")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream sees the spec's server path (`/v2`) instead of the prefix.
    assert_eq!(r.json()["uri"], "/v2/pets?limit=3");
    let r = get(&gw.url("/api/pets?limit=x")).await;
    assert_eq!(locations(&r), ["query.limit"]);
    assert_eq!(up.hits(), 1);
}

#[test]
fn import_maps_security_schemes_and_lists_what_it_cannot_translate() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("secure.yaml");
    std::fs::write(
        &spec,
        r#"
openapi: 3.1.0
info: {title: Secure, version: "1"}
servers: [{url: "https://api.example.com"}, {url: "https://eu.example.com"}]
security: [{key: []}]
paths:
  /a:
    get: {operationId: a, responses: {"204": {description: none}}}
  /b:
    get:
      operationId: b
      security: [{token: []}, {basic: []}]
      responses: {"204": {description: none}}
  /c:
    get: {operationId: c, security: [], responses: {"204": {description: none}}}
  /files/{name}.json:
    get: {responses: {"204": {description: none}}}
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: X-Key}
    token: {type: http, scheme: bearer, bearerFormat: JWT}
    basic: {type: http, scheme: basic}
    oauth: {type: oauth2, flows: {}}
    cookie: {type: apiKey, in: cookie, name: sid}
webhooks:
  ping: {post: {responses: {"200": {description: ok}}}}
"#,
    )
    .unwrap();
    let (yaml, stderr) = import(spec.to_str().unwrap(), None, None);
    assert!(yaml.contains("header: \"X-Key\""), "{yaml}");
    assert!(yaml.contains("- auth: {api_key: true}"), "{yaml}");
    assert!(
        yaml.contains("- auth: {jwt: [\"token\"], basic: true}"),
        "{yaml}"
    );
    assert!(yaml.contains("jwks_url:"), "{yaml}");
    for missing in [
        "security scheme `oauth`",
        "security scheme `cookie`",
        "servers beyond the first",
        "`webhooks`",
        "GET /files/{name}.json: a variable sharing its segment",
    ] {
        assert!(stderr.contains(missing), "{missing} not in:\n{stderr}");
        assert!(
            yaml.contains(missing),
            "{missing} not in the output's comments"
        );
    }
    validate(&yaml);
}

/// DigitalOcean's public API (659 operations across 2,900 files of relative `$ref`s).
fn digitalocean() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("tar")
        .args(["xzf", &fixture("digitalocean.tar.gz"), "-C"])
        .arg(dir.path())
        .status()
        .expect("tar")
        .success();
    assert!(ok);
    let spec = dir.path().join("specification/DigitalOcean-public.v2.yaml");
    (dir, spec)
}

#[test]
fn a_large_real_spec_imports_and_compiles() {
    let (_dir, spec) = digitalocean();
    let (yaml, stderr) = import(spec.to_str().unwrap(), None, None);
    let routes = yaml.matches("\n  - name: ").count();
    assert!(routes >= 600, "{routes} routes; {stderr}");
    let start = Instant::now();
    let plan = validate(&yaml);
    let took = start.elapsed();
    assert_eq!(plan.routes.len(), routes);
    let api = plan.routes[0]
        .policies
        .openapi
        .as_ref()
        .expect("the openapi policy");
    assert_eq!(api.operations.len(), 659);
    // One compile for every route inheriting the service's policy.
    assert!(plan
        .routes
        .iter()
        .all(|r| std::sync::Arc::ptr_eq(r.policies.openapi.as_ref().unwrap(), api)));
    eprintln!("digitalocean: {routes} routes, config load with the spec compiled in {took:?} (debug build)");
}

#[tokio::test]
async fn the_operation_is_in_the_access_log_and_on_the_operation_metrics() {
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {{enabled: true, format: json, path: {}}}\n{}",
        quoted(&log.display().to_string()),
        config(&up.url(), "petstore.yaml", "")
    );
    let gw = TestGateway::start(&yaml);
    assert_eq!(get(&gw.url("/pets/1")).await.status, 200);
    get(&gw.url("/pets?limit=x"))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(get(&gw.url("/other")).await.status, 200);
    let lines = crate::access_log::read_lines(&log, 3);
    assert_eq!(lines[0]["operation_id"], "showPetById");
    assert_eq!(lines[1]["operation_id"], "listPets");
    assert!(lines[2].get("operation_id").is_none(), "{}", lines[2]);
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    for series in [
        r#"portico_operation_requests_total{route="api",operation="showPetById",status_class="2xx"} 1"#,
        r#"portico_operation_requests_total{route="api",operation="listPets",status_class="4xx"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }
}

#[test]
fn explain_names_the_operation() {
    let yaml = crate::support::with_defaults(&config(
        "http://127.0.0.1:9",
        "petstore.yaml",
        ", strict: true",
    ));
    let plan = portico::config::load_str(&yaml, "t.yaml", &portico::config::expand::ProcessEnv)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = portico::explain::explain(&plan, "GET", "http://x/pets/7", &[]).unwrap();
    assert!(
        out.contains("openapi operation `showPetById` (GET /pets/{petId} in "),
        "{out}"
    );
    let out = portico::explain::explain(&plan, "DELETE", "http://x/pets", &[]).unwrap();
    assert!(
        out.contains("allows GET, POST on this path: answered 405"),
        "{out}"
    );
}

#[tokio::test]
async fn a_reload_reads_a_changed_spec_although_the_config_is_the_same() {
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    let write = |max: u32| {
        let text = format!(
            "openapi: 3.1.0\ninfo: {{title: t, version: '1'}}\npaths:\n  /n:\n    get:\n      \
             parameters: [{{name: n, in: query, schema: {{type: integer, maximum: {max}}}}}]\n      \
             responses: {{'200': {{description: ok}}}}\n"
        );
        std::fs::write(&spec, text).unwrap();
    };
    write(10);
    let yaml = Config::new()
        .service(Service::new("a").target(up.url()))
        .route(Route::new("api").service("a").policy(
            "openapi",
            format!("{{spec: {}}}", quoted(&spec.display().to_string())),
        ))
        .to_yaml();
    let gw = TestGateway::start(&yaml);
    assert_eq!(get(&gw.url("/n?n=5")).await.status, 200);
    write(1);
    gw.reload(&yaml).expect("reloaded");
    assert_eq!(locations(&get(&gw.url("/n?n=5")).await), ["query.n"]);
}
