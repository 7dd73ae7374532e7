//! The receive check (DESIGN 5.4, 5.8): what becomes of a datagram on the member socket,
//! from the datagram, the address the kernel reports for its sender, the routing table and
//! the connection's rules alone.
//!
//! A frame is taken only from a member socket under the exact name the daemon binds, with a
//! routing header naming that member, and a valid message whose SENDER is that member's
//! unique name (or, in a frame a receiver gives back, this member's own); it is then for
//! this member if the policy lets its sender reach it directly (the table's direct set:
//! a sender's shim choosing the daemon's way is a courtesy, DESIGN 5.7), and if addressed
//! to it (or to a name it owns), or, being a broadcast, if one of its rules matches it
//! exactly (the kernel filter may let a false positive through).

use std::os::fd::OwnedFd;
use std::path::Path;

use busd_match::header;
use busd_match::protocol::{self, FrameError};
use busd_match::table::Table;
use busd_match::{Arg, MessageInfo};
use busd_wire::message::{Message, METHOD_CALL};
use busd_wire::names;

use crate::rules::Rules;

/// The largest message the fast path takes when the table does not tell the bus's
/// `max_message_size`: the D-Bus specification's maximum.
pub const MAX_MESSAGE: usize = 128 << 20;

/// The largest message this member takes, by the table: the bus's `max_message_size`.
pub fn max_message(table: &Table) -> usize {
    match table.max_message {
        0 => MAX_MESSAGE,
        n => (n as usize).min(MAX_MESSAGE),
    }
}

/// The most descriptors a message may carry, by the table: the bus's
/// `max_message_unix_fds`.
pub fn max_fds(table: &Table) -> usize {
    table.max_fds as usize
}

/// Who this member is, as the check needs it.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub id: u32,
    pub unique: &'a str,
    /// The directory member sockets are bound in.
    pub dir: &'a Path,
    /// This process's pid namespace (the inode of `/proc/self/ns/pid`; 0: unknown).
    pub pid_namespace: u64,
}

/// A frame that passed the identity and form checks ([`check`]).
#[derive(Debug)]
pub struct Checked {
    pub msg: Message,
    /// The member that sent it.
    pub sender: u32,
    /// The message came in a memfd (the first of the datagram's fds).
    pub memfd: bool,
    /// A receiver gives back a message this member sent it ([`header::ROUTE_RETURNED`]).
    pub returned: bool,
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
    /// For a well-known name this member does not own (any more): it goes back to its
    /// sender, which resends it through the daemon.
    Return,
    /// A message of this member's that a receiver gave back: resent through the daemon if
    /// it is one this member sent that receiver ([`crate::returns`]).
    Resend,
    /// Its sender may not reach this member directly (the policy mediates one of them, or
    /// the bus times calls): dropped and counted, whatever the sender's shim decided.
    NotDirect,
    /// A broadcast only an AddMatch the bus has not answered yet would want: judged again
    /// once the bus answered.
    Wait,
    /// A broadcast no rule wants (counted in `filtered`).
    Unwanted,
}

/// Who sent the frame, and whether it is well formed: its source is a member socket under
/// the exact name the daemon binds (a look-alike spelling names nobody), its routing header
/// names that member, its message is valid (inline, or in a memfd sealed as required, of
/// at most `max_message` bytes: the memfd's size is checked before it is read) and its
/// SENDER is that member's.
#[cfg(test)]
pub fn check(
    frame: &[u8],
    fds: &[OwnedFd],
    source: Option<&Path>,
    me: &Me<'_>,
    max_message: usize,
) -> Result<Checked, Refusal> {
    check_from(sender_of(source, me)?, frame, fds, me, (max_message, 16))
}

