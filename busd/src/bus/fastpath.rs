//! The fast path in the bus core (DESIGN 5): who joined, what each member's kernel filter
//! and the routing table must say, and how the daemon (member 0) routes what members send
//! it. No I/O: the shell creates the sockets, attaches the programs and publishes the table
//! ([`Bus::take_fast_updates`]).
//!
//! A member's id is its unique name's number plus one (`:1.N` is member N+1); 0 is the
//! daemon. Messages the daemon sends a member travel on the member's stream connection,
//! like everything it receives from standard-path clients; what a member sends the daemon
//! arrives on a datagram socket of the daemon's connected to that member only
//! ([`Bus::handle_fast_frame`]).

use crate::bus::error::{DriverError, ErrorName};
use std::collections::{BTreeSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use busd_match::bpf::{self, Program};
use busd_match::header::TO_DAEMON;
use busd_match::progress;
use busd_match::protocol::{member_of_unique, JoinFds, JoinReply};
use busd_match::summary::Summary;
use busd_match::table::{self, Table};
use busd_match::MatchRule;
use tracing::warn;

use super::compose::{self, DriverMessage};
use super::driver::Failure;
use super::{Bus, Effect, IdMap, PeerId};
use busd_wire::message::Message;

/// A connection on the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FastMember {
    pub id: u32,
    /// Its policy allows every message it sends and receives, so it may exchange messages
    /// with other direct members without the daemon (DESIGN 5.7).
    pub direct: bool,
    /// It set up what Join gave it ([`busd_match::protocol::READY`]): until then nobody
    /// sends to it directly (DESIGN 5.8).
    pub ready: bool,
    /// Its slot in the progress memory (causal order, DESIGN 5.5).
    pub slot: u32,
}

impl FastMember {
    /// Others send to it directly (and the daemon does not).
    pub fn receives_directly(&self) -> bool {
        self.direct && self.ready
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub enabled: bool,
    members: IdMap<u32, PeerId>,
    /// Members whose filter must be recompiled.
    dirty_filters: BTreeSet<PeerId>,
    /// The daemon's own filter (attached to every member's inbox) must be recompiled.
    daemon_dirty: bool,
    /// The table must be published now (before whatever the event sends goes out).
    table_dirty: bool,
    /// The table changed in a way that may wait (a member gone): it is published with the
    /// next urgent change, or at `table_due` at the latest.
    table_later: bool,
    table_due: Option<std::time::Instant>,
    /// The member whose frame is being routed: its broadcast already reached the direct
    /// members, so the daemon delivers it only to the others.
    pub origin: Option<PeerId>,
    /// Where members' own figures are read (the shell's progress memory).
    figures: Option<Figures>,
    /// The last members to leave, newest last, as the table keeps listing them: a frame
    /// a member sent before it left is still its own when a receiver reads it later.
    departed: VecDeque<u32>,
    /// The routing table, changed in place by each event (a join, Ready, a departure, a
    /// member's rules, a name) rather than rebuilt from every member and name (DESIGN 8);
    /// the bus-wide fields are set when it is published.
    table: Arc<Table>,
    /// How `table` changed since it was last handed out for publication.
    changes: table::Changes,
    /// The daemon's pid namespace, for the table ([`Bus::set_fast_pid_namespace`]).
    pid_namespace: u64,
    /// The daemon's interest as last compiled (its summary in the table).
    daemon_summary: Summary,
    /// The daemon's filter accepts everything until its exact program is compiled at
    /// `daemon_due` (DESIGN 5.6: on a large bus, AddMatch does not recompile every
    /// rule).
    daemon_wide: bool,
    daemon_due: Option<std::time::Instant>,
}

/// Up to this many match rules on the bus, the daemon's filter is compiled again at each
/// change; past it, changes widen it to everything at once (the daemon routes exactly
/// anyway) and it is compiled again at most once per [`DAEMON_COALESCE`] (or 20 us per
/// rule on the bus, if longer).
pub const DAEMON_EXACT_UP_TO: usize = 512;
pub const DAEMON_COALESCE: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a change of the table that may wait (a member gone) waits at most for an
/// urgent one to be published with. Meanwhile others send to the departed member into a
/// socket that is gone (nothing is lost: nobody would read it), and a storm of departures
/// (a session ending) publishes the table, which is linear in members, at most once per
/// this time rather than once per departure.
pub const TABLE_COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

/// How many departed members the table keeps listing at least (DESIGN 5.8); at most twice
/// as many.
pub const DEPARTED_KEPT: usize = 256;

/// What a member last published of its figures (`busd_match::progress::FIGURES`), by slot
/// and member id; None when it has published nothing there.
pub type FigureSource = Box<dyn Fn(u32, u32) -> Option<[u64; progress::FIGURES.len()]>>;

struct Figures(FigureSource);

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Figures")
    }
}

