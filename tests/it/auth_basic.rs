//! Basic authentication over real sockets: argon2 and bcrypt hashes (made here with the same
//! crates the gateway uses), consumer headers upstream, and the 401s for every kind of bad input.
//!
//! That a verified pair is cached (the hash is not recomputed) is asserted by counting hash
//! computations in `src/policy/auth/basic.rs`'s unit tests, not by timing here.

use crate::support::config::{Config, Consumer, Service};
use crate::support::{send, upstream, Reply, TestGateway};
use base64::Engine as _;

/// A cheap argon2id hash (real deployments use the defaults or stronger).
fn argon2_hash(password: &str) -> String {
    use argon2::PasswordHasher as _;
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = argon2::password_hash::SaltString::encode_b64(b"portico-test-salt").unwrap();
    a.hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Alice (argon2id) and Bob (bcrypt), one service at `url`, and `routes`.
fn config(url: &str, routes: &str) -> String {
    let alice = format!(
        "{{username: alice, password_hash: \"{}\"}}",
        argon2_hash("wonder land:1")
    );
    let bob = format!(
        "{{username: \"bob@example.com\", password_hash: \"{}\"}}",
        bcrypt::hash("builder", 4).unwrap()
    );
    Config::new()
        .set("auth", "{realm: staff area}")
        .consumer(
            Consumer::new("alice")
                .set("id", "c-001")
                .set("groups", "[admin]")
                .set("basic", alice),
        )
        .consumer(
            Consumer::new("bob")
                .set("groups", "[staff, ops]")
                .set("basic", bob)
                .api_key("bob-key-0123456789"),
        )
        .service(Service::new("a").target(url))
        .yaml(&format!("routes:\n{routes}"))
        .to_yaml()
}

const BASIC_ROUTE: &str =
    "  - name: r\n    service: a\n    policies:\n      - auth: {basic: true}\n";

fn challenges(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn argon2_and_bcrypt_credentials_reach_the_upstream_as_their_consumer() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), BASIC_ROUTE));

    // A password may contain ':' and spaces: only the first colon separates.
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("authorization", &basic("alice", "wonder land:1"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["x-consumer-name"][0], "alice");
    assert_eq!(echo["headers"]["x-consumer-id"][0], "c-001");
    assert_eq!(echo["headers"]["x-consumer-groups"][0], "admin");
    assert!(
        echo["headers"].get("authorization").is_none(),
        "the password went upstream: {echo}"
    );

    // bcrypt, and the scheme name in another case (RFC 9110: case-insensitive).
    let lower = basic("bob@example.com", "builder").replacen("Basic", "bAsIc", 1);
    let r = send("GET", &gw.url("/x"), &[("authorization", &lower)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["x-consumer-name"][0], "bob");
    assert_eq!(echo["headers"]["x-consumer-groups"][0], "staff, ops");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn wrong_password_unknown_user_and_malformed_headers_are_401_with_a_basic_challenge() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), BASIC_ROUTE));
    let cases: Vec<(&str, String)> = vec![
        ("wrong password", basic("alice", "wonder land:2")),
        ("unknown user", basic("mallory", "wonder land:1")),
        ("bcrypt wrong password", basic("bob@example.com", "Builder")),
        ("not base64", "Basic !!!not*base64!!!".into()),
        (
            "no colon",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice")
            ),
        ),
        ("empty", "Basic".into()),
        ("not UTF-8 inside", "Basic /w==".into()),
        ("empty user", basic("", "x")),
    ];
    for (what, header) in &cases {
        let r = send("GET", &gw.url("/x"), &[("authorization", header)], "").await;
        let body = r.assert_error(401, "unauthorized");
        assert_eq!(
            challenges(&r),
            ["Basic realm=\"staff area\""],
            "{what}: {body}"
        );
        assert!(!r.text().contains("wonder"), "{what}: {}", r.text());
    }
    // Unknown user and wrong password are told apart by nothing in the answer.
    let unknown = send("GET", &gw.url("/x"), &[("authorization", &cases[1].1)], "").await;
    let wrong = send("GET", &gw.url("/x"), &[("authorization", &cases[0].1)], "").await;
    assert_eq!(unknown.json()["message"], wrong.json()["message"]);

    // No credentials at all.
    let r = send("GET", &gw.url("/x"), &[], "").await;
    r.assert_error(401, "unauthorized");
    assert_eq!(challenges(&r), ["Basic realm=\"staff area\""]);
    assert_eq!(up.hits(), 0, "no failed request reached the upstream");
}

#[tokio::test]
async fn a_route_may_accept_basic_auth_or_an_api_key() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "  - name: r\n    service: a\n    policies:\n      - auth: {basic: true, api_key: true}\n",
    ));
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("x-api-key", "bob-key-0123456789")],
        "",
    )
    .await;
    assert_eq!(r.json()["headers"]["x-consumer-name"][0], "bob");
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("authorization", &basic("alice", "wonder land:1"))],
        "",
    )
    .await;
    assert_eq!(r.json()["headers"]["x-consumer-name"][0], "alice");
    let r = send("GET", &gw.url("/x"), &[], "").await;
    r.assert_error(401, "unauthorized");
    assert_eq!(
        challenges(&r),
        ["Basic realm=\"staff area\"", "Key realm=\"staff area\""]
    );
}

#[tokio::test]
async fn concurrent_requests_on_two_workers_all_verify() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&format!("workers: 2\n{}", config(&up.url(), BASIC_ROUTE)));
    let good = basic("alice", "wonder land:1");
    let bad = basic("bob@example.com", "nope");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let url = gw.url("/x");
        let header = if i % 3 == 0 {
            bad.clone()
        } else {
            good.clone()
        };
        tasks.push(tokio::spawn(async move {
            send("GET", &url, &[("authorization", &header)], "")
                .await
                .status
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 16);
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 8);
    assert_eq!(up.hits(), 16);
}

#[test]
fn a_plaintext_or_malformed_password_hash_is_a_config_error_at_its_path() {
    let yaml = r#"consumers:
  - name: alice
    basic: {username: alice, password_hash: "hunter2"}
  - name: bob
    basic: {username: bob, password_hash: "$argon2id$v=19$m=oops"}
services:
  a: {targets: [{url: "http://127.0.0.1:9"}]}
routes:
  - {name: r, service: a}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let err = match portico::config::load_file(&path) {
        Ok(_) => panic!("must be rejected"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("consumers[0].basic.password_hash") && text.contains("never a plaintext"),
        "{text}"
    );
    assert!(text.contains("consumers[1].basic.password_hash"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_basic_credential_removed_by_a_reload_is_refused_although_it_was_cached() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), BASIC_ROUTE));
    let alice = basic("alice", "wonder land:1");
    for _ in 0..2 {
        assert_eq!(
            send("GET", &gw.url("/x"), &[("authorization", &alice)], "")
                .await
                .status,
            200
        );
    }
    // The same config without alice's credential.
    let without = config(&up.url(), BASIC_ROUTE)
        .lines()
        .filter(|l| !l.contains("username: alice"))
        .collect::<Vec<_>>()
        .join("\n");
    gw.reload(&without).expect("reload");
    send("GET", &gw.url("/x"), &[("authorization", &alice)], "")
        .await
        .assert_error(401, "unauthorized");
}
