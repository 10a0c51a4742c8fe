//! Request heads: `httparse` over the connection's read buffer, then the framing rules of
//! RFC 9112 §6 decided once, here, so that the gateway and every upstream agree on where a
//! request ends.
//!
//! The decisions follow hyper's server (the engine that serves HTTP/2 and handed-over
//! connections), so a request is accepted or refused the same way on either: a final transfer
//! coding other than `chunked` or any transfer coding on HTTP/1.0 is refused; differing
//! Content-Length values are refused; Content-Length beside Transfer-Encoding is dropped, the
//! body framed as chunked and the connection closed after the answer (RFC 9112 §6.3 item 3).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};
use smallvec::SmallVec;

use crate::pipeline::unparsed::Refusal;

/// The most header fields a request may have (hyper's limit too); more is a 431.
pub const MAX_HEADERS: usize = 100;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head, its body framing and what it asks of the connection.
pub struct Head {
    /// Method.
    pub method: Method,
    /// Request target.
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Header fields, their values sharing the read buffer's memory.
    pub headers: HeaderMap,
    /// Body framing.
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expect_continue: bool,
}

/// What reading a head from the buffer came to.
// Not boxed: the head is moved once, and a box would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Not all of the head is in the buffer yet.
    Partial,
    /// A request that another engine (hyper) serves: an upgrade or a CONNECT. Nothing was taken
    /// from the buffer.
    HandOver,
    /// A head, taken from the buffer.
    Head(Head),
}

/// Reads a head from the front of `buf`; `limit` is the most bytes a head may take, and
/// `max_uri` the longest request target (a request line that overflows `limit` while longer
/// than it is a 414, not a 431).
pub fn head(buf: &mut BytesMut, limit: usize, max_uri: usize) -> Result<Parsed, Refusal> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        // A head over the limit is refused even when one read brought all of it (as hyper does).
        Ok(httparse::Status::Complete(n)) if n > limit => return Err(overflow(buf, max_uri)),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() < limit {
                return Ok(Parsed::Partial);
            }
            return Err(overflow(buf, max_uri));
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(_) => return Err(Refusal::Malformed),
    };
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(Refusal::Malformed),
    };
    let method_bytes = req.method.unwrap_or("").as_bytes();
    let method = Method::from_bytes(method_bytes).map_err(|_| Refusal::Malformed)?;
    if method == Method::CONNECT {
        return Ok(Parsed::HandOver);
    }
    let range =
        |s: &[u8]| crate::body::framing::offset(base, buf.len(), s).ok_or(Refusal::Malformed);
    let path = range(req.path.unwrap_or("").as_bytes())?;
    let mut fields: SmallVec<[(HeaderName, (usize, usize)); 24]> = SmallVec::new();
    let mut facts = Facts::default();
    for h in req.headers.iter() {
        let name =
            crate::proxy::field_name::parse(h.name.as_bytes()).map_err(|_| Refusal::Malformed)?;
        if facts.see(&name, h.value)? {
            fields.push((name, range(h.value)?));
        }
    }
    if facts.upgrade {
        return Ok(Parsed::HandOver);
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .map_err(|_| Refusal::Malformed)?;
    let framing = facts.framing(version)?;
    // Room for what the gateway adds on the way (forwarding headers, request id,
    // traceparent): a map that grows while the request passes rehashes every field.
    let mut headers = crate::proxy::headers::take_map(fields.len() + ADDED_ON_THE_WAY);
    // Drained, not moved into an iterator: the list is a kilobyte on the stack.
    for (name, (at, n)) in fields.drain(..) {
        // Content-Length beside Transfer-Encoding is not passed on: the body is chunked.
        if facts.chunked && name == header::CONTENT_LENGTH {
            continue;
        }
        let value = shared_value(&head, at, n)?;
        headers.append(name, value);
    }
    // HTTP/1.0 keeps the connection only when asked to, and a `close` anywhere wins over a
    // `keep-alive` anywhere; a message framed both ways closes the connection after it.
    let keep_alive = match version {
        Version::HTTP_11 => !facts.close,
        _ => facts.keep_alive && !facts.close,
    } && !(facts.transfer_encoding && facts.content_length_field);
    Ok(Parsed::Head(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue: facts.expect_continue && version == Version::HTTP_11,
    }))
}

/// Fields the gateway may add to a request before it goes upstream (`X-Forwarded-*`,
/// `Forwarded`, `Via`, the request id, `traceparent`, a policy's few).
const ADDED_ON_THE_WAY: usize = 8;

fn shared_value(head: &Bytes, at: usize, n: usize) -> Result<HeaderValue, Refusal> {
    HeaderValue::from_maybe_shared(head.slice(at..at + n)).map_err(|_| Refusal::Malformed)
}

/// A head that does not fit: 414 when the request line alone is over the target limit.
fn overflow(buf: &[u8], max_uri: usize) -> Refusal {
    // Empty lines before a request line are skipped by the parser.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line = &buf[start..];
    match line.iter().position(|&b| b == b'\n') {
        None if line.len() > max_uri => Refusal::TargetTooLong,
        Some(end) if end > max_uri => Refusal::TargetTooLong,
        _ => Refusal::HeadTooLarge,
    }
}

/// What the framing and connection headers of a head say.
#[derive(Default)]
struct Facts {
    length: Option<u64>,
    content_length_field: bool,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
}

