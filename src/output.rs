//! The queue of bytes an HTTP connection owes its client.
//!
//! Small answers are copied into one reusable buffer. Large bodies that
//! the store keeps encoded (a `GET /metrics` of a big state) are queued by
//! reference instead, so that many clients reading the same megabytes at
//! once share one copy. Everything queued leaves in one `writev`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Bodies at least this long are shared rather than copied.
pub const SHARE_FROM: usize = 16 * 1024;
/// Most slices handed to one `writev`.
const MAX_SLICES: usize = 16;

#[derive(Debug)]
enum Segment {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(bytes) => bytes,
            Segment::Shared(bytes) => bytes,
        }
    }
}

/// Bytes waiting to be written, in order.
#[derive(Debug, Default)]
pub struct Output {
    segments: VecDeque<Segment>,
    /// Bytes of the first segment already written.
    sent: usize,
}

impl Output {
    /// The buffer to append copied bytes to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segments.back(), Some(Segment::Owned(_))) {
            self.segments.push_back(Segment::Owned(Vec::new()));
        }
        match self.segments.back_mut() {
            Some(Segment::Owned(bytes)) => bytes,
            _ => unreachable!("an owned segment was just ensured"),
        }
    }

    /// Queues a body by reference, or copies it when it is small.
    pub fn push_shared(&mut self, body: Rc<[u8]>) {
        if body.len() < SHARE_FROM {
            self.buf().extend_from_slice(&body);
        } else {
            self.segments.push_back(Segment::Shared(body));
        }
    }

    /// Queues a body this connection alone will send.
    pub fn push_owned(&mut self, body: Vec<u8>) {
        if body.len() < SHARE_FROM {
            self.buf().extend_from_slice(&body);
        } else {
            self.segments.push_back(Segment::Owned(body));
        }
    }

    /// Forgets everything queued, keeping the buffer's allocation.
    pub fn clear(&mut self) {
        self.segments.retain(|s| matches!(s, Segment::Owned(_)));
        self.segments.truncate(1);
        if let Some(Segment::Owned(bytes)) = self.segments.front_mut() {
            bytes.clear();
        }
        self.sent = 0;
    }

    /// Bytes still to be written.
    pub fn pending(&self) -> usize {
        self.segments.iter().map(|s| s.bytes().len()).sum::<usize>() - self.sent
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// Writes as much as one `writev` takes; returns how many bytes.
    pub fn write_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (i, segment) in self.segments.iter().take(MAX_SLICES).enumerate() {
            let bytes = segment.bytes();
            let bytes = if i == 0 { &bytes[self.sent..] } else { bytes };
            if !bytes.is_empty() {
                slices[count] = IoSlice::new(bytes);
                count += 1;
            }
        }
        if count == 0 {
            return Ok(0);
        }
        let n = sink.write_vectored(&slices[..count])?;
        self.advance(n);
        Ok(n)
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.segments.front() {
            let left = front.bytes().len() - self.sent;
            if n < left {
                self.sent += n;
                self.reclaim();
                return;
            }
            n -= left;
            self.sent = 0;
            if self.segments.len() == 1 {
                // Keep the last buffer's allocation for the next answers.
                if let Some(Segment::Owned(bytes)) = self.segments.front_mut() {
                    bytes.clear();
                    if bytes.capacity() > 4 * SHARE_FROM {
                        bytes.shrink_to(4096);
                    }
                    return;
                }
            }
            self.segments.pop_front();
        }
    }

    /// Drops the written part of a partly written buffer. New answers are
    /// appended to that same buffer, so without this a client that reads a
    /// little at a time would let it grow for ever while what it still owes
    /// stays small.
    fn reclaim(&mut self) {
        if self.sent < 4 * SHARE_FROM {
            return;
        }
        if let Some(Segment::Owned(bytes)) = self.segments.front_mut() {
            bytes.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Everything still owed, as one buffer.
    pub fn into_vec(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending());
        for (i, segment) in self.segments.iter().enumerate() {
            let bytes = segment.bytes();
            out.extend_from_slice(if i == 0 {
                &bytes[self.sent..]
            } else {
                bytes
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `limit` bytes per call.
    struct Trickle {
        taken: Vec<u8>,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shared_and_copied_bytes_leave_in_order_through_short_writes() {
        let big: Rc<[u8]> = vec![b'x'; SHARE_FROM].into();
        let mut out = Output::default();
        out.buf().extend_from_slice(b"head1");
        out.push_shared(Rc::clone(&big));
        out.buf().extend_from_slice(b"head2");
        out.push_shared(b"small".to_vec().into());
        out.push_owned(vec![b'y'; SHARE_FROM]);
        let total = 5 + SHARE_FROM + 5 + 5 + SHARE_FROM;
        assert_eq!(out.pending(), total);
        let mut sink = Trickle { taken: Vec::new(), limit: 1000 };
        while !out.is_empty() {
            out.write_to(&mut sink).unwrap();
        }
        let mut expected = b"head1".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"head2small");
        expected.extend_from_slice(&vec![b'y'; SHARE_FROM]);
        assert_eq!(sink.taken, expected);
        assert_eq!(Rc::strong_count(&big), 1, "the shared body was released");
    }

    #[test]
    fn the_buffer_is_reused_once_drained() {
        let mut out = Output::default();
        out.buf().extend_from_slice(&[1; 100]);
        let mut sink = Trickle { taken: Vec::new(), limit: usize::MAX };
        out.write_to(&mut sink).unwrap();
        assert!(out.is_empty());
        assert!(out.buf().capacity() >= 100, "allocation kept");
    }

    #[test]
    fn into_vec_keeps_only_what_is_unsent() {
        let mut out = Output::default();
        out.buf().extend_from_slice(b"abcdef");
        let mut sink = Trickle { taken: Vec::new(), limit: 2 };
        out.write_to(&mut sink).unwrap();
        assert_eq!(out.into_vec(), b"cdef");
    }
}
