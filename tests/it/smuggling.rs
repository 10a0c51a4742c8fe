//! Request smuggling (RFC 9112 §6.3, §11.2), over real sockets, against both HTTP/1.1 engines:
//! for every way a client can make two parsers disagree on where a request ends, the gateway
//! either refuses the request (JSON 4xx, connection closed) or forwards exactly one request with
//! one unambiguous framing, and the bytes a confused parser would take for a second request
//! never reach the upstream.
//!
//! The framing spellings themselves (obfuscated `Transfer-Encoding`, differing
//! `Content-Length`, `Content-Length` with `Transfer-Encoding`, HTTP/1.0 with chunked, bare CR,
//! obs-fold, space before the colon) are in `bad_input.rs`; this file covers what happens to
//! the bytes *after* a head: bodies answered before they are read, bodies whose chunked framing
//! breaks, pipelined requests, and the upstream's side of the same rules.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::upstream::{self, Upstream};
use crate::support::{raw, Reply, TestGateway};

/// The request a confused parser would see in a body.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// An upstream recording every request target it receives, and a gateway in front of it with
/// `/open` routed to it and `/small` limited to 16-byte bodies. `engine` is `portico` or
/// `hyper`.
async fn setup(engine: &str) -> (Upstream, Arc<Mutex<Vec<String>>>, TestGateway) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let up = upstream::http1("up")
        .route(
            "/",
            upstream::handler(move |req| {
                let record = Arc::clone(&record);
                async move {
                    use http_body_util::BodyExt;
                    record.lock().unwrap().push(req.uri().to_string());
                    let len = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes().len(),
                        Err(_) => usize::MAX,
                    };
                    http::Response::new(upstream::full(format!("got {len}")))
                }
            }),
        )
        .spawn()
        .await;
    let gw = TestGateway::start(&format!(
        "http1: {{engine: {engine}}}\nservices:\n  up: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: open, service: up, match: {{path: /open}}}}\n  - {{name: small, service: up, match: {{path: /small}}, max_body_bytes: 16}}\n",
        up.url()
    ));
    (up, seen, gw)
}

/// Sends `bytes` on one connection and reads until the gateway closes it (or 5 s pass).
async fn exchange(gw: &TestGateway, bytes: &str) -> String {
    raw(gw.addr, bytes.as_bytes(), Duration::from_secs(5)).await
}

/// The answers on one connection, in order.
fn answers(wire: &str) -> Vec<Reply> {
    wire.split("HTTP/1.1 ")
        .filter(|s| !s.is_empty())
        .map(|s| Reply::parse(&format!("HTTP/1.1 {s}")))
        .collect()
}

fn assert_never_smuggled(seen: &Mutex<Vec<String>>, wire: &str) {
    let seen = seen.lock().unwrap();
    assert!(
        !seen.iter().any(|t| t.contains("smuggled")),
        "the upstream got the smuggled request: {seen:?}"
    );
    assert!(!wire.contains("smuggled"), "{wire:?}");
}

const ENGINES: [&str; 2] = ["portico", "hyper"];

