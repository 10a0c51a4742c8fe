//! End-to-end proxying over real sockets: routing, rewrites, forwarding headers, request ids.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::config::{Config, Service};
use crate::support::{self, get, raw, send, upstream, Reply, TestGateway};

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

// === helpers ===

/// A config with one service `a` at `url` and the given routes (YAML list items, indented).
fn one_service(url: &str, routes: &str) -> String {
    Config::new()
        .service(Service::new("a").target(url))
        .yaml(&format!("routes:\n{routes}"))
        .to_yaml()
}

/// The JSON body of a raw HTTP/1.1 response (everything after the head).
fn raw_json(response: &str) -> serde_json::Value {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

// === routing ===

#[tokio::test]
async fn host_routing_prefers_exact_then_wildcard_then_any_host() {
    let exact = upstream::http1("exact").spawn().await;
    let wild = upstream::http1("wild").spawn().await;
    let any = upstream::http1("any").spawn().await;
    let gw = TestGateway::start(&format!(
        r#"
services:
  exact: {{targets: [{{url: "{}"}}]}}
  wild: {{targets: [{{url: "{}"}}]}}
  any: {{targets: [{{url: "{}"}}]}}
routes:
  - {{name: any, service: any}}
  - {{name: wild, service: wild, match: {{hosts: ["*.example.com"]}}}}
  - {{name: exact, service: exact, match: {{hosts: ["api.example.com"]}}}}
"#,
        exact.url(),
        wild.url(),
        any.url()
    ));
    let cases = [
        ("api.example.com", "exact"),
        ("API.Example.COM:8080", "exact"),
        ("shop.example.com", "wild"),
        ("a.b.example.com", "wild"),
        ("example.com", "any"),
        ("api.example.org", "any"),
        ("127.0.0.1", "any"),
    ];
    for (host, want) in cases {
        let r = send("GET", &gw.url("/p"), &[("host", host)], "").await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.json()["upstream"], want, "Host: {host}");
    }
}

#[tokio::test]
async fn wrong_method_gets_405_with_allow_header_and_json_body() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(
        &up.url(),
        "  - {name: read, service: a, match: {path: /items, methods: [GET, POST]}}\n  - {name: write, service: a, match: {path: /items, methods: [PUT]}}\n",
    ));
    let r = send("DELETE", &gw.url("/items/3"), &[], "").await;
    let body = r.assert_error(405, "method_not_allowed");
    let mut allow: Vec<String> = r
        .header("allow")
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    allow.sort();
    assert_eq!(
        allow,
        ["GET", "POST", "PUT"],
        "Allow: {}",
        r.header("allow")
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(body["request_id"], r.header("x-request-id").as_str());
    assert_eq!(up.hits(), 0, "a 405 must not reach the upstream");
    // The allowed methods still pass; an unknown path is a 404, not a 405.
    assert_eq!(send("PUT", &gw.url("/items/3"), &[], "x").await.status, 200);
    get(&gw.url("/other")).await.assert_error(404, "no_route");
}

#[tokio::test]
async fn header_matchers_exact_present_and_regex() {
    let [exact, present, regex, fallback] = [
        upstream::http1("exact").spawn().await,
        upstream::http1("present").spawn().await,
        upstream::http1("regex").spawn().await,
        upstream::http1("fallback").spawn().await,
    ];
    let gw = TestGateway::start(&format!(
        r#"
services:
  exact: {{targets: [{{url: "{}"}}]}}
  present: {{targets: [{{url: "{}"}}]}}
  regex: {{targets: [{{url: "{}"}}]}}
  fallback: {{targets: [{{url: "{}"}}]}}
routes:
  - {{name: exact, service: exact, match: {{path: /h, headers: {{x-tenant: acme}}}}}}
  - {{name: present, service: present, match: {{path: /h, headers: {{x-debug: {{present: true}}}}}}}}
  - {{name: regex, service: regex, match: {{path: /h, headers: {{x-version: {{regex: "^v[0-9]+$"}}}}}}}}
  - {{name: fallback, service: fallback, match: {{path: /h}}}}
"#,
        exact.url(),
        present.url(),
        regex.url(),
        fallback.url()
    ));
    let cases: [(&[(&str, &str)], &str); 8] = [
        (&[("x-tenant", "acme")], "exact"),
        (&[("x-tenant", "ACME")], "fallback"),
        (&[("x-tenant", "acme-corp")], "fallback"),
        (&[("x-debug", "")], "present"),
        (&[("x-debug", "1")], "present"),
        (&[("x-version", "v12")], "regex"),
        (&[("x-version", "v12-beta")], "fallback"),
        (&[], "fallback"),
    ];
    for (headers, want) in cases {
        let r = send("GET", &gw.url("/h/x"), headers, "").await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        assert_eq!(r.json()["upstream"], want, "headers {headers:?}");
    }
}

