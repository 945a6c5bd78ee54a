//! The remote-write buffer: batches waiting to be sent, oldest first, bounded. When it is
//! full the oldest batch goes (the newest figures matter most to someone watching) and is
//! counted, so a long outage costs its oldest minutes and says so, never the master's
//! memory.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::master::metrics::RemoteWriteFigures;

/// One push: the series at one instant, as a request body.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Its place in the order of batches (to pop the one that was sent, not a newer one).
    pub seq: u64,
    /// When it was sampled, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The request body (protobuf, snappy-compressed).
    pub body: Bytes,
}

/// Pending batches and what became of the others.
#[derive(Debug)]
pub struct Buffer {
    capacity: usize,
    pending: VecDeque<Batch>,
    next_seq: u64,
    dropped_full: u64,
    refused: u64,
    sent: u64,
}

impl Buffer {
    /// A buffer holding at most `capacity` batches (at least one).
    pub fn new(capacity: usize) -> Buffer {
        Buffer {
            capacity: capacity.max(1),
            pending: VecDeque::new(),
            next_seq: 0,
            dropped_full: 0,
            refused: 0,
            sent: 0,
        }
    }

    /// Adds a batch; returns the batch dropped to make room, if the buffer was full.
    pub fn push(&mut self, timestamp_ms: i64, body: Bytes) -> Option<Batch> {
        let dropped = if self.pending.len() >= self.capacity {
            self.dropped_full += 1;
            self.pending.pop_front()
        } else {
            None
        };
        self.pending.push_back(Batch {
            seq: self.next_seq,
            timestamp_ms,
            body,
        });
        self.next_seq += 1;
        dropped
    }

    /// The oldest pending batch.
    pub fn oldest(&self) -> Option<&Batch> {
        self.pending.front()
    }

    /// The batch `seq` was delivered: it leaves the buffer (unless it was dropped
    /// meanwhile to make room).
    pub fn sent(&mut self, seq: u64) {
        if self.remove(seq) {
            self.sent += 1;
        }
    }

    /// The endpoint refused batch `seq` for good (a 4xx other than 429): it leaves.
    pub fn refused(&mut self, seq: u64) {
        if self.remove(seq) {
            self.refused += 1;
        }
    }

    fn remove(&mut self, seq: u64) -> bool {
        if self.pending.front().is_some_and(|b| b.seq == seq) {
            self.pending.pop_front();
            true
        } else {
            false
        }
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Batches delivered so far.
    pub fn delivered(&self) -> u64 {
        self.sent
    }

    /// The figures `/metrics` and the pushed series show.
    pub fn figures(&self) -> RemoteWriteFigures {
        RemoteWriteFigures {
            dropped_full: self.dropped_full,
            refused: self.refused,
            pending: self.pending.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_its_oldest_batch_and_counts_it() {
        let mut b = Buffer::new(3);
        for t in 0..3 {
            assert!(b.push(t, Bytes::new()).is_none());
        }
        assert_eq!(b.len(), 3);
        // Two more: the two oldest go, in order, and are counted.
        assert_eq!(b.push(3, Bytes::new()).map(|d| d.timestamp_ms), Some(0));
        assert_eq!(b.push(4, Bytes::new()).map(|d| d.timestamp_ms), Some(1));
        assert_eq!(b.len(), 3);
        assert_eq!(b.figures().dropped_full, 2);
        assert_eq!(b.figures().pending, 3);
        assert_eq!(b.oldest().map(|o| o.timestamp_ms), Some(2));
    }

    #[test]
    fn a_batch_dropped_while_it_was_sent_does_not_take_a_newer_one_with_it() {
        let mut b = Buffer::new(2);
        b.push(0, Bytes::new());
        b.push(1, Bytes::new());
        let sending = b.oldest().unwrap().seq;
        // While it is on the wire, a new sample makes room by dropping it.
        b.push(2, Bytes::new());
        b.sent(sending);
        assert_eq!(b.len(), 2, "the newer batches stay");
        assert_eq!(b.delivered(), 0);
        let next = b.oldest().unwrap().seq;
        b.refused(next);
        assert_eq!(b.figures().refused, 1);
        assert_eq!(b.oldest().map(|o| o.timestamp_ms), Some(2));
        b.sent(b.oldest().unwrap().seq);
        assert!(b.is_empty());
        assert_eq!(b.delivered(), 1);
        assert_eq!(b.figures().dropped_full, 1);
    }
}
