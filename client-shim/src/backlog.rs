//! Backlogs (DESIGN 5.3): per receiver whose queue is full, the frames that wait for room,
//! in order, and the service that sends them as the receiver reads.
//!
//! A receiver with a backlog gets every later frame through it too, so each sender's order
//! holds; the others are not held back. A backlog holds at most its bound
//! (`fastpath_backlog=`); past it a receiver gets dbus-daemon's outcome for a reader that
//! does not read (see [`Delivery::Rejected`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use nix::sys::socket::{MsgFlags, UnixAddr};
use tokio::io::Interest;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::fanout::{gone, send_to};
use crate::figures::Counters;
use crate::frame::Frame;
use crate::member::Member;

/// How much one receiver's backlog may hold unless the address says otherwise.
pub const DEFAULT_BACKLOG_BYTES: usize = 64 << 20;

/// What a descriptor that waits in a backlog counts against the bound, in bytes.
const DESCRIPTOR_CHARGE: usize = 64 << 10;

/// Descriptors that may wait in all of a connection's backlogs together (each frame's
/// counted, a broadcast's once per receiver): the process's own descriptor limit is
/// commonly 1024, and a receiver that does not read must not use it up.
const DESCRIPTORS_WAITING: usize = 256;

/// A frame on its way to members, with its descriptors.
pub struct Outgoing<'a> {
    pub frame: &'a Arc<Frame>,
    /// What travels with it: the memfd, if any, then the message's own (the caller's).
    pub raw: Vec<RawFd>,
    /// The message's own descriptors, duplicated once for all the backlogs that keep it.
    message_fds: &'a [RawFd],
    kept: Option<Arc<[OwnedFd]>>,
    /// The send it belongs to (causal order).
    pub send: u64,
}

impl<'a> Outgoing<'a> {
    pub fn new(frame: &'a Arc<Frame>, message_fds: &'a [RawFd], send: u64) -> Outgoing<'a> {
        Outgoing {
            frame,
            raw: frame.fds(message_fds),
            message_fds,
            kept: None,
            send,
        }
    }

    /// The message's descriptors for a backlog to keep (the caller's close after the send).
    fn kept(&mut self) -> io::Result<Arc<[OwnedFd]>> {
        if let Some(k) = &self.kept {
            return Ok(Arc::clone(k));
        }
        let k: Arc<[OwnedFd]> = dup_all(self.message_fds)?.into();
        self.kept = Some(Arc::clone(&k));
        Ok(k)
    }
}

/// What became of a frame for one receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Waits in the receiver's backlog.
    Queued,
    /// The receiver's socket is gone.
    Gone,
    /// The backlog is at its bound: a signal is not delivered to that receiver, a call
    /// fails with LimitsExceeded (counted in `rejected`).
    Rejected,
}

struct Waiting {
    frame: Arc<Frame>,
    fds: Arc<[OwnedFd]>,
    send: u64,
}

impl Waiting {
    /// The descriptors it holds: its message's, and the memfd the message is in.
    fn descriptors(&self) -> usize {
        self.fds.len() + usize::from(self.frame.in_memfd())
    }

    /// What it counts against its backlog's bound: the datagram, the message a memfd holds
    /// (its pages stay while it waits), and its descriptors.
    fn charge(&self) -> usize {
        let in_memfd = if self.frame.in_memfd() {
            self.frame.message_len() as usize
        } else {
            0
        };
        self.frame.size() + in_memfd + self.descriptors() * DESCRIPTOR_CHARGE
    }
}

#[derive(Default)]
struct Backlog {
    frames: VecDeque<Waiting>,
    bytes: usize,
}

/// A connection's backlogs, by receiver (part of its state).
#[derive(Default)]
pub struct Backlogs {
    queues: HashMap<u32, Backlog>,
    /// Descriptors held in all of them ([`DESCRIPTORS_WAITING`] at most).
    descriptors: usize,
}

