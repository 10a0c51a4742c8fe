//! TLS towards `https://` targets: a trusted CA, SNI, HTTP/2 by ALPN, client certificates, the
//! explicit `insecure_skip_verify`, and clear 502s for untrusted or expired certificates.

use crate::support::config::{Config, Route, Service};
use crate::support::tls::{tls_upstream, Pki};
use crate::support::{get, TestGateway};

fn gateway(target: &str, service_fields: &str) -> TestGateway {
    TestGateway::start(
        &Config::new()
            .service(Service::new("a").target(target).yaml(service_fields))
            .route(Route::new("all").service("a"))
            .to_yaml(),
    )
}

#[tokio::test]
async fn an_https_target_is_verified_against_the_configured_ca_with_sni() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("up", "up", &["up.internal"]);
    let (addr, _task) = tls_upstream("secure", &cert, None).await;
    // The target is an IP; the certificate names `up.internal`: server_name sets SNI and the
    // name verified.
    let gw = gateway(
        &format!("https://{addr}"),
        &format!(
            "    tls: {{ca: \"{}\", server_name: up.internal}}\n",
            pki.ca_str()
        ),
    );
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["upstream"], "secure");
    assert_eq!(echo["version"], "HTTP/1.1");
    // Without the name override the IP is checked against the certificate, and fails.
    let gw = gateway(
        &format!("https://{addr}"),
        &format!("    tls: {{ca: \"{}\"}}\n", pki.ca_str()),
    );
    let r = get(&gw.url("/x")).await;
    let body = r.assert_error(502, "upstream_tls_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not valid for name"),
        "{body}"
    );
}

#[tokio::test]
async fn http2_over_tls_to_the_upstream() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("up", "up", &["localhost"]);
    let (addr, _task) = tls_upstream("secure", &cert, None).await;
    let gw = gateway(
        &format!("https://localhost:{}", addr.port()),
        &format!("    tls: {{ca: \"{}\", http2: true}}\n", pki.ca_str()),
    );
    for _ in 0..3 {
        let r = get(&gw.url("/h2")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["uri"], format!("https://localhost:{}/h2", addr.port()));
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_with_a_clear_body() {
    let pki = Pki::new("some private CA");
    let cert = pki.issue("up", "up", &["localhost"]);
    let (addr, _task) = tls_upstream("secure", &cert, None).await;
    // No `ca`: the system roots do not know this CA.
    let gw = gateway(&format!("https://localhost:{}", addr.port()), "");
    let r = get(&gw.url("/")).await;
    let body = r.assert_error(502, "upstream_tls_error");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(
        message.contains("https://localhost:"),
        "names the target: {message}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_a_502_with_a_clear_body() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue_expired("up", &["localhost"]);
    let (addr, _task) = tls_upstream("secure", &cert, None).await;
    let gw = gateway(
        &format!("https://localhost:{}", addr.port()),
        &format!("    tls: {{ca: \"{}\"}}\n", pki.ca_str()),
    );
    let body = get(&gw.url("/"))
        .await
        .assert_error(502, "upstream_tls_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("certificate expired"),
        "{body}"
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_what_verification_refuses() {
    let pki = Pki::new("some private CA");
    let cert = pki.issue_expired("up", &["elsewhere.test"]);
    let (addr, _task) = tls_upstream("secure", &cert, None).await;
    let gw = gateway(
        &format!("https://localhost:{}", addr.port()),
        "    tls: {insecure_skip_verify: true}\n",
    );
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let pki = Pki::new("mesh CA");
    let server = pki.issue("up", "up", &["localhost"]);
    let client = pki.issue("gw-client", "portico", &["portico.internal"]);
    let (addr, _task) = tls_upstream("mtls", &server, Some(&pki.ca_path())).await;
    let target = format!("https://localhost:{}", addr.port());
    let gw = gateway(&target, &format!("    tls: {{ca: \"{}\"}}\n", pki.ca_str()));
    let body = get(&gw.url("/"))
        .await
        .assert_error(502, "upstream_tls_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("CertificateRequired"),
        "{body}"
    );
    let gw = gateway(
        &target,
        &format!(
            "    tls: {{ca: \"{}\", client_cert: \"{}\", client_key: \"{}\"}}\n",
            pki.ca_str(),
            client.cert_str(),
            client.key_str()
        ),
    );
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream-client-certs"), "1");
}

#[test]
fn upstream_tls_config_errors_point_at_their_keys() {
    let err = TestGateway::try_start(
        "services:\n  a:\n    targets: [{url: \"https://localhost:1\"}]\n    tls: {ca: /nonexistent/ca.pem, client_cert: /nonexistent/c.pem}\n  b:\n    targets: [{url: \"http://localhost:1\"}]\n    tls: {http2: true}\nroutes:\n  - {name: all, service: a}\n  - {name: b, service: b, match: {path: /b}}\n",
    )
    .err()
    .expect("must fail");
    assert!(err.contains("services.b.tls"), "{err}");
}

#[tokio::test]
async fn https_targets_are_health_checked_over_tls() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("up", "up", &["localhost"]);
    let (addr, _task) = tls_upstream("secure", &cert, None).await;
    let gw = gateway(
        &format!("https://localhost:{}", addr.port()),
        &format!(
            "    tls: {{ca: \"{}\"}}\n    health_check: {{interval: 50ms, timeout: 1s, jitter: 0ms, unhealthy_threshold: 1}}\n    when_all_unhealthy: fail\n",
            pki.ca_str()
        ),
    );
    // Ten probe rounds: a probe that spoke plain HTTP to the TLS port would have taken the only
    // target out of rotation (503 no_healthy_upstream) after the first.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..3 {
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
