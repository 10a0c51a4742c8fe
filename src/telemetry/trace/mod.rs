//! Distributed tracing: W3C Trace Context propagation (always on) and, when configured, spans
//! exported over OTLP (see [`export`]).
//!
//! Owns the request's trace identity: parsing the client's `traceparent`/`tracestate`, starting
//! a trace when there is none, the sampling decision, and stamping a fresh `traceparent` on every
//! upstream call (one span id per call, so retries and aggregate calls are told apart). It does
//! not own when calls happen (`proxy/retry.rs`, `aggregate/`) nor the access log line.
//!
//! Propagation runs on every request, so it avoids the heap: ids are plain arrays, the header is
//! formatted into a fixed `[u8; 55]`, and random ids come from `fastrand`'s thread-local
//! generator. Only a sampled request with export on allocates span records.

pub mod config;
pub mod export;
mod span;

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

pub use export::Exporter;
pub use span::{Called, ClientSpan, ServerSpan};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on (all its header lines together). The spec asks vendors to pass
/// on at least 512 characters; past that the whole header is dropped rather than cut, since a cut
/// could leave a half list-member that the next hop misreads.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// The sampled bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A parsed, valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the gateway's server span.
    pub parent_id: [u8; 8],
    /// The caller's trace flags.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a version-00 `traceparent` strictly: exactly 55 bytes, lowercase hex, non-zero
    /// ids. Anything else is `None`, and the request is treated as carrying no trace (a malformed
    /// header never fails a request).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != TRACEPARENT_LEN
            || &value[..3] != b"00-"
            || value[35] != b'-'
            || value[52] != b'-'
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_decode(&value[3..35], &mut trace_id)?;
        hex_decode(&value[36..52], &mut parent_id)?;
        hex_decode(&value[53..55], &mut flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }
}

/// Sampling for traces the gateway starts (a caller's sampled flag is always followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sampler {
    /// Traces whose id, read as a number, falls below this are sampled; 0 samples none. Derived
    /// from the trace id (not a fresh coin toss) so every gateway with the same ratio agrees.
    threshold: u64,
}

impl Sampler {
    /// Samples `ratio` (0.0 to 1.0) of new traces.
    pub fn ratio(ratio: f64) -> Self {
        let ratio = ratio.clamp(0.0, 1.0);
        Self {
            // The low 63 bits of the trace id are compared, so `1 << 63` samples everything.
            threshold: (ratio * (1u64 << 63) as f64) as u64,
        }
    }

    /// Whether a new trace with this id is sampled.
    pub fn sampled(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }
}

/// A request's place in its trace: what is propagated upstream, and where its spans go.
#[derive(Clone)]
pub struct Trace {
    /// The trace (the caller's, or a new one).
    pub trace_id: [u8; 16],
    /// The gateway's server span for this request.
    pub span_id: [u8; 8],
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The sampled flag sent upstream (and whether spans are recorded).
    pub sampled: bool,
    /// Keep the client's `tracestate` on upstream calls: its `traceparent` was valid and the
    /// state is within [`MAX_TRACESTATE_BYTES`].
    pub keep_tracestate: bool,
    /// Where spans go: set only when export is on and the trace is sampled.
    pub exporter: Option<Arc<Exporter>>,
}

impl Trace {
    /// The trace of a request with these headers. `exporter` is the configured OTLP export (its
    /// sampler decides for new traces); without one, new traces are propagated unsampled.
    pub fn start(headers: &HeaderMap, exporter: Option<&Arc<Exporter>>) -> Self {
        let incoming = single(headers, &TRACEPARENT).and_then(|v| TraceParent::parse(v.as_bytes()));
        let (trace_id, parent_id, sampled) = match incoming {
            Some(tp) => (tp.trace_id, Some(tp.parent_id), tp.flags & SAMPLED != 0),
            None => {
                let id = new_trace_id();
                let sampled = exporter.is_some_and(|e| e.sampler().sampled(&id));
                (id, None, sampled)
            }
        };
        let keep_tracestate = incoming.is_some() && tracestate_fits(headers);
        Self {
            trace_id,
            span_id: new_span_id(),
            parent_id,
            sampled,
            keep_tracestate,
            exporter: exporter.filter(|_| sampled).cloned(),
        }
    }

    /// Whether this request's spans are recorded and exported.
    pub fn recording(&self) -> bool {
        self.exporter.is_some()
    }

    /// Readies `headers` for the upstream: drops a `tracestate` that must not pass and sets a
    /// `traceparent` naming a fresh span of the gateway (the client span of this one call),
    /// which is returned. Call once per upstream call, retries and aggregate calls included.
    pub fn stamp(&self, headers: &mut HeaderMap) -> [u8; 8] {
        if !self.keep_tracestate && has_field(headers, &TRACESTATE) {
            headers.remove(TRACESTATE);
        }
        let span_id = new_span_id();
        headers.insert(TRACEPARENT, self.traceparent(&span_id));
        span_id
    }

