//! The `ip_filter` policy over real sockets, with and without `trusted_proxies`.

use crate::support::config::{Config, Route, Service};
use crate::support::{send, upstream, TestGateway};

fn config(url: &str, extra: &str, policy: &str) -> String {
    Config::new()
        .yaml(extra)
        .service(Service::new("a").target(url))
        .route(Route::new("r").service("a").policy("ip_filter", policy))
        .to_yaml()
}

#[tokio::test]
async fn the_peer_address_is_judged_when_no_proxy_is_trusted() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(&up.url(), "", "{allow: [127.0.0.0/8]}"));
    let r = send("GET", &gw.url("/x"), &[("x-forwarded-for", "10.9.9.9")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let gw = TestGateway::start(&config(&up.url(), "", "{deny: [127.0.0.1]}"));
    // A forged X-Forwarded-For from an untrusted peer does not help.
    let r = send("GET", &gw.url("/x"), &[("x-forwarded-for", "10.9.9.9")], "").await;
    let body = r.assert_error(403, "forbidden");
    assert!(body["message"].as_str().unwrap().contains("IP address"));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_judged() {
    let up = upstream::http1("a").spawn().await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "trusted_proxies: [127.0.0.1/32]\n",
        "{allow: [10.0.0.0/8], deny: [10.0.0.13]}",
    ));
    let ok = send("GET", &gw.url("/x"), &[("x-forwarded-for", "10.1.2.3")], "").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let denied = send(
        "GET",
        &gw.url("/x"),
        &[("x-forwarded-for", "10.0.0.13")],
        "",
    )
    .await;
    denied.assert_error(403, "forbidden");
    let outside = send("GET", &gw.url("/x"), &[("x-forwarded-for", "8.8.8.8")], "").await;
    outside.assert_error(403, "forbidden");
    // No header: the proxy itself (127.0.0.1) is the client, and it is not in the allow list.
    let direct = send("GET", &gw.url("/x"), &[], "").await;
    direct.assert_error(403, "forbidden");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn bad_entries_are_config_errors() {
    let err = TestGateway::try_start(&config("http://127.0.0.1:1", "", "{allow: [10.0.0.0/33]}"))
        .err()
        .expect("refused");
    assert!(
        err.contains("routes[0].policies[0].ip_filter.allow[0]"),
        "{err}"
    );
}
