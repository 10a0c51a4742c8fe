//! Response heads for the wire, and the framing their bodies take (RFC 9112 §6.3, §7.1).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header;
use http::response::Parts;
use http::{Method, StatusCode, Version};

use crate::body::head::RawHead;

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No body bytes at all (HEAD, 1xx, 204, 304), whatever the head says.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// What the request asked of its answer.
pub struct Asked<'a> {
    /// The request method (HEAD gets no body).
    pub method: &'a Method,
    /// The request's version (HTTP/1.0 gets no chunked coding).
    pub version: Version,
    /// Whether the connection stays open after this answer, as far as the request goes.
    pub keep_alive: bool,
}

/// Writes the head of `parts` into `out`: the upstream's fields kept as its bytes (`raw`, if
/// any) but those the map also names, then the map's. `exact` is the body's length when known.
/// Returns the body's framing and whether the connection may stay open afterwards.
pub fn head(
    out: &mut Vec<u8>,
    parts: &Parts,
    raw: Option<&RawHead>,
    exact: Option<u64>,
    asked: &Asked,
) -> (Out, bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut keep_alive = asked.keep_alive;
    let mut has_date = false;
    let mut says_close = false;
    let mut length = None;
    if let Some(raw) = raw {
        // Hop-by-hop fields were left out when the head was read, and its `Content-Length`
        // read then too.
        (has_date, length) = (raw.has_date, raw.length);
        for (name, value) in raw.fields() {
            if set_by_gateway(&parts.headers, name) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            length = parse_length(value.as_bytes());
        } else if *name == header::TRANSFER_ENCODING {
            // The framing is this hop's own choice, made below.
            continue;
        } else if *name == header::CONNECTION {
            if has_token(value.as_bytes(), b"close") {
                keep_alive = false;
                says_close = true;
            }
        } else if *name == header::DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = *asked.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Out::None
    } else if let Some(n) = length {
        Out::Length(n)
    } else if let Some(n) = exact {
        write_length(out, n);
        Out::Length(n)
    } else if asked.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    } else {
        keep_alive = false;
        Out::UntilClose
    };
    if !has_date {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && asked.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Whether the gateway set the field `name` itself (the map of a response with a raw head holds
/// only what the gateway adds): it replaces the upstream's. `Via` is the exception, as the
/// gateway appends its own to the upstream's.
fn set_by_gateway(added: &http::HeaderMap, name: &[u8]) -> bool {
    added
        .keys()
        .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name) && *k != header::VIA)
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn parse_length(v: &[u8]) -> Option<u64> {
    crate::body::framing::decimal(v.trim_ascii())
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `Date` value, formatted once a second per worker.
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
            }
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        resp: http::Response<()>,
        method: Method,
        version: Version,
        exact: Option<u64>,
    ) -> (String, Out, bool) {
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let asked = Asked {
            method: &method,
            version,
            keep_alive: true,
        };
        let (framing, keep) = head(&mut out, &parts, None, exact, &asked);
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    #[test]
    fn a_known_length_is_declared_and_an_unknown_one_chunked_or_closed() {
        let (text, f, keep) = encode(
            http::Response::new(()),
            Method::GET,
            Version::HTTP_11,
            Some(5),
        );
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: 5\r\n") && text.contains("date: "),
            "{text}"
        );
        assert_eq!((f, keep), (Out::Length(5), true));
        let (text, f, _) = encode(http::Response::new(()), Method::GET, Version::HTTP_11, None);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert_eq!(f, Out::Chunked);
        let (text, f, keep) = encode(http::Response::new(()), Method::GET, Version::HTTP_10, None);
        assert_eq!((f, keep), (Out::UntilClose, false));
        assert!(text.contains("connection: close\r\n"), "{text}");
    }

    #[test]
    fn head_and_204_answers_carry_no_body_and_keep_their_length() {
        let resp = http::Response::builder()
            .header("content-length", "12")
            .body(())
            .unwrap();
        let (text, f, _) = encode(resp, Method::HEAD, Version::HTTP_11, None);
        assert_eq!(f, Out::None);
        assert!(text.contains("content-length: 12\r\n"), "{text}");
        let resp = http::Response::builder().status(204).body(()).unwrap();
        assert_eq!(
            encode(resp, Method::GET, Version::HTTP_11, Some(0)).1,
            Out::None
        );
    }
}
