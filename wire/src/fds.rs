//! Unix fds travelling with a message (`SCM_RIGHTS`): one `recvmsg` that takes them in as
//! owned descriptors, and one `sendmsg` that passes them, for stream and datagram sockets.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrLike};

/// Most fds one `sendmsg` can carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_CALL: usize = 253;

/// What one [`recv`] took in.
#[derive(Debug)]
pub struct Received<S> {
    /// Bytes received; with `MSG_TRUNC` in the call's flags, the datagram's real length,
    /// which may exceed the buffer.
    pub len: usize,
    /// The kernel's flags for this message (`MSG_TRUNC`, `MSG_CTRUNC`).
    pub flags: MsgFlags,
    /// The descriptors that came with it, now owned by this process.
    pub fds: Vec<OwnedFd>,
    /// The sender's address, for a datagram socket that reports one.
    pub address: Option<S>,
    /// The sending process's pid as the kernel attests it (`SCM_CREDENTIALS`, on a socket
    /// with `SO_PASSCRED`), in this process's pid namespace (0: not visible from here).
    pub pid: Option<i32>,
}

/// One `recvmsg` into `buf`, with room for [`MAX_FDS_PER_CALL`] fds and the sender's
/// credentials. `MSG_CMSG_CLOEXEC` is always added: no descriptor a peer sends leaks into
/// a process the receiver spawns. Descriptors that did not fit (`MSG_CTRUNC` in the flags)
/// were closed by the kernel; the caller decides what the message is worth without them.
/// `EINTR` is retried; every other error, `EAGAIN` included, is returned.
pub fn recv<S: SockaddrLike>(
    fd: RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
) -> nix::Result<Received<S>> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_CALL], nix::libc::ucred);
    let mut iov = [IoSliceMut::new(buf)];
    loop {
        match socket::recvmsg::<S>(
            fd,
            &mut iov,
            Some(&mut cmsg),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                let mut pid = None;
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::ScmRights(raw) => {
                                // SAFETY: the kernel has just installed these descriptors
                                // in this process for us (SCM_RIGHTS); nothing else owns
                                // them.
                                fds.extend(
                                    raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                                );
                            }
                            ControlMessageOwned::ScmCredentials(c) => pid = Some(c.pid()),
                            _ => {}
                        }
                    }
                }
                return Ok(Received {
                    len: m.bytes,
                    flags: m.flags,
                    fds,
                    address: m.address,
                    pid,
                });
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One `sendmsg` of `data` with `fds` (no control message when there are none) to `addr`
/// (None on a connected socket). `MSG_NOSIGNAL` is always added; `EINTR` is retried.
pub fn send<S: SockaddrLike>(
    fd: RawFd,
    data: &[IoSlice<'_>],
    fds: &[RawFd],
    flags: MsgFlags,
    addr: Option<&S>,
) -> nix::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match socket::sendmsg(fd, data, cmsgs, flags | MsgFlags::MSG_NOSIGNAL, addr) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_with_their_bytes_and_arrive_owned() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, _q) = UnixStream::pair().unwrap();
        let raw = [p.as_raw_fd(), p.as_raw_fd()];
        let n = send::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"hello")],
            &raw,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(n, 5);
        let mut buf = [0u8; 16];
        let r = recv::<()>(b.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert_eq!(r.fds.len(), 2);
        assert!(!r.flags.contains(MsgFlags::MSG_CTRUNC));
        // Received close-on-exec, whatever the caller asked for.
        let fl = nix::fcntl::fcntl(r.fds[0].as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(fl & libc_cloexec(), 0);
        assert_eq!(
            recv::<()>(b.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap_err(),
            nix::errno::Errno::EAGAIN
        );
    }

    fn libc_cloexec() -> i32 {
        nix::fcntl::FdFlag::FD_CLOEXEC.bits()
    }
}
