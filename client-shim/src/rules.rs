//! The connection's match rules, as the bus accepted them: the exact check of what the
//! kernel filter let in (DESIGN 5.4).
//!
//! zbus asks the bus for rules with AddMatch and RemoveMatch calls; the shim notes each call
//! when it goes out and applies it only when the bus answers it with a METHOD_RETURN (an
//! ERROR, say `MatchRuleInvalid` or `LimitsExceeded`, leaves the rules as they were), so
//! the shim never wants what the bus refused. A call sent with NO_REPLY_EXPECTED gets no
//! answer to wait for: the bus applies it when it is valid, and so does the shim at once.

use std::collections::HashMap;

use busd_match::{MatchRule, MessageInfo};
use busd_wire::message::{Message, ERROR, METHOD_CALL, METHOD_RETURN};

/// The bus's own name: only its answers change the rules.
const BUS: &str = "org.freedesktop.DBus";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Add(MatchRule),
    Remove(MatchRule),
}

#[derive(Debug, Default)]
pub struct Rules {
    /// What the bus accepted, in order; a rule added twice is held twice, as the bus holds
    /// it (one RemoveMatch removes one).
    accepted: Vec<MatchRule>,
    /// AddMatch and RemoveMatch calls waiting for the bus's answer, by serial. Each leaves
    /// with its answer; the bus answers every call that expects an answer (or the
    /// connection ends), so this holds at most the calls in flight.
    asked: HashMap<u32, Change>,
}

impl Rules {
    /// An outgoing message: an AddMatch or RemoveMatch call to the bus is noted, to be
    /// applied when the bus answers it.
    pub fn asked(&mut self, msg: &Message) {
        if msg.msg_type() != METHOD_CALL
            || msg.destination() != Some(BUS)
            || msg.interface() != Some(BUS)
        {
            return;
        }
        let add = match msg.member() {
            Some("AddMatch") => true,
            Some("RemoveMatch") => false,
            _ => return,
        };
        // A rule the shim cannot read, the bus refuses (MatchRuleInvalid).
        let Some(rule) = msg
            .body_reader()
            .string()
            .ok()
            .and_then(|text| MatchRule::parse(text).ok())
        else {
            return;
        };
        let change = if add {
            Change::Add(rule)
        } else {
            Change::Remove(rule)
        };
        if msg.no_reply_expected() {
            self.apply(change);
        } else {
            self.asked.insert(msg.serial(), change);
        }
    }

    /// A call noted by [`Rules::asked`] could not be sent: no answer will come.
    pub fn not_sent(&mut self, serial: u32) {
        self.asked.remove(&serial);
    }

