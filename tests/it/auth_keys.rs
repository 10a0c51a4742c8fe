//! API keys, consumers, ACLs, anonymous access, identity headers and policy precedence, over real
//! sockets: a real upstream that echoes what it received, the gateway, a client.

use crate::support::config::{Config, Service};
use crate::support::{get, seen, send, upstream, Reply, TestGateway};
use sha2::{Digest, Sha256};

const ALICE_KEY: &str = "alice-key-0123456789";
const BOB_KEY: &str = "bob-key-0123456789";

/// Alice (admin, staff) and Bob (staff), each with an API key.
const CONSUMERS: &str = r#"
consumers:
  - name: alice
    id: c-001
    groups: [admin, staff]
    api_keys: ["alice-key-0123456789"]
  - name: bob
    groups: [staff]
    api_keys: ["bob-key-0123456789"]
"#;

/// One service `a` at `url`, the consumers, then `rest` (auth settings, routes...).
fn config(url: &str, rest: &str) -> String {
    Config::new()
        .yaml(CONSUMERS)
        .service(Service::new("a").target(url))
        .yaml(rest)
        .to_yaml()
}

fn with_key(key: &str) -> [(&str, &str); 1] {
    [("x-api-key", key)]
}

fn assert_unauthorized(r: &Reply, challenge: &str) {
    r.assert_error(401, "unauthorized");
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with(challenge)),
        "{challenges:?}"
    );
}

#[tokio::test]
async fn a_key_in_the_default_header_reaches_the_upstream_as_consumer_headers_without_the_key() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "routes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true}\n",
    ));
    let r = send("GET", &gw.url("/x"), &with_key(ALICE_KEY), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    assert_eq!(seen(&echo, "x-consumer-id"), ["c-001"]);
    assert_eq!(seen(&echo, "x-consumer-groups"), ["admin, staff"]);
    assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");

    // A consumer without an id gets no X-Consumer-Id.
    let echo = send("GET", &gw.url("/x"), &with_key(BOB_KEY), "")
        .await
        .json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["bob"]);
    assert!(echo["headers"].get("x-consumer-id").is_none(), "{echo}");
}

#[tokio::test]
async fn a_key_in_a_configured_query_parameter_is_removed_and_other_parameters_are_kept() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "auth:\n  api_key: {query: apikey}\nroutes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true}\n",
    ));
    // Other parameters arrive byte for byte, encoding untouched.
    let r = get(&gw.url(&format!(
        "/x?a=1&apikey={ALICE_KEY}&b=two+words&list=x,y&sig=a%2Fb&t=~z&flag"
    )))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(
        echo["uri"],
        "/x?a=1&b=two+words&list=x,y&sig=a%2Fb&t=~z&flag"
    );
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);

    // The only parameter: the query string goes away entirely.
    let echo = get(&gw.url(&format!("/y?apikey={BOB_KEY}"))).await.json();
    assert_eq!(echo["uri"], "/y");
    assert_eq!(seen(&echo, "x-consumer-name"), ["bob"]);

    // The header still works alongside the query parameter.
    let r = send("GET", &gw.url("/z?q=1"), &with_key(ALICE_KEY), "").await;
    assert_eq!(r.json()["uri"], "/z?q=1");
}

#[tokio::test]
async fn forward_true_keeps_the_key_in_the_header_and_the_query() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "auth:\n  api_key: {header: x-key, query: key, forward: true}\nroutes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true}\n",
    ));
    let echo = send("GET", &gw.url("/x"), &[("x-key", ALICE_KEY)], "")
        .await
        .json();
    assert_eq!(seen(&echo, "x-key"), [ALICE_KEY]);
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    let echo = get(&gw.url(&format!("/x?key={BOB_KEY}&a=1"))).await.json();
    assert_eq!(echo["uri"], format!("/x?key={BOB_KEY}&a=1"));
    assert_eq!(seen(&echo, "x-consumer-name"), ["bob"]);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_a_401_with_a_challenge_and_the_upstream_gets_nothing() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "auth:\n  realm: shop\nroutes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true}\n",
    ));
    let wrong = "alice-key-0123456780";
    let r = send("GET", &gw.url("/x"), &with_key(wrong), "").await;
    assert_unauthorized(&r, "Key realm=\"shop\"");
    assert!(!r.text().contains(wrong), "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");

    let r = get(&gw.url("/x")).await;
    assert_unauthorized(&r, "Key realm=\"shop\"");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("credentials are required"));

    // Empty, and one byte short of a real key.
    for key in ["", &ALICE_KEY[..ALICE_KEY.len() - 1]] {
        let r = send("POST", &gw.url("/x"), &with_key(key), "body").await;
        assert_unauthorized(&r, "Key realm=\"shop\"");
    }
    assert_eq!(
        up.hits(),
        0,
        "a request that fails auth never reaches the upstream"
    );
}