/// The sockets and table handed to a member that joined.
#[derive(Debug)]
pub struct Joined {
    /// The directory member sockets are bound in (`<dir>/<id>`).
    pub directory: String,
    pub socket: OwnedFd,
    /// The member's end of the pair of sockets to the daemon's inbox for it.
    pub inbox: OwnedFd,
    /// A read-only descriptor of the routing table's shared memory.
    pub table: OwnedFd,
    /// The progress memory, which members map writable ([`busd_match::progress`]).
    pub progress: OwnedFd,
    /// The member's slot in it.
    pub slot: u32,
    /// What monitors get in place of these descriptors: whoever holds them can take the
    /// member's datagrams, send the daemon frames as the member and write the progress
    /// memory, so they go to the member alone (monitors see harmless stand-ins, and the
    /// message stays well formed).
    pub shown: std::rc::Rc<Vec<OwnedFd>>,
}

/// What the shell must apply after an event.
#[derive(Debug, Default)]
pub struct FastUpdates {
    pub filters: Vec<(PeerId, Program)>,
    /// The daemon's filter, for every member's inbox (compiled as member [`TO_DAEMON`]).
    pub daemon_filter: Option<Program>,
    pub table: Option<Arc<Table>>,
    /// How `table` differs from the table handed out before it.
    pub table_changes: table::Changes,
}

/// When a change of the table is published.
#[derive(Clone, Copy)]
enum Publish {
    /// Before what the event sends goes out.
    Now,
    /// With the next change published now, or after [`TABLE_COALESCE`].
    Later,
}

impl State {
    fn table(&mut self) -> &mut Table {
        self.table_dirty = true;
        Arc::make_mut(&mut self.table)
    }

    /// The table, for a change that may wait ([`TABLE_COALESCE`]).
    fn table_later(&mut self) -> &mut Table {
        self.table_later = true;
        Arc::make_mut(&mut self.table)
    }

    /// The table's entry for member `id`, to change it (published now or later).
    fn listed(&mut self, id: u32, when: Publish) -> Option<&mut table::Member> {
        let i = self
            .table
            .members
            .binary_search_by_key(&id, |m| m.id)
            .ok()?;
        self.changes.member(id);
        let table = match when {
            Publish::Now => self.table(),
            Publish::Later => self.table_later(),
        };
        Some(&mut table.members[i])
    }

    /// Lists `m` (in place of any entry with its id).
    fn list(&mut self, m: table::Member) {
        self.changes.member(m.id);
        let members = &mut self.table().members;
        match members.binary_search_by_key(&m.id, |x| x.id) {
            Ok(i) => members[i] = m,
            Err(i) => members.insert(i, m),
        }
    }

    fn unlist(&mut self, id: u32) {
        if let Ok(i) = self.table.members.binary_search_by_key(&id, |m| m.id) {
            self.changes.member(id);
            self.table_later().members.remove(i);
        }
    }

