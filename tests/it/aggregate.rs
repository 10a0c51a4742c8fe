//! Aggregation over real sockets: concurrent calls merged into one JSON answer, identity headers
//! forwarded, optional calls failing (timeout, 500, non-JSON) as a partial answer, a required
//! call failing as 502 naming it; calls reading earlier answers (`${calls.NAME...}`), a client
//! disconnect cancelling the calls in flight, and the services' retries and breakers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::{self, send, upstream, TestGateway};

fn json(body: &'static str) -> upstream::Handler {
    upstream::handler(move |req| async move {
        let consumer = req
            .headers()
            .get("x-consumer-name")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = body
            .replace("CONSUMER", &consumer)
            .replace("URI", &req.uri().to_string());
        let mut r = http::Response::new(upstream::full(body));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    })
}

async fn backends() -> Vec<support::Upstream> {
    let users = upstream::http1("users")
        .route(
            "/users/",
            json(r#"{"id": 7, "name": "Ann", "secret": "x", "seen_by": "CONSUMER"}"#),
        )
        .spawn()
        .await;
    let orders = upstream::http1("orders")
        .route("/orders", json(r#"{"orders": [{"id": 1}], "uri": "URI"}"#))
        .spawn()
        .await;
    let flaky = upstream::http1("flaky")
        .route(
            "/slow",
            upstream::handler(|_req| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                http::Response::new(upstream::full("{}"))
            }),
        )
        .route("/boom", upstream::reply(500, "{\"e\":1}"))
        .route("/text", upstream::reply(200, "not json"))
        .spawn()
        .await;
    vec![users, orders, flaky]
}

fn config(b: &[support::Upstream], extra_call: &str) -> String {
    // `extra_call` is indented as a list item under `calls:` here (12 spaces).
    let aggregate = format!(
        r#"
          calls:
            - {{name: user, service: users, path: "/users/${{path.id}}", pick: [id, name, seen_by]}}
            - {{name: orders, service: orders, path: "/orders?user=${{path.id}}&by=${{consumer.name}}", merge: true}}
{extra_call}"#
    );
    Config::new()
        .consumer(Consumer::new("app").api_key("app-key-0123456789"))
        .service(Service::new("users").target(b[0].url()))
        .service(Service::new("orders").target(b[1].url()))
        .service(Service::new("flaky").target(b[2].url()))
        .route(
            Route::new("profile")
                .path("/api/profile/{id}")
                .service("users")
                .policy("auth", "{api_key: true}")
                .policy("aggregate", aggregate),
        )
        .to_yaml()
}

const KEY: (&str, &str) = ("x-api-key", "app-key-0123456789");

#[tokio::test]
async fn calls_are_merged_with_identity_forwarded_and_fields_picked() {
    let b = backends().await;
    let gw = TestGateway::start(&config(&b, ""));
    let r = send("GET", &gw.url("/api/profile/7"), &[KEY], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"id": 7, "name": "Ann", "seen_by": "app"},
                           "orders": [{"id": 1}], "uri": "/orders?user=7&by=app"})
    );
    assert_eq!(r.header("x-portico-partial"), "");
    // Auth still guards the route.
    send("GET", &gw.url("/api/profile/7"), &[], "")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn optional_failures_give_a_partial_answer_without_waiting_past_their_timeout() {
    let b = backends().await;
    let gw = TestGateway::start(&config(
        &b,
        "            - {name: slow, service: flaky, path: /slow, timeout: 200ms, required: false}\n            - {name: boom, service: flaky, path: /boom, required: false}\n            - {name: text, service: flaky, path: /text, required: false}\n",
    ));
    let started = Instant::now();
    let r = send("GET", &gw.url("/api/profile/7"), &[KEY], "").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the slow call"
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-portico-partial"), "true");
    let v = r.json();
    assert_eq!(v["user"]["name"], "Ann");
    assert!(
        v["slow"].is_null() && v["boom"].is_null() && v["text"].is_null(),
        "{v}"
    );
    let errors = v["errors"].as_array().unwrap();
    let text = serde_json::to_string(errors).unwrap();
    assert_eq!(errors.len(), 3, "{text}");
    assert!(text.contains("did not answer within"), "{text}");
    assert!(text.contains("answered 500"), "{text}");
    assert!(text.contains("not JSON"), "{text}");
}