    /// A message from the stream (where the bus's answers come): if it is the bus's answer
    /// to a noted call, a METHOD_RETURN applies the call and an ERROR drops it. Returns
    /// whether it answered a noted call.
    pub fn answered(&mut self, msg_type: u8, sender: Option<&str>, reply_serial: u32) -> bool {
        if sender != Some(BUS) || !matches!(msg_type, METHOD_RETURN | ERROR) {
            return false;
        }
        let Some(change) = self.asked.remove(&reply_serial) else {
            return false;
        };
        if msg_type == METHOD_RETURN {
            self.apply(change);
        }
        true
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Add(rule) => self.accepted.push(rule),
            Change::Remove(rule) => {
                if let Some(i) = self.accepted.iter().position(|r| r == &rule) {
                    self.accepted.remove(i);
                }
            }
        }
    }

    /// Whether an accepted rule matches the message.
    pub fn matches(&self, msg: &impl MessageInfo) -> bool {
        self.accepted.iter().any(|r| r.matches(msg))
    }

    /// Whether an AddMatch the bus has not answered yet would match the message: the bus
    /// may already have accepted it (and a sender reacted to that), so the message waits
    /// for the answer rather than being dropped.
    pub fn may_match(&self, msg: &impl MessageInfo) -> bool {
        self.asked.values().any(|c| match c {
            Change::Add(r) => r.matches(msg),
            Change::Remove(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busd_match::Arg;
    use busd_wire::marshal::{Endian, Writer};
    use busd_wire::message::{encode, HeaderFields, FLAG_NO_REPLY_EXPECTED, SIGNAL};

    fn call(serial: u32, member: &str, rule: &str, flags: u8) -> Message {
        let mut body = Writer::new(Endian::Little);
        body.string(rule);
        let bytes = encode(
            Endian::Little,
            METHOD_CALL,
            flags,
            serial,
            &HeaderFields {
                path: Some("/org/freedesktop/DBus"),
                interface: Some(BUS),
                member: Some(member),
                destination: Some(BUS),
                signature: Some("s"),
                ..Default::default()
            },
            &body.into_vec(),
        );
        Message::parse(bytes, Vec::new()).unwrap()
    }

    /// A signal `member` from `:1.5`, as a rule sees it.
    struct Signal(&'static str);

    impl MessageInfo for Signal {
        fn msg_type(&self) -> u8 {
            SIGNAL
        }
        fn interface(&self) -> Option<&str> {
            Some("org.example.I")
        }
        fn member(&self) -> Option<&str> {
            Some(self.0)
        }
        fn path(&self) -> Option<&str> {
            Some("/")
        }
        fn destination(&self) -> Option<&str> {
            None
        }
        fn sender_is(&self, name: &str) -> bool {
            name == ":1.5"
        }
        fn destination_is(&self, _: &str) -> bool {
            false
        }
        fn arg(&self, _: u8) -> Arg<'_> {
            Arg::Missing
        }
    }

    #[test]
    fn a_rule_counts_once_the_bus_returns_and_never_when_it_refuses() {
        let mut r = Rules::default();
        r.asked(&call(7, "AddMatch", "member='Ping'", 0));
        assert!(!r.matches(&Signal("Ping")), "not before the bus answered");
        assert!(r.may_match(&Signal("Ping")));
        // Another's answer, or a reply to another call, changes nothing.
        assert!(!r.answered(METHOD_RETURN, Some(":1.9"), 7));
        assert!(!r.answered(METHOD_RETURN, Some(BUS), 8));
        assert!(r.answered(METHOD_RETURN, Some(BUS), 7));
        assert!(r.matches(&Signal("Ping")));
        assert!(!r.may_match(&Signal("Ping")), "no longer waiting");

        r.asked(&call(8, "AddMatch", "member='Pong'", 0));
        assert!(r.answered(ERROR, Some(BUS), 8));
        assert!(!r.matches(&Signal("Pong")), "the bus refused it");
        assert!(!r.may_match(&Signal("Pong")));
        assert!(!r.answered(METHOD_RETURN, Some(BUS), 8), "answered once");
    }

    #[test]
    fn a_rule_goes_only_when_the_bus_removed_it_and_one_copy_at_a_time() {
        let mut r = Rules::default();
        for serial in [1, 2] {
            r.asked(&call(serial, "AddMatch", "member='Ping'", 0));
            r.answered(METHOD_RETURN, Some(BUS), serial);
        }
        r.asked(&call(3, "RemoveMatch", "member='Ping'", 0));
        assert!(r.answered(ERROR, Some(BUS), 3));
        r.asked(&call(4, "RemoveMatch", "member='Ping'", 0));
        assert!(
            r.matches(&Signal("Ping")),
            "still there until the bus answers"
        );
        r.answered(METHOD_RETURN, Some(BUS), 4);
        assert!(r.matches(&Signal("Ping")), "added twice, removed once");
        r.asked(&call(5, "RemoveMatch", "member='Ping'", 0));
        r.answered(METHOD_RETURN, Some(BUS), 5);
        assert!(!r.matches(&Signal("Ping")));
    }

    #[test]
    fn calls_without_an_answer_apply_at_once_and_others_are_ignored() {
        let mut r = Rules::default();
        r.asked(&call(
            1,
            "AddMatch",
            "member='Ping'",
            FLAG_NO_REPLY_EXPECTED,
        ));
        assert!(r.matches(&Signal("Ping")));
        assert!(r.asked.is_empty());
        // An unreadable rule, another method, a call that was never sent.
        r.asked(&call(2, "AddMatch", "member=='x", 0));
        r.asked(&call(3, "ListNames", "member='Pong'", 0));
        assert!(r.asked.is_empty());
        r.asked(&call(4, "AddMatch", "member='Pong'", 0));
        r.not_sent(4);
        assert!(!r.may_match(&Signal("Pong")));
        assert!(!r.answered(METHOD_RETURN, Some(BUS), 4));
    }
}