    /// Records that member `owner` (None: no member) owns the well-known name `name` now.
    fn name_owned(&mut self, name: &str, owner: Option<u32>, when: Publish) {
        let at = self
            .table
            .names
            .binary_search_by(|(n, _)| n.as_str().cmp(name));
        fn table(s: &mut State, when: Publish) -> &mut Table {
            s.changes.names = true;
            match when {
                Publish::Now => s.table(),
                Publish::Later => s.table_later(),
            }
        }
        match (at, owner) {
            (Ok(i), Some(id)) if self.table.names[i].1 != id => table(self, when).names[i].1 = id,
            (Ok(i), None) => {
                table(self, when).names.remove(i);
            }
            (Err(i), Some(id)) => table(self, when).names.insert(i, (name.to_string(), id)),
            _ => {}
        }
    }
}

impl Bus {
    /// `--fastpath=off` turns it off (on by default).
    pub fn set_fastpath(&mut self, enabled: bool) {
        self.fast.enabled = enabled;
        self.fast.daemon_dirty = enabled;
        self.fast.table_dirty = enabled;
        self.fast.changes.everything();
    }

    /// The daemon's pid namespace (the inode of `/proc/self/ns/pid`), published in the
    /// table: members' pids there are as this namespace sees them.
    pub fn set_fast_pid_namespace(&mut self, ns: u64) {
        self.fast.pid_namespace = ns;
        self.fast.table_dirty = self.fast.enabled;
    }

    /// The shell shut member `member`'s socket down at `realtime_ns` (`CLOCK_REALTIME`):
    /// the table tells it, so that receivers can tell frames its process sent from a path
    /// bound again after from what it sent before ([`table::Member::left`]).
    pub fn fast_left_at(&mut self, member: u32, realtime_ns: u64) {
        if self.fast.table.member(member).is_some_and(|m| m.departed) {
            if let Some(m) = self.fast.listed(member, Publish::Later) {
                m.left = realtime_ns;
            }
        }
    }

    /// Where `GetConnectionStats` reads the figures members publish.
    pub fn set_fast_figures(&mut self, source: FigureSource) {
        self.fast.figures = Some(Figures(source));
    }

    /// The figures member `peer` published, with their names.
    pub(super) fn fast_figures(&self, peer: PeerId) -> Vec<(&'static str, u64)> {
        let (Some(f), Some(source)) = (self.fast_of(peer), &self.fast.figures) else {
            return Vec::new();
        };
        (source.0)(f.slot, f.id).map_or(Vec::new(), |values| {
            progress::FIGURES.iter().copied().zip(values).collect()
        })
    }

    /// The peer on the fast path as member `id`.
    pub fn fast_member(&self, id: u32) -> Option<PeerId> {
        self.fast.members.get(&id).copied()
    }

    pub(super) fn fast_member_count(&self) -> u32 {
        self.fast.members.len() as u32
    }

    fn fast_of(&self, peer: PeerId) -> Option<FastMember> {
        self.peers.get(&peer).and_then(|p| p.fast)
    }

