//! The I/O shell: listening sockets, connections, and the single-threaded event loop that
//! feeds the bus state machine and carries out its effects.

mod children;
mod conn;
pub mod fastpath;
pub mod identity;
mod keyring;
mod listen;
pub mod notify;
mod timers;
mod write_space;

use std::collections::BTreeSet;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busd_policy::CompiledPolicy;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tracing::{debug, info, warn};

use crate::bus::activation::ServiceEntry;
use crate::bus::{Bus, Effect, IdMap, PeerId};
use busd_wire::sasl::Mechanism;

pub use children::raise_descriptor_limit;
pub use listen::{bind, Listener};

use children::Children;
use conn::{Conn, ReadOutcome};

/// What the server needs from the configuration, re-read on ReloadConfig.
pub struct ServerConfig {
    pub mechanisms: Vec<Mechanism>,
    pub limits: busd_policy::Limits,
    pub policy: Rc<CompiledPolicy>,
    pub servicehelper: Option<String>,
    /// The `.service` entries of the configured directories.
    pub services: Vec<ServiceEntry>,
    /// Those directories, read again when a name is asked for that no file provided.
    pub service_dirs: Vec<crate::activation::Directory>,
    /// Directories whose changes trigger a reload (configuration and service directories),
    /// as dbus-daemon watches them.
    pub watched_dirs: Vec<std::path::PathBuf>,
}

/// Re-reads the configuration (the shell does the file I/O; the bus only gets the result).
pub type Reloader = Box<dyn FnMut() -> Result<ServerConfig, String>>;

/// What the shell learned while carrying out an effect, told to the bus after the batch.
enum Feedback {
    SpawnFailed {
        child: u64,
        reason: String,
    },
    Joined {
        peer: PeerId,
        serial: u32,
        member: u32,
        result: Result<crate::bus::fastpath::Joined, String>,
    },
    Reloaded {
        peer: PeerId,
        serial: u32,
        result: Result<(), String>,
    },
    Rescanned(Vec<ServiceEntry>),
    /// A member's socket was shut down at this `CLOCK_REALTIME` time (ns).
    Left {
        member: u32,
        at: u64,
    },
}

pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: IdMap<PeerId, Conn>,
    bus: Bus,
    config: ServerConfig,
    reloader: Reloader,
    next_id: PeerId,
    /// Connections with queued output to flush at the end of this iteration.
    dirty: Vec<PeerId>,
    /// Connections not read from while their messages fill others' queues beyond
    /// max_incoming_bytes / max_incoming_unix_fds.
    paused: BTreeSet<PeerId>,
    /// Connections (or members' inboxes) that had more to read when their share of a
    /// wake-up was used up: read again on the next pass, which polls without waiting.
    again: Vec<(PeerId, Again)>,
    /// Listeners are not accepted from while max_incomplete_connections are authenticating.
    accept_paused: bool,
    /// Connections still authenticating (counted as they come and go: an accept must not
    /// look at every connection of the bus).
    incomplete: u64,
    /// accept() is failing (out of descriptors); logged once until it works again.
    accept_failing: bool,
    /// Reload and shutdown requests from other threads ([`Control`]).
    control: Control,
    /// Changes in the watched directories.
    inotify: Inotify,
    /// Processes started for activation.
    children: Children,
    /// Connections' authentication and pending-fds deadlines.
    timers: timers::Timers,
    /// systemd's readiness notifications.
    notifier: notify::Notifier,
    /// The fast path's sockets and routing table (None with --fastpath=off).
    fast: Option<fastpath::FastPath>,
    /// Where connections are read into (one thread reads them all).
    read_buf: Vec<u8>,
    /// Room to write on connections ([`write_space`]).
    write_space: write_space::WriteSpace,
}

const FIRST_CONN: PeerId = 1024;
const CONTROL: Token = Token(FIRST_CONN as usize - 1);
const DIR_CHANGES: Token = Token(FIRST_CONN as usize - 2);
const WRITE_SPACE: Token = Token(FIRST_CONN as usize - 3);
/// Set in the token of a fast-path member's inbox (the rest is the connection's id).
const FAST_INBOX: usize = 1 << 48;
/// Set in the token of a started process's pidfd (the rest is the bus's child id).
const CHILD: usize = 1 << 47;

