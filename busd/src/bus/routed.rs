//! A message as the match rules see it: header fields, the names of its sender and
//! recipient, and its arguments, decoded lazily and once.

use std::cell::OnceCell;

use busd_match::{Arg, MessageInfo};

use super::{Bus, PeerId, DBUS_NAME};
use busd_wire::message::Message;

/// A message being routed, seen by the matcher.
pub(super) struct Routed<'a> {
    bus: &'a Bus,
    msg: &'a Message,
    /// None: the bus driver.
    sender: Option<PeerId>,
    /// The connection the message is addressed to, if any.
    recipient: Option<PeerId>,
    args: OnceCell<Vec<Arg<'a>>>,
}

impl<'a> Routed<'a> {
    pub(super) fn new(
        bus: &'a Bus,
        msg: &'a Message,
        sender: Option<PeerId>,
        recipient: Option<PeerId>,
    ) -> Self {
        Routed {
            bus,
            msg,
            sender,
            recipient,
            args: OnceCell::new(),
        }
    }

    fn names_of(&self, peer: Option<PeerId>, name: &str) -> bool {
        match peer {
            None => name == DBUS_NAME,
            Some(p) => self.bus.is_owned_by(name, p),
        }
    }
}

impl MessageInfo for Routed<'_> {
    fn msg_type(&self) -> u8 {
        self.msg.msg_type()
    }
    fn interface(&self) -> Option<&str> {
        self.msg.interface()
    }
    fn member(&self) -> Option<&str> {
        self.msg.member()
    }
    fn path(&self) -> Option<&str> {
        self.msg.path()
    }
    fn destination(&self) -> Option<&str> {
        self.msg.destination()
    }
    fn sender_is(&self, name: &str) -> bool {
        self.names_of(self.sender, name)
    }
    fn destination_is(&self, name: &str) -> bool {
        match self.recipient {
            Some(r) => self.bus.is_owned_by(name, r),
            None => self.msg.destination() == Some(name),
        }
    }
    fn arg(&self, index: u8) -> Arg<'_> {
        self.args
            .get_or_init(|| self.msg.args())
            .get(usize::from(index))
            .copied()
            .unwrap_or(Arg::Missing)
    }
}