    /// `00-{trace id}-{span_id}-{flags}`.
    pub fn traceparent(&self, span_id: &[u8; 8]) -> HeaderValue {
        let mut buf = [0u8; TRACEPARENT_LEN];
        format_traceparent(&mut buf, &self.trace_id, span_id, self.sampled);
        // Only hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static(""))
    }

    /// The trace id as 32 lowercase hex digits (for the access log).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_encode(&self.trace_id, &mut out);
        out
    }

    /// The server span id as 16 lowercase hex digits (for the access log).
    pub fn span_id_hex(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex_encode(&self.span_id, &mut out);
        out
    }
}

/// The one value of `name`; `None` when absent or repeated (two `traceparent`s are invalid).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if !has_field(headers, name) {
        return None;
    }
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// Whether `headers` may have `name`: most requests carry no trace context, and in a map of a
/// usual size a scan of the names is cheaper than hashing one and probing the table.
fn has_field(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.keys_len() > 16 || headers.keys().any(|k| k == name)
}

/// Whether every `tracestate` line together stays within [`MAX_TRACESTATE_BYTES`].
fn tracestate_fits(headers: &HeaderMap) -> bool {
    let mut total = 0;
    for v in headers.get_all(TRACESTATE) {
        // Lines joined with `,` by the next hop.
        total += v.len() + 1;
    }
    total <= MAX_TRACESTATE_BYTES + 1
}

/// A random, non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Writes `00-{trace_id}-{span_id}-{01|00}` into `buf`.
fn format_traceparent(buf: &mut [u8; 55], trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) {
    buf[..3].copy_from_slice(b"00-");
    hex_encode(trace_id, &mut buf[3..35]);
    buf[35] = b'-';
    hex_encode(span_id, &mut buf[36..52]);
    buf[52] = b'-';
    buf[53] = b'0';
    buf[54] = if sampled { b'1' } else { b'0' };
}

/// The two lowercase hex digits of every byte value (one load per byte: trace ids here,
/// request ids in `proxy::headers`).
pub(crate) const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xF]];
        i += 1;
    }
    table
};

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Decodes lowercase hex (`hex` is twice as long as `out`); uppercase is refused, as the spec
/// requires of `traceparent`.
fn hex_decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(hex[2 * i])? << 4) | nibble(hex[2 * i + 1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed() {
        let tp = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn the_incoming_trace_is_continued_with_new_span_ids() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        let trace = Trace::start(&h, None);
        assert!(trace.sampled && trace.keep_tracestate);
        let first = trace.stamp(&mut h);
        let sent = h.get(TRACEPARENT).unwrap().to_str().unwrap().to_string();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        let tp = TraceParent::parse(sent.as_bytes()).unwrap();
        assert_eq!(tp.parent_id, first);
        assert_ne!(first, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_ne!(trace.stamp(&mut h), first);
        assert_eq!(h.get(TRACESTATE).unwrap(), "k=v");
    }

    #[test]
    fn without_a_valid_trace_a_new_one_starts_and_tracestate_goes() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        h.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        let trace = Trace::start(&h, None);
        assert_eq!(trace.parent_id, None);
        assert!(
            !trace.sampled,
            "nothing exports: a new trace is not sampled"
        );
        trace.stamp(&mut h);
        let tp = TraceParent::parse(h.get(TRACEPARENT).unwrap().as_bytes()).unwrap();
        assert_eq!(tp.trace_id, trace.trace_id);
        assert_eq!(tp.flags, 0);
        assert!(h.get(TRACESTATE).is_none());
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE_BYTES));
        h.insert(TRACESTATE, HeaderValue::from_str(&long).unwrap());
        let trace = Trace::start(&h, None);
        trace.stamp(&mut h);
        assert!(h.get(TRACESTATE).is_none());
    }

    #[test]
    fn two_traceparents_are_invalid() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(Trace::start(&h, None).parent_id, None);
    }

    #[test]
    fn the_ratio_sampler_is_all_or_nothing_at_its_ends() {
        let (all, none, half) = (
            Sampler::ratio(1.0),
            Sampler::ratio(0.0),
            Sampler::ratio(0.5),
        );
        let mut hits = 0;
        for _ in 0..2000 {
            let id = new_trace_id();
            assert!(all.sampled(&id));
            assert!(!none.sampled(&id));
            hits += usize::from(half.sampled(&id));
        }
        assert!((800..1200).contains(&hits), "{hits}");
        assert!(all.sampled(&[0xff; 16]));
    }
}
