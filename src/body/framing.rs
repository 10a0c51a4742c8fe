//! HTTP/1.1 bodies off a connection's read buffer (requests read by `server::h1`, responses
//! read by `proxy::h1`): Content-Length counted down, chunked decoded (RFC 9112 §7.1), or
//! everything until the connection closes. Pieces are split off the buffer without copying;
//! the decoder only ever looks at what is already read and says when it needs more.

use bytes::{Bytes, BytesMut};

use super::inbound::InboundError;

/// Bounds on framing a peer could otherwise make the gateway buffer without end: a chunk-size
/// line without its extensions (`MAX_CHUNK_LINE`), the extensions of a whole body together
/// (`MAX_EXTENSIONS`, hyper's limit) and the trailer section (`MAX_TRAILERS`, hyper's too), so
/// both engines refuse the same messages.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_EXTENSIONS: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where `s`, a slice a parser (`httparse`) took from a read buffer starting at address `base`
/// and `len` bytes long, sits in it, so the bytes can be shared rather than copied once the
/// buffer is frozen. An empty slice is `(0, 0)` wherever the parser made it; one outside the
/// buffer is `None`, never sliced.
pub fn offset(base: usize, len: usize, s: &[u8]) -> Option<(usize, usize)> {
    if s.is_empty() {
        return Some((0, 0));
    }
    let at = (s.as_ptr() as usize)
        .checked_sub(base)
        .filter(|at| at + s.len() <= len)?;
    Some((at, s.len()))
}

/// A decimal Content-Length: digits only (no sign, no hex, no spaces), within u64. Read on
/// bytes, with no UTF-8 check or `str::parse` in between.
pub fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Appends a chunk's size line (lowercase hex, CRLF) for `len` data bytes.
pub fn chunk_start(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// What a decoding step came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A piece of the body.
    Data(Bytes),
    /// The chunked body's trailer fields (only when it has some); its end follows.
    Trailers(http::HeaderMap),
    /// The buffer holds no more of the body: read.
    NeedMore,
    /// The body ended; what follows in the buffer is the next request.
    End,
}

/// A body's decoder.
#[derive(Debug)]
pub enum Decoder {
    /// Bytes still to come.
    Length(u64),
    /// Chunked.
    Chunked {
        /// Where in the framing the decoder is.
        state: Chunk,
        /// Chunk-extension bytes read so far (bounded per body).
        extensions: usize,
    },
    /// Whatever comes until the peer closes (a response without framing); the caller ends it
    /// at the close.
    UntilClose,
}

/// Where in the chunked framing the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line, of which this many bytes were looked at before without
    /// finding its end.
    Size(usize),
    /// Inside a chunk's data, with this much to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section (kept in the buffer until it ends); this many bytes of it
    /// were scanned without finding its end.
    Trailers(usize),
    /// Finished.
    Done,
}

impl Decoder {
    /// A chunked body's decoder, before its first chunk.
    pub fn chunked() -> Decoder {
        Decoder::Chunked {
            state: Chunk::Size(0),
            extensions: 0,
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Decoder::Length(0)
                | Decoder::Chunked {
                    state: Chunk::Done,
                    ..
                }
        )
    }

    /// Takes the next piece of the body from `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, InboundError> {
        match self {
            Decoder::Length(0) => Ok(Step::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked { state, extensions } => chunked(state, extensions, buf),
            Decoder::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
            Decoder::UntilClose => Ok(Step::Data(buf.split().freeze())),
        }
    }
}

