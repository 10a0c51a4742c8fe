//! Bodies stream through the gateway in both directions with bounded memory: a 100 MiB upload, a
//! 64 MiB download read by a client that stalls (backpressure), and chunked replies intact.
//!
//! The memory tests run the real binary (`GatewayProcess`) so /proc shows the gateway alone; the
//! upstreams and clients live in this test process.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::support::{get, upstream, GatewayProcess, Reply, TestGateway};
use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const MIB: u64 = 1024 * 1024;

/// `count` chunks of `chunk` bytes, made on demand: the client side never holds the whole body.
struct Generated {
    chunk: Bytes,
    left: u64,
}

impl Generated {
    fn new(total: u64, chunk: usize) -> Self {
        Self {
            chunk: Bytes::from(vec![b'x'; chunk]),
            left: total,
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The byte at `offset` of the generated download: a pattern that catches lost, repeated or
/// reordered data.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// The receive buffer of the slow download client.
const CLIENT_RCVBUF: u64 = 256 * 1024;

/// Largest number of bytes the kernel can buffer on the download path: two send buffers (upstream
/// and gateway), the gateway's receive buffer from the upstream, and our fixed receive buffer
/// (Linux doubles SO_RCVBUF for bookkeeping).
fn kernel_buffer_bound() -> u64 {
    let max_of = |file: &str| -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.split_whitespace().last().and_then(|v| v.parse().ok()))
            .unwrap_or(8 * MIB)
    };
    let rmem = max_of("/proc/sys/net/ipv4/tcp_rmem");
    let wmem = max_of("/proc/sys/net/ipv4/tcp_wmem");
    2 * wmem + rmem + 2 * CLIENT_RCVBUF
}

/// Starts the real binary on a blocking thread (its startup wait is blocking).
async fn spawn_gateway(yaml: String) -> GatewayProcess {
    tokio::task::spawn_blocking(move || GatewayProcess::spawn(&yaml, &[]))
        .await
        .expect("gateway thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mib_streams_through_with_bounded_gateway_memory() {
    const SIZE: u64 = 100 * MIB;
    let up = upstream::http1("sink").spawn().await;
    let gw = spawn_gateway(format!(
        "services:\n  s: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: up, service: s, max_body_bytes: 200MiB, timeout: 120s}}\n",
        up.url()
    ))
    .await;
    // Warm up (first connection, pool, buffers), then take the baseline.
    assert_eq!(get(&gw.url("/warm")).await.status, 200);
    let (hwm_before, rss_before) = (gw.hwm_kib(), gw.rss_kib());

    let client: Client<_, Generated> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(gw.url("/upload"))
        .body(Generated::new(SIZE, 64 * 1024))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("upload finished within 120s")
        .expect("upload request");
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["body_len"], SIZE, "the upstream got every byte");
    assert_eq!(echo["headers"]["content-length"][0], SIZE.to_string());

    let (hwm_after, rss_after) = (gw.hwm_kib(), gw.rss_kib());
    let grew_kib = hwm_after.saturating_sub(hwm_before);
    eprintln!(
        "upload: gateway VmHWM {hwm_before} -> {hwm_after} KiB, VmRSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        grew_kib < 40 * 1024,
        "gateway peak memory grew by {grew_kib} KiB while streaming {} MiB",
        SIZE / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_of_64_mib_download_keeps_gateway_memory_bounded() {
    const SIZE: u64 = 64 * MIB;
    const CHUNK: u64 = 64 * 1024;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&produced);
    let up = upstream::http1("source")
        .route(
            "/big",
            upstream::handler(move |_req| {
                let counter = Arc::clone(&counter);
                async move {
                    let mut offset = 0u64;
                    let body = upstream::generated(move || {
                        if offset >= SIZE {
                            return None;
                        }
                        let n = CHUNK.min(SIZE - offset);
                        let chunk: Vec<u8> = (offset..offset + n).map(pattern).collect();
                        offset += n;
                        counter.fetch_add(n, Ordering::SeqCst);
                        Some(Bytes::from(chunk))
                    });
                    http::Response::new(body)
                }
            }),
        )
        .spawn()
        .await;
    let gw = spawn_gateway(format!(
        "services:\n  s: {{targets: [{{url: \"{}\"}}], timeouts: {{idle: 60s}}}}\nroutes:\n  - {{name: down, service: s}}\n",
        up.url()
    ))
    .await;
    assert_eq!(get(&gw.url("/warm")).await.status, 200);
    let (hwm_before, rss_before) = (gw.hwm_kib(), gw.rss_kib());

    // A connection-level client: it reads from the socket only when the body is polled, so not
    // polling is a client that stopped reading. A fixed small receive buffer keeps the kernel
    // from absorbing tens of MiB on our side (autotuning), so the bound below means something.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(CLIENT_RCVBUF as u32)
        .expect("SO_RCVBUF");
    let stream = socket.connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/big")
        .header("host", "download.example")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("response head within 20s")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    let read = |frame: Frame<Bytes>, received: &mut u64| {
        if let Ok(data) = frame.into_data() {
            for (i, b) in data.iter().enumerate() {
                let at = *received + i as u64;
                assert_eq!(*b, pattern(at), "byte {at} of the download is wrong");
            }
            *received += data.len() as u64;
        }
    };

    // Read the first 4 MiB, then stop reading.
    while received < 4 * MIB {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("data within 20s")
            .expect("body not finished")
            .expect("body frame");
        read(frame, &mut received);
    }
    // The upstream keeps producing until every buffer on the way is full, then must stall. There
    // is no event for "stalled", so sample the producer until it has not moved for 500 ms
    // (bounded: at most 15 s).
    let mut last = produced.load(Ordering::SeqCst);
    let mut unchanged = 0;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = produced.load(Ordering::SeqCst);
        if now == last {
            unchanged += 1;
            if unchanged == 5 {
                break;
            }
        } else {
            unchanged = 0;
            last = now;
        }
    }
    assert_eq!(
        unchanged, 5,
        "the upstream never stalled: backpressure is not reaching it"
    );
    let stalled_at = produced.load(Ordering::SeqCst);
    let rss_stalled = gw.rss_kib();
    let ahead = stalled_at - received;
    eprintln!(
        "download: client read {} KiB, upstream produced {} KiB ({} KiB in buffers); gateway VmRSS {rss_before} -> {rss_stalled} KiB",
        received / 1024,
        stalled_at / 1024,
        ahead / 1024
    );
    assert!(
        stalled_at < SIZE,
        "the whole body left the upstream while the client was not reading"
    );
    // What may sit between the upstream and a stalled client is the kernel's socket buffers
    // (the upstream's send buffer, the gateway's receive and send buffers, our small receive
    // buffer) plus a few MiB of user-space buffers; anything beyond that would be the gateway
    // holding the body in memory.
    let bound = kernel_buffer_bound() + 8 * MIB;
    assert!(
        bound < SIZE,
        "socket buffers here ({} MiB) are too large for this test to tell anything",
        bound / MIB
    );
    assert!(
        ahead < bound,
        "{} KiB produced ahead of a stalled client (bound {} KiB)",
        ahead / 1024,
        bound / 1024
    );
    assert!(
        rss_stalled.saturating_sub(rss_before) < 40 * 1024,
        "gateway RSS grew from {rss_before} to {rss_stalled} KiB while the client stalled"
    );

    // Now read the rest at full speed and check every byte.
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("data within 20s")
    {
        read(frame.expect("body frame"), &mut received);
    }
    assert_eq!(received, SIZE);
    let hwm_after = gw.hwm_kib();
    let grew_kib = hwm_after.saturating_sub(hwm_before);
    eprintln!("download: gateway VmHWM {hwm_before} -> {hwm_after} KiB");
    assert!(
        grew_kib < 40 * 1024,
        "gateway peak memory grew by {grew_kib} KiB for a {} MiB download",
        SIZE / MIB
    );
}

/// A response body fed by a channel: frames arrive when the producer task sends them.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn chunked_upstream_reply_arrives_intact() {
    // Chunks of uneven sizes, some of which look like chunked framing themselves.
    let chunks: Vec<Bytes> = vec![
        Bytes::from_static(b"first;"),
        Bytes::from_static(b"0\r\n\r\n"),
        Bytes::from(vec![b'a'; 70_000]),
        Bytes::from_static(b"\r\n"),
        Bytes::from_static(b"ff\r\nnot a chunk header\r\n"),
        Bytes::from((0..=255u8).collect::<Vec<u8>>()),
        Bytes::from_static(b";last"),
    ];
    let expected: Vec<u8> = chunks.concat();
    let to_send = chunks.clone();
    let up = upstream::http1("chunks")
        .route(
            "/chunked",
            upstream::handler(move |_req| {
                let to_send = to_send.clone();
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    tokio::spawn(async move {
                        for c in to_send {
                            if tx.send(c).await.is_err() {
                                return;
                            }
                            // Trickle: the gateway sees the body arrive in separate pieces.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                    http::Response::new(ChannelBody(rx).boxed())
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&format!(
        "services:\n  s: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: s}}\n",
        up.url()
    ));
    for _ in 0..2 {
        let r = get(&gw.url("/chunked")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), "chunked");
        assert!(r.headers.get("content-length").is_none());
        assert_eq!(r.body.len(), expected.len());
        assert!(r.body == expected, "the chunked body was altered");
    }
    // Both replies ended cleanly, so the upstream connection was reused.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// Opens a connection with a tiny receive buffer, asks for `/big`, reads the first bytes of the
/// answer, then reads nothing more: a client reading at (almost) 0 bytes/s.
async fn slow_reader(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: slow.example\r\n\r\n")
        .await
        .expect("request");
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut first))
        .await
        .expect("first bytes within 20s")
        .expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slow_readers_stay_within_a_memory_bound_and_are_closed_after_send_idle() {
    use tokio::io::AsyncReadExt;
    // About 1.6 GB of socket buffers: past the kernel's TCP memory pressure mark on its own.
    let _hog = crate::support::tcp_memory_hog().await;
    const READERS: usize = 200;
    const BODY: usize = 8 * 1024 * 1024;
    let payload = Bytes::from(vec![b'x'; BODY]);
    let up = upstream::http1("big")
        .route(
            "/big",
            upstream::handler(move |_req| {
                let payload = payload.clone();
                async move { http::Response::new(upstream::full(payload)) }
            }),
        )
        .spawn()
        .await;
    let gw = spawn_gateway(format!(
        "limits: {{max_connections: 1000}}\ntimeouts: {{send_idle: 20s, header_read: 60s}}\nservices:\n  s: {{targets: [{{url: \"{}\"}}], timeouts: {{idle: 120s}}}}\nroutes:\n  - {{name: big, service: s, timeout: 120s}}\n",
        up.url()
    ))
    .await;
    assert_eq!(get(&gw.url("/warm")).await.status, 200);
    // What an open connection costs without a response in flight, for the report below.
    let rss_empty = gw.rss_kib();
    let mut idle = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let mut s = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        use tokio::io::AsyncWriteExt;
        s.write_all(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("request");
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    let rss_idle = gw.rss_kib();
    drop(idle);
    eprintln!(
        "slow readers: {READERS} idle keep-alive connections take the gateway from {rss_empty} to {rss_idle} KiB"
    );
    let rss_before = gw.rss_kib();
    let opening = std::time::Instant::now();
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(slow_reader(gw.addr).await);
    }
    // Every reader has its answer started and reads nothing more; what the gateway holds for
    // them is what the bound is about. A normal client is still served meanwhile.
    let r = get(&gw.url("/warm")).await;
    assert_eq!(r.status, 200);
    let rss_stalled = gw.rss_kib();
    // All of them still open while measured: none reached `send_idle` yet.
    let open = gw.client_connections();
    assert!(
        open >= READERS,
        "only {open} client connections open {:?} after the readers began (send_idle is 20 s)",
        opening.elapsed()
    );
    let per_reader = rss_stalled.saturating_sub(rss_before) / READERS as u64;
    eprintln!(
        "slow readers: gateway VmRSS {rss_before} -> {rss_stalled} KiB with {READERS} stalled, {per_reader} KiB each"
    );
    // By construction a stalled HTTP/1 response holds at most 16 KiB handed to hyper and unsent,
    // one upstream chunk (at most 32 KiB) and the upstream connection's read buffer (at most
    // 32 KiB), besides what any open connection costs (measured above, about 14 KiB): about
    // 94 KiB. Before the pacing it was about 1 MiB.
    assert!(
        per_reader <= 128,
        "{per_reader} KiB of gateway memory per stalled reader (VmRSS {rss_before} -> {rss_stalled} KiB)"
    );
    // After `send_idle` without progress the gateway closes them. (Draining what the kernel
    // still buffers through a 4 KiB receive window crawls on zero-window probes, so the gateway's
    // own sockets are watched instead.) There is no event to wait for: this polls, boundedly.
    // `send_idle` (20 s) leaves time to open all the readers before the first is closed, even
    // on a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open = gw.client_connections();
        if open <= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} client connections still open 60 s later (send_idle is 20 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(readers);
}
