//! Policy decisions for one connection: may it send, receive, own? dbus-daemon's semantics
//! (bus/policy.c), evaluated from an index instead of a linear scan.
//!
//! dbus-daemon walks a connection's rules in order and the last rule that applies wins. A
//! [`RuleSet`] keeps that meaning but indexes the rules: first by the one peer they may name
//! (`send_destination`, `receive_sender`), then by interface. The answer is the applicable
//! rule with the highest position among the few lists a message can meet (unnamed rules and
//! the buckets of the names involved; in each, rules without an interface and those of the
//! message's interface), each scanned from its end. A set whose last rule applies to
//! everything has a fixed answer and costs nothing per message (the session bus). Nothing
//! here allocates per message.

use std::collections::HashMap;

use crate::rule::{MessageRule, MAX_MESSAGE_UNIX_FDS, SIGNAL};

/// What a policy check needs to know about a message.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageFacts<'a> {
    pub msg_type: u8,
    pub path: Option<&'a str>,
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    pub error_name: Option<&'a str>,
    pub destination: Option<&'a str>,
    pub sender: Option<&'a str>,
    /// The message carries a REPLY_SERIAL (it is a reply or an error).
    pub is_reply: bool,
    pub unix_fds: u32,
}

/// The names a connection holds, for rules that name a peer.
pub trait Names {
    /// Whether the connection owns `name` or is queued for it (unique names included).
    fn in_queue(&self, name: &str) -> bool;
    /// Whether it owns or is queued for `prefix` or any name below it (`a.b` covers `a.b.c`).
    fn in_queue_below(&self, prefix: &str) -> bool;
    /// Calls `f` with every name it owns or is queued for, its unique name included.
    fn for_each_name(&self, f: &mut dyn FnMut(&str));
}

/// The other end of a checked message: a connection, or the bus itself (the driver, or a
/// service not started yet), for which rules compare the message's own header strings.
#[derive(Clone, Copy)]
pub enum Peer<'a> {
    Bus,
    Connection(&'a dyn Names),
}

/// The outcome of a check: dbus-daemon reports how many rules applied in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub matched_rules: u32,
    /// The deciding send rule asked for the message to be logged.
    pub log: bool,
}

/// `name` equals `prefix` or continues it after a dot (`_dbus_string_starts_with_words_c_str`).
pub fn has_word_prefix(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Send,
    Receive,
}

/// Positions of rules (ascending) that test one interface, split by the member they test.
#[derive(Debug, Clone, Default)]
struct Members {
    all: Vec<u32>,
    any_member: Vec<u32>,
    by_member: HashMap<Box<str>, Vec<u32>>,
}

/// Positions of rules (ascending), split by the interface they test, then the member.
#[derive(Debug, Clone, Default)]
struct Bucket {
    all: Vec<u32>,
    any_interface: Vec<u32>,
    by_interface: HashMap<Box<str>, Members>,
}

/// The highest position among `positions` above `above` whose rule applies.
fn last_in(positions: &[u32], above: Option<u32>, applies: &dyn Fn(usize) -> bool) -> Option<u32> {
    positions
        .iter()
        .rev()
        .take_while(|&&p| above.is_none_or(|a| p > a))
        .find(|&&p| applies(p as usize))
        .copied()
}

impl Bucket {
    fn push(&mut self, position: u32, rule: &MessageRule) {
        self.all.push(position);
        let Some(interface) = &rule.interface else {
            self.any_interface.push(position);
            return;
        };
        let members = self.by_interface.entry(interface.clone()).or_default();
        members.all.push(position);
        match &rule.member {
            None => members.any_member.push(position),
            Some(m) => members
                .by_member
                .entry(m.clone())
                .or_default()
                .push(position),
        }
    }

    /// The highest position above `above` whose rule applies. A message without an
    /// interface can meet rules of any interface (deny rules apply to it), and one without a
    /// member rules of any member, so those scan wider lists.
    fn last(
        &self,
        m: &MessageFacts<'_>,
        above: Option<u32>,
        applies: &dyn Fn(usize) -> bool,
    ) -> Option<u32> {
        let Some(interface) = m.interface else {
            return last_in(&self.all, above, applies);
        };
        let mut best = last_in(&self.any_interface, above, applies).or(above);
        if let Some(members) = self.by_interface.get(interface) {
            match m.member {
                None => best = last_in(&members.all, best, applies).or(best),
                Some(member) => {
                    best = last_in(&members.any_member, best, applies).or(best);
                    if let Some(list) = members.by_member.get(member) {
                        best = last_in(list, best, applies).or(best);
                    }
                }
            }
        }
        best.filter(|&b| above != Some(b))
    }
}

