//! Taking datagrams off the member socket several at a time: one `recvmmsg` takes what a
//! window of a fan-out left queued, where one `recvmsg` per datagram cost a system call
//! (and, to find the queue empty, one more) for each.
//!
//! A call takes at most [`Batch::slots`] datagrams, each into room for the largest frame
//! ([`header::MAX_INLINE`]). The count starts at one (a member that gets one datagram now
//! and then pays nothing more than before), doubles while calls fill every slot, up to
//! [`MOST`], and halves again after a run of calls that used a quarter of them or less.
//! The room is mapped memory that the kernel backs only where frames are written, and it
//! is given back whenever the count shrinks, and when the member has waited a while after
//! frames larger than a page ([`Batch::wait`]).
//!
//! Every datagram may carry up to [`MAX_FDS_PER_CALL`] descriptors, all installed by the one
//! call: a call of k slots may install k times that. Were the process to run out of
//! descriptors midway, a later datagram of the same call would lose its own, and with them
//! the message (a hostile member could send a few datagrams full of descriptors ahead of an
//! honest one). So the count never exceeds what the descriptors the process may still open
//! allow ([`slots_for_room`]), looked at when it grows and every [`RECHECK`] calls.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use busd_match::header;
use busd_wire::fds::MAX_FDS_PER_CALL;
use tracing::warn;

/// Most datagrams one call takes.
pub const MOST: usize = 16;

/// Calls in a row that used at most a quarter of the slots before their count halves.
const SPARSE_RUN: u32 = 64;

/// Calls between two looks at the descriptors the process may still open.
const RECHECK: u32 = 64;

/// Room for one frame.
const SLOT: usize = header::MAX_INLINE;

/// The smallest page: a frame longer than this wrote more than one page of its slot.
const PAGE: usize = 4096;

/// How long a member waits for datagrams before it gives back the pages of large frames.
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// One datagram, as the kernel handed it over.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub frame: &'a [u8],
    pub fds: Vec<OwnedFd>,
    /// The path the sender's socket is bound to (None: unbound, or an abstract name).
    pub source: Option<&'a Path>,
    /// The sending process (`SCM_CREDENTIALS`), as this process's pid namespace sees it.
    pub pid: Option<i32>,
    /// When the kernel queued it (`SCM_TIMESTAMPNS`, `CLOCK_REALTIME` in nanoseconds), if
    /// the socket asks for stamps.
    pub queued: Option<u64>,
}

/// Anonymous memory mapped for the frames: pages are backed only once written.
struct Room {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `Room` owns its mapping exclusively; nothing else refers to it.
unsafe impl Send for Room {}
// SAFETY: as for Send; `&Room` gives out only the pointer, written through `&mut Batch`.
unsafe impl Sync for Room {}

impl Room {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What one call reported for one datagram.
#[derive(Clone, Copy)]
struct Taken {
    len: usize,
    flags: libc::c_int,
    namelen: libc::socklen_t,
    controllen: usize,
}

/// The datagrams of the last call, handed out one at a time.
#[derive(Default)]
pub struct Batch {
    /// Datagrams the next call takes (0: 1).
    slots: usize,
    /// Datagrams `room`, `control` and `names` have room for.
    sized: usize,
    room: Option<Room>,
    /// Control data (`SCM_RIGHTS`, `SCM_CREDENTIALS`), [`control_space`] bytes per slot
    /// (u64s, for `cmsghdr`'s alignment).
    control: Vec<u64>,
    names: Vec<libc::sockaddr_un>,
    taken: Vec<Taken>,
    /// The next of `taken` to hand out.
    next: usize,
    /// Calls in a row that used at most a quarter of the slots.
    sparse: u32,
    /// Calls since the last look at the descriptors the process may still open.
    unchecked: u32,
    /// How that look is taken (None: [`descriptor_room`]; tests give their own).
    room_left: Option<fn() -> usize>,
    /// Frames since the room was last given back reached past the first page of a slot.
    spread: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("slots", &self.slots)
            .field("waiting", &(self.taken.len() - self.next))
            .finish()
    }
}

/// Control data room for one datagram: the most descriptors one call passes, and the
/// sender's credentials.
fn control_space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe {
        libc::CMSG_SPACE((MAX_FDS_PER_CALL * std::mem::size_of::<RawFd>()) as u32)
            + libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
            + libc::CMSG_SPACE(std::mem::size_of::<libc::timespec>() as u32)
    };
    (space as usize).next_multiple_of(8)
}

