//! Portico's integration tests, in one test binary (`cargo test --test it`): one module per
//! feature, all sharing `support` (real upstreams, the gateway in-process or as the real binary,
//! clients and their `Reply`, the typed config builder `support::config`, redis-server, TLS and
//! JWT helpers, on ephemeral 127.0.0.1 ports).
//!
//! One binary instead of one per file: `support` and the gateway are compiled and linked once.
//! Run one feature's tests with a filter on its module path, e.g.
//! `cargo test --test it access_log::` (a substring match: `tls::` also runs `tls_mtls::`).

mod support;

mod access_log;
mod admin;
mod aggregate;
mod architecture;
mod auth_basic;
mod auth_introspection;
mod auth_jwks;
mod auth_jwt;
mod auth_keys;
mod bad_input;
mod cache;
mod cache_redis;
mod circuit_breaker;
mod config;
mod consumers_store;
mod cors;
mod dashboard;
mod demo;
mod fleet;
mod grpc;
mod health_checks;
mod http2;
mod ip_filter;
mod load_balancing;
mod metrics;
mod openapi;
mod operations;
mod outlier;
mod protocols;
mod proxy;
mod rate_limit;
mod rate_limit_redis;
mod reload;
mod request_termination;
mod restart;
mod retries;
mod shadow;
mod smuggling;
mod streaming;
mod tls;
mod tls_mtls;
mod tls_upstream;
mod tracing;
mod traffic;
mod transform;
mod transform_body;
mod transform_xml;
mod upstream_faults;
mod upstream_h1;
mod wasm;