/// One context's worth of message rules, in configuration order, indexed by peer name and
/// interface.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<(bool, MessageRule)>,
    /// Rules without an exact peer name.
    general: Bucket,
    /// Rules naming one peer exactly, by that name.
    by_name: HashMap<Box<str>, Bucket>,
    /// The answer when the last rule applies to every message.
    fixed: Option<bool>,
}

/// A rule that no message escapes: no field tests, and (for the polarity) no reply or
/// eavesdropping exception.
fn applies_to_everything(allow: bool, r: &MessageRule, dir: Direction) -> bool {
    let no_tests = r.msg_type.is_none()
        && r.path.is_none()
        && r.interface.is_none()
        && r.member.is_none()
        && r.error.is_none()
        && r.peer.is_none()
        && r.broadcast.is_none()
        && r.min_fds == 0
        && r.max_fds >= MAX_MESSAGE_UNIX_FDS;
    let replies = if allow {
        !r.requested_reply || r.eavesdrop
    } else {
        r.requested_reply
    };
    let eavesdropping = match dir {
        Direction::Send => true,
        Direction::Receive => allow == r.eavesdrop,
    };
    no_tests && replies && eavesdropping
}

impl RuleSet {
    fn new(rules: Vec<(bool, MessageRule)>, dir: Direction) -> Self {
        let mut general = Bucket::default();
        let mut by_name: HashMap<Box<str>, Bucket> = HashMap::new();
        for (i, (_, r)) in rules.iter().enumerate() {
            let bucket = match &r.peer {
                Some(name) if !r.peer_is_prefix => by_name.entry(name.clone()).or_default(),
                _ => &mut general,
            };
            bucket.push(i as u32, r);
        }
        let fixed = match rules.last() {
            None => Some(false),
            Some((allow, r)) if applies_to_everything(*allow, r, dir) => Some(*allow),
            Some(_) => None,
        };
        RuleSet {
            rules,
            general,
            by_name,
            fixed,
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules in the order they are evaluated (for `--check-config`).
    pub fn rules(&self) -> impl Iterator<Item = &(bool, MessageRule)> {
        self.rules.iter()
    }

    fn decide(
        &self,
        exact_names: Peer<'_>,
        msg_name: Option<&str>,
        m: &MessageFacts<'_>,
        applies: &dyn Fn(usize) -> bool,
    ) -> Decision {
        if let Some(allowed) = self.fixed {
            if allowed {
                return Decision {
                    allowed,
                    matched_rules: 1,
                    log: self.rules.last().is_some_and(|(_, r)| r.log),
                };
            }
        }
        let mut best = self.general.last(m, None, applies);
        if !self.by_name.is_empty() {
            let mut consider = |name: &str| {
                if let Some(bucket) = self.by_name.get(name) {
                    if let Some(p) = bucket.last(m, best, applies) {
                        best = Some(p);
                    }
                }
            };
            match exact_names {
                Peer::Bus => {
                    if let Some(n) = msg_name {
                        consider(n);
                    }
                }
                Peer::Connection(names) => names.for_each_name(&mut consider),
            }
        }
        match best {
            Some(p) if self.rules[p as usize].0 => Decision {
                allowed: true,
                matched_rules: 1,
                log: self.rules[p as usize].1.log,
            },
            // A denial is rare and reported with the number of rules that applied: count
            // them the way dbus-daemon does, with a full scan.
            _ => {
                let mut matched = 0;
                let mut last = None;
                for i in 0..self.rules.len() {
                    if applies(i) {
                        matched += 1;
                        last = Some(i);
                    }
                }
                Decision {
                    allowed: last.is_some_and(|i| self.rules[i].0),
                    matched_rules: matched,
                    log: last.is_some_and(|i| self.rules[i].1.log),
                }
            }
        }
    }
}

#[cfg(test)]
impl RuleSet {
    /// dbus-daemon's plain loop, for checking the index against it.
    fn decide_linear(&self, applies: &dyn Fn(usize) -> bool) -> bool {
        (0..self.rules.len())
            .filter(|&i| applies(i))
            .last()
            .is_some_and(|i| self.rules[i].0)
    }
}

/// The tests shared by send and receive rules (bus/policy.c, in its order).
fn header_applies(allow: bool, r: &MessageRule, m: &MessageFacts<'_>) -> bool {
    if r.msg_type.is_some_and(|t| t != m.msg_type) {
        return false;
    }
    if let Some(p) = &r.path {
        if m.path.is_some_and(|mp| mp != &**p) {
            return false;
        }
    }
    if let Some(i) = &r.interface {
        // A message without an interface escapes allow rules but not deny rules.
        match m.interface {
            None if allow => return false,
            Some(mi) if mi != &**i => return false,
            _ => {}
        }
    }
    if let Some(mem) = &r.member {
        if m.member.is_some_and(|mm| mm != &**mem) {
            return false;
        }
    }
    if let Some(e) = &r.error {
        if m.error_name.is_some_and(|me| me != &**e) {
            return false;
        }
    }
    true
}

fn reply_applies(
    allow: bool,
    r: &MessageRule,
    m: &MessageFacts<'_>,
    requested_reply: bool,
) -> bool {
    if !m.is_reply {
        return true;
    }
    if !requested_reply && allow && r.requested_reply && !r.eavesdrop {
        return false;
    }
    !(requested_reply && !allow && !r.requested_reply)
}

fn fds_apply(r: &MessageRule, m: &MessageFacts<'_>) -> bool {
    (r.min_fds == 0 && r.max_fds >= MAX_MESSAGE_UNIX_FDS)
        || (r.min_fds..=r.max_fds).contains(&m.unix_fds)
}

/// Whether `peer` is designated by the rule's peer name (exact or prefix); for the bus side
/// the message's own header string (`header`) is compared instead.
fn peer_applies(r: &MessageRule, peer: Peer<'_>, header: Option<&str>) -> bool {
    let Some(name) = &r.peer else { return true };
    match (peer, r.peer_is_prefix) {
        (Peer::Bus, false) => header == Some(&**name),
        (Peer::Bus, true) => header.is_some_and(|h| has_word_prefix(h, name)),
        (Peer::Connection(n), false) => n.in_queue(name),
        (Peer::Connection(n), true) => n.in_queue_below(name),
    }
}

/// A connection's policy: the rules of every context that applies to it, in dbus-daemon's
/// order (default, groups, user, console, mandatory), after dbus-daemon's pruning.
#[derive(Debug, Clone, Default)]
pub struct ClientPolicy {
    pub(crate) send: RuleSet,
    pub(crate) receive: RuleSet,
    /// (allow, name (None: any), is_prefix)
    pub(crate) own: Vec<(bool, Option<Box<str>>, bool)>,
}

/// A send, receive or own rule, as it enters a [`ClientPolicy`].
#[derive(Debug, Clone)]
pub(crate) enum ClientRule {
    Send(bool, MessageRule),
    Receive(bool, MessageRule),
    Own(bool, Option<Box<str>>, bool),
}

impl ClientPolicy {
    /// Builds a policy from rules in evaluation order. Like dbus-daemon, a rule without any
    /// message test (type, path, interface, member, error, peer) drops every earlier rule of
    /// its kind: an included file can "start over" with a blanket rule.
    pub(crate) fn from_rules(rules: Vec<ClientRule>) -> Self {
        let blanket = |r: &MessageRule| {
            r.msg_type.is_none()
                && r.path.is_none()
                && r.interface.is_none()
                && r.member.is_none()
                && r.error.is_none()
                && r.peer.is_none()
        };
        let mut send = Vec::new();
        let mut receive = Vec::new();
        let mut own = Vec::new();
        for rule in rules {
            match rule {
                ClientRule::Send(allow, r) => {
                    if blanket(&r) {
                        send.clear();
                    }
                    send.push((allow, r));
                }
                ClientRule::Receive(allow, r) => {
                    if blanket(&r) {
                        receive.clear();
                    }
                    receive.push((allow, r));
                }
                ClientRule::Own(allow, name, prefix) => {
                    if name.is_none() {
                        own.clear();
                    }
                    own.push((allow, name, prefix));
                }
            }
        }
        ClientPolicy {
            send: RuleSet::new(send, Direction::Send),
            receive: RuleSet::new(receive, Direction::Receive),
            own,
        }
    }

    /// Whether everything is allowed without looking at messages (the session bus).
    pub fn allows_all_messages(&self) -> bool {
        self.send.fixed == Some(true) && self.receive.fixed == Some(true)
    }

    pub fn send_rules(&self) -> &RuleSet {
        &self.send
    }

    pub fn receive_rules(&self) -> &RuleSet {
        &self.receive
    }

    pub fn own_rules(&self) -> &[(bool, Option<Box<str>>, bool)] {
        &self.own
    }

    fn send_applies<'a>(
        &'a self,
        m: &'a MessageFacts<'a>,
        requested_reply: bool,
        receiver: Peer<'a>,
    ) -> impl Fn(usize) -> bool + 'a {
        let broadcast = m.destination.is_none() && m.msg_type == SIGNAL;
        move |i: usize| {
            let (allow, r) = &self.send.rules[i];
            let allow = *allow;
            reply_applies(allow, r, m, requested_reply)
                && header_applies(allow, r, m)
                && r.broadcast.is_none_or(|b| b == broadcast)
                && peer_applies(r, receiver, m.destination)
                && fds_apply(r, m)
        }
    }

