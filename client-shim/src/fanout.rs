//! Sending frames: one datagram (`sendmsg`), a broadcast to many members in one `sendmmsg`
//! that goes on past a full receiver (whose frame waits in its backlog) and past one that
//! left, and the send to the daemon's inbox that waits in the kernel rather than drop.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use busd_wire::fds;
use nix::sys::socket::{MsgFlags, UnixAddr};
use tracing::debug;

use crate::backlog::Outgoing;
use crate::frame::Frame;
use crate::member::Member;

impl Member {
    /// A broadcast to several members: one `sendmmsg` to every receiver without a backlog,
    /// continued past a receiver whose queue is full (that one gets the frame through its
    /// backlog), past one that left, and never waiting.
    pub(crate) fn fan_out(
        self: &Arc<Self>,
        members: &[u32],
        out: &mut Outgoing<'_>,
    ) -> io::Result<()> {
        // One look at the backlogs for the whole broadcast (usually there are none).
        let (waiting, now): (Vec<u32>, Vec<u32>) = {
            let s = self.state();
            if s.backlogs.is_empty() {
                (Vec::new(), members.to_vec())
            } else {
                members.iter().partition(|&&m| s.backlogs.has(m))
            }
        };
        for m in waiting {
            self.queue(m, out)?;
        }
        let addrs = now
            .iter()
            .map(|&m| self.address_of(m))
            .collect::<io::Result<Vec<_>>>()?;
        let mut i = 0;
        while i < addrs.len() {
            match send_batch(self.socket.as_fd(), &addrs[i..], out.frame, &out.raw) {
                Ok(n) => {
                    self.counters.sent_direct(n as u64, out.frame.message_len());
                    i += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.queue(now[i], out)?;
                    i += 1;
                }
                Err(e) if gone(&e) => {
                    debug!(member = now[i], "member gone");
                    i += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One frame to the daemon's inbox, on this member's end of the pair (frames for
    /// members go through [`Member::deliver`]). When that end's send buffer is full the
    /// send waits in the kernel, on a thread of the blocking pool: nothing is dropped.
    pub(crate) async fn send_to_daemon(
        self: &Arc<Self>,
        frame: &Arc<Frame>,
        raw: &[RawFd],
    ) -> io::Result<()> {
        match send_on(self.inbox.as_fd(), frame, raw, MsgFlags::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        let owned = crate::backlog::dup_all(raw)?;
        let (member, frame) = (Arc::clone(self), Arc::clone(frame));
        tokio::task::spawn_blocking(move || {
            let raw: Vec<RawFd> = owned.iter().map(|f| f.as_raw_fd()).collect();
            send_on(member.inbox.as_fd(), &frame, &raw, MsgFlags::empty())
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// One sendmsg() of a frame with SCM_RIGHTS on a connected socket; `flags` as for
/// [`send_to`].
fn send_on(
    socket: BorrowedFd<'_>,
    frame: &Frame,
    fds: &[RawFd],
    flags: MsgFlags,
) -> io::Result<()> {
    fds::send(
        socket.as_raw_fd(),
        &frame.iov(),
        fds,
        flags,
        None::<&UnixAddr>,
    )?;
    Ok(())
}

/// One sendmsg() of a frame with SCM_RIGHTS; `flags` adds MSG_DONTWAIT or not (the socket
/// itself is blocking: see `crate::join`).
pub fn send_to(
    socket: BorrowedFd<'_>,
    addr: &UnixAddr,
    frame: &Frame,
    fds: &[RawFd],
    flags: MsgFlags,
) -> io::Result<()> {
    fds::send(socket.as_raw_fd(), &frame.iov(), fds, flags, Some(addr))?;
    Ok(())
}

/// Whether a send failed because the receiver cannot be reached directly: its socket is
/// gone (it left: its name is removed and the daemon shuts the socket down, EPIPE for a
/// sender that found the name just before), or it refuses datagrams from others (a
/// socket `connect`ed elsewhere: EPERM; a name made unwritable, or not a datagram socket).
/// A message for it then goes through the daemon, a broadcast skips it: what one receiver
/// does to its own socket never fails a send to the others.
pub fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ENOENT
                | libc::EPIPE
                | libc::EPERM
                | libc::EACCES
                | libc::EPROTOTYPE
                | libc::ENOTSOCK
        )
    )
}

/// Whether a send failed because the frame is larger than a datagram may be (it then takes
/// the stream).
pub fn too_large(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMSGSIZE) | Some(libc::ENOBUFS))
}

/// One sendmmsg() of the same frame (and fds) to each address, without waiting: returns
/// how many were sent before the first that could not be, or the first one's error.
pub fn send_batch(
    socket: BorrowedFd<'_>,
    addrs: &[UnixAddr],
    frame: &Frame,
    fds: &[RawFd],
) -> io::Result<usize> {
    use nix::sys::socket::SockaddrLike;
    let addrs = &addrs[..addrs.len().min(1024)];
    // SCM_RIGHTS control data, shared by every message of the batch.
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE only computes a size.
        (unsafe { libc::CMSG_SPACE(fd_bytes) }) as usize
    };
    let mut control = vec![0u64; space.div_ceil(8)];
    if !fds.is_empty() {
        // SAFETY: `control` is CMSG_SPACE(fd_bytes) bytes, aligned for cmsghdr; the header
        // and data written stay inside it.
        unsafe {
            let c = control.as_mut_ptr().cast::<libc::cmsghdr>();
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                fd_bytes as usize,
            );
        }
    }
    // The frame's two parts, shared by every message of the batch (the kernel only reads
    // them: IoSlice has iovec's layout).
    let parts = frame.iov();
    let mut headers: Vec<libc::mmsghdr> = addrs
        .iter()
        .map(|a| {
            // SAFETY: an all-zero msghdr is valid; the fields set point at data that
            // outlives the call (addresses, the iovecs, the control buffer).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len();
            h.msg_hdr.msg_iov = parts.as_ptr() as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = parts.len();
            if space > 0 {
                h.msg_hdr.msg_control = control.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = space as _;
            }
            h
        })
        .collect();
    loop {
        // SAFETY: `headers` holds `len` initialised mmsghdr pointing at live buffers.
        let r = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The first receiver's error (EAGAIN: its queue is full; ECONNREFUSED, ENOENT,
            // EPIPE: it left); a later one's is reported when the batch resumes from it.
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::message;
    use busd_match::header::HEADER_LEN;
    use busd_wire::message::SIGNAL;
    use std::os::unix::net::UnixDatagram;

    /// A receiver that connects its socket elsewhere refuses everyone else's datagrams
    /// (the kernel says EPERM): it counts as unreachable, and the broadcast goes on.
    /// A sender (member 1) and two receivers (2 and 3) in a directory, a Ping from member 1
    /// and the receivers' addresses.
    struct Two {
        dir: tempfile::TempDir,
        sender: UnixDatagram,
        receivers: [UnixDatagram; 2],
        msg: busd_wire::Message,
        frame: Frame,
        addrs: Vec<UnixAddr>,
    }

    fn two() -> Two {
        let dir = tempfile::tempdir().unwrap();
        let bind = |n: &str| UnixDatagram::bind(dir.path().join(n)).unwrap();
        let (sender, receivers) = (bind("1"), [bind("2"), bind("3")]);
        let msg = message(SIGNAL, 0, None, "Ping");
        let frame = Frame::new(&msg, 1, ":1.0", 0);
        let addrs = ["2", "3"]
            .iter()
            .map(|n| UnixAddr::new(&dir.path().join(n)).unwrap())
            .collect();
        Two {
            dir,
            sender,
            receivers,
            msg,
            frame,
            addrs,
        }
    }

    #[test]
    fn a_receiver_that_refuses_others_is_unreachable_not_an_error() {
        let Two {
            dir,
            sender,
            receivers: [refuser, honest],
            frame,
            addrs,
            msg: _,
        } = two();
        let _elsewhere = UnixDatagram::bind(dir.path().join("9")).unwrap();
        refuser.connect(dir.path().join("9")).unwrap();
        let e = send_batch(sender.as_fd(), &addrs, &frame, &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(gone(&e), "{e}");
        assert_eq!(
            send_batch(sender.as_fd(), &addrs[1..], &frame, &[]).unwrap(),
            1
        );
        let mut buf = vec![0u8; 4096];
        assert_eq!(honest.recv(&mut buf).unwrap(), frame.size());
    }

    #[test]
    fn a_batch_gathers_the_frame_for_each_receiver_and_stops_at_a_full_one() {
        let Two {
            dir: _dir,
            sender,
            receivers: [a, b],
            msg,
            frame,
            addrs,
        } = two();
        assert_eq!(send_batch(sender.as_fd(), &addrs, &frame, &[]).unwrap(), 2);
        let mut buf = vec![0u8; 4096];
        for r in [&a, &b] {
            let n = r.recv(&mut buf).unwrap();
            assert_eq!(n, frame.size());
            assert_eq!(&buf[HEADER_LEN..n], &msg.forwarded(":1.0")[..]);
        }
        // Fill the first receiver's queue: the batch reports EAGAIN for it, having sent
        // nothing (the caller queues that one and resumes after it).
        let mut sent = 0;
        loop {
            match send_batch(sender.as_fd(), &addrs[..1], &frame, &[]) {
                Ok(n) => sent += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
            assert!(sent < 100_000);
        }
        // A receiver the daemon shut down as it left (its name still there): gone too.
        nix::sys::socket::shutdown(b.as_raw_fd(), nix::sys::socket::Shutdown::Both).unwrap();
        let e = send_batch(sender.as_fd(), &addrs[1..], &frame, &[]).unwrap_err();
        assert!(gone(&e), "{e}");
        drop(b);
        let e = send_batch(sender.as_fd(), &addrs[1..], &frame, &[]).unwrap_err();
        assert!(gone(&e), "{e}");
    }
}
