//! Reload and shutdown on the real binary: SIGHUP and `--watch` apply a new config, a broken or
//! identical file changes nothing, open WebSocket and streaming exchanges survive a reload,
//! 1,000 reloads keep memory flat, and SIGTERM drains in-flight requests before exiting 0.
//!
//! Readiness is always a log line of the gateway ("config reloaded", "config unchanged",
//! "config reload rejected", "stopped accepting on"), never a sleep.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::upstream::{self, UpBody};
use crate::support::{self, get, pos_of, with_defaults, GatewayProcess, Reply};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};

const WAIT: Duration = Duration::from_secs(20);

/// Runs blocking harness calls (log waits, signals) without stalling the upstreams that share
/// this test's runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Overwrites the gateway's config file (with the harness defaults, as at spawn) and sends
/// SIGHUP; returns the log line that reports the outcome.
fn hup(gw: &mut GatewayProcess, yaml: &str, expect: &str) -> String {
    blocking(|| {
        std::fs::write(&gw.config, with_defaults(yaml)).expect("write config");
        gw.signal("HUP");
        gw.wait_for_line(expect, WAIT)
    })
}

/// One service `up` and one route per `(name, prefix)`.
fn config(up: &str, routes: &[(&str, &str)]) -> String {
    let config = Config::new().service(Service::new("up").target(up));
    routes
        .iter()
        .fold(config, |c, (name, prefix)| {
            c.route(Route::new(name).path(prefix).service("up"))
        })
        .to_yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_route_and_keeps_keepalive_connections() {
    let up = upstream::http1("up").spawn().await;
    let mut gw = blocking(|| GatewayProcess::spawn(&config(&up.url(), &[("old", "/old")]), &[]));
    assert_eq!(get(&gw.url("/old/x")).await.status, 200);

    // A keep-alive connection opened before the reload.
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let on_conn = |path: &str| {
        Request::get(path)
            .header("host", "gw.test")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let r = sender.send_request(on_conn("/old/1")).await.expect("send");
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.expect("body");
    sender.ready().await.expect("keep-alive");

    let line = hup(
        &mut gw,
        &config(&up.url(), &[("new", "/new")]),
        "config reloaded",
    );
    assert!(line.contains("revision=2"), "{line}");

    let r = get(&gw.url("/new/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uri"], "/new/x");
    get(&gw.url("/old/x")).await.assert_error(404, "no_route");

    // The connection from before the reload is still open and now sees the new routes.
    sender
        .ready()
        .await
        .expect("connection survived the reload");
    let r = sender.send_request(on_conn("/new/2")).await.expect("send");
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.expect("body");
    sender.ready().await.expect("still open");
    let r = sender.send_request(on_conn("/old/2")).await.expect("send");
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_is_rejected_with_validate_errors_and_the_old_config_keeps_serving() {
    let up = upstream::http1("up").spawn().await;
    let good = config(&up.url(), &[("api", "/api")]);
    let mut gw = blocking(|| GatewayProcess::spawn(&good, &[]));

    let broken = format!(
        "{}  - name: typo\n    match: {{path: /t, hostz: [a.example.com]}}\n    service: nowhere\n",
        config(&up.url(), &[("api", "/api"), ("new", "/new")])
    );
    hup(&mut gw, &broken, "config reload rejected");
    // The errors are the ones `portico validate` prints: FILE:LINE:COL: path: message.
    let text = with_defaults(&broken);
    let (line, col) = pos_of(&text, "hostz");
    let expected = format!(
        "{}:{line}:{col}: routes[2].match.hostz: unknown field `hostz`",
        gw.config.display()
    );
    let logged = blocking(|| gw.wait_for_line(&expected, WAIT));
    assert!(logged.contains("expected one of"), "{logged}");
    let (line, col) = pos_of(&text, "nowhere");
    blocking(|| {
        gw.wait_for_line(
            &format!(
                "{}:{line}:{col}: routes[2].service: unknown service `nowhere`",
                gw.config.display()
            ),
            WAIT,
        )
    });

    assert_eq!(get(&gw.url("/api/1")).await.status, 200);
    get(&gw.url("/new/1")).await.assert_error(404, "no_route");

    // A YAML syntax error is rejected the same way.
    hup(&mut gw, "routes: [\n", "config reload rejected");
    blocking(|| gw.wait_for_line("YAML syntax error", WAIT));
    assert_eq!(get(&gw.url("/api/2")).await.status, 200);

    // And a fixed file is applied.
    hup(
        &mut gw,
        &config(&up.url(), &[("api", "/api"), ("new", "/new")]),
        "config reloaded",
    );
    assert_eq!(get(&gw.url("/new/1")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_picks_up_an_edit() {
    let up = upstream::http1("up").spawn().await;
    let mut gw =
        blocking(|| GatewayProcess::spawn(&config(&up.url(), &[("a", "/a")]), &["--watch"]));
    get(&gw.url("/watched")).await.assert_error(404, "no_route");

    blocking(|| {
        std::fs::write(
            &gw.config,
            with_defaults(&config(&up.url(), &[("a", "/a"), ("watched", "/watched")])),
        )
        .expect("write");
        gw.wait_for_line("config file changed", WAIT);
        gw.wait_for_line("config reloaded", WAIT);
    });
    assert_eq!(get(&gw.url("/watched")).await.status, 200);

    // A broken edit is rejected and the last good config keeps serving.
    blocking(|| {
        std::fs::write(&gw.config, "routes: {{{\n").expect("write");
        gw.wait_for_line("config reload rejected", WAIT);
    });
    assert_eq!(get(&gw.url("/watched")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_or_equivalent_config_is_a_no_op() {
    let up = upstream::http1("up").spawn().await;
    let yaml = config(&up.url(), &[("a", "/a"), ("b", "/b")]);
    let mut gw = blocking(|| GatewayProcess::spawn(&yaml, &[]));

    let line = hup(&mut gw, &yaml, "config unchanged");
    assert!(line.contains("nothing to reload"), "{line}");

    // Comments, layout, quoting and spelled-out defaults do not change the config either.
    let equivalent = format!(
        "# a comment\n{}\nlog_level: \"info\"\nforwarding: {{x_forwarded: true}}\n",
        yaml.replace("{path: /a}", "\n      path: \"/a\"")
    );
    hup(&mut gw, &equivalent, "config unchanged");

    // The next real change gets revision 2: nothing was published in between.
    let line = hup(
        &mut gw,
        &config(&up.url(), &[("a", "/a")]),
        "config reloaded",
    );
    assert!(line.contains("revision=2"), "{line}");
    assert_eq!(get(&gw.url("/a")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_change_is_reported_as_needing_a_restart() {
    let up = upstream::http1("up").spawn().await;
    let yaml = config(&up.url(), &[("a", "/a")]);
    let mut gw = blocking(|| GatewayProcess::spawn(&yaml, &[]));
    let moved = format!("listen: [\"127.0.0.1:1\"]\nworkers: 2\n{yaml}");
    let warning = hup(&mut gw, &moved, "take effect only after a restart");
    assert!(
        warning.contains("listen") && warning.contains("workers"),
        "{warning}"
    );
    blocking(|| gw.wait_for_line("config reloaded", WAIT));
    // Still on the original listener.
    assert_eq!(get(&gw.url("/a")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_right_after_startup_is_handled_not_fatal() {
    // The handlers are installed before "listening on" is logged: SIGHUP's and SIGTERM's
    // default action would otherwise kill a gateway signalled as soon as it says it is up.
    let up = upstream::http1("up").spawn().await;
    let yaml = config(&up.url(), &[("a", "/a")]);
    for _ in 0..5 {
        let mut gw = blocking(|| GatewayProcess::spawn(&yaml, &[]));
        blocking(|| {
            gw.signal("HUP");
            gw.wait_for_line("config unchanged", WAIT);
            gw.signal("TERM");
            assert_eq!(gw.wait_exit(WAIT), Some(0));
        });
    }
}

// === A reload with a WebSocket and a streaming download open ===

/// A response body fed by a channel: each message is one chunk; the body ends when the sender
/// is dropped. The test decides when each chunk goes out.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Answers a WebSocket handshake with 101 and then echoes every byte on the upgraded stream.
async fn websocket_echo(mut req: Request<Incoming>) -> Response<UpBody> {
    let wants = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !wants {
        let mut r = Response::new(upstream::full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(upstream::full(""))
        .unwrap()
}

/// Opens a WebSocket through the gateway; returns the stream after a 101.
async fn open_websocket(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut ws = TcpStream::connect(addr).await.expect("connect");
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    ws.write_all(handshake.as_bytes()).await.expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, ws.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read");
        assert!(
            n == 1,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
        assert!(head.len() < 8192);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws
}

async fn ws_roundtrip(ws: &mut TcpStream, msg: &[u8]) {
    ws.write_all(msg).await.expect("ws write");
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, ws.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("ws read");
    assert_eq!(got, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_break_an_open_websocket_or_streaming_download() {
    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel::<Bytes>();
    let chunks_rx = Arc::new(Mutex::new(Some(chunks_rx)));
    let up = upstream::http1("up")
        .route("/ws", upstream::handler(websocket_echo))
        .route(
            "/download",
            upstream::handler(move |_req| {
                let rx = chunks_rx.lock().unwrap().take().expect("one download");
                async move { Response::new(ChannelBody(rx).boxed()) }
            }),
        )
        .spawn()
        .await;
    let before = config(&up.url(), &[("ws", "/ws"), ("download", "/download")]);
    let mut gw = blocking(|| GatewayProcess::spawn(&before, &[]));

    // Open both exchanges on the old config.
    let mut ws = open_websocket(gw.addr, "/ws").await;
    ws_roundtrip(&mut ws, b"before the reload").await;

    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/download")
                .header("host", "gw.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("download response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let mut next_chunk = async |tx: &mpsc::UnboundedSender<Bytes>, chunk: &'static [u8]| {
        tx.send(Bytes::from_static(chunk))
            .expect("upstream body open");
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("chunk in time")
            .expect("body still open")
            .expect("chunk");
        received.extend_from_slice(&frame.into_data().expect("data frame"));
    };
    next_chunk(&chunks_tx, b"chunk-1;").await;

    // Reload to a config without either route: new requests no longer reach them...
    hup(
        &mut gw,
        &config(&up.url(), &[("other", "/other")]),
        "config reloaded",
    );
    get(&gw.url("/download"))
        .await
        .assert_error(404, "no_route");

    // ...but both open exchanges carry on to the end.
    ws_roundtrip(&mut ws, b"after the reload").await;
    next_chunk(&chunks_tx, b"chunk-2;").await;
    hup(
        &mut gw,
        &config(&up.url(), &[("other", "/other"), ("more", "/more")]),
        "config reloaded",
    );
    next_chunk(&chunks_tx, b"chunk-3").await;
    ws_roundtrip(&mut ws, b"after two reloads").await;
    drop(chunks_tx);
    let end = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("end in time");
    assert!(end.is_none(), "the download ends cleanly: {end:?}");
    assert_eq!(received, b"chunk-1;chunk-2;chunk-3");

    ws.shutdown().await.expect("close websocket");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, ws.read_to_end(&mut rest))
        .await
        .expect("close in time")
        .expect("clean close");
    assert_eq!(n, 0, "nothing after close: {rest:?}");
}

// === 1,000 reloads ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_keep_memory_flat_and_the_gateway_serving() {
    let up = upstream::http1("up").spawn().await;
    // Two different valid configs, so every reload is applied (not a no-op).
    let a = config(&up.url(), &[("a", "/a"), ("shared", "/shared")]);
    let b = format!(
        "{}  - name: b\n    match: {{path: \"/b/{{id}}\", methods: [GET]}}\n    service: up\n    rewrite: {{path: \"/x/{{id}}\"}}\n",
        config(&up.url(), &[("shared", "/shared")])
    );
    let mut gw = blocking(|| GatewayProcess::spawn(&a, &[]));
    let a_file = with_defaults(&a);
    let b_file = with_defaults(&b);

    // Warm up: allocator arenas, the upstream pool, a few reloads.
    let mut revision = 1;
    for i in 0..20 {
        assert_eq!(get(&gw.url("/shared")).await.status, 200);
        let next = if i % 2 == 0 { &b_file } else { &a_file };
        blocking(|| {
            std::fs::write(&gw.config, next).expect("write");
            gw.signal("HUP");
            gw.wait_for_line("config reloaded", WAIT);
        });
        revision += 1;
    }
    let before = gw.rss_kib();

    const RELOADS: usize = 1000;
    for i in 0..RELOADS {
        let next = if i % 2 == 0 { &b_file } else { &a_file };
        let line = blocking(|| {
            std::fs::write(&gw.config, next).expect("write");
            gw.signal("HUP");
            gw.wait_for_line("config reloaded", WAIT)
        });
        revision += 1;
        if i % 100 == 0 {
            assert!(line.contains(&format!("revision={revision}")), "{line}");
            assert_eq!(get(&gw.url("/shared")).await.status, 200);
        }
    }
    let after = gw.rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS before {RELOADS} reloads: {before} KiB, after: {after} KiB, growth: {growth} KiB"
    );
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB over {RELOADS} reloads ({before} -> {after} KiB)"
    );

    // Still serving, with the last config (RELOADS is even: back to `a`).
    assert_eq!(get(&gw.url("/a/1")).await.status, 200);
    assert_eq!(get(&gw.url("/shared")).await.status, 200);
    get(&gw.url("/b/1")).await.assert_error(404, "no_route");
}

// === SIGTERM ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_in_flight_request_refuses_new_ones_and_exits_zero() {
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let (s, g) = (Arc::clone(&started), Arc::clone(&gate));
    let up = upstream::http1("up")
        .route(
            "/slow",
            upstream::handler(move |_req| {
                let (started, gate) = (Arc::clone(&s), Arc::clone(&g));
                async move {
                    started.notify_one();
                    let _permit = gate.acquire().await.expect("gate");
                    Response::new(upstream::full("slow but complete"))
                }
            }),
        )
        .spawn()
        .await;
    let mut gw = blocking(|| GatewayProcess::spawn(&config(&up.url(), &[("all", "/")]), &[]));
    let addr = gw.addr;

    let slow_url = gw.url("/slow");
    let in_flight = tokio::spawn(async move { get(&slow_url).await });
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the slow request reached the upstream");

    blocking(|| {
        gw.signal("TERM");
        gw.wait_for_line("shutting down", WAIT);
        gw.wait_for_line(&format!("stopped accepting on {addr}"), WAIT);
    });
    // Draining: the listener is closed, the process is still there for the slow request.
    let refused = std::net::TcpStream::connect(addr);
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "new connections must be refused while draining: {refused:?}"
    );
    assert!(
        gw.child.try_wait().expect("try_wait").is_none(),
        "exited too early"
    );

    gate.add_permits(1);
    let reply = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("in-flight reply in time")
        .expect("client task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slow but complete");

    let code = blocking(|| gw.wait_exit(WAIT));
    assert_eq!(code, Some(0), "graceful shutdown exits 0");
    assert!(std::net::TcpStream::connect(addr).is_err());
}

// === Configs that must not take the gateway down (issue 15) ===

/// `POST /reload` on the admin API after writing `yaml` (with the harness defaults) over the
/// config file.
async fn admin_reload(gw: &GatewayProcess, yaml: &str) -> Reply {
    std::fs::write(&gw.config, with_defaults(yaml)).expect("write config");
    support::send("POST", &gw.admin_url("/reload"), &[], "").await
}

/// The one error of a rejected reload reply.
fn only_error(reply: &serde_json::Value) -> &serde_json::Value {
    assert_eq!(reply["error"], "config_invalid", "{reply}");
    let errors = reply["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{reply}");
    &errors[0]
}

/// A basic-auth route whose credential cache keeps entries for `ttl`.
fn basic_auth_config(up: &str, ttl: &str) -> String {
    format!(
        "{}    policies:\n      - auth: {{basic: true}}\nconsumers:\n  - name: ada\n    basic: {{username: ada, password_hash: \"$2b$04$abcdefghijklmnopqrstuu5Fq6/Hd2WzjYt8YpqBXSU4TA/AR.9xW\"}}\nauth:\n  basic: {{cache_ttl: {ttl}}}\n",
        config(up, &[("api", "/api")])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400000_day_cache_ttl_is_a_config_error_on_post_reload_and_sighup_not_a_crash() {
    let up = upstream::http1("up").spawn().await;
    let mut gw = blocking(|| GatewayProcess::spawn(&config(&up.url(), &[("open", "/open")]), &[]));

    // Before the fix the reply never came: the admin thread died in moka's builder.
    let bad = basic_auth_config(&up.url(), "400000d");
    let r = admin_reload(&gw, &bad).await;
    let reply = r.json();
    assert_eq!(r.status, 400, "{reply}");
    let e = only_error(&reply);
    assert_eq!(e["path"], "auth.basic.cache_ttl", "{reply}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("longer than 365d")),
        "{reply}"
    );
    let (line, col) = pos_of(&with_defaults(&bad), "400000d");
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(line as u64), Some(col as u64))
    );
    assert_eq!(get(&gw.url("/open/1")).await.status, 200);

    // SIGHUP (which before the fix killed the process) is rejected the same way.
    hup(&mut gw, &bad, "config reload rejected");
    blocking(|| gw.wait_for_line("auth.basic.cache_ttl: `400000d` is longer than 365d", WAIT));
    assert_eq!(get(&gw.url("/open/2")).await.status, 200);
    assert!(
        gw.child.try_wait().expect("try_wait").is_none(),
        "still running"
    );

    // The longest accepted TTL is applied.
    let r = admin_reload(&gw, &basic_auth_config(&up.url(), "365d")).await;
    let reply = r.json();
    assert_eq!(r.status, 200, "{reply}");
    assert_eq!(reply["result"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_nested_lists_on_post_reload_are_a_config_error_not_a_stack_overflow() {
    let up = upstream::http1("up").spawn().await;
    let good = config(&up.url(), &[("api", "/api")]);
    let gw = blocking(|| GatewayProcess::spawn(&good, &[]));

    // 10 KB of `- - - ...`: before the fix this overflowed the admin thread's stack (exit 134).
    let deep = format!("{good}extra:\n{}x\n", "- ".repeat(5000));
    let r = admin_reload(&gw, &deep).await;
    let reply = r.json();
    assert_eq!(r.status, 400, "{reply}");
    let e = only_error(&reply);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than 64 levels deep")),
        "{reply}"
    );
    assert!(e["line"].as_u64().is_some(), "{reply}");
    // The same depth in flow style.
    let flow = format!("{good}extra: {}x{}\n", "[".repeat(5000), "]".repeat(5000));
    let r = admin_reload(&gw, &flow).await;
    let reply = r.json();
    assert_eq!(r.status, 400, "{reply}");
    assert!(only_error(&reply)["message"]
        .as_str()
        .is_some_and(|m| m.contains("levels deep")));
    assert_eq!(get(&gw.url("/api/1")).await.status, 200);
}

/// A billion-laughs document under the YAML deserializer's own repetition limit: 3,000 scalars
/// expanded three million times (about 200 MB as a `serde_yaml_ng::Value`) from 14 KB of text.
fn alias_bomb(base: &str) -> String {
    let row = vec!["laughing"; 1000].join(", ");
    let a = vec!["*a"; 1000].join(", ");
    format!("{base}x-a: &a [{row}]\nx-b: &b [{a}]\nx-c: [*b, *b, *b]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_bomb_is_refused_before_it_expands_and_rss_stays_where_it_was() {
    let up = upstream::http1("up").spawn().await;
    let good = config(&up.url(), &[("api", "/api")]);
    let gw = blocking(|| GatewayProcess::spawn(&good, &[]));
    // Warm up the admin thread and the allocator with one ordinary rejected reload.
    let r = admin_reload(&gw, &format!("{good}nope: 1\n")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let (rss_before, peak_before) = (gw.rss_kib(), gw.hwm_kib());

    let bomb = alias_bomb(&good);
    assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());
    let r = admin_reload(&gw, &bomb).await;
    let reply = r.json();
    assert_eq!(r.status, 400, "{reply}");
    assert!(
        only_error(&reply)["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused before building it")),
        "{reply}"
    );
    let (rss_after, peak_after) = (gw.rss_kib(), gw.hwm_kib());
    eprintln!(
        "alias bomb: RSS {rss_before} -> {rss_after} KiB, peak {peak_before} -> {peak_after} KiB"
    );
    // Before the fix the peak rose by about 200 MB and RSS stayed up.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        peak_after < peak_before + 8 * 1024,
        "the peak RSS grew from {peak_before} to {peak_after} KiB: the bomb was expanded"
    );
    assert_eq!(get(&gw.url("/api/1")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_queue_too_large_to_allocate_is_a_config_error_not_an_abort() {
    let up = upstream::http1("up").spawn().await;
    let good = config(&up.url(), &[("api", "/api")]);
    let gw = blocking(|| GatewayProcess::spawn(&good, &[]));
    // Before the fix this passed validation, and starting the exporter on reload tried to
    // allocate 37 TB for the queue: the process aborted.
    let huge = format!(
        "{good}tracing:\n  otlp: {{endpoint: \"http://127.0.0.1:1/v1/traces\", max_queue_size: 100000000000}}\n"
    );
    let r = admin_reload(&gw, &huge).await;
    let reply = r.json();
    assert_eq!(r.status, 400, "{reply}");
    let e = only_error(&reply);
    assert_eq!(e["path"], "tracing.otlp.max_queue_size", "{reply}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("between 1 and 65536")),
        "{reply}"
    );
    assert_eq!(get(&gw.url("/api/1")).await.status, 200);
}
