//! Pending replies: who waits for a reply from whom, the requested-reply rule,
//! max_replies_per_connection, reply_timeout and NoReply (dbus-daemon's bus/connection.c).

use crate::bus::error::{DriverError, ErrorName};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Bus, DriverMessage, PeerId};

/// A method call that expects a reply: (caller, caller's serial).
pub(super) type ReplyKey = (PeerId, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PendingReply {
    /// Who must reply.
    pub replier: PeerId,
    /// When the bus gives up (reply_timeout), if it ever does.
    pub deadline: Option<Instant>,
}

impl Bus {
    /// Records that `caller` waits for a reply from `replier` to its call `serial`.
    pub(super) fn expect_reply(
        &mut self,
        caller: PeerId,
        replier: PeerId,
        serial: u32,
    ) -> Result<(), DriverError> {
        let key = (caller, serial);
        if self
            .pending_replies
            .get(&key)
            .is_some_and(|p| p.replier == replier)
        {
            return Err(DriverError::new(
                ErrorName::AccessDenied,
                "Message has the same reply serial as a currently-outstanding existing method call"
                    .into(),
            ));
        }
        let limit = self.settings.limits.max_replies_per_connection as usize;
        let waiting = self.peers.get(&caller).map_or(0, |p| p.pending_replies);
        if waiting >= limit {
            warn!(
                peer = self.unique_of(caller),
                limit, "The maximum number of pending replies has been reached"
            );
            return Err(DriverError::new(
                ErrorName::LimitsExceeded,
                "The maximum number of pending replies per connection has been reached".into(),
            ));
        }
        let deadline = self
            .settings
            .limits
            .reply_timeout
            .map(|ms| self.now + Duration::from_millis(ms));
        let previous = self
            .pending_replies
            .insert(key, PendingReply { replier, deadline });
        if let Some(d) = deadline {
            self.reply_deadlines.push_back((d, key));
        }
        if previous.is_none() {
            if let Some(p) = self.peers.get_mut(&caller) {
                p.pending_replies += 1;
            }
        }
        Ok(())
    }

    pub(super) fn forget_pending_reply(&mut self, key: ReplyKey) -> Option<PendingReply> {
        let pending = self.pending_replies.remove(&key)?;
        if let Some(p) = self.peers.get_mut(&key.0) {
            p.pending_replies = p.pending_replies.saturating_sub(1);
        }
        Some(pending)
    }

    /// When the next pending reply or service start times out, if any does.
    pub fn next_deadline(&self) -> Option<Instant> {
        let reply = self.reply_deadlines.front().map(|&(d, _)| d);
        match (reply, self.activation_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Gives up on replies whose time is up: the caller gets NoReply from the bus.
    pub fn expire(&mut self, now: Instant) {
        self.now = now;
        self.expire_activations(now);
        while let Some(&(deadline, key)) = self.reply_deadlines.front() {
            if deadline > now {
                break;
            }
            self.reply_deadlines.pop_front();
            let current = self.pending_replies.get(&key).copied();
            if current.is_some_and(|p| p.deadline == Some(deadline)) {
                self.forget_pending_reply(key);
                self.no_reply(
                    key,
                    "Message did not receive a reply (timeout by message bus)",
                );
            }
        }
    }

    pub(super) fn no_reply(&mut self, (caller, serial): ReplyKey, text: &str) {
        let m = DriverMessage::error(serial, ErrorName::NoReply.as_str(), text);
        self.send_from_driver(Some(caller), m);
    }
}
