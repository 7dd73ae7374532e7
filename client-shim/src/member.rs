//! A joined member: its datagram socket, the routing table it maps, and the frames it
//! sends and takes in (`docs/fastpath-protocol.md`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use busd_match::header::{self, Fields, HEADER_LEN, TO_DAEMON};
use busd_match::progress;
use busd_match::protocol::{self, FrameError};
use busd_match::sealed;
use busd_match::shm::Mapping;
use busd_match::table::{self, Table};
use busd_match::{Arg, MatchRule, MessageInfo};
use busd_wire::errors::ErrorName;
use busd_wire::fds;
use busd_wire::message::{Message, METHOD_CALL, SIGNAL};
use nix::sys::socket::{self, MsgFlags, UnixAddr};
use std::collections::{HashMap, VecDeque};
use tokio::io::Interest;
use tracing::{debug, warn};

/// What the shim counts (per connection; see [`crate::stats`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// The connection's unique name, once it joined.
    pub unique: std::sync::OnceLock<String>,
    /// The bus's GUID, from the authentication.
    pub guid: std::sync::OnceLock<String>,
    /// Frames sent straight to another member (each destination counts).
    pub direct: AtomicU64,
    /// Messages sent to the daemon on the member's inbox.
    pub via_daemon: AtomicU64,
    /// Messages that could not go as frames (no memfd could be made for a large one),
    /// sent on the stream connection instead.
    pub via_stream: AtomicU64,
    /// Messages sent in a sealed memfd (larger than [`MEMFD_ABOVE`]), once however many
    /// receivers they have.
    pub large: AtomicU64,
    /// Frames received from other members and handed to zbus.
    pub received: AtomicU64,
    /// Frames dropped because they lied about their sender.
    pub spoofed: AtomicU64,
    /// Frames dropped because they were not well formed (routing header, message, or a
    /// memfd that is not sealed or not of the announced size).
    pub malformed: AtomicU64,
    /// Broadcasts the kernel filter let through that no rule of this member matches.
    pub filtered: AtomicU64,
    /// Messages for a name this member no longer owns, passed on to the daemon.
    pub forwarded: AtomicU64,
    /// Frames that waited in a backlog because their receiver's queue was full.
    pub backlogged: AtomicU64,
    /// Frames a receiver did not get because its backlog was at its bound (signals are
    /// dropped for it, calls answered with LimitsExceeded, as dbus-daemon does with a
    /// reader that does not read).
    pub rejected: AtomicU64,
    /// Frames in backlogs now, over all receivers.
    pub backlog_depth: AtomicU64,
    /// Sends that first waited for a member whose message this one had received to reach
    /// all its receivers (causal order, DESIGN 5.5).
    pub causal_waits: AtomicU64,
    /// Such waits given up after [`CAUSAL_WAIT`]: that member's send had not reached a
    /// receiver that long (one that does not read).
    pub causal_timeouts: AtomicU64,
    /// Broadcasts sent directly.
    pub fan_outs: AtomicU64,
    /// Receivers broadcasts did not go to, since their interest summary rules them out
    /// (the kernel filters of those that do get a broadcast drop what their rules cannot
    /// want; the kernel counts none of that).
    pub skipped: AtomicU64,
    /// Bytes of the messages in `direct` (each receiver counts).
    pub direct_bytes: AtomicU64,
    /// Bytes of the messages in `received`.
    pub received_bytes: AtomicU64,
}

impl Counters {
    /// A frame reached `receivers` more members directly.
    fn sent_direct(&self, receivers: u64, frame: &[u8]) {
        self.direct.fetch_add(receivers, Ordering::Relaxed);
        self.direct_bytes
            .fetch_add(receivers * message_len(frame), Ordering::Relaxed);
    }

    /// The figures in the order the progress memory holds them
    /// ([`busd_match::progress::FIGURES`]).
    pub fn figures(&self) -> [u64; progress::FIGURES.len()] {
        [
            &self.direct,
            &self.direct_bytes,
            &self.via_daemon,
            &self.via_stream,
            &self.large,
            &self.fan_outs,
            &self.skipped,
            &self.received,
            &self.received_bytes,
            &self.spoofed,
            &self.malformed,
            &self.filtered,
            &self.forwarded,
            &self.backlogged,
            &self.rejected,
            &self.backlog_depth,
            &self.causal_waits,
            &self.causal_timeouts,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Publishes every member's figures in its progress slot, for the daemon's Debug.Stats and
/// busd-top: a thread of its own (whatever runtime the connections use), woken when
/// figures change and publishing at most every [`PUBLISH_EVERY`]; an idle process is not
/// woken at all.
struct Publisher {
    members: Mutex<Vec<(std::sync::Weak<Counters>, std::sync::Weak<Progress>)>>,
    dirty: std::sync::atomic::AtomicBool,
    thread: std::thread::Thread,
}

const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

fn publisher() -> &'static Publisher {
    static P: std::sync::OnceLock<Publisher> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let thread = std::thread::Builder::new()
            .name("busd-shim-figures".into())
            .spawn(|| loop {
                std::thread::park();
                let p = publisher();
                if !p.dirty.load(Ordering::Acquire) {
                    continue;
                }
                std::thread::sleep(PUBLISH_EVERY);
                // Changes from now on wake the thread again.
                p.dirty.store(false, Ordering::Release);
                let mut members = p.members.lock().expect("publisher");
                members.retain(|(c, m)| match (c.upgrade(), m.upgrade()) {
                    (Some(c), Some(m)) => {
                        progress::publish_figures(m.map.words(), m.slot, &c.figures());
                        true
                    }
                    _ => false,
                });
            })
            .expect("a thread to publish the fast path's figures");
        Publisher {
            members: Mutex::new(Vec::new()),
            dirty: Default::default(),
            thread: thread.thread().clone(),
        }
    })
}

/// Figures changed: they are published soon.
pub fn touched() {
    let p = publisher();
    if !p.dirty.load(Ordering::Relaxed) && !p.dirty.swap(true, Ordering::AcqRel) {
        p.thread.unpark();
    }
}

