//! The access log end to end: one JSON line per request with the documented fields, written by
//! the writer thread, never containing a credential.

use std::time::{Duration, Instant};

use crate::support::{send, upstream, TestGateway};

/// Waits (bounded) until the log file holds `n` lines; the writer flushes after each burst.
pub(crate) fn read_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= n {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} lines: {text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn each_request_writes_one_json_line_with_route_consumer_and_sizes_but_no_key() {
    let up = upstream::http1("orders").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        r#"
access_log: {{enabled: true, format: json, path: "{}"}}
consumers:
  - name: alice
    api_keys: ["alice-secret-key-1"]
services:
  orders: {{targets: [{{url: "{}"}}]}}
routes:
  - name: orders
    match: {{path: /orders}}
    service: orders
    policies: [{{auth: {{api_key: true}}}}]
"#,
        log.display(),
        up.url()
    ));
    let ok = send(
        "POST",
        &gw.url("/orders?x=1"),
        &[
            ("x-api-key", "alice-secret-key-1"),
            ("user-agent", "test \"agent\""),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        "hello",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let missing = send("GET", &gw.url("/nowhere"), &[], "").await;
    assert_eq!(missing.status, 404);

    let lines = read_lines(&log, 2);
    let first = &lines[0];
    assert_eq!(first["request_id"], ok.header("x-request-id").as_str());
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/orders?x=1");
    assert_eq!(first["route"], "orders");
    assert_eq!(first["service"], "orders");
    assert_eq!(first["consumer"], "alice");
    assert_eq!(first["upstream"], up.url().as_str());
    assert_eq!(first["status"], 200);
    assert_eq!(first["request_bytes"], 5);
    assert_eq!(first["response_bytes"], ok.body.len() as u64);
    assert_eq!(first["complete"], true);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["user_agent"], "test \"agent\"");
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    // The caller's trace, and the gateway's own span in it.
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let span = first["span_id"].as_str().unwrap();
    assert!(span.len() == 16 && span != "00f067aa0ba902b7", "{span}");
    let second = &lines[1];
    assert_eq!(second["status"], 404);
    // A request without a trace gets a new one.
    let new_trace = second["trace_id"].as_str().unwrap();
    assert!(new_trace.len() == 32 && new_trace != "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(second["error"], "no_route");
    assert_eq!(second["route"], serde_json::Value::Null);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("alice-secret-key-1"),
        "the API key leaked into the log: {text}"
    );
    gw.shutdown();
}

#[tokio::test]
async fn common_log_format_is_one_line_per_request() {
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "access_log: {{enabled: true, format: common, path: \"{}\"}}\nservices:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: a}}\n",
        log.display(),
        up.url()
    ));
    let r = send("GET", &gw.url("/x?y=1"), &[], "").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no log line");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    let (common, trace) = line.rsplit_once(" trace_id=").expect("a trace id");
    assert!(
        common.ends_with(&format!("\"GET /x?y=1 HTTP/1.1\" 200 {}", r.body.len())),
        "{line}"
    );
    assert_eq!(trace.len(), 32, "{line}");
    gw.shutdown();
}

#[tokio::test]
async fn a_huge_path_query_or_header_is_cut_at_2_kib_each_in_the_log_line() {
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "limits: {{max_uri_bytes: 60000, max_header_bytes: 60000}}\naccess_log: {{enabled: true, format: json, path: \"{}\"}}\nservices:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: r, service: a}}\n",
        log.display(),
        up.url()
    ));
    let path = format!("/{}", "p".repeat(3000));
    let query = "q".repeat(46_000);
    let agent = "u".repeat(10_000);
    let r = send(
        "GET",
        &gw.url(&format!("{path}?{query}")),
        &[("user-agent", agent.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let text = {
        read_lines(&log, 1);
        std::fs::read_to_string(&log).unwrap()
    };
    let line = text.lines().next().unwrap();
    assert!(line.len() < 8 * 1024, "a {} byte log line", line.len());
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let logged = v["path"].as_str().unwrap();
    let (p, q) = logged.split_once('?').expect("path and query");
    assert_eq!(p, format!("{}...[truncated]", &path[..2048]));
    assert_eq!(q, format!("{}...[truncated]", &query[..2048]));
    assert_eq!(
        v["user_agent"].as_str().unwrap(),
        format!("{}...[truncated]", &agent[..2048])
    );
}
