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
//!
//! Which connections had room is read out of the set (its own `epoll_wait`) only while
//! some connection's output waits for room: otherwise being woken is all the bus wants,
//! and the reports stay in the set. (The set is edge-triggered in the main poll, so each
//! new report wakes the bus again however many wait unread; closing a socket takes its
//! report out.) In a conversation that spares the bus a system call per wake-up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::bus::{IdMap, PeerId};

/// Events one `epoll_wait` takes.
const BATCH: usize = 64;

pub struct WriteSpace {
    epoll: OwnedFd,
    /// Connections whose output waits for room.
    blocked: IdMap<PeerId, ()>,
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
        Ok(WriteSpace {
            epoll,
            blocked: IdMap::default(),
        })
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

    /// Notes whether connection `id`'s output waits for room (after a flush; false once it
    /// is closed).
    pub fn blocked(&mut self, id: PeerId, blocked: bool) {
        if blocked {
            self.blocked.insert(id, ());
        } else {
            self.blocked.remove(&id);
        }
    }

    /// Calls `room` for each connection reported since the last call, without waiting;
    /// nothing while no connection's output waits for room (the reports are then left in
    /// the set, and come out with the next that matters).
    pub fn take(&self, room: impl FnMut(PeerId)) {
        if !self.blocked.is_empty() {
            self.take_all(room);
        }
    }

    fn take_all(&self, mut room: impl FnMut(PeerId)) {
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
            space.take_all(|id| ids.push(id));
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

    /// What the bus relies on when it leaves reports unread: the set, edge-triggered in an
    /// outer poll, wakes that poll at each new report, however many wait unread in it.
    #[test]
    fn each_report_wakes_the_outer_poll_though_none_was_read() {
        let mut space = WriteSpace::new().unwrap();
        // SAFETY: epoll_create1 has no memory arguments.
        let outer = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 1,
        };
        // SAFETY: `event` is a valid epoll_event alive for the call.
        let r = unsafe {
            libc::epoll_ctl(
                outer.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                space.fd(),
                &mut event,
            )
        };
        assert_eq!(r, 0);
        let woken = || {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: `events` holds 4 entries the kernel may write.
            unsafe { libc::epoll_wait(outer.as_raw_fd(), events.as_mut_ptr(), 4, 0) }
        };
        let (mut ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        space.watch(fd, 7).unwrap();
        space.arm(fd, 7, true).unwrap();
        assert_eq!(woken(), 1, "armed with room");
        for _ in 0..3 {
            assert_eq!(woken(), 0);
            ours.write_all(b"call").unwrap();
            let mut buf = [0; 4];
            peer.read_exact(&mut buf).unwrap();
            assert_eq!(
                woken(),
                1,
                "the peer read, and nothing was taken out of the set"
            );
        }
        // Nothing waits for room: nothing is read out of the set, and the report stays.
        let mut ids = Vec::new();
        space.take(|id| ids.push(id));
        assert_eq!(ids, []);
        space.blocked(7, true);
        space.take(|id| ids.push(id));
        assert_eq!(ids, [7]);
    }
}
