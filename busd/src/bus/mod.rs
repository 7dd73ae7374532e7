//! The bus state machine: peers, names, match rules, routing and the driver. No I/O.
//!
//! The I/O shell feeds it events ([`Bus::connect`], [`Bus::handle_message`],
//! [`Bus::disconnected`]) and then drains [`Bus::take_effects`]: bytes to write to a peer, a
//! peer to close, a configuration reload to perform. One thread owns it.

pub mod activation;
mod compose;
pub mod driver;
pub mod error;
pub mod fastpath;
pub mod matches;
pub mod names;
mod peers;
mod reply;
mod routed;
mod security;
mod stats;

use crate::bus::error::{DriverError, ErrorName};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use busd_policy::{ClientIdentity, ClientPolicy, CompiledPolicy};
use tracing::{debug, warn};

use crate::queue::{Charge, Outgoing, QueueLoad};
use busd_wire::message::{self, Message};
use peers::Peer;
use routed::Routed;

pub use compose::DriverMessage;
pub use driver::introspection_xml;

/// The server's handle on a connection.
pub type PeerId = u64;

/// A map keyed by ids the daemon hands out (peers, members). These lookups run several
/// times per message, and foldhash costs a fraction of SipHash on integers. Keys a client
/// chooses (names, match keys, the serials of its calls) keep std's SipHash, whose seed
/// comes from the system's randomness: foldhash's does not, and it does not claim to
/// resist an attacker who picks keys.
pub type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub const DBUS_NAME: &str = "org.freedesktop.DBus";
pub const DBUS_PATH: &str = "/org/freedesktop/DBus";
pub const DBUS_INTERFACE: &str = "org.freedesktop.DBus";

/// What the bus knows about itself, fixed at start-up or replaced on reload.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// The bus's GUID, 32 hex digits.
    pub guid: String,
    pub machine_id: String,
    /// The daemon's own uid and pid (privileged callers; credentials of org.freedesktop.DBus).
    pub uid: u32,
    pub pid: u32,
    pub limits: busd_policy::Limits,
    pub policy: Rc<CompiledPolicy>,
    /// The `<servicehelper>` (a system bus): services are started through it, and the
    /// activation environment is fixed.
    pub servicehelper: Option<String>,
    /// `--systemd-activation`: services with a SystemdService are started by systemd.
    pub systemd_activation: bool,
}

/// Credentials of a connection, from SO_PEERCRED, SO_PEERGROUPS and authentication.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// None for an anonymous connection.
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub gid: Option<u32>,
    /// Every group of the peer process (its primary group included), sorted.
    pub groups: Vec<u32>,
    /// The user has a local seat (asked only when the policy has at_console contexts).
    pub at_console: bool,
    /// The peer's command line, shortened, for log messages.
    pub command: Option<String>,
}

impl Credentials {
    /// How dbus-daemon names a connection in its log messages.
    pub fn loginfo(&self) -> String {
        let mut parts = Vec::new();
        if let Some(uid) = self.uid {
            parts.push(format!("uid={uid}"));
        }
        if let Some(pid) = self.pid {
            parts.push(format!(
                "pid={pid} comm=\"{}\"",
                self.command.as_deref().unwrap_or("")
            ));
        }
        parts.join(" ")
    }

    fn identity(&self, policy: &CompiledPolicy) -> ClientIdentity {
        ClientIdentity {
            uid: self.uid,
            groups: if policy.uses_groups() {
                self.groups.clone()
            } else {
                Vec::new()
            },
            at_console: self.at_console && policy.uses_console(),
        }
    }
}

/// The shell's accounting for one connection.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    /// What waits in its output queue.
    pub outgoing: Rc<QueueLoad>,
    /// Its own messages still waiting in anyone's queue.
    pub live: Rc<QueueLoad>,
}

