//! The access log: one line per request, formatted and written on a dedicated thread.
//!
//! The request path only fills a [`Finish`] record and hands it over a bounded channel; when the
//! writer falls behind, lines are dropped and counted rather than slowing requests down.

use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Lines queued before new ones are dropped.
const QUEUE: usize = 65_536;

/// How often the writer drains the queue: lines reach the file at most this late.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Owns the writer thread; dropping every handle ends the thread after it drains the queue.
pub struct AccessLogger {
    tx: Option<SyncSender<Line>>,
    writer: Option<std::thread::JoinHandle<()>>,
    settings: AccessLogSettings,
    /// Lines dropped because the writer could not keep up.
    pub dropped: AtomicU64,
}

impl Drop for AccessLogger {
    /// Closes the queue and waits for the writer to drain it, so lines of the last requests
    /// before a shutdown (or a reload that changes the log) are not lost.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Line {
    finish: Box<Finish>,
    sent: u64,
    complete: bool,
    end: Instant,
}

/// Everything known about a request, filled as it goes and written when its response ends.
pub struct Finish {
    /// Where the line goes.
    pub logger: Arc<AccessLogger>,
    /// When the request arrived (monotonic).
    pub start: Instant,
    /// When the request arrived (wall clock).
    pub timestamp: SystemTime,
    /// Request id, host, target and user agent, copied.
    pub text: RequestText,
    /// The client IP (after trusted proxies).
    pub client_ip: IpAddr,
    /// Method.
    pub method: Method,
    /// Matched route.
    pub route: Option<Arc<str>>,
    /// Service of the matched route.
    pub service: Option<Arc<str>>,
    /// The authenticated consumer (or token subject); never a credential.
    pub consumer: Option<Arc<str>>,
    /// The target the request went to.
    pub target: Option<Arc<str>>,
    /// Response status.
    pub status: u16,
    /// The gateway's error code when the gateway answered itself.
    pub error: Option<&'static str>,
    /// Request body size (from Content-Length; 0 without a body).
    pub request_bytes: u64,
    /// Time from sending upstream to the response head.
    pub upstream_duration: Option<Duration>,
    /// How the response cache answered (`hit`, `miss`, ...), on routes with a `cache` policy.
    pub cache: Option<&'static str>,
    /// The gRPC status of a gRPC call (from the response head or its trailers).
    pub grpc_status: Option<u16>,
    /// Upstream attempts beyond the first.
    pub retries: u32,
    /// The rate-limit decision (`allowed`, `rejected`) on routes with a `rate_limit` policy.
    pub rate_limit: Option<&'static str>,
    /// The OpenAPI operation (`operationId`), on routes with an `openapi` policy.
    pub operation_id: Option<Arc<str>>,
    /// The W3C trace id (the caller's or a new one), raw: hex is written by the log thread.
    pub trace_id: [u8; 16],
    /// The gateway's server span id in that trace.
    pub span_id: [u8; 8],
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    /// On or off.
    pub enabled: bool,
    /// Line format.
    pub format: AccessLogFormat,
    /// `stdout`, `stderr` or a file path.
    pub path: String,
}

/// Access log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// NCSA common log format.
    Common,
}

/// The most bytes of one client-supplied field (path, query, a header value) that a log line
/// copies: a client must not be able to make each line as large as its request head.
pub const MAX_LOGGED_BYTES: usize = 2048;
/// What stands after a field cut at [`MAX_LOGGED_BYTES`].
pub const TRUNCATED: &str = "...[truncated]";