/// How long a send waits, at most, for an earlier send it may depend on to reach all its
/// receivers. Only a receiver that does not read for that long makes it expire.
pub const CAUSAL_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The table as last read, refreshed when the daemon's sequence number moves.
struct TableView {
    map: Mapping,
    cached: Mutex<(u64, Arc<Table>)>,
}

impl TableView {
    fn current(&self) -> Arc<Table> {
        let words = self.map.words();
        let seq = table::sequence(words);
        let mut cached = self.cached.lock().expect("table lock");
        if cached.0 == seq && seq != 0 {
            return Arc::clone(&cached.1);
        }
        let mut body = Vec::new();
        for _ in 0..1000 {
            match table::read(words, &mut body) {
                Ok(Some(seq)) => match Table::decode(&body) {
                    Ok(t) => {
                        *cached = (seq, Arc::new(t));
                        break;
                    }
                    Err(e) => {
                        warn!("the routing table does not decode: {e}");
                        break;
                    }
                },
                Ok(None) => std::hint::spin_loop(),
                Err(e) => {
                    warn!("the routing table is unreadable: {e}");
                    break;
                }
            }
        }
        Arc::clone(&cached.1)
    }
}

/// Where a message goes.
enum Route {
    /// To these members directly (destination word), plus the daemon when asked.
    Direct {
        members: Vec<u32>,
        destination: u32,
        copy_to_daemon: bool,
    },
    /// To the daemon only, with this destination word (0: a broadcast; TO_DAEMON: route it).
    Daemon(u32),
}

pub struct Member {
    pub id: u32,
    pub unique: String,
    dir: PathBuf,
    socket: tokio::net::UnixDatagram,
    table: TableView,
    pub rules: Mutex<Vec<MatchRule>>,
    pub counters: Arc<Counters>,
    /// Calls sent directly that wait for a reply: serial -> callee. If the callee leaves
    /// first, the caller gets the NoReply error the daemon would have sent.
    pending: Mutex<HashMap<u32, u32>>,
    /// The table's sequence number when `pending` was last checked against it (None: calls
    /// were added since).
    checked: Mutex<Option<u64>>,
    /// Told when a direct call starts waiting (the read half then watches its callee),
    /// and when `made` has messages for zbus.
    pub calls_changed: tokio::sync::Notify,
    /// Frames for receivers whose queue was full, sent as they make room.
    backlogs: Arc<Backlogs>,
    /// Per member whose direct message this one received: its progress slot and the
    /// number its sends had started at then. Sends wait until that many are complete.
    needs: Mutex<HashMap<u32, (u32, u64)>>,
    /// Members whose completion a send gave up waiting for, and where it stood then: not
    /// waited for again until it moves.
    stalled: Mutex<HashMap<u32, u64>>,
}

/// What the daemon's answer to Join gives.
pub struct Joining {
    pub id: u32,
    pub unique: String,
    pub dir: PathBuf,
    pub socket: OwnedFd,
    pub table: OwnedFd,
    pub progress: OwnedFd,
    pub slot: u32,
}

/// The progress memory (mapped writable) and this member's slot in it.
struct Progress {
    map: Mapping,
    slot: u32,
}

/// Per receiver, the frames that wait for room in its queue, in order (DESIGN 5.3). A
/// receiver with a backlog gets every later frame through it too, so each sender's order
/// holds; the others are not held back.
struct Backlogs {
    /// A duplicate of the member's socket: frames must leave from its bound address.
    socket: OwnedFd,
    dir: PathBuf,
    /// Bytes one receiver's backlog may hold.
    bound: usize,
    queues: Mutex<HashMap<u32, Backlog>>,
    counters: Arc<Counters>,
    /// Errors for zbus (LimitsExceeded for calls refused at the bound).
    made: Mutex<Vec<Vec<u8>>>,
    /// Causal order: the progress memory and this member's slot.
    progress: Arc<Progress>,
    /// The sends that still have frames in backlogs (send number -> frames), and the
    /// last send that returned; together they make the `completed` count published.
    inflight: Mutex<Inflight>,
}

#[derive(Default)]
struct Inflight {
    frames: std::collections::BTreeMap<u64, usize>,
    /// Sends started, and the last one that returned.
    started: u64,
    returned: u64,
}

#[derive(Default)]
struct Backlog {
    frames: std::collections::VecDeque<Waiting>,
    bytes: usize,
}

struct Waiting {
    frame: Arc<Vec<u8>>,
    fds: Vec<OwnedFd>,
    /// The send it belongs to.
    send: u64,
}

/// How much one receiver's backlog may hold unless the address says otherwise.
pub const DEFAULT_BACKLOG_BYTES: usize = 64 << 20;

/// What became of a frame for one receiver.
enum Delivery {
    Sent,
    /// Waits in the receiver's backlog.
    Queued,
    /// The receiver's socket is gone.
    Gone,
    /// The backlog is at its bound.
    Rejected,
}

/// A message ready to send: where, and the frame.
pub struct Plan {
    route: Route,
    frame: Vec<u8>,
    /// The serial of a method call that expects a reply.
    call: Option<u32>,
    /// The sealed memfd holding a large message (the frame then only refers to it).
    memfd: Option<OwnedFd>,
}

/// Messages larger than this travel in a sealed memfd (DESIGN 5.3): one copy for every
/// receiver, and no datagram or send-buffer limit. Below it, a datagram's copy per
/// receiver costs less than creating, filling and sealing a memfd.
pub const MEMFD_ABOVE: usize = 32 * 1024;

/// The largest message the fast path takes from a memfd: the D-Bus specification's
/// maximum (a bus may allow less; the daemon checks its own `max_message_size`).
const MAX_MESSAGE: usize = 128 << 20;

/// The kernel's limit on descriptors passed with one datagram (SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

/// What becomes of a received frame.
enum Verdict {
    Deliver(Vec<u8>, Vec<OwnedFd>),
    /// For a name this member does not own (any more): the daemon routes it.
    Forward(Vec<OwnedFd>),
    Drop,
}