/// What the I/O shell must do.
#[derive(Debug)]
pub enum Effect {
    Send(PeerId, Outgoing),
    Disconnect(PeerId),
    /// Re-read the configuration; then call [`Bus::reload_finished`] with these.
    ReloadConfig {
        peer: PeerId,
        serial: u32,
    },
    /// Start a service's process (then report [`Bus::child_exited`] or
    /// [`Bus::spawn_failed`]). `env` overrides the daemon's environment.
    Spawn {
        child: u64,
        service: String,
        argv: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// Kill a started process that did not take its name in time.
    Kill {
        child: u64,
    },
    /// Create a fast-path member's sockets with this filter attached (None: the member
    /// has no rules yet, and gets its filter with its first); then call
    /// [`Bus::fast_joined`].
    FastJoin {
        peer: PeerId,
        serial: u32,
        member: u32,
        filter: Option<busd_match::bpf::Program>,
    },
    /// Close a member's fast-path sockets (it left the fast path, not the bus).
    FastLeave(PeerId),
    /// Read the service directories again, then call [`Bus::services_rescanned`].
    RescanServices,
}

pub struct Bus {
    settings: BusSettings,
    peers: peers::PeerRegistry,
    names: names::NameRegistry,
    matches: matches::MatchRegistry,
    monitors: Vec<PeerId>,
    /// The monitors' rules, counted in Debug.Stats as dbus-daemon counts them.
    monitor_rules: usize,
    replies: reply::ReplyRegistry,
    /// One client policy per distinct identity, rebuilt on reload.
    policy_cache: HashMap<ClientIdentity, Rc<ClientPolicy>>,
    /// The time of the event being handled, set by the shell.
    now: Instant,
    activation_env: HashMap<String, String>,
    activation: activation::Activation,
    peaks: stats::Peaks,
    serial: u32,
    stamp: u64,
    effects: Vec<Effect>,
    /// Scratch list of recipients, reused across messages.
    recipients: Vec<PeerId>,
    fast: fastpath::State,
}

impl Bus {
    pub fn new(settings: BusSettings) -> Self {
        Bus {
            settings,
            peers: peers::PeerRegistry::default(),
            names: names::NameRegistry::default(),
            matches: matches::MatchRegistry::default(),
            monitors: Vec::new(),
            monitor_rules: 0,
            replies: reply::ReplyRegistry::default(),
            policy_cache: HashMap::new(),
            now: Instant::now(),
            activation_env: HashMap::new(),
            activation: activation::Activation::default(),
            peaks: stats::Peaks::default(),
            serial: 0,
            stamp: 0,
            effects: Vec::new(),
            recipients: Vec::new(),
            fast: fastpath::State::default(),
        }
    }

    pub fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// Replaces limits and policy after a configuration reload; every connection's policy
    /// is rebuilt from the new rules.
    pub fn reconfigure(
        &mut self,
        limits: busd_policy::Limits,
        policy: Rc<CompiledPolicy>,
        servicehelper: Option<String>,
    ) {
        self.settings.limits = limits;
        self.settings.policy = policy;
        self.settings.servicehelper = servicehelper;
        self.policy_cache.clear();
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let creds = self.peers[&id].creds.clone();
            let policy = self.client_policy(&creds);
            if let Some(p) = self.peers.get_mut(&id) {
                p.policy = policy;
            }
        }
        self.fast_policy_changed();
    }

