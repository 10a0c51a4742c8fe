//! The upstream side of the data plane: the HTTP client and its pools, header hygiene, the
//! forwarding with retries, shadow copies, protocol upgrades and the body types. The order of
//! work on a request is `pipeline/`'s.

pub mod body;
pub mod client;
pub mod conn;
pub mod grpc;
pub mod headers;
pub mod record;
pub mod retry;
pub mod upgrade;