impl Backlogs {
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn has(&self, receiver: u32) -> bool {
        self.queues.contains_key(&receiver)
    }

    /// Appends a frame to `receiver`'s backlog unless that would pass `bound` bytes, or
    /// the connection's [`DESCRIPTORS_WAITING`]. Returns whether the backlog starts with
    /// it, None when it is refused.
    fn push(&mut self, receiver: u32, w: Waiting, bound: usize) -> Option<bool> {
        let size = w.charge();
        let descriptors = w.descriptors();
        let b = self.queues.get(&receiver);
        if b.map_or(0, |b| b.bytes) + size > bound
            || self.descriptors + descriptors > DESCRIPTORS_WAITING
        {
            return None;
        }
        let starting = b.is_none();
        let b = self.queues.entry(receiver).or_default();
        b.bytes += size;
        b.frames.push_back(w);
        self.descriptors += descriptors;
        Some(starting)
    }

    /// The frame to send next to `receiver`.
    fn front(&self, receiver: u32) -> Option<(Arc<Frame>, Arc<[OwnedFd]>)> {
        let w = self.queues.get(&receiver)?.frames.front()?;
        Some((Arc::clone(&w.frame), Arc::clone(&w.fds)))
    }

    /// The front frame was sent: it leaves (and the backlog with its last frame). Returns
    /// the send it belonged to.
    fn pop(&mut self, receiver: u32) -> Option<u64> {
        let b = self.queues.get_mut(&receiver)?;
        let w = b.frames.pop_front()?;
        b.bytes -= w.charge();
        self.descriptors -= w.descriptors();
        if b.frames.is_empty() {
            self.queues.remove(&receiver);
        }
        Some(w.send)
    }

    /// Drops `receiver`'s backlog; returns the sends its frames belonged to.
    fn remove(&mut self, receiver: u32) -> Vec<u64> {
        let Some(b) = self.queues.remove(&receiver) else {
            return Vec::new();
        };
        self.descriptors -= b.frames.iter().map(Waiting::descriptors).sum::<usize>();
        b.frames.iter().map(|w| w.send).collect()
    }
}