fn chunked(
    state: &mut Chunk,
    extensions: &mut usize,
    buf: &mut BytesMut,
) -> Result<Step, InboundError> {
    loop {
        match *state {
            // Bytes of a size line arriving a few at a time are not parsed again from the
            // line's start each time (quadratic in its length): only once a CR or LF came.
            Chunk::Size(seen)
                if seen > 0
                    && buf
                        .get(seen - 1..)
                        .is_some_and(|new| !new.iter().any(|&b| b == b'\r' || b == b'\n')) =>
            {
                if buf.len() > MAX_CHUNK_LINE + MAX_EXTENSIONS - *extensions {
                    return Err(InboundError::Framing);
                }
                *state = Chunk::Size(buf.len());
                return Ok(Step::NeedMore);
            }
            Chunk::Size(_) => match chunk_size_line(buf)? {
                SizeLine::Complete {
                    len,
                    size,
                    extension,
                } => {
                    *extensions += extension;
                    if *extensions >= MAX_EXTENSIONS || len - extension > MAX_CHUNK_LINE {
                        return Err(InboundError::Framing);
                    }
                    let _ = buf.split_to(len);
                    *state = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
                SizeLine::Partial { extension } => {
                    if *extensions + extension >= MAX_EXTENSIONS
                        || buf.len() - extension > MAX_CHUNK_LINE
                    {
                        return Err(InboundError::Framing);
                    }
                    *state = Chunk::Size(buf.len());
                    return Ok(Step::NeedMore);
                }
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = left.min(buf.len() as u64) as usize;
                *state = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(InboundError::Framing);
                }
                let _ = buf.split_to(2);
                *state = Chunk::Size(0);
            }
            Chunk::Trailers(scanned) => {
                // The section stays in the buffer until its end is found (it is bounded), then
                // is checked and read whole.
                match trailer_section_end(buf, scanned)? {
                    Some(end) => {
                        if end >= MAX_TRAILERS {
                            return Err(InboundError::Framing);
                        }
                        let fields = field_section(&buf[..end]).ok_or(InboundError::Framing)?;
                        let _ = buf.split_to(end);
                        *state = Chunk::Done;
                        return Ok(if fields.is_empty() {
                            Step::End
                        } else {
                            Step::Trailers(fields)
                        });
                    }
                    None if buf.len() >= MAX_TRAILERS => return Err(InboundError::Framing),
                    None => {
                        *state = Chunk::Trailers(buf.len());
                        return Ok(Step::NeedMore);
                    }
                }
            }
            Chunk::Done => return Ok(Step::End),
        }
    }
}

/// A chunk-size line as read so far.
enum SizeLine {
    /// The whole line: its length with the CRLF, the chunk's size, and how many bytes its
    /// extensions took.
    Complete {
        len: usize,
        size: u64,
        extension: usize,
    },
    /// Not all of it yet; its extensions took this many bytes so far.
    Partial { extension: usize },
}

/// Reads a chunk-size line (RFC 9112 §7.1): one or more hex digits, optional spaces or tabs,
/// optional `;` extensions (ignored), CRLF. Stricter than `httparse::parse_chunk_size`, which
/// takes an empty size as 0 and a bare LF inside an extension: either lets a peer that reads
/// the line otherwise see a different body, the stuff of request smuggling.
fn chunk_size_line(buf: &[u8]) -> Result<SizeLine, InboundError> {
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(d) = buf.get(i).and_then(|&b| (b as char).to_digit(16)) {
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(InboundError::Framing)?;
        i += 1;
    }
    if i == 0 && !buf.is_empty() {
        return Err(InboundError::Framing);
    }
    while matches!(buf.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    let mut extension = 0;
    if buf.get(i) == Some(&b';') {
        let rest = &buf[i + 1..];
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(at) if rest[at] == b'\r' => {
                extension = at;
                i += 1 + at;
            }
            Some(_) => return Err(InboundError::Framing),
            None => {
                return Ok(SizeLine::Partial {
                    extension: rest.len(),
                })
            }
        }
    }
    match (buf.get(i), buf.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Ok(SizeLine::Partial { extension }),
        (Some(b'\r'), Some(b'\n')) => Ok(SizeLine::Complete {
            len: i + 2,
            size,
            extension,
        }),
        _ => Err(InboundError::Framing),
    }
}

/// Where the trailer section at the start of `buf` ends (just after its empty line), found
/// as hyper finds it: lines end at CRLF, a CR anywhere else is an error, and the section ends
/// at the first empty line (at once when `buf` starts with CRLF). `scanned` bytes were
/// looked at before without finding the end.
fn trailer_section_end(buf: &[u8], scanned: usize) -> Result<Option<usize>, InboundError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    // Back up over a CRLFCR that the last read may have cut short.
    let mut i = scanned.saturating_sub(3).min(buf.len());
    while let Some(at) = buf[i..].iter().position(|&b| b == b'\r') {
        let cr = i + at;
        match buf.get(cr + 1) {
            None => return Ok(None),
            Some(b'\n') => {}
            Some(_) => return Err(InboundError::Framing),
        }
        match (buf.get(cr + 2), buf.get(cr + 3)) {
            (Some(b'\r'), Some(b'\n')) => return Ok(Some(cr + 4)),
            (Some(b'\r'), Some(_)) => return Err(InboundError::Framing),
            _ => i = cr + 2,
        }
    }
    Ok(None)
}

