//! Causal order between members (DESIGN 5.5; `docs/fastpath-protocol.md`, "The progress
//! memory"): each send to other members is numbered in the member's progress slot before
//! its first datagram and counted complete once none of its frames waits in a backlog; a
//! member that took a direct message from M waits, before it sends anything, until M's
//! sends up to then are complete.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use busd_match::progress;
use busd_match::shm::Mapping;
use busd_match::table::Table;
use tracing::warn;

use crate::figures::Counters;
use crate::member::{Member, State};

/// How long a send waits, at most, for an earlier send it may depend on to reach all its
/// receivers. Only a receiver that does not read for that long makes it expire.
pub const CAUSAL_WAIT: Duration = Duration::from_millis(200);

/// How long, after a wait for a member expired, sends do not wait for it again. An honest
/// member's sends expire a wait only while one of its receivers does not read; a hostile
/// one can move its own counters (the memory is writable by members) to make every wait
/// expire, which would cost each send [`CAUSAL_WAIT`] without this.
pub const STALL_HOLD: Duration = Duration::from_secs(5);

/// The progress memory (mapped writable) and this member's slot in it. (A member without a
/// slot publishes nothing: its receivers do not wait for it.)
pub struct Progress {
    pub map: Mapping,
    pub slot: u32,
}

impl Progress {
    pub fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }
}

/// This member's sends: how many started, the last that returned, and those with frames
/// still in backlogs. Together they make the *completed* count it publishes.
#[derive(Debug, Default)]
pub struct Sends {
    /// Send number -> its frames waiting in backlogs.
    waiting: BTreeMap<u64, usize>,
    started: u64,
    returned: u64,
}

impl Sends {
    /// Numbers a new send.
    pub fn begin(&mut self) -> u64 {
        self.started += 1;
        self.started
    }

    /// Send `n` returned: what it did not leave in backlogs reached its receivers.
    pub fn end(&mut self, n: u64) {
        self.returned = n;
    }

    /// A frame of send `n` waits in a backlog.
    pub fn backlogged(&mut self, n: u64) {
        *self.waiting.entry(n).or_default() += 1;
    }

    /// A frame of send `n` left its backlog (sent, or dropped with its receiver).
    pub fn left(&mut self, n: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.waiting.entry(n) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// The highest send below which every send has reached all its receivers.
    pub fn completed(&self) -> u64 {
        match self.waiting.keys().next() {
            Some(&first) => (first - 1).min(self.returned),
            None => self.returned,
        }
    }
}

/// The members this one heard from directly, and how far their sends had started then.
#[derive(Debug, Default)]
pub struct Causal {
    /// Member -> (its progress slot, the send number to wait for).
    needs: HashMap<u32, (u32, u64)>,
    /// Members whose completion a send gave up waiting for, where it stood then and when:
    /// not waited for again until it moves and [`STALL_HOLD`] has passed.
    stalled: HashMap<u32, Stalled>,
}

/// Where a member stood when a wait for it expired, and when.
#[derive(Debug, Clone, Copy)]
struct Stalled {
    completed: u64,
    at: Instant,
}

impl Stalled {
    /// Whether a send waits for the member now, its completed count being `completed`.
    fn waits(self, completed: u64, now: Instant) -> bool {
        completed != self.completed && now >= self.at + STALL_HOLD
    }
}

impl Causal {
    /// A direct message from `sender` (progress slot `slot`, whose sends had started up to
    /// `started` and not all completed) goes to the application.
    pub fn heard(&mut self, sender: u32, slot: u32, started: u64) {
        let need = self.needs.entry(sender).or_insert((slot, 0));
        *need = (slot, need.1.max(started));
    }
}

/// What one send waits for: per member, its slot, the send number, and where and when a
/// wait for it last expired.
type Needs = Vec<(u32, u32, u64, Option<Stalled>)>;

impl Member {
    /// Numbers a send and publishes that it started, before its first datagram leaves.
    pub(crate) fn begin_send(&self) -> u64 {
        let mut s = self.state();
        let n = s.sends.begin();
        progress::start(self.progress.words(), self.progress.slot, n);
        n
    }

    /// Send `n` returned.
    pub(crate) fn end_send(&self, n: u64) {
        let mut s = self.state();
        s.sends.end(n);
        self.publish_completed(&s);
    }