    /// `Join`: checks that the caller may join; the shell then creates its socket.
    pub(super) fn fast_join_request(
        &mut self,
        from: PeerId,
        msg: &Message,
    ) -> Result<super::driver::Reply, Failure> {
        if !self.fast.enabled {
            return Err(DriverError::new(
                ErrorName::NotSupported,
                "The fast path is turned off on this bus (--fastpath=off)".into(),
            ));
        }
        let Some(peer) = self.peers.get(&from) else {
            return Ok(None);
        };
        if peer.fast.is_some() {
            return Err(DriverError::new(
                ErrorName::Failed,
                "This connection already joined the fast path".into(),
            ));
        }
        if !peer.unix_fds {
            return Err(DriverError::new(
                ErrorName::NotSupported,
                "Joining the fast path passes Unix fds, which this connection did not negotiate"
                    .into(),
            ));
        }
        // Member sockets live in a directory only the bus's user can reach (DESIGN 4).
        if peer.creds.uid != Some(self.settings.uid) {
            return Err(DriverError::new(
                ErrorName::AccessDenied,
                format!(
                    "The fast path is offered only to connections of the bus's own user (uid {})",
                    self.settings.uid
                ),
            ));
        }
        let Some(id) = peer.unique.as_deref().and_then(member_of_unique) else {
            return Err(DriverError::new(
                ErrorName::NotSupported,
                "No member id for this connection".into(),
            ));
        };
        // A member without rules is sent only what is addressed to it (no honest sender
        // finds it in a broadcast's candidates), and its shim drops anything else: it
        // gets its filter with its first rule, and a join that adds none (most: zbus adds
        // its rules after Hello) costs the kernel no filter verification and compilation.
        let rules = self.matches.rules_of(from);
        let filter = (!rules.is_empty())
            .then(|| bpf::compile(id, rules, &|n: &str| self.fast_id_of_name(n)));
        self.effects.push(Effect::FastJoin {
            peer: from,
            serial: msg.serial(),
            member: id,
            filter,
        });
        Ok(None)
    }

    /// The shell created (or failed to create) the sockets of a `Join`.
    pub fn fast_joined(
        &mut self,
        peer: PeerId,
        serial: u32,
        member: u32,
        result: Result<Joined, String>,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let joined = match result {
            Ok(j) => j,
            Err(e) => {
                warn!(peer = p.unique.as_deref(), "cannot join the fast path: {e}");
                let m = DriverMessage::error(serial, ErrorName::Failed.as_str(), &e);
                self.send_from_driver(Some(peer), m);
                return;
            }
        };
        // Nobody sends to it directly until it says it is ready: until then the daemon
        // delivers everything for it on its stream, and its rules stay in the daemon's
        // filter. (It may send directly at once.)
        p.fast = Some(FastMember {
            id: member,
            direct: p.policy.allows_all_messages(),
            ready: false,
            slot: joined.slot,
        });
        self.fast.members.insert(member, peer);
        let entry = table::Member {
            id: member,
            direct: p.policy.allows_all_messages(),
            slot: joined.slot,
            summary: fast_summary(self.matches.rules_of(peer)),
            pid: p.creds.pid.unwrap_or(0),
            ready: false,
            departed: false,
            left: 0,
        };
        // (Published at once: a member sends directly from its first message, once it
        // sees itself listed; until then its shim sends through the daemon.)
        self.fast.list(entry);
        // Its names now designate a member, for `sender=` rules.
        let p = &self.peers[&peer];
        let names: Vec<String> = p
            .unique
            .iter()
            .chain(self.names.held_by(peer))
            .cloned()
            .collect();
        self.fast_names_changed(&names);
        let mut w = compose::writer();
        JoinReply {
            member,
            directory: joined.directory,
            slot: joined.slot,
        }
        .encode(&mut w);
        let m = DriverMessage::reply(serial, w.into_vec(), JoinReply::SIGNATURE);
        let fds = JoinFds {
            socket: joined.socket,
            inbox: joined.inbox,
            table: joined.table,
            progress: joined.progress,
        };
        self.send_from_driver_with_fds(peer, m, fds.into_vec(), joined.shown);
    }

    /// `Ready`: the member set up its socket and memory; if the policy allows, others may
    /// now send to it directly.
    pub(super) fn fast_ready(&mut self, from: PeerId) -> Result<super::driver::Reply, Failure> {
        let Some(p) = self.peers.get_mut(&from) else {
            return Ok(None);
        };
        let Some(f) = &mut p.fast else {
            return Err(DriverError::new(
                ErrorName::Failed,
                "This connection has not joined the fast path".into(),
            ));
        };
        if !f.ready {
            f.ready = true;
            let (id, direct) = (f.id, f.direct);
            if direct && !self.matches.rules_of(from).is_empty() {
                // Its rules leave the daemon's filter for its own.
                self.fast.daemon_dirty = true;
            }
            // (Published at once: a service that has just started is called directly from
            // its first call, and its first replies go directly.)
            if let Some(m) = self.fast.listed(id, Publish::Now) {
                m.ready = true;
            }
        }
        Ok(Some((Vec::new(), "")))
    }

