//! Protocols through the gateway: h2c upstreams, inbound HTTP/2 with prior knowledge, and
//! `Upgrade` (WebSocket) passthrough with bytes flowing both ways.

use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::{get, send, upstream, Reply, TestGateway};
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_service(target: &str) -> String {
    Config::new()
        .service(Service::new("a").target(target))
        .route(Route::new("all").service("a"))
        .to_yaml()
}

#[tokio::test]
async fn h2c_target_talks_http2_to_the_upstream() {
    let up = upstream::h2c("h2").spawn().await;
    let gw = TestGateway::start(&one_service(&format!("h2c://{}", up.addr)));
    for i in 0..3 {
        let r = send("POST", &gw.url(&format!("/h2/{i}?q=1")), &[], "hello").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["upstream"], "h2");
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["uri"], format!("http://{}/h2/{i}?q=1", up.addr));
        assert_eq!(echo["body_len"], 5);
        assert_eq!(r.header("x-request-id"), echo["headers"]["x-request-id"][0]);
    }
    // One multiplexed connection serves every request.
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2c_target_gets_the_host_in_authority_only() {
    // HTTP/2 carries the host in `:authority`; a `Host` header that differs from it makes the
    // request malformed (RFC 9113 section 8.3.1), so with `preserve_host` the client's host must
    // be the authority, and no Host header rides along.
    let up = upstream::h2c("h2").spawn().await;
    let target = format!("h2c://{}", up.addr);
    let gw = TestGateway::start(&format!(
        "services:\n  a: {{targets: [{{url: \"{target}\"}}]}}\nroutes:\n  - {{name: keep, service: a, match: {{path: /keep}}, preserve_host: true}}\n  - {{name: rewrite, service: a, match: {{path: /rewrite}}}}\n"
    ));
    let host = [("host", "shop.example.com")];
    let echo = send("GET", &gw.url("/keep"), &host, "").await.json();
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["uri"], "http://shop.example.com/keep");
    assert!(echo["headers"].get("host").is_none(), "{echo}");
    let echo = send("GET", &gw.url("/rewrite"), &host, "").await.json();
    assert_eq!(echo["uri"], format!("http://{}/rewrite", up.addr));
    assert!(echo["headers"].get("host").is_none(), "{echo}");
}

#[tokio::test]
async fn inbound_http2_prior_knowledge_reaches_an_http1_upstream() {
    let up = upstream::http1("h1").spawn().await;
    let gw = TestGateway::start(&one_service(&up.url()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(gw.url("/via-h2?x=1"))
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("reply in time")
        .expect("h2 request");
    assert_eq!(
        resp.version(),
        Version::HTTP_2,
        "the gateway answered over h2"
    );
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["upstream"], "h1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["uri"], "/via-h2?x=1");
    assert_eq!(echo["body_len"], 10);
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!([up.addr.to_string()])
    );
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        serde_json::json!([gw.addr.to_string()])
    );
    // HTTP/1.1 on the same port still works.
    assert_eq!(get(&gw.url("/h1")).await.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn inbound_http2_authority_drives_host_routing() {
    let api = upstream::http1("api").spawn().await;
    let any = upstream::http1("any").spawn().await;
    let gw = TestGateway::start(&format!(
        "services:\n  api: {{targets: [{{url: \"{}\"}}]}}\n  any: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: api, service: api, match: {{hosts: [\"*.example.com\"]}}}}\n  - {{name: any, service: any}}\n",
        api.url(),
        any.url()
    ));
    // An h2 connection to the gateway's address whose requests name other hosts in :authority.
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for (authority, want) in [("api.example.com", "api"), ("elsewhere.test", "any")] {
        let req = Request::get(format!("http://{authority}/r"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("reply in time")
            .expect("h2 request");
        let r = Reply::read(resp).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["upstream"], want, ":authority {authority}");
        assert_eq!(
            echo["headers"]["x-forwarded-host"],
            serde_json::json!([authority])
        );
    }
}

/// An upstream `/ws` that accepts the upgrade, greets, then answers every read with `echo:` + data.
/// Like real WebSocket servers (RFC 6455 section 4.2.1), it refuses a handshake whose
/// `Connection` header lacks the `upgrade` token.
fn websocket_upstream() -> upstream::Handler {
    upstream::handler(|mut req: Request<hyper::body::Incoming>| async move {
        let connection_upgrade = req
            .headers()
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        if !connection_upgrade {
            let mut r = Response::new(upstream::full("missing Connection: upgrade"));
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            return r;
        }
        let key = req
            .headers()
            .get("sec-websocket-key")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let upgrade = req
            .headers()
            .get("upgrade")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            if io.write_all(b"hello from upstream\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if io.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = io.shutdown().await;
        });
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("x-upgrade-seen", upgrade)
            .header("sec-websocket-accept", format!("key={key}"))
            .body(upstream::full(""))
            .unwrap()
    })
}

/// Reads from `s` until `buf` holds at least `n` bytes past `start`, or fails after 10 s.
async fn read_at_least(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while buf.len() < n {
            let got = s.read(&mut chunk).await.expect("read");
            assert!(
                got > 0,
                "connection closed early; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..got]);
        }
    })
    .await
    .expect("data within 10s");
}

#[tokio::test]
async fn websocket_upgrade_passes_through_and_bytes_flow_both_ways() {
    let up = upstream::http1("ws")
        .route("/ws", websocket_upstream())
        .spawn()
        .await;
    let gw = TestGateway::start(&one_service(&up.url()));

    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("handshake");

    // The 101 head, possibly followed by the upstream's greeting in the same read.
    let mut buf = Vec::new();
    let head_end = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return i + 4;
            }
            let n = s.read(&mut chunk).await.expect("read head");
            assert!(
                n > 0,
                "closed before the 101: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("101 within 10s");
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nx-upgrade-seen: websocket\r\n"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-accept: key=dghlihnhbxbszsbub25jzq==\r\n"),
        "{head}"
    );
    let mut data = buf.split_off(head_end);

    // Upstream -> client.
    let greeting = b"hello from upstream\n";
    read_at_least(&mut s, &mut data, greeting.len()).await;
    assert_eq!(&data[..], greeting);

    // Client -> upstream -> client, several rounds.
    for round in 0..5 {
        let msg = format!("ping {round}");
        s.write_all(msg.as_bytes()).await.expect("write");
        let want = format!("echo:{msg}");
        let mut got = Vec::new();
        read_at_least(&mut s, &mut got, want.len()).await;
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    // Closing our side ends the tunnel: the upstream shuts down and we read EOF.
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("EOF within 10s")
        .expect("read to end");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}