#[tokio::test]
async fn keys_stored_as_sha256_digests_are_accepted() {
    let up = upstream::http1("a").spawn().await;
    let key = "carol-secret-key-42";
    let digest: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gw = TestGateway::start(&format!(
        "consumers:\n  - name: carol\n    api_keys: [{{sha256: \"{digest}\"}}]\nservices:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - name: r\n    service: a\n    policies:\n      - auth: {{api_key: true}}\n",
        up.url()
    ));
    let r = send("GET", &gw.url("/x"), &with_key(key), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-consumer-name"), ["carol"]);
    // The digest itself is not a key.
    let r = send("GET", &gw.url("/x"), &with_key(&digest), "").await;
    r.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn consumers_are_loaded_from_consumers_files() {
    let up = upstream::http1("a").spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("partners.yaml");
    std::fs::write(
        &file,
        "consumers:\n  - name: partner-1\n    groups: [partners]\n    api_keys: [\"partner-1-key-abcdef\"]\n  - name: partner-2\n    api_keys: [\"partner-2-key-abcdef\"]\n",
    )
    .unwrap();
    let gw = TestGateway::start(&config(
        &up.url(),
        &format!(
            "auth:\n  consumers_files: [\"{}\"]\nroutes:\n  - name: r\n    service: a\n    policies:\n      - auth: {{api_key: true, allow: {{groups: [partners, admin]}}}}\n",
            file.display()
        ),
    ));
    let r = send("GET", &gw.url("/x"), &with_key("partner-1-key-abcdef"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["partner-1"]);
    assert_eq!(seen(&echo, "x-consumer-groups"), ["partners"]);
    // Inline consumers still work next to the file's.
    let r = send("GET", &gw.url("/x"), &with_key(ALICE_KEY), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // partner-2 is known (so 403, not 401) but in no allowed group.
    send("GET", &gw.url("/x"), &with_key("partner-2-key-abcdef"), "")
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn client_sent_identity_headers_are_removed_on_every_route() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"routes:
  - name: open
    match: {path: /open}
    service: a
  - name: keyed
    match: {path: /keyed}
    service: a
    policies:
      - auth: {api_key: true}
  - name: anon
    match: {path: /anon}
    service: a
    policies:
      - auth: {api_key: true, anonymous: true}
"#,
    ));
    let spoof = [
        ("x-consumer-name", "alice"),
        ("X-Consumer-Groups", "admin"),
        ("x-consumer-id", "c-001"),
        ("x-anonymous-consumer", "false"),
    ];
    // A route without any auth policy.
    let r = send("GET", &gw.url("/open"), &spoof, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    for (name, _) in spoof {
        let name = name.to_ascii_lowercase();
        assert!(
            echo["headers"].get(&name).is_none(),
            "{name} leaked: {echo}"
        );
    }

    // An authenticated route: only the gateway's values arrive, once.
    let mut headers = spoof.to_vec();
    headers.push(("x-api-key", BOB_KEY));
    let echo = send("GET", &gw.url("/keyed"), &headers, "").await.json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["bob"]);
    assert_eq!(seen(&echo, "x-consumer-groups"), ["staff"]);
    assert!(echo["headers"].get("x-consumer-id").is_none(), "{echo}");
    assert!(
        echo["headers"].get("x-anonymous-consumer").is_none(),
        "{echo}"
    );

    // An anonymous request cannot claim to be alice either.
    let echo = send("GET", &gw.url("/anon"), &spoof, "").await.json();
    assert_eq!(seen(&echo, "x-anonymous-consumer"), ["true"]);
    assert!(echo["headers"].get("x-consumer-name").is_none(), "{echo}");
    assert!(echo["headers"].get("x-consumer-groups").is_none(), "{echo}");
}

#[tokio::test]
async fn acl_allow_by_group_and_deny_by_consumer_answer_403() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        r#"routes:
  - name: admin-only
    match: {path: /admin}
    service: a
    policies:
      - auth: {api_key: true, allow: {groups: [admin]}}
  - name: no-alice
    match: {path: /shop}
    service: a
    policies:
      - auth: {api_key: true, deny: {consumers: [alice]}}
  - name: deny-wins
    match: {path: /both}
    service: a
    policies:
      - auth: {api_key: true, allow: {consumers: [alice, bob]}, deny: {groups: [admin]}}
"#,
    ));
    let status = |r: &Reply| r.status.as_u16();
    let r = send("GET", &gw.url("/admin"), &with_key(ALICE_KEY), "").await;
    assert_eq!(status(&r), 200, "{}", r.text());
    let r = send("GET", &gw.url("/admin"), &with_key(BOB_KEY), "").await;
    let body = r.assert_error(403, "forbidden");
    assert!(body["message"].as_str().unwrap().contains("not allowed"));

    send("GET", &gw.url("/shop"), &with_key(ALICE_KEY), "")
        .await
        .assert_error(403, "forbidden");
    let r = send("GET", &gw.url("/shop"), &with_key(BOB_KEY), "").await;
    assert_eq!(status(&r), 200, "{}", r.text());

    send("GET", &gw.url("/both"), &with_key(ALICE_KEY), "")
        .await
        .assert_error(403, "forbidden");
    let r = send("GET", &gw.url("/both"), &with_key(BOB_KEY), "").await;
    assert_eq!(status(&r), 200, "{}", r.text());

    // Denied requests never reached the upstream: three 200s above, nothing else.
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn anonymous_lets_requests_without_credentials_through_but_still_rejects_a_wrong_key() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "routes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true, anonymous: true}\n",
    ));
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(seen(&echo, "x-anonymous-consumer"), ["true"]);
    assert!(echo["headers"].get("x-consumer-name").is_none(), "{echo}");

    let echo = send("GET", &gw.url("/x"), &with_key(ALICE_KEY), "")
        .await
        .json();
    assert_eq!(seen(&echo, "x-consumer-name"), ["alice"]);
    assert!(
        echo["headers"].get("x-anonymous-consumer").is_none(),
        "{echo}"
    );

    let before = up.hits();
    send("GET", &gw.url("/x"), &with_key("not-a-real-key-123"), "")
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(up.hits(), before);
}