impl Batch {
    /// Datagrams the next call may take.
    pub fn slots(&self) -> usize {
        self.slots.max(1)
    }

    /// The slots the descriptors the process may still open allow.
    fn slots_left(&self) -> usize {
        self.room_left.map_or_else(descriptor_room, |f| f())
    }

    /// Whether datagrams of the last call wait to be handed out.
    pub fn waiting(&self) -> bool {
        self.next < self.taken.len()
    }

    /// Takes what the socket holds, up to [`Batch::slots`] datagrams, without waiting;
    /// only when the last call's are all handed out. `Ok(true)` when the call took fewer
    /// than it could (the queue is empty now), `Ok(false)` when it filled every slot;
    /// `WouldBlock` when nothing was there.
    pub fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        debug_assert!(!self.waiting());
        self.release();
        if self.slots > 1 {
            self.unchecked += 1;
            if self.unchecked >= RECHECK {
                self.unchecked = 0;
                self.slots = self.slots.min(self.slots_left());
            }
        }
        self.size()?;
        let slots = self.slots;
        let space = control_space();
        let room = self.room.as_ref().expect("sized");
        let mut iovs: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: slot `i` lies inside the mapping (`slots * SLOT` bytes).
                iov_base: unsafe { room.ptr.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            })
            .collect();
        let control = self.control.as_mut_ptr().cast::<u8>();
        let names = self.names.as_mut_ptr();
        let iov = iovs.as_mut_ptr();
        let mut headers: Vec<libc::mmsghdr> = (0..slots)
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is valid; every pointer set below is into a
                // buffer of this batch that outlives the call.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: `names` and `iovs` hold `slots` entries.
                h.msg_hdr.msg_name = unsafe { names.add(i) }.cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as _;
                // SAFETY: as above.
                h.msg_hdr.msg_iov = unsafe { iov.add(i) };
                h.msg_hdr.msg_iovlen = 1;
                // SAFETY: `control` holds `slots * space` bytes.
                h.msg_hdr.msg_control = unsafe { control.add(i * space) }.cast();
                h.msg_hdr.msg_controllen = space as _;
                h
            })
            .collect();
        let n = loop {
            // SAFETY: `headers` holds `slots` initialised mmsghdr whose buffers are live.
            let r = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    headers.as_mut_ptr(),
                    slots as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        };
        self.taken.clear();
        self.taken.extend(headers[..n].iter().map(|h| Taken {
            len: h.msg_len as usize,
            flags: h.msg_hdr.msg_flags,
            namelen: h.msg_hdr.msg_namelen,
            #[allow(clippy::unnecessary_cast)] // (socklen_t on other libcs)
            controllen: h.msg_hdr.msg_controllen as usize,
        }));
        self.next = 0;
        let drained = n < slots;
        self.spread |= self.taken.iter().any(|t| t.len > PAGE);
        self.adapt(n);
        Ok(drained)
    }

    /// The next datagram of the last call (None: all handed out). A truncated one (larger
    /// than any member's frame: not from a member) is dropped, and so is one whose
    /// descriptors did not all arrive (more than a datagram carries: not from a member).
    pub fn next(&mut self) -> Option<Datagram<'_>> {
        let (i, t, fds, pid, queued) = loop {
            let i = self.next;
            let t = *self.taken.get(i)?;
            self.next += 1;
            let (fds, pid, queued) = self.control_of(i, t.controllen);
            let why = if t.flags & libc::MSG_TRUNC != 0 {
                "is truncated"
            } else if t.flags & libc::MSG_CTRUNC != 0 {
                "lost descriptors that did not fit"
            } else {
                break (i, t, fds, pid, queued);
            };
            warn!(
                "dropped a frame from {:?} that {why}",
                self.source_of(i, t.namelen)
            );
        };
        let room = self.room.as_ref().expect("filled");
        // SAFETY: the kernel wrote `len` (at most SLOT) bytes into slot `i`, and the slice
        // lives as long as `self` is borrowed (the next `fill` needs `&mut`).
        let frame = unsafe { std::slice::from_raw_parts(room.ptr.add(i * SLOT), t.len) };
        Some(Datagram {
            frame,
            fds,
            source: self.source_of(i, t.namelen),
            pid,
            queued,
        })
    }

    /// The descriptors (now owned), the sender's pid and when the kernel queued the
    /// datagram, in slot `i`'s control data.
    fn control_of(&self, i: usize, controllen: usize) -> (Vec<OwnedFd>, Option<i32>, Option<u64>) {
        let space = control_space();
        let mut fds = Vec::new();
        let mut pid = None;
        let mut queued = None;
        // SAFETY: a msghdr over slot `i`'s control data, as the kernel filled it
        // (`controllen` bytes); CMSG_FIRSTHDR/NXTHDR stay within it, and each SCM_RIGHTS
        // descriptor was just installed in this process for us and is owned by nothing
        // else.
        unsafe {
            let mut m: libc::msghdr = std::mem::zeroed();
            m.msg_control = self.control.as_ptr().cast::<u8>().add(i * space) as *mut _;
            m.msg_controllen = controllen.min(space) as _;
            let mut c = libc::CMSG_FIRSTHDR(&m);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for k in 0..len / std::mem::size_of::<RawFd>() {
                            let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(k));
                            fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                        if len >= std::mem::size_of::<libc::ucred>() =>
                    {
                        pid = Some(std::ptr::read_unaligned(data.cast::<libc::ucred>()).pid);
                    }
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                        if len >= std::mem::size_of::<libc::timespec>() =>
                    {
                        let t = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                        queued = Some(
                            (t.tv_sec as u64)
                                .saturating_mul(1_000_000_000)
                                .saturating_add(t.tv_nsec as u64),
                        );
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&m, c);
            }
        }
        (fds, pid, queued)
    }

    /// The path slot `i`'s sender is bound to.
    fn source_of(&self, i: usize, namelen: libc::socklen_t) -> Option<&Path> {
        let a = &self.names[i];
        let offset = std::mem::size_of::<libc::sa_family_t>();
        let len = (namelen as usize)
            .checked_sub(offset)?
            .min(a.sun_path.len());
        // SAFETY: c_char and u8 have the same layout; `len` is within `sun_path`.
        let path: &[u8] = unsafe { std::slice::from_raw_parts(a.sun_path.as_ptr().cast(), len) };
        // A pathname address ends at its NUL; an abstract one starts with one.
        let path = path.split(|&b| b == 0).next()?;
        (!path.is_empty()).then(|| Path::new(OsStr::from_bytes(path)))
    }

    /// Waits for `readable`. A member that waits [`IDLE`] after frames larger than a page
    /// gives the pages they were written to back to the kernel meanwhile (a large frame
    /// later costs a page fault per page): a burst of large frames would otherwise keep up
    /// to [`MOST`] times [`SLOT`] resident in a member that then stays idle. Members that
    /// get small frames (one page per slot, which stays), or that are woken within
    /// [`IDLE`], pay nothing for it.
    pub async fn wait<F: std::future::Future<Output = io::Result<()>>>(
        &mut self,
        readable: F,
    ) -> io::Result<()> {
        if !self.spread || self.waiting() {
            return readable.await;
        }
        tokio::pin!(readable);
        tokio::select! {
            r = &mut readable => r,
            () = tokio::time::sleep(IDLE) => {
                self.give_back();
                readable.await
            }
        }
    }

    /// Gives the room's pages back, every frame in it having been handed out.
    fn give_back(&mut self) {
        debug_assert!(!self.waiting());
        self.spread = false;
        if let Some(room) = &self.room {
            // SAFETY: the whole mapping, whose frames have all been handed out and are no
            // longer borrowed (`next` takes `&mut self`); its contents are not read again
            // before the kernel writes the next frames.
            unsafe { libc::madvise(room.ptr.cast(), room.len, libc::MADV_DONTNEED) };
        }
    }

    /// Closes the descriptors of datagrams of the last call that were never handed out
    /// (there are none unless the batch is dropped midway).
    fn release(&mut self) {
        while self.next().is_some() {}
    }

    /// Makes room for `slots` datagrams.
    fn size(&mut self) -> io::Result<()> {
        let slots = self.slots();
        if self.sized == slots {
            return Ok(());
        }
        self.room = None;
        self.sized = 0;
        self.room = Some(Room::new(slots * SLOT)?);
        self.control = vec![0; slots * control_space() / 8];
        // SAFETY: an all-zero sockaddr_un is valid.
        self.names = vec![unsafe { std::mem::zeroed() }; slots];
        self.slots = slots;
        self.sized = slots;
        Ok(())
    }

    /// The count of slots for the next call, after one that took `n`.
    fn adapt(&mut self, n: usize) {
        if n == self.slots && self.slots < MOST {
            self.slots = (self.slots * 2).min(self.slots_left());
            self.sparse = 0;
        } else if self.slots > 1 && n * 4 <= self.slots {
            self.sparse += 1;
            if self.sparse >= SPARSE_RUN {
                self.slots /= 2;
                self.sparse = 0;
            }
        } else {
            self.sparse = 0;
        }
    }
}

