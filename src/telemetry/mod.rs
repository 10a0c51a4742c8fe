//! Telemetry: the access log, the application log's format, Prometheus metrics and distributed tracing (W3C propagation,
//! OTLP span export).
//!
//! Everything here stays off the request path: the path fills records, other threads format
//! and write them.

pub mod access_log;
pub mod app_log;
pub mod metrics;
pub mod trace;
