//! The body recorder: a copy of a response body taken while it streams to the client, handed
//! to the cache only when the body ended cleanly. Over the size cap, or on an error, it gives
//! up and the body simply streams on.

use bytes::{Bytes, BytesMut};

/// What to do with the complete body.
pub type OnComplete = Box<dyn FnOnce(Bytes) + Send>;

/// Records a body up to a cap.
pub struct Recorder {
    buf: BytesMut,
    max: u64,
    done: OnComplete,
}

impl Recorder {
    /// A recorder keeping at most `max` bytes, calling `done` with the body at its end.
    pub fn new(max: u64, done: OnComplete) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            done,
        }
    }

    /// Copies a data frame (copied, not referenced: a frame may be a slice of a large read
    /// buffer that the entry must not keep alive). False once over the cap: drop the recorder.
    pub fn data(&mut self, data: &Bytes) -> bool {
        if (self.buf.len() + data.len()) as u64 > self.max {
            return false;
        }
        self.buf.extend_from_slice(data);
        true
    }

    /// The body ended cleanly: store it.
    pub fn complete(self) {
        let Recorder { buf, done, .. } = self;
        done(buf.freeze());
    }
}

impl crate::body::Tap for Recorder {
    fn data(&mut self, data: &Bytes) -> bool {
        Recorder::data(self, data)
    }

    fn complete(self: Box<Self>) {
        Recorder::complete(*self)
    }
}
