//! Connection deadlines (authentication, Unix fds pending) in one min-heap, so that the
//! event loop's wait and its expiry cost what expires, not a scan of every connection
//! (DESIGN 8: nothing on a per-event path may grow with unrelated connections).
//!
//! Entries are not removed when a deadline goes away (Hello came, the fds were taken, the
//! connection closed): the heap is lazy, and the caller says, for the entry at the top,
//! whether it still stands. Each entry is pushed once and popped once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::bus::PeerId;

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, PeerId)>>,
}

impl Timers {
    /// Connection `id` has a deadline at `at`.
    pub fn arm(&mut self, at: Instant, id: PeerId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest deadline that still stands (`stands(at, id)`); the ones on the way
    /// that no longer do are dropped.
    pub fn next(&mut self, stands: impl Fn(Instant, PeerId) -> bool) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if stands(at, id) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the deadlines at or before `now` (whether they still stand is the caller's
    /// to check).
    pub fn expired(&mut self, now: Instant) -> Vec<(Instant, PeerId)> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            out.push((at, id));
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_standing_deadline_comes_first_and_stale_ones_go() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        t.arm(t0 + 3 * s, 3);
        t.arm(t0 + s, 1);
        t.arm(t0 + 2 * s, 2);
        assert_eq!(t.next(|_, _| true), Some(t0 + s));
        // 1 said Hello: its deadline no longer stands, and is dropped on the way.
        assert_eq!(t.next(|_, id| id != 1), Some(t0 + 2 * s));
        assert_eq!(t.len(), 2);
        assert_eq!(t.expired(t0 + 2 * s), vec![(t0 + 2 * s, 2)]);
        assert_eq!(t.expired(t0 + 2 * s), vec![]);
        assert_eq!(t.next(|_, _| false), None);
        assert_eq!(t.len(), 0);
    }
}