    /// A member left the fast path (it disconnected, or became a monitor).
    pub(super) fn fast_leave(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(f) = p.fast.take() {
            if let Some(m) = self.fast.listed(f.id, Publish::Later) {
                m.departed = true;
                m.slot = busd_match::progress::NO_SLOT;
                m.summary = Summary::default();
            }
            self.fast.departed.push_back(f.id);
            // (Forgotten 256 at a time: taking the oldest record out moves every record
            // after it in the published body, once per 256 departures rather than at each.)
            if self.fast.departed.len() > 2 * DEPARTED_KEPT {
                while self.fast.departed.len() > DEPARTED_KEPT {
                    if let Some(gone) = self.fast.departed.pop_front() {
                        self.fast.unlist(gone);
                    }
                }
            }
            // Its names are no member's now (their release, which may follow, finds them
            // gone or passes them on).
            for name in self.names.held_by(peer) {
                if self.fast.table.owner(name) == Some(f.id) {
                    // (Later: a sender that still finds it there gets ENOENT and sends
                    // through the daemon, which answers as dbus-daemon would.)
                    self.fast.name_owned(name, None, Publish::Later);
                }
            }
            self.fast.members.remove(&f.id);
            self.fast.dirty_filters.remove(&peer);
            self.effects.push(Effect::FastLeave(peer));
        }
    }

    /// The member id a name designates now, for filters (None: not a member: its messages
    /// never come as datagrams).
    fn fast_id_of_name(&self, name: &str) -> Option<u32> {
        self.owner_of(name)
            .and_then(|p| self.fast_of(p))
            .map(|f| f.id)
    }

    /// Some peer's match rules changed (AddMatch, RemoveMatch, a departure).
    pub(super) fn fast_rules_changed(&mut self, peer: PeerId) {
        if !self.fast.enabled {
            return;
        }
        let Some(f) = self.fast_of(peer) else {
            // (The table changes only if the daemon's summary does.)
            self.fast.daemon_dirty = true;
            return;
        };
        // Its summary, from its rules only.
        let summary = fast_summary(self.matches.rules_of(peer));
        // A member leaving loses its rules first: that waits for its departure's
        // publication (others sending it less meanwhile changes nothing).
        let closing = self.peers.get(&peer).is_some_and(|p| p.closing);
        let when = if closing {
            Publish::Later
        } else {
            Publish::Now
        };
        if let Some(m) = self.fast.listed(f.id, when) {
            m.summary = summary;
        }
        if f.direct {
            self.fast.dirty_filters.insert(peer);
        }
        if !f.receives_directly() {
            // The daemon delivers for it (until it is ready, or always when it may not go
            // direct); its own filter serves later.
            self.fast.daemon_dirty = true;
        }
    }

