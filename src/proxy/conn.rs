//! What a client connection shares with the bodies of its responses: the request counts the
//! connection watchdog reads, and the write pacing of HTTP/1 responses. Kept apart from the
//! pipeline's connection context so a response body needs nothing above `proxy/`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

/// A connection's counters and pacing.
#[derive(Default)]
pub struct ConnState {
    /// Requests started on this connection (read by the connection watchdog).
    pub requests: AtomicU64,
    /// Requests whose response has not finished (read by the connection watchdog).
    pub active: AtomicU32,
    /// How much of its responses the client has taken (HTTP/1): a response body reads its
    /// upstream only while little of it waits unsent.
    pub flow: WriteFlow,
}

/// Counts a request as active on its connection until its response body is dropped, so the
/// connection watchdog never cuts a connection that is busy with a slow response.
pub struct ActiveRequest(Arc<ConnState>);

impl ActiveRequest {
    /// A request started on the connection of `state`.
    pub fn start(state: Arc<ConnState>) -> Self {
        state.requests.fetch_add(1, Ordering::Relaxed);
        state.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(state)
    }

    /// The connection's write pacing.
    pub fn flow(&self) -> &WriteFlow {
        &self.0.flow
    }

    /// The connection's write pacing, for a response body to hold.
    pub fn pace(&self) -> Arc<dyn crate::body::Pace> {
        Arc::clone(&self.0) as Arc<dyn crate::body::Pace>
    }
}

impl crate::body::Pace for ConnState {
    fn written(&self) -> u64 {
        self.flow.written()
    }

    fn may_send(&self, base: u64, handed: u64, waker: &Waker) -> bool {
        self.flow.may_send(base, handed, waker)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes a client's HTTP/1 socket accepted, and the response body waiting for more to go.
///
/// hyper queues a response body up to its buffer limit plus one upstream chunk and cannot be
/// told less; the body itself waits here once [`WriteFlow::MAX_UNSENT`] bytes are unsent, so a
/// client that stops reading stops the upstream reads after that much.
#[derive(Default)]
pub struct WriteFlow {
    written: AtomicU64,
    waiting: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl WriteFlow {
    /// The most body bytes handed to hyper but not yet taken by the client's socket.
    pub const MAX_UNSENT: u64 = 16 * 1024;

    /// The client's socket took `n` more bytes.
    pub fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Release);
        if self.waiting.swap(false, Ordering::AcqRel) {
            if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether a body that has handed out `handed` bytes since the count stood at `base` may
    /// hand out more now; if not, `waker` is woken once the client takes some.
    pub fn may_send(&self, base: u64, handed: u64, waker: &Waker) -> bool {
        if handed <= self.written().saturating_sub(base) + Self::MAX_UNSENT {
            return true;
        }
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
        self.waiting.store(true, Ordering::Release);
        // A write between the first look and the registration would have found no waker.
        handed <= self.written().saturating_sub(base) + Self::MAX_UNSENT
    }
}