impl Member {
    /// Sends a frame to `receiver` now if its queue has room and nothing waits for it,
    /// else puts it in its backlog.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        receiver: u32,
        out: &mut Outgoing<'_>,
    ) -> io::Result<Delivery> {
        if self.state().backlogs.has(receiver) {
            return self.queue(receiver, out);
        }
        let addr = self.address_of(receiver)?;
        match send_to(
            self.socket.as_fd(),
            &addr,
            out.frame,
            &out.raw,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(()) => Ok(Delivery::Sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.queue(receiver, out),
            Err(e) if gone(&e) => Ok(Delivery::Gone),
            Err(e) => Err(e),
        }
    }

    /// Appends a frame to `receiver`'s backlog (enlisting it with the service when it
    /// starts one), unless the backlog is at its bound.
    pub(crate) fn queue(
        self: &Arc<Self>,
        receiver: u32,
        out: &mut Outgoing<'_>,
    ) -> io::Result<Delivery> {
        let fds = out.kept()?;
        let w = Waiting {
            frame: Arc::clone(out.frame),
            fds,
            send: out.send,
        };
        let starting = {
            let mut s = self.state();
            let starting = s.backlogs.push(receiver, w, self.backlog_bound);
            if starting.is_some() {
                s.sends.backlogged(out.send);
            }
            starting
        };
        let Some(starting) = starting else {
            if self.counters.rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(
                    receiver,
                    bound = self.backlog_bound,
                    "a receiver's backlog is full: it is not reading (counted in `rejected`)"
                );
            }
            return Ok(Delivery::Rejected);
        };
        Counters::add(&self.counters.backlogged, 1);
        Counters::add(&self.counters.backlog_depth, 1);
        if starting {
            self.service.enlist(Arc::clone(self), receiver);
        }
        Ok(Delivery::Queued)
    }

    /// Sends `receiver`'s backlog in order until it is empty or the receiver's queue is
    /// full (WouldBlock). The state's lock is not held while sending: only the service
    /// takes frames off a backlog, and a frame leaves only once sent, so later frames
    /// still queue behind it meanwhile.
    fn send_front(&self, receiver: u32, addr: &UnixAddr) -> io::Result<()> {
        loop {
            let next = self.state().backlogs.front(receiver);
            let Some((frame, fds)) = next else {
                return Ok(());
            };
            let own: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            send_to(
                self.socket.as_fd(),
                addr,
                &frame,
                &frame.fds(&own),
                MsgFlags::MSG_DONTWAIT,
            )?;
            {
                let mut s = self.state();
                if let Some(send) = s.backlogs.pop(receiver) {
                    s.sends.left(send);
                    self.publish_completed(&s);
                }
            }
            self.counters.sent_direct(1, frame.message_len());
            self.counters.backlog_depth.fetch_sub(1, Ordering::Relaxed);
            self.figures.touched();
        }
    }

    /// What waited for `receiver` goes: it is gone (as the daemon drops what was queued for
    /// a connection that closed; callers waiting for a reply get NoReply), or it cannot be
    /// sent. Returns how many frames went.
    fn discard(&self, receiver: u32) -> usize {
        let sends = {
            let mut s = self.state();
            let sends = s.backlogs.remove(receiver);
            for &n in &sends {
                s.sends.left(n);
            }
            if !sends.is_empty() {
                self.publish_completed(&s);
            }
            sends
        };
        if sends.is_empty() {
            return 0;
        }
        self.figures.touched();
        self.counters
            .backlog_depth
            .fetch_sub(sends.len() as u64, Ordering::Relaxed);
        debug!(receiver, frames = sends.len(), "backlog dropped");
        sends.len()
    }

    /// Its backlog for `receiver` cannot be sent: not silently, it is counted as refused,
    /// and said.
    fn give_up(&self, receiver: u32, why: &dyn std::fmt::Display) {
        let lost = self.discard(receiver);
        Counters::add(&self.counters.rejected, lost as u64);
        warn!(receiver, lost, "cannot send a receiver its backlog: {why}");
    }
}

/// The backlog service of one tokio runtime: per receiver (its socket's path), the
/// backlogs of the runtime's connections that wait for room in its queue, in turn. One
/// task per receiver serves them: it waits for room, sends from the first backlog until
/// the queue is full again or that backlog is empty, and moves on to the next. Every
/// datagram a receiver reads wakes every socket waiting for it, so one waiter per receiver,
/// not one per sender, keeps a process of many connections from waking all of them for
/// every datagram read (1,000 connections in one process did not drain otherwise).
///
/// A connection belongs to the runtime it was built on (zbus runs its reader there, and
/// the shim joins there); its backlogs are served by that runtime's service, whose tasks
/// run on that runtime. When the runtime ends, its tasks are dropped and what they were
/// serving is given up ([`Serving`]); another runtime's connections never depend on them.
pub struct Service {
    handle: Handle,
    receivers: Mutex<HashMap<PathBuf, Turns>>,
}

/// The backlogs waiting for one receiver, and the task serving them.
struct Turns {
    server: u64,
    queue: VecDeque<(Arc<Member>, u32)>,
}

/// Every runtime's service, by runtime id. Process-wide only so that the connections of
/// one runtime find the same service; ids are never reused, and the entries are weak (a
/// service lives as long as a member of its runtime), so a service is never found from
/// another runtime, nor kept after its last member.
fn services() -> &'static Mutex<HashMap<tokio::runtime::Id, Weak<Service>>> {
    static S: OnceLock<Mutex<HashMap<tokio::runtime::Id, Weak<Service>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

impl Service {
    /// The service of the runtime the caller runs on.
    pub fn current() -> Arc<Service> {
        let handle = Handle::current();
        let id = handle.id();
        let mut all = services().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = all.get(&id).and_then(Weak::upgrade) {
            return s;
        }
        all.retain(|_, s| s.strong_count() > 0);
        let s = Arc::new(Service {
            handle,
            receivers: Mutex::default(),
        });
        all.insert(id, Arc::downgrade(&s));
        s
    }

