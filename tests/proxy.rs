//! End-to-end proxying over real sockets: routing, rewrites, forwarding headers, request ids.

mod support;

use support::{get, send, upstream, TestGateway};

#[tokio::test]
async fn routes_by_prefix_and_strips_it() {
    let users = upstream::http1("users").spawn().await;
    let gw = TestGateway::start(&format!(
        r#"
services:
  users: {{targets: [{{url: "{}"}}]}}
routes:
  - name: users
    match: {{path: /api/users}}
    service: users
    rewrite: {{strip_prefix: /api}}
"#,
        users.url()
    ));
    let r = get(&gw.url("/api/users/7?full=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["upstream"], "users");
    assert_eq!(echo["uri"], "/users/7?full=1");
    assert_eq!(echo["headers"]["host"][0], users.addr.to_string());
    assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
    let rid = r.header("x-request-id");
    assert_eq!(echo["headers"]["x-request-id"][0], rid.as_str());
    assert_eq!(rid.len(), 36);

    get(&gw.url("/api/usersx"))
        .await
        .assert_error(404, "no_route");
}

#[tokio::test]
async fn client_request_id_is_kept_and_hop_headers_are_stripped() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!(
        "services:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: a}}\n",
        up.url()
    ));
    let r = send(
        "GET",
        &gw.url("/x"),
        &[
            ("x-request-id", "abc-123"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ],
        "",
    )
    .await;
    assert_eq!(r.header("x-request-id"), "abc-123");
    let echo = r.json();
    assert_eq!(echo["headers"]["x-request-id"][0], "abc-123");
    assert!(echo["headers"].get("x-private").is_none(), "{echo}");
    assert!(
        echo["headers"].get("proxy-authorization").is_none(),
        "{echo}"
    );
    assert!(echo["headers"].get("connection").is_none(), "{echo}");
}
