//! The receive check (DESIGN 5.4, 5.8): what becomes of a datagram on the member socket,
//! from the datagram, the address the kernel reports for its sender, the routing table and
//! the connection's rules alone.
//!
//! A frame is taken only from a member socket under the exact name the daemon binds, with a
//! routing header naming that member, and a valid message whose SENDER is that member's
//! unique name; it is then for this member if addressed to it (or to a name it owns), or,
//! being a broadcast, if one of its rules matches it exactly (the kernel filter may let a
//! false positive through).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use busd_match::protocol::{self, FrameError};
use busd_match::table::Table;
use busd_match::{Arg, MessageInfo};
use busd_wire::fds;
use busd_wire::message::Message;
use nix::sys::socket::{MsgFlags, UnixAddr};
use tracing::warn;

use crate::rules::Rules;

/// The largest message the fast path takes from a memfd: the D-Bus specification's
/// maximum (a bus may allow less; the daemon checks its own `max_message_size`).
pub const MAX_MESSAGE: usize = 128 << 20;

/// Who this member is, as the check needs it.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub id: u32,
    pub unique: &'a str,
    /// The directory member sockets are bound in.
    pub dir: &'a Path,
}

/// A frame that passed the identity and form checks ([`check`]).
#[derive(Debug)]
pub struct Checked {
    pub msg: Message,
    /// The member that sent it.
    pub sender: u32,
    /// The message came in a memfd (the first of the datagram's fds).
    pub memfd: bool,
}

/// Why a frame is dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It lies about its sender (counted in `spoofed`).
    Spoofed(String),
    /// It is not well formed (counted in `malformed`).
    Malformed(String),
}

/// What becomes of a frame that passed the checks ([`wanted`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    /// For the application.
    Deliver,
    /// For a well-known name this member does not own (any more): the daemon routes it.
    Forward,
    /// A broadcast only an AddMatch the bus has not answered yet would want: judged again
    /// once the bus answered.
    Wait,
    /// A broadcast no rule wants (counted in `filtered`).
    Unwanted,
}

/// Who sent the frame, and whether it is well formed: its source is a member socket under
/// the exact name the daemon binds (a look-alike spelling names nobody), its routing header
/// names that member, its message is valid (inline, or in a memfd sealed as required) and
/// its SENDER is that member's.
pub fn check(
    frame: &[u8],
    fds: &[OwnedFd],
    source: Option<&Path>,
    me: &Me<'_>,
) -> Result<Checked, Refusal> {
    let Some(sender) = source
        .filter(|p| p.parent() == Some(me.dir))
        .and_then(|p| protocol::member_of_socket_name(p.file_name()?.to_str()?))
    else {
        return Err(Refusal::Spoofed("not from a member socket".into()));
    };
    let frame = protocol::check_frame(frame, fds, sender, MAX_MESSAGE).map_err(|e| match e {
        FrameError::Spoofed(_) => Refusal::Spoofed(e.to_string()),
        FrameError::Malformed(_) => Refusal::Malformed(e.to_string()),
    })?;
    let msg =
        Message::parse(frame.message, Vec::new()).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if msg.sender() != Some(protocol::unique_of_member(sender).as_str()) {
        return Err(Refusal::Spoofed("its SENDER is another's".into()));
    }
    Ok(Checked {
        msg,
        sender,
        memfd: frame.memfd,
    })
}

/// Whether this member wants a checked message, by the table and rules as they are now.
pub fn wanted(c: &Checked, table: &Table, rules: &Rules, me: &Me<'_>) -> Want {
    match c.msg.destination() {
        Some(d) if d == me.unique || table.owner(d) == Some(me.id) => Want::Deliver,
        // The name moved after the sender looked it up.
        Some(_) => Want::Forward,
        None => {
            let info = Received {
                msg: &c.msg,
                args: c.msg.args(),
                sender_id: c.sender,
                table,
            };
            if rules.matches(&info) {
                Want::Deliver
            } else if rules.may_match(&info) {
                Want::Wait
            } else {
                Want::Unwanted
            }
        }
    }
}