    /// When the daemon's filter is due to be compiled exactly again, if it is wide.
    pub(super) fn fast_deadline(&self) -> Option<std::time::Instant> {
        [self.fast.daemon_due, self.fast.table_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: the daemon's wide filter may be due for its exact program, and changes
    /// of the table that waited for publication.
    pub(super) fn fast_expire(&mut self, now: std::time::Instant) {
        if self.fast.daemon_due.is_some_and(|d| d <= now) {
            self.fast.daemon_dirty = true;
        }
        if self.fast.table_due.is_some_and(|d| d <= now) {
            self.fast.table_dirty = true;
        }
    }

    /// The daemon's filter, compiled exactly or widened (DESIGN 5.6), when its rules
    /// changed; its summary is kept for the table.
    fn daemon_filter_update(&mut self) -> Option<Program> {
        if !self.fast.daemon_dirty || self.fast.members.is_empty() {
            // (Nobody reads its summary or sends to its inboxes: compiled when the first
            // member joins.)
            return None;
        }
        self.fast.daemon_dirty = false;
        let due = self.fast.daemon_due.is_some_and(|d| d <= self.now);
        let everything = [MatchRule {
            eavesdrop: true,
            ..MatchRule::default()
        }];
        let (program, summary) = if due || self.matches.len() <= DAEMON_EXACT_UP_TO {
            self.fast.daemon_due = None;
            self.fast.daemon_wide = false;
            let resolve = |n: &str| self.fast_id_of_name(n);
            match self.daemon_rules() {
                Some(rules) => (
                    bpf::compile(TO_DAEMON, rules.iter().copied(), &resolve),
                    fast_summary(rules),
                ),
                None => (
                    bpf::compile(TO_DAEMON, &everything, &resolve),
                    everything_summary(),
                ),
            }
        } else {
            // (A compile costs about a microsecond per rule: at most a few percent of
            // the daemon's time however large the bus.)
            let rules = u32::try_from(self.matches.len()).unwrap_or(u32::MAX);
            let delay = DAEMON_COALESCE.max(std::time::Duration::from_micros(20) * rules);
            self.fast.daemon_due.get_or_insert(self.now + delay);
            if self.fast.daemon_wide {
                return None;
            }
            self.fast.daemon_wide = true;
            (
                bpf::compile(TO_DAEMON, &everything, &|_: &str| None),
                everything_summary(),
            )
        };
        if summary != self.fast.daemon_summary {
            self.fast.daemon_summary = summary;
            self.fast.table_dirty = true;
        }
        Some(program)
    }

    /// Monitors came or went: they make the daemon want everything.
    pub(super) fn fast_monitors_changed(&mut self) {
        self.fast.daemon_dirty = self.fast.enabled;
        self.fast.table_dirty = self.fast.enabled;
    }

    /// These names changed owner: the table lists owners, and filters resolve `sender=`
    /// names, so the filters of members with a rule on one of them are compiled again (and
    /// only those: every zbus client has `sender='org.freedesktop.DBus'` rules, and
    /// recompiling everyone's filter on every name change made joining quadratic).
    pub(super) fn fast_names_changed(&mut self, names: &[String]) {
        if !self.fast.enabled {
            return;
        }
        for name in names {
            if !name.starts_with(':') {
                let owner = self
                    .names
                    .primary_owner(name)
                    .and_then(|p| self.fast_of(p))
                    .map(|f| f.id);
                self.fast.name_owned(name, owner, Publish::Now);
            }
            if self.fast.members.is_empty() {
                continue;
            }
            for peer in self.matches.mentioning(name) {
                match self.peers.get(&peer).and_then(|p| p.fast) {
                    Some(f) => {
                        self.fast.dirty_filters.insert(peer);
                        if !f.receives_directly() {
                            self.fast.daemon_dirty = true;
                        }
                    }
                    // A rule the daemon's filter holds names it.
                    None => self.fast.daemon_dirty = true,
                }
            }
        }
    }

    /// The policy was reloaded: who may go direct may have changed.
    pub(super) fn fast_policy_changed(&mut self) {
        let members: Vec<PeerId> = self.fast.members.values().copied().collect();
        for peer in members {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            if let Some(f) = &mut p.fast {
                let direct = p.policy.allows_all_messages();
                if direct != f.direct {
                    // Its filter was left as it was when it last went direct (or at Join):
                    // senders follow its summary now, so the filter must say the same.
                    self.fast.dirty_filters.insert(peer);
                }
                f.direct = direct;
                if let Some(m) = self.fast.listed(f.id, Publish::Now) {
                    m.direct = f.direct;
                }
            }
        }
        self.fast.daemon_dirty = self.fast.enabled;
        self.fast.table_dirty = self.fast.enabled;
    }

    /// Rules the daemon answers for: those of connections off the fast path, and of members
    /// that may not go direct. None: it wants everything (monitors, or an indirect member
    /// whose every message passes through it).
    fn daemon_rules(&self) -> Option<Vec<&MatchRule>> {
        if !self.monitors.is_empty() {
            return None;
        }
        let mediated = |p: &PeerId| self.fast_of(*p).is_some_and(|f| !f.direct);
        if self.fast.members.values().any(mediated) {
            return None;
        }
        // Of connections off the fast path, and members not ready yet.
        let theirs = |p: PeerId| !self.fast_of(p).is_some_and(|f| f.receives_directly());
        Some(
            self.matches
                .by_peer()
                .filter(|&(p, _)| theirs(p))
                .flat_map(|(_, rules)| rules)
                .collect(),
        )
    }

    /// What changed since the last call, for the shell to apply (nothing when the fast path
    /// is off).
    pub fn take_fast_updates(&mut self) -> Option<FastUpdates> {
        if !self.fast.enabled {
            return None;
        }
        let s = &mut self.fast;
        if s.table_later && !s.table_dirty && s.table_due.is_none() {
            s.table_due = Some(self.now + TABLE_COALESCE);
        }
        if !(s.daemon_dirty || s.table_dirty || !s.dirty_filters.is_empty()) {
            return None;
        }
        let mut updates = FastUpdates {
            daemon_filter: self.daemon_filter_update(),
            ..FastUpdates::default()
        };
        let resolve = |n: &str| self.fast_id_of_name(n);
        for &peer in &self.fast.dirty_filters {
            if let Some(p) = self.peers.get(&peer) {
                if let Some(f) = p.fast {
                    updates.filters.push((
                        peer,
                        bpf::compile(f.id, self.matches.rules_of(peer), &resolve),
                    ));
                }
            }
        }
        if self.fast.table_dirty {
            updates.table = Some(self.fast_table());
            updates.table_changes = std::mem::take(&mut self.fast.changes);
            self.fast.table_later = false;
            self.fast.table_due = None;
        }
        self.fast.dirty_filters.clear();
        self.fast.table_dirty = false;
        let nothing = updates.filters.is_empty()
            && updates.daemon_filter.is_none()
            && updates.table.is_none();
        (!nothing).then_some(updates)
    }

    /// The table to publish: the one kept up to date, with the bus-wide fields and the
    /// daemon's own entry as they are now.
    fn fast_table(&mut self) -> Arc<Table> {
        let observed = !self.monitors.is_empty() || self.matches.any_eavesdropping();
        let daemon = table::Member {
            id: 0,
            direct: true,
            slot: busd_match::progress::NO_SLOT,
            summary: self.fast.daemon_summary.clone(),
            pid: self.settings.pid,
            ready: true,
            departed: false,
            left: 0,
        };
        // dbus-daemon ends calls unanswered after reply_timeout: only the daemon can keep
        // that time, so calls go through it when the limit is set.
        let calls_mediated = self.settings.limits.reply_timeout.is_some();
        let max_message = u32::try_from(self.settings.limits.max_message_size).unwrap_or(u32::MAX);
        let max_fds = u32::try_from(self.settings.limits.max_message_unix_fds).unwrap_or(u32::MAX);
        let pid_namespace = self.fast.pid_namespace;
        let t = &self.fast.table;
        let same = t.observed == observed
            && t.calls_mediated == calls_mediated
            && t.max_message == max_message
            && t.max_fds == max_fds
            && t.pid_namespace == pid_namespace
            && t.members.first() == Some(&daemon);
        if !same {
            self.fast.changes.header = true;
            let t = self.fast.table();
            t.observed = observed;
            t.calls_mediated = calls_mediated;
            t.max_message = max_message;
            t.max_fds = max_fds;
            t.pid_namespace = pid_namespace;
            self.fast.list(daemon);
        }
        Arc::clone(&self.fast.table)
    }

    /// The table's members and names built from scratch from every member (what the kept
    /// table must always say), with the departed members' ids: for tests.
    #[cfg(test)]
    pub(super) fn fast_table_rebuilt(&self) -> (Vec<table::Member>, Vec<(String, u32)>, Vec<u32>) {
        let mut members = Vec::new();
        let mut names = Vec::new();
        for (&id, &peer) in &self.fast.members {
            let p = &self.peers[&peer];
            let f = p.fast.expect("a member");
            members.push(table::Member {
                id,
                direct: f.direct,
                slot: f.slot,
                summary: fast_summary(self.matches.rules_of(peer)),
                pid: p.creds.pid.unwrap_or(0),
                ready: f.ready,
                departed: false,
                left: 0,
            });
            for n in self.names.held_by(peer) {
                if self.names.primary_owner(n) == Some(peer) {
                    names.push((n.clone(), id));
                }
            }
        }
        members.sort_unstable_by_key(|m| m.id);
        names.sort_unstable();
        let mut departed: Vec<u32> = self.fast.departed.iter().copied().collect();
        departed.sort_unstable();
        (members, names, departed)
    }

    /// The table as kept (and published next).
    #[cfg(test)]
    pub(super) fn fast_table_kept(&mut self) -> Arc<Table> {
        self.fast_table()
    }

    /// A frame a member sent the daemon on its inbox. `destination` is the routing header's:
    /// 0, a broadcast (direct members had it from the sender); [`TO_DAEMON`], a message for
    /// the daemon to route; another member, a copy of what that member already had, for
    /// monitors and eavesdroppers. The message must name its sender truthfully: a member
    /// that lies is disconnected. No routing flag makes the daemon take a message as
    /// another's (DESIGN 5.8): a member that got a frame for a name it does not own gives
    /// it back to its sender, which resends it here as itself.
    pub fn handle_fast_frame(&mut self, from: PeerId, destination: u32, msg: Message) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let Some(f) = p.fast else {
            return;
        };
        p.fast_frames += 1;
        let p = &self.peers[&from];
        if msg.sender() != p.unique.as_deref() {
            warn!(
                peer = p.unique.as_deref(),
                sender = msg.sender(),
                "a fast-path member sent a message under another name; disconnecting it"
            );
            self.disconnect(from);
            return;
        }
        if destination == 0 || destination == TO_DAEMON {
            let broadcast = destination == 0 && msg.destination().is_none();
            self.fast.origin = (broadcast && f.direct).then_some(from);
            self.handle_message(from, msg);
            self.fast.origin = None;
            return;
        }
        let Some(recipient) = self.fast.members.get(&destination).copied() else {
            return;
        };
        // Only direct members send directly, and only messages with a destination.
        if !f.direct || msg.destination().is_none() {
            return;
        }
        let sender = p.unique.clone().unwrap_or_default();
        let Some((out, view)) = self.outgoing(msg, from, &sender) else {
            return;
        };
        self.capture(&view, Some(from), Some(recipient), &out);
        self.dispatch_matches(&view, Some(from), Some(recipient), &out);
    }

    /// Whether the daemon must not deliver a broadcast to `recipient`: its sender is on the
    /// fast path and already sent it there.
    pub(super) fn fast_skips(
        &self,
        sender: Option<PeerId>,
        msg: &Message,
        recipient: PeerId,
    ) -> bool {
        self.fast.origin.is_some()
            && self.fast.origin == sender
            && msg.destination().is_none()
            && self
                .fast_of(recipient)
                .is_some_and(|f| f.receives_directly())
    }
}

/// The summary the table publishes for these rules (None: everything).
fn fast_summary<'a>(rules: impl IntoIterator<Item = &'a MatchRule>) -> Summary {
    let mut s = Summary::of(rules);
    s.keys.clear();
    s
}

/// The summary of a member that wants everything.
fn everything_summary() -> Summary {
    Summary {
        everything: true,
        ..Summary::default()
    }
}