/// Appends `text` (UTF-8), cut at [`MAX_LOGGED_BYTES`] (on a character boundary) with
/// [`TRUNCATED`].
fn push_capped(buf: &mut TextBuf, text: &[u8]) {
    if text.len() <= MAX_LOGGED_BYTES {
        buf.extend_from_slice(text);
        return;
    }
    let mut end = MAX_LOGGED_BYTES;
    // A continuation byte (`10xxxxxx`) is inside a character.
    while end > 0 && text[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    buf.extend_from_slice(&text[..end]);
    buf.extend_from_slice(TRUNCATED.as_bytes());
}

/// Texts up to this size live inside the record itself: a request id, a short host, path and
/// user agent need no allocation of their own.
const INLINE_TEXT: usize = 192;

type TextBuf = smallvec::SmallVec<[u8; INLINE_TEXT]>;

/// The texts of a request that its log line needs, copied (inside the record when they are
/// short, else in one allocation). Keeping the parsed header values or URI instead would keep
/// hyper's whole read buffer (8 KiB or more) alive for every line waiting in the queue:
/// measured, 15 MiB more RSS under load.
pub struct RequestText {
    /// Only ever appended `&str`s, so always UTF-8.
    buf: TextBuf,
    /// End offsets of request id, host, target (path and query), user agent.
    ends: [u32; 4],
    has_user_agent: bool,
}

impl RequestText {
    /// Copies the fields (bytes that are not UTF-8 are replaced).
    pub fn new(request_id: &[u8], host: &[u8], target: &str, user_agent: Option<&[u8]>) -> Self {
        let ua = user_agent.unwrap_or(b"");
        let mut buf = TextBuf::new();
        let mut ends = [0u32; 4];
        for (i, part) in [request_id, host, target.as_bytes(), ua]
            .into_iter()
            .enumerate()
        {
            // ASCII (nearly every field) is checked a word at a time whatever its alignment,
            // where `from_utf8` goes byte by byte through a short field.
            let text = if part.is_ascii() || std::str::from_utf8(part).is_ok() {
                Cow::Borrowed(part)
            } else {
                Cow::Owned(String::from_utf8_lossy(part).into_owned().into_bytes())
            };
            if i == 2 {
                // Path and query are capped each, so a huge query still logs the path.
                match text.iter().position(|&b| b == b'?') {
                    Some(at) => {
                        push_capped(&mut buf, &text[..at]);
                        buf.push(b'?');
                        push_capped(&mut buf, &text[at + 1..]);
                    }
                    None => push_capped(&mut buf, &text),
                }
            } else {
                push_capped(&mut buf, &text);
            }
            ends[i] = buf.len() as u32;
        }
        Self {
            buf,
            ends,
            has_user_agent: user_agent.is_some(),
        }
    }

    /// The bytes of part `i`: UTF-8 by construction (see `buf`), so the JSON writer copies
    /// them without checking again.
    fn part_bytes(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.buf.get(start..self.ends[i] as usize).unwrap_or(&[])
    }

    fn part(&self, i: usize) -> &str {
        // Never fails (see `buf`).
        std::str::from_utf8(self.part_bytes(i)).unwrap_or("")
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        self.part(0)
    }

    /// The host the client addressed.
    pub fn host(&self) -> &str {
        self.part(1)
    }

    /// Path and query as the client sent them.
    pub fn target(&self) -> &str {
        self.part(2)
    }

    /// `User-Agent`, when sent.
    pub fn user_agent(&self) -> Option<&str> {
        self.has_user_agent.then(|| self.part(3))
    }
}

impl Finish {
    /// A record of a request that arrived at `start`, its outcome still to be filled in.
    pub fn new(
        logger: Arc<AccessLogger>,
        start: Instant,
        text: RequestText,
        client_ip: IpAddr,
        trace: (&[u8; 16], &[u8; 8]),
    ) -> Box<Self> {
        Box::new(Finish {
            logger,
            start,
            timestamp: SystemTime::now(),
            text,
            client_ip,
            method: Method::GET,
            route: None,
            service: None,
            consumer: None,
            target: None,
            status: 0,
            error: None,
            request_bytes: 0,
            upstream_duration: None,
            cache: None,
            grpc_status: None,
            retries: 0,
            rate_limit: None,
            operation_id: None,
            trace_id: *trace.0,
            span_id: *trace.1,
        })
    }

    /// Queues the line. `sent` is the response body size, `complete` whether it was sent whole.
    pub fn write(self: Box<Self>, sent: u64, complete: bool) {
        let logger = Arc::clone(&self.logger);
        let line = Line {
            finish: self,
            sent,
            complete,
            end: Instant::now(),
        };
        let Some(tx) = &logger.tx else {
            return;
        };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                logger.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl AccessLogger {
    /// Opens the destination and starts the writer thread.
    pub fn start(settings: &AccessLogSettings) -> std::io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = match settings.path.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let format = settings.format;
        let writer = std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || writer(rx, out, format))?;
        Ok(Arc::new(Self {
            tx: Some(tx),
            writer: Some(writer),
            settings: settings.clone(),
            dropped: AtomicU64::new(0),
        }))
    }

    /// The settings this logger was started with (a reload reuses it when they are unchanged).
    pub fn settings(&self) -> &AccessLogSettings {
        &self.settings
    }
}

fn writer(rx: Receiver<Line>, out: Box<dyn Write + Send>, format: AccessLogFormat) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut buf = Vec::with_capacity(512);
    let mut clock = Timestamps::default();
    let mut write = |line: Line, out: &mut std::io::BufWriter<_>| {
        buf.clear();
        match format {
            AccessLogFormat::Json => format_json(&line, &mut buf, &mut clock),
            AccessLogFormat::Common => format_common(&line, &mut buf),
        }
        let _ = out.write_all(&buf);
    };
    // The writer never blocks in `recv`: a blocked receiver must be woken (a futex call and a
    // context switch) by every request that logs. It drains what is queued, writes it with one
    // flush, and checks again after FLUSH_INTERVAL; requests only ever push to the queue.
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    write(line, &mut out);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

/// Writes one JSON object. Hand-rolled on purpose: building a `serde_json::Value` first cost
/// about twenty allocations per line, and the writer thread shares the gateway's CPU.
fn format_json(line: &Line, buf: &mut Vec<u8>, clock: &mut Timestamps) {
    let f = &line.finish;
    let total = line.end.duration_since(f.start);
    buf.extend_from_slice(b"{\"timestamp\":\"");
    clock.write(buf, f.timestamp);
    buf.extend_from_slice(b"\",\"request_id\":");
    json_str(buf, f.text.part_bytes(0));
    buf.extend_from_slice(b",\"client_ip\":\"");
    write_ip(buf, f.client_ip);
    buf.extend_from_slice(b"\",\"method\":");
    json_str(buf, f.method.as_str().as_bytes());
    buf.extend_from_slice(b",\"host\":");
    json_str(buf, f.text.part_bytes(1));
    buf.extend_from_slice(b",\"path\":");
    json_str(buf, f.text.part_bytes(2));
    let mut hex = [0u8; 32];
    crate::telemetry::trace::hex_encode(&f.trace_id, &mut hex);
    buf.extend_from_slice(b",\"trace_id\":\"");
    buf.extend_from_slice(&hex);
    crate::telemetry::trace::hex_encode(&f.span_id, &mut hex[..16]);
    buf.extend_from_slice(b"\",\"span_id\":\"");
    buf.extend_from_slice(&hex[..16]);
    buf.push(b'"');
    // Each key a literal: copied inline, where a loop over the keys called `memcpy` for each.
    text_or_null(buf, b",\"route\":", f.route.as_deref());
    text_or_null(buf, b",\"service\":", f.service.as_deref());
    text_or_null(buf, b",\"consumer\":", f.consumer.as_deref());
    text_or_null(buf, b",\"upstream\":", f.target.as_deref());
    text_or_null(buf, b",\"error\":", f.error);
    text_or_null(buf, b",\"cache\":", f.cache);
    text_or_null(buf, b",\"rate_limit\":", f.rate_limit);
    // Only requests matched to an OpenAPI operation carry the key.
    if let Some(op) = &f.operation_id {
        buf.extend_from_slice(b",\"operation_id\":");
        json_str(buf, op.as_bytes());
    }
    // Numbers without `core::fmt`: with it, formatting took most of the writer thread's time
    // (floats and IP addresses especially).
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(b",\"status\":");
    buf.extend_from_slice(n.format(f.status).as_bytes());
    buf.extend_from_slice(b",\"request_bytes\":");
    buf.extend_from_slice(n.format(f.request_bytes).as_bytes());
    buf.extend_from_slice(b",\"response_bytes\":");
    buf.extend_from_slice(n.format(line.sent).as_bytes());
    buf.extend_from_slice(if line.complete {
        b",\"complete\":true"
    } else {
        b",\"complete\":false"
    });
    buf.extend_from_slice(b",\"duration_ms\":");
    write_millis(buf, total);
    buf.extend_from_slice(b",\"upstream_ms\":");
    match f.upstream_duration {
        Some(d) => write_millis(buf, d),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"retries\":");
    buf.extend_from_slice(n.format(f.retries).as_bytes());
    // Only gRPC calls carry the key, so other lines keep their shape.
    if let Some(code) = f.grpc_status {
        let _ = write!(buf, ",\"grpc_status\":{code}");
    }
    buf.extend_from_slice(b",\"user_agent\":");
    if f.text.has_user_agent {
        json_str(buf, f.text.part_bytes(3));
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b"}\n");
}

/// `key` (the comma, the quoted name and the colon), then `value` as a JSON string or `null`.
#[inline(always)]
fn text_or_null(buf: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    buf.extend_from_slice(key);
    match value {
        Some(v) => json_str(buf, v.as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
}

/// A JSON string literal of `text`, which is UTF-8 (every caller's text is a `str` or was
/// made of one), with `"`, `\` and control characters escaped, so every line stays valid JSON.
fn json_str(buf: &mut Vec<u8>, text: &[u8]) {
    buf.reserve(text.len() + 2);
    buf.push(b'"');
    json_escape(buf, text);
    buf.push(b'"');
}

/// Escapes UTF-8 for a JSON string: multi-byte characters never contain bytes below 0x80, so
/// only `"`, `\` and controls are looked at, and text with none of them (nearly every field)
/// is copied whole.
fn json_escape(buf: &mut Vec<u8>, text: &[u8]) {
    let Some(first) = first_to_escape(text) else {
        buf.extend_from_slice(text);
        return;
    };
    let mut start = 0;
    for (i, &b) in text.iter().enumerate().skip(first) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&text[start..i]);
        if escape.is_empty() {
            let _ = write!(buf, "\\u{:04x}", b);
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&text[start..]);
}

/// The word-aligned offset from which `text` may need escaping (`None`: not at all), checked
/// eight bytes at a time; the last, partial word is padded with spaces, which need none, so
/// short fields take no byte loop either.
fn first_to_escape(text: &[u8]) -> Option<usize> {
    let mut words = text.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if needs_escape(u64::from_le_bytes(w)) {
            return Some(at);
        }
        at += 8;
    }
    let rest = words.remainder();
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    needs_escape(u64::from_le_bytes(last)).then_some(at)
}

/// Whether any of a word's eight bytes is `"`, `\` or a control character (below 0x20), by the
/// classic "has a zero byte" / "has a byte less than n" bit tricks: bytes of 0x80 and above
/// never set the mark, as UTF-8's multi-byte characters need no escape.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\')))
        | below_space)
        != 0
}

