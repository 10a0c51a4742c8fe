//! XML ↔ JSON over real sockets: a JSON client in front of an XML upstream, and malformed XML
//! from the upstream answered 502 with a clear body.

use crate::support::config::{Config, Route, Service};
use crate::support::{self, send, upstream, TestGateway};
use http_body_util::BodyExt;

fn config(url: &str) -> String {
    Config::new()
        .service(Service::new("legacy").target(url))
        .route(Route::new("r").service("legacy").policy(
            "transform",
            "{request: {to_xml: {root: request}}, response: {from_xml: true}}",
        ))
        .to_yaml()
}

/// An XML upstream: `/echo` answers `<got type="CONTENT-TYPE">BODY</got>` wrapped as XML,
/// `/broken` answers malformed XML, `/text` plain text.
async fn legacy() -> support::Upstream {
    upstream::http1("legacy")
        .route(
            "/echo",
            upstream::handler(|req| async move {
                let ct = req
                    .headers()
                    .get("content-type")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                // The received document, re-rooted so the reply shows what the upstream saw.
                let doc = String::from_utf8(body.to_vec()).unwrap();
                let inner = doc.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
                let reply = format!("<?xml version=\"1.0\"?><got type=\"{ct}\">{inner}</got>");
                let mut r = http::Response::new(upstream::full(reply));
                r.headers_mut()
                    .insert("content-type", "application/xml".parse().unwrap());
                r
            }),
        )
        .route(
            "/broken",
            upstream::handler(|_req| async {
                let mut r = http::Response::new(upstream::full("<order><id>7</order>"));
                r.headers_mut()
                    .insert("content-type", "text/xml".parse().unwrap());
                r
            }),
        )
        .route("/text", upstream::reply(200, "plain"))
        .spawn()
        .await
}

#[tokio::test]
async fn json_goes_up_as_xml_and_xml_comes_back_as_json() {
    let up = legacy().await;
    let gw = TestGateway::start(&config(&up.url()));
    let r = send(
        "POST",
        &gw.url("/echo"),
        &[("content-type", "application/json")],
        r#"{"order": {"@id": "7", "item": ["a & b", "c"], "note": null}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("content-length"), r.body.len().to_string());
    assert_eq!(
        r.json(),
        serde_json::json!({"got": {"@type": "application/xml; charset=utf-8",
            "order": {"@id": "7", "item": ["a & b", "c"], "note": null}}})
    );
    let r = send("GET", &gw.url("/text"), &[], "").await;
    assert_eq!(r.text(), "plain");
}

#[tokio::test]
async fn malformed_upstream_xml_is_a_502_saying_so() {
    let up = legacy().await;
    let gw = TestGateway::start(&config(&up.url()));
    let r = send("GET", &gw.url("/broken"), &[], "").await;
    let body = r.assert_error(502, "upstream_error");
    assert!(
        body["message"].as_str().unwrap().contains("malformed XML"),
        "{body}"
    );
}
