//! Queue accounting: how many bytes and fds wait in a connection's output queue, and how
//! many of a sender's messages are still waiting anywhere (dbus-daemon's "live messages");
//! and the queued form of a message, shared by every connection it goes to.
//!
//! Single-threaded on purpose (`Rc`, `Cell`): one thread owns the bus and its queues.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;

use busd_wire::message::Message;

/// Bytes and fds currently counted against one connection. Shared between the I/O shell,
/// which updates it as messages are queued and written, and the bus, which reads it to
/// apply `max_outgoing_*` and `max_incoming_*`. It also keeps how many messages and bytes
/// it ever counted, for Debug.Stats (two additions per message).
#[derive(Debug, Default)]
pub struct QueueLoad {
    messages: Cell<u64>,
    bytes: Cell<u64>,
    fds: Cell<u64>,
    peak_bytes: Cell<u64>,
    peak_fds: Cell<u64>,
    total_messages: Cell<u64>,
    total_bytes: Cell<u64>,
}

impl QueueLoad {
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub fn fds(&self) -> u64 {
        self.fds.get()
    }

    pub fn messages(&self) -> u64 {
        self.messages.get()
    }

    /// The most bytes and fds ever counted at once (Debug.Stats).
    pub fn peaks(&self) -> (u64, u64) {
        (self.peak_bytes.get(), self.peak_fds.get())
    }

    /// Messages and bytes ever counted, given back or not (Debug.Stats).
    pub fn totals(&self) -> (u64, u64) {
        (self.total_messages.get(), self.total_bytes.get())
    }

    /// Counts one message of `bytes` bytes and `fds` fds.
    pub fn add(&self, bytes: u64, fds: u64) {
        self.messages.set(self.messages.get() + 1);
        self.bytes.set(self.bytes.get() + bytes);
        self.fds.set(self.fds.get() + fds);
        self.total_messages.set(self.total_messages.get() + 1);
        self.total_bytes.set(self.total_bytes.get() + bytes);
        self.peak_bytes
            .set(self.peak_bytes.get().max(self.bytes.get()));
        self.peak_fds.set(self.peak_fds.get().max(self.fds.get()));
    }

    /// Gives back one message counted by [`QueueLoad::add`].
    pub fn sub(&self, bytes: u64, fds: u64) {
        self.messages.set(self.messages.get().saturating_sub(1));
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
        self.fds.set(self.fds.get().saturating_sub(fds));
    }

    /// Whether either count is above its limit (dbus-daemon compares with `>`).
    pub fn over(&self, max_bytes: u64, max_fds: u64) -> bool {
        self.bytes() > max_bytes || self.fds() > max_fds
    }
}

/// Counts one message against its sender for as long as any copy of it exists (queued on
/// one or more connections); dropping the last copy gives the count back.
#[derive(Debug)]
pub struct Charge {
    load: Rc<QueueLoad>,
    bytes: u64,
    fds: u64,
}

impl Charge {
    pub fn new(load: &Rc<QueueLoad>, bytes: u64, fds: u64) -> Rc<Charge> {
        load.add(bytes, fds);
        Rc::new(Charge {
            load: Rc::clone(load),
            bytes,
            fds,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.load.sub(self.bytes, self.fds);
    }
}

/// A message ready to be written to one or more connections: shared bytes and fds.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub bytes: Arc<Vec<u8>>,
    pub fds: Rc<Vec<OwnedFd>>,
    /// Counts the message against its sender while any copy is queued.
    pub charge: Option<Rc<Charge>>,
}

impl Outgoing {
    pub fn new(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        Outgoing {
            bytes: Arc::new(bytes),
            fds: Rc::new(fds),
            charge: None,
        }
    }

    /// Shares `m`'s bytes and moves its fds into a value that can be queued on many
    /// connections.
    pub fn take(m: &mut Message) -> Self {
        Outgoing {
            bytes: m.shared_bytes(),
            fds: Rc::new(std::mem::take(&mut m.fds)),
            charge: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_lasts_until_its_last_copy_is_gone() {
        let load = Rc::new(QueueLoad::default());
        let c = Charge::new(&load, 100, 2);
        let copy = Rc::clone(&c);
        drop(c);
        assert_eq!((load.bytes(), load.fds()), (100, 2));
        assert!(load.over(99, 10) && load.over(1000, 1) && !load.over(100, 2));
        drop(copy);
        assert_eq!((load.bytes(), load.fds()), (0, 0));
    }

    #[test]
    fn totals_keep_what_was_given_back() {
        let load = Rc::new(QueueLoad::default());
        drop(Charge::new(&load, 100, 2));
        let _held = Charge::new(&load, 20, 0);
        assert_eq!(load.messages(), 1);
        assert_eq!(load.totals(), (2, 120));
    }
}
