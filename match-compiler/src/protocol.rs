//! The fast path's protocol between the daemon and its members, defined once for both:
//! the `Join` method and its answer, member ids and the socket names they are bound under,
//! and the checks every received frame passes before its message is parsed.
//!
//! `docs/fastpath-protocol.md` describes the same in prose.

use std::os::fd::{AsFd, OwnedFd};

use busd_wire::marshal::{Malformed, Reader, Writer};

use crate::header::{self, Header, HEADER_LEN, TO_DAEMON};
use crate::sealed;

/// busd's own interface on the driver object, with the methods [`JOIN`] and [`READY`].
pub const INTERFACE: &str = "org.freedesktop.busd.FastPath1";
/// The method a connection calls (after Hello) to join the fast path.
pub const JOIN: &str = "Join";
/// The method a member calls (after Join's answer, without waiting for a reply) once it
/// has set up what Join gave it: until then nobody sends to it directly (it is not
/// *direct* in the table) and everything for it comes on the stream, so that a member
/// whose set-up failed loses nothing (DESIGN 5.8).
pub const READY: &str = "Ready";
/// The object they are called on.
pub const PATH: &str = "/org/freedesktop/DBus";

/// The answer to `Join` (signature [`JoinReply::SIGNATURE`]). The four descriptors travel
/// with it in this order: the member's socket, its end of the pair of sockets to the
/// daemon's inbox, the routing table (read-only), the progress memory; the body names them
/// by index, always 0, 1, 2 and 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinReply {
    /// The member's id ([`member_of_unique`] of its unique name).
    pub member: u32,
    /// The directory member sockets are bound in ([`socket_name`]).
    pub directory: String,
    /// Its slot in the progress memory (causal order, DESIGN 5.5).
    pub slot: u32,
}

/// The fds of a Join answer, in the order they travel.
#[derive(Debug)]
pub struct JoinFds {
    pub socket: OwnedFd,
    /// The member's end of a connected pair of datagram sockets (`socketpair`) whose other
    /// end is the daemon's inbox for it: nothing else can reach that inbox, which has no
    /// name (where a member sends the daemon).
    pub inbox: OwnedFd,
    pub table: OwnedFd,
    pub progress: OwnedFd,
}

impl JoinFds {
    /// In the order they travel with the answer.
    pub fn into_vec(self) -> Vec<OwnedFd> {
        vec![self.socket, self.inbox, self.table, self.progress]
    }

    /// Takes the first four of the answer's fds; None when fewer came.
    pub fn from_vec(fds: Vec<OwnedFd>) -> Option<JoinFds> {
        let mut fds = fds.into_iter();
        Some(JoinFds {
            socket: fds.next()?,
            inbox: fds.next()?,
            table: fds.next()?,
            progress: fds.next()?,
        })
    }
}

impl JoinReply {
    /// member, directory, the socket, inbox, table and progress handles, slot.
    pub const SIGNATURE: &'static str = "ushhhhu";
    /// How many fds travel with it.
    pub const FDS: u32 = 4;

    /// Appends the body to `w`.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.member);
        w.string(&self.directory);
        for handle in 0..Self::FDS {
            w.u32(handle);
        }
        w.u32(self.slot);
    }

    /// Reads a body of signature [`JoinReply::SIGNATURE`]; the handles must be 0, 1, 2, 3.
    pub fn decode(r: &mut Reader<'_>) -> Result<JoinReply, Malformed> {
        let member = r.u32()?;
        let directory = r.string()?.to_string();
        for handle in 0..Self::FDS {
            if r.u32()? != handle {
                return Err(Malformed);
            }
        }
        let slot = r.u32()?;
        Ok(JoinReply {
            member,
            directory,
            slot,
        })
    }
}

/// The member id of the connection with unique name `unique`: `:1.N` is member N+1, 0 is
/// nobody and [`TO_DAEMON`] the daemon; None for names that cannot be members.
pub fn member_of_unique(unique: &str) -> Option<u32> {
    let n = unique.strip_prefix(":1.")?;
    canonical_number(n)?
        .checked_add(1)
        .filter(|&id| id != TO_DAEMON)
}

