//! A lock-free rolling window of two counters (total, failed), and the monotonic clock the
//! resilience code shares.
//!
//! Outlier detection, circuit breakers and retry budgets all ask "how many requests, and how many
//! of them bad, in the last N seconds" from every worker at once. A mutex-guarded deque would be
//! exact but would serialise the workers; ring buckets of atomics are approximate at bucket edges
//! (a count racing a bucket reset can be lost) and never block, which is the right trade for
//! thresholds that are statistical anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Buckets per window: the window slides in steps of a tenth of its length.
const BUCKETS: usize = 10;

/// Nanoseconds since the first call in this process, from `tokio::time` so tests with paused
/// time see the same clock as the code they test.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    // Never 0: callers use 0 as "not set".
    tokio::time::Instant::now()
        .saturating_duration_since(epoch)
        .as_nanos() as u64
        + 1
}

struct Bucket {
    /// Which slot of time this bucket holds (0: never used).
    slot: AtomicU64,
    total: AtomicU64,
    failed: AtomicU64,
}

/// Counts (total, failed) over a sliding window.
pub struct Window {
    bucket_ns: u64,
    buckets: Box<[Bucket]>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field(
                "span",
                &Duration::from_nanos(self.bucket_ns * BUCKETS as u64),
            )
            .finish_non_exhaustive()
    }
}

impl Window {
    /// A window over the last `span` (at least 10 ms).
    pub fn new(span: Duration) -> Self {
        let bucket_ns = (span.as_nanos() as u64 / BUCKETS as u64).max(1_000_000);
        Self {
            bucket_ns,
            buckets: (0..BUCKETS)
                .map(|_| Bucket {
                    slot: AtomicU64::new(0),
                    total: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// The window's length.
    pub fn span(&self) -> Duration {
        Duration::from_nanos(self.bucket_ns * BUCKETS as u64)
    }

    /// Adds `total` and `failed` at time `now` (from [`now_ns`]).
    pub fn add(&self, now: u64, total: u64, failed: u64) {
        let slot = now / self.bucket_ns + 1;
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.total.store(0, Ordering::Relaxed);
            bucket.failed.store(0, Ordering::Relaxed);
        }
        if total > 0 {
            bucket.total.fetch_add(total, Ordering::Relaxed);
        }
        if failed > 0 {
            bucket.failed.fetch_add(failed, Ordering::Relaxed);
        }
    }

    /// (total, failed) over the window ending at `now`.
    pub fn sums(&self, now: u64) -> (u64, u64) {
        let current = now / self.bucket_ns + 1;
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        let mut sums = (0, 0);
        for b in self.buckets.iter() {
            let slot = b.slot.load(Ordering::Acquire);
            if slot >= oldest && slot <= current {
                sums.0 += b.total.load(Ordering::Relaxed);
                sums.1 += b.failed.load(Ordering::Relaxed);
            }
        }
        sums
    }

    /// Forgets everything.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.slot.store(0, Ordering::Release);
            b.total.store(0, Ordering::Relaxed);
            b.failed.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w = Window::new(Duration::from_secs(1));
        w.add(1, 1, 0);
        w.add(50 * MS, 1, 1);
        w.add(950 * MS, 1, 1);
        assert_eq!(w.sums(950 * MS), (3, 2));
        // 1.05 s later the first bucket (0..100 ms) has left the window.
        assert_eq!(w.sums(1_050 * MS), (1, 1));
        assert_eq!(w.sums(5_000 * MS), (0, 0));
        w.add(5_000 * MS, 2, 0);
        assert_eq!(w.sums(5_000 * MS), (2, 0));
        w.reset();
        assert_eq!(w.sums(5_000 * MS), (0, 0));
    }
}
