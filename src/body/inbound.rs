//! A request body read by the gateway's own HTTP/1.1 connection (`server::h1`), handed to
//! whoever forwards it one piece at a time.
//!
//! The connection keeps its socket: it reads body bytes only when the receiving side has asked
//! for more ([`Sender::poll_want`]), so nothing is read ahead of the upstream, the client's
//! `Expect: 100-continue` is answered only once the body is really wanted, and a body nobody
//! reads costs nothing. One piece waits in the slot at most: the bound on what the gateway
//! holds of a client's body is the connection's read buffer plus that piece.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BodyError;

/// Why a client's body did not arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The client closed its connection before the body's end.
    #[error("the client closed the connection before the end of its request body")]
    Closed,
    /// A chunk-size line, chunk end or trailer section that is not valid HTTP/1.1.
    #[error("the request body's chunked framing is not valid HTTP/1.1")]
    Framing,
    /// The connection failed while reading the body.
    #[error("the client connection failed while reading the request body")]
    Io,
}

#[derive(Default)]
struct State {
    piece: Option<Bytes>,
    /// The body's trailer fields, handed over after its last piece.
    trailers: Option<http::HeaderMap>,
    /// The sender finished: `Ok` at the body's end, `Err` when it broke off.
    end: Option<Result<(), InboundError>>,
    wanted: bool,
    receiver_gone: bool,
    receiver: Option<Waker>,
    sender: Option<Waker>,
}

struct Shared(Mutex<State>);

impl Shared {
    // Both halves live on one worker thread; the lock is never contended, and a panic while
    // it is held cannot leave the plain fields in a state worth refusing.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection's half: puts body pieces in as they are asked for.
pub struct Sender(Arc<Shared>);

/// The forwarding half: a [`Body`] of the client's bytes.
pub struct Receiver {
    shared: Arc<Shared>,
    /// Bytes still to come when the length is known (Content-Length).
    remaining: Option<u64>,
    done: bool,
}

/// A body channel; `length` is the Content-Length when the body has one.
pub fn channel(length: Option<u64>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared(Mutex::new(State::default())));
    (
        Sender(Arc::clone(&shared)),
        Receiver {
            shared,
            remaining: length,
            done: false,
        },
    )
}

/// What the receiving side wants of the connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A piece: read it from the socket.
    More,
    /// The receiver is gone: nobody will read the rest.
    Gone,
}

impl Sender {
    /// Ready when the receiver asks for a piece (and the slot is empty) or has gone away.
    pub fn poll_want(&self, cx: &mut Context<'_>) -> Poll<Want> {
        let mut s = self.0.lock();
        if s.receiver_gone {
            return Poll::Ready(Want::Gone);
        }
        if s.wanted && s.piece.is_none() {
            return Poll::Ready(Want::More);
        }
        if !s.sender.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.sender = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether the receiver has asked for a piece not yet given (without registering).
    pub fn is_wanted(&self) -> bool {
        let s = self.0.lock();
        s.wanted && s.piece.is_none() && !s.receiver_gone
    }

    /// Hands over a piece of the body.
    pub fn send(&self, piece: Bytes) {
        let mut s = self.0.lock();
        s.piece = Some(piece);
        s.wanted = false;
        if let Some(w) = s.receiver.take() {
            w.wake();
        }
    }

    /// Hands over the body's trailer fields (after its last piece; its end follows).
    pub fn trailers(&self, fields: http::HeaderMap) {
        let mut s = self.0.lock();
        s.trailers = Some(fields);
        if let Some(w) = s.receiver.take() {
            w.wake();
        }
    }

    /// Ends the body: `Ok` after its last byte, `Err` when it broke off.
    pub fn finish(&self, end: Result<(), InboundError>) {
        let mut s = self.0.lock();
        s.end = Some(end);
        if let Some(w) = s.receiver.take() {
            w.wake();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if s.end.is_none() {
            s.end = Some(Err(InboundError::Closed));
            if let Some(w) = s.receiver.take() {
                w.wake();
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver_gone = true;
        if let Some(w) = s.sender.take() {
            w.wake();
        }
    }
}

impl Body for Receiver {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = self.shared.lock();
        if let Some(piece) = s.piece.take() {
            drop(s);
            if let Some(left) = self.remaining.as_mut() {
                *left = left.saturating_sub(piece.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(fields) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(fields))));
        }
        match s.end {
            Some(Ok(())) => {
                drop(s);
                self.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                drop(s);
                self.done = true;
                Poll::Ready(Some(Err(BodyError::Inbound(e))))
            }
            None => {
                s.wanted = true;
                if !s.receiver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.receiver = Some(cx.waker().clone());
                }
                if let Some(w) = s.sender.take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::Pin;

    #[tokio::test]
    async fn a_piece_is_asked_for_before_it_is_read_and_the_end_follows() {
        let (tx, mut rx) = channel(Some(5));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_want(&mut cx).is_pending(), "nothing asked yet");
        assert!(Pin::new(&mut rx).poll_frame(&mut cx).is_pending());
        assert_eq!(tx.poll_want(&mut cx), Poll::Ready(Want::More));
        tx.send(Bytes::from_static(b"hello"));
        tx.finish(Ok(()));
        let frame = poll_fn(|cx| Pin::new(&mut rx).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "hello");
        assert!(rx.is_end_stream());
        assert!(poll_fn(|cx| Pin::new(&mut rx).poll_frame(cx))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn a_sender_dropped_early_is_a_closed_body_and_a_dropped_receiver_is_gone() {
        let (tx, mut rx) = channel(None);
        drop(tx);
        let frame = poll_fn(|cx| Pin::new(&mut rx).poll_frame(cx)).await;
        assert!(matches!(
            frame,
            Some(Err(BodyError::Inbound(InboundError::Closed)))
        ));
        let (tx, rx) = channel(None);
        drop(rx);
        assert_eq!(poll_fn(|cx| tx.poll_want(cx)).await, Want::Gone);
    }
}
