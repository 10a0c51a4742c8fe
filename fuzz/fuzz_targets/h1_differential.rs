//! The gateway's own HTTP/1.1 request parsing (`server::h1::parse` for heads,
//! `body::framing` for bodies) against hyper's server, on the same bytes.
//!
//! Input: the bytes a client sends on a fresh connection (a request head, then body bytes),
//! after which it closes its side. hyper serves them over an in-memory pipe with the same head
//! limit; its service records the first request it is called with and reads its body whole.
//! The gateway's engine parses the same bytes from its read buffer.
//!
//! Checked besides "no panic": both see a request or neither does; when both do, the method,
//! target, version, header fields (each name's values in order) and body bytes are the same, and a body that
//! breaks off (truncated Content-Length, broken chunked framing) breaks off in both.
//!
//! hyper runs with `half_close(true)` (the gateway's hyper serves with the default, `false`):
//! the client here closes its sending side after its bytes, and without half-close hyper drops
//! the service call it has just started, which would hide every request from the comparison.
//!
//! Explained differences, not reported (see fuzz/README.md):
//! - requests the engine hands to hyper itself (`Upgrade`, CONNECT) are skipped;
//! - chunked trailer fields: hyper passes them on as a trailers frame, the engine reads and
//!   drops them (only data bytes are compared), and a malformed trailer section is an error in
//!   the engine only where hyper's is too.

#![no_main]

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use portico::body::framing::{Decoder, Step};
use portico::server::h1::parse::{self, Framing, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The head limit both parsers get (the gateway's default read buffer is larger; a small one
/// makes the over-limit paths reachable).
const LIMIT: usize = 8192;
const MAX_URI: usize = 4096;

/// What one side made of the bytes.
#[derive(Debug, PartialEq)]
enum Seen {
    /// No request reached the service (refused, or incomplete at the close).
    Nothing,
    /// Not compared (handed over to hyper by the engine).
    Skip,
    Request {
        method: String,
        target: String,
        version: http::Version,
        headers: Vec<(String, Vec<u8>)>,
        /// The body's data bytes, or `None` when it broke off.
        body: Option<Vec<u8>>,
    },
}

thread_local! {
    static RT: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"),
    );
}

fn hyper_sees(input: &[u8]) -> Seen {
    let input = input.to_vec();
    RT.with(|rt| {
        rt.borrow().block_on(async move {
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let seen: Arc<Mutex<Option<Seen>>> = Arc::new(Mutex::new(None));
            let record = Arc::clone(&seen);
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let record = Arc::clone(&record);
                async move {
                    let (parts, body) = req.into_parts();
                    let body = match body.collect().await {
                        Ok(c) => Some(c.to_bytes().to_vec()),
                        Err(_) => None,
                    };
                    let mut slot = record.lock().unwrap();
                    if slot.is_none() {
                        *slot = Some(Seen::Request {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            version: parts.version,
                            headers: fields(&parts.headers),
                            body,
                        });
                    }
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The client closes its side after sending: without half-close, hyper would drop
            // the service call it had just started.
            builder.max_buf_size(LIMIT).half_close(true);
            let conn = builder.serve_connection(TokioIo::new(server), service);
            let served = tokio::spawn(conn);
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut sink)).await;
            served.abort();
            let taken = seen.lock().unwrap().take();
            taken.unwrap_or(Seen::Nothing)
        })
    })
}

fn engine_sees(input: &[u8]) -> Seen {
    let mut buf = BytesMut::from(input);
    let head = match parse::head(&mut buf, LIMIT, MAX_URI) {
        Ok(Parsed::Head(head)) => head,
        Ok(Parsed::HandOver) => return Seen::Skip,
        Ok(Parsed::Partial) | Err(_) => return Seen::Nothing,
    };
    let mut decoder = match head.framing {
        Framing::Empty => None,
        Framing::Length(n) => Some(Decoder::Length(n)),
        Framing::Chunked => Some(Decoder::chunked()),
    };
    let mut body = Some(Vec::new());
    if let Some(d) = decoder.as_mut() {
        loop {
            match d.step(&mut buf) {
                Ok(Step::Data(piece)) => body.as_mut().unwrap().extend_from_slice(&piece),
                Ok(Step::Trailers(_)) => {}
                Ok(Step::End) => break,
                // The client closed: nothing more will come.
                Ok(Step::NeedMore) | Err(_) => {
                    body = None;
                    break;
                }
            }
        }
    }
    Seen::Request {
        method: head.method.to_string(),
        target: head.uri.to_string(),
        version: head.version,
        headers: fields(&head.headers),
        body,
    }
}

/// The fields by name, each name's values in their order. The order between different names
/// carries no meaning, and `HeaderMap::remove` (hyper's, of Content-Length beside chunked)
/// reorders names.
fn fields(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<_> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

fuzz_target!(|input: &[u8]| {
    let ours = engine_sees(input);
    if ours == Seen::Skip {
        return;
    }
    let theirs = hyper_sees(input);
    assert_eq!(
        ours,
        theirs,
        "engine and hyper disagree on {:?}",
        String::from_utf8_lossy(input)
    );
});