// === rewrites ===

#[tokio::test]
async fn template_path_with_rewrite_path_uses_captures() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(
        &up.url(),
        "  - {name: user, service: a, match: {path: \"/users/{id}\"}, rewrite: {path: \"/v2/accounts/{id}/profile\"}}\n  - {name: file, service: a, match: {path: \"/files/{*rest}\"}, rewrite: {path: \"/blobs/{rest}\"}}\n",
    ));
    let r = get(&gw.url("/users/42")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uri"], "/v2/accounts/42/profile");
    let r = get(&gw.url("/files/a/b/c.txt")).await;
    assert_eq!(r.json()["uri"], "/blobs/a/b/c.txt");
    // A template matches whole segments only.
    get(&gw.url("/users/42/extra"))
        .await
        .assert_error(404, "no_route");
}

#[tokio::test]
async fn replace_prefix_swaps_the_matched_prefix() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(
        &up.url(),
        "  - {name: v1, service: a, match: {path: /api/v1}, rewrite: {replace_prefix: /internal/v2}}\n  - {name: root, service: a, match: {path: /legacy}, rewrite: {replace_prefix: /}}\n",
    ));
    let cases = [
        ("/api/v1/orders/9", "/internal/v2/orders/9"),
        ("/api/v1", "/internal/v2"),
        ("/api/v1/", "/internal/v2/"),
        ("/legacy/x/y", "/x/y"),
        ("/legacy", "/"),
    ];
    for (path, want) in cases {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["uri"], want, "{path}");
    }
}

#[tokio::test]
async fn query_string_is_preserved_through_every_rewrite() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(
        &up.url(),
        "  - {name: strip, service: a, match: {path: /s}, rewrite: {strip_prefix: /s}}\n  - {name: replace, service: a, match: {path: /r}, rewrite: {replace_prefix: /new}}\n  - {name: tpl, service: a, match: {path: \"/t/{id}\"}, rewrite: {path: \"/items/{id}\"}}\n  - {name: none, service: a, match: {path: /n}}\n",
    ));
    let q = "a=1&b=%20x%26y&c&d=%2F..%2F&e=";
    let cases = [
        ("/s/x", "/x"),
        ("/s", "/"),
        ("/r/x", "/new/x"),
        ("/t/7", "/items/7"),
        ("/n/x", "/n/x"),
    ];
    for (path, want) in cases {
        let r = get(&gw.url(&format!("{path}?{q}"))).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["uri"], format!("{want}?{q}"), "{path}");
    }
}

// === forwarding headers ===

#[tokio::test]
async fn preserve_host_sends_the_client_host_upstream() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(
        &up.url(),
        "  - {name: keep, service: a, match: {path: /keep}, preserve_host: true}\n  - {name: rewrite, service: a, match: {path: /rewrite}}\n",
    ));
    let host = [("host", "shop.example.com:8443")];
    let r = send("GET", &gw.url("/keep"), &host, "").await;
    assert_eq!(
        r.json()["headers"]["host"],
        serde_json::json!(["shop.example.com:8443"])
    );
    let r = send("GET", &gw.url("/rewrite"), &host, "").await;
    assert_eq!(
        r.json()["headers"]["host"],
        serde_json::json!([up.addr.to_string()])
    );
}

