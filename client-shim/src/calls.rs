//! Method calls the shim keeps track of: direct calls waiting for their reply (the caller
//! gets dbus-daemon's `NoReply` when the callee leaves first), calls that came through the
//! daemon (their replies go back through it), and the errors the shim makes for zbus where
//! the daemon would have answered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use busd_match::table::Table;
use busd_wire::errors::ErrorName;
use busd_wire::marshal::{Endian, Writer};
use busd_wire::message::{encode, HeaderFields, ERROR, FLAG_NO_REPLY_EXPECTED};

/// How often the callees of direct calls still waiting for replies are checked.
pub const CALLEE_CHECK: Duration = Duration::from_millis(50);

/// Calls that came through the daemon, remembered at most: past this, replies go directly
/// (still delivered; only the daemon's reply accounting suffers).
const VIA_DAEMON_MAX: usize = 65536;

#[derive(Debug, Default)]
pub struct Calls {
    /// Direct calls waiting for a reply: serial -> callee.
    waiting: HashMap<u32, u32>,
    /// The table's sequence when `waiting` was last checked against it (None: calls were
    /// added since).
    checked: Option<u64>,
    /// Calls that came through the daemon, (sender, serial): their replies go back through
    /// it too, so that its reply bookkeeping (requested replies, NoReply) stays exact.
    via_daemon: HashSet<(String, u32)>,
    /// Messages made for zbus, in order.
    made: VecDeque<Vec<u8>>,
}

impl Calls {
    /// A direct call to member `callee` now waits for its reply.
    pub fn waits(&mut self, serial: u32, callee: u32) {
        self.waiting.insert(serial, callee);
        self.checked = None;
    }

    /// A call no longer waits (it went another way, or was refused).
    pub fn forget(&mut self, serial: u32) {
        self.waiting.remove(&serial);
    }

    /// A direct frame from member `sender` answers `reply_serial`: the wait ends if it was
    /// a call to that member (anyone else's reply does not make its callee's departure go
    /// unnoticed).
    pub fn answered_by(&mut self, reply_serial: u32, sender: u32) {
        if self.waiting.get(&reply_serial) == Some(&sender) {
            self.waiting.remove(&reply_serial);
        }
    }

    /// Whether direct calls wait for replies (then the read half watches their callees).
    pub fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether the waiting calls need a look at the table at sequence `seq`: only when the
    /// table changed or calls were added since the last look (it runs every
    /// [`CALLEE_CHECK`] while calls wait, on every connection).
    pub fn needs_check(&self, seq: u64) -> bool {
        !self.waiting.is_empty() && self.checked != Some(seq)
    }

    /// The direct calls whose callee is no longer in `table` (at sequence `seq`) end with
    /// the error dbus-daemon sends a caller whose callee disconnected without replying.
    /// Returns whether any did.
    pub fn orphans(&mut self, seq: u64, table: &Table, me: &str) -> bool {
        self.checked = Some(seq);
        let gone: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, &callee)| table.member(callee).is_none_or(|m| m.departed))
            .map(|(&serial, _)| serial)
            .collect();
        for serial in &gone {
            self.waiting.remove(serial);
            self.made.push_back(bus_error(
                *serial,
                me,
                ErrorName::NoReply,
                "Message recipient disconnected from message bus without replying",
            ));
        }
        !gone.is_empty()
    }

    /// A call whose callee's backlog is full gets dbus-daemon's answer for a destination
    /// with a full queue.
    pub fn refuse(&mut self, serial: u32, me: &str) {
        self.waiting.remove(&serial);
        self.made.push_back(bus_error(
            serial,
            me,
            ErrorName::LimitsExceeded,
            "Rejected: destination has a full message queue",
        ));
    }

    /// The next message made for zbus.
    pub fn take_made(&mut self) -> Option<Vec<u8>> {
        self.made.pop_front()
    }

    /// A call from `sender` came through the daemon.
    pub fn came_via_daemon(&mut self, sender: &str, serial: u32) {
        if self.via_daemon.len() < VIA_DAEMON_MAX {
            self.via_daemon.insert((sender.to_string(), serial));
        }
    }

    /// Whether a reply to `destination`'s call `reply_serial` goes back through the daemon
    /// (it came that way); forgets the call.
    pub fn reply_via_daemon(&mut self, destination: &str, reply_serial: u32) -> bool {
        !self.via_daemon.is_empty()
            && self
                .via_daemon
                .remove(&(destination.to_string(), reply_serial))
    }
}

/// An error from the bus to `destination`, answering its call `reply_serial`.
fn bus_error(reply_serial: u32, destination: &str, name: ErrorName, text: &str) -> Vec<u8> {
    let mut body = Writer::new(Endian::Little);
    body.string(text);
    let f = HeaderFields {
        reply_serial: Some(reply_serial),
        error_name: Some(name.as_str()),
        destination: Some(destination),
        sender: Some("org.freedesktop.DBus"),
        signature: Some("s"),
        ..Default::default()
    };
    encode(
        Endian::Little,
        ERROR,
        FLAG_NO_REPLY_EXPECTED,
        u32::MAX,
        &f,
        &body.into_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::table;
    use busd_wire::message::Message;

    fn error(bytes: Vec<u8>) -> (String, u32, String) {
        let m = Message::parse(bytes, Vec::new()).unwrap();
        (
            m.error_name().unwrap().to_string(),
            m.reply_serial().unwrap(),
            m.destination().unwrap().to_string(),
        )
    }

    #[test]
    fn a_call_whose_callee_left_ends_with_no_reply() {
        let mut c = Calls::default();
        let t = table();
        c.waits(1, 2);
        c.waits(2, 9);
        c.waits(3, 4);
        assert!(c.needs_check(6));
        assert!(c.orphans(6, &t, ":1.2"));
        assert_eq!(
            error(c.take_made().unwrap()),
            (
                "org.freedesktop.DBus.Error.NoReply".into(),
                2,
                ":1.2".into()
            )
        );
        assert!(c.take_made().is_none());
        // Not again until the table moves or calls are added.
        assert!(!c.needs_check(6));
        assert!(c.needs_check(8));
        // Only the callee's answer ends the wait: another member's reply with the serial
        // leaves the call watched.
        c.answered_by(1, 4);
        c.answered_by(3, 2);
        assert!(c.any_waiting());
        c.answered_by(1, 2);
        c.answered_by(3, 4);
        assert!(!c.any_waiting() && !c.needs_check(10));
    }

    #[test]
    fn a_call_refused_at_a_full_backlog_gets_limits_exceeded() {
        let mut c = Calls::default();
        c.waits(5, 2);
        c.refuse(5, ":1.2");
        assert!(!c.any_waiting());
        assert_eq!(
            error(c.take_made().unwrap()).0,
            "org.freedesktop.DBus.Error.LimitsExceeded"
        );
    }

    #[test]
    fn replies_to_calls_that_came_through_the_daemon_go_back_once() {
        let mut c = Calls::default();
        c.came_via_daemon(":1.5", 10);
        assert!(!c.reply_via_daemon(":1.5", 11));
        assert!(!c.reply_via_daemon(":1.6", 10));
        assert!(c.reply_via_daemon(":1.5", 10));
        assert!(!c.reply_via_daemon(":1.5", 10));
    }
}
