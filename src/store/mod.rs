//! Shared state stores: what several gateway nodes use to agree (rate-limit counters now,
//! cached responses later).
//!
//! Owns the connection to the store, its timeouts and its failure handling; the policies that
//! use a store own what they keep in it.

pub mod redis;