#[tokio::test]
async fn a_body_answered_before_it_is_read_is_skipped_not_parsed_as_a_request() {
    // Unrouted (404) and over-limit-by-Content-Length (413) requests are answered from the
    // head; their bodies hold a complete request that must never be served.
    for engine in ENGINES {
        let (_up, seen, gw) = setup(engine).await;
        let cl = format!(
            "POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        );
        let chunked = format!(
            "POST /nowhere HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
            SMUGGLED.len()
        );
        let over = format!(
            "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        );
        for (case, request) in [("cl", cl), ("chunked", chunked), ("over", over)] {
            // A legitimate request follows on the same connection.
            let wire = exchange(
                &gw,
                &format!(
                    "{request}GET /open/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            let got = answers(&wire);
            assert!(!got.is_empty(), "{engine}/{case}: no answer: {wire:?}");
            assert!(got[0].status.is_client_error(), "{engine}/{case}: {wire:?}");
            // Either the connection closed after the refusal, or the body was skipped and the
            // next request is the legitimate one.
            for next in &got[1..] {
                assert_eq!(next.text(), "got 0", "{engine}/{case}: {wire:?}");
            }
            assert_never_smuggled(&seen, &wire);
        }
    }
}

#[tokio::test]
async fn broken_chunked_framing_ends_the_request_and_the_connection() {
    let breaks = [
        // Data longer than its chunk-size says: the excess would be the next request.
        format!("5\r\nhello{SMUGGLED}\r\n0\r\n\r\n"),
        // A chunk size that is not hex, or overflows, or is signed.
        format!("zz\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        format!("ffffffffffffffffffff\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        // Each of the next four was read as a whole body, with the smuggled request after it
        // forwarded as the next one, before the engine read framing as hyper does: a size line
        // without digits (httparse takes it for the last chunk)...
        format!(";5\r\n\r\n{SMUGGLED}"),
        format!("\r\n\r\n{SMUGGLED}"),
        // ...an extension ended by a bare LF (a peer ending lines at LF reads "hello" as
        // data where the gateway read it as part of the extension)...
        format!("5;x\nhello\r\nabcde\r\n0\r\n\r\n{SMUGGLED}"),
        // ...and a trailer line that is no field.
        format!("0\r\nX\x7f: 1\r\n\r\n{SMUGGLED}"),
    ];
    for engine in ENGINES {
        for body in &breaks {
            let (_up, seen, gw) = setup(engine).await;
            let wire = exchange(
                &gw,
                &format!(
                    "POST /open/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
                ),
            )
            .await;
            let got = answers(&wire);
            assert_eq!(got.len(), 1, "{engine}: {body:?}: {wire:?}");
            assert!(
                got[0].status.is_client_error() || got[0].status.is_server_error(),
                "{engine}: {body:?}: {wire:?}"
            );
            let seen = seen.lock().unwrap().clone();
            assert!(seen.len() <= 1, "{engine}: {body:?}: {seen:?}");
            assert!(
                !seen.iter().any(|t| t.contains("smuggled")),
                "{engine}: {body:?}: {seen:?}"
            );
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_each_forwarded_once_with_their_own_body() {
    for engine in ENGINES {
        let (_up, seen, gw) = setup(engine).await;
        let wire = exchange(
            &gw,
            "POST /open/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
             POST /open/2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             GET /open/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let bodies: Vec<String> = answers(&wire).iter().map(|r| r.text()).collect();
        assert_eq!(bodies, ["got 5", "got 3", "got 0"], "{engine}: {wire:?}");
        assert_eq!(
            *seen.lock().unwrap(),
            ["/open/1", "/open/2", "/open/3"],
            "{engine}"
        );
    }
}

#[tokio::test]
async fn content_length_and_chunked_together_forward_the_chunked_body_and_close() {
    // TE.CL and CL.TE: the chunked framing wins, Content-Length is not passed on, and the
    // connection closes after the answer, so what a CL-reading parser would take for the next
    // request is never read as one.
    for engine in ENGINES {
        for head in [
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 40",
        ] {
            let (_up, seen, gw) = setup(engine).await;
            let wire = exchange(
                &gw,
                &format!("POST /open/x HTTP/1.1\r\nHost: a\r\n{head}\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{SMUGGLED}"),
            )
            .await;
            let got = answers(&wire);
            assert_eq!(got.len(), 1, "{engine}: {wire:?}");
            assert_eq!(got[0].text(), "got 8", "{engine}: {wire:?}");
            assert_eq!(got[0].header("connection"), "close", "{engine}: {wire:?}");
            assert_never_smuggled(&seen, &wire);
        }
    }
}

#[tokio::test]
async fn an_upstream_answer_with_ambiguous_framing_is_a_502_not_passed_on() {
    // The same rules on the upstream's side: a response whose length two parsers could read
    // differently is refused, so no client ever gets a desynchronised stream.
    // (answer, whether the fault shows in the head: then a 502; else the head may already be
    // out when the body breaks, and the client sees the answer cut off)
    for (response, in_head) in [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            false,
        ),
    ] {
        let up = upstream::raw_tcp(move |mut stream, _n| async move {
            use tokio::io::AsyncWriteExt;
            if upstream::read_head(&mut stream).await.is_some() {
                let _ = stream.write_all(response.as_bytes()).await;
            }
        })
        .await;
        for engine in ENGINES {
            let gw = TestGateway::start(&format!(
                "http1: {{engine: {engine}}}\nservices:\n  up: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: up}}\n",
                up.url()
            ));
            let wire = exchange(
                &gw,
                "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await;
            if in_head {
                Reply::parse(&wire).assert_error(502, "upstream_error");
            } else {
                assert!(
                    !wire.contains("hello"),
                    "{engine}: {response:?} passed on: {wire:?}"
                );
                assert!(
                    !wire.contains("0\r\n\r\n"),
                    "{engine}: the cut answer looks complete: {wire:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_client_still_uploading_after_an_early_413_can_finish_and_read_it() {
    // The gateway answers 413 from the head; a client that writes its whole body before
    // reading (as most upload tools do) must neither fail its writes nor lose the answer to a
    // reset: the gateway reads and drops the rest before closing.
    let (_up, seen, gw) = setup("portico").await;
    // More than the socket buffers on both sides can take without the gateway reading.
    let body_len = 32 * 1024 * 1024;
    let wire = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for i in 0..body_len / chunk.len() {
            s.write_all(&chunk)
                .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        drop(gw);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    Reply::parse(&wire).assert_error(413, "payload_too_large");
    assert!(seen.lock().unwrap().is_empty());
}
