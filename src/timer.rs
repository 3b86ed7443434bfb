//! Deadlines for the reactor: the keepalive tick and per-connection
//! timeouts, kept in one min-heap.
//!
//! Connections push activity forward on every request, so entries are never
//! moved: an entry that fires early is answered by the connection with its
//! real deadline, which is pushed again. Each connection keeps at most one
//! entry that it knows of, so the heap stays about as large as the number of
//! connections and no request touches it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerId {
    /// The periodic dashboard keepalive.
    Keepalive,
    /// Try accepting again after the listener failed.
    Accept,
    /// A connection, by slab key and the serial number that tells a reused
    /// key's new occupant from the old one.
    Connection {
        /// Slab key.
        key: usize,
        /// Serial number of the connection.
        serial: u64,
    },
}

/// A set of deadlines, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
}

impl Timers {
    /// Adds a deadline.
    pub fn push(&mut self, at: Instant, id: TimerId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns one deadline that has passed by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerId> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, id))| id)
            }
            _ => None,
        }
    }

    /// Keeps only the deadlines for which `keep` says yes. Entries of
    /// closed connections are otherwise only dropped when they fall due,
    /// which under heavy connection churn can take a whole idle timeout.
    pub fn retain(&mut self, mut keep: impl FnMut(TimerId) -> bool) {
        self.heap.retain(|Reverse((_, id))| keep(*id));
    }

    /// How many deadlines are pending.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no deadline is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_fire_in_order_and_only_when_due() {
        let start = Instant::now();
        let mut timers = Timers::default();
        let conn = TimerId::Connection { key: 3, serial: 9 };
        timers.push(start + Duration::from_secs(2), conn);
        timers.push(start + Duration::from_secs(1), TimerId::Keepalive);
        assert_eq!(timers.next(), Some(start + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(start), None);
        let later = start + Duration::from_secs(5);
        assert_eq!(timers.pop_due(later), Some(TimerId::Keepalive));
        assert_eq!(timers.pop_due(later), Some(conn));
        assert!(timers.is_empty());
    }

    #[test]
    fn retain_drops_the_deadlines_of_closed_connections() {
        let at = Instant::now();
        let mut timers = Timers::default();
        for key in 0..10 {
            timers.push(at, TimerId::Connection { key, serial: 1 });
        }
        timers.push(at, TimerId::Keepalive);
        timers.retain(
            |id| !matches!(id, TimerId::Connection { key, .. } if key % 2 == 1),
        );
        assert_eq!(timers.len(), 6);
    }
}