/// The slots a call may have while the process can open `free` more descriptors: each slot
/// may bring [`MAX_FDS_PER_CALL`], and one slot is always allowed (as one `recvmsg` was).
pub fn slots_for_room(free: usize) -> usize {
    (free / MAX_FDS_PER_CALL).clamp(1, MOST)
}

/// [`slots_for_room`] for this process now: its soft `RLIMIT_NOFILE` less the descriptors
/// it has open (none free when either cannot be read).
fn descriptor_room() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
    let open = std::fs::read_dir("/proc/self/fd").map_or(usize::MAX, |d| d.count());
    slots_for_room(
        usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(open),
    )
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    fn pair(dir: &Path) -> (UnixDatagram, UnixDatagram) {
        let r = UnixDatagram::bind(dir.join("r")).unwrap();
        nix::sys::socket::setsockopt(&r, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        nix::sys::socket::setsockopt(&r, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .unwrap();
        let s = UnixDatagram::bind(dir.join("s")).unwrap();
        s.connect(dir.join("r")).unwrap();
        (r, s)
    }

    #[test]
    fn a_call_takes_what_is_queued_and_the_slots_follow_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let (r, s) = pair(dir.path());
        let mut b = Batch::default();
        b.room_left = Some(|| MOST);
        assert_eq!(
            b.fill(r.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // (The kernel queues at most `net.unix.max_dgram_qlen` datagrams, 10 by default.)
        let before = busd_match::table::realtime_ns();
        for i in 0..10u8 {
            s.send(&[i; 3]).unwrap();
        }
        let after = busd_match::table::realtime_ns();
        let mut got = Vec::new();
        let mut calls = Vec::new();
        loop {
            match b.fill(r.as_fd()) {
                Ok(drained) => calls.push((b.slots, drained)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            while let Some(d) = b.next() {
                assert_eq!(d.source, Some(dir.path().join("s").as_path()));
                assert_eq!(d.pid, Some(std::process::id() as i32));
                // Stamped as the kernel queued it, on the clock the table's departures use.
                let queued = d.queued.expect("a stamp");
                assert!(
                    before <= queued && queued <= after,
                    "{before} {queued} {after}"
                );
                assert!(d.fds.is_empty());
                got.push(d.frame.to_vec());
            }
        }
        let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 3]).collect();
        assert_eq!(got, want, "every datagram, in order");
        // 1, 2 and 4 taken, each call filling its slots, then 3 of 8: the queue is empty.
        assert_eq!(calls, [(2, false), (4, false), (8, false), (8, true)]);
        // A run of sparse calls halves the count.
        for _ in 0..SPARSE_RUN {
            s.send(b"x").unwrap();
            b.fill(r.as_fd()).unwrap();
            while b.next().is_some() {}
        }
        assert_eq!(b.slots, 4);
        // Never past what the descriptors the process may still open allow: looked at
        // every RECHECK calls (and whenever the count would grow).
        b.room_left = Some(|| 2);
        b.unchecked = RECHECK - 1;
        s.send(b"x").unwrap();
        b.fill(r.as_fd()).unwrap();
        assert_eq!(b.slots, 2);
    }

    /// A call never has more slots than the descriptors the process may still open allow
    /// for their worst case.
    #[test]
    fn the_slots_follow_the_descriptors_left() {
        assert_eq!(slots_for_room(0), 1);
        assert_eq!(slots_for_room(1024 - 60), 3);
        assert_eq!(slots_for_room(MAX_FDS_PER_CALL * 8), 8);
        assert_eq!(slots_for_room(1 << 20), MOST);
        // This process's room is at least what its limit leaves once its own are open.
        assert!(descriptor_room() >= 1);
    }

    #[test]
    fn descriptors_come_with_their_datagram_and_truncated_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (r, s) = pair(dir.path());
        let file = tempfile::tempfile().unwrap();
        let fds = [file.as_raw_fd()];
        busd_wire::fds::send::<()>(
            s.as_raw_fd(),
            &[io::IoSlice::new(b"one")],
            &fds,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        // Larger than any frame: not from a member.
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &(1 << 20)).unwrap();
        s.send(&vec![7; SLOT + 1]).unwrap();
        s.send(b"three").unwrap();
        let mut b = Batch::default();
        let mut got = Vec::new();
        while b.fill(r.as_fd()).is_ok() {
            while let Some(d) = b.next() {
                got.push((d.frame.to_vec(), d.fds.len()));
            }
        }
        assert_eq!(got, [(b"one".to_vec(), 1), (b"three".to_vec(), 0)]);
    }

    /// The kilobytes of the room that are resident (`mincore`).
    fn resident(b: &Batch) -> u64 {
        let room = b.room.as_ref().unwrap();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut pages = vec![0u8; room.len.div_ceil(page)];
        // SAFETY: `room` is a live mapping of `len` bytes (page-aligned, from mmap), and
        // `pages` has a byte for each of its pages.
        let r = unsafe { libc::mincore(room.ptr.cast(), room.len, pages.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        (pages.iter().filter(|p| *p & 1 != 0).count() * page / 1024) as u64
    }

    /// A member that waits after large frames gives their pages back; while frames keep
    /// coming, or when they were small, that costs nothing.
    #[tokio::test(start_paused = true)]
    async fn the_pages_of_large_frames_go_back_when_the_member_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (r, s) = pair(dir.path());
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &(1 << 20)).unwrap();
        let mut b = Batch::default();
        b.room_left = Some(|| MOST);
        b.slots = 4;
        s.send(&[1; 40_000]).unwrap();
        assert!(b.fill(r.as_fd()).unwrap());
        assert_eq!(b.next().unwrap().frame.len(), 40_000);
        assert!(b.next().is_none());
        assert!(resident(&b) >= 40);

        // Woken before IDLE: the pages stay.
        b.wait(async { Ok(()) }).await.unwrap();
        assert!(resident(&b) >= 40);
        let woken = tokio::time::timeout(IDLE / 2, b.wait(std::future::pending())).await;
        assert!(woken.is_err());
        assert!(resident(&b) >= 40, "not idle long enough");

        // Waiting longer: they go back.
        let woken = tokio::time::timeout(IDLE * 2, b.wait(std::future::pending())).await;
        assert!(woken.is_err());
        assert_eq!(resident(&b), 0);

        // Small frames only: nothing to give back, and no timer.
        s.send(b"small").unwrap();
        assert!(b.fill(r.as_fd()).unwrap());
        while b.next().is_some() {}
        assert!(!b.spread);
    }
}
