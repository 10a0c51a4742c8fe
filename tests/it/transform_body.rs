//! JSON body transforms and JSON Schema validation over real sockets: request and response
//! bodies rewritten by JSON pointer with Content-Length corrected, non-JSON and oversized
//! bodies passed on untouched (or 413 when so configured), malformed JSON, schema errors listed.

use crate::support::config::{Config, Route, Service};
use crate::support::{self, send, upstream, TestGateway};
use http_body_util::BodyExt;

/// An upstream that answers with what it received: the body verbatim, the request's
/// content type and length in headers.
async fn mirror() -> support::Upstream {
    upstream::http1("m")
        .route(
            "/",
            upstream::handler(|req| async move {
                let ct = req.headers().get("content-type").cloned();
                let cl = req.headers().get("content-length").cloned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut r = http::Response::new(upstream::full(body));
                if let Some(ct) = ct {
                    r.headers_mut().insert("content-type", ct);
                }
                if let Some(cl) = cl {
                    r.headers_mut().insert("x-seen-length", cl);
                }
                r
            }),
        )
        .spawn()
        .await
}

fn config(url: &str, transform: &str) -> String {
    Config::new()
        .service(Service::new("a").target(url))
        .route(
            Route::new("r")
                .path("/t/{id}")
                .service("a")
                .policy("transform", format!("\n{transform}")),
        )
        .to_yaml()
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn request_json_is_rewritten_by_pointer_and_its_length_corrected() {
    let up = mirror().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"          request:
            body:
              remove: [/password]
              rename: {/name: /user/name}
              set: {/meta/id: "${path.id}", /meta/v: 2}
              add: {/user/role: guest}
"#,
    ));
    let r = send(
        "POST",
        &gw.url("/t/42"),
        &[JSON],
        r#"{"name":"ann","password":"x","user":{"role":"admin"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"name": "ann", "role": "admin"}, "meta": {"id": "42", "v": 2}})
    );
    assert_eq!(r.header("x-seen-length"), r.body.len().to_string());
}

#[tokio::test]
async fn non_json_oversized_and_empty_bodies_pass_untouched_or_are_refused_as_configured() {
    let up = mirror().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "          request:\n            body: {set: {/x: 1}, max_bytes: 64}\n",
    ));
    let r = send(
        "POST",
        &gw.url("/t/1"),
        &[("content-type", "text/plain")],
        "{\"a\":1}",
    )
    .await;
    assert_eq!(r.text(), "{\"a\":1}");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(100));
    let r = send("POST", &gw.url("/t/1"), &[JSON], big.clone()).await;
    assert_eq!(r.text(), big);
    let r = send("GET", &gw.url("/t/1"), &[JSON], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "");
    // Malformed JSON with a JSON content type is the client's mistake.
    let r = send("POST", &gw.url("/t/1"), &[JSON], "{nope").await;
    let body = r.assert_error(400, "invalid_body");
    assert!(body["message"].as_str().unwrap().contains("not valid JSON"));

    let gw = TestGateway::start(&config(
        &up.url(),
        "          request:\n            body: {set: {/x: 1}, max_bytes: 64, on_oversize: reject}\n",
    ));
    let r = send("POST", &gw.url("/t/1"), &[JSON], big).await;
    r.assert_error(413, "payload_too_large");
    let r = send("POST", &gw.url("/t/1"), &[JSON], "{}").await;
    assert_eq!(r.json(), serde_json::json!({"x": 1}));
}

#[tokio::test]
async fn response_json_is_wrapped_and_trimmed_and_other_bodies_pass() {
    let up = upstream::http1("a")
        .route(
            "/t/json",
            upstream::handler(|_req| async {
                let mut r =
                    http::Response::new(upstream::full(r#"{"id":1,"secret":"s","items":[1,2]}"#));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }),
        )
        .route("/t/text", upstream::reply(200, "plain text"))
        .route(
            "/t/broken",
            upstream::handler(|_req| async {
                let mut r = http::Response::new(upstream::full("{\"a\":"));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "          response:\n            body: {remove: [/secret], wrap: data}\n",
    ));
    let r = send("GET", &gw.url("/t/json"), &[], "").await;
    assert_eq!(
        r.json(),
        serde_json::json!({"data": {"id": 1, "items": [1, 2]}})
    );
    assert_eq!(r.header("content-length"), r.body.len().to_string());
    let r = send("GET", &gw.url("/t/text"), &[], "").await;
    assert_eq!(r.text(), "plain text");
    let r = send("GET", &gw.url("/t/broken"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"a\":");
}

#[tokio::test]
async fn a_json_schema_rejects_bad_bodies_listing_every_error() {
    let up = mirror().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"          request:
            json_schema:
              type: object
              required: [name, age]
              properties:
                name: {type: string}
                age: {type: integer, minimum: 0}
"#,
    ));
    let r = send("POST", &gw.url("/t/1"), &[JSON], r#"{"age":-1}"#).await;
    let body = r.assert_error(400, "invalid_body");
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 2, "{body}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"name\" is a required property")),
        "{body}"
    );
    assert!(errors.iter().any(|e| e.starts_with("/age:")), "{body}");
    assert_eq!(up.hits(), 0);
    let r = send(
        "POST",
        &gw.url("/t/1"),
        &[("content-type", "text/plain")],
        "x",
    )
    .await;
    r.assert_error(400, "invalid_body");
    let r = send("POST", &gw.url("/t/1"), &[JSON], r#"{"name":"a","age":3}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"name": "a", "age": 3}));
}

#[tokio::test]
async fn an_invalid_schema_is_a_config_error() {
    let err = TestGateway::try_start(&config(
        "http://127.0.0.1:1",
        "          request:\n            json_schema: {type: 12}\n            body: {remove: [nope]}\n",
    ))
    .err()
    .expect("refused");
    assert!(
        err.contains(
            "routes[0].policies[0].transform.request.json_schema: not a valid JSON Schema"
        ),
        "{err}"
    );
    assert!(
        err.contains("routes[0].policies[0].transform.request.body.remove[0]"),
        "{err}"
    );
}