fn format_common(line: &Line, buf: &mut Vec<u8>) {
    let f = &line.finish;
    let _ = write!(
        buf,
        "{} - - [{}] \"{} {} HTTP/1.1\" {} {}",
        f.client_ip,
        rfc3339(f.timestamp),
        f.method,
        f.text.target(),
        f.status,
        line.sent
    );
    // Appended after the common fields, so parsers of the plain format still read the line.
    let mut hex = [0u8; 32];
    crate::telemetry::trace::hex_encode(&f.trace_id, &mut hex);
    buf.extend_from_slice(b" trace_id=");
    buf.extend_from_slice(&hex);
    buf.push(b'\n');
}

/// Milliseconds with three decimals (microsecond resolution), e.g. `12.034`.
fn write_millis(buf: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(micros / 1000).as_bytes());
    let frac = micros % 1000;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Appends an address in its usual text form; IPv4 (nearly every client) without `core::fmt`,
/// whose machinery costs more than the digits. Also makes the connection's
/// `X-Forwarded-For` value (`pipeline::conn`).
pub(crate) fn write_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(n.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// The writer's last timestamp down to the second: lines come many to a second, and the
/// calendar arithmetic is then done once per second, not per line.
#[derive(Default)]
struct Timestamps {
    /// Seconds since the epoch of `text`; `None` before the first line.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    text: Vec<u8>,
}

impl Timestamps {
    /// Writes `t` as [`rfc3339`] does.
    fn write(&mut self, buf: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            self.text.clear();
            write_to_the_second(&mut self.text, t);
            self.second = Some(since.as_secs());
        }
        buf.extend_from_slice(&self.text);
        write_millis_suffix(buf, since.subsec_millis());
    }
}