#[tokio::test]
async fn a_required_failure_is_a_502_naming_the_call() {
    let b = backends().await;
    let gw = TestGateway::start(&config(
        &b,
        "            - {name: boom, service: flaky, path: /boom}\n",
    ));
    let r = send("GET", &gw.url("/api/profile/7"), &[KEY], "").await;
    let body = r.assert_error(502, "upstream_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("aggregate call `boom` failed"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_calls_are_config_errors() {
    let b = backends().await;
    let err = TestGateway::try_start(&config(
        &b,
        "            - {name: user, service: nope, path: \"x/${path.nope}\"}\n",
    ))
    .err()
    .expect("refused");
    for needle in [
        "routes[0].policies[1].aggregate.calls[2].service",
        "routes[0].policies[1].aggregate.calls[2].path: must start with",
        "routes[0].policies[1].aggregate.calls[2].name",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

// === Sequential steps ===

/// An upstream answering with `body` and recording every request's URI and `x-user-name`.
async fn recording(
    name: &str,
    prefix: &str,
    body: &'static str,
) -> (support::Upstream, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let up = upstream::http1(name)
        .route(
            prefix,
            upstream::handler(move |req| {
                let who = req
                    .headers()
                    .get("x-user-name")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                log.lock().unwrap().push(format!("{} {who}", req.uri()));
                async move {
                    let mut r = http::Response::new(upstream::full(body));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    r.headers_mut().insert("etag", "\"v7\"".parse().unwrap());
                    r
                }
            }),
        )
        .spawn()
        .await;
    (up, seen)
}

fn chain_config(users: &str, orders: &str, products: &str, calls: &str) -> String {
    // `calls` are indented as list items under `calls:` here (12 spaces).
    Config::new()
        .service(Service::new("users").target(users))
        .service(Service::new("orders").target(orders))
        .service(Service::new("products").target(products))
        .route(
            Route::new("profile")
                .path("/api/profile/{id}")
                .service("users")
                .policy("aggregate", format!("          calls:\n{calls}")),
        )
        .to_yaml()
}

#[tokio::test]
async fn a_call_reads_an_earlier_answer_and_a_chain_runs_in_order() {
    let (users, _) = recording(
        "users",
        "/users/",
        r#"{"id": "u 7/x", "name": "Ann", "team": {"lead": "Bo"}}"#,
    )
    .await;
    let (orders, orders_seen) = recording(
        "orders",
        "/orders",
        r#"{"orders": [{"sku": 41}, {"sku": 42}]}"#,
    )
    .await;
    let (products, products_seen) =
        recording("products", "/products/", r#"{"sku": 42, "title": "Lamp"}"#).await;
    // Declared out of order on purpose: the order comes from the references.
    let calls = r#"            - {name: product, service: products, path: "/products/${calls.orders.body.orders.1.sku}"}
            - name: orders
              service: orders
              path: "/orders?user=${calls.user.body.id}&lead=${calls.user.body.team.lead}&tag=${calls.user.headers.etag}&s=${calls.user.status}"
              headers: {x-user-name: "${calls.user.body.name}"}
            - {name: user, service: users, path: "/users/${path.id}"}
"#;
    let gw = TestGateway::start(&chain_config(
        &users.url(),
        &orders.url(),
        &products.url(),
        calls,
    ));
    let r = send("GET", &gw.url("/api/profile/7"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["product"]["title"], "Lamp", "{v}");
    assert_eq!(v["user"]["name"], "Ann", "{v}");
    // Values from answers are percent-encoded in the path; headers carry them as they are.
    assert_eq!(
        *orders_seen.lock().unwrap(),
        vec!["/orders?user=u%207%2Fx&lead=Bo&tag=%22v7%22&s=200 Ann".to_string()]
    );
    assert_eq!(
        *products_seen.lock().unwrap(),
        vec!["/products/42 ".to_string()]
    );
}

#[tokio::test]
async fn calls_without_references_still_run_at_the_same_time() {
    // Each of the two calls is answered only once both have arrived: run one after the other,
    // the first would never be answered and the route's timeout would end the request.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let b = Arc::clone(&barrier);
    let both = upstream::http1("both")
        .route(
            "/",
            upstream::handler(move |_req| {
                let b = Arc::clone(&b);
                async move {
                    b.wait().await;
                    http::Response::new(upstream::full("{\"ok\": true}"))
                }
            }),
        )
        .spawn()
        .await;
    let (after, after_seen) = recording("after", "/", r#"{"done": 1}"#).await;
    let calls = r#"            - {name: a, service: users, path: /a}
            - {name: b, service: orders, path: /b}
            - {name: c, service: products, path: "/c?a=${calls.a.body.ok}&b=${calls.b.body.ok}"}
"#;
    let mut yaml = chain_config(&both.url(), &both.url(), &after.url(), calls);
    yaml = yaml.replace(
        "    service: users\n",
        "    service: users\n    timeout: 5s\n",
    );
    let gw = TestGateway::start(&yaml);
    let r = send("GET", &gw.url("/api/profile/1"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"a": {"ok": true}, "b": {"ok": true}, "c": {"done": 1}})
    );
    assert_eq!(
        *after_seen.lock().unwrap(),
        vec!["/c?a=true&b=true ".to_string()]
    );
}

#[tokio::test]
async fn a_failed_or_missing_dependency_fails_its_dependents_without_calling_them() {
    let b = backends().await;
    let (orders, orders_seen) = recording("orders", "/", r#"{"n": 1}"#).await;
    let calls = r#"            - {name: user, service: products, path: /boom, required: false}
            - {name: orders, service: orders, path: "/o?u=${calls.user.body.id}", required: false}
            - {name: me, service: users, path: /users/7}
            - {name: more, service: orders, path: "/m?x=${calls.me.body.nope}", required: false}
"#;
    let gw = TestGateway::start(&chain_config(
        &b[0].url(),
        &orders.url(),
        &b[2].url(),
        calls,
    ));
    let r = send("GET", &gw.url("/api/profile/7"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-portico-partial"), "true");
    let v = r.json();
    assert!(
        v["user"].is_null() && v["orders"].is_null() && v["more"].is_null(),
        "{v}"
    );
    assert_eq!(v["me"]["name"], "Ann");
    let errors = serde_json::to_string(&v["errors"]).unwrap();
    assert!(errors.contains("answered 500"), "{errors}");
    assert!(errors.contains("not called: `user` failed"), "{errors}");
    assert!(
        errors.contains("not called: ${calls.me.body.nope} has no value"),
        "{errors}"
    );
    assert!(
        orders_seen.lock().unwrap().is_empty(),
        "a dependent call was sent"
    );

    // A required dependent of a failed call fails the whole response, naming it.
    let calls = r#"            - {name: user, service: products, path: /boom, required: false}
            - {name: orders, service: orders, path: "/o?u=${calls.user.body.id}"}
"#;
    let gw = TestGateway::start(&chain_config(
        &b[0].url(),
        &orders.url(),
        &b[2].url(),
        calls,
    ));
    let r = send("GET", &gw.url("/api/profile/7"), &[], "").await;
    let body = r.assert_error(502, "upstream_error");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("aggregate call `orders` failed: not called: `user` failed"),
        "{msg}"
    );
    assert!(orders_seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_call_names_and_cycles_are_config_errors_with_positions() {
    let calls = r#"            - {name: a, service: users, path: "/a?x=${calls.c.body.id}"}
            - {name: b, service: users, path: "/b", headers: {x-a: "${calls.nobody.body.id}"}}
            - {name: c, service: users, path: "/c?x=${calls.a.body.id}"}
"#;
    let u = "http://127.0.0.1:9";
    let err = TestGateway::try_start(&chain_config(u, u, u, calls))
        .err()
        .expect("refused");
    let line_of = |needle: &str| {
        err.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("missing {needle:?} in:\n{err}"))
            .to_string()
    };
    let unknown = line_of("routes[0].policies[0].aggregate.calls[1].headers.x-a");
    assert!(unknown.contains("no call named `nobody`"), "{unknown}");
    // FILE:LINE:COL: like every config error (the call is on line 14 of the test's file).
    assert!(unknown.contains("portico.yaml:"), "{unknown}");
    assert!(
        unknown
            .split(':')
            .nth(1)
            .is_some_and(|l| l.parse::<u32>().is_ok()),
        "{unknown}"
    );

    // Only the cycle left: reported once, with the calls on it.
    let calls = r#"            - {name: a, service: users, path: "/a?x=${calls.c.body.id}"}
            - {name: b, service: users, path: "/b"}
            - {name: c, service: users, path: "/c?x=${calls.a.body.id}"}
            - {name: d, service: users, path: "/d?x=${calls.d.status}"}
"#;
    let err = TestGateway::try_start(&chain_config(u, u, u, calls))
        .err()
        .expect("refused");
    assert!(
        err.contains("aggregate.calls[3]: call `d` reads its own answer"),
        "{err}"
    );
    let calls = r#"            - {name: a, service: users, path: "/a?x=${calls.c.body.id}"}
            - {name: b, service: users, path: "/b"}
            - {name: c, service: users, path: "/c?x=${calls.a.body.id}"}
"#;
    let err = TestGateway::try_start(&chain_config(u, u, u, calls))
        .err()
        .expect("refused");
    assert!(
        err.contains("calls depend on each other in a cycle: a → c → a")
            || err.contains("calls depend on each other in a cycle: c → a → c"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].policies[0].aggregate.calls["),
        "{err}"
    );
}

// === Cancellation ===

#[tokio::test]
async fn a_client_disconnect_cancels_the_calls_in_flight() {
    // A bare upstream that reports when a request arrived and when its connection closed.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let slow = upstream::raw_tcp(move |mut stream, n| {
        let (arrived, closed) = (arrived_tx.clone(), closed_tx.clone());
        async move {
            use tokio::io::AsyncReadExt;
            if upstream::read_head(&mut stream).await.is_none() {
                return;
            }
            let _ = arrived.send(n);
            // Never answer; a read of 0 bytes is the gateway closing the connection.
            let mut buf = [0u8; 64];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = closed.send(n);
        }
    })
    .await;
    let calls = r#"            - {name: a, service: users, path: /a}
            - {name: b, service: orders, path: /b}
            - {name: c, service: products, path: "/c?x=${calls.a.status}"}
"#;
    let url = slow.url();
    let mut yaml = chain_config(&url, &url, &url, calls);
    yaml = yaml.replace(
        "    service: users\n",
        "    service: users\n    timeout: 60s\n",
    );
    let gw = TestGateway::start(&yaml);

    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /api/profile/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let within = |what: &'static str| {
        move |r: Result<Option<usize>, tokio::time::error::Elapsed>| {
            r.unwrap_or_else(|_| panic!("{what}"))
                .expect("channel open")
        }
    };
    let mut started = vec![];
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(10), arrived.recv()).await;
        started.push(within("both independent calls should reach the upstream")(
            n,
        ));
    }
    drop(client);
    // Both upstream connections are closed by the gateway soon after; the 60 s route timeout
    // and the upstream's silence mean nothing else would close them.
    let mut gone = vec![];
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(5), closed.recv()).await;
        gone.push(within(
            "the gateway kept a call running after the client left",
        )(n));
    }
    started.sort();
    gone.sort();
    assert_eq!(started, gone);
    // The dependent call was never sent.
    assert_eq!(slow.connections(), 2);
}

// === Resilience ===

#[tokio::test]
async fn calls_follow_their_services_retries_and_breaker() {
    let sick = upstream::http1("sick")
        .route("/", upstream::reply(503, "{}"))
        .spawn()
        .await;
    let broken = upstream::http1("broken")
        .route("/", upstream::reply(503, "{}"))
        .spawn()
        .await;
    let well = upstream::http1("well")
        .route("/", json(r#"{"fine": true}"#))
        .spawn()
        .await;
    let yaml = format!(
        r#"services:
  pair:
    targets: [{{url: "{}"}}, {{url: "{}"}}]
    retry: {{attempts: 2, retry_on: [503], backoff_base: 1ms, budget: {{min_per_second: 100}}}}
  broken:
    targets: [{{url: "{}"}}]
    circuit_breaker: {{consecutive_failures: 2, open_for: 1h}}
routes:
  - name: agg
    match: {{path: /agg}}
    service: broken
    policies:
      - aggregate:
          calls:
            - {{name: pair, service: pair, path: /p}}
            - {{name: broken, service: broken, path: /b, required: false}}
"#,
        sick.url(),
        well.url(),
        broken.url()
    );
    let gw = TestGateway::start(&yaml);
    for i in 0..4 {
        let r = send("GET", &gw.url("/agg"), &[], "").await;
        // Round robin sends every other first try to the sick target; the retry goes to the
        // other one, so the required call never fails.
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["pair"]["fine"], true);
        let errors = serde_json::to_string(&r.json()["errors"]).unwrap();
        if i < 2 {
            assert!(errors.contains("broken answered 503"), "{i}: {errors}");
        } else {
            // Two failures in a row opened the `broken` service's breaker: no more calls.
            assert!(
                errors.contains("broken: circuit breaker open"),
                "{i}: {errors}"
            );
        }
    }
    // Two calls before the breaker opened, none after.
    assert_eq!(broken.hits(), 2);
    // Without the retry, the requests whose first try went to the sick target would have failed.
    assert!(sick.hits() >= 1, "round robin never chose the sick target");
}
