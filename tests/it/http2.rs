//! HTTP/2 abuse resistance on client connections, with raw frames on real sockets: the
//! advertised stream limit, rapid reset (CVE-2023-44487), CONTINUATION floods, and proof that
//! other clients keep being served while one connection misbehaves.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{Config, Route, Service};
use crate::support::{upstream, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://localhost/`: static-table indexes for :method, :scheme and :path, and
/// :authority as a literal without indexing (so the block is the same on every stream).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"localhost");
    b
}

/// A literal header `x-filler: aaa...` (`len` bytes of value, under 127) without indexing.
fn filler(len: u8) -> Vec<u8> {
    let mut b = vec![0x00, 8];
    b.extend_from_slice(b"x-filler");
    b.push(len);
    b.extend(std::iter::repeat_n(b'a', len as usize));
    b
}

async fn open_h2(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Reads frames until one of `kind` arrives (returns its payload) or the server closes
/// (`None`), for at most `wait`.
async fn read_until(s: &mut TcpStream, kind: u8, wait: Duration) -> Option<Vec<u8>> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0; len];
            s.read_exact(&mut payload).await.ok()?;
            if head[3] == kind && (kind != SETTINGS || head[4] & 0x1 == 0) {
                return Some(payload);
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

fn gateway(up: &upstream::Upstream, extra: &str) -> TestGateway {
    TestGateway::start(
        &Config::new()
            .service(Service::new("a").target(up.url()))
            .route(Route::new("all").service("a"))
            .yaml(extra)
            .to_yaml(),
    )
}

/// A well-behaved HTTP/2 client sending GETs in a loop until `stop`; counts successes and
/// failures.
fn bystander(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (ok2, failed2) = (Arc::clone(&ok), Arc::clone(&failed));
    let task = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<Full<Bytes>>();
        while !stop.load(Ordering::SeqCst) {
            let req = http::Request::get(format!("http://{addr}/ok"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(2), async {
                let resp = client.request(req).await.ok()?;
                let status = resp.status();
                resp.into_body().collect().await.ok()?;
                Some(status)
            })
            .await;
            match r {
                Ok(Some(s)) if s == 200 => ok2.fetch_add(1, Ordering::SeqCst),
                _ => failed2.fetch_add(1, Ordering::SeqCst),
            };
        }
    });
    (ok, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_advertised_from_config() {
    let up = upstream::http1("up").spawn().await;
    let gw = gateway(&up, "http2: {max_concurrent_streams: 7}\n");
    let mut s = open_h2(gw.addr).await;
    let settings = read_until(&mut s, SETTINGS, Duration::from_secs(5))
        .await
        .expect("server SETTINGS");
    let limit = settings.chunks(6).find_map(|c| {
        (u16::from_be_bytes([c[0], c[1]]) == 0x3)
            .then(|| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    });
    assert_eq!(limit, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_a_goaway_and_other_clients_are_still_served() {
    let up = upstream::http1("up")
        .route(
            "/",
            upstream::handler(|_req| async {
                // A slow-ish upstream makes cancelled streams pile up on the gateway's side,
                // as in the real attack.
                tokio::time::sleep(Duration::from_millis(20)).await;
                http::Response::new(upstream::full("ok"))
            }),
        )
        .spawn()
        .await;
    let gw = gateway(&up, "");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, task) = bystander(gw.addr, Arc::clone(&stop));

    let mut attacker = open_h2(gw.addr).await;
    let block = get_block();
    let mut batch = Vec::new();
    let mut sent = 0u32;
    let mut write_failed = false;
    // Up to 20,000 streams opened and cancelled at once, in batches of 100 per write.
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if batch.len() > 4_000 {
            if attacker.write_all(&batch).await.is_err() {
                write_failed = true;
                break;
            }
            batch.clear();
        }
        sent = i + 1;
    }
    let goaway = read_until(&mut attacker, GOAWAY, Duration::from_secs(10)).await;
    match &goaway {
        Some(payload) => {
            let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            assert_eq!(code, 0xb, "GOAWAY with ENHANCE_YOUR_CALM");
        }
        None => assert!(
            write_failed,
            "the attacker was neither sent a GOAWAY nor cut off"
        ),
    }
    assert!(sent < 20_000 || goaway.is_some(), "the attack was stopped");
    // Others kept being served during the attack and are served after it.
    let before = ok.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), async {
        while ok.load(Ordering::SeqCst) < before + 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the bystander keeps getting answers");
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no bystander request failed"
    );
    // The upstream saw only a small part of the cancelled streams.
    assert!(up.hits() < 2_000, "upstream hits: {}", up.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_other_clients_are_still_served() {
    let up = upstream::http1("up").spawn().await;
    let gw = gateway(&up, "");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, task) = bystander(gw.addr, Arc::clone(&stop));

    let mut attacker = open_h2(gw.addr).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // of ~1 KiB each, up to 64 MiB in all.
    let mut first = get_block();
    first.extend(filler(100));
    let mut cut_off = attacker
        .write_all(&frame(HEADERS, END_STREAM, 1, &first))
        .await
        .is_err();
    let mut chunk = Vec::new();
    for _ in 0..9 {
        chunk.extend(filler(100));
    }
    let cont = frame(CONTINUATION, 0, 1, &chunk);
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(&cont);
    }
    let mut written = 0usize;
    while !cut_off && written < 64 << 20 {
        match tokio::time::timeout(Duration::from_secs(5), attacker.write_all(&batch)).await {
            Ok(Ok(())) => written += batch.len(),
            _ => cut_off = true,
        }
    }
    let goaway = read_until(&mut attacker, GOAWAY, Duration::from_secs(5)).await;
    assert!(
        cut_off || goaway.is_some(),
        "the flood ({written} bytes) was neither refused nor cut off"
    );
    assert!(written < 64 << 20, "the gateway swallowed the whole flood");
    let before = ok.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), async {
        while ok.load(Ordering::SeqCst) < before + 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the bystander keeps getting answers");
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert_eq!(
        up.hits(),
        ok.load(Ordering::SeqCst),
        "the flood never reached the upstream"
    );
}

/// `GET http://localhost/` with a `host` header of `host` besides `:authority: localhost`.
fn get_block_with_host(host: &str) -> Vec<u8> {
    let mut b = get_block();
    // `host`: literal without indexing, name from the static table (index 38).
    b.extend_from_slice(&[0x0f, 38 - 15, host.len() as u8]);
    b.extend_from_slice(host.as_bytes());
    b
}

#[tokio::test]
async fn a_host_header_that_differs_from_authority_gets_a_400() {
    let up = upstream::http1("a").spawn().await;
    let gw = gateway(&up, "");
    for (host, status_byte) in [("evil.example", 0x8c_u8), ("localhost", 0x88)] {
        let mut s = open_h2(gw.addr).await;
        s.write_all(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &get_block_with_host(host),
        ))
        .await
        .unwrap();
        let head = read_until(&mut s, HEADERS, Duration::from_secs(10))
            .await
            .expect("a response head");
        // `:status` comes first, as an indexed field: 0x88 is 200, 0x8c is 400.
        assert_eq!(head[0], status_byte, "host {host}: {head:?}");
    }
    assert_eq!(up.hits(), 1, "only the consistent request was forwarded");
}