    /// Sets the clock for the events that follow (the shell calls it once per wake-up).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    fn client_policy(&mut self, creds: &Credentials) -> Rc<ClientPolicy> {
        let key = creds.identity(&self.settings.policy);
        if let Some(p) = self.policy_cache.get(&key) {
            return Rc::clone(p);
        }
        let p = Rc::new(self.settings.policy.client_policy(&key));
        self.policy_cache.insert(key, Rc::clone(&p));
        p
    }

    pub fn take_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// An authenticated connection joined (before Hello).
    pub fn connect(&mut self, id: PeerId, creds: Credentials, unix_fds: bool, meters: Meters) {
        let policy = self.client_policy(&creds);
        let mut peer = Peer::new(creds, policy, unix_fds);
        peer.outgoing = meters.outgoing;
        peer.live = meters.live;
        self.peers.insert(id, peer);
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether a connection has said Hello (dbus-daemon's "complete" connections; the others
    /// count against max_incomplete_connections and auth_timeout).
    pub fn is_active(&self, id: PeerId) -> bool {
        self.peers.get(&id).is_some_and(Peer::is_active)
    }

    /// Whether `name` (unique or well-known) currently designates `peer`.
    fn is_owned_by(&self, name: &str, peer: PeerId) -> bool {
        self.owner_of(name) == Some(peer)
    }

    /// The connection a name designates.
    fn owner_of(&self, name: &str) -> Option<PeerId> {
        if busd_wire::names::is_unique_name(name) {
            self.peers.by_unique(name)
        } else {
            self.names.primary_owner(name)
        }
    }

    fn unique_of(&self, peer: PeerId) -> &str {
        self.peers
            .get(&peer)
            .and_then(|p| p.unique.as_deref())
            .unwrap_or("")
    }

    fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1);
        if self.serial == 0 {
            self.serial = 1;
        }
        self.serial
    }

    fn send(&mut self, to: PeerId, out: Outgoing) {
        if self.peers.get(&to).is_some_and(|p| !p.closing) {
            self.effects.push(Effect::Send(to, out));
        }
    }

    fn disconnect(&mut self, peer: PeerId) {
        self.effects.push(Effect::Disconnect(peer));
    }

    /// Copies a message to every monitor whose rules match it.
    fn capture(
        &mut self,
        msg: &Message,
        sender: Option<PeerId>,
        recipient: Option<PeerId>,
        out: &Outgoing,
    ) {
        let copies = self.monitor_copies(msg, sender, recipient, out);
        self.effects.extend(copies);
    }

    /// The copies of a message that monitors get, to be added to the effects where they
    /// belong: where dbus-daemon sends them after what the message itself causes
    /// (activation), they are made first and added after.
    fn monitor_copies(
        &self,
        msg: &Message,
        sender: Option<PeerId>,
        recipient: Option<PeerId>,
        out: &Outgoing,
    ) -> Vec<Effect> {
        if self.monitors.is_empty() {
            return Vec::new();
        }
        let routed = Routed::new(self, msg, sender, recipient);
        self.monitors
            .iter()
            .filter(|&&m| {
                self.peers.get(&m).is_some_and(|p| {
                    !p.closing
                        && p.monitor
                            .as_ref()
                            .is_some_and(|rules| rules.iter().any(|r| r.matches(&routed)))
                })
            })
            .map(|&m| Effect::Send(m, out.clone()))
            .collect()
    }

    /// A complete, valid message arrived from `from`.
    pub fn handle_message(&mut self, from: PeerId, msg: Message) {
        let Some(peer) = self.peers.get(&from) else {
            return;
        };
        if peer.monitor.is_some() {
            warn!(
                peer = self.unique_of(from),
                "Monitoring connection is not allowed to send messages; closing it"
            );
            self.disconnect(from);
            return;
        }
        let active = peer.unique.is_some();
        let sender_name = match &peer.unique {
            Some(u) => u.clone(),
            // Monitors see Hello from the name it is about to give, as dbus-daemon shows it.
            None if msg.member() == Some("Hello") => self.peers.next_unique(),
            None => ":not.active.yet".to_string(),
        };
        let destination = msg.destination().map(str::to_string);

        match destination.as_deref() {
            Some(DBUS_NAME) => {
                let Some((out, view)) = self.outgoing(msg, from, &sender_name) else {
                    return;
                };
                let copies = self.monitor_copies(&view, Some(from), None, &out);
                if active {
                    if let Err(denied) = self.check_security(&view, Some(from), None, None, false) {
                        self.effects.extend(copies);
                        self.error_reply(from, &view, &denied);
                        return;
                    }
                }
                if view.msg_type() == message::SIGNAL
                    && view.interface() == Some("org.freedesktop.systemd1.Activator")
                    && view.member() == Some("ActivationFailure")
                {
                    // The failed starts' errors go out before the report itself reaches
                    // monitors, as in dbus-daemon (they are sent in a transaction of their
                    // own).
                    self.handle_activation_failure(from, &view);
                    self.effects.extend(copies);
                } else {
                    self.effects.extend(copies);
                    driver::handle(self, from, &view);
                }
                // Eavesdroppers may watch what is sent to the bus.
                self.dispatch_matches(&view, Some(from), None, &out);
            }
            _ if !active => {
                debug!("message before Hello; closing the connection");
                self.disconnect(from);
            }
            None => {
                if msg.msg_type() == message::SIGNAL {
                    let Some((out, view)) = self.outgoing(msg, from, &sender_name) else {
                        return;
                    };
                    self.capture(&view, Some(from), None, &out);
                    self.dispatch_matches(&view, Some(from), None, &out);
                } else if msg.msg_type() == message::METHOD_CALL {
                    // Addressed to the bus connection itself, as peer-to-peer.
                    driver::handle_peer_to_peer(self, from, &msg);
                }
            }
            Some(dest) => {
                // Without an owner, dbus-daemon tries activation (for unique names too,
                // which no .service file provides) unless the caller said not to.
                let Some(recipient) = self.owner_of(dest) else {
                    let Some((out, view)) = self.outgoing(msg, from, &sender_name) else {
                        return;
                    };
                    // Monitors see what activation sends (systemd's ActivationRequest) before
                    // the message that caused it, as with dbus-daemon; an error after it.
                    let copies = self.monitor_copies(&view, Some(from), None, &out);
                    let serial = view.serial();
                    let before_activation = self.effects.len();
                    let result = if view.auto_start() {
                        self.activate(
                            Some(from),
                            activation::Request::Auto { msg: view, out },
                            dest,
                        )
                    } else {
                        Err(DriverError::new(
                            ErrorName::NameHasNoOwner,
                            format!("Name \"{dest}\" does not exist"),
                        ))
                    };
                    if result.is_ok() {
                        self.effects.extend(copies);
                    } else {
                        // A start that failed after composing something (an
                        // ActivationRequest for a systemd that could not be started) shows
                        // the message first, as it would without activation.
                        self.effects
                            .splice(before_activation..before_activation, copies);
                    }
                    if let Err(e) = result {
                        let m = DriverMessage::failure(serial, &e);
                        self.send_from_driver(Some(from), m);
                    }
                    return;
                };
                self.unicast(from, recipient, msg, &sender_name);
            }
        }
    }

    /// Rebuilds the message with SENDER set; returns what to queue (bytes and fds shared by
    /// every recipient, counted against the sender while queued) and the parsed view of
    /// exactly what is delivered, for matching.
    fn outgoing(&self, msg: Message, from: PeerId, sender: &str) -> Option<(Outgoing, Message)> {
        let Some(mut view) = msg.forward(sender) else {
            tracing::error!("re-encoding a valid message failed; dropping it");
            return None;
        };
        let mut out = Outgoing::take(&mut view);
        if let Some(p) = self.peers.get(&from) {
            out.charge = Some(Charge::new(
                &p.live,
                out.bytes.len() as u64,
                out.fds.len() as u64,
            ));
        }
        Some((out, view))
    }

    fn unicast(&mut self, from: PeerId, recipient: PeerId, msg: Message, sender_name: &str) {
        let Some((out, view)) = self.outgoing(msg, from, sender_name) else {
            return;
        };
        self.capture(&view, Some(from), Some(recipient), &out);
        self.deliver(from, recipient, &view, out);
    }

    /// Delivers a message (already shown to monitors) to the connection it is addressed to,
    /// then to those whose match rules want it: bus_dispatch_matches in dbus-daemon.
    fn deliver(&mut self, from: PeerId, recipient: PeerId, view: &Message, out: Outgoing) {
        let ty = view.msg_type();
        // A reply the recipient is waiting for is "requested"; any other reply is up to
        // the policy (the session bus lets them through, as dbus-daemon does).
        let mut requested_reply = false;
        if let Some(reply_serial) = view.reply_serial() {
            requested_reply = self.replies.take_reply((recipient, reply_serial), from);
        }
        if let Err(denied) = self.check_security(
            view,
            Some(from),
            Some(recipient),
            Some(recipient),
            requested_reply,
        ) {
            self.error_reply(from, view, &denied);
            return;
        }
        if ty == message::METHOD_CALL && !view.no_reply_expected() {
            if let Err(e) = self.expect_reply(from, recipient, view.serial()) {
                self.error_reply(from, view, &e);
                return;
            }
        }
        let recipient_fds = self.peers.get(&recipient).is_some_and(|p| p.unix_fds);
        if view.unix_fds() > 0 && !recipient_fds {
            let e = DriverError::new(
                ErrorName::NotSupported,
                "Tried to send message with Unix file descriptors to a client that doesn't support that.".into(),
            );
            self.error_reply(from, view, &e);
            return;
        }
        self.send(recipient, out.clone());
        self.dispatch_matches(view, Some(from), Some(recipient), &out);
    }

    /// Delivers `out` to every connection with a matching rule (other than the addressed
    /// recipient, which already has it) that the policy lets see it.
    fn dispatch_matches(
        &mut self,
        msg: &Message,
        sender: Option<PeerId>,
        recipient: Option<PeerId>,
        out: &Outgoing,
    ) {
        if self.matches.is_empty() {
            return;
        }
        self.stamp += 1;
        let stamp = self.stamp;
        let mut recipients = std::mem::take(&mut self.recipients);
        recipients.clear();
        {
            let routed = Routed::new(self, msg, sender, recipient);
            let names_of = |peer: PeerId| {
                let mut names: Vec<&str> = Vec::with_capacity(4);
                if let Some(p) = self.peers.get(&peer) {
                    names.extend(p.unique.as_deref());
                    names.extend(self.names.held_by(peer).iter().map(String::as_str));
                }
                names
            };
            let senders = match sender {
                None => vec![DBUS_NAME],
                Some(s) => names_of(s),
            };
            let destinations = match (self.matches.wants_destinations(), recipient) {
                (false, _) => Vec::new(),
                (true, Some(r)) => names_of(r),
                (true, None) => msg.destination().into_iter().collect(),
            };
            // (Only the first argument: the rules found read the others if they test them.)
            let arg0 = match self.matches.wants_arg0() {
                true => match msg.arg0() {
                    Some(busd_match::Arg::Str(s)) => Some(s),
                    _ => None,
                },
                false => None,
            };
            let lookup = matches::Lookup {
                senders: &senders,
                interface: msg.interface(),
                member: msg.member(),
                path: msg.path(),
                destinations: &destinations,
                arg0,
            };
            self.matches.candidates(&lookup, |e| {
                if Some(e.peer) != recipient && e.rule.matches(&routed) {
                    recipients.push(e.peer);
                }
            });
        }
        let fds = msg.unix_fds() > 0;
        for &r in &recipients {
            let Some(p) = self.peers.get_mut(&r) else {
                continue;
            };
            if p.stamp == stamp {
                continue;
            }
            p.stamp = stamp;
            if p.closing || self.fast_skips(sender, msg, r) {
                continue;
            }
            // Not an error for the sender: this recipient just does not get it (monitors see
            // the error dbus-daemon would have given).
            let refusal = match self.check_security(msg, sender, recipient, Some(r), false) {
                Err(denied) => Some(denied),
                Ok(()) if fds && !self.peers[&r].unix_fds => Some(DriverError::new(
                    ErrorName::NotSupported,
                    format!(
                        "broadcast cannot be delivered to {} ({}) because it does not support receiving Unix fds",
                        self.unique_of(r),
                        self.peers[&r].creds.loginfo()
                    ),
                )),
                Ok(()) => None,
            };
            if let Some(denied) = refusal {
                debug!(to = self.unique_of(r), "not delivered: {}", denied.text);
                self.capture_error_reply(recipient, msg, &denied);
                continue;
            }
            self.effects.push(Effect::Send(r, out.clone()));
        }
        self.recipients = recipients;
    }

    /// Sends a message composed by the driver to `to` (None: broadcast via match rules).
    /// Encodes a message from the bus to `to` (None: a broadcast) and shows it to monitors.
    fn compose_from_driver(
        &mut self,
        to: Option<PeerId>,
        m: DriverMessage<'_>,
    ) -> Option<(Message, Outgoing)> {
        // An inactive connection (before Hello) has no name to address.
        let dest = to
            .map(|t| self.unique_of(t).to_string())
            .filter(|d| !d.is_empty());
        self.compose_from_driver_to(to, dest.as_deref(), m)
    }

    /// As [`Bus::compose_from_driver`], with the DESTINATION header given.
    fn compose_from_driver_to(
        &mut self,
        to: Option<PeerId>,
        dest: Option<&str>,
        m: DriverMessage<'_>,
    ) -> Option<(Message, Outgoing)> {
        let serial = self.next_serial();
        let bytes = m.encode(serial, dest);
        let mut msg = match Message::parse(bytes, Vec::new()) {
            Ok(m) => m,
            Err(e) => {
                // The driver composed an invalid message: a bug, never a peer's fault.
                tracing::error!("driver composed an invalid message: {e}");
                return None;
            }
        };
        let out = Outgoing::take(&mut msg);
        self.capture(&msg, None, to, &out);
        Some((msg, out))
    }

    /// What dbus-daemon shows monitors when it drops a message for one recipient: an error
    /// in reply to it, addressed to its sender (the bus itself, for the bus's own messages),
    /// though nobody receives it. `addressed` is the connection the message was meant for.
    fn capture_error_reply(
        &mut self,
        addressed: Option<PeerId>,
        in_reply_to: &Message,
        denied: &DriverError,
    ) {
        if !self.monitors.is_empty() {
            let m = DriverMessage::failure(in_reply_to.serial(), denied);
            let dest = in_reply_to.sender().map(str::to_string);
            self.compose_from_driver_to(addressed, dest.as_deref(), m);
        }
    }

    fn send_from_driver(&mut self, to: Option<PeerId>, m: DriverMessage<'_>) {
        let Some((msg, out)) = self.compose_from_driver(to, m) else {
            return;
        };
        match to {
            Some(t) => {
                // The bus never sends unrequested replies; like dbus-daemon, a message the
                // recipient's policy or queue refuses is dropped (the bus wants no answer).
                let requested = msg.reply_serial().is_some();
                if let Err(denied) = self.check_security(&msg, None, Some(t), Some(t), requested) {
                    debug!(
                        to = self.unique_of(t),
                        "message from the bus not delivered: {}", denied.text
                    );
                    self.capture_error_reply(Some(t), &msg, &denied);
                    return;
                }
                self.send(t, out)
            }
            None => self.dispatch_matches(&msg, None, None, &out),
        }
    }

    /// A reply from the driver that carries Unix fds (the fast path's Join); monitors get
    /// the `shown` descriptors instead.
    fn send_from_driver_with_fds(
        &mut self,
        to: PeerId,
        m: DriverMessage<'_>,
        fds: Vec<std::os::fd::OwnedFd>,
        shown: Rc<Vec<std::os::fd::OwnedFd>>,
    ) {
        let dest = self.unique_of(to).to_string();
        let serial = self.next_serial();
        let bytes = m.encode_with_fds(serial, Some(&dest), fds.len() as u32);
        let mut msg = match Message::parse(bytes, fds) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("driver composed an invalid message: {e}");
                return;
            }
        };
        let out = Outgoing::take(&mut msg);
        debug_assert_eq!(out.fds.len(), shown.len());
        let for_monitors = Outgoing {
            bytes: std::sync::Arc::clone(&out.bytes),
            fds: shown,
            charge: None,
        };
        self.capture(&msg, None, Some(to), &for_monitors);
        self.send(to, out);
    }

    fn error_reply(&mut self, to: PeerId, call: &Message, e: &DriverError) {
        let m = DriverMessage::failure(call.serial(), e);
        self.send_from_driver(Some(to), m);
    }

    fn emit_name_events(&mut self, events: Vec<names::NameEvent>) {
        for ev in events {
            match ev {
                names::NameEvent::Lost { peer, name } => {
                    let Some(p) = self.peers.get(&peer).filter(|p| p.unique.is_some()) else {
                        continue;
                    };
                    let m = DriverMessage::signal("NameLost", compose::body_s(&name), "s");
                    if p.closing {
                        // It is leaving: only monitors see it, as with dbus-daemon.
                        self.compose_from_driver(Some(peer), m);
                    } else {
                        self.send_from_driver(Some(peer), m);
                    }
                }
                names::NameEvent::Acquired { peer, name } => {
                    self.send_from_driver(
                        Some(peer),
                        DriverMessage::signal("NameAcquired", compose::body_s(&name), "s"),
                    );
                }
                names::NameEvent::OwnerChanged { name, old, new } => {
                    let old = old
                        .map(|p| self.unique_of(p).to_string())
                        .unwrap_or_default();
                    let new = new
                        .map(|p| self.unique_of(p).to_string())
                        .unwrap_or_default();
                    self.send_from_driver(
                        None,
                        DriverMessage::signal(
                            "NameOwnerChanged",
                            compose::body_sss(&name, &old, &new),
                            "sss",
                        ),
                    );
                    self.fast_names_changed(std::slice::from_ref(&name));
                    if old.is_empty() && !new.is_empty() {
                        self.activation_name_created(&name);
                    }
                }
            }
        }
    }

    /// Releases every name a peer holds, announcing each change.
    fn release_all_names(&mut self, peer: PeerId) {
        let held = self.names.held_by(peer).to_vec();
        for name in held {
            let mut events = Vec::new();
            self.names.release(&name, peer, &mut events);
            self.emit_name_events(events);
        }
    }

    /// The connection is gone: release its names, rules and pending replies.
    pub fn disconnected(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let unique = peer.unique.clone();
        if let Some(p) = self.peers.get_mut(&id) {
            p.closing = true;
        }
        // (Its rules go while it is still a member: the daemon's filter is compiled again
        // only if it held them.)
        if self.matches.remove_peer(id) > 0 {
            self.fast_rules_changed(id);
        }
        self.fast_leave(id);
        self.release_all_names(id);
        if self.monitors.contains(&id) {
            self.monitors.retain(|&m| m != id);
            let rules = self.peers.get(&id).and_then(|p| p.monitor.as_ref());
            self.monitor_rules -= rules.map_or(0, Vec::len);
            self.fast_monitors_changed();
        }
        let orphaned = self.replies.forget_peer(id);
        // Its unique name, unless it gave it up already by becoming a monitor.
        if let Some(u) = unique.filter(|u| self.peers.by_unique(u) == Some(id)) {
            self.peers.unname(id);
            self.emit_name_events(vec![
                names::NameEvent::Lost {
                    peer: id,
                    name: u.clone(),
                },
                names::NameEvent::OwnerChanged {
                    name: u,
                    old: Some(id),
                    new: None,
                },
            ]);
        }
        // Callers still waiting for this connection hear that it left without replying.
        for key in orphaned {
            self.no_reply(
                key,
                "Message recipient disconnected from message bus without replying",
            );
        }
        self.peers.remove(id);
        // Effects queued for a peer that is gone are dropped by the shell.
    }

    /// The shell re-read the configuration for a ReloadConfig call.
    pub fn reload_finished(&mut self, peer: PeerId, serial: u32, result: Result<(), String>) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let m = match result {
            Ok(()) => DriverMessage::reply(serial, Vec::new(), ""),
            Err(e) => DriverMessage::error(serial, ErrorName::Failed.as_str(), &e),
        };
        self.send_from_driver(Some(peer), m);
    }
}

#[cfg(test)]
mod tests;
