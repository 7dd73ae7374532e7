//! Messages a receiver may give back (DESIGN 5.8): what this member sent directly to a
//! well-known name, so that a frame coming back for it is resent through the daemon only
//! when it is exactly a message this member sent that receiver, and only once.
//!
//! A receiver that does not own the name a direct message was for (it gave the name up
//! after the sender read the table) returns the frame; the sender resends it through the
//! daemon as itself, which routes it to the owner now. The receiver is another program: it
//! could return a message this member never sent (making it say anything to the bus), an
//! altered one, or one it already consumed. So each such send is recorded by receiver and
//! serial with a keyed digest of the message (SipHash-2-4, 128 bits, a key only this
//! process knows); a return is believed when its record is there and its digest is the
//! same, and the record goes with it.
//!
//! The record keeps the last [`RECORDED`] such sends: a receiver returns a frame as it
//! reads it, and a sender gets ahead of a receiver by at most the receiver's queue (the
//! kernel's `max_dgram_qlen`, 10 by default, plus the backlog this member keeps for it).

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher24};

/// How many sends to well-known names stay returnable.
pub const RECORDED: usize = 4096;

/// The sends a receiver may still return.
pub struct Returnable {
    key: [u8; 16],
    /// (receiver, serial) to (digest, when recorded).
    sent: HashMap<(u32, u32), (u128, u64)>,
    /// In the order recorded, to forget the oldest.
    order: VecDeque<((u32, u32), u64)>,
    count: u64,
}

impl Default for Returnable {
    fn default() -> Returnable {
        Returnable::new(random_key())
    }
}

impl Returnable {
    pub fn new(key: [u8; 16]) -> Returnable {
        Returnable {
            key,
            sent: HashMap::new(),
            order: VecDeque::new(),
            count: 0,
        }
    }

    /// The keyed digest of a message given in parts (as it travels).
    pub fn digest(&self, parts: &[&[u8]]) -> u128 {
        let mut h = SipHasher24::new_with_key(&self.key);
        for p in parts {
            h.write(p);
        }
        h.finish128().as_u128()
    }

    /// This member sent message `serial` (digest `digest`) directly to `receiver`, for a
    /// well-known name.
    pub fn sent(&mut self, receiver: u32, serial: u32, digest: u128) {
        self.count += 1;
        self.sent.insert((receiver, serial), (digest, self.count));
        self.order.push_back(((receiver, serial), self.count));
        while self.order.len() > RECORDED {
            if let Some((k, n)) = self.order.pop_front() {
                if self.sent.get(&k).is_some_and(|&(_, m)| m == n) {
                    self.sent.remove(&k);
                }
            }
        }
    }

    /// `receiver` gives back message `serial` with digest `digest`: whether this member
    /// sent it exactly so and it was not returned before (the record goes).
    pub fn take(&mut self, receiver: u32, serial: u32, digest: u128) -> bool {
        match self.sent.get(&(receiver, serial)) {
            Some(&(d, _)) if d == digest => {
                self.sent.remove(&(receiver, serial));
                true
            }
            _ => false,
        }
    }

    /// `receiver` answered call `serial`: it handled the call, and may not give it back
    /// now (the name's owner would get it a second time).
    pub fn answered(&mut self, receiver: u32, serial: u32) {
        self.sent.remove(&(receiver, serial));
    }

    /// How many sends are recorded.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sent.len()
    }
}

/// 16 bytes from the kernel's random source.
fn random_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    let mut got = 0;
    while got < key.len() {
        // SAFETY: writes at most `key.len() - got` bytes into `key` past `got`.
        let n = unsafe { libc::getrandom(key[got..].as_mut_ptr().cast(), key.len() - got, 0) };
        if n > 0 {
            got += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Without the kernel's random source there is no secret key: every return is
            // refused (a digest nobody can match), which costs only the slow way round.
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_is_believed_once_for_exactly_what_was_sent_to_that_receiver() {
        let mut r = Returnable::new([7; 16]);
        let d = r.digest(&[b"hello", b" world"]);
        assert_eq!(d, r.digest(&[b"hello world"]), "parts do not matter");
        r.sent(2, 10, d);
        // Another receiver, another serial, other bytes: not what was sent.
        assert!(!r.take(3, 10, d));
        assert!(!r.take(2, 11, d));
        assert!(!r.take(2, 10, r.digest(&[b"hello World"])));
        assert!(r.take(2, 10, d));
        // Once only.
        assert!(!r.take(2, 10, d));
        assert_eq!(r.len(), 0);
        // Not after the receiver answered it.
        r.sent(2, 12, d);
        r.answered(3, 12);
        r.answered(2, 12);
        assert!(!r.take(2, 12, d));
    }

    #[test]
    fn another_key_gives_other_digests() {
        let a = Returnable::new([1; 16]);
        let b = Returnable::new([2; 16]);
        assert_ne!(a.digest(&[b"m"]), b.digest(&[b"m"]));
        assert_ne!(Returnable::default().key, Returnable::default().key);
    }

    #[test]
    fn the_oldest_sends_are_forgotten_past_the_bound() {
        let mut r = Returnable::new([0; 16]);
        for serial in 0..RECORDED as u32 + 10 {
            r.sent(2, serial, u128::from(serial));
        }
        assert_eq!(r.len(), RECORDED);
        assert!(!r.take(2, 9, 9));
        assert!(r.take(2, 10, 10));
        // A serial sent again replaces its record and is not forgotten with the old one.
        r.sent(2, 11, 1);
        for serial in 0..RECORDED as u32 - 1 {
            r.sent(3, serial, 0);
        }
        assert!(r.take(2, 11, 1));
    }
}
