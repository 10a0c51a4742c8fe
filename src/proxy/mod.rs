//! The upstream side of the data plane: the HTTP client and its pools, header hygiene, the
//! forwarding with retries, protocol upgrades, and what a response body owes its upstream
//! exchange when it ends. The body types themselves are the leaf `body/`. The order of work on
//! a request is `pipeline/`'s.

pub mod client;
pub mod conn;
pub mod exchange;
pub mod field_name;
pub mod grpc;
pub mod h1;
pub mod headers;
pub mod record;
pub mod retry;
pub mod upgrade;