    fn receivers(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Turns>> {
        self.receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `member` has just started a backlog for `receiver`: it takes its turn, and the task
    /// serving that receiver starts if none runs.
    fn enlist(self: &Arc<Self>, member: Arc<Member>, receiver: u32) {
        static SERVERS: AtomicU64 = AtomicU64::new(0);
        let path = member.path_of(receiver);
        let start = {
            let mut all = self.receivers();
            match all.get_mut(&path) {
                Some(turns) => {
                    turns.queue.push_back((member, receiver));
                    None
                }
                None => {
                    let server = SERVERS.fetch_add(1, Ordering::Relaxed);
                    let queue = VecDeque::from([(member, receiver)]);
                    all.insert(path.clone(), Turns { server, queue });
                    Some(server)
                }
            }
        };
        // Spawned without the lock: on a runtime that is shutting down, the task is dropped
        // at once, and [`Serving`] takes the lock.
        if let Some(server) = start {
            let serving = Serving {
                service: Arc::clone(self),
                path,
                server,
            };
            self.handle.spawn(serve(serving));
        }
    }
}

/// The task serving one receiver, as its future holds it. Dropped when the task ends: if
/// the task did not end by itself (its runtime shut down), the backlogs still in turn can
/// no longer be sent; they are given up, counted, rather than left waiting forever.
struct Serving {
    service: Arc<Service>,
    path: PathBuf,
    server: u64,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let left = {
            let mut all = self.service.receivers();
            match all.get(&self.path) {
                Some(t) if t.server == self.server => all.remove(&self.path),
                _ => None,
            }
        };
        for (member, receiver) in left.into_iter().flat_map(|t| t.queue) {
            member.give_up(receiver, &"the runtime serving it ended");
        }
    }
}

/// Serves the backlogs waiting for the receiver at `path` until none is left. It waits for
/// POLLOUT on a socket connected to the receiver (the kernel reports it when the receiver's
/// queue is not full), registered afresh each time, since the kernel arms the wake-up only
/// when asked while the queue is full. Without a descriptor to spare for that socket, it
/// checks every millisecond instead.
async fn serve(s: Serving) {
    let (service, path) = (&s.service, s.path.as_path());
    // The receiver left: everything waiting for it goes.
    let gone_all = || {
        let turns = service.receivers().remove(path);
        for (member, receiver) in turns.into_iter().flat_map(|t| t.queue) {
            member.discard(receiver);
        }
    };
    let addr = match UnixAddr::new(path) {
        Ok(a) => a,
        Err(e) => {
            warn!("no address for {}: {e}", path.display());
            return gone_all();
        }
    };
    let slot = WakerSlot::take();
    let mut waker = match slot.as_ref().map(|_| connected_to(path)) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) if gone(&e) => return gone_all(),
        Some(Err(e)) => {
            debug!("no socket to wait on for {} ({e}): polling", path.display());
            None
        }
    };
    loop {
        match waker.take() {
            Some(fd) => match wait_writable(fd).await {
                Ok(fd) => waker = Some(fd),
                Err(e) => debug!("cannot wait on {}: {e}: polling", path.display()),
            },
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        // Hand the room on: the first in turn sends until the queue is full again.
        // Senders in a row that could not send although the receiver had room (their own
        // send buffer is full: their datagrams wait to be read elsewhere).
        let mut stuck = 0;
        loop {
            let first = {
                let mut all = service.receivers();
                let Some(turns) = all.get_mut(path) else {
                    return;
                };
                match turns.queue.front() {
                    Some((m, r)) => (Arc::clone(m), *r),
                    None => {
                        all.remove(path);
                        return;
                    }
                }
            };
            let (member, receiver) = first;
            let r = member.send_front(receiver, &addr);
            if let Err(e) = &r {
                if gone(e) {
                    return gone_all();
                }
            }
            // Only this task takes entries off: the first is still `member`'s. On
            // WouldBlock it goes last; the number of senders in turn is returned.
            let senders = {
                let mut all = service.receivers();
                let Some(turns) = all.get_mut(path) else {
                    return;
                };
                let front = turns.queue.pop_front();
                match &r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        turns.queue.extend(front);
                        Some(turns.queue.len())
                    }
                    _ => None,
                }
            };
            match (r, senders) {
                (Ok(()), _) => stuck = 0,
                (Err(_), Some(senders)) => {
                    // If the receiver is full, wait for room; if not, it was the sender's
                    // own send buffer: the next sender goes on.
                    if waker.as_ref().is_none_or(|w| !writable_now(w)) {
                        break;
                    }
                    stuck += 1;
                    if stuck >= senders {
                        // Every sender's buffer is full: they drain as their other
                        // receivers read.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        stuck = 0;
                    }
                }
                (Err(e), None) => member.give_up(receiver, &e),
            }
        }
    }
}

