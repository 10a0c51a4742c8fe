//! An upstream answer's header fields as the upstream wrote them: ranges over the head's own
//! bytes, for an answer that goes to the client unchanged but for what the gateway adds.
//!
//! Building a `HeaderMap` of the answer (a name parsed and hashed, a value made and its buffer
//! shared, per field) only to write the same fields out again was about a tenth of the
//! gateway's work per plain proxied request. The own HTTP/1.1 client keeps them as ranges when
//! the route has no policy that reads or rewrites answer heads; the head travels with the
//! response body (which already goes from the client to the connection that writes it), and
//! the own HTTP/1.1 server writes the fields from it. Hop-by-hop fields are left out when the
//! head is read; a field the gateway sets itself (`X-Request-Id`, rate-limit headers, ...) is
//! written instead of the upstream's of the same name.

use bytes::Bytes;
use smallvec::SmallVec;

/// One field: where its name and value lie in the head.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u16, u16),
    value: (u16, u16),
}

/// An answer head's end-to-end fields over its bytes (see the module).
#[derive(Debug)]
pub struct RawHead {
    bytes: Bytes,
    fields: SmallVec<[Field; 12]>,
    /// The declared `Content-Length` (when it frames the body: no `Transfer-Encoding`).
    pub length: Option<u64>,
    /// The answer has a `Date` (the gateway adds one otherwise).
    pub has_date: bool,
}

impl RawHead {
    /// The fields of the head in `bytes`, none yet. Offsets are 16-bit: a head is at most
    /// [`RawHead::MAX_BYTES`].
    pub fn new(bytes: Bytes) -> Self {
        Self {
            bytes,
            fields: SmallVec::new(),
            length: None,
            has_date: false,
        }
    }

    /// The largest head whose fields can be kept as ranges.
    pub const MAX_BYTES: usize = u16::MAX as usize;

    /// Adds the field at `name` and `value` (offsets into the head). `false` when either lies
    /// outside it: the field is not kept.
    pub fn push(&mut self, name: (usize, usize), value: (usize, usize)) -> bool {
        let fits = |(at, len): (usize, usize)| {
            let end = at.checked_add(len)?;
            (end <= self.bytes.len()).then_some(())?;
            Some((u16::try_from(at).ok()?, u16::try_from(len).ok()?))
        };
        match (fits(name), fits(value)) {
            (Some(name), Some(value)) => {
                self.fields.push(Field { name, value });
                true
            }
            _ => false,
        }
    }

    /// The fields in the order the upstream sent them, as (name, value).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .map(|f| (self.slice(f.name), self.slice(f.value)))
    }

    /// The fields as (name, value) sharing the head's buffer, for a head that must become a
    /// `HeaderMap` after all.
    pub fn shared_fields(&self) -> impl Iterator<Item = (&[u8], Bytes)> + '_ {
        self.fields.iter().map(|f| {
            let (at, len) = (usize::from(f.value.0), usize::from(f.value.1));
            (self.slice(f.name), self.bytes.slice(at..at + len))
        })
    }

    fn slice(&self, (at, len): (u16, u16)) -> &[u8] {
        let (at, len) = (usize::from(at), usize::from(len));
        self.bytes.get(at..at + len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_in_order_and_ranges_outside_the_head_are_refused() {
        let bytes = Bytes::from_static(b"HTTP/1.1 200 OK\r\nServer: a\r\nX-B: bc\r\n\r\n");
        let mut head = RawHead::new(bytes.clone());
        assert!(head.push((17, 6), (25, 1)));
        assert!(head.push((28, 3), (33, 2)));
        assert!(!head.push((28, 3), (bytes.len(), 1)));
        assert!(!head.push((usize::MAX, 2), (0, 1)));
        let got: Vec<_> = head.fields().collect();
        assert_eq!(
            got,
            [(&b"Server"[..], &b"a"[..]), (&b"X-B"[..], &b"bc"[..])]
        );
        let shared: Vec<_> = head.shared_fields().map(|(_, v)| v).collect();
        assert_eq!(
            shared,
            [Bytes::from_static(b"a"), Bytes::from_static(b"bc")]
        );
    }
}
