//! The security check every delivery passes (dbus-daemon's
//! `bus_context_check_security_policy`): the sender's send rules, the recipient's receive
//! rules, then the recipient's queue limits.

use busd_policy::eval::has_word_prefix;
use busd_policy::{MessageFacts, Names, Peer as PolicyPeer};
use tracing::warn;

use super::error::{DriverError, ErrorName};
use super::{Bus, Peer, PeerId, DBUS_NAME};
use busd_wire::message::{self, Message};

/// The names a connection holds, as the policy sees them.
struct PeerNames<'a> {
    unique: Option<&'a str>,
    /// Well-known names it owns or is queued for (the name registry's record).
    names: &'a [String],
}

impl<'a> PeerNames<'a> {
    fn of(bus: &'a Bus, id: PeerId, peer: &'a Peer) -> Self {
        PeerNames {
            unique: peer.unique.as_deref(),
            names: bus.names.held_by(id),
        }
    }
}

impl Names for PeerNames<'_> {
    fn in_queue(&self, name: &str) -> bool {
        self.unique == Some(name) || self.names.iter().any(|n| n == name)
    }

    fn in_queue_below(&self, prefix: &str) -> bool {
        self.names.iter().any(|n| has_word_prefix(n, prefix))
    }

    fn for_each_name(&self, f: &mut dyn FnMut(&str)) {
        if let Some(u) = self.unique {
            f(u);
        }
        for n in self.names {
            f(n);
        }
    }
}

pub(super) fn facts(msg: &Message) -> MessageFacts<'_> {
    MessageFacts {
        msg_type: msg.msg_type(),
        path: msg.path(),
        interface: msg.interface(),
        member: msg.member(),
        error_name: msg.error_name(),
        destination: msg.destination(),
        sender: msg.sender(),
        is_reply: msg.reply_serial().is_some(),
        unix_fds: msg.unix_fds(),
    }
}

fn type_name(t: u8) -> &'static str {
    match t {
        message::METHOD_CALL => "method_call",
        message::METHOD_RETURN => "method_return",
        message::ERROR => "error",
        message::SIGNAL => "signal",
        _ => "invalid",
    }
}

impl Bus {
    /// May `msg` from `sender` (None: the bus) go to `proposed` (None: the bus)?
    /// `addressed` is the connection the message is addressed to; `requested_reply` says
    /// whether it answers a call that `proposed` is waiting for.
    pub(super) fn check_security(
        &self,
        msg: &Message,
        sender: Option<PeerId>,
        addressed: Option<PeerId>,
        proposed: Option<PeerId>,
        requested_reply: bool,
    ) -> Result<(), DriverError> {
        let sender_peer = sender.and_then(|s| self.peers.get(&s));
        let proposed_peer = proposed.and_then(|p| self.peers.get(&p));
        let m = facts(msg);
        let complain = |name, complaint: &str, matched: u32| {
            let text = self.complaint(
                msg,
                complaint,
                matched,
                sender_peer,
                proposed_peer,
                requested_reply,
            );
            if addressed == proposed {
                warn!("{text}");
            }
            DriverError::new(name, text)
        };
        if let Some(sp) = sender_peer {
            let names = proposed
                .zip(proposed_peer)
                .map(|(id, p)| PeerNames::of(self, id, p));
            let receiver = match &names {
                Some(n) => PolicyPeer::Connection(n),
                None => PolicyPeer::Bus,
            };
            let d = sp.policy.may_send(&m, requested_reply, receiver);
            if !d.allowed {
                return Err(complain(
                    ErrorName::AccessDenied,
                    "Rejected send message",
                    d.matched_rules,
                ));
            }
            if d.log {
                warn!(
                    "{}",
                    self.complaint(
                        msg,
                        "Would reject message",
                        d.matched_rules,
                        sender_peer,
                        proposed_peer,
                        requested_reply
                    )
                );
            }
        }
        if let Some(rp) = proposed_peer {
            // A connection that has not said Hello only ever hears from the bus, and any
            // such message is allowed.
            if rp.unique.is_some() || sender.is_some() {
                let eavesdropping = addressed != proposed && msg.destination().is_some();
                let names = sender
                    .zip(sender_peer)
                    .map(|(id, s)| PeerNames::of(self, id, s));
                let from = match &names {
                    Some(n) => PolicyPeer::Connection(n),
                    None => PolicyPeer::Bus,
                };
                let d = rp
                    .policy
                    .may_receive(&m, requested_reply, eavesdropping, from);
                if !d.allowed {
                    return Err(complain(
                        ErrorName::AccessDenied,
                        "Rejected receive message",
                        d.matched_rules,
                    ));
                }
            }
            let limits = &self.settings.limits;
            if rp
                .outgoing
                .over(limits.max_outgoing_bytes, limits.max_outgoing_unix_fds)
            {
                return Err(DriverError::new(
                    ErrorName::LimitsExceeded,
                    self.complaint(
                        msg,
                        "Rejected: destination has a full message queue",
                        0,
                        sender_peer,
                        proposed_peer,
                        requested_reply,
                    ),
                ));
            }
        }
        Ok(())
    }

    /// dbus-daemon's description of a refused message (bus.c, complain_about_message).
    fn complaint(
        &self,
        msg: &Message,
        complaint: &str,
        matched: u32,
        sender: Option<&Peer>,
        proposed: Option<&Peer>,
        requested_reply: bool,
    ) -> String {
        let (sender_name, sender_info) = match sender {
            Some(p) => (
                p.unique.as_deref().unwrap_or("(inactive)"),
                p.creds.loginfo(),
            ),
            None => ("(unset)", "(bus)".to_string()),
        };
        let dest_info = proposed.map_or_else(|| "bus".to_string(), |p| p.creds.loginfo());
        format!(
            "{complaint}, {matched} matched rules; type=\"{}\", sender=\"{sender_name}\" ({sender_info}) \
             interface=\"{}\" member=\"{}\" error name=\"{}\" requested_reply=\"{}\" \
             destination=\"{}\" ({dest_info})",
            type_name(msg.msg_type()),
            msg.interface().unwrap_or("(unset)"),
            msg.member().unwrap_or("(unset)"),
            msg.error_name().unwrap_or("(unset)"),
            u8::from(requested_reply),
            msg.destination().unwrap_or(DBUS_NAME),
        )
    }
}