/// Sockets waiting for room in a receiver's queue, one per receiver with backlogs in this
/// process, at most [`WakerSlot::max`] (each costs a descriptor: a quarter of the
/// process's limit, and no more than 4096); beyond the bound, backlogs are retried every
/// millisecond. Counted for the whole process, since descriptors are the process's.
struct WakerSlot;

static WAKERS: AtomicU64 = AtomicU64::new(0);

impl WakerSlot {
    fn max() -> u64 {
        static MAX: OnceLock<u64> = OnceLock::new();
        *MAX.get_or_init(|| {
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft);
            (soft / 4).clamp(16, 4096)
        })
    }

    fn take() -> Option<WakerSlot> {
        let max = Self::max();
        WAKERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WakerSlot)
    }
}

impl Drop for WakerSlot {
    fn drop(&mut self) {
        WAKERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Duplicates of the caller's fds (which stay open for the call), to keep.
pub fn dup_all(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    fds.iter()
        // SAFETY: the caller's fds are open for the duration of this call.
        .map(|&f| unsafe { BorrowedFd::borrow_raw(f) }.try_clone_to_owned())
        .collect()
}

/// A datagram socket connected to `path`, to wait for room in its queue.
fn connected_to(path: &Path) -> io::Result<OwnedFd> {
    let s = UnixDatagram::unbound()?;
    s.connect(path)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Whether the receiver `fd` is connected to has room in its queue now.
fn writable_now(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLOUT != 0
}

/// Waits until the receiver `fd` is connected to has room in its queue; gives `fd` back.
async fn wait_writable(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: the AsyncFd owns `fd`, which stays open, and the same descriptor, until
    // into_inner() gives it back.
    let afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)?;
    drop(afd.writable().await?);
    Ok(afd.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::tests::member;
    use crate::route::tests::message;
    use busd_wire::message::SIGNAL;

    fn frame(from: u32) -> Arc<Frame> {
        Arc::new(Frame::new(
            &message(SIGNAL, 0, Some(":1.1"), "Tick"),
            from,
            &busd_match::protocol::unique_of_member(from),
            2,
        ))
    }

    /// Delivers frames from `m` to member 2 until one has to wait in a backlog.
    fn fill(m: &Arc<Member>) {
        let f = frame(m.id);
        for n in 1.. {
            let mut out = Outgoing::new(&f, &[], n);
            match m.deliver(2, &mut out).unwrap() {
                Delivery::Sent => assert!(n < 10_000, "the receiver's queue never filled"),
                Delivery::Queued => return,
                d => panic!("{d:?}"),
            }
        }
    }

    /// A connection's backlog is served whatever became of another runtime whose
    /// connection had a backlog for the same receiver first (the service that served that
    /// one ended with its runtime).
    #[test]
    fn a_backlog_drains_after_another_runtime_with_one_for_the_same_receiver_ended() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = UnixDatagram::bind(dir.path().join("2")).unwrap();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = runtime();
        let a = first.block_on(async {
            let a = member(dir.path(), 1);
            fill(&a);
            a
        });
        drop(first);
        // What the ended runtime was serving was given up, and said so.
        assert_eq!(a.counters.rejected.load(Ordering::Relaxed), 1);
        let second = runtime();
        second.block_on(async {
            let b = member(dir.path(), 3);
            fill(&b);
            receiver.set_nonblocking(true).unwrap();
            let from_b = tokio::time::timeout(Duration::from_secs(10), async {
                let mut buf = [0u8; 4096];
                loop {
                    match receiver.recv_from(&mut buf) {
                        Ok((_, addr)) if addr.as_pathname() == Some(&dir.path().join("3")) => {
                            return
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            });
            from_b
                .await
                .expect("the second runtime's backlog was never served");
            assert_eq!(b.counters.backlog_depth.load(Ordering::Relaxed), 0);
            // The first connection, used after its runtime ended: what it cannot send is
            // given up at once and counted, never left waiting.
            fill(&a);
            assert_eq!(a.counters.rejected.load(Ordering::Relaxed), 2);
            assert_eq!(a.counters.backlog_depth.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn a_backlog_takes_frames_up_to_its_bound_and_gives_them_back_in_order() {
        let mut b = Backlogs::default();
        let f = frame(1);
        let w = |send| Waiting {
            frame: Arc::clone(&f),
            fds: Arc::new([]),
            send,
        };
        let bound = 2 * f.size();
        assert_eq!(b.push(2, w(1), bound), Some(true));
        assert_eq!(b.push(2, w(2), bound), Some(false));
        assert_eq!(b.push(2, w(3), bound), None, "at the bound");
        assert_eq!(
            b.push(3, w(3), bound),
            Some(true),
            "another receiver's own bound"
        );
        assert!(b.has(2) && b.front(2).is_some());
        assert_eq!(b.pop(2), Some(1));
        assert_eq!(b.push(2, w(4), bound), Some(false), "room again");
        assert_eq!(b.pop(2), Some(2));
        assert_eq!(b.pop(2), Some(4));
        assert!(!b.has(2), "an empty backlog goes");
        assert_eq!(b.remove(3), [3]);
        assert!(b.is_empty());
    }

    /// A frame whose message is in a memfd is a short datagram, but the message's pages
    /// and the memfd stay while it waits: they count. So do descriptors, for all the
    /// backlogs together (a member that never reads what it is given back must not use up
    /// this process's descriptors).
    #[test]
    fn a_backlog_counts_what_a_frame_holds_not_just_its_datagram() {
        let memfd = |len: u64| {
            let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            Arc::new(Frame::given_back(vec![0; 104], Some(fd), len))
        };
        let w = |frame: Arc<Frame>, send| Waiting {
            frame,
            fds: Arc::new([]),
            send,
        };
        let mut b = Backlogs::default();
        let bound = DEFAULT_BACKLOG_BYTES;
        let big = memfd(40 << 20);
        assert_eq!(b.push(2, w(Arc::clone(&big), 1), bound), Some(true));
        assert_eq!(
            b.push(2, w(big, 2), bound),
            None,
            "two messages of 40 MiB pass a bound of 64 MiB"
        );
        assert_eq!(b.pop(2), Some(1));
        assert_eq!(b.descriptors, 0);
        let mut held = 0;
        for receiver in 0.. {
            if b.push(receiver % 7, w(memfd(100), receiver.into()), bound)
                .is_none()
            {
                break;
            }
            held += 1;
        }
        assert_eq!(held, DESCRIPTORS_WAITING);
        assert_eq!(b.descriptors, DESCRIPTORS_WAITING);
        for receiver in 0..7 {
            b.remove(receiver);
        }
        assert_eq!(b.descriptors, 0);
        assert!(b.push(1, w(memfd(100), 0), bound).is_some(), "room again");
    }
}
