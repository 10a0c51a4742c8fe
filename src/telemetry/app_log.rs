//! The application log (startup, reloads, health changes, errors) on stderr: as text, coloured
//! only for a person at a terminal, or as one JSON object per line, so one log pipeline can take
//! it together with the JSON access log.
//!
//! Owns only the subscriber's set-up and the JSON line format; what is logged where is each
//! module's business, and the per-request access log is `access_log`.

use std::fmt;
use std::io::IsTerminal as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How application log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event (tracing's default layout).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

/// Whether text lines get ANSI colours: only when stderr is a terminal and `NO_COLOR` is not
/// set to a non-empty value (<https://no-color.org>). Colour codes in a file or a log
/// collector are noise.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the application log on stderr at `default_level` (`RUST_LOG` wins when set).
/// Does nothing when a subscriber is already installed.
pub fn init(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
}

/// Formats each event as one JSON object on one line.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(&json_line(event))?;
        writer.write_char('\n')
    }
}

/// The JSON object for `event`, without the newline.
fn json_line(event: &Event<'_>) -> String {
    let mut line = Map::new();
    line.insert(
        "timestamp".into(),
        super::access_log::rfc3339(std::time::SystemTime::now()).into(),
    );
    let meta = event.metadata();
    line.insert("level".into(), meta.level().as_str().into());
    line.insert("target".into(), meta.target().into());
    event.record(&mut Fields(&mut line));
    Value::Object(line).to_string()
}

/// Collects an event's fields into the line's object (the message under `message`).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        // A field named like one of the line's own keys must not replace it.
        let name = match field.name() {
            "timestamp" | "level" | "target" => format!("field.{}", field.name()),
            name => name.to_string(),
        };
        self.0.insert(name, value);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::sync::Mutex;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn json_lines_carry_time_level_message_and_fields() {
        // tracing-subscriber writes to a `Mutex<impl Write>` by itself; read it back by path.
        let out = tempfile::NamedTempFile::new().unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Mutex::new(out.reopen().unwrap()))
            .with_ansi(false)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                revision = 3,
                path = "a \"b\"",
                level = "x",
                "config reloaded"
            );
        });
        let text = std::fs::read_to_string(out.path()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "config reloaded");
        assert_eq!(line["revision"], 3);
        assert_eq!(line["path"], "a \"b\"");
        assert_eq!(line["field.level"], "x");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