    fn receive_applies<'a>(
        &'a self,
        m: &'a MessageFacts<'a>,
        requested_reply: bool,
        eavesdropping: bool,
        sender: Peer<'a>,
    ) -> impl Fn(usize) -> bool + 'a {
        move |i: usize| {
            let (allow, r) = &self.receive.rules[i];
            let allow = *allow;
            // Allow rules reach eavesdroppers only with eavesdrop="true"; deny rules with
            // eavesdrop="true" reach only eavesdroppers.
            if eavesdropping && allow && !r.eavesdrop {
                return false;
            }
            if !eavesdropping && !allow && r.eavesdrop {
                return false;
            }
            reply_applies(allow, r, m, requested_reply)
                && header_applies(allow, r, m)
                && peer_applies(r, sender, m.sender)
                && fds_apply(r, m)
        }
    }

    /// May this connection send `m` to `receiver`? `requested_reply`: `m` answers a call
    /// the receiver made to this connection and is still waiting for.
    pub fn may_send(
        &self,
        m: &MessageFacts<'_>,
        requested_reply: bool,
        receiver: Peer<'_>,
    ) -> Decision {
        let applies = self.send_applies(m, requested_reply, receiver);
        self.send.decide(receiver, m.destination, m, &applies)
    }

    /// May this connection receive `m` from `sender`? `eavesdropping`: the message is
    /// addressed to someone else.
    pub fn may_receive(
        &self,
        m: &MessageFacts<'_>,
        requested_reply: bool,
        eavesdropping: bool,
        sender: Peer<'_>,
    ) -> Decision {
        let applies = self.receive_applies(m, requested_reply, eavesdropping, sender);
        let mut d = self.receive.decide(sender, m.sender, m, &applies);
        d.log = false;
        d
    }

    #[cfg(test)]
    fn may_send_linear(
        &self,
        m: &MessageFacts<'_>,
        requested_reply: bool,
        receiver: Peer<'_>,
    ) -> bool {
        self.send
            .decide_linear(&self.send_applies(m, requested_reply, receiver))
    }

    #[cfg(test)]
    fn may_receive_linear(
        &self,
        m: &MessageFacts<'_>,
        requested_reply: bool,
        eavesdropping: bool,
        sender: Peer<'_>,
    ) -> bool {
        self.receive
            .decide_linear(&self.receive_applies(m, requested_reply, eavesdropping, sender))
    }

    /// May this connection own `name`?
    pub fn may_own(&self, name: &str) -> bool {
        self.own
            .iter()
            .rev()
            .find(|(_, rule_name, prefix)| match (rule_name, prefix) {
                (None, _) => true,
                (Some(n), false) => &**n == name,
                (Some(n), true) => has_word_prefix(name, n),
            })
            .is_some_and(|(allow, _, _)| *allow)
    }
}

#[cfg(test)]
mod tests;