/// The member a datagram's source address names: a member socket under the exact name the
/// daemon binds (a look-alike spelling names nobody).
pub fn sender_of(source: Option<&Path>, me: &Me<'_>) -> Result<u32, Refusal> {
    source
        .filter(|p| p.parent() == Some(me.dir))
        .and_then(|p| protocol::member_of_socket_name(p.file_name()?.to_str()?))
        .ok_or_else(|| Refusal::Spoofed("not from a member socket".into()))
}

/// The flags a message may carry (the specification's three): zbus refuses a message with
/// any other, and would close the connection over it.
const KNOWN_FLAGS: u8 = busd_wire::message::FLAG_NO_REPLY_EXPECTED
    | busd_wire::message::FLAG_NO_AUTO_START
    | busd_wire::message::FLAG_ALLOW_INTERACTIVE_AUTHORIZATION;

/// [`check`] of a frame from member `sender` (by its source address, already attested:
/// a large message is read only for a sender that is who it says), under the bus's limits
/// (`max_message_size`, `max_message_unix_fds`).
pub fn check_from(
    sender: u32,
    frame: &[u8],
    fds: &[OwnedFd],
    me: &Me<'_>,
    (max_message, max_fds): (usize, usize),
) -> Result<Checked, Refusal> {
    let frame = protocol::check_frame(frame, fds, sender, max_message).map_err(|e| match e {
        FrameError::Spoofed(_) => Refusal::Spoofed(e.to_string()),
        FrameError::Malformed(_) => Refusal::Malformed(e.to_string()),
    })?;
    let carried = fds.len() - usize::from(frame.memfd);
    if carried > max_fds {
        return Err(Refusal::Malformed(format!(
            "a message with {carried} descriptors, more than max_message_unix_fds ({max_fds})"
        )));
    }
    let msg =
        Message::parse(frame.message, Vec::new()).map_err(|e| Refusal::Malformed(e.to_string()))?;
    // A receiver ignores a message of a type it does not know (the specification says so);
    // zbus would take it, or unknown flags, for a broken connection.
    if !(1..=4).contains(&msg.msg_type()) {
        return Err(Refusal::Malformed(format!(
            "a message of unknown type {}",
            msg.msg_type()
        )));
    }
    if msg.flags() & !KNOWN_FLAGS != 0 {
        return Err(Refusal::Malformed(format!(
            "a message with unknown flags {:#04x}",
            msg.flags()
        )));
    }
    let returned = frame.header.routing & header::ROUTE_RETURNED != 0;
    let authentic = if returned {
        msg.sender() == Some(me.unique)
    } else {
        msg.sender().and_then(protocol::member_of_unique) == Some(sender)
    };
    if !authentic {
        return Err(Refusal::Spoofed(if returned {
            "it gives back a message that is not this member's".into()
        } else {
            "its SENDER is another's".into()
        }));
    }
    Ok(Checked {
        msg,
        sender,
        memfd: frame.memfd,
        returned,
    })
}

/// Whether the kernel's word on who sent a checked frame agrees with the table: the
/// sending member is listed (present, or among the last to leave: a look-alike of a
/// member that never was, or left long ago, names nobody), and the process that sent it
/// (`pid`, from `SCM_CREDENTIALS`) is the one that joined as that member. Pids are
/// compared only where this process sees them as the daemon does (the same pid
/// namespace); elsewhere the socket path alone vouches for the sender.
pub fn attested(sender: u32, pid: Option<i32>, table: &Table, me: &Me<'_>) -> Result<(), Refusal> {
    let Some(m) = table.member(sender) else {
        return Err(Refusal::Spoofed(format!(
            "member {sender} is not in the routing table"
        )));
    };
    let comparable =
        m.pid != 0 && table.pid_namespace != 0 && table.pid_namespace == me.pid_namespace;
    if comparable && pid != i32::try_from(m.pid).ok() {
        return Err(Refusal::Spoofed(format!(
            "sent by process {pid:?}, not member {sender}'s ({})",
            m.pid
        )));
    }
    Ok(())
}

