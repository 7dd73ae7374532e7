//! Room to write, watched in an epoll set of its own.
//!
//! Every connection's socket is in this set for `EPOLLOUT`, edge-triggered, for its whole
//! life; the set itself is in the event loop's poll for input. So the bus learns, with no
//! `epoll_ctl` per change, when a connection whose output waits can take more, and it is
//! woken whenever a client reads what it was sent. It is a set of its own, not the
//! connections' interest in the main poll, because in the main poll a connection made
//! ready by room to write would keep its place on epoll's ready list, and its input,
//! arriving later, would then be served before input other connections sent earlier:
//! dbus's test-dbus-daemon /limits/max-replies-per-connection hangs on that. Here the
//! order in which connections' input is served stays the order it arrived in.
//!
//! Being woken when a client reads costs the bus one wake-up and one system call (this
//! set's `epoll_wait`). On a machine where waking an idle processor is dear (a virtual
//! machine without halt polling, where it takes an inter-processor interrupt), it saves
//! more than it costs: a bus that wakes as its clients read is still awake when their
//! next message comes, and wakes them before their processors halt. dbus-broker, which
//! registers every socket for output once, gets the same. docs/benchmarks.md has the
//! figures.

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

    /// Watches connection `id`'s socket until it is closed (closing it leaves the set).
    pub fn watch(&self, socket: RawFd, id: PeerId) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLOUT | libc::EPOLLET) as u32,
            u64: id,
        };
        // SAFETY: `event` is a valid epoll_event alive for the call.
        let r = unsafe { libc::epoll_ctl(self.fd(), libc::EPOLL_CTL_ADD, socket, &mut event) };
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

    /// A connection is reported once when watched (it has room) and again each time its
    /// peer reads, and not while nothing happens.
    #[test]
    fn room_is_reported_when_the_peer_reads() {
        let space = WriteSpace::new().unwrap();
        let (mut ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        space.watch(ours.as_raw_fd(), 7).unwrap();
        let taken = || {
            let mut ids = Vec::new();
            space.take(|id| ids.push(id));
            ids
        };
        assert_eq!(taken(), [7]);
        assert_eq!(taken(), []);
        ours.write_all(b"hello").unwrap();
        assert_eq!(taken(), []);
        let mut buf = [0; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(taken(), [7]);
        assert_eq!(taken(), []);
    }
}
