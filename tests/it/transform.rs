//! The `transform` policy over real sockets: header operations with templates on the request
//! and the response, query operations, regex path rewrites, method override, and config errors
//! at their key paths.

use crate::support::config::{Config, Service};
use crate::support::{seen, send, upstream, TestGateway};

const CONSUMERS: &str = r#"
consumers:
  - name: alice
    id: c-001
    api_keys: ["alice-key-0123456789"]
"#;

fn config(url: &str, routes: &str) -> String {
    Config::new()
        .yaml(CONSUMERS)
        .service(Service::new("a").target(url))
        .yaml(&format!("routes:\n{routes}"))
        .to_yaml()
}

#[tokio::test]
async fn request_headers_are_added_set_appended_removed_and_renamed_with_templates() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"  - name: r
    match: {path: "/users/{id}"}
    service: a
    policies:
      - auth: {api_key: true}
      - transform:
          request:
            headers:
              remove: [x-debug]
              rename: {x-old: x-new}
              set: {x-user: "user-${path.id}", x-tenant: "${header.x-org}/${query.page}"}
              add: {x-present: "not used", x-absent: "${consumer.name}:${consumer.id}"}
              append: {x-multi: "two"}
          response:
            headers:
              set: {x-served-for: "${consumer.name}@${client_ip}", x-echo-rid: "${request_id}"}
              remove: [x-upstream-secret]
"#,
    ));
    let r = send(
        "GET",
        &gw.url("/users/42?page=3"),
        &[
            ("x-api-key", "alice-key-0123456789"),
            ("x-debug", "1"),
            ("x-old", "v1"),
            ("x-org", "acme"),
            ("x-user", "forged"),
            ("x-present", "client"),
            ("x-multi", "one"),
            ("x-request-id", "rid-123"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert!(seen(&echo, "x-debug").is_empty(), "{echo}");
    assert!(seen(&echo, "x-old").is_empty(), "{echo}");
    assert_eq!(seen(&echo, "x-new"), ["v1"]);
    assert_eq!(seen(&echo, "x-user"), ["user-42"]);
    assert_eq!(seen(&echo, "x-tenant"), ["acme/3"]);
    assert_eq!(seen(&echo, "x-present"), ["client"]);
    assert_eq!(seen(&echo, "x-absent"), ["alice:c-001"]);
    assert_eq!(seen(&echo, "x-multi"), ["one", "two"]);
    assert_eq!(r.header("x-served-for"), "alice@127.0.0.1");
    assert_eq!(r.header("x-echo-rid"), "rid-123");
}

#[tokio::test]
async fn a_template_naming_a_missing_header_or_query_renders_empty() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"  - name: r
    service: a
    policies:
      - transform:
          request:
            headers:
              set: {x-tenant: "t=${header.x-org};p=${query.page};c=${consumer.name};s=${jwt.claims.sub}"}
"#,
    ));
    let r = send("GET", &gw.url("/x"), &[], "").await;
    assert_eq!(seen(&r.json(), "x-tenant"), ["t=;p=;c=;s="]);
}

#[tokio::test]
async fn upstream_response_headers_are_changed_but_gateway_errors_are_not() {
    let up = upstream::http1("a")
        .route(
            "/secret",
            upstream::handler(|_req| async {
                let mut r = http::Response::new(upstream::full("ok"));
                r.headers_mut()
                    .insert("x-upstream-secret", "s3cr3t".parse().unwrap());
                r.headers_mut().insert("server", "old".parse().unwrap());
                r
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"  - name: r
    match: {methods: [GET]}
    service: a
    policies:
      - transform:
          response:
            headers:
              remove: [x-upstream-secret]
              rename: {server: x-origin-server}
              add: {x-powered-by: portico}
"#,
    ));
    let r = send("GET", &gw.url("/secret"), &[], "").await;
    assert_eq!(r.text(), "ok");
    assert_eq!(r.header("x-upstream-secret"), "");
    assert_eq!(r.header("server"), "");
    assert_eq!(r.header("x-origin-server"), "old");
    assert_eq!(r.header("x-powered-by"), "portico");
    let r = send("POST", &gw.url("/secret"), &[], "").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("x-powered-by"), "");
}

#[tokio::test]
async fn query_parameters_path_and_method_are_rewritten() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"  - name: r
    match: {path: "/api/{*rest}"}
    service: a
    policies:
      - transform:
          request:
            method: POST
            path: {regex: "^/api/(?<kind>[a-z]+)/(?<id>[0-9]+)$", replacement: "/v2/$kind/$id"}
            query:
              remove: [debug]
              rename: {p: page}
              set: {source: "gw-${path.rest}"}
              add: {limit: "10", page: "99"}
"#,
    ));
    let r = send(
        "GET",
        &gw.url("/api/user/7?p=2&debug=1&source=x&q=a%20b"),
        &[],
        "",
    )
    .await;
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["uri"], "/v2/user/7?page=2&q=a+b&source=gw-user%2F7&limit=10",
        "{echo}"
    );
    // A path the regex does not match keeps its path; the query operations still apply.
    let r = send("GET", &gw.url("/api/other"), &[], "").await;
    assert_eq!(
        r.json()["uri"],
        "/api/other?source=gw-other&limit=10&page=99"
    );
}

#[tokio::test]
async fn bad_transforms_are_reported_at_their_key_paths_all_at_once() {
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:1",
        r#"  - name: r
    match: {path: "/users/{id}"}
    service: a
    policies:
      - transform:
          request:
            method: "BAD METHOD"
            path: {regex: "([", replacement: "/x"}
            headers:
              add: {x-a: "${path.nope}", connection: "close"}
              set: {x-b: "${what.ever}"}
            query:
              set: {q: "${header.x"}
          response:
            headers:
              remove: ["bad header"]
"#,
    ))
    .err()
    .expect("config must be refused");
    for needle in [
        "routes[0].policies[0].transform.request.method",
        "routes[0].policies[0].transform.request.path.regex",
        "routes[0].policies[0].transform.request.headers.add.x-a: `${path.nope}`: the route's path has no capture `{nope}`",
        "routes[0].policies[0].transform.request.headers.add.connection",
        "routes[0].policies[0].transform.request.headers.set.x-b: unknown reference",
        "routes[0].policies[0].transform.request.query.set.q: unclosed",
        "routes[0].policies[0].transform.response.headers.remove[0]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