const STOP: u8 = 1;
const RELOAD: u8 = 2;

/// Asks a running [`Server`] to reload its configuration or to stop, from any thread:
/// busd's signal thread (SIGHUP, SIGTERM, SIGINT) or a test that embeds a server. The
/// request is handled between two events, never inside one.
#[derive(Clone)]
pub struct Control {
    waker: Arc<Waker>,
    requests: Arc<AtomicU8>,
}

impl Control {
    /// Stops the server: [`Server::run`] returns.
    pub fn shutdown(&self) {
        self.request(STOP);
    }

    /// Re-reads the configuration (as ReloadConfig does, without a caller to answer).
    pub fn reload(&self) {
        self.request(RELOAD);
    }

    fn request(&self, what: u8) {
        self.requests.fetch_or(what, Ordering::AcqRel);
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
    }

    fn take(&self) -> u8 {
        self.requests.swap(0, Ordering::AcqRel)
    }
}

/// What is read again on the next pass (see `Server::again`).
#[derive(Clone, Copy, Debug)]
enum Again {
    Stream(Until),
    Frames,
}

/// Full reads of one connection per wake-up, and frames of one member's inbox: past them,
/// the rest waits for the next pass, after every other connection's turn (one sender
/// writing as fast as it can must not keep the bus from the others; dbus-daemon reads a
/// connection a little at a time too).
const READS_PER_PASS: usize = 16;
const FRAMES_PER_PASS: usize = 256;

/// How far a connection is read when it is readable (the poll is edge-triggered: what is
/// not read now is announced again only when more comes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Up to a read shorter than asked without descriptors: the kernel had nothing more
    /// (a stream read stops early only after descriptors, or, with `SO_PASSCRED`, which
    /// busd does not set on clients, at another writer's bytes). Saves the read that
    /// would find EAGAIN: a system call per message on a quiet connection.
    ShortRead,
    /// Until EAGAIN or the end: when the event also said the peer hung up (announced with
    /// the bytes it wrote last; after them only a read sees the end, and no event would
    /// come again: dbus's /activation/forking test hung on exactly that), and when reading
    /// resumes after a pause.
    Exhausted,
}

