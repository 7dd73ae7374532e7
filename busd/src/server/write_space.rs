//! Room to write, watched in an epoll set of its own.
//!
//! Every connection's socket is in this set, edge-triggered, for its whole life; the set
//! itself is in the event loop's poll for input. A connection asks for `EPOLLOUT` there
//! ("armed") while its output waits for room, and while what it was last sent asks for an
//! answer (a method call or a reply, rather than signals only): then the bus is woken as
//! the client reads it. It is a set of its own, not the connections' interest in the main poll,
//! because in the main poll a connection made ready by room to write keeps its place on
//! epoll's ready list, and its input, arriving later, would then be served before input
//! other connections sent earlier: dbus's test-dbus-daemon
//! /limits/max-replies-per-connection hangs on that. Here the order in which
//! connections' input is served stays the order it arrived in.
//!
//! Being woken as a client reads costs the bus a wake-up and a system call (this set's
//! `epoll_wait`). Where waking an idle processor is dear (a virtual machine without halt
//! polling, where it takes an inter-processor interrupt) it saves more than it costs in a
//! conversation: a bus woken as its peer reads a call is awake when the answer comes, and
//! wakes the caller before its processor halts. For signals it only costs (a subscriber
//! answers nothing), so a connection that was last sent signals only is not armed.
//! dbus-broker registers every socket for output once, signals included. The figures are
//! in docs/benchmarks.md.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::bus::PeerId;

/// Events one `epoll_wait` takes.
const BATCH: usize = 64;

pub struct WriteSpace {
    epoll: OwnedFd,
}

impl WriteSpace {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor epoll_create1 has just returned, owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(WriteSpace { epoll })
    }

    /// The set's descriptor, readable while room to write was reported.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Watches connection `id`'s socket until it is closed (closing it leaves the set),
    /// not armed.
    pub fn watch(&self, socket: RawFd, id: PeerId) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, socket, id, false)
    }

    /// Arms (reports room to write) or disarms connection `id`'s socket. Arming a socket
    /// that has room reports it at once.
    pub fn arm(&self, socket: RawFd, id: PeerId, armed: bool) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, socket, id, armed)
    }

    fn control(&self, op: libc::c_int, socket: RawFd, id: PeerId, armed: bool) -> io::Result<()> {
        let out = if armed { libc::EPOLLOUT } else { 0 };
        let mut event = libc::epoll_event {
            events: (out | libc::EPOLLET) as u32,
            u64: id,
        };
        // SAFETY: `event` is a valid epoll_event alive for the call.
        let r = unsafe { libc::epoll_ctl(self.fd(), op, socket, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Calls `room` for each connection reported since the last call, without waiting.
    pub fn take(&self, mut room: impl FnMut(PeerId)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: `events` holds BATCH entries the kernel may write.
            let n = unsafe {
                libc::epoll_wait(self.fd(), events.as_mut_ptr(), BATCH as libc::c_int, 0)
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for e in &events[..n as usize] {
                room(e.u64);
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An armed connection is reported once armed (it has room) and again each time its
    /// peer reads, and not while nothing happens; a disarmed one, never.
    #[test]
    fn room_is_reported_when_the_peer_reads_only_while_armed() {
        let space = WriteSpace::new().unwrap();
        let (mut ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        space.watch(fd, 7).unwrap();
        let taken = || {
            let mut ids = Vec::new();
            space.take(|id| ids.push(id));
            ids
        };
        let mut exchange = || {
            ours.write_all(b"hello").unwrap();
            let mut buf = [0; 5];
            peer.read_exact(&mut buf).unwrap();
        };
        assert_eq!(taken(), []);
        exchange();
        assert_eq!(taken(), [], "not armed");
        space.arm(fd, 7, true).unwrap();
        assert_eq!(taken(), [7]);
        assert_eq!(taken(), []);
        exchange();
        assert_eq!(taken(), [7]);
        assert_eq!(taken(), []);
        space.arm(fd, 7, false).unwrap();
        exchange();
        assert_eq!(taken(), [], "disarmed");
    }
}
