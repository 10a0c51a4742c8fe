//! TLS termination: certificates chosen by SNI (exact, wildcard, default), ALPN, TLS versions,
//! certificate reload without dropping connections, and the HTTP-to-HTTPS redirect.

use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::tls::{self, ClientTls, Issued, Pki};
use crate::support::{self, upstream, TestGateway};

/// Config with one echo service and the given `tls:` section body (indented by two spaces).
fn config(up: &upstream::Upstream, tls: &str) -> String {
    Config::new()
        .set("listen", "[\"127.0.0.1:0\"]")
        .service(Service::new("a").target(up.url()))
        .route(Route::new("all").service("a"))
        .set("tls", format!("\n  listen: [\"127.0.0.1:0\"]\n{tls}"))
        .to_yaml()
}

fn cert_entry(c: &Issued, hosts: &[&str]) -> String {
    format!(
        "    - {{cert: \"{}\", key: \"{}\", hosts: [{}]}}\n",
        c.cert_str(),
        c.key_str(),
        hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_exact_then_wildcard_then_default() {
    let pki = Pki::new("test CA");
    let default = pki.issue("default", "default", &["default.test"]);
    let api = pki.issue("api", "api", &["api.example.com"]);
    let wild = pki.issue("wild", "wild", &["*.example.com"]);
    let up = upstream::http1("up").spawn().await;
    let tls_yaml = format!(
        "  certificates:\n{}{}{}",
        cert_entry(&default, &["default.test"]),
        cert_entry(&wild, &["*.example.com"]),
        cert_entry(&api, &["api.example.com"]),
    );
    let gw = TestGateway::start(&config(&up, &tls_yaml));
    let addr = gw.local_addrs()[1];
    let client = ClientTls::trusting(&pki);
    let (r, n) = tls::get(addr, "api.example.com", &client, "/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(n.presented(&api), "exact name wins over the wildcard");
    let (_, n) = tls::get(addr, "shop.example.com", &client, "/").await;
    assert!(n.presented(&wild));
    let (_, n) = tls::get(addr, "default.test", &client, "/").await;
    assert!(n.presented(&default));
    // A name no certificate lists gets the first (default) one, which the client rejects
    // because it does not cover that name.
    let err = tls::connect(addr, "deep.shop.example.com", &client)
        .await
        .expect_err("the default certificate does not cover this name");
    assert!(
        err.to_string().contains("not valid for name"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_or_http1_and_the_upstream_sees_https() {
    let pki = Pki::new("test CA");
    let c = pki.issue("gw", "gw", &["gw.test"]);
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&config(
        &up,
        &format!("  certificates:\n{}", cert_entry(&c, &[])),
    ));
    let addr = gw.local_addrs()[1];
    let both = ClientTls::trusting(&pki);
    let (r, n) = tls::get(addr, "gw.test", &both, "/h2").await;
    assert_eq!(n.alpn.as_deref(), Some("h2"));
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    let (r, n) = tls::get(addr, "gw.test", &both.clone().alpn(&["http/1.1"]), "/h1").await;
    assert_eq!(n.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(r.status, 200);
    // A client that offers no ALPN at all is served HTTP/1.1.
    let (r, n) = tls::get(addr, "gw.test", &both.alpn(&[]), "/none").await;
    assert_eq!(n.alpn, None);
    assert_eq!(r.status, 200);
    // Many requests multiplexed on one HTTP/2 connection.
    let stream = tls::connect(addr, "gw.test", &ClientTls::trusting(&pki))
        .await
        .unwrap();
    let conn = tls::Conn::over(stream).await;
    let tls::Conn::H2(send) = conn else {
        panic!("expected h2")
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://gw.test/m/{i}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            send.ready().await.unwrap();
            send.send_request(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let pki = Pki::new("test CA");
    let c = pki.issue("gw", "gw", &["gw.test"]);
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&config(
        &up,
        &format!(
            "  min_version: \"1.3\"\n  certificates:\n{}",
            cert_entry(&c, &[])
        ),
    ));
    let addr = gw.local_addrs()[1];
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(pki.ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("gw.test".try_into().unwrap(), tcp)
        .await;
    assert!(r.is_err(), "a TLS 1.2 client must be refused");
    // TLS 1.3 works.
    let (r, _) = tls::get(addr, "gw.test", &ClientTls::trusting(&pki), "/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_reload_and_open_connections_stay_up() {
    let pki = Pki::new("test CA");
    let old = pki.issue("gw", "old", &["gw.test"]);
    let up = upstream::http1("up").spawn().await;
    let yaml = config(&up, &format!("  certificates:\n{}", cert_entry(&old, &[])));
    let gw = TestGateway::start(&yaml);
    let addr = gw.local_addrs()[1];
    let client = ClientTls::trusting(&pki).alpn(&["http/1.1"]);
    let stream = tls::connect(addr, "gw.test", &client).await.unwrap();
    let before = tls::Negotiated::of(&stream);
    let mut open = tls::Conn::over(stream).await;
    assert_eq!(open.get("gw.test", "/1").await.status, 200);

    // Renew in place (same file names, as certbot and cert-manager do) and reload with the
    // config file unchanged: the file contents alone make the reload apply.
    let renewed = pki.issue("gw", "renewed", &["gw.test"]);
    let outcome = gw.reload(&yaml).expect("reload");
    assert!(
        matches!(outcome, portico::runtime::ReloadOutcome::Applied { .. }),
        "{outcome:?}"
    );
    let (r, after) = tls::get(addr, "gw.test", &client, "/2").await;
    assert_eq!(r.status, 200);
    assert!(
        after.presented(&renewed),
        "new handshakes get the new certificate"
    );
    assert_ne!(before.peer_cert, after.peer_cert);
    // The connection opened before the reload keeps working.
    assert_eq!(open.get("gw.test", "/3").await.status, 200);

    // A broken key file is refused; the old certificate keeps serving.
    std::fs::write(&renewed.key, "not a key").unwrap();
    let err = gw.reload(&yaml).expect_err("a broken key must be refused");
    assert!(err.to_string().contains("tls.certificates[0]"), "{err}");
    let (r, n) = tls::get(addr, "gw.test", &client, "/4").await;
    assert_eq!(r.status, 200);
    assert!(n.presented(&renewed));
}

#[test]
fn sighup_reloads_renewed_certificates_in_the_real_binary() {
    let pki = Pki::new("test CA");
    let first = pki.issue("gw", "first", &["gw.test"]);
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nservices:\n  a: {{targets: [{{url: \"http://127.0.0.1:9\"}}]}}\nroutes:\n  - {{name: all, service: a}}\ntls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n{}",
        cert_entry(&first, &[])
    );
    let mut gw = support::GatewayProcess::spawn(&yaml, &[]);
    let line = gw.wait_for_line("listening on https://", Duration::from_secs(10));
    let addr: std::net::SocketAddr = line
        .split("https://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = ClientTls::trusting(&pki);
    let n = rt.block_on(async {
        tls::Negotiated::of(&tls::connect(addr, "gw.test", &client).await.unwrap())
    });
    assert!(n.presented(&first));
    let second = pki.issue("gw", "second", &["gw.test"]);
    gw.signal("HUP");
    gw.wait_for_line("config reloaded", Duration::from_secs(10));
    let n = rt.block_on(async {
        tls::Negotiated::of(&tls::connect(addr, "gw.test", &client).await.unwrap())
    });
    assert!(n.presented(&second));
}

#[tokio::test]
async fn plain_listener_redirects_to_https_with_308() {
    let pki = Pki::new("test CA");
    let c = pki.issue("gw", "gw", &["gw.test"]);
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&config(
        &up,
        &format!(
            "  redirect_http: true\n  redirect_port: 8443\n  certificates:\n{}",
            cert_entry(&c, &[])
        ),
    ));
    let r = support::raw_reply(
        gw.addr,
        b"POST /orders?id=7 HTTP/1.1\r\nHost: shop.test:8080\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308, "{:?}", r.wire);
    assert_eq!(r.header("location"), "https://shop.test:8443/orders?id=7");
    assert_eq!(up.hits(), 0, "nothing reaches the upstream over plain HTTP");
}

#[test]
fn unreadable_certificate_files_are_config_errors_at_their_path() {
    let yaml = "services:\n  a: {targets: [{url: \"http://127.0.0.1:9\"}]}\nroutes:\n  - {name: all, service: a}\ntls:\n  listen: [\"127.0.0.1:0\"]\n  alpn: [h3]\n  certificates:\n    - {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}\n";
    let err = TestGateway::try_start(yaml).err().expect("must fail");
    assert!(err.contains("tls.certificates[0]"), "{err}");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert!(err.contains("tls.alpn[0]"), "{err}");
}

#[test]
fn a_certificate_renewed_on_disk_is_picked_up_without_a_signal() {
    let pki = Pki::new("test CA");
    let first = pki.issue("gw", "first", &["gw.test"]);
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nservices:\n  a: {{targets: [{{url: \"http://127.0.0.1:9\"}}]}}\nroutes:\n  - {{name: all, service: a}}\ntls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n{}",
        cert_entry(&first, &[])
    );
    // No --watch: the config file is not watched, the certificate files are.
    let mut gw = support::GatewayProcess::spawn(&yaml, &[]);
    let line = gw.wait_for_line("listening on https://", Duration::from_secs(10));
    let addr: std::net::SocketAddr = line
        .split("https://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let second = pki.issue("gw", "second", &["gw.test"]);
    gw.wait_for_line("config reloaded", Duration::from_secs(10));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = ClientTls::trusting(&pki);
    let n = rt.block_on(async {
        tls::Negotiated::of(&tls::connect(addr, "gw.test", &client).await.unwrap())
    });
    assert!(n.presented(&second));
}

#[tokio::test]
async fn a_route_can_redirect_plain_http_to_https_while_others_stay_plain() {
    let pki = Pki::new("test CA");
    let c = pki.issue("gw", "gw", &["gw.test"]);
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&format!(
        "listen: [\"127.0.0.1:0\"]\nservices:\n  a: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: login, service: a, match: {{path: /login}}, https_redirect: true}}\n  - {{name: rest, service: a}}\ntls:\n  listen: [\"127.0.0.1:0\"]\n  redirect_port: 443\n  certificates:\n{}",
        up.url(),
        cert_entry(&c, &[])
    ));
    let r = support::get(&gw.url("/login?next=/home")).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), "https://127.0.0.1/login?next=/home");
    assert_eq!(support::get(&gw.url("/other")).await.status, 200);
    let (r, _) = tls::get(
        gw.local_addrs()[1],
        "gw.test",
        &ClientTls::trusting(&pki),
        "/login",
    )
    .await;
    assert_eq!(r.status, 200, "over HTTPS the route is proxied");
    assert_eq!(up.hits(), 2);
    let err = TestGateway::try_start(
        "services:\n  a: {targets: [{url: \"http://127.0.0.1:9\"}]}\nroutes:\n  - {name: r, service: a, https_redirect: true}\n",
    )
    .err()
    .expect("needs tls");
    assert!(err.contains("routes[0].https_redirect"), "{err}");
}

#[tokio::test]
async fn a_request_hyper_cannot_parse_over_tls_gets_the_json_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new("test CA");
    let cert = pki.issue("api", "api", &["api.example.com"]);
    let up = upstream::http1("up").spawn().await;
    let gw = TestGateway::start(&config(
        &up,
        &format!(
            "  certificates:\n{}",
            cert_entry(&cert, &["api.example.com"])
        ),
    ));
    let mut s = tls::connect(
        gw.local_addrs()[1],
        "api.example.com",
        &ClientTls::trusting(&pki).alpn(&["http/1.1"]),
    )
    .await
    .expect("handshake");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: api.example.com\r\nX-Bad : 1\r\n\r\n")
        .await
        .expect("write");
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut text))
        .await
        .expect("closed in time")
        .ok();
    let r = support::Reply::parse(&String::from_utf8_lossy(&text));
    let v = r.assert_error(400, "bad_request");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not valid HTTP/1.1"),
        "{v}"
    );
    assert_eq!(up.hits(), 0);
}
