//! The access log: one line per request, formatted and written on a dedicated thread.
//!
//! The request path only fills a [`Finish`] record and hands it over a bounded channel; when the
//! writer falls behind, lines are dropped and counted rather than slowing requests down.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method};

use crate::config::plan::AccessLogSettings;
use crate::config::raw::AccessLogFormat;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 65_536;

/// Owns the writer thread; dropping every handle ends the thread after it drains the queue.
pub struct AccessLogger {
    tx: SyncSender<Line>,
    settings: AccessLogSettings,
    /// Lines dropped because the writer could not keep up.
    pub dropped: AtomicU64,
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
    /// The request id.
    pub request_id: HeaderValue,
    /// The client IP (after trusted proxies).
    pub client_ip: IpAddr,
    /// Method.
    pub method: Method,
    /// Host as the client sent it.
    pub host: String,
    /// Path and query as the client sent them.
    pub path: String,
    /// Matched route.
    pub route: Option<Arc<str>>,
    /// Service of the matched route.
    pub service: Option<Arc<str>>,
    /// The authenticated consumer (or token subject); never a credential.
    pub consumer: Option<Arc<str>>,
    /// The target URL the request went to.
    pub target: Option<String>,
    /// Response status.
    pub status: u16,
    /// The gateway's error code when the gateway answered itself.
    pub error: Option<&'static str>,
    /// Request body size (from Content-Length; 0 without a body).
    pub request_bytes: u64,
    /// Time from sending upstream to the response head.
    pub upstream_duration: Option<Duration>,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
}

impl Finish {
    /// Queues the line. `sent` is the response body size, `complete` whether it was sent whole.
    pub fn write(self: Box<Self>, sent: u64, complete: bool) {
        let logger = Arc::clone(&self.logger);
        let line = Line {
            finish: self,
            sent,
            complete,
            end: Instant::now(),
        };
        match logger.tx.try_send(line) {
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
        std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || writer(rx, out, format))?;
        Ok(Arc::new(Self {
            tx,
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
    let mut write = |line: Line, out: &mut std::io::BufWriter<_>| {
        buf.clear();
        match format {
            AccessLogFormat::Json => format_json(&line, &mut buf),
            AccessLogFormat::Common => format_common(&line, &mut buf),
        }
        let _ = out.write_all(&buf);
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => write(line, &mut out),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Drain the burst, then flush once, so lines show up promptly when traffic is light
        // and cost one write per burst when it is heavy.
        while let Ok(line) = rx.try_recv() {
            write(line, &mut out);
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn format_json(line: &Line, buf: &mut Vec<u8>) {
    let f = &line.finish;
    let total = line.end.duration_since(f.start);
    let value = serde_json::json!({
        "timestamp": rfc3339(f.timestamp),
        "request_id": f.request_id.to_str().unwrap_or(""),
        "client_ip": f.client_ip.to_string(),
        "method": f.method.as_str(),
        "host": f.host,
        "path": f.path,
        "route": f.route.as_deref(),
        "service": f.service.as_deref(),
        "consumer": f.consumer.as_deref(),
        "upstream": f.target,
        "status": f.status,
        "error": f.error,
        "request_bytes": f.request_bytes,
        "response_bytes": line.sent,
        "complete": line.complete,
        "duration_ms": total.as_secs_f64() * 1000.0,
        "upstream_ms": f.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
        "user_agent": f.user_agent.as_ref().and_then(|v| v.to_str().ok()),
    });
    let _ = serde_json::to_writer(&mut *buf, &value);
    buf.push(b'\n');
}

fn format_common(line: &Line, buf: &mut Vec<u8>) {
    let f = &line.finish;
    let _ = writeln!(
        buf,
        "{} - - [{}] \"{} {} HTTP/1.1\" {} {}",
        f.client_ip,
        rfc3339(f.timestamp),
        f.method,
        f.path,
        f.status,
        line.sent
    );
}

/// UTC timestamp with milliseconds, e.g. `2026-11-29T00:29:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-30T00:53:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
