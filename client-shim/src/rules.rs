//! The connection's match rules: the exact check of what the kernel filter let in
//! (DESIGN 5.4), kept from the AddMatch and RemoveMatch calls zbus sends.

use busd_match::{MatchRule, MessageInfo};
use busd_wire::message::{Message, METHOD_CALL};

/// The bus's own name.
const BUS: &str = "org.freedesktop.DBus";

#[derive(Debug, Default)]
pub struct Rules {
    /// In order; a rule added twice is held twice, as the bus holds it (one RemoveMatch
    /// removes one).
    accepted: Vec<MatchRule>,
}

impl Rules {
    /// An outgoing message: an AddMatch or RemoveMatch call to the bus changes the rules.
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
        if add {
            self.accepted.push(rule);
        } else if let Some(i) = self.accepted.iter().position(|r| r == &rule) {
            self.accepted.remove(i);
        }
    }

    /// Whether a rule matches the message.
    pub fn matches(&self, msg: &impl MessageInfo) -> bool {
        self.accepted.iter().any(|r| r.matches(msg))
    }
}
