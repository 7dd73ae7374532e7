//! The I/O shell: listening sockets, connections, and the single-threaded event loop that
//! feeds the bus state machine and carries out its effects.

mod conn;
mod listen;

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tracing::{debug, info, warn};

use crate::bus::{Bus, Effect, PeerId};
use crate::wire::sasl::Mechanism;

pub use listen::{bind, Listener};

use conn::{Conn, ReadOutcome};

/// What the server needs from the configuration, re-read on ReloadConfig.
pub struct ServerConfig {
    pub mechanisms: Vec<Mechanism>,
    pub limits: busd_policy::Limits,
}

/// Re-reads the configuration (the shell does the file I/O; the bus only gets the result).
pub type Reloader = Box<dyn FnMut() -> Result<ServerConfig, String>>;

pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: HashMap<PeerId, Conn>,
    bus: Bus,
    config: ServerConfig,
    reloader: Reloader,
    next_id: PeerId,
    /// Connections with queued output to flush at the end of this iteration.
    dirty: Vec<PeerId>,
}

const FIRST_CONN: PeerId = 1024;

impl Server {
    pub fn new(
        listeners: Vec<Listener>,
        bus: Bus,
        config: ServerConfig,
        reloader: Reloader,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(&mut l.socket, Token(i), Interest::READABLE)?;
        }
        Ok(Server {
            poll,
            listeners,
            conns: HashMap::new(),
            bus,
            config,
            reloader,
            next_id: FIRST_CONN,
            dirty: Vec::new(),
        })
    }

    /// Runs until the process is killed.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let token = event.token().0 as PeerId;
                if token < FIRST_CONN {
                    self.accept(token as usize);
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(token);
                }
                if event.is_writable() {
                    self.dirty.push(token);
                }
            }
            self.expire_auth();
            self.flush_dirty();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(Conn::auth_deadline).min()
    }

    fn expire_auth(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.auth_deadline().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            debug!(conn = id, "authentication timed out");
            self.close(id);
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let accepted = match self.listeners.get(index) {
                Some(l) => l.socket.accept(),
                None => return,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("accept failed: {e}");
                    return;
                }
            };
            let incomplete = self
                .conns
                .values()
                .filter(|c| !c.is_authenticated())
                .count() as u64;
            if incomplete >= self.config.limits.max_incomplete_connections {
                warn!("too many connections still authenticating; refusing one");
                continue;
            }
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
            if let Err(e) = self.poll.registry().register(
                conn.source(),
                Token(id as usize),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register a connection: {e}");
                continue;
            }
            self.conns.insert(id, conn);
        }
    }

    fn read(&mut self, id: PeerId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let was_authenticated = conn.is_authenticated();
        let outcome = conn.read(&self.config.limits);
        if !was_authenticated && conn.is_authenticated() {
            let completed = self.conns.values().filter(|c| c.is_authenticated()).count() as u64;
            let conn = &self.conns[&id];
            let uid = conn.credentials().uid;
            let per_user = self
                .conns
                .values()
                .filter(|c| c.is_authenticated() && c.credentials().uid == uid)
                .count() as u64;
            if completed > self.config.limits.max_completed_connections {
                warn!("The maximum number of active connections has been reached (max_completed_connections)");
                self.close_quietly(id);
                return;
            }
            if per_user > self.config.limits.max_connections_per_user {
                warn!(?uid, "The maximum number of active connections for this user has been reached (max_connections_per_user)");
                self.close_quietly(id);
                return;
            }
            self.bus.connect(id, conn.credentials(), conn.unix_fds());
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
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Closed => self.close(id),
            ReadOutcome::Invalid(why) => {
                warn!(
                    conn = id,
                    "disconnecting a client that sent invalid data: {why}"
                );
                self.close(id);
            }
        }
    }

    fn apply_effects(&mut self) {
        let effects: Vec<Effect> = self.bus.take_effects().collect();
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
                Effect::ReloadConfig { peer, serial } => {
                    let result = (self.reloader)().map(|cfg| {
                        self.bus.set_limits(cfg.limits.clone());
                        self.config = cfg;
                        info!("configuration reloaded");
                    });
                    self.bus.reload_finished(peer, serial, result);
                    self.apply_effects();
                }
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if let Err(e) = c.flush() {
                debug!(conn = id, "write failed: {e}");
                // The peer hung up: first take in whatever it sent before it left (its last
                // messages must still be routed), then close.
                self.read(id);
                self.close(id);
            }
        }
        self.dirty = dirty;
    }

    /// Drops a connection that never joined the bus.
    fn close_quietly(&mut self, id: PeerId) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.poll.registry().deregister(c.source());
        }
    }

    fn close(&mut self, id: PeerId) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        // Best effort: what was already answered (e.g. the SASL OK) still reaches the peer.
        let _ = c.flush();
        let _ = self.poll.registry().deregister(c.source());
        let joined = c.is_authenticated();
        drop(c);
        if joined {
            self.bus.disconnected(id);
            self.apply_effects();
        }
    }
}