fn write_timestamp(buf: &mut Vec<u8>, t: SystemTime) {
    let ms = write_to_the_second(buf, t);
    write_millis_suffix(buf, ms);
}

/// `YYYY-MM-DDTHH:MM:SS` of `t`; its milliseconds are returned.
fn write_to_the_second(buf: &mut Vec<u8>, t: SystemTime) -> u32 {
    let (year, month, day, h, m, s, ms) = civil(t);
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(year).as_bytes());
    for (sep, v) in [(b'-', month), (b'-', day), (b'T', h), (b':', m), (b':', s)] {
        buf.extend_from_slice(&[sep, b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    }
    ms
}

/// `.mmmZ`.
fn write_millis_suffix(buf: &mut Vec<u8>, ms: u32) {
    buf.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// (year, month, day, hour, minute, second, millisecond) in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, (secs % 86_400) as u32);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis(),
    )
}

/// UTC timestamp with milliseconds, e.g. `2026-11-29T00:29:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let mut buf = Vec::with_capacity(24);
    write_timestamp(&mut buf, t);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_reads_back_as_json_wherever_the_special_byte_falls() {
        let specials = [
            "\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1f}", "é", "\u{7f}", " ",
        ];
        for len in 0..20 {
            for at in 0..=len {
                for special in specials {
                    let text = format!("{}{special}{}", "a".repeat(at), "b".repeat(len - at));
                    let mut buf = Vec::new();
                    json_escape(&mut buf, text.as_bytes());
                    let expected = serde_json::to_string(&text).unwrap();
                    let got = format!("\"{}\"", String::from_utf8(buf).unwrap());
                    assert_eq!(
                        serde_json::from_str::<String>(&got).unwrap(),
                        text,
                        "{got} against {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn json_lines_are_valid_json_whatever_the_client_sent() {
        let settings = AccessLogSettings {
            enabled: true,
            format: AccessLogFormat::Json,
            path: "stderr".into(),
        };
        let logger = AccessLogger::start(&settings).unwrap();
        let finish = Box::new(Finish {
            logger,
            start: Instant::now(),
            timestamp: SystemTime::UNIX_EPOCH,
            text: RequestText::new(
                b"id-1",
                b"h\xffst",
                "/a?q=%22x%22&b=\\",
                Some(b"ua \"quoted\" \t tab"),
            ),
            client_ip: "10.1.2.3".parse().unwrap(),
            method: Method::POST,
            route: Some("r".into()),
            service: None,
            consumer: Some("alice".into()),
            target: None,
            status: 201,
            error: Some("no_route"),
            request_bytes: 7,
            grpc_status: None,
            upstream_duration: Some(Duration::from_micros(1500)),
            cache: None,
            retries: 2,
            rate_limit: Some("allowed"),
            operation_id: None,
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
        });
        let line = Line {
            finish,
            sent: 42,
            complete: true,
            end: Instant::now(),
        };
        let mut buf = Vec::new();
        format_json(&line, &mut buf, &mut Timestamps::default());
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["client_ip"], "10.1.2.3");
        assert_eq!(v["complete"], true);
        assert_eq!(v["host"], "h\u{fffd}st");
        assert_eq!(v["path"], "/a?q=%22x%22&b=\\");
        assert_eq!(v["user_agent"], "ua \"quoted\" \t tab");
        assert_eq!(v["service"], serde_json::Value::Null);
        assert_eq!(v["consumer"], "alice");
        assert_eq!(v["status"], 201);
        assert_eq!(v["response_bytes"], 42);
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["retries"], 2);
        assert_eq!(v["rate_limit"], "allowed");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "01".repeat(8));
        let mut common = Vec::new();
        format_common(&line, &mut common);
        let common = String::from_utf8(common).unwrap();
        assert!(
            common.ends_with(&format!("\" 201 42 trace_id={}\n", "ab".repeat(16))),
            "{common}"
        );
    }

    #[test]
    fn numbers_and_addresses_are_written_without_fmt() {
        let mut buf = Vec::new();
        write_millis(&mut buf, Duration::from_micros(12_034));
        buf.push(b' ');
        write_millis(&mut buf, Duration::from_nanos(999));
        buf.push(b' ');
        write_ip(&mut buf, "10.0.255.7".parse().unwrap());
        buf.push(b' ');
        write_ip(&mut buf, "2001:db8::1".parse().unwrap());
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "12.034 0.000 10.0.255.7 2001:db8::1"
        );
    }

    #[test]
    fn a_long_field_is_cut_on_a_character_boundary_whatever_its_bytes() {
        // `é` is two bytes: every alignment of it against the cut, and bytes that are no UTF-8.
        for pad in 0..3 {
            let text = format!("{}{}", "a".repeat(pad), "é".repeat(MAX_LOGGED_BYTES));
            let host = [&[0xffu8][..], &vec![b'h'; MAX_LOGGED_BYTES + 5]].concat();
            let t = RequestText::new(
                b"id",
                &host,
                &format!("/{text}?{text}"),
                Some(text.as_bytes()),
            );
            let ua = t.user_agent().unwrap();
            assert!(ua.ends_with(TRUNCATED), "{pad}");
            let kept = &ua[..ua.len() - TRUNCATED.len()];
            assert!(kept.len() <= MAX_LOGGED_BYTES && kept.len() > MAX_LOGGED_BYTES - 2);
            assert!(text.starts_with(kept));
            let (path, query) = t.target().split_once('?').unwrap();
            assert!(path.ends_with(TRUNCATED) && query.ends_with(TRUNCATED));
            assert!(t.host().starts_with('\u{fffd}') && t.host().ends_with(TRUNCATED));
            assert_eq!(t.request_id(), "id");
        }
    }

    #[test]
    fn strings_are_escaped_for_json() {
        let mut buf = Vec::new();
        json_str(&mut buf, "a\"b\\c\nd\u{1}é\u{7f}".as_bytes());
        assert_eq!(buf, "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"".as_bytes());
        let parsed: String = serde_json::from_slice(&buf).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é\u{7f}");
    }

    #[test]
    fn cached_timestamps_read_as_rfc3339_does_across_seconds() {
        let mut clock = Timestamps::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_464_000_123);
        for step in [0, 5, 877, 878, 1_000, 61_001, 86_400_000] {
            let t = base + Duration::from_millis(step);
            let mut buf = Vec::new();
            clock.write(&mut buf, t);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                rfc3339(t),
                "{step} ms later"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-30T00:53:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
