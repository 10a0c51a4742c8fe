//! HTTP/1.1 bodies off a connection's read buffer (requests read by `server::h1`, responses
//! read by `proxy::h1`): Content-Length counted down, chunked decoded (RFC 9112 §7.1), or
//! everything until the connection closes. Pieces are split off the buffer without copying;
//! the decoder only ever looks at what is already read and says when it needs more.

use bytes::{Bytes, BytesMut};

use super::inbound::InboundError;

/// The longest chunk-size line (with extensions) and trailer section accepted: a client may
/// not make the gateway buffer unbounded framing.
const MAX_CHUNK_LINE: usize = 4096;
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
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Whatever comes until the peer closes (a response without framing); the caller ends it
    /// at the close.
    UntilClose,
}

/// Where in the chunked framing the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section, this many bytes of it so far.
    Trailers(usize),
    /// Finished.
    Done,
}

impl Decoder {
    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunk::Done))
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
            Decoder::Chunked(state) => chunked(state, buf),
            Decoder::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
            Decoder::UntilClose => Ok(Step::Data(buf.split().freeze())),
        }
    }
}

fn chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, InboundError> {
    loop {
        match *state {
            Chunk::Size => match chunk_size_line(buf)? {
                Some((used, size)) => {
                    let _ = buf.split_to(used);
                    *state = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
                None if buf.len() < MAX_CHUNK_LINE => return Ok(Step::NeedMore),
                None => return Err(InboundError::Framing),
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
                *state = Chunk::Size;
            }
            Chunk::Trailers(seen) => {
                // Trailer fields are read and dropped: the request was routed, authenticated
                // and forwarded on its head, so fields arriving after the body cannot be
                // checked and are not passed on.
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Err(InboundError::Framing);
                    }
                    return Ok(Step::NeedMore);
                };
                let line = buf.split_to(end + 1);
                let content = line.strip_suffix(b"\r\n").ok_or(InboundError::Framing)?;
                if content.is_empty() {
                    *state = Chunk::Done;
                    return Ok(Step::End);
                }
                if seen + line.len() > MAX_TRAILERS || !is_field_line(content) {
                    return Err(InboundError::Framing);
                }
                *state = Chunk::Trailers(seen + line.len());
            }
            Chunk::Done => return Ok(Step::End),
        }
    }
}

/// Reads a chunk-size line (RFC 9112 §7.1): one or more hex digits, optional spaces or tabs,
/// optional `;` extensions (ignored), CRLF. `Some((line length, size))`, or `None` while the
/// line is incomplete. Stricter than `httparse::parse_chunk_size`, which takes an empty size
/// as 0 and a bare LF inside an extension: either lets a peer that reads the line otherwise
/// see a different body, the stuff of request smuggling.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, InboundError> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let Some(d) = (b as char).to_digit(16) else {
            break;
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(InboundError::Framing)?;
        digits += 1;
        i += 1;
    }
    if digits == 0 && i < buf.len() {
        return Err(InboundError::Framing);
    }
    while let Some(&b) = buf.get(i) {
        match b {
            b' ' | b'\t' => i += 1,
            _ => break,
        }
    }
    if buf.get(i) == Some(&b';') {
        match buf[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(at) if buf[i + at] == b'\r' => i += at,
            Some(_) => return Err(InboundError::Framing),
            None => return Ok(None),
        }
    }
    match (buf.get(i), buf.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Ok(None),
        (Some(b'\r'), Some(b'\n')) => Ok(Some((i + 2, size))),
        _ => Err(InboundError::Framing),
    }
}

/// A header or trailer field line as RFC 9112 §5 has it: a token name, the colon right after
/// it, and a value of visible characters, spaces, tabs and obs-text; no control characters.
/// Trailers are dropped, but one that is malformed makes the body malformed, as hyper has it:
/// a gateway must not pass on a message its peers would read differently.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `input`, fed in pieces of `feed` bytes; the body, or the error.
    fn decode(input: &[u8], feed: usize) -> Result<(Vec<u8>, Vec<u8>), InboundError> {
        let mut d = Decoder::Chunked(Chunk::Size);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
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
            b"0\r\n\n",
        ] {
            assert_eq!(
                decode(bad, 64),
                Err(InboundError::Framing),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(decode(long.as_bytes(), 64), Err(InboundError::Framing));
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
