//! Pending replies: who waits for a reply from whom, the requested-reply rule,
//! max_replies_per_connection, reply_timeout and NoReply (dbus-daemon's bus/connection.c).
//!
//! [`ReplyRegistry`] is the one record of them, indexed by caller and by replier so that a
//! connection leaving costs what it was involved in, not every pending call on the bus.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Bus, DriverMessage, IdMap, PeerId};
use crate::bus::error::{DriverError, ErrorName};

/// A method call that expects a reply: (caller, caller's serial).
pub(super) type ReplyKey = (PeerId, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingReply {
    /// Who must reply.
    replier: PeerId,
    /// When the bus gives up (reply_timeout), if it ever does.
    deadline: Option<Instant>,
}

/// Why a call that expects a reply is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The caller already waits for a reply to a call with this serial from this replier.
    SameSerial,
    /// The caller waits for max_replies_per_connection replies already.
    TooMany,
}

impl Refused {
    fn error(self) -> DriverError {
        match self {
            Refused::SameSerial => DriverError::new(
                ErrorName::AccessDenied,
                "Message has the same reply serial as a currently-outstanding existing method call"
                    .into(),
            ),
            Refused::TooMany => DriverError::new(
                ErrorName::LimitsExceeded,
                "The maximum number of pending replies per connection has been reached".into(),
            ),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct ReplyRegistry {
    pending: HashMap<ReplyKey, PendingReply>,
    /// Deadlines in the order they expire (one timeout for all, so insertion order);
    /// entries whose reply came (or was replaced) are skipped when reached.
    deadlines: VecDeque<(Instant, ReplyKey)>,
    /// Per caller, the serials of its calls that wait for a reply.
    by_caller: IdMap<PeerId, HashSet<u32>>,
    /// Per replier, the calls it owes a reply to.
    by_replier: IdMap<PeerId, HashSet<ReplyKey>>,
}

impl ReplyRegistry {
    /// Records that `caller` waits for a reply from `replier` to its call `serial`.
    pub fn expect(
        &mut self,
        (caller, serial): ReplyKey,
        replier: PeerId,
        deadline: Option<Instant>,
        limit: usize,
    ) -> Result<(), Refused> {
        let key = (caller, serial);
        let previous = self.pending.get(&key).copied();
        if previous.is_some_and(|p| p.replier == replier) {
            return Err(Refused::SameSerial);
        }
        if self.waiting(caller) >= limit {
            return Err(Refused::TooMany);
        }
        if let Some(p) = previous {
            // The same serial to another replier replaces the old expectation.
            self.unindex(key, p.replier);
        }
        self.pending.insert(key, PendingReply { replier, deadline });
        self.by_caller.entry(caller).or_default().insert(serial);
        self.by_replier.entry(replier).or_default().insert(key);
        if let Some(d) = deadline {
            self.deadlines.push_back((d, key));
        }
        Ok(())
    }

    /// How many replies `caller` waits for.
    pub fn waiting(&self, caller: PeerId) -> usize {
        self.by_caller.get(&caller).map_or(0, HashSet::len)
    }

    /// A reply from `replier` to `key`'s call: true (and forgotten) when it was expected
    /// from that replier, which makes it a requested reply.
    pub fn take_reply(&mut self, key: ReplyKey, replier: PeerId) -> bool {
        if self.pending.get(&key).map(|p| p.replier) != Some(replier) {
            return false;
        }
        self.pending.remove(&key);
        self.unindex(key, replier);
        true
    }

    fn unindex(&mut self, key: ReplyKey, replier: PeerId) {
        if let Some(s) = self.by_caller.get_mut(&key.0) {
            s.remove(&key.1);
            if s.is_empty() {
                self.by_caller.remove(&key.0);
            }
        }
        if let Some(s) = self.by_replier.get_mut(&replier) {
            s.remove(&key);
            if s.is_empty() {
                self.by_replier.remove(&replier);
            }
        }
    }

    /// When the next expectation times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(d, _)| d)
    }

    /// The next call whose reply is overdue at `now`, forgotten; None when none is.
    pub fn take_expired(&mut self, now: Instant) -> Option<ReplyKey> {
        while let Some(&(deadline, key)) = self.deadlines.front() {
            if deadline > now {
                return None;
            }
            self.deadlines.pop_front();
            if let Some(p) = self.pending.get(&key).copied() {
                if p.deadline == Some(deadline) {
                    self.pending.remove(&key);
                    self.unindex(key, p.replier);
                    return Some(key);
                }
            }
        }
        None
    }

    /// Forgets everything `peer` takes part in (it left, or became a monitor). Returns
    /// the calls of others that it owed a reply to, in order of caller and serial.
    pub fn forget_peer(&mut self, peer: PeerId) -> Vec<ReplyKey> {
        if let Some(serials) = self.by_caller.remove(&peer) {
            for serial in serials {
                if let Some(p) = self.pending.remove(&(peer, serial)) {
                    if let Some(s) = self.by_replier.get_mut(&p.replier) {
                        s.remove(&(peer, serial));
                        if s.is_empty() {
                            self.by_replier.remove(&p.replier);
                        }
                    }
                }
            }
        }
        let mut orphaned: Vec<ReplyKey> = self
            .by_replier
            .remove(&peer)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default();
        orphaned.sort_unstable();
        for &key in &orphaned {
            self.pending.remove(&key);
            if let Some(s) = self.by_caller.get_mut(&key.0) {
                s.remove(&key.1);
                if s.is_empty() {
                    self.by_caller.remove(&key.0);
                }
            }
        }
        orphaned
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
    }
}

impl Bus {
    /// Records that `caller` waits for a reply from `replier` to its call `serial`.
    pub(super) fn expect_reply(
        &mut self,
        caller: PeerId,
        replier: PeerId,
        serial: u32,
    ) -> Result<(), DriverError> {
        let limit = self.settings.limits.max_replies_per_connection as usize;
        let deadline = self
            .settings
            .limits
            .reply_timeout
            .map(|ms| self.now + Duration::from_millis(ms));
        self.replies
            .expect((caller, serial), replier, deadline, limit)
            .map_err(|refused| {
                if refused == Refused::TooMany {
                    warn!(
                        peer = self.unique_of(caller),
                        limit, "The maximum number of pending replies has been reached"
                    );
                }
                refused.error()
            })
    }

    /// When the next pending reply or service start times out, if any does.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.replies.next_deadline(),
            self.activation_deadline(),
            self.fast_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Gives up on replies whose time is up: the caller gets NoReply from the bus.
    pub fn expire(&mut self, now: Instant) {
        self.now = now;
        self.expire_activations(now);
        self.fast_expire(now);
        while let Some(key) = self.replies.take_expired(now) {
            self.no_reply(
                key,
                "Message did not receive a reply (timeout by message bus)",
            );
        }
    }

    pub(super) fn no_reply(&mut self, (caller, serial): ReplyKey, text: &str) {
        let m = DriverMessage::error(serial, ErrorName::NoReply.as_str(), text);
        self.send_from_driver(Some(caller), m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = 1;
    const B: PeerId = 2;
    const C: PeerId = 3;

    #[test]
    fn a_reply_is_requested_only_from_the_expected_replier_and_only_once() {
        let mut r = ReplyRegistry::default();
        r.expect((A, 7), B, None, 10).unwrap();
        assert_eq!(r.expect((A, 7), B, None, 10), Err(Refused::SameSerial));
        assert!(!r.take_reply((A, 7), C));
        assert!(r.take_reply((A, 7), B));
        assert!(!r.take_reply((A, 7), B));
        assert_eq!((r.waiting(A), r.len()), (0, 0));
    }

    #[test]
    fn the_limit_counts_each_callers_own_calls() {
        let mut r = ReplyRegistry::default();
        r.expect((A, 1), B, None, 2).unwrap();
        r.expect((A, 2), C, None, 2).unwrap();
        assert_eq!(r.expect((A, 3), B, None, 2), Err(Refused::TooMany));
        r.expect((B, 1), A, None, 2).unwrap();
        // The same serial to another replier replaces the old one without counting twice.
        assert_eq!(r.expect((A, 2), B, None, 3), Ok(()));
        assert_eq!(r.waiting(A), 2);
        assert!(!r.take_reply((A, 2), C));
        assert!(r.take_reply((A, 2), B));
    }

    #[test]
    fn a_leaving_peer_orphans_what_it_owed_and_drops_what_it_waited_for() {
        let mut r = ReplyRegistry::default();
        r.expect((C, 9), B, None, 10).unwrap();
        r.expect((A, 5), B, None, 10).unwrap();
        r.expect((A, 4), B, None, 10).unwrap();
        r.expect((B, 1), A, None, 10).unwrap();
        r.expect((B, 2), B, None, 10).unwrap();
        assert_eq!(r.forget_peer(B), vec![(A, 4), (A, 5), (C, 9)]);
        assert_eq!((r.waiting(A), r.waiting(B), r.waiting(C)), (0, 0, 0));
        assert_eq!(r.len(), 0);
        assert!(r.forget_peer(A).is_empty());
    }

    #[test]
    fn replies_expire_in_order_and_answered_ones_are_skipped() {
        let mut r = ReplyRegistry::default();
        let t = Instant::now();
        let s = Duration::from_secs(1);
        r.expect((A, 1), B, Some(t + s), 10).unwrap();
        r.expect((A, 2), B, Some(t + 2 * s), 10).unwrap();
        r.expect((A, 3), B, Some(t + 3 * s), 10).unwrap();
        assert!(r.take_reply((A, 1), B));
        assert_eq!(r.next_deadline(), Some(t + s));
        assert_eq!(r.take_expired(t), None);
        assert_eq!(r.take_expired(t + 2 * s), Some((A, 2)));
        assert_eq!(r.take_expired(t + 2 * s), None);
        assert_eq!(r.waiting(A), 1);
        assert_eq!(r.take_expired(t + 5 * s), Some((A, 3)));
        assert_eq!(r.len(), 0);
    }
}
