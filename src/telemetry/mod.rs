//! Telemetry: the access log and Prometheus metrics.
//!
//! Everything here stays off the request path: the path fills records, other threads format
//! and write them.

pub mod access_log;
pub mod metrics;