#[tokio::test]
async fn service_and_global_policies_apply_and_a_route_policy_overrides_them() {
    let up = upstream::http1("a").spawn().await;
    let yaml = format!(
        r#"{CONSUMERS}
policies:
  - auth: {{api_key: true}}
services:
  a: {{targets: [{{url: "{url}"}}]}}
  b:
    targets: [{{url: "{url}"}}]
    policies:
      - auth: {{api_key: true, allow: {{consumers: [bob]}}}}
routes:
  - name: global
    match: {{path: /global}}
    service: a
  - name: service
    match: {{path: /service}}
    service: b
  - name: own
    match: {{path: /own}}
    service: b
    policies:
      - auth: {{api_key: true, anonymous: true}}
"#,
        url = up.url()
    );
    let gw = TestGateway::start(&yaml);

    // Global level: any consumer, no anonymous.
    get(&gw.url("/global"))
        .await
        .assert_error(401, "unauthorized");
    let r = send("GET", &gw.url("/global"), &with_key(ALICE_KEY), "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Service level replaces the global policy: bob only.
    get(&gw.url("/service"))
        .await
        .assert_error(401, "unauthorized");
    send("GET", &gw.url("/service"), &with_key(ALICE_KEY), "")
        .await
        .assert_error(403, "forbidden");
    let r = send("GET", &gw.url("/service"), &with_key(BOB_KEY), "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The route's own policy replaces its service's: anonymous allowed, alice allowed.
    let r = get(&gw.url("/own")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-anonymous-consumer"), ["true"]);
    let r = send("GET", &gw.url("/own"), &with_key(ALICE_KEY), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen(&r.json(), "x-consumer-name"), ["alice"]);
}

struct NoEnv;

impl portico::config::expand::Source for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

#[test]
fn config_errors_name_their_key_paths_and_never_quote_a_key() {
    let yaml = r#"listen: ["127.0.0.1:0"]
consumers:
  - name: alice
    api_keys: ["shared-secret-key-1"]
  - name: bob
    api_keys: ["shared-secret-key-1"]
auth:
  jwt: {}
services:
  a: {targets: [{url: "http://127.0.0.1:9"}]}
routes:
  - name: r
    service: a
    policies:
      - auth:
          jwt: [nosuch]
          api_key: true
          allow: {consumers: [carol]}
  - name: empty
    match: {path: /empty}
    service: a
    policies:
      - auth: {}
"#;
    let err = match portico::config::load_str(yaml, "auth.yaml", &NoEnv) {
        Ok(_) => panic!("the config must be rejected"),
        Err(e) => e,
    };
    let text = err.to_string();
    let find = |path: &str| {
        err.errors
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}:\n{text}"))
    };
    assert!(find("routes[0].policies[0].auth.jwt[0]")
        .message
        .contains("unknown JWT provider `nosuch`"));
    assert!(find("routes[0].policies[0].auth.allow.consumers[0]")
        .message
        .contains("unknown consumer `carol`"));
    assert!(find("consumers[1].api_keys[0]")
        .message
        .contains("already assigned"));
    assert!(find("routes[1].policies[0].auth")
        .message
        .contains("accepts no credential"));
    // Errors point at lines (1-based) of the file.
    let dup = find("consumers[1].api_keys[0]");
    assert_eq!(dup.position.map(|p| p.line), Some(6), "{text}");
    assert!(!text.contains("shared-secret-key-1"), "{text}");
}

#[test]
fn portico_validate_reports_an_unknown_provider_in_a_global_policy_once_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    // Three routes inherit the global policy: its problem is still one error.
    std::fs::write(
        &path,
        "services:\n  a: {targets: [{url: \"http://127.0.0.1:9\"}]}\npolicies:\n  - auth: {introspection: [idp]}\nroutes:\n  - {name: r, service: a}\n  - {name: s, service: a, match: {path: /s}}\n  - {name: t, service: a, match: {path: /t}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(":4:") && stderr.contains("policies[0].auth.introspection[0]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown introspection provider `idp`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_key_or_consumer_removed_by_a_reload_is_refused_as_soon_as_the_reload_returns() {
    let up = upstream::http1("a").spawn().await;
    let routes =
        "routes:\n  - name: r\n    service: a\n    policies:\n      - auth: {api_key: true}\n";
    let gw = TestGateway::start(&config(&up.url(), routes));
    for key in [ALICE_KEY, BOB_KEY] {
        assert_eq!(
            send("GET", &gw.url("/x"), &with_key(key), "").await.status,
            200
        );
    }
    // Alice's key is rotated out and Bob is removed altogether.
    let rotated = CONSUMERS
        .replace(ALICE_KEY, "alice-key-rotated-0123456789")
        .replace(
            "  - name: bob\n    groups: [staff]\n    api_keys: [\"bob-key-0123456789\"]\n",
            "",
        );
    assert!(!rotated.contains("bob"), "{rotated}");
    gw.reload(&format!(
        "{rotated}services:\n  a: {{targets: [{{url: \"{}\"}}]}}\n{routes}",
        up.url()
    ))
    .expect("reload");
    for key in [ALICE_KEY, BOB_KEY] {
        send("GET", &gw.url("/x"), &with_key(key), "")
            .await
            .assert_error(401, "unauthorized");
    }
    assert_eq!(
        send(
            "GET",
            &gw.url("/x"),
            &with_key("alice-key-rotated-0123456789"),
            ""
        )
        .await
        .status,
        200
    );
}

#[test]
fn a_consumers_file_that_is_a_fifo_or_an_alias_bomb_is_refused_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("consumers.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let bomb = dir.path().join("bomb.yaml");
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("consumers: []\n");
    std::fs::write(&bomb, text).unwrap();
    for (file, why) in [(&fifo, "not a regular file"), (&bomb, "alias")] {
        let err = TestGateway::try_start(&config(
            "http://127.0.0.1:9",
            &format!(
                "auth:\n  consumers_files: [\"{}\"]\nroutes:\n  - {{name: r, service: a}}\n",
                file.display()
            ),
        ))
        .err()
        .expect("refused");
        assert!(err.contains("auth.consumers_files[0]"), "{err}");
        assert!(err.contains(why), "{err}");
    }
}
