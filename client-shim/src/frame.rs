//! A message as it travels on the fast path (`docs/fastpath-protocol.md`): the routing
//! header, then the D-Bus message with this member's SENDER, inline or in a sealed memfd.
//!
//! Built once per message from the message as parsed: the routing header from its fields,
//! then the message as the application gave it, which is not copied again (the datagram is
//! gathered from both parts, [`Frame::iov`]). zbus puts the connection's unique name in
//! SENDER once it knows it, and writes only header fields the bus knows; a message without
//! that SENDER gets a new D-Bus header in front of its body (SENDER set, unknown fields
//! left out: exactly what `Message::forwarded` gives).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use busd_match::header::{self, Fields, HEADER_LEN, TO_DAEMON};
use busd_match::sealed;
use busd_wire::marshal::Endian;
use busd_wire::message::{encode, HeaderFields, Message};
use tracing::warn;

/// Messages larger than this travel in a sealed memfd (DESIGN 5.3): one copy for every
/// receiver, and no datagram or send-buffer limit. Below it, a datagram's copy per
/// receiver costs less than creating, filling and sealing a memfd.
pub const MEMFD_ABOVE: usize = 32 * 1024;

/// The kernel's limit on descriptors passed with one datagram (SCM_MAX_FD).
const SCM_MAX_FD: u32 = busd_wire::fds::MAX_FDS_PER_CALL as u32;

#[derive(Debug)]
pub struct Frame {
    /// The routing header, then the message's header (inline) or the memfd reference.
    head: Vec<u8>,
    /// The message as the application gave it, shared; the frame ends with
    /// `message[tail..]` (its body, or nothing when it travels in the memfd).
    message: Arc<Vec<u8>>,
    tail: usize,
    /// The length of the message as receivers get it.
    len: u64,
    /// The sealed memfd holding a large message; it travels first, before the message's
    /// own descriptors.
    memfd: Option<Arc<OwnedFd>>,
    /// For a message in the memfd: the new D-Bus header it got (if any), and where the
    /// part of `message` after it starts ([`Frame::message_parts`]).
    lead: Vec<u8>,
    from: usize,
}

impl Frame {
    /// The frame for `msg` from member `me` (unique name `unique`), with this destination
    /// word (`crate::route::Route::destination`).
    pub fn new(msg: &Message, me: u32, unique: &str, destination: u32) -> Frame {
        let mut routing = [0u8; HEADER_LEN];
        header::encode(
            &Fields {
                msg_type: msg.msg_type(),
                flags: msg.flags(),
                sender: me,
                destination,
                interface: msg.interface(),
                member: msg.member(),
                path: msg.path(),
            },
            &msg.args(),
            &mut routing,
        );
        let message = msg.shared_bytes();
        // The new header, if one is needed, and where the part of the message that follows
        // it starts.
        let (stamped, tail) = if msg.sender() == Some(unique) {
            (Vec::new(), 0)
        } else {
            let body_at = message.len() - msg.body().len();
            (header_with_sender(msg, unique), body_at)
        };
        let len = stamped.len() + message.len() - tail;
        // (A message carrying the most descriptors a datagram can has no room for the
        // memfd: it goes inline up to MAX_INLINE, else on the stream.)
        if len > MEMFD_ABOVE && msg.unix_fds() < SCM_MAX_FD {
            let sealed = if stamped.is_empty() {
                sealed::seal(&message)
            } else {
                sealed::seal(&[&stamped[..], &message[tail..]].concat())
            };
            match sealed {
                Ok(memfd) => {
                    routing[header::OFF_KIND as usize + 3] |= header::ROUTE_MEMFD;
                    return Frame {
                        head: [&routing[..], &sealed::reference(len)[..]].concat(),
                        tail: message.len(),
                        message,
                        len: len as u64,
                        memfd: Some(Arc::new(memfd)),
                        lead: stamped,
                        from: tail,
                    };
                }
                Err(e) => warn!("cannot put a large message in a memfd: {e}"),
            }
        }
        let mut head = Vec::with_capacity(HEADER_LEN + stamped.len());
        head.extend_from_slice(&routing);
        head.extend_from_slice(&stamped);
        Frame {
            head,
            tail,
            message,
            len: len as u64,
            memfd: None,
            lead: Vec::new(),
            from: tail,
        }
    }