/// Fields that are never passed on as trailers: framing, routing, hop-by-hop and the fields
/// that say how to read the content (RFC 9110 §6.5.1 forbids sending them there). A peer that
/// merged trailers into the header section would otherwise read the message differently from
/// the gateway.
const NOT_TRAILERS: [&str; 13] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-encoding",
    "content-type",
    "content-range",
    "authorization",
];

/// Reads a whole trailer section (CRLF-ended lines, then an empty line) into its fields, or
/// `None` when it is not well formed as a field section: each field a token name, the colon
/// right after it, a value without control characters. It is read by `httparse` as hyper
/// reads it (a bare LF may end a line, RFC 9112 §2.2), so the engine refuses exactly the
/// sections hyper refuses: a gateway must not pass on what its peers would read differently.
/// Fields in [`NOT_TRAILERS`] are left out.
fn field_section(section: &[u8]) -> Option<http::HeaderMap> {
    let mut out = http::HeaderMap::new();
    if section == b"\r\n" {
        return Some(out);
    }
    // hyper sizes its header array by the CRLF-ended lines (at most its 100 fields); more
    // fields than that (split by bare LFs) is an error there too.
    let lines = section.windows(2).filter(|w| w == b"\r\n").count() - 1;
    if lines > 100 {
        return None;
    }
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            for f in fields {
                let name = http::HeaderName::from_bytes(f.name.as_bytes()).ok()?;
                if NOT_TRAILERS.contains(&name.as_str()) {
                    continue;
                }
                out.append(name, http::HeaderValue::from_bytes(f.value).ok()?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Appends a chunked body's end: the last chunk, `trailers` (when there are some) and the
/// empty line.
pub fn chunked_end(out: &mut Vec<u8>, trailers: Option<&http::HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_length_is_digits_only_within_u64() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"0100"), Some(100));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        let refused = [
            "",
            "+5",
            "-5",
            " 5",
            "5 ",
            "0x10",
            "1e3",
            "5,5",
            "18446744073709551616",
        ];
        for text in refused {
            assert_eq!(decimal(text.as_bytes()), None, "{text:?}");
        }
    }

    /// Decodes all of `input`, fed in pieces of `feed` bytes; the body, or the error.
    fn decode(input: &[u8], feed: usize) -> Result<(Vec<u8>, Vec<u8>), InboundError> {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::Trailers(_) => {}
                Step::End => return Ok((body, buf.to_vec())),
                Step::NeedMore => {
                    if fed == input.len() {
                        return Err(InboundError::Closed);
                    }
                    let n = feed.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn trailer_fields_are_read_whatever_the_read_sizes_and_forbidden_ones_left_out() {
        let input = b"3\r\nabc\r\n0\r\nX-Sum: 9\r\nContent-Length: 1\r\nx-sum: 10\r\nHost: evil\r\n\r\nGET /";
        for feed in [1, 2, 5, 64] {
            let mut d = Decoder::chunked();
            let mut buf = BytesMut::new();
            let (mut fed, mut trailers, mut body) = (0, None, Vec::new());
            loop {
                match d.step(&mut buf).expect("valid") {
                    Step::Data(b) => body.extend_from_slice(&b),
                    Step::Trailers(t) => trailers = Some(t),
                    Step::End => break,
                    Step::NeedMore => {
                        let n = feed.min(input.len() - fed);
                        buf.extend_from_slice(&input[fed..fed + n]);
                        fed += n;
                    }
                }
            }
            assert_eq!(body, b"abc");
            let t = trailers.expect("trailers before the end");
            let sums: Vec<_> = t.get_all("x-sum").iter().collect();
            assert_eq!(sums, ["9", "10"], "feed {feed}");
            assert_eq!(
                t.len(),
                2,
                "content-length and host are not trailers: {t:?}"
            );
            assert!(b"GET /".starts_with(&buf), "feed {feed}");
        }
        // No fields: the end at once.
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert_eq!(d.step(&mut buf).unwrap(), Step::End);
    }

    #[test]
    fn chunks_decode_whatever_the_read_sizes_and_leave_the_next_request() {
        let input = b"5\r\nhello\r\nA \t;ext=1\r\n0123456789\r\n0\r\nX-T: 1\t\xe9\r\n\r\nGET /";
        for feed in [1, 2, 3, 7, 64] {
            let (body, rest) = decode(input, feed).expect("valid");
            assert_eq!(body, b"hello0123456789", "feed {feed}");
            // What was fed past the end stays for the next request.
            assert!(b"GET /".starts_with(&rest), "feed {feed}: {rest:?}");
        }
    }

    #[test]
    fn bad_framing_is_refused() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"-1\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nno colon here\r\n\r\n",
            b"0\r\n\xff\xffT: 1\r\n\r\n",
            b"0;a\nb\r\n\r\n",
            b";5\r\n\r\n",
            b"\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"0\r\nX : 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nX: a\x01b\r\n\r\n",
        ] {
            for feed in [1, 64] {
                assert_eq!(
                    decode(bad, feed),
                    Err(InboundError::Framing),
                    "feed {feed}: {:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // Over the bounds, whether the line comes whole or a byte at a time (the second is
        // not parsed again per byte, and is still refused).
        for long in [
            format!("1;{}\r\n", "e".repeat(MAX_EXTENSIONS)),
            format!("1{}", " ".repeat(MAX_CHUNK_LINE + MAX_EXTENSIONS + 1)),
        ] {
            for feed in [1, 64] {
                assert_eq!(decode(long.as_bytes(), feed), Err(InboundError::Framing));
            }
        }
    }

    #[test]
    fn trailer_sections_are_read_as_hyper_reads_them() {
        // A bare LF may end the field lines (RFC 9112 §2.2), as httparse reads them; the section
        // ends at an empty CRLF line all the same, and what follows is the next request.
        for section in [&b"\n0\r\nX-T: 1\r\n\r\n"[..], b"X: 1\r\n\r\n"] {
            let input = [&b"0\r\n"[..], section, b"GET /"].concat();
            for feed in [1, 2, 3, 64] {
                let (body, rest) = decode(&input, feed).expect("valid");
                assert!(body.is_empty());
                assert!(b"GET /".starts_with(&rest), "feed {feed}: {rest:?}");
            }
        }
        for bad in [
            // More fields than CRLF-ended lines: hyper's array of fields is too short for them.
            &b"0\r\nX: 1\nY: 2\r\n\r\n"[..],
            b"0\r\nX: 1\rY: 2\r\n\r\n",
            b"0\r\nX: 1\r\n\rZ",
            b"0\r\nX: 1\r\n Y: 2\r\n\r\n",
        ] {
            assert_eq!(decode(bad, 64), Err(InboundError::Framing), "{bad:?}");
        }
        let big = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILERS));
        assert_eq!(decode(big.as_bytes(), 1024), Err(InboundError::Framing));
    }

    #[test]
    fn chunk_extensions_share_one_budget_per_body() {
        let ext = "e".repeat(MAX_EXTENSIONS / 4);
        let chunk = format!("1;{ext}\r\nx\r\n");
        let under = format!("{}0\r\n\r\n", chunk.repeat(3));
        assert_eq!(decode(under.as_bytes(), 512).expect("valid").0, b"xxx");
        let over = format!("{}0\r\n\r\n", chunk.repeat(4));
        assert_eq!(decode(over.as_bytes(), 512), Err(InboundError::Framing));
        // Padding before the extensions has the line's own bound.
        let padded = format!("1{}\r\nx\r\n0\r\n\r\n", " ".repeat(MAX_CHUNK_LINE + 1));
        assert_eq!(decode(padded.as_bytes(), 512), Err(InboundError::Framing));
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut out = Vec::new();
        chunk_start(&mut out, 0x1a2f);
        chunk_start(&mut out, 0);
        assert_eq!(out, b"1a2f\r\n0\r\n");
    }

    #[test]
    fn content_length_takes_only_its_bytes() {
        let mut d = Decoder::Length(5);
        let mut buf = BytesMut::from(&b"helGET"[..]);
        assert_eq!(
            d.step(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"helGE")))
        );
        assert!(d.is_done());
        assert_eq!(&buf[..], b"T");
    }
}