/// Whether this member wants a checked message, by the table and rules as they are now.
pub fn wanted(c: &Checked, table: &Table, rules: &Rules, me: &Me<'_>) -> Want {
    if c.returned {
        return Want::Resend;
    }
    let direct = |id| table.member(id).is_some_and(|m| m.direct);
    let timed_call = c.msg.msg_type() == METHOD_CALL && !c.msg.no_reply_expected();
    if !direct(c.sender) || !direct(me.id) || (timed_call && table.calls_mediated) {
        return Want::NotDirect;
    }
    match c.msg.destination() {
        Some(d) if d == me.unique || table.owner(d) == Some(me.id) => Want::Deliver,
        // A unique name is its member's: no sender's shim sends another's here.
        Some(d) if names::is_unique_name(d) => Want::Unwanted,
        // The name moved after the sender looked it up. (A message with descriptors is
        // never sent directly to a well-known name: they could not be checked on return.)
        Some(_) if c.msg.unix_fds() == 0 => Want::Return,
        Some(_) => Want::Unwanted,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::route::tests::{message, table};
    use busd_match::header::{self, HEADER_LEN};
    use busd_wire::message::{encode, HeaderFields, METHOD_CALL, METHOD_RETURN, SIGNAL};
    use std::path::PathBuf;

    const DIR: &str = "/run/user/1000/busd-test";

    fn me() -> Me<'static> {
        // Member 4 (:1.3), which owns nothing in `table()` and wants Pong.
        Me {
            id: 4,
            unique: ":1.3",
            dir: Path::new(DIR),
            pid_namespace: 7,
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
        let c = check(frame, &[], source, &me(), MAX_MESSAGE)?;
        attested(c.sender, Some(1000 + c.sender as i32), table, &me())?;
        if !c.returned {
            assert_eq!(
                c.msg.sender().unwrap(),
                protocol::unique_of_member(c.sender)
            );
        }
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
    fn a_message_for_a_name_that_moved_goes_back_to_its_sender() {
        // org.example.Two is member 2's, not this member's.
        let call = frame(3, METHOD_CALL, Some("org.example.Two"), "Do");
        assert_eq!(
            verdict(&call, Some(&from("3")), &rules(&[])),
            Ok(Want::Return)
        );
        // A unique name is only ever its own member's.
        let other = frame(3, METHOD_CALL, Some(":1.1"), "Do");
        assert_eq!(
            verdict(&other, Some(&from("3")), &rules(&[])),
            Ok(Want::Unwanted)
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
        // No address (an unbound socket), another directory, look-alike names (`d2` was
        // once the daemon's inbox's).
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

    /// What member 3 gives back to this member: a frame it had from it, its sender word
    /// and destination rewritten, the message (this member's own) unchanged.
    fn given_back(author: &str) -> Vec<u8> {
        let msg = message(METHOD_CALL, 0, Some("org.example.Two"), "Do");
        let f = Frame::new(&msg, 4, author, 3);
        let mut bytes: Vec<u8> = f.iov().iter().flat_map(|s| s.iter().copied()).collect();
        header::mark_returned(&mut bytes, 3, 4);
        bytes
    }

    #[test]
    fn a_receiver_gives_back_only_this_members_own_messages() {
        let r = rules(&[]);
        assert_eq!(
            verdict(&given_back(":1.3"), Some(&from("3")), &r),
            Ok(Want::Resend)
        );
        // Another member's message, "given back" to make this member speak for it.
        assert!(spoofed(verdict(&given_back(":1.1"), Some(&from("3")), &r)));
        // Given back by a socket that is not the one the header names.
        assert!(spoofed(verdict(&given_back(":1.3"), Some(&from("2")), &r)));
    }

    #[test]
    fn receivers_take_direct_frames_only_from_senders_the_policy_lets_reach_them() {
        let pong = rules(&["member='Pong'"]);
        // Member 5 is mediated by the policy: whatever its shim does, nothing of it is
        // taken directly.
        for f in [
            frame(5, SIGNAL, None, "Pong"),
            frame(5, METHOD_CALL, Some(":1.3"), "Do"),
        ] {
            assert_eq!(verdict(&f, Some(&from("5")), &pong), Ok(Want::NotDirect));
        }
        // A direct member that left: what it sent before is still taken.
        let last = frame(6, SIGNAL, None, "Pong");
        assert_eq!(verdict(&last, Some(&from("6")), &pong), Ok(Want::Deliver));
        // The bus times calls: a call that waits for a reply goes through the daemon.
        let mut t = table();
        t.calls_mediated = true;
        let call = frame(2, METHOD_CALL, Some(":1.3"), "Do");
        let (_, want) = accept(&call, Some(&from("2")), &t, &pong).unwrap();
        assert_eq!(want, Want::NotDirect);
        let signal = frame(2, SIGNAL, Some(":1.3"), "Pong");
        let (_, want) = accept(&signal, Some(&from("2")), &t, &pong).unwrap();
        assert_eq!(want, Want::Deliver);
    }

    #[test]
    fn the_kernel_must_name_the_process_that_joined_as_the_sender() {
        let pong = rules(&["member='Pong'"]);
        let signal = frame(2, SIGNAL, None, "Pong");
        let c = check(&signal, &[], Some(&from("2")), &me(), MAX_MESSAGE).unwrap();
        let t = table();
        assert_eq!(attested(c.sender, Some(1002), &t, &me()), Ok(()));
        // Another process with member 2's socket (or its path, once 2 left).
        assert!(matches!(
            attested(c.sender, Some(1003), &t, &me()),
            Err(Refusal::Spoofed(_))
        ));
        assert!(matches!(
            attested(c.sender, None, &t, &me()),
            Err(Refusal::Spoofed(_))
        ));
        // Seen from another pid namespace, pids cannot be compared: the path vouches.
        let elsewhere = Me {
            pid_namespace: 8,
            ..me()
        };
        assert_eq!(attested(c.sender, Some(55), &t, &elsewhere), Ok(()));
        // A member that never was (or left long ago): nobody, whatever the path.
        let never = frame(9, SIGNAL, None, "Pong");
        assert!(spoofed(verdict(&never, Some(&from("9")), &pong)));
    }

    #[test]
    fn a_message_with_more_descriptors_than_the_bus_allows_is_refused() {
        let msg = |n| {
            let f = HeaderFields {
                path: Some("/p"),
                interface: Some("org.example.I"),
                member: Some("Pong"),
                unix_fds: n,
                ..Default::default()
            };
            Message::parse(
                encode(busd_wire::marshal::Endian::Little, SIGNAL, 0, 7, &f, &[]),
                Vec::new(),
            )
            .unwrap()
        };
        let null = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        for (n, fine) in [(2, true), (3, false)] {
            let f = Frame::new(&msg(n), 2, &protocol::unique_of_member(2), 0);
            let bytes: Vec<u8> = f.iov().iter().flat_map(|s| s.iter().copied()).collect();
            let fds: Vec<OwnedFd> = (0..n).map(|_| null()).collect();
            let r = check_from(2, &bytes, &fds, &me(), (MAX_MESSAGE, 2));
            assert_eq!(r.is_ok(), fine, "{n} descriptors, at most 2: {r:?}");
        }
    }

    #[test]
    fn a_message_larger_than_the_bus_allows_is_refused() {
        let signal = frame(2, SIGNAL, None, "Pong");
        let len = signal.len() - HEADER_LEN;
        let mut t = table();
        t.max_message = len as u32 - 1;
        assert!(matches!(
            check(&signal, &[], Some(&from("2")), &me(), max_message(&t)),
            Err(Refusal::Malformed(_))
        ));
        t.max_message = len as u32;
        assert!(check(&signal, &[], Some(&from("2")), &me(), max_message(&t)).is_ok());
    }
}
