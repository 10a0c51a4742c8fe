//! Client certificates on HTTPS listeners (mutual TLS): required and optional modes, CA
//! bundles, `mtls` as an auth method identifying consumers, and the certificate forwarded
//! upstream in a header only the gateway can set.

use crate::support::config::{Config, Consumer, Route, Service};
use crate::support::tls::{self, ClientTls, Pki};
use crate::support::{self, upstream, TestGateway};
use bytes::Bytes;
use http_body_util::Full;

fn config(up: &upstream::Upstream, pki: &Pki, mode: &str, extra_ca: &str) -> String {
    let server = pki.issue("gw", "gw", &["gw.test"]);
    let tls = format!(
        r#"
  listen: ["127.0.0.1:0"]
  certificates:
    - {{cert: "{cert}", key: "{key}"}}
  client_auth:
    mode: {mode}
    ca: ["{ca}"{extra_ca}]
    forward_header: x-forwarded-client-cert
"#,
        cert = server.cert_str(),
        key = server.key_str(),
        ca = pki.ca_str(),
    );
    Config::new()
        .set("listen", "[\"127.0.0.1:0\"]")
        .consumer(Consumer::new("alice").set("mtls_subjects", "[\"spiffe://example.org/alice\"]"))
        .service(Service::new("a").target(up.url()))
        .route(Route::new("open").service("a").path("/open"))
        .route(
            Route::new("private")
                .service("a")
                .path("/private")
                .policy("auth", "{mtls: true, require_consumer: true}"),
        )
        .set("tls", tls)
        .to_yaml()
}

#[tokio::test]
async fn required_mode_refuses_clients_without_a_certificate_from_a_listed_ca() {
    let pki = Pki::new("client CA");
    let other = Pki::new("another CA");
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&config(&up, &pki, "required", ""));
    let addr = gw.local_addrs()[1];
    let alice = pki.issue_with("alice", "alice", &[], |p| {
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/alice".try_into().unwrap(),
        ));
    });
    // With TLS 1.3 the client finishes its side of the handshake before the server checks
    // the certificate: the refusal arrives as an alert on the first read.
    let anonymous = ClientTls::trusting(&pki).alpn(&["http/1.1"]);
    assert!(
        try_get(addr, &anonymous, "/open").await.is_err(),
        "no certificate"
    );
    let stranger = other.issue("mallory", "mallory", &[]);
    let untrusted = ClientTls::trusting(&pki)
        .alpn(&["http/1.1"])
        .identity(&stranger);
    assert!(
        try_get(addr, &untrusted, "/open").await.is_err(),
        "unknown CA"
    );
    let client = ClientTls::trusting(&pki).identity(&alice);
    let (r, _) = tls::get(addr, "gw.test", &client, "/private").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["x-consumer-name"][0], "alice");
    assert_eq!(up.hits(), 1, "refused handshakes never reach the upstream");
}

async fn try_get(
    addr: std::net::SocketAddr,
    client: &ClientTls,
    path: &str,
) -> Result<support::Reply, String> {
    let stream = tls::connect(addr, "gw.test", client)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = tls::Conn::over(stream).await;
    let req = http::Request::get(path)
        .header("host", "gw.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    conn.send(req).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn optional_mode_serves_everyone_and_mtls_auth_identifies_consumers() {
    let pki = Pki::new("client CA");
    let second = Pki::new("second client CA");
    let up = upstream::http1("up").spawn().await;
    // Two CA files: certificates from either are accepted.
    let gw = TestGateway::start(&config(
        &up,
        &pki,
        "optional",
        &format!(", \"{}\"", second.ca_str()),
    ));
    let addr = gw.local_addrs()[1];
    let anonymous = ClientTls::trusting(&pki).alpn(&["http/1.1"]);
    // Without a certificate: open routes are served, the mTLS route answers 401.
    let r = try_get(addr, &anonymous, "/open").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-forwarded-client-cert").is_none(),
        "{}",
        r.text()
    );
    let r = try_get(addr, &anonymous, "/private").await.unwrap();
    r.assert_error(401, "unauthorized");

    // A certificate from the second CA whose SAN names alice: she is the consumer, and the
    // upstream learns the certificate from the gateway, not from the client's own header.
    let alice = second.issue_with("alice", "alice", &[], |p| {
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/alice".try_into().unwrap(),
        ));
    });
    let client = ClientTls::trusting(&pki)
        .alpn(&["http/1.1"])
        .identity(&alice);
    let stream = tls::connect(addr, "gw.test", &client).await.unwrap();
    let mut conn = tls::Conn::over(stream).await;
    let req = http::Request::get("/private")
        .header("host", "gw.test")
        .header("x-forwarded-client-cert", "Subject=\"CN=admin\"")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = conn.send(req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["x-consumer-name"][0], "alice");
    let xfcc = &echo["headers"]["x-forwarded-client-cert"];
    assert_eq!(xfcc.as_array().unwrap().len(), 1, "{xfcc}");
    let xfcc = xfcc[0].as_str().unwrap();
    assert!(xfcc.contains("Subject=\"CN=alice\""), "{xfcc}");
    assert!(xfcc.contains("URI=spiffe://example.org/alice"), "{xfcc}");

    // A valid certificate that names no consumer: `require_consumer` refuses it.
    let bob = pki.issue("bob", "bob", &[]);
    let client = ClientTls::trusting(&pki).alpn(&["http/1.1"]).identity(&bob);
    try_get(addr, &client, "/private")
        .await
        .unwrap()
        .assert_error(401, "unauthorized");
}

#[test]
fn an_mtls_policy_without_client_auth_is_a_config_error() {
    let err = TestGateway::try_start(
        "services:\n  a: {targets: [{url: \"http://127.0.0.1:9\"}]}\nroutes:\n  - name: r\n    service: a\n    policies:\n      - auth: {mtls: true}\n",
    )
    .err()
    .expect("must fail");
    assert!(err.contains("routes[0].policies[0].auth.mtls"), "{err}");
}