/// What sending a frame came to.
pub enum Sent {
    Done,
    /// Larger than a datagram may be: send it on the stream instead.
    TooLarge,
}

/// A message as match rules see it, on the receiving side.
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

/// Senders raise their send buffer as far as the system allows: every unread datagram
/// stays charged to it (DESIGN 4).
const SEND_BUFFER: usize = 8 << 20;

impl Member {
    pub fn new(j: Joining, counters: Arc<Counters>, backlog_bound: usize) -> io::Result<Member> {
        let socket = UnixDatagram::from(j.socket);
        // tokio registers only non-blocking sockets; afterwards the socket is made blocking
        // again. Every wait-free call here passes MSG_DONTWAIT, and a send to a full
        // receiver can then block in the kernel (see `send_frame`).
        socket.set_nonblocking(true)?;
        let _ = socket::setsockopt(&socket, socket::sockopt::SndBuf, &SEND_BUFFER);
        let map = Mapping::open(j.table.as_fd(), table::PREFIX_LEN, false)?;
        let progress = Mapping::open(j.progress.as_fd(), progress::PREFIX_LEN, true)?;
        if !progress::valid(progress.words()) {
            return Err(io::Error::other("the progress memory is not busd's"));
        }
        // (A member without a slot publishes nothing: its receivers do not wait for it.)
        let progress = Arc::new(Progress {
            map: progress,
            slot: j.slot,
        });
        publisher()
            .members
            .lock()
            .expect("publisher")
            .push((Arc::downgrade(&counters), Arc::downgrade(&progress)));
        touched();
        let backlogs = Arc::new(Backlogs {
            socket: socket.as_fd().try_clone_to_owned()?,
            dir: j.dir.clone(),
            bound: backlog_bound,
            queues: Mutex::new(HashMap::new()),
            counters: Arc::clone(&counters),
            made: Mutex::new(Vec::new()),
            progress,
            inflight: Mutex::new(Inflight::default()),
        });
        Ok(Member {
            id: j.id,
            unique: j.unique,
            dir: j.dir,
            socket: {
                use nix::fcntl::{fcntl, FcntlArg, OFlag};
                let s = tokio::net::UnixDatagram::from_std(socket)?;
                let flags = OFlag::from_bits_truncate(fcntl(s.as_raw_fd(), FcntlArg::F_GETFL)?);
                fcntl(s.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
                s
            },
            backlogs,
            table: TableView {
                map,
                cached: Mutex::new((0, Arc::new(Table::default()))),
            },
            rules: Mutex::new(Vec::new()),
            counters,
            pending: Mutex::new(HashMap::new()),
            checked: Mutex::new(None),
            calls_changed: tokio::sync::Notify::new(),
            needs: Mutex::new(HashMap::new()),
            stalled: Mutex::new(HashMap::new()),
        })
    }

    fn path_of(&self, member: u32) -> PathBuf {
        self.dir.join(protocol::socket_name(member))
    }

    fn inbox(&self) -> PathBuf {
        self.dir.join(protocol::inbox_name(self.id))
    }

    /// Decides where a message goes, from the routing table as it is now.
    fn route(&self, msg: &Message, t: &Table) -> Route {
        let me_direct = t.member(self.id).is_some_and(|m| m.direct);
        let dest = match msg.destination() {
            None if msg.msg_type() == SIGNAL => None,
            None => return Route::Daemon(TO_DAEMON),
            Some(d) => Some(d),
        };
        let timed_call = msg.msg_type() == METHOD_CALL && !msg.no_reply_expected();
        if !me_direct || (timed_call && t.calls_mediated) {
            return Route::Daemon(TO_DAEMON);
        }
        let Some(d) = dest else {
            let (member, interface, path) = (
                msg.member().map_or(0, header::hash32),
                msg.interface().map_or(0, header::hash32),
                msg.path().map_or(0, header::hash32),
            );
            let mut direct = 0u64;
            let members: Vec<u32> = t
                .members
                .iter()
                .filter(|m| m.id != 0 && m.direct)
                .inspect(|_| direct += 1)
                .filter(|m| m.summary.selects(member, interface, path))
                .map(|m| m.id)
                .collect();
            self.counters
                .skipped
                .fetch_add(direct - members.len() as u64, Ordering::Relaxed);
            if !members.is_empty() {
                self.counters.fan_outs.fetch_add(1, Ordering::Relaxed);
            }
            let daemon = t
                .member(0)
                .is_some_and(|m| m.summary.selects(member, interface, path));
            return Route::Direct {
                members,
                destination: 0,
                copy_to_daemon: daemon,
            };
        };
        let owner = if busd_wire::names::is_unique_name(d) {
            protocol::member_of_unique(d).filter(|&id| t.member(id).is_some())
        } else {
            t.owner(d)
        };
        match owner.and_then(|id| t.member(id)) {
            Some(m) if m.direct => Route::Direct {
                members: vec![m.id],
                destination: m.id,
                copy_to_daemon: t.observed,
            },
            _ => Route::Daemon(TO_DAEMON),
        }
    }

    /// Where a message (already carrying this member's SENDER) goes, and its frame; all
    /// the work that needs the message, so that sending can wait without holding it.
    /// `through_daemon`: a reply to a call that came through the daemon goes back that way.
    pub fn plan(&self, msg: &Message, through_daemon: bool) -> Plan {
        let t = self.table.current();
        let route = if through_daemon {
            Route::Daemon(TO_DAEMON)
        } else {
            self.route(msg, &t)
        };
        let destination = match &route {
            Route::Daemon(d) => *d,
            Route::Direct { destination, .. } => *destination,
        };
        let mut head = [0u8; HEADER_LEN];
        header::encode(
            &Fields {
                msg_type: msg.msg_type(),
                flags: msg.flags(),
                sender: self.id,
                destination,
                interface: msg.interface(),
                member: msg.member(),
                path: msg.path(),
            },
            &msg.args(),
            &mut head,
        );
        let call =
            (msg.msg_type() == METHOD_CALL && !msg.no_reply_expected()).then(|| msg.serial());
        let bytes = msg.bytes();
        // (A message carrying the most descriptors a datagram can has no room for the
        // memfd: it goes inline while it fits, else on the stream.)
        let memfd = (bytes.len() > MEMFD_ABOVE && msg.unix_fds() < SCM_MAX_FD as u32)
            .then(|| sealed::seal(bytes))
            .and_then(|r| {
                r.inspect_err(|e| warn!("cannot put a large message in a memfd: {e}"))
                    .ok()
            });
        let frame = match memfd {
            Some(_) => {
                head[header::OFF_KIND as usize + 3] |= header::ROUTE_MEMFD;
                [&head[..], &sealed::reference(bytes.len())[..]].concat()
            }
            None => [&head[..], bytes].concat(),
        };
        Plan {
            route,
            frame,
            call,
            memfd,
        }
    }

    /// Sends a planned message. Frames for other members never wait for a receiver: one
    /// whose queue is full gets them through its backlog.
    pub async fn send(&self, plan: Plan, fds: &[RawFd]) -> io::Result<Sent> {
        // The memfd goes first, before the message's own descriptors.
        let with_memfd: Vec<RawFd>;
        let fds = match &plan.memfd {
            Some(m) => {
                self.counters.large.fetch_add(1, Ordering::Relaxed);
                with_memfd = std::iter::once(m.as_raw_fd())
                    .chain(fds.iter().copied())
                    .collect();
                &with_memfd[..]
            }
            None => fds,
        };
        // Whatever this member received directly is at every receiver first.
        self.wait_causal().await;
        match plan.route {
            Route::Daemon(_) => {
                if let Err(e) = self.send_frame(&self.inbox(), &plan.frame, fds).await {
                    return too_large_or(e);
                }
                self.counters.via_daemon.fetch_add(1, Ordering::Relaxed);
                touched();
                Ok(Sent::Done)
            }
            Route::Direct {
                members,
                destination,
                copy_to_daemon,
            } => {
                // Numbered and published before its first datagram leaves, complete once
                // every frame left its backlog (causal order, DESIGN 5.5).
                let n = self.backlogs.begin();
                let frame = Arc::new(plan.frame);
                let r = self
                    .send_direct(&members, destination, plan.call, &frame, fds, n)
                    .await;
                let r = match r {
                    Ok(()) if copy_to_daemon => {
                        match self.send_frame(&self.inbox(), &frame, fds).await {
                            Ok(()) => {
                                self.counters.via_daemon.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    r => r,
                };
                self.backlogs.end(n);
                touched();
                r.map(|()| Sent::Done).or_else(too_large_or)
            }
        }
    }

    /// The direct part of send number `n`: to each of `members`, or a fan-out.
    async fn send_direct(
        &self,
        members: &[u32],
        destination: u32,
        call: Option<u32>,
        frame: &Arc<Vec<u8>>,
        fds: &[RawFd],
        n: u64,
    ) -> io::Result<()> {
        if destination == 0 && members.len() > 1 {
            return self.fan_out(members, frame, fds, n);
        }
        for &m in members {
            if let (Some(serial), true) = (call, destination != 0) {
                self.pending.lock().expect("pending").insert(serial, m);
                *self.checked.lock().expect("checked") = None;
                self.calls_changed.notify_one();
            }
            match self.backlogs.deliver(m, frame, fds, n)? {
                Delivery::Sent => self.counters.sent_direct(1, frame),
                Delivery::Queued => {}
                Delivery::Gone if destination != 0 => {
                    // It left since the table was read: the daemon answers a message for
                    // it as dbus-daemon would (and gets what it needs from this copy).
                    debug!(member = m, "member gone");
                    if let Some(serial) = call {
                        self.pending.lock().expect("pending").remove(&serial);
                    }
                    let mut routed = frame.to_vec();
                    routed[header::OFF_DESTINATION as usize..][..4]
                        .copy_from_slice(&TO_DAEMON.to_be_bytes());
                    self.send_frame(&self.inbox(), &routed, fds).await?;
                    self.counters.via_daemon.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // A broadcast skips a receiver that left.
                Delivery::Gone => debug!(member = m, "member gone"),
                Delivery::Rejected => {
                    if let Some(serial) = call {
                        self.pending.lock().expect("pending").remove(&serial);
                        self.refuse_call(serial);
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until every send this member received something from has reached all its
    /// receivers (at most [`CAUSAL_WAIT`], and not again for a member that has not moved
    /// since a wait for it expired).
    async fn wait_causal(&self) {
        let needs: Vec<(u32, (u32, u64))> = {
            let mut needs = self.needs.lock().expect("needs");
            if needs.is_empty() {
                return;
            }
            needs.drain().collect()
        };
        let words = self.backlogs.progress.map.words();
        let deadline = std::time::Instant::now() + CAUSAL_WAIT;
        let mut waited = false;
        for (member, (slot, until)) in needs {
            let mut spins = 0;
            while let Some(c) = progress::read(words, slot, member) {
                if c.completed >= until {
                    break;
                }
                {
                    let mut stalled = self.stalled.lock().expect("stalled");
                    if stalled.get(&member) == Some(&c.completed) {
                        break;
                    }
                    if std::time::Instant::now() >= deadline {
                        stalled.insert(member, c.completed);
                        if self
                            .counters
                            .causal_timeouts
                            .fetch_add(1, Ordering::Relaxed)
                            == 0
                        {
                            warn!(
                                member,
                                "a member's send has not reached all its receivers in {CAUSAL_WAIT:?}: \
                                 sending anyway (counted in `causal_timeouts`)"
                            );
                        }
                        break;
                    }
                }
                waited = true;
                // Usually a fan-out in progress on another CPU: a few yields; a backlog
                // waiting for a slow receiver: sleep.
                if spins < 64 {
                    spins += 1;
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
            }
        }
        if waited {
            self.counters.causal_waits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A direct message from `sender` is about to be handed to zbus: what this member
    /// sends from now on waits until `sender`'s sends so far have reached every receiver.
    fn note_progress(&self, sender: u32, t: &Table) {
        let Some(m) = t.member(sender) else {
            return;
        };
        if let Some(c) = progress::read(self.backlogs.progress.map.words(), m.slot, sender) {
            if c.completed < c.started {
                let mut needs = self.needs.lock().expect("needs");
                let need = needs.entry(sender).or_insert((m.slot, 0));
                *need = (m.slot, need.1.max(c.started));
            }
        }
    }

    /// A call whose callee's backlog is full gets dbus-daemon's answer for a destination
    /// with a full queue.
    fn refuse_call(&self, serial: u32) {
        self.backlogs.made.lock().expect("made").push(bus_error(
            serial,
            &self.unique,
            ErrorName::LimitsExceeded.as_str(),
            "Rejected: destination has a full message queue",
        ));
        self.calls_changed.notify_one();
    }

    /// Errors the shim made for zbus (calls refused at a backlog's bound).
    pub fn take_made(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.backlogs.made.lock().expect("made"))
    }

    /// A broadcast to several members: one `sendmmsg` to every receiver without a backlog,
    /// continued past a receiver whose queue is full (that one gets the frame through its
    /// backlog), past one that left, and never waiting.
    fn fan_out(
        &self,
        members: &[u32],
        frame: &Arc<Vec<u8>>,
        fds: &[RawFd],
        n: u64,
    ) -> io::Result<()> {
        // One look at the backlogs for the whole broadcast (usually there are none).
        let (waiting, now): (Vec<u32>, Vec<u32>) = {
            let queues = self.backlogs.queues.lock().expect("backlogs");
            if queues.is_empty() {
                (Vec::new(), members.to_vec())
            } else {
                members.iter().partition(|m| queues.contains_key(m))
            }
        };
        for m in waiting {
            self.backlogs.queue(m, frame, fds, n)?;
        }
        let addrs = now
            .iter()
            .map(|&m| UnixAddr::new(&self.path_of(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut i = 0;
        while i < addrs.len() {
            match send_batch(self.socket.as_fd(), &addrs[i..], frame, fds) {
                Ok(n) => {
                    self.counters.sent_direct(n as u64, frame);
                    i += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlogs.queue(now[i], frame, fds, n)?;
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

    /// Whether direct calls wait for replies (then the read half watches their callees).
    pub fn has_pending_calls(&self) -> bool {
        !self.pending.lock().expect("pending").is_empty()
    }

    /// A reply (or error) arrived for `reply_serial`, on any path.
    pub fn note_reply(&self, reply_serial: u32) {
        let mut pending = self.pending.lock().expect("pending");
        if !pending.is_empty() {
            pending.remove(&reply_serial);
        }
    }

    /// The errors dbus-daemon sends callers whose callee disconnected without replying,
    /// for the direct calls whose callee is no longer in the table.
    /// Checks only when the table changed or calls were added since the last check (it
    /// runs every 50 ms while calls wait, on every connection).
    pub fn orphaned_calls(&self) -> Vec<Vec<u8>> {
        let seq = table::sequence(self.table.map.words());
        {
            let mut checked = self.checked.lock().expect("checked");
            if *checked == Some(seq) {
                return Vec::new();
            }
            *checked = Some(seq);
        }
        let t = self.table.current();
        let mut pending = self.pending.lock().expect("pending");
        let gone: Vec<u32> = pending
            .iter()
            .filter(|(_, &callee)| t.member(callee).is_none())
            .map(|(&serial, _)| serial)
            .collect();
        gone.into_iter()
            .map(|serial| {
                pending.remove(&serial);
                no_reply(serial, &self.unique)
            })
            .collect()
    }

    /// One datagram with its fds, to the daemon's inbox (frames for members go through
    /// [`Backlogs::deliver`]). When this member's send buffer is full the send waits in the
    /// kernel, on a thread of the blocking pool: nothing is dropped.
    async fn send_frame(&self, to: &Path, frame: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let addr = UnixAddr::new(to).map_err(io::Error::from)?;
        match send_to(
            self.socket.as_fd(),
            &addr,
            frame,
            fds,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        // (The backlogs hold a duplicate of the socket: no descriptor is spent here.)
        let backlogs = Arc::clone(&self.backlogs);
        let owned = dup_all(fds)?;
        let frame = frame.to_vec();
        tokio::task::spawn_blocking(move || {
            let raw: Vec<RawFd> = owned.iter().map(|f| f.as_raw_fd()).collect();
            send_to(
                backlogs.socket.as_fd(),
                &addr,
                &frame,
                &raw,
                MsgFlags::empty(),
            )
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Waits for the next frame worth handing to zbus: checked (its source address, header
    /// and SENDER agree) and wanted (addressed to this member, or matched by one of its
    /// rules). Returns the message bytes and fds.
    pub async fn receive(&self, buf: &mut Vec<u8>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        if buf.is_empty() {
            buf.resize(header::largest_datagram(), 0);
        }
        loop {
            self.socket.readable().await?;
            let r = self
                .socket
                .try_io(Interest::READABLE, || recv_frame(self.socket.as_fd(), buf));
            let (n, fds, source) = match r {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let verdict = self.accept(&buf[..n], fds, source.as_deref());
            touched();
            match verdict {
                Verdict::Deliver(bytes, fds) => {
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .received_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Ok((bytes, fds));
                }
                Verdict::Forward(fds) => self.forward(&buf[..n], fds)?,
                Verdict::Drop => {}
            }
        }
    }

    /// Passes the daemon a frame for a name this member no longer owns; the daemon routes it
    /// to the owner now (or answers as dbus-daemon would). Sent from a thread of the
    /// blocking pool, so that it completes even if the receiving future is dropped.
    fn forward(&self, frame: &[u8], fds: Vec<OwnedFd>) -> io::Result<()> {
        let mut frame = frame.to_vec();
        header::mark_forwarded(&mut frame, self.id);
        let addr = UnixAddr::new(&self.inbox()).map_err(io::Error::from)?;
        let socket = self.socket.as_fd().try_clone_to_owned()?;
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            if let Err(e) = send_to(socket.as_fd(), &addr, &frame, &raw, MsgFlags::empty()) {
                warn!("cannot pass a message on to the daemon: {e}");
            }
        });
        Ok(())
    }

    /// Drops a frame that is not what a member sends: counted, and said the first time.
    fn refuse(&self, counter: &AtomicU64, source: Option<&Path>, why: &str) -> Verdict {
        if counter.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!("dropped a fast-path frame from {source:?}: {why} (counted from now on)");
        }
        Verdict::Drop
    }

    fn accept(&self, frame: &[u8], mut fds: Vec<OwnedFd>, source: Option<&Path>) -> Verdict {
        // The kernel reports the sender's bound address: it must be a member socket here,
        // under the exact name the daemon binds (a look-alike spelling names nobody).
        let Some(sender_id) = source
            .filter(|p| p.parent() == Some(self.dir.as_path()))
            .and_then(|p| protocol::member_of_socket_name(p.file_name()?.to_str()?))
        else {
            return self.refuse(&self.counters.spoofed, source, "not from a member socket");
        };
        let frame = match protocol::check_frame(frame, &fds, sender_id, MAX_MESSAGE) {
            Ok(f) => f,
            Err(e @ FrameError::Spoofed(_)) => {
                return self.refuse(&self.counters.spoofed, source, &e.to_string())
            }
            Err(e) => return self.refuse(&self.counters.malformed, source, &e.to_string()),
        };
        let bytes = frame.message;
        let msg = match Message::parse(bytes, Vec::new()) {
            Ok(m) => m,
            Err(e) => return self.refuse(&self.counters.malformed, source, &e.to_string()),
        };
        if msg.sender() != Some(protocol::unique_of_member(sender_id).as_str()) {
            return self.refuse(&self.counters.spoofed, source, "its SENDER is another's");
        }
        if let Some(r) = msg.reply_serial() {
            self.note_reply(r);
        }
        let t = self.table.current();
        let wanted = match msg.destination() {
            Some(d) => {
                if d != self.unique && t.owner(d) != Some(self.id) {
                    // The name moved after the sender looked it up.
                    return Verdict::Forward(fds);
                }
                true
            }
            None => {
                let info = Received {
                    msg: &msg,
                    args: msg.args(),
                    sender_id,
                    table: &t,
                };
                let rules = self.rules.lock().expect("rules lock");
                let hit = rules.iter().any(|r| r.matches(&info));
                if !hit {
                    self.counters.filtered.fetch_add(1, Ordering::Relaxed);
                }
                hit
            }
        };
        if wanted {
            self.note_progress(sender_id, &t);
            if frame.memfd {
                fds.remove(0);
            }
            Verdict::Deliver(msg.into_bytes(), fds)
        } else {
            Verdict::Drop
        }
    }
}

/// One sendmsg() with SCM_RIGHTS; `flags` adds MSG_DONTWAIT or not (the socket itself is
/// blocking: see `Member::new`).
fn send_to(
    socket: BorrowedFd<'_>,
    addr: &UnixAddr,
    frame: &[u8],
    fds: &[RawFd],
    flags: MsgFlags,
) -> io::Result<()> {
    let iov = [io::IoSlice::new(frame)];
    fds::send(socket.as_raw_fd(), &iov, fds, flags, Some(addr))?;
    Ok(())
}

/// The error dbus-daemon sends a caller whose callee left without replying.
fn no_reply(reply_serial: u32, destination: &str) -> Vec<u8> {
    bus_error(
        reply_serial,
        destination,
        ErrorName::NoReply.as_str(),
        "Message recipient disconnected from message bus without replying",
    )
}

/// An error from the bus to `destination`, answering its call `reply_serial`.
fn bus_error(reply_serial: u32, destination: &str, name: &str, text: &str) -> Vec<u8> {
    use busd_wire::marshal::{Endian, Writer};
    use busd_wire::message::{encode, HeaderFields, ERROR, FLAG_NO_REPLY_EXPECTED};
    let mut body = Writer::new(Endian::Little);
    body.string(text);
    let f = HeaderFields {
        reply_serial: Some(reply_serial),
        error_name: Some(name),
        destination: Some(destination),
        sender: Some("org.freedesktop.DBus"),
        signature: Some("s"),
        ..Default::default()
    };
    encode(
        Endian::Little,
        ERROR,
        FLAG_NO_REPLY_EXPECTED,
        u32::MAX,
        &f,
        &body.into_vec(),
    )
}

/// One sendmmsg() of the same frame (and fds) to each address, without waiting: returns
/// how many were sent before the first that could not be, or the first one's error.
fn send_batch(
    socket: BorrowedFd<'_>,
    addrs: &[UnixAddr],
    frame: &[u8],
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
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    let mut headers: Vec<libc::mmsghdr> = addrs
        .iter()
        .map(|a| {
            // SAFETY: an all-zero msghdr is valid; the fields set point at data that
            // outlives the call (addresses, the iovec, the control buffer).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len();
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
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
            // The first receiver's error (EAGAIN: its queue is full; ECONNREFUSED, ENOENT:
            // it left); a later one's is reported when the batch resumes from it.
            _ => return Err(e),
        }
    }
}

impl Backlogs {
    fn path_of(&self, member: u32) -> PathBuf {
        self.dir.join(protocol::socket_name(member))
    }

    /// Numbers a send and publishes that it started, before its first datagram leaves.
    fn begin(&self) -> u64 {
        let mut f = self.inflight.lock().expect("inflight");
        f.started += 1;
        progress::start(self.progress.map.words(), self.progress.slot, f.started);
        f.started
    }

    /// Send `n` returned: what it did not leave in backlogs has reached its receivers.
    fn end(&self, n: u64) {
        let mut f = self.inflight.lock().expect("inflight");
        f.returned = n;
        self.publish(&f);
    }

    /// Frames of these sends left their backlogs (sent, or dropped with their receiver).
    fn left(&self, sends: &[u64]) {
        let mut f = self.inflight.lock().expect("inflight");
        for s in sends {
            if let std::collections::btree_map::Entry::Occupied(mut e) = f.frames.entry(*s) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.publish(&f);
    }

    /// Publishes the highest send below which every send has reached all its receivers.
    fn publish(&self, f: &Inflight) {
        let complete = match f.frames.keys().next() {
            Some(&first) => (first - 1).min(f.returned),
            None => f.returned,
        };
        progress::complete(self.progress.map.words(), self.progress.slot, complete);
    }

    /// Sends `frame` to `member` now if its queue has room and nothing waits for it, else
    /// puts it in its backlog.
    fn deliver(
        self: &Arc<Self>,
        member: u32,
        frame: &Arc<Vec<u8>>,
        fds: &[RawFd],
        send: u64,
    ) -> io::Result<Delivery> {
        if self.queues.lock().expect("backlogs").contains_key(&member) {
            return self.queue(member, frame, fds, send);
        }
        let addr = UnixAddr::new(&self.path_of(member)).map_err(io::Error::from)?;
        match send_to(
            self.socket.as_fd(),
            &addr,
            frame,
            fds,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(()) => Ok(Delivery::Sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.queue(member, frame, fds, send),
            Err(e) if gone(&e) => Ok(Delivery::Gone),
            Err(e) => Err(e),
        }
    }

    /// Appends to `member`'s backlog (starting the task that empties it), unless the
    /// backlog is at its bound.
    fn queue(
        self: &Arc<Self>,
        member: u32,
        frame: &Arc<Vec<u8>>,
        fds: &[RawFd],
        send: u64,
    ) -> io::Result<Delivery> {
        let mut queues = self.queues.lock().expect("backlogs");
        let starting = !queues.contains_key(&member);
        let b = queues.entry(member).or_default();
        if b.bytes + frame.len() > self.bound {
            if starting {
                queues.remove(&member);
            }
            if self.counters.rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(
                    member,
                    bound = self.bound,
                    "a receiver's backlog is full: it is not reading (counted in `rejected`)"
                );
            }
            return Ok(Delivery::Rejected);
        }
        let fds = dup_all(fds)?;
        b.bytes += frame.len();
        b.frames.push_back(Waiting {
            frame: Arc::clone(frame),
            fds,
            send,
        });
        *self
            .inflight
            .lock()
            .expect("inflight")
            .frames
            .entry(send)
            .or_default() += 1;
        self.counters.backlogged.fetch_add(1, Ordering::Relaxed);
        self.counters.backlog_depth.fetch_add(1, Ordering::Relaxed);
        if starting {
            drop(queues);
            enlist(Arc::clone(self), member);
        }
        Ok(Delivery::Queued)
    }

    /// Its backlog for `member` cannot be sent (an error other than a full queue or a
    /// receiver that left): not silently, it is counted as refused, and said.
    fn give_up(&self, member: u32, e: &io::Error) {
        let lost = self.discard(member);
        self.counters
            .rejected
            .fetch_add(lost as u64, Ordering::Relaxed);
        warn!(member, lost, "cannot send a receiver its backlog: {e}");
    }

    /// Sends the backlog's frames in order until it is empty (then forgets it) or the
    /// receiver's queue is full (WouldBlock).
    fn send_front(&self, member: u32, addr: &UnixAddr) -> io::Result<()> {
        let mut queues = self.queues.lock().expect("backlogs");
        loop {
            let Some(b) = queues.get_mut(&member) else {
                return Ok(());
            };
            let Some(w) = b.frames.front() else {
                queues.remove(&member);
                return Ok(());
            };
            let raw: Vec<RawFd> = w.fds.iter().map(|f| f.as_raw_fd()).collect();
            send_to(
                self.socket.as_fd(),
                addr,
                &w.frame,
                &raw,
                MsgFlags::MSG_DONTWAIT,
            )?;
            let (len, send) = (w.frame.len(), w.send);
            self.counters.sent_direct(1, &w.frame);
            b.frames.pop_front();
            b.bytes -= len;
            self.left(&[send]);
            touched();
            self.counters.backlog_depth.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// What waited for `member` goes: it is gone (as the daemon drops what was queued for
    /// a connection that closed; callers waiting for a reply get NoReply), or it cannot be
    /// sent. Returns how many frames went.
    fn discard(&self, member: u32) -> usize {
        let Some(b) = self.queues.lock().expect("backlogs").remove(&member) else {
            return 0;
        };
        let sends: Vec<u64> = b.frames.iter().map(|w| w.send).collect();
        self.left(&sends);
        touched();
        self.counters
            .backlog_depth
            .fetch_sub(b.frames.len() as u64, Ordering::Relaxed);
        debug!(member, frames = b.frames.len(), "backlog dropped");
        b.frames.len()
    }
}

/// Per receiver (its socket's path), the backlogs of this process's connections that wait
/// for room in its queue, in turn. One task per receiver serves them: it waits for room,
/// sends from the first backlog until the queue is full again or that backlog is empty,
/// and moves on to the next. Every datagram a receiver reads wakes every socket waiting
/// for it, so one waiter per receiver, not one per sender, keeps a process of many
/// connections from waking all of them for every datagram read.
type Turns = VecDeque<(Arc<Backlogs>, u32)>;

fn waiting() -> &'static Mutex<HashMap<PathBuf, Turns>> {
    static W: std::sync::OnceLock<Mutex<HashMap<PathBuf, Turns>>> = std::sync::OnceLock::new();
    W.get_or_init(Default::default)
}

/// `backlogs` has just started a backlog for `member`: it takes its turn, and the task
/// serving that receiver starts if none runs.
fn enlist(backlogs: Arc<Backlogs>, member: u32) {
    let path = backlogs.path_of(member);
    let mut all = waiting().lock().expect("waiting");
    match all.get_mut(&path) {
        Some(turns) => turns.push_back((backlogs, member)),
        None => {
            all.insert(path.clone(), VecDeque::from([(backlogs, member)]));
            tokio::spawn(serve(path));
        }
    }
}

/// Serves the backlogs waiting for the receiver at `path` until none is left. It waits for
/// POLLOUT on a socket connected to the receiver (the kernel reports it when the receiver's
/// queue is not full), registered afresh each time, since the kernel arms the wake-up only
/// when asked while the queue is full. Without a descriptor to spare for that socket, it
/// checks every millisecond instead.
async fn serve(path: PathBuf) {
    let gone_all = |path: &Path| {
        let turns = waiting().lock().expect("waiting").remove(path);
        for (b, member) in turns.into_iter().flatten() {
            b.discard(member);
        }
    };
    let addr = match UnixAddr::new(&path) {
        Ok(a) => a,
        Err(e) => {
            warn!("no address for {}: {e}", path.display());
            return gone_all(&path);
        }
    };
    let slot = WakerSlot::take();
    let mut waker = match slot.as_ref().map(|_| connected_to(&path)) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) if gone(&e) => return gone_all(&path),
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
            None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
        // Hand the room on: the first in turn sends until the queue is full again.
        // Senders in a row that could not send although the receiver had room (their own
        // send buffer is full: their datagrams wait to be read elsewhere).
        let mut stuck = 0;
        loop {
            let first = {
                let mut all = waiting().lock().expect("waiting");
                let Some(turns) = all.get_mut(&path) else {
                    return;
                };
                match turns.front() {
                    Some((b, m)) => (Arc::clone(b), *m),
                    None => {
                        all.remove(&path);
                        return;
                    }
                }
            };
            let (b, member) = first;
            let r = b.send_front(member, &addr);
            if let Err(e) = &r {
                if gone(e) {
                    return gone_all(&path);
                }
            }
            // Only this task takes entries off: the first is still `b`'s. On WouldBlock
            // it goes last; the number of senders in turn is returned.
            let senders = {
                let mut all = waiting().lock().expect("waiting");
                let Some(turns) = all.get_mut(&path) else {
                    return;
                };
                let front = turns.pop_front();
                match &r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        turns.extend(front);
                        Some(turns.len())
                    }
                    _ => None,
                }
            };
            match (r, senders) {
                (Ok(()), _) => stuck = 0,
                (Err(_), Some(senders)) => {
                    // If the receiver is full, wait for room; if not, it was `b`'s own
                    // send buffer: the next sender goes on.
                    if waker.as_ref().is_none_or(|w| !writable_now(w)) {
                        break;
                    }
                    stuck += 1;
                    if stuck >= senders {
                        // Every sender's buffer is full: they drain as their other
                        // receivers read.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        stuck = 0;
                    }
                }
                (Err(e), None) => b.give_up(member, &e),
            }
        }
    }
}

/// Sockets waiting for room in a receiver's queue, one per receiver with backlogs in this
/// process, at most [`WakerSlot::max`] (each costs a descriptor: a quarter of the
/// process's limit, and no more than 4096); beyond the bound, backlogs are retried every
/// millisecond.
struct WakerSlot;

static WAKERS: AtomicU64 = AtomicU64::new(0);

impl WakerSlot {
    fn max() -> u64 {
        static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
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
fn dup_all(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
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

/// The length of the message a frame carries (inline, or in its memfd).
fn message_len(frame: &[u8]) -> u64 {
    let rest = frame.get(HEADER_LEN..).unwrap_or_default();
    if frame[header::OFF_KIND as usize + 3] & header::ROUTE_MEMFD != 0 {
        sealed::announced(rest).unwrap_or(0)
    } else {
        rest.len() as u64
    }
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

fn too_large_or(e: io::Error) -> io::Result<Sent> {
    if e.raw_os_error() == Some(libc::EMSGSIZE) || e.raw_os_error() == Some(libc::ENOBUFS) {
        Ok(Sent::TooLarge)
    } else {
        Err(e)
    }
}

fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT)
    )
}

type Frame = (usize, Vec<OwnedFd>, Option<PathBuf>);

fn recv_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Frame> {
    loop {
        let m = fds::recv::<UnixAddr>(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?;
        let source = m.address.and_then(|a| a.path().map(Path::to_path_buf));
        if m.flags.contains(MsgFlags::MSG_TRUNC) {
            // Larger than any member's send buffer allows: not from a member.
            warn!("dropped a truncated frame from {source:?}");
            continue;
        }
        return Ok((m.len, m.fds, source));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlogs() -> Backlogs {
        let words = progress::words_for(4);
        let (_fd, map) = Mapping::create("progress", words * 8, libc::F_SEAL_SHRINK).unwrap();
        progress::init(map.words());
        progress::assign(map.words(), 1, 5);
        Backlogs {
            socket: UnixDatagram::unbound().unwrap().into(),
            dir: PathBuf::from("/nonexistent"),
            bound: 1 << 20,
            queues: Mutex::new(HashMap::new()),
            counters: Arc::default(),
            made: Mutex::new(Vec::new()),
            progress: Arc::new(Progress { map, slot: 1 }),
            inflight: Mutex::new(Inflight::default()),
        }
    }

    fn published(b: &Backlogs) -> (u64, u64) {
        let c = progress::read(b.progress.map.words(), 1, 5).unwrap();
        (c.started, c.completed)
    }

    /// A send is complete once it returned and none of its frames waits in a backlog; the
    /// published count is the highest below which every send is complete.
    #[test]
    fn completion_waits_for_backlogged_frames() {
        let b = backlogs();
        let first = b.begin();
        assert_eq!(published(&b), (1, 0), "started before any datagram");
        // Two of its frames wait for full receivers.
        b.inflight.lock().unwrap().frames.insert(first, 2);
        b.end(first);
        assert_eq!(published(&b), (1, 0));
        let second = b.begin();
        b.end(second);
        assert_eq!(published(&b), (2, 0), "the first is not complete yet");
        b.left(&[first]);
        assert_eq!(published(&b), (2, 0));
        b.left(&[first]);
        assert_eq!(published(&b), (2, 2));
        let third = b.begin();
        assert_eq!(published(&b), (3, 2));
        b.end(third);
        assert_eq!(published(&b), (3, 3));
    }
}