#[tokio::test]
async fn x_forwarded_proto_and_host_are_set() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(&up.url(), "  - {name: all, service: a}\n"));
    // A client-supplied value is replaced, not passed through.
    let r = send(
        "GET",
        &gw.url("/x"),
        &[
            ("host", "api.example.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
        "",
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!(["api.example.com"])
    );
    // Without an explicit Host the client's own Host (the gateway address) is reported.
    let h = get(&gw.url("/x")).await.json()["headers"].clone();
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!([gw.addr.to_string()])
    );
}

#[tokio::test]
async fn forwarded_and_via_are_added_when_enabled() {
    let up = upstream::http1("a").spawn().await;
    let yaml = format!(
        "forwarding: {{forwarded: true, via: true}}\n{}",
        one_service(&up.url(), "  - {name: all, service: a}\n")
    );
    let gw = TestGateway::start(&yaml);
    let r = send("GET", &gw.url("/x"), &[("host", "api.example.com")], "").await;
    let h = &r.json()["headers"];
    assert_eq!(
        h["forwarded"],
        serde_json::json!(["for=127.0.0.1;host=\"api.example.com\";proto=http"])
    );
    assert_eq!(h["via"], serde_json::json!(["1.1 portico"]));
    assert_eq!(r.header("via"), "1.1 portico", "Via on the response too");
    // The defaults add neither.
    let plain = TestGateway::start(&one_service(&up.url(), "  - {name: all, service: a}\n"));
    let r = get(&plain.url("/x")).await;
    let h = &r.json()["headers"];
    assert!(h.get("forwarded").is_none(), "{h}");
    assert!(h.get("via").is_none(), "{h}");
    assert!(r.headers.get("via").is_none());
}

#[tokio::test]
async fn a_host_header_trying_to_inject_forwarded_parameters_is_refused() {
    let up = upstream::http1("a").spawn().await;
    let yaml = format!(
        "forwarding: {{forwarded: true}}\n{}",
        one_service(&up.url(), "  - {name: all, service: a}\n")
    );
    let gw = TestGateway::start(&yaml);
    // A Host that tries to close the quoted string and add its own `for=`: not a valid
    // authority, so it never reaches `Forwarded` (whose host is escaped all the same).
    let r = support::raw_reply(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: evil\";for=6.6.6.6;by=\"\\\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.assert_error(400, "bad_request");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn x_forwarded_for_appends_to_the_client_chain() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(&up.url(), "  - {name: all, service: a}\n"));
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("x-forwarded-for", "203.0.113.7, 10.0.0.1")],
        "",
    )
    .await;
    assert_eq!(
        r.json()["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.7, 10.0.0.1, 127.0.0.1"])
    );
    // Several X-Forwarded-For lines are one list, in order.
    let r = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 10.0.0.2\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        raw_json(&r)["headers"]["x-forwarded-for"],
        serde_json::json!(["198.51.100.1, 10.0.0.2, 127.0.0.1"])
    );
}

// === upstream connections ===

#[tokio::test]
async fn client_connection_close_is_not_forwarded_and_upstream_connection_is_reused() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(&up.url(), "  - {name: all, service: a}\n"));
    for i in 0..6 {
        // Alternate byte-exact `Connection: close` requests, each on its own client connection,
        // with requests from a fresh hyper client (also a new client connection each time).
        let echo = if i % 2 == 0 {
            let req = format!("GET /c/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            raw_json(&raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await)
        } else {
            let r = send(
                "GET",
                &gw.url(&format!("/c/{i}")),
                &[("connection", "close")],
                "",
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        };
        assert_eq!(echo["uri"], format!("/c/{i}"));
        assert!(echo["headers"].get("connection").is_none(), "{echo}");
    }
    assert_eq!(up.hits(), 6);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "every request should reuse the one pooled upstream connection"
    );
}