impl Server {
    /// `starter_env`: what started services find in DBUS_STARTER_ADDRESS,
    /// DBUS_STARTER_BUS_TYPE and DBUS_SESSION_BUS_ADDRESS/DBUS_SYSTEM_BUS_ADDRESS.
    pub fn new(
        listeners: Vec<Listener>,
        bus: Bus,
        config: ServerConfig,
        reloader: Reloader,
        starter_env: Vec<(String, String)>,
        notifier: notify::Notifier,
        fast: Option<fastpath::FastPath>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let control = Control {
            waker: Arc::new(Waker::new(poll.registry(), CONTROL)?),
            requests: Arc::new(AtomicU8::new(0)),
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        poll.registry().register(
            &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
                &inotify,
            ))),
            DIR_CHANGES,
            Interest::READABLE,
        )?;
        let write_space = write_space::WriteSpace::new()?;
        poll.registry().register(
            &mut SourceFd(&write_space.fd()),
            WRITE_SPACE,
            Interest::READABLE,
        )?;
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(&mut l.socket, Token(i), Interest::READABLE)?;
        }
        Ok(Server {
            poll,
            listeners,
            conns: IdMap::default(),
            bus,
            config,
            reloader,
            next_id: FIRST_CONN,
            dirty: Vec::new(),
            paused: BTreeSet::new(),
            again: Vec::new(),
            accept_paused: false,
            incomplete: 0,
            accept_failing: false,
            control,
            inotify,
            children: Children::new(starter_env, CHILD),
            timers: timers::Timers::default(),
            notifier,
            fast,
            read_buf: vec![0; conn::READ_CHUNK],
            write_space,
        })
        .map(|mut s| {
            s.watch_dirs();
            s
        })
    }

    /// A handle to stop or reload this server from another thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until [`Control::shutdown`]; dropping the server then removes its socket files.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        self.notifier.notify("READY=1");
        // One clock reading per wake-up: the time the poll returned. The next timeout is
        // counted from it too, so a deadline is late by at most one pass over the events
        // (as it would be anyway: they are handled before timers).
        let mut now = Instant::now();
        loop {
            let timeout = if self.again.is_empty() {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(now))
            } else {
                Some(std::time::Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    now = Instant::now();
                    continue;
                }
                Err(e) => return Err(e),
            }
            now = Instant::now();
            self.bus.set_now(now);
            for event in events.iter() {
                if event.token() == CONTROL {
                    let requests = self.control.take();
                    if requests & STOP != 0 {
                        info!("exiting on request");
                        self.notifier.notify("STOPPING=1");
                        return Ok(());
                    }
                    if requests & RELOAD != 0 {
                        match self.reload() {
                            Ok(()) => info!("configuration reloaded (on request)"),
                            Err(e) => warn!("configuration not reloaded, keeping the old one: {e}"),
                        }
                        self.apply_effects();
                    }
                    continue;
                }
                if event.token().0 & CHILD != 0 {
                    self.reap_child((event.token().0 & !CHILD) as u64);
                    continue;
                }
                if event.token() == DIR_CHANGES {
                    self.dirs_changed();
                    continue;
                }
                if event.token() == WRITE_SPACE {
                    let (conns, dirty) = (&self.conns, &mut self.dirty);
                    self.write_space.take(|id| {
                        if conns.get(&id).is_some_and(|c| c.has_output()) {
                            dirty.push(id);
                        }
                    });
                    continue;
                }
                if event.token().0 & FAST_INBOX != 0 {
                    self.read_frames((event.token().0 & !FAST_INBOX) as PeerId);
                    continue;
                }
                let token = event.token().0 as PeerId;
                if token < FIRST_CONN {
                    self.accept(token as usize);
                    continue;
                }
                if event.is_read_closed() || event.is_error() {
                    self.read(token, Until::Exhausted);
                } else if event.is_readable() {
                    self.read(token, Until::ShortRead);
                }
            }
            for (id, again) in std::mem::take(&mut self.again) {
                match again {
                    Again::Stream(until) => self.read(id, until),
                    Again::Frames => self.read_frames(id),
                }
            }
            for child in self.children.polled() {
                self.reap_child(child);
            }
            self.expire(now);
            self.flush_dirty();
            self.resume_paused();
            self.resume_accepting();
        }
    }

    /// Re-reads the configuration and the service files; either all of it applies or none
    /// of it. The caller applies the effects (ActivatableServicesChanged, filters).
    fn reload(&mut self) -> Result<(), String> {
        self.notifier.notify("RELOADING=1");
        let loaded = (self.reloader)();
        self.notifier.notify("READY=1");
        let cfg = loaded?;
        self.bus.reconfigure(
            cfg.limits.clone(),
            Rc::clone(&cfg.policy),
            cfg.servicehelper.clone(),
        );
        self.bus.set_activatable(cfg.services.clone(), true);
        self.config = cfg;
        self.watch_dirs();
        Ok(())
    }

    /// Watches the configuration's directories (those that exist), as dbus-daemon does.
    fn watch_dirs(&mut self) {
        let flags = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM;
        for dir in &self.config.watched_dirs {
            // Watching a directory twice returns the same watch: harmless.
            if dir.is_dir() {
                if let Err(e) = self.inotify.add_watch(dir.as_path(), flags) {
                    debug!("cannot watch {}: {e}", dir.display());
                }
            }
        }
    }

    /// Something changed in a watched directory: reload, as dbus-daemon does.
    fn dirs_changed(&mut self) {
        let mut changed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            changed = true;
        }
        if changed {
            match self.reload() {
                Ok(()) => info!("configuration reloaded (a watched directory changed)"),
                Err(e) => warn!("configuration not reloaded, keeping the old one: {e}"),
            }
            self.apply_effects();
        }
    }

    /// A started process's pidfd became readable (or it is polled): if it ended, the bus
    /// hears how.
    fn reap_child(&mut self, child: u64) {
        if let Some(how) = self.children.reap(self.poll.registry(), child) {
            self.bus.child_exited(child, how);
            self.apply_effects();
        }
    }

    fn incomplete_count(&self) -> u64 {
        debug_assert_eq!(
            self.incomplete,
            self.conns.values().filter(|c| !c.is_complete()).count() as u64
        );
        self.incomplete
    }

    /// Accepts again once fewer than max_incomplete_connections are authenticating, or
    /// after accept() failed for want of descriptors (clients waited in the listen backlog
    /// meanwhile, as with dbus-daemon).
    fn resume_accepting(&mut self) {
        if self.accept_paused
            && self.incomplete_count() < self.config.limits.max_incomplete_connections
        {
            self.accept_paused = false;
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    fn pending_fd_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.pending_fd_timeout)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let conns = &self.conns;
        self.timers
            .next(|at, id| conns.get(&id).is_some_and(|c| c.deadline_is(at)))
            .into_iter()
            .chain(self.bus.next_deadline())
            .chain(self.children.next_poll())
            .min()
    }

    fn expire(&mut self, now: Instant) {
        let fd_timeout = self.pending_fd_timeout();
        let mut auth_expired = Vec::new();
        let mut fds_expired = Vec::new();
        for (at, id) in self.timers.expired(now) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.auth_deadline() == Some(at) {
                auth_expired.push(id);
                continue;
            }
            c.fds_timer_fired(at);
            match c.fds_deadline(fd_timeout) {
                Some(d) if d <= now => fds_expired.push(id),
                // A later pending period than the one this timer was for: its own now.
                Some(_) => {
                    if let Some(d) = c.fds_timer(fd_timeout) {
                        self.timers.arm(d, id);
                    }
                }
                None => {}
            }
        }
        for id in auth_expired {
            debug!(conn = id, "authentication timed out");
            self.close(id);
        }
        for id in fds_expired {
            warn!(
                conn = id,
                pending_fd_timeout = self.config.limits.pending_fd_timeout,
                "Connection has had Unix fds pending for too long, closing it"
            );
            self.close(id);
        }
        self.bus.expire(now);
        self.apply_effects();
    }

    /// Reads again from connections whose earlier messages have drained from the queues.
    fn resume_paused(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let ready: Vec<PeerId> = self
            .paused
            .iter()
            .copied()
            .filter(|id| self.conns.get(id).is_none_or(|c| !self.over_incoming(c)))
            .collect();
        for id in ready {
            self.paused.remove(&id);
            self.read(id, Until::Exhausted);
            self.read_frames(id);
        }
        self.flush_dirty();
    }

    fn over_incoming(&self, c: &Conn) -> bool {
        let l = &self.config.limits;
        c.meters()
            .live
            .over(l.max_incoming_bytes, l.max_incoming_unix_fds)
    }

    fn accept(&mut self, index: usize) {
        loop {
            if self.incomplete_count() >= self.config.limits.max_incomplete_connections {
                self.accept_paused = true;
                return;
            }
            let accepted = match self.listeners.get(index) {
                Some(l) => l.socket.accept(),
                None => return,
            };
            let stream = match accepted {
                Ok((s, _)) => {
                    self.accept_failing = false;
                    s
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of file descriptors (or memory): the client waits in the backlog
                    // and accepting resumes on the next wake-up, once something was closed.
                    if !self.accept_failing {
                        warn!("accept failed, retrying later: {e}");
                        self.accept_failing = true;
                    }
                    self.accept_paused = true;
                    return;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let timeout = Duration::from_millis(self.config.limits.auth_timeout);
            let mut conn = match Conn::new(
                stream,
                &self.config.mechanisms,
                &self.bus.settings().guid,
                timeout,
            ) {
                Ok(c) => c,
                Err(e) => {
                    warn!("cannot set up a connection: {e}");
                    continue;
                }
            };
            if let Err(e) = self
                .poll
                .registry()
                .register(conn.source(), Token(id as usize), Interest::READABLE)
                .and_then(|()| {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(conn.source());
                    self.write_space.watch(fd, id)
                })
            {
                warn!("cannot register a connection: {e}");
                continue;
            }
            if let Some(at) = conn.auth_deadline() {
                self.timers.arm(at, id);
            }
            self.incomplete += u64::from(!conn.is_complete());
            self.conns.insert(id, conn);
        }
    }

    fn read(&mut self, id: PeerId, until: Until) {
        for _ in 0..READS_PER_PASS {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.is_authenticated() && self.over_incoming(&self.conns[&id]) {
                // Like dbus-daemon, stop reading from a sender whose messages already
                // fill the queues; it resumes when they drain.
                self.paused.insert(id);
                return;
            }
            let fd_timeout = self.pending_fd_timeout();
            let conn = self.conns.get_mut(&id).expect("checked above");
            let was_authenticated = conn.is_authenticated();
            let outcome = conn.read_once(&self.config.limits, &mut self.read_buf);
            if let Some(at) = conn.fds_timer(fd_timeout) {
                self.timers.arm(at, id);
            }
            if !was_authenticated && conn.is_authenticated() && !self.admit(id) {
                return;
            }
            self.dirty.push(id);
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let messages = conn.take_messages();
            for msg in messages {
                self.bus.handle_message(id, msg);
                self.apply_effects();
            }
            if let Some(conn) = self.conns.get_mut(&id) {
                if !conn.is_complete() && self.bus.is_active(id) {
                    conn.completed();
                    self.incomplete -= 1;
                }
            }
            match outcome {
                ReadOutcome::More => {}
                ReadOutcome::Short if until == Until::ShortRead => return,
                ReadOutcome::Short => {}
                ReadOutcome::Drained => return,
                ReadOutcome::Closed => return self.close(id),
                ReadOutcome::Invalid(why) => {
                    warn!(
                        conn = id,
                        "disconnecting a client that sent invalid data: {why}"
                    );
                    return self.close(id);
                }
            }
        }
        // Its share of this pass is used up, and it may have more: the next pass (which
        // does not wait) reads on, after the others.
        self.again.push((id, Again::Stream(until)));
    }

    /// A connection finished authenticating: apply the policy's user rules, then hand it to
    /// the bus (the completed-connection limits apply at Hello, in the bus). Returns false if
    /// it was refused and closed.
    fn admit(&mut self, id: PeerId) -> bool {
        let uid = self.conns[&id].credentials().uid;
        let policy = &self.config.policy;
        if let Some(uid) = uid {
            let groups = if policy.connect_uses_groups() {
                identity::user_groups(uid)
            } else {
                Vec::new()
            };
            if !policy.may_connect(uid, &groups, self.bus.settings().uid) {
                // The SASL OK is already queued; like dbus-daemon, the connection closes
                // once the client begins.
                warn!(
                    uid,
                    "Connection from this user is not allowed by the bus policy; disconnecting"
                );
                self.close_quietly(id);
                return false;
            }
        }
        let at_console = uid.is_some_and(|u| policy.uses_console() && identity::at_console(u));
        let conn = self
            .conns
            .get_mut(&id)
            .expect("admitting a known connection");
        conn.credentials_mut().at_console = at_console;
        let pid = conn.credentials().pid;
        conn.credentials_mut().command = pid.and_then(identity::command_for_pid);
        self.bus.connect(
            id,
            conn.credentials().clone(),
            conn.unix_fds(),
            conn.meters().clone(),
        );
        true
    }

    /// Carries out what the bus asked for, batch after batch: what the shell learns while
    /// doing so (a start failed, a member's sockets exist, a reload ended) is told to the
    /// bus after the batch it came from, so the effects it causes never overtake the rest
    /// of that batch.
    fn apply_effects(&mut self) {
        loop {
            let effects: Vec<Effect> = self.bus.take_effects().collect();
            if effects.is_empty() {
                break;
            }
            let mut feedback = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Send(to, out) => {
                        tracing::trace!(conn = to, len = out.bytes.len(), "queue");
                        if let Some(c) = self.conns.get_mut(&to) {
                            c.queue(out);
                            self.dirty.push(to);
                        }
                    }
                    Effect::Disconnect(id) => self.close(id),
                    Effect::Spawn {
                        child,
                        service,
                        argv,
                        env,
                    } => {
                        let registry = self.poll.registry();
                        if let Err(reason) =
                            self.children.spawn(registry, child, &service, &argv, &env)
                        {
                            feedback.push(Feedback::SpawnFailed { child, reason });
                        }
                    }
                    Effect::Kill { child } => {
                        self.children.kill(child);
                    }
                    Effect::FastJoin {
                        peer,
                        serial,
                        member,
                        filter,
                    } => {
                        let result = self.fast_join(peer, member, filter.as_ref());
                        feedback.push(Feedback::Joined {
                            peer,
                            serial,
                            member,
                            result,
                        });
                    }
                    Effect::FastLeave(peer) => {
                        if let Some(left) = self.fast_leave(peer) {
                            feedback.push(left);
                        }
                    }
                    Effect::RescanServices => {
                        let mut warnings = Vec::new();
                        let entries =
                            crate::activation::scan(&self.config.service_dirs, &mut warnings);
                        for w in warnings {
                            debug!("{w}");
                        }
                        feedback.push(Feedback::Rescanned(entries));
                    }
                    Effect::ReloadConfig { peer, serial } => {
                        let result = self.reload();
                        if result.is_ok() {
                            info!("configuration reloaded");
                        }
                        feedback.push(Feedback::Reloaded {
                            peer,
                            serial,
                            result,
                        });
                    }
                }
            }
            for f in feedback {
                match f {
                    Feedback::SpawnFailed { child, reason } => {
                        self.bus.spawn_failed(child, &reason)
                    }
                    Feedback::Joined {
                        peer,
                        serial,
                        member,
                        result,
                    } => self.bus.fast_joined(peer, serial, member, result),
                    Feedback::Reloaded {
                        peer,
                        serial,
                        result,
                    } => self.bus.reload_finished(peer, serial, result),
                    Feedback::Rescanned(entries) => self.bus.services_rescanned(entries),
                    Feedback::Left { member, at } => self.bus.fast_left_at(member, at),
                }
            }
        }
        self.apply_fast_updates();
    }

    /// Creates a member's sockets and watches its inbox.
    fn fast_join(
        &mut self,
        peer: PeerId,
        member: u32,
        filter: Option<&busd_match::bpf::Program>,
    ) -> Result<crate::bus::fastpath::Joined, String> {
        let fast = self.fast.as_mut().ok_or("the fast path is off")?;
        let (joined, inbox) = fast
            .join(peer, member, filter)
            .map_err(|e| format!("cannot create the member's sockets: {e}"))?;
        let token = Token(FAST_INBOX | peer as usize);
        if let Err(e) = self
            .poll
            .registry()
            .register(inbox, token, Interest::READABLE)
        {
            fast.leave(peer);
            return Err(format!("cannot watch the member's socket: {e}"));
        }
        Ok(joined)
    }

    fn fast_leave(&mut self, peer: PeerId) -> Option<Feedback> {
        // Closing the inbox takes it out of the poll (as in `close`).
        let member = self.fast.as_mut()?.leave(peer)?;
        // (Read once the socket is shut down: every frame it sent was queued before.)
        let at = busd_match::table::realtime_ns();
        Some(Feedback::Left { member, at })
    }

    /// Replaces filters and republishes the routing table after the bus changed them.
    fn apply_fast_updates(&mut self) {
        let Some(fast) = self.fast.as_mut() else {
            return;
        };
        let Some(updates) = self.bus.take_fast_updates() else {
            return;
        };
        for (peer, prog) in &updates.filters {
            fast.set_filter(*peer, prog);
        }
        if let Some(prog) = updates.daemon_filter {
            fast.set_daemon_filter(prog);
        }
        if let Some(t) = &updates.table {
            fast.publish(t, &updates.table_changes);
        }
    }

    /// Routes what a member sent the daemon on its inbox (paused, like its stream, while
    /// its messages fill others' queues).
    fn read_frames(&mut self, id: PeerId) {
        for _ in 0..FRAMES_PER_PASS {
            if self.paused.contains(&id) {
                return;
            }
            if self.conns.get(&id).is_some_and(|c| self.over_incoming(c)) {
                self.paused.insert(id);
                return;
            }
            let limits = &self.config.limits;
            let (max_size, max_fds) = (
                limits.max_message_size as usize,
                limits.max_message_unix_fds as usize,
            );
            let Some(fast) = self.fast.as_mut() else {
                return;
            };
            match fast.receive(id, max_size, max_fds) {
                fastpath::Received::Drained => return,
                fastpath::Received::Invalid(why) => {
                    warn!(conn = id, "disconnecting a fast-path member: {why}");
                    return self.close(id);
                }
                fastpath::Received::Frame(f) => {
                    match busd_wire::message::Message::parse(f.bytes, f.fds) {
                        Ok(msg) => {
                            self.bus.handle_fast_frame(id, f.destination, msg);
                            self.apply_effects();
                        }
                        Err(e) => {
                            warn!(conn = id, "disconnecting a fast-path member that sent an invalid message: {e}");
                            return self.close(id);
                        }
                    }
                }
            }
        }
        // (As a stream: the rest on the next pass.)
        self.again.push((id, Again::Frames));
    }

    /// Writes out every connection with queued output. Flushing can queue more (a peer that
    /// hung up is read one last time, and what it sent is routed), so this runs until
    /// nothing is left: output queued meanwhile must not wait for an unrelated event.
    fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            self.flush_each(dirty);
        }
    }

    fn flush_each(&mut self, dirty: Vec<PeerId>) {
        for id in dirty {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            match c.flush() {
                Ok(()) => {
                    // (What the socket did not take goes when it has room.)
                    self.write_space.blocked(id, c.has_output());
                    let want = c.wants_write_space();
                    if want != c.write_space_armed {
                        c.write_space_armed = want;
                        let fd = std::os::fd::AsRawFd::as_raw_fd(c.source());
                        if let Err(e) = self.write_space.arm(fd, id, want) {
                            warn!(conn = id, "cannot watch a connection: {e}");
                        }
                    }
                }
                Err(e) => {
                    debug!(conn = id, "write failed: {e}");
                    // The peer hung up: first take in whatever it sent before it left (its
                    // last messages must still be routed), then close.
                    self.read(id, Until::Exhausted);
                    self.close(id);
                }
            }
        }
    }

    /// Drops a connection that never joined the bus.
    fn close_quietly(&mut self, id: PeerId) {
        // Closing the socket removes it from the poll (see `close`).
        drop(self.take_conn(id));
    }

    /// Takes connection `id` out of every record the server keeps of it, after a last
    /// flush: best effort, so that what was already answered (e.g. the SASL OK) still
    /// reaches the peer.
    fn take_conn(&mut self, id: PeerId) -> Option<Conn> {
        self.paused.remove(&id);
        let mut c = self.conns.remove(&id)?;
        self.write_space.blocked(id, false);
        self.incomplete -= u64::from(!c.is_complete());
        let _ = c.flush();
        Some(c)
    }

    fn close(&mut self, id: PeerId) {
        let Some(c) = self.take_conn(id) else {
            return;
        };
        // No EPOLL_CTL_DEL: closing the last descriptor of a socket takes it out of the
        // poll, a system call less per connection. (A child between fork and exec may hold
        // a copy for a moment; an event it causes carries this id, which is never reused
        // and which every handler ignores once the connection is gone.)
        let joined = c.is_authenticated();
        drop(c);
        if joined {
            self.bus.disconnected(id);
            self.apply_effects();
        }
    }
}
