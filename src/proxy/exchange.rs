//! What a response body from an upstream owes that upstream when it ends: the pooled
//! connection back to its pool (only after a clean end), the target's in-flight count, and
//! the places held under concurrency limits.

use crate::body::{GatewayBody, Guard};
use crate::upstream::breaker::ConcurrencyGuard;
use crate::upstream::InFlight;

use super::client::PooledSender;

/// The upstream exchange's part of a response body's end (see [`crate::body::Guard`]).
#[derive(Default)]
pub struct Exchange {
    /// The upstream connection to return to the pool once the body ended cleanly.
    pub pooled: Option<PooledSender>,
    /// Counts the request against its target until the body ends.
    pub in_flight: Option<InFlight>,
    /// Holds the request's place under its service's `max_concurrent_requests`.
    pub service_slot: Option<ConcurrencyGuard>,
    /// Places held until the body ends (a `rate_limit` concurrency slot): released by drop.
    pub held: Option<Box<dyn Send + Sync>>,
}

impl Exchange {
    /// `body`, owing this exchange its end.
    pub fn owed_by(self, mut body: GatewayBody) -> GatewayBody {
        body.guard(Box::new(self));
        body
    }
}

impl Exchange {
    /// The body ended (`complete`: cleanly, read to its end): the connection goes back to its
    /// pool only then; the counts and places are given back either way.
    pub fn end(self, complete: bool) {
        if let (Some(pooled), true) = (self.pooled, complete) {
            pooled.release();
        }
    }
}

impl Guard for Exchange {
    fn end(self: Box<Self>, _sent: u64, complete: bool) {
        Exchange::end(*self, complete);
    }
}