    /// The message as receivers get it, in two parts (inline or in the memfd).
    pub fn message_parts(&self) -> [&[u8]; 2] {
        if self.memfd.is_some() {
            [&self.lead, &self.message[self.from..]]
        } else {
            [&self.head[HEADER_LEN..], &self.message[self.tail..]]
        }
    }

    /// A frame as it came, given back to its sender (`bytes` already marked returned),
    /// with the memfd it came with, if any; `len` is its message's length.
    pub fn given_back(bytes: Vec<u8>, memfd: Option<OwnedFd>, len: u64) -> Frame {
        Frame {
            head: bytes,
            message: Arc::new(Vec::new()),
            tail: 0,
            len,
            memfd: memfd.map(Arc::new),
            lead: Vec::new(),
            from: 0,
        }
    }

    /// The same frame for the daemon to route ([`TO_DAEMON`]).
    pub fn to_daemon(&self) -> Frame {
        let mut head = self.head.clone();
        head[header::OFF_DESTINATION as usize..][..4].copy_from_slice(&TO_DAEMON.to_be_bytes());
        Frame {
            head,
            message: Arc::clone(&self.message),
            tail: self.tail,
            len: self.len,
            memfd: self.memfd.clone(),
            lead: self.lead.clone(),
            from: self.from,
        }
    }

    /// The datagram, in two parts.
    pub fn iov(&self) -> [IoSlice<'_>; 2] {
        [
            IoSlice::new(&self.head),
            IoSlice::new(&self.message[self.tail..]),
        ]
    }

    /// The datagram's length.
    pub fn size(&self) -> usize {
        self.head.len() + self.message.len() - self.tail
    }

    /// The length of the message it carries (what the byte figures count).
    pub fn message_len(&self) -> u64 {
        self.len
    }

    pub fn in_memfd(&self) -> bool {
        self.memfd.is_some()
    }

    /// Too large to go as a datagram ([`header::MAX_INLINE`]): no memfd could carry it
    /// (the message has the most descriptors a datagram can, or none could be made).
    pub fn too_large_inline(&self) -> bool {
        self.memfd.is_none() && self.size() > header::MAX_INLINE
    }

    /// The descriptors that travel with the frame: the memfd first, then the message's.
    pub fn fds(&self, message_fds: &[RawFd]) -> Vec<RawFd> {
        self.memfd
            .iter()
            .map(|m| m.as_raw_fd())
            .chain(message_fds.iter().copied())
            .collect()
    }
}