    /// Publishes the completed count (under the state's lock, so that it never goes back).
    pub(crate) fn publish_completed(&self, s: &State) {
        progress::complete(
            self.progress.words(),
            self.progress.slot,
            s.sends.completed(),
        );
    }

    /// A direct message from `sender` is about to be handed to zbus: what this member
    /// sends from now on waits until `sender`'s sends so far have reached every receiver.
    pub(crate) fn note_progress(&self, s: &mut State, sender: u32, t: &Table) {
        let Some(m) = t.member(sender) else {
            return;
        };
        if let Some(c) = progress::read(self.progress.words(), m.slot, sender) {
            if c.completed < c.started {
                s.causal.heard(sender, m.slot, c.started);
            }
        }
    }

    /// Waits until every send this member received something from has reached all its
    /// receivers (at most [`CAUSAL_WAIT`], and not again for a member that has not moved
    /// since a wait for it expired, or whose wait expired less than [`STALL_HOLD`] ago).
    pub(crate) async fn wait_causal(&self) {
        let needs: Needs = {
            let mut s = self.state();
            if s.causal.needs.is_empty() {
                return;
            }
            let State { causal, .. } = &mut *s;
            causal
                .needs
                .drain()
                .map(|(m, (slot, until))| (m, slot, until, causal.stalled.get(&m).copied()))
                .collect()
        };
        let words = self.progress.words();
        let now = Instant::now();
        let deadline = now + CAUSAL_WAIT;
        let mut waited = false;
        for (member, slot, until, stalled) in needs {
            let mut spins = 0;
            while let Some(c) = progress::read(words, slot, member) {
                if c.completed >= until || stalled.is_some_and(|s| !s.waits(c.completed, now)) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    let stalled = Stalled {
                        completed: c.completed,
                        at: now,
                    };
                    self.state().causal.stalled.insert(member, stalled);
                    if self
                        .counters
                        .causal_timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        == 0
                    {
                        warn!(
                            member,
                            "a member's send has not reached all its receivers in {CAUSAL_WAIT:?}: \
                             sending anyway (counted in `causal_timeouts`)"
                        );
                    }
                    break;
                }
                waited = true;
                // Usually a fan-out in progress on another CPU: a few yields; a backlog
                // waiting for a slow receiver: sleep.
                if spins < 64 {
                    spins += 1;
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
        if waited {
            Counters::add(&self.counters.causal_waits, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send is complete once it returned and none of its frames waits in a backlog; the
    /// published count is the highest below which every send is complete.
    #[test]
    fn completion_waits_for_backlogged_frames() {
        let mut s = Sends::default();
        let first = s.begin();
        assert_eq!(s.completed(), 0);
        // Two of its frames wait for full receivers.
        s.backlogged(first);
        s.backlogged(first);
        s.end(first);
        assert_eq!(s.completed(), 0);
        let second = s.begin();
        s.end(second);
        assert_eq!(s.completed(), 0, "the first is not complete yet");
        s.left(first);
        assert_eq!(s.completed(), 0);
        s.left(first);
        assert_eq!(s.completed(), 2);
        let third = s.begin();
        assert_eq!(s.completed(), 2);
        s.end(third);
        assert_eq!(s.completed(), 3);
        // A frame of a later send waiting does not hold back the earlier ones.
        let fourth = s.begin();
        s.backlogged(fourth);
        s.end(fourth);
        assert_eq!(s.completed(), 3);
    }

    /// A member whose wait expired is not waited for again until it moves, and not for
    /// [`STALL_HOLD`] whatever it does with its own counters.
    #[test]
    fn a_stalled_member_is_not_waited_for_again_soon() {
        let at = Instant::now();
        let s = Stalled { completed: 7, at };
        assert!(!s.waits(7, at + 2 * STALL_HOLD), "it has not moved");
        assert!(!s.waits(8, at), "it moved, but just now");
        assert!(!s.waits(8, at + STALL_HOLD / 2));
        assert!(s.waits(8, at + STALL_HOLD));
    }

    #[test]
    fn a_member_heard_from_is_waited_for_up_to_its_latest_start() {
        let mut c = Causal::default();
        c.heard(5, 1, 10);
        c.heard(5, 1, 8);
        c.heard(6, 2, 3);
        let mut needs: Vec<_> = c.needs.drain().collect();
        needs.sort_unstable();
        assert_eq!(needs, [(5, (1, 10)), (6, (2, 3))]);
    }
}
