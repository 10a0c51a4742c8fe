//! Telemetry: the access log (and, with the observability work, metrics and spans).
//!
//! Everything here stays off the request path: the path fills records, other threads format
//! and write them.

pub mod access_log;