impl Facts {
    /// Takes in one field; whether it is kept (a repeated Content-Length is not: it agrees with
    /// the first, which is passed on alone, as hyper passes it).
    fn see(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, Refusal> {
        if *name == header::CONTENT_LENGTH {
            self.content_length_field = true;
            // After Transfer-Encoding, the body is chunked (or refused): the length is neither
            // read nor passed on, as hyper has it.
            if self.transfer_encoding {
                return Ok(false);
            }
            // One decimal number per field; repeated fields must agree. A list in one field
            // ("5, 5") is refused, as hyper does (RFC 9110 §8.6 allows either).
            let n = crate::body::framing::decimal(trim(value)).ok_or(Refusal::Malformed)?;
            match self.length {
                Some(seen) if seen != n => return Err(Refusal::Malformed),
                Some(_) => return Ok(false),
                None => self.length = Some(n),
            }
        } else if *name == header::TRANSFER_ENCODING {
            // Only the final coding of the last field decides (RFC 9112 §6.3 item 4); a
            // value with obs-text names no coding Portico knows, so it is not chunked.
            self.transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            self.chunked = value.is_ascii() && trim(last).eq_ignore_ascii_case(b"chunked");
        } else if *name == header::CONNECTION && value.is_ascii() {
            // A value with obs-text is a list of no known tokens, as hyper reads it.
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if *name == header::UPGRADE {
            self.upgrade = true;
        } else if *name == header::EXPECT {
            self.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
        }
        Ok(true)
    }

    fn framing(&self, version: Version) -> Result<Framing, Refusal> {
        if self.transfer_encoding {
            // HTTP/1.0 has no transfer codings; a final coding other than chunked leaves the
            // body's end unknowable (RFC 9112 §6.3 item 4): both refused.
            if version == Version::HTTP_10 || !self.chunked {
                return Err(Refusal::Malformed);
            }
            return Ok(Framing::Chunked);
        }
        Ok(match self.length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Parsed, Refusal> {
        head(&mut BytesMut::from(text), 8192, 1024)
    }

    fn parsed(text: &[u8]) -> Head {
        match parse(text) {
            Ok(Parsed::Head(h)) => h,
            Ok(Parsed::Partial) => panic!("partial: {:?}", String::from_utf8_lossy(text)),
            Ok(Parsed::HandOver) => panic!("handed over"),
            Err(r) => panic!("refused {r:?}: {:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn a_simple_get_has_no_body_and_keeps_the_connection() {
        let h = parsed(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        assert_eq!(h.headers["host"], "x");
    }

    #[test]
    fn repeated_content_lengths_must_agree_and_each_be_plain_digits() {
        let h = parsed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(h.headers.get_all("content-length").iter().count(), 1);
        for bad in [
            "5, 5",
            "5, 6",
            "+5",
            "-1",
            "0x5",
            "",
            "99999999999999999999999",
        ] {
            let text = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(parse(text.as_bytes()), Err(Refusal::Malformed)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn chunked_wins_over_content_length_and_closes() {
        let h =
            parsed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(h.headers.get("content-length").is_none());
        // A Content-Length after the Transfer-Encoding is not even read (hyper skips it).
        let h =
            parsed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(h.headers.get("content-length").is_none());
    }

    #[test]
    fn http10_keeps_the_connection_only_when_asked_and_never_after_close() {
        let h = parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        assert!(!parsed(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    }

    #[test]
    fn transfer_codings_other_than_a_final_chunked_are_refused() {
        for te in [
            "chunked, identity",
            "identity",
            "",
            "\"chunked\"",
            "chunked;q=1",
            "\u{e9}, chunked",
        ] {
            let text = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(
                matches!(parse(text.as_bytes()), Err(Refusal::Malformed)),
                "{te:?}"
            );
        }
        let h = parsed(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            h.framing,
            Framing::Chunked,
            "left to the gateway's own check"
        );
        assert!(matches!(
            parse(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::Malformed)
        ));
    }

    #[test]
    fn http_1_0_keeps_alive_only_when_asked() {
        assert!(!parsed(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!parsed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn upgrades_and_connect_are_handed_over_untouched() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"[..]);
        assert!(matches!(head(&mut buf, 8192, 1024), Ok(Parsed::HandOver)));
        assert_eq!(buf.len(), 38, "nothing taken from the buffer");
        assert!(matches!(
            parse(b"CONNECT a:443 HTTP/1.1\r\n\r\n"),
            Ok(Parsed::HandOver)
        ));
    }

    #[test]
    fn an_overflowing_request_line_is_414_and_overflowing_headers_431() {
        let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert!(matches!(
            head(&mut BytesMut::from(line.as_bytes()), 8192, 1024),
            Err(Refusal::TargetTooLong)
        ));
        let fill = format!("GET / HTTP/1.1\r\nx: {}", "v".repeat(9000));
        assert!(matches!(
            head(&mut BytesMut::from(fill.as_bytes()), 8192, 1024),
            Err(Refusal::HeadTooLarge)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /x HTTP/9.9\r\n\r\n",
            b"GET /x\r\n\r\n",
            b"GET /x HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
            b"GET /x HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
            b"GET /x HTTP/1.1\r\nX-Bad : 1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Refusal::Malformed)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