/// The unique name of member `id` (not 0, not [`TO_DAEMON`]).
pub fn unique_of_member(id: u32) -> String {
    format!(":1.{}", id.wrapping_sub(1))
}

/// The name member `id`'s socket is bound under in the directory.
pub fn socket_name(id: u32) -> String {
    id.to_string()
}

/// The member whose socket is bound under `name`, only when `name` is exactly what
/// [`socket_name`] gives for it: a look-alike (`02`, `+2`, ` 2`) names no member, so a
/// process cannot pass for member 2 by binding another spelling of its name.
pub fn member_of_socket_name(name: &str) -> Option<u32> {
    canonical_number(name).filter(|&id| id != 0 && id != TO_DAEMON)
}

/// A decimal number in its one canonical spelling (no sign, no leading zero).
fn canonical_number(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// Why a frame was refused before its message was parsed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not a frame a member builds: a bad header, an oversized message, a broken memfd.
    #[error("{0}")]
    Malformed(String),
    /// Its routing header names another member than the one that sent it.
    #[error("its routing header names member {0} as the sender")]
    Spoofed(u32),
}

/// A frame whose routing header and message were checked.
#[derive(Debug)]
pub struct CheckedFrame {
    pub header: Header,
    /// The D-Bus message: the frame's own bytes, or the memfd's.
    pub message: Vec<u8>,
    /// The message came in a memfd: the first fd was it, the message's own fds follow.
    pub memfd: bool,
}