/// A received message as match rules see it.
struct Received<'a> {
    msg: &'a Message,
    args: Vec<Arg<'a>>,
    sender_id: u32,
    table: &'a Table,
}

impl MessageInfo for Received<'_> {
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
        self.msg.sender() == Some(name) || self.table.owner(name) == Some(self.sender_id)
    }
    fn destination_is(&self, name: &str) -> bool {
        self.msg.destination() == Some(name)
    }
    fn arg(&self, index: u8) -> Arg<'_> {
        self.args
            .get(usize::from(index))
            .copied()
            .unwrap_or(Arg::Missing)
    }
}

/// One datagram: its length, fds and the sender's bound address.
pub type Datagram = (usize, Vec<OwnedFd>, Option<PathBuf>);

/// Takes one datagram off the socket without waiting. A truncated one (larger than any
/// member's send buffer allows: not from a member) is dropped.
pub fn recv_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Datagram> {
    loop {
        let m = fds::recv::<UnixAddr>(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?;
        let source = m.address.and_then(|a| a.path().map(Path::to_path_buf));
        if m.flags.contains(MsgFlags::MSG_TRUNC) {
            warn!("dropped a truncated frame from {source:?}");
            continue;
        }
        return Ok((m.len, m.fds, source));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::route::tests::{message, table};
    use busd_match::header::{self, HEADER_LEN};
    use busd_wire::message::{encode, HeaderFields, METHOD_CALL, METHOD_RETURN, SIGNAL};

    const DIR: &str = "/run/user/1000/busd-test";

    fn me() -> Me<'static> {
        // Member 4 (:1.3), which owns nothing in `table()` and wants Pong.
        Me {
            id: 4,
            unique: ":1.3",
            dir: Path::new(DIR),
        }
    }

    /// A frame from member `from`, as its shim builds it.
    fn frame(from: u32, kind: u8, destination: Option<&str>, member: &str) -> Vec<u8> {
        let msg = message(kind, 0, destination, member);
        let f = Frame::new(&msg, from, &protocol::unique_of_member(from), 0);
        f.iov().iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn from(id: &str) -> PathBuf {
        Path::new(DIR).join(id)
    }

    /// Rules the bus accepted.
    fn rules(texts: &[&str]) -> Rules {
        let mut r = Rules::default();
        for (serial, text) in (1..).zip(texts) {
            r.asked(&add_match(serial, text));
            assert!(r.answered(METHOD_RETURN, Some("org.freedesktop.DBus"), serial));
        }
        r
    }

    fn add_match(serial: u32, rule: &str) -> Message {
        let mut body = busd_wire::marshal::Writer::new(busd_wire::marshal::Endian::Little);
        body.string(rule);
        let bytes = encode(
            busd_wire::marshal::Endian::Little,
            METHOD_CALL,
            0,
            serial,
            &HeaderFields {
                path: Some("/org/freedesktop/DBus"),
                interface: Some("org.freedesktop.DBus"),
                member: Some("AddMatch"),
                destination: Some("org.freedesktop.DBus"),
                signature: Some("s"),
                ..Default::default()
            },
            &body.into_vec(),
        );
        Message::parse(bytes, Vec::new()).unwrap()
    }

    /// The whole check, as the member applies it: the frame, then the message.
    fn accept(
        frame: &[u8],
        source: Option<&Path>,
        table: &Table,
        rules: &Rules,
    ) -> Result<(Checked, Want), Refusal> {
        let c = check(frame, &[], source, &me())?;
        assert_eq!(
            c.msg.sender().unwrap(),
            protocol::unique_of_member(c.sender)
        );
        let want = wanted(&c, table, rules, &me());
        Ok((c, want))
    }

    fn verdict(frame: &[u8], source: Option<&Path>, rules: &Rules) -> Result<Want, Refusal> {
        accept(frame, source, &table(), rules).map(|(_, w)| w)
    }

    fn spoofed(r: Result<Want, Refusal>) -> bool {
        matches!(r, Err(Refusal::Spoofed(_)))
    }

    #[test]
    fn a_member_gets_what_is_addressed_to_it_and_the_broadcasts_its_rules_want() {
        let pong = rules(&["member='Pong'"]);
        let to_me = frame(2, METHOD_CALL, Some(":1.3"), "Do");
        assert_eq!(verdict(&to_me, Some(&from("2")), &pong), Ok(Want::Deliver));
        let signal = frame(2, SIGNAL, None, "Pong");
        assert_eq!(verdict(&signal, Some(&from("2")), &pong), Ok(Want::Deliver));
        // What the kernel filter let through that no rule wants.
        let ping = frame(2, SIGNAL, None, "Ping");
        assert_eq!(verdict(&ping, Some(&from("2")), &pong), Ok(Want::Unwanted));
        assert_eq!(
            verdict(&signal, Some(&from("2")), &Rules::default()),
            Ok(Want::Unwanted)
        );
    }

    #[test]
    fn a_message_for_a_name_that_moved_goes_to_the_daemon() {
        // org.example.Two is member 2's, not this member's.
        let call = frame(3, METHOD_CALL, Some("org.example.Two"), "Do");
        assert_eq!(
            verdict(&call, Some(&from("3")), &rules(&[])),
            Ok(Want::Forward)
        );
        let mut t = table();
        t.names[1].1 = 4;
        let (_, want) = accept(&call, Some(&from("3")), &t, &rules(&[])).unwrap();
        assert_eq!(want, Want::Deliver, "once it owns the name");
    }

    #[test]
    fn a_broadcast_only_an_unanswered_add_match_wants_waits_for_the_answer() {
        let mut r = rules(&[]);
        r.asked(&add_match(9, "member='Ping'"));
        let ping = frame(2, SIGNAL, None, "Ping");
        let (c, want) = accept(&ping, Some(&from("2")), &table(), &r).unwrap();
        assert_eq!(want, Want::Wait);
        r.answered(METHOD_RETURN, Some("org.freedesktop.DBus"), 9);
        assert_eq!(wanted(&c, &table(), &r, &me()), Want::Deliver);
    }

    #[test]
    fn frames_that_lie_about_their_sender_are_refused() {
        let ping = frame(2, SIGNAL, None, "Pong");
        let r = rules(&["member='Pong'"]);
        // No address (an unbound socket), another directory, a look-alike name, the
        // daemon's inbox name.
        assert!(spoofed(verdict(&ping, None, &r)));
        assert!(spoofed(verdict(&ping, Some(Path::new("/tmp/2")), &r)));
        for name in ["02", "+2", " 2", "d2", "0"] {
            assert!(spoofed(verdict(&ping, Some(&from(name)), &r)), "{name:?}");
        }
        // The routing header names another member than the socket it came from.
        assert!(spoofed(verdict(&ping, Some(&from("3")), &r)));
        // The header names the right member, SENDER another.
        let mut liar = ping.clone();
        liar[header::OFF_SENDER as usize..][..4].copy_from_slice(&3u32.to_be_bytes());
        assert!(spoofed(verdict(&liar, Some(&from("3")), &r)));
    }

    #[test]
    fn frames_that_are_not_well_formed_are_refused() {
        let ping = frame(2, SIGNAL, None, "Pong");
        let r = rules(&["member='Pong'"]);
        let malformed =
            |f: &[u8]| matches!(verdict(f, Some(&from("2")), &r), Err(Refusal::Malformed(_)));
        assert!(malformed(&ping[..HEADER_LEN - 1]));
        assert!(malformed(&ping[..ping.len() - 1]));
        let mut bad_magic = ping.clone();
        bad_magic[0] ^= 1;
        assert!(malformed(&bad_magic));
        let mut bad_message = ping.clone();
        bad_message[HEADER_LEN] = b'x';
        assert!(malformed(&bad_message));
    }
}