#[tokio::test]
async fn sequential_requests_share_one_pooled_upstream_connection() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&one_service(&up.url(), "  - {name: all, service: a}\n"));
    let client = support::client();
    for i in 0..10 {
        let req = http::Request::get(gw.url(&format!("/p/{i}")))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = Reply::read(client.request(req).await.expect("request")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["uri"], format!("/p/{i}"));
    }
    assert_eq!(up.hits(), 10);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstream_connection_close_is_honoured_and_not_reused() {
    let up = upstream::http1("a")
        .route(
            "/close",
            upstream::handler(|_req| async {
                let mut r = http::Response::new(upstream::full("bye"));
                r.headers_mut()
                    .insert("connection", http::HeaderValue::from_static("close"));
                r
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&one_service(&up.url(), "  - {name: all, service: a}\n"));
    for i in 0..5 {
        let r = get(&gw.url("/close")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "bye");
        assert!(
            r.headers.get("connection").is_none(),
            "hop-by-hop header passed back"
        );
    }
    // Each closed connection was replaced, never handed out again.
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn an_http_1_0_upstream_answer_goes_to_the_client_as_http_1_1_on_a_kept_alive_connection() {
    use tokio::io::AsyncWriteExt;
    let up = support::upstream::raw_tcp(|mut s, _| async move {
        // HTTP/1.0 without keep-alive: one answer, then the upstream closes.
        if support::upstream::read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let gw = TestGateway::start(&one_service(
        &format!("http://{}", up.addr),
        "  - {name: all, service: a}\n",
    ));
    // Two requests on one client connection: both answered, as HTTP/1.1.
    let text = raw(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text:?}");
    assert!(!text.contains("HTTP/1.0"), "{text:?}");
}

/// Reads one answer with a `content-length` body from `s`; its head in lower case.
async fn read_one_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text[..end].to_string();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(n > 0, "closed before a whole answer: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Whether the server closes `s` (end of stream or reset) within `wait`, reading nothing.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => false,
    }
}

#[tokio::test]
async fn at_shutdown_a_kept_alive_connection_is_told_to_close_and_an_idle_one_is_closed_after_the_window(
) {
    use tokio::io::AsyncWriteExt;
    let up = upstream::http1("up").spawn().await;
    for engine in ["portico", "hyper"] {
        // A grace far longer than the one-second window: a connection closed within a few
        // seconds was closed by the drain, not by the end of the grace period.
        let gw = TestGateway::start(&format!(
            "http1: {{engine: {engine}}}\ntimeouts: {{header_read: 30s, shutdown_grace: 30s}}\n{}",
            one_service(&up.url(), "  - {name: all, service: a}\n")
        ));
        let request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut busy = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let mut idle = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        for s in [&mut busy, &mut idle] {
            s.write_all(request).await.expect("write");
            let head = read_one_answer(s).await;
            assert!(head.starts_with("http/1.1 200"), "{engine}: {head}");
            assert!(!head.contains("connection: close"), "{engine}: {head}");
        }

        gw.runtime().begin_shutdown();
        // The listener closes once the accept loop has passed the order on: connects are
        // refused from then on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{engine}: still accepting"
            );
            tokio::task::yield_now().await;
        }

        // Within the window, a request on a kept-alive connection is answered, with the
        // answer saying the connection closes, and it does.
        busy.write_all(request).await.expect("write");
        let head = read_one_answer(&mut busy).await;
        assert!(head.starts_with("http/1.1 200"), "{engine}: {head}");
        assert!(head.contains("connection: close"), "{engine}: {head}");
        assert!(
            closed_within(&mut busy, Duration::from_secs(5)).await,
            "{engine}: the connection stayed open after its last answer"
        );
        // A connection that stays idle is closed after the window, long before the grace ends.
        assert!(
            closed_within(&mut idle, Duration::from_secs(5)).await,
            "{engine}: the idle connection was not closed after the window"
        );
    }
}
