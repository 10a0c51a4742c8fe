//! The upstream side of HTTP/1.1 on both client engines (`http1.engine: portico`, the
//! gateway's own client, and `hyper`), against upstreams written byte by byte: response
//! framing (1xx, until-close bodies, Content-Length with Transfer-Encoding, oversized heads),
//! connection reuse, and a pooled connection that dies under a request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::upstream::{self, read_head, RawUpstream};
use crate::support::{send, TestGateway};

const ENGINES: [&str; 2] = ["portico", "hyper"];

fn gateway(engine: &str, up: &RawUpstream) -> TestGateway {
    TestGateway::start(&format!(
        "http1: {{engine: {engine}}}\nservices:\n  up: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - {{name: all, service: up}}\n",
        up.url()
    ))
}

/// An upstream answering each request on a connection with `answer` (for the request's head),
/// keeping the connection open until the gateway closes it.
async fn answering(answer: fn(&str) -> String) -> RawUpstream {
    upstream::raw_tcp(move |mut s, _| async move {
        while let Some(head) = read_head(&mut s).await {
            if s.write_all(answer(&head).as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn informational_answers_are_skipped_and_the_final_one_forwarded() {
    let up = answering(|_| {
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(engine, &up);
        let r = send("GET", &gw.url("/x"), &[], "").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "ok"),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn an_answer_without_framing_is_read_until_the_close_and_the_connection_not_reused() {
    let up = upstream::raw_tcp(|mut s, n| async move {
        if read_head(&mut s).await.is_some() {
            let body = format!("until-close-{n}");
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\n\r\n{body}").as_bytes())
                .await;
        }
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(engine, &up);
        let before = up.connections();
        for i in 0..2 {
            let r = send("GET", &gw.url("/x"), &[], "").await;
            assert_eq!(r.status, 200, "{engine}");
            assert_eq!(r.text(), format!("until-close-{}", before + i), "{engine}");
        }
        assert_eq!(
            up.connections(),
            before + 2,
            "{engine}: a closed connection was reused"
        );
    }
}

#[tokio::test]
async fn keep_alive_answers_reuse_one_connection_and_close_answers_do_not() {
    let keep = answering(|_| "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nk".into()).await;
    let closing = |answer: &'static [u8]| {
        upstream::raw_tcp(move |mut s, _| async move {
            if read_head(&mut s).await.is_some() {
                let _ = s.write_all(answer).await;
                // Keeps the socket open: the gateway must not reuse it on the header alone.
                let mut rest = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            }
        })
    };
    let close =
        closing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\nc").await;
    // HTTP/1.0 asking for both: `close` wins.
    let both = closing(
        b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\nconnection: close\r\n\r\nc",
    )
    .await;
    for engine in ENGINES {
        for (up, reused) in [(&keep, true), (&close, false), (&both, false)] {
            let gw = gateway(engine, up);
            let before = up.connections();
            for _ in 0..3 {
                assert_eq!(send("GET", &gw.url("/x"), &[], "").await.status, 200);
            }
            let opened = up.connections() - before;
            assert_eq!(
                opened,
                if reused { 1 } else { 3 },
                "{engine}, reuse {reused}"
            );
        }
    }
}

#[tokio::test]
async fn an_answers_connection_field_and_the_fields_it_names_do_not_reach_the_client() {
    // `Connection: keep-alive` alone (read for framing, never forwarded), and one naming a
    // field of its own, which must go with it.
    let up = answering(|head| {
        let named = if head.contains("/named") {
            "connection: keep-alive, x-hop\r\nx-hop: secret\r\n"
        } else {
            "connection: Keep-Alive\r\n"
        };
        format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{named}x-kept: yes\r\n\r\nok")
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(engine, &up);
        let before = up.connections();
        for path in ["/plain", "/named", "/plain"] {
            let r = send("GET", &gw.url(path), &[], "").await;
            assert_eq!(r.status, 200, "{engine} {path}");
            assert_eq!(r.text(), "ok");
            assert_eq!(r.header("x-kept"), "yes", "{engine} {path}");
            assert_eq!(r.header("x-hop"), "", "{engine} {path}");
            assert!(
                !r.header("connection")
                    .to_ascii_lowercase()
                    .contains("x-hop"),
                "{engine} {path}: {}",
                r.header("connection")
            );
        }
        // Read for framing all the same: one connection carried the three answers.
        assert_eq!(up.connections() - before, 1, "{engine}");
    }
}

#[tokio::test]
async fn a_chunked_answer_with_a_content_length_is_framed_by_chunked() {
    let up = answering(|_| {
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(engine, &up);
        let r = send("GET", &gw.url("/x"), &[], "").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "hello"),
            "{engine}"
        );
        assert!(
            r.headers.get("content-length").is_none_or(|v| v == "5"),
            "{engine}: {:?}",
            r.headers
        );
    }
}

#[tokio::test]
async fn an_oversized_answer_head_is_a_502() {
    let up = answering(|_| {
        format!(
            "HTTP/1.1 200 OK\r\nx-fill: {}\r\ncontent-length: 0\r\n\r\n",
            "v".repeat(64 * 1024)
        )
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(engine, &up);
        send("GET", &gw.url("/x"), &[], "")
            .await
            .assert_error(502, "upstream_error");
    }
}

/// An upstream whose first connection answers one request, then reads the next request's head
/// and closes without a word (as an upstream closing an idle connection just as the gateway
/// reuses it); later connections answer normally.
async fn dies_under_second_request() -> RawUpstream {
    upstream::raw_tcp(|mut s, n| async move {
        let mut served = 0;
        while let Some(_head) = read_head(&mut s).await {
            if n == 0 && served == 1 {
                return;
            }
            served += 1;
            let body = format!("conn-{n}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_get_whose_pooled_connection_dies_under_it_is_sent_again_on_a_new_one() {
    // The own client only: hyper's cannot send a request again once it went out.
    let up = dies_under_second_request().await;
    let gw = gateway("portico", &up);
    assert_eq!(send("GET", &gw.url("/a"), &[], "").await.text(), "conn-0");
    let r = send("GET", &gw.url("/b"), &[], "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "conn-1"));
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_post_whose_pooled_connection_dies_under_it_is_not_sent_again() {
    for engine in ENGINES {
        let up = dies_under_second_request().await;
        let gw = gateway(engine, &up);
        assert_eq!(send("GET", &gw.url("/a"), &[], "").await.text(), "conn-0");
        send("POST", &gw.url("/b"), &[], "payload")
            .await
            .assert_error(502, "upstream_error");
        assert_eq!(up.connections(), 1, "{engine}: the POST was sent twice");
    }
}

#[tokio::test]
async fn chunked_trailer_fields_pass_both_ways_without_the_ones_trailers_may_not_carry() {
    // The gateway's own engine on both sides: the client's chunked request with trailers to a
    // byte-by-byte upstream, and its chunked answer's trailers back.
    let got = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = std::sync::Arc::clone(&got);
    let up = upstream::raw_tcp(move |mut s, _| {
        let seen = std::sync::Arc::clone(&seen);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The whole request: its head, the last chunk and the trailer section's end.
            while !(buf.windows(5).any(|w| w == b"\r\n0\r\n") && buf.ends_with(b"\r\n\r\n")) {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            *seen.lock().unwrap() = String::from_utf8_lossy(&buf).into_owned();
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-up: 1\r\ncontent-type: text/evil\r\n\r\n")
                .await;
        }
    })
    .await;
    let gw = gateway("portico", &up);
    let answer = crate::support::raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 9\r\nhost: evil\r\nx-sum: 10\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    let sent = got.lock().unwrap().clone();
    let body = &sent[sent.find("\r\n\r\n").expect("a head") + 4..];
    assert_eq!(
        body, "3\r\nabc\r\n0\r\nx-sum: 9\r\nx-sum: 10\r\n\r\n",
        "{sent}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let trailers = &answer[answer.find("\r\n0\r\n").expect("the last chunk") + 5..];
    assert_eq!(trailers, "x-up: 1\r\n\r\n", "{answer}");
}

#[tokio::test]
async fn an_answer_head_reaches_the_client_as_written_but_for_hop_by_hop_fields_and_the_gateways_own(
) {
    // The own engines keep the answer's fields as the upstream wrote them (names in their own
    // case, repeated fields in order); hyper's go through a map. Either way: hop-by-hop fields
    // stay behind, the gateway's request id and rate-limit headers replace the upstream's, and
    // `Via` keeps the upstream's beside the gateway's.
    let up = answering(|_| {
        "HTTP/1.1 200 OK\r\nX-Mixed-Case: One\r\nSet-Cookie: a=1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: x-t\r\nSet-Cookie: b=2\r\n\
         X-Request-Id: from-upstream\r\nX-RateLimit-Limit: 999\r\nVia: 1.1 upstream\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok"
            .into()
    })
    .await;
    for engine in ENGINES {
        let gw = TestGateway::start(&format!(
            "http1: {{engine: {engine}}}\nforwarding: {{via: true}}\nservices:\n  up: {{targets: [{{url: \"{}\"}}]}}\nroutes:\n  - name: all\n    service: up\n    policies:\n      - rate_limit: {{limits: [{{requests: 100, per: 1m}}], headers: legacy}}\n",
            up.url()
        ));
        let text = crate::support::raw(
            gw.local_addrs()[0],
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
        assert_eq!(body, "ok", "{engine}");
        let lines: Vec<&str> = head.lines().skip(1).collect();
        let named = |name: &str| -> Vec<&str> {
            lines
                .iter()
                .filter_map(|l| l.split_once(": "))
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
                .collect()
        };
        assert_eq!(named("set-cookie"), ["a=1", "b=2"], "{engine}: {head}");
        assert_eq!(named("x-mixed-case"), ["One"], "{engine}: {head}");
        for hop in ["keep-alive", "proxy-connection", "upgrade", "trailer"] {
            assert!(named(hop).is_empty(), "{engine}: {hop} passed: {head}");
        }
        let ids = named("x-request-id");
        assert!(
            ids.len() == 1 && ids[0] != "from-upstream",
            "{engine}: {head}"
        );
        assert_eq!(named("x-ratelimit-limit"), ["100"], "{engine}: {head}");
        assert_eq!(named("x-ratelimit-remaining"), ["99"], "{engine}: {head}");
        let via = named("via");
        assert!(
            via.len() == 2 && via[0] == "1.1 upstream" && via[1] != via[0],
            "{engine}: {head}"
        );
        assert_eq!(named("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "{engine}");
        assert_eq!(named("content-length"), ["2"], "{engine}: {head}");
        assert_eq!(named("connection"), ["close"], "{engine}: {head}");
        if engine == "portico" {
            // Written from the upstream's own bytes, not rebuilt from a map (which lowercases).
            assert!(head.contains("\r\nX-Mixed-Case: One\r\n"), "{head}");
        }
    }
}