/// Checks a frame that member `sender` sent (as the kernel attests: its bound address)
/// with `fds`: a routing header naming `sender`, then the message, inline or in a sealed
/// memfd, of at most `max_message` bytes. Reads the memfd only after its seals and size
/// are checked.
pub fn check_frame(
    frame: &[u8],
    fds: &[OwnedFd],
    sender: u32,
    max_message: usize,
) -> Result<CheckedFrame, FrameError> {
    let header = Header::decode(frame)
        .map_err(|e| FrameError::Malformed(format!("bad routing header: {e}")))?;
    if header.sender != sender {
        return Err(FrameError::Spoofed(header.sender));
    }
    let rest = &frame[HEADER_LEN..];
    let memfd = header.routing & header::ROUTE_MEMFD != 0;
    let message = if memfd {
        sealed::announced(rest)
            .and_then(|len| {
                let fd = fds.first().ok_or(sealed::Error::Missing)?;
                sealed::open(fd.as_fd(), len, max_message)
            })
            .map_err(|e| FrameError::Malformed(format!("a large message's memfd: {e}")))?
    } else {
        if rest.len() > max_message {
            return Err(FrameError::Malformed(format!(
                "a message of {} bytes exceeds max_message_size",
                rest.len()
            )));
        }
        rest.to_vec()
    };
    // The descriptors that come with a frame are its message's (after the memfd that may
    // hold it), exactly as many as the message declares: a receiver that takes a message's
    // descriptors by the count it declares (libdbus does) would otherwise give one
    // message's descriptors to the next.
    if message.len() < busd_wire::message::FIXED_HEADER_SIZE {
        return Err(FrameError::Malformed(
            "a message shorter than its header".into(),
        ));
    }
    let declared = busd_wire::message::declared_unix_fds(&message) as usize;
    let carried = fds.len() - usize::from(memfd);
    if declared != carried {
        return Err(FrameError::Malformed(format!(
            "a message that declares {declared} descriptors came with {carried}"
        )));
    }
    Ok(CheckedFrame {
        header,
        message,
        memfd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use busd_wire::marshal::Endian;

    #[test]
    fn member_ids_follow_unique_names_and_only_canonical_spellings() {
        assert_eq!(member_of_unique(":1.0"), Some(1));
        assert_eq!(member_of_unique(":1.41"), Some(42));
        assert_eq!(unique_of_member(42), ":1.41");
        for bad in [
            ":1.01",
            ":1.+1",
            ":1.",
            ":2.3",
            "org.x",
            ":1.4294967294",
            ":1.4294967295",
        ] {
            assert_eq!(member_of_unique(bad), None, "{bad}");
        }
        assert_eq!(member_of_socket_name(&socket_name(7)), Some(7));
        for bad in [
            "07",
            "+7",
            " 7",
            "7 ",
            "",
            "0",
            "d7",
            "4294967295",
            "99999999999",
        ] {
            assert_eq!(member_of_socket_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_join_reply_reads_back_and_insists_on_its_handles() {
        let reply = JoinReply {
            member: 3,
            directory: "/run/user/0/busd-x".into(),
            slot: 9,
        };
        let mut w = Writer::new(Endian::Little);
        reply.encode(&mut w);
        let body = w.into_vec();
        let mut r = Reader::new(&body, Endian::Little, 0);
        assert_eq!(JoinReply::decode(&mut r), Ok(reply.clone()));
        // Handles other than 0, 1, 2, 3 are not what the daemon sends.
        let mut w = Writer::new(Endian::Little);
        w.u32(3);
        w.string("/d");
        for h in [0, 2, 1, 3] {
            w.u32(h);
        }
        w.u32(0);
        let body = w.into_vec();
        assert!(JoinReply::decode(&mut Reader::new(&body, Endian::Little, 0)).is_err());
    }

    #[test]
    fn frames_must_name_their_sender_and_respect_the_size_limit() {
        let fields = header::Fields {
            msg_type: 4,
            flags: 0,
            sender: 5,
            destination: 0,
            interface: None,
            member: None,
            path: None,
        };
        let mut head = [0u8; HEADER_LEN];
        header::encode(&fields, &[], &mut head);
        let mut frame = head.to_vec();
        frame.extend_from_slice(&[0u8; 100]);
        assert!(check_frame(&frame, &[], 5, 100).is_ok());
        assert!(matches!(
            check_frame(&frame, &[], 5, 99),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            check_frame(&frame, &[], 6, 100),
            Err(FrameError::Spoofed(5))
        ));
        // A memfd frame without its memfd.
        let mut frame = head.to_vec();
        frame[header::OFF_KIND as usize + 3] = header::ROUTE_MEMFD;
        frame.extend_from_slice(&sealed::reference(10));
        assert!(matches!(
            check_frame(&frame, &[], 5, 100),
            Err(FrameError::Malformed(_))
        ));
        assert!(check_frame(&frame[..HEADER_LEN - 1], &[], 5, 100).is_err());
    }

    #[test]
    fn a_frame_carries_the_descriptors_its_message_declares() {
        use busd_wire::message::{encode, HeaderFields, SIGNAL};
        let frame = |unix_fds| {
            let message = encode(
                Endian::Little,
                SIGNAL,
                0,
                1,
                &HeaderFields {
                    path: Some("/p"),
                    interface: Some("a.b"),
                    member: Some("C"),
                    unix_fds,
                    ..Default::default()
                },
                &[],
            );
            let mut head = [0u8; HEADER_LEN];
            header::encode(
                &header::Fields {
                    msg_type: SIGNAL,
                    flags: 0,
                    sender: 5,
                    destination: 0,
                    interface: Some("a.b"),
                    member: Some("C"),
                    path: Some("/p"),
                },
                &[],
                &mut head,
            );
            [&head[..], &message].concat()
        };
        let fd = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        assert!(check_frame(&frame(1), &[fd()], 5, 1000).is_ok());
        assert!(check_frame(&frame(0), &[], 5, 1000).is_ok());
        for (declared, fds) in [(1, vec![]), (0, vec![fd()]), (1, vec![fd(), fd()])] {
            assert!(
                matches!(
                    check_frame(&frame(declared), &fds, 5, 1000),
                    Err(FrameError::Malformed(_))
                ),
                "declared {declared}, carried {}",
                fds.len()
            );
        }
        let short = frame(0)[..HEADER_LEN + 15].to_vec();
        assert!(matches!(
            check_frame(&short, &[], 5, 1000),
            Err(FrameError::Malformed(_))
        ));
    }
}