/// The message's header with SENDER set to `sender` (and only the fields the bus knows):
/// with the body after it, `msg.forwarded(sender)`.
fn header_with_sender(msg: &Message, sender: &str) -> Vec<u8> {
    let fields = HeaderFields {
        path: msg.path(),
        interface: msg.interface(),
        member: msg.member(),
        error_name: msg.error_name(),
        reply_serial: msg.reply_serial(),
        destination: msg.destination(),
        sender: Some(sender),
        signature: Some(msg.signature()),
        unix_fds: msg.unix_fds(),
    };
    let mut head = encode(
        msg.endian(),
        msg.msg_type(),
        msg.flags(),
        msg.serial(),
        &fields,
        &[],
    );
    // Encoded with an empty body (the header ends padded to 8, where the body starts): the
    // body length is the real one.
    let body_len = msg.body().len() as u32;
    head[4..8].copy_from_slice(&match msg.endian() {
        Endian::Little => body_len.to_le_bytes(),
        Endian::Big => body_len.to_be_bytes(),
    });
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::message;
    use busd_match::header::Header;
    use busd_match::protocol::check_frame;
    use busd_wire::marshal::Writer;
    use busd_wire::message::{HeaderFields, METHOD_CALL, SIGNAL};

    fn gathered(f: &Frame) -> Vec<u8> {
        f.iov().iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn a_frame_carries_the_routing_header_and_the_message_with_its_sender() {
        let msg = message(METHOD_CALL, 0, Some("org.example.Two"), "Do");
        let f = Frame::new(&msg, 3, ":1.2", 2);
        let bytes = gathered(&f);
        assert_eq!(bytes.len(), f.size());
        let h = Header::decode(&bytes).unwrap();
        assert_eq!((h.sender, h.destination), (3, 2));
        assert_eq!(&bytes[HEADER_LEN..], &msg.forwarded(":1.2")[..]);
        assert_eq!(f.message_len(), (bytes.len() - HEADER_LEN) as u64);
        let routed = gathered(&f.to_daemon());
        assert_eq!(Header::decode(&routed).unwrap().destination, TO_DAEMON);
        assert_eq!(&routed[HEADER_LEN..], &bytes[HEADER_LEN..]);
        assert!(f.fds(&[7]) == [7] && !f.in_memfd());
    }

    #[test]
    fn a_message_that_already_names_its_sender_goes_as_it_is() {
        let bytes = encode(
            Endian::Little,
            SIGNAL,
            0,
            9,
            &HeaderFields {
                path: Some("/p"),
                interface: Some("org.example.I"),
                member: Some("Tick"),
                sender: Some(":1.2"),
                ..Default::default()
            },
            &[],
        );
        let msg = Message::parse(bytes.clone(), Vec::new()).unwrap();
        let f = Frame::new(&msg, 3, ":1.2", 0);
        assert_eq!(&gathered(&f)[HEADER_LEN..], &bytes[..]);
        assert_eq!(
            f.iov()[1].len(),
            bytes.len(),
            "the message itself, not a copy"
        );
    }

    #[test]
    fn the_new_header_replaces_any_sender_in_either_byte_order() {
        for endian in [Endian::Little, Endian::Big] {
            let mut body = Writer::new(endian);
            body.u32(42);
            let bytes = encode(
                endian,
                SIGNAL,
                0,
                9,
                &HeaderFields {
                    path: Some("/p"),
                    interface: Some("org.example.I"),
                    member: Some("Tick"),
                    sender: Some(":1.77"),
                    signature: Some("u"),
                    ..Default::default()
                },
                &body.into_vec(),
            );
            let msg = Message::parse(bytes, Vec::new()).unwrap();
            let f = Frame::new(&msg, 3, ":1.2", 0);
            let out = Message::parse(gathered(&f)[HEADER_LEN..].to_vec(), Vec::new()).unwrap();
            assert_eq!(out.sender(), Some(":1.2"));
            assert_eq!(out.body_reader().u32().unwrap(), 42);
            assert_eq!(out.bytes(), &msg.forwarded(":1.2")[..]);
            assert_eq!(f.message_parts().concat(), out.bytes());
        }
    }

    /// A signal with a string of `len` bytes, declaring `unix_fds` descriptors.
    fn big(len: usize, unix_fds: u32) -> Message {
        let mut body = Writer::new(Endian::Little);
        body.string(&"x".repeat(len));
        let bytes = encode(
            Endian::Little,
            SIGNAL,
            0,
            5,
            &HeaderFields {
                path: Some("/p"),
                interface: Some("org.example.I"),
                member: Some("Big"),
                signature: Some("s"),
                unix_fds,
                ..Default::default()
            },
            &body.into_vec(),
        );
        Message::parse(bytes, Vec::new()).unwrap()
    }

    #[test]
    fn large_messages_travel_in_a_sealed_memfd_that_receivers_accept() {
        let msg = big(MEMFD_ABOVE, 0);
        let f = Frame::new(&msg, 3, ":1.2", 0);
        assert!(f.in_memfd());
        let datagram = gathered(&f);
        assert_eq!(datagram.len(), HEADER_LEN + sealed::REFERENCE_LEN);
        let memfd = f.memfd.as_ref().unwrap().try_clone().unwrap();
        let checked = check_frame(&datagram, &[memfd], 3, 1 << 27).unwrap();
        assert!(checked.memfd);
        assert_eq!(checked.message, msg.forwarded(":1.2"));
        assert_eq!(f.message_parts().concat(), checked.message);
        assert_eq!(f.message_len(), checked.message.len() as u64);
        assert_eq!(f.fds(&[7]).len(), 2);
    }

    /// A message no memfd can carry (it has the most descriptors a datagram can) goes
    /// inline only up to MAX_INLINE, so that receivers need no larger buffer.
    #[test]
    fn a_large_message_without_room_for_a_memfd_does_not_go_as_a_datagram() {
        let big = |len| Frame::new(&big(len, SCM_MAX_FD), 3, ":1.2", 0);
        assert!(!big(MEMFD_ABOVE + 1).too_large_inline());
        let f = big(header::MAX_INLINE);
        assert!(!f.in_memfd() && f.too_large_inline());
    }
}
