//! The match-rule registry, indexed so a message only meets the rules that could match it
//! (DESIGN 8: routing cost must not grow with unrelated rules).
//!
//! Every rule is filed under exactly one key among those it has: a field whose exact value
//! (or namespace) a message must have for the rule to match it — `arg0`, `path`,
//! `path_namespace`, `arg0namespace`, `sender`, `member`, `interface`, `destination` — and
//! among them the one whose bucket is smallest when the rule comes, so that a common value
//! (every zbus client's `sender='org.freedesktop.DBus'`, a busy interface) does not gather
//! the rules that have a rarer one. Rules with none of these go in the catch-all list. A
//! message looks up each key it has (its sender's names, every prefix of its path and of
//! its arg0) and the catch-all list, and runs the exact matcher only on those rules.
//!
//! It is the one record of each connection's rules ([`MatchRegistry::rules_of`], in the order
//! they were added), for routing, the fast path's filters, limits and Debug.Stats alike.

use std::collections::HashMap;

use busd_match::rule::ArgMatchKind;
use busd_match::MatchRule;

use super::{IdMap, PeerId};

#[derive(Debug)]
pub struct Entry {
    pub peer: PeerId,
    pub rule: MatchRule,
}

/// The fields a rule can be filed under, in the order ties are broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Arg0,
    Path,
    Sender,
    Member,
    Arg0Namespace,
    PathNamespace,
    Interface,
    Destination,
}

const KEYS: usize = 8;

/// What a message offers the index.
#[derive(Debug, Default)]
pub struct Lookup<'a> {
    /// The sender's unique name and the names it owns.
    pub senders: &'a [&'a str],
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    pub path: Option<&'a str>,
    /// The names of the connection it is addressed to (or its destination, when that is
    /// nobody's).
    pub destinations: &'a [&'a str],
    /// The first argument, when it is a STRING.
    pub arg0: Option<&'a str>,
}

/// Rules by key and value; lookups borrow the message's strings and never allocate.
#[derive(Debug, Default)]
pub struct MatchRegistry {
    buckets: [HashMap<String, Vec<Entry>>; KEYS],
    any: Vec<Entry>,
    len: usize,
    /// How many of the rules have `eavesdrop=true`.
    eavesdropping: usize,
    /// How many rules are filed under each key (a message's arg0 is read, and its
    /// recipient's names gathered, only when some rules need them).
    filed: [usize; KEYS],
    /// Each connection's rules, in the order it added them.
    by_peer: IdMap<PeerId, Vec<MatchRule>>,
    /// For each name `sender=` rules mention, the connections with such rules (and how
    /// many each has): whose fast-path filter changes when that name changes owner.
    mentions: HashMap<String, IdMap<PeerId, u32>>,
}

/// The keys `rule` may be filed under, with their values.
fn keys_of(rule: &MatchRule) -> impl Iterator<Item = (Key, &str)> {
    let arg0 = rule.args.first().filter(|a| a.index == 0);
    let arg0_of = |kind| arg0.filter(|a| a.kind == kind).map(|a| a.value.as_str());
    [
        (Key::Arg0, arg0_of(ArgMatchKind::String)),
        (Key::Path, rule.path.as_deref()),
        (Key::Sender, rule.sender.as_deref()),
        (Key::Member, rule.member.as_deref()),
        (Key::Arg0Namespace, arg0_of(ArgMatchKind::Namespace)),
        (Key::PathNamespace, rule.path_namespace.as_deref()),
        (Key::Interface, rule.interface.as_deref()),
        (Key::Destination, rule.destination.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
}

/// `path` and each of its ancestors (`/a/b`: `/a/b`, `/a`, `/`), as path_namespace
/// values that contain it.
fn path_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let mut end = Some(path.len());
    std::iter::from_fn(move || {
        let e = end?;
        let p = if e == 0 { "/" } else { &path[..e] };
        end = match path[..e].rfind('/') {
            Some(0) if e > 1 => Some(0),
            Some(i) if i > 0 => Some(i),
            _ => None,
        };
        Some(p)
    })
}

/// `arg0` and each of its dot-prefixes (`a.b.c`: `a.b.c`, `a.b`, `a`), as arg0namespace
/// values that contain it.
fn dot_prefixes(arg0: &str) -> impl Iterator<Item = &str> {
    let mut end = Some(arg0.len());
    std::iter::from_fn(move || {
        let e = end?;
        end = arg0[..e].rfind('.');
        Some(&arg0[..e])
    })
}

impl MatchRegistry {
    /// The bucket a new `rule` goes in: its key with the fewest rules now.
    fn place(&self, rule: &MatchRule) -> Option<(Key, String)> {
        keys_of(rule)
            .min_by_key(|&(k, v)| self.buckets[k as usize].get(v).map_or(0, Vec::len))
            .map(|(k, v)| (k, v.to_string()))
    }

    pub fn add(&mut self, peer: PeerId, rule: MatchRule) {
        self.by_peer.entry(peer).or_default().push(rule.clone());
        self.eavesdropping += usize::from(rule.eavesdrop);
        if let Some(sender) = &rule.sender {
            *self
                .mentions
                .entry(sender.clone())
                .or_default()
                .entry(peer)
                .or_default() += 1;
        }
        let place = self.place(&rule);
        let entry = Entry { peer, rule };
        match place {
            Some((key, value)) => {
                self.filed[key as usize] += 1;
                self.buckets[key as usize]
                    .entry(value)
                    .or_default()
                    .push(entry);
            }
            None => self.any.push(entry),
        }
        self.len += 1;
    }

    /// Removes one instance of `rule` added by `peer`; false if there is none.
    pub fn remove(&mut self, peer: PeerId, rule: &MatchRule) -> bool {
        if !self.unfile(peer, rule) {
            return false;
        }
        if let Some(rules) = self.by_peer.get_mut(&peer) {
            if let Some(i) = rules.iter().position(|r| r == rule) {
                rules.remove(i);
            }
            if rules.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        true
    }

    /// Takes one instance of `rule` added by `peer` out of the index and the counts (not out
    /// of its list); false if there is none.
    fn unfile(&mut self, peer: PeerId, rule: &MatchRule) -> bool {
        let same = |e: &Entry| e.peer == peer && &e.rule == rule;
        let mut removed = None;
        for (key, value) in keys_of(rule) {
            let bucket = &mut self.buckets[key as usize];
            let Some(b) = bucket.get_mut(value) else {
                continue;
            };
            if let Some(pos) = b.iter().position(same) {
                b.swap_remove(pos);
                if b.is_empty() {
                    bucket.remove(value);
                }
                removed = Some(Some(key));
                break;
            }
        }
        if removed.is_none() {
            if let Some(pos) = self.any.iter().position(same) {
                self.any.swap_remove(pos);
                removed = Some(None);
            }
        }
        let Some(key) = removed else {
            return false;
        };
        if let Some(key) = key {
            self.filed[key as usize] -= 1;
        }
        self.len -= 1;
        self.eavesdropping -= usize::from(rule.eavesdrop);
        if let Some(sender) = &rule.sender {
            if let Some(peers) = self.mentions.get_mut(sender) {
                if let Some(n) = peers.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        peers.remove(&peer);
                    }
                }
                if peers.is_empty() {
                    self.mentions.remove(sender);
                }
            }
        }
        true
    }

    /// Removes every rule of `peer` (it disconnected or became a monitor); returns how many
    /// it had. (Its list goes at once: not searched once per rule.)
    pub fn remove_peer(&mut self, peer: PeerId) -> usize {
        let rules = self.by_peer.remove(&peer).unwrap_or_default();
        for rule in &rules {
            self.unfile(peer, rule);
        }
        rules.len()
    }

    /// The rules `peer` added, in order.
    pub fn rules_of(&self, peer: PeerId) -> &[MatchRule] {
        self.by_peer.get(&peer).map_or(&[], Vec::as_slice)
    }

    /// Every connection that has rules, with them.
    pub fn by_peer(&self) -> impl Iterator<Item = (PeerId, &[MatchRule])> {
        self.by_peer.iter().map(|(&p, r)| (p, r.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The connections with a `sender=` rule naming `name` (without looking at every
    /// rule).
    pub fn mentioning(&self, name: &str) -> impl Iterator<Item = PeerId> + '_ {
        self.mentions
            .get(name)
            .into_iter()
            .flat_map(|peers| peers.keys().copied())
    }

    /// Whether some rule has `eavesdrop=true` (without looking at every rule).
    pub fn any_eavesdropping(&self) -> bool {
        self.eavesdropping > 0
    }

    /// Whether some rule is filed under the first argument: only then does a lookup need
    /// it (reading it parses the body).
    pub fn wants_arg0(&self) -> bool {
        self.filed[Key::Arg0 as usize] + self.filed[Key::Arg0Namespace as usize] > 0
    }

    /// Whether some rule is filed under a destination: only then does a lookup need the
    /// recipient's names.
    pub fn wants_destinations(&self) -> bool {
        self.filed[Key::Destination as usize] > 0
    }

    /// Calls `f` for every rule that may match a message with these properties (each rule
    /// once).
    pub fn candidates<'a>(&'a self, m: &Lookup<'_>, mut f: impl FnMut(&'a Entry)) {
        if self.len == 0 {
            return;
        }
        let mut bucket = |key: Key, value: &str| {
            if let Some(b) = self.buckets[key as usize].get(value) {
                b.iter().for_each(&mut f);
            }
        };
        for s in m.senders {
            bucket(Key::Sender, s);
        }
        for d in m.destinations {
            bucket(Key::Destination, d);
        }
        for (key, value) in [
            (Key::Interface, m.interface),
            (Key::Member, m.member),
            (Key::Path, m.path),
            (Key::Arg0, m.arg0),
        ] {
            if let Some(v) = value {
                bucket(key, v);
            }
        }
        if let Some(p) = m.path {
            path_prefixes(p).for_each(|p| bucket(Key::PathNamespace, p));
        }
        if let Some(a) = m.arg0 {
            dot_prefixes(a).for_each(|a| bucket(Key::Arg0Namespace, a));
        }
        self.any.iter().for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> MatchRule {
        MatchRule::parse(s).unwrap()
    }

    fn hits(r: &MatchRegistry, senders: &[&str], i: Option<&str>, m: Option<&str>) -> Vec<PeerId> {
        let lookup = Lookup {
            senders,
            interface: i,
            member: m,
            ..Lookup::default()
        };
        found(r, &lookup)
    }

    fn found(r: &MatchRegistry, lookup: &Lookup<'_>) -> Vec<PeerId> {
        let mut v = Vec::new();
        r.candidates(lookup, |e| v.push(e.peer));
        v.sort();
        v
    }

    #[test]
    fn each_rule_is_found_under_its_key_only() {
        let mut r = MatchRegistry::default();
        r.add(1, rule("sender='org.a',interface='i.x'"));
        r.add(2, rule("interface='i.x'"));
        r.add(3, rule("member='M'"));
        r.add(4, rule("type='signal'"));
        assert_eq!(hits(&r, &[":1.0"], Some("i.y"), Some("N")), vec![4]);
        assert_eq!(
            hits(&r, &[":1.0", "org.a"], Some("i.x"), Some("M")),
            vec![1, 2, 3, 4]
        );
        assert_eq!(hits(&r, &[":1.0"], Some("i.x"), None), vec![2, 4]);
    }

    #[test]
    fn eavesdropping_rules_are_counted_as_they_come_and_go() {
        let mut r = MatchRegistry::default();
        r.add(1, rule("member='M'"));
        assert!(!r.any_eavesdropping());
        r.add(1, rule("eavesdrop=true"));
        r.add(2, rule("eavesdrop=true,member='M'"));
        r.remove(1, &rule("eavesdrop=true"));
        assert!(r.any_eavesdropping());
        r.remove_peer(2);
        assert!(!r.any_eavesdropping());
    }

    #[test]
    fn connections_are_found_by_the_sender_names_their_rules_mention() {
        let mut r = MatchRegistry::default();
        r.add(1, rule("sender='org.a',member='X'"));
        r.add(1, rule("sender='org.a'"));
        r.add(2, rule("sender='org.b'"));
        r.add(3, rule("member='X'"));
        let mentioning = |r: &MatchRegistry, n| {
            let mut v: Vec<PeerId> = r.mentioning(n).collect();
            v.sort();
            v
        };
        assert_eq!(mentioning(&r, "org.a"), vec![1]);
        r.remove(1, &rule("sender='org.a'"));
        assert_eq!(mentioning(&r, "org.a"), vec![1]);
        r.remove_peer(1);
        assert!(mentioning(&r, "org.a").is_empty());
        assert_eq!(mentioning(&r, "org.b"), vec![2]);
    }

    #[test]
    fn remove_takes_one_instance() {
        let mut r = MatchRegistry::default();
        r.add(1, rule("member='M'"));
        r.add(1, rule("member='M'"));
        assert!(r.remove(1, &rule("member='M'")));
        assert_eq!(r.len(), 1);
        assert!(!r.remove(2, &rule("member='M'")));
        assert!(r.remove(1, &rule("member='M'")));
        assert!(!r.remove(1, &rule("member='M'")));
        assert!(r.is_empty());
    }

    #[test]
    fn each_connections_rules_are_kept_in_order_and_leave_with_it() {
        let mut r = MatchRegistry::default();
        r.add(1, rule("member='A'"));
        r.add(2, rule("interface='i.x'"));
        r.add(1, rule("sender='org.s'"));
        r.add(1, rule("member='A'"));
        assert_eq!(
            r.rules_of(1),
            [
                rule("member='A'"),
                rule("sender='org.s'"),
                rule("member='A'")
            ]
        );
        assert!(r.remove(1, &rule("member='A'")));
        assert_eq!(r.rules_of(1), [rule("sender='org.s'"), rule("member='A'")]);
        // A rule another connection added is not this one's to remove.
        assert!(!r.remove(1, &rule("interface='i.x'")));
        assert_eq!(r.remove_peer(1), 2);
        assert!(r.rules_of(1).is_empty());
        assert_eq!(hits(&r, &["org.s"], Some("i.x"), Some("A")), vec![2]);
        assert_eq!((r.len(), r.by_peer().count()), (1, 1));
    }

    /// A message as the exact matcher sees it, with its names.
    #[derive(Debug, Clone)]
    struct Msg {
        kind: u8,
        senders: Vec<String>,
        destinations: Vec<String>,
        interface: Option<String>,
        member: Option<String>,
        path: Option<String>,
        arg0: Option<String>,
    }

    impl busd_match::MessageInfo for Msg {
        fn msg_type(&self) -> u8 {
            self.kind
        }
        fn interface(&self) -> Option<&str> {
            self.interface.as_deref()
        }
        fn member(&self) -> Option<&str> {
            self.member.as_deref()
        }
        fn path(&self) -> Option<&str> {
            self.path.as_deref()
        }
        fn destination(&self) -> Option<&str> {
            self.destinations.first().map(String::as_str)
        }
        fn sender_is(&self, name: &str) -> bool {
            self.senders.iter().any(|s| s == name)
        }
        fn destination_is(&self, name: &str) -> bool {
            self.destinations.iter().any(|d| d == name)
        }
        fn arg(&self, index: u8) -> busd_match::Arg<'_> {
            match (index, &self.arg0) {
                (0, Some(a)) => busd_match::Arg::Str(a),
                _ => busd_match::Arg::Missing,
            }
        }
    }

    use proptest::prelude::*;

    fn pick(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
        proptest::option::of(proptest::sample::select(values).prop_map(String::from))
    }

    const NAMES: &[&str] = &[":1.1", ":1.2", "org.a", "org.b"];
    const IFACES: &[&str] = &["i.x", "i.y"];
    const MEMBERS: &[&str] = &["A", "B"];
    const PATHS: &[&str] = &["/", "/a", "/a/b", "/ab", "/a/b/c"];
    const ARGS: &[&str] = &["x", "x.y", "x.y.z", "xy", "org.a"];

    fn rule_text() -> impl Strategy<Value = String> {
        (
            pick(NAMES),
            pick(NAMES),
            pick(IFACES),
            pick(MEMBERS),
            pick(PATHS),
            any::<(bool, bool, bool)>(),
            pick(ARGS),
        )
            .prop_map(
                |(sender, dest, iface, member, path, (ns, argns, eav), arg0)| {
                    let mut parts = vec!["type='signal'".to_string()];
                    let mut put = |k: &str, v: &Option<String>| {
                        if let Some(v) = v {
                            parts.push(format!("{k}='{v}'"));
                        }
                    };
                    put("sender", &sender);
                    put("destination", &dest);
                    put("interface", &iface);
                    put("member", &member);
                    put(if ns { "path_namespace" } else { "path" }, &path);
                    put(if argns { "arg0namespace" } else { "arg0" }, &arg0);
                    if eav {
                        parts.push("eavesdrop=true".into());
                    }
                    parts.join(",")
                },
            )
    }

    fn message() -> impl Strategy<Value = Msg> {
        (
            proptest::sample::subsequence(NAMES, 0..3),
            proptest::sample::subsequence(NAMES, 0..2),
            pick(IFACES),
            pick(MEMBERS),
            pick(PATHS),
            pick(ARGS),
        )
            .prop_map(
                |(senders, destinations, interface, member, path, arg0)| Msg {
                    kind: busd_wire::message::SIGNAL,
                    senders: senders.into_iter().map(String::from).collect(),
                    destinations: destinations.into_iter().map(String::from).collect(),
                    interface,
                    member,
                    path,
                    arg0,
                },
            )
    }

    proptest! {
        /// The index never hides a rule that matches: whatever rules were added (and some
        /// removed), every rule the exact matcher says matches a message is among the
        /// message's candidates.
        #[test]
        fn every_matching_rule_is_a_candidate(
            rules in proptest::collection::vec(rule_text(), 1..40),
            removed in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
            msgs in proptest::collection::vec(message(), 1..10),
        ) {
            let mut r = MatchRegistry::default();
            let parsed: Vec<MatchRule> = rules.iter().filter_map(|t| MatchRule::parse(t).ok()).collect();
            for (i, rule) in parsed.iter().enumerate() {
                r.add(i as PeerId, rule.clone());
            }
            let mut gone = std::collections::HashSet::new();
            for ix in removed {
                let i = ix.index(parsed.len());
                if gone.insert(i) {
                    prop_assert!(r.remove(i as PeerId, &parsed[i]));
                }
            }
            for m in &msgs {
                let senders: Vec<&str> = m.senders.iter().map(String::as_str).collect();
                let destinations: Vec<&str> = m.destinations.iter().map(String::as_str).collect();
                let lookup = Lookup {
                    senders: &senders,
                    interface: m.interface.as_deref(),
                    member: m.member.as_deref(),
                    path: m.path.as_deref(),
                    destinations: &destinations,
                    arg0: m.arg0.as_deref(),
                };
                let candidates = found(&r, &lookup);
                for (i, rule) in parsed.iter().enumerate() {
                    if !gone.contains(&i) && rule.matches(m) {
                        prop_assert!(candidates.contains(&(i as PeerId)), "{rule:?} matches {m:?}");
                    }
                }
            }
        }
    }

    /// A message meets only the rules that could match it, whatever the shape of the
    /// unrelated ones (issue 18): same interface and another member, same member and
    /// another arg0, another path or path namespace, another arg0 namespace.
    #[test]
    fn unrelated_rules_of_every_shape_are_not_met() {
        let mut r = MatchRegistry::default();
        for i in 0..1000 {
            r.add(
                1,
                rule(&format!("type='signal',interface='i.x',member='Other{i}'")),
            );
            r.add(
                2,
                rule(&format!("type='signal',member='Tick',arg0='nope{i}'")),
            );
            r.add(3, rule(&format!("type='signal',path='/p/{i}'")));
            r.add(4, rule(&format!("type='signal',path_namespace='/ns/{i}'")));
            r.add(5, rule(&format!("type='signal',arg0namespace='org.n{i}'")));
            r.add(6, rule(&format!("type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.n{i}'")));
        }
        r.add(
            9,
            rule("type='signal',interface='i.x',member='Tick',arg0='yes'"),
        );
        let mut met = 0;
        let lookup = Lookup {
            senders: &[":1.7", "org.freedesktop.DBus"],
            interface: Some("i.x"),
            member: Some("Tick"),
            path: Some("/p/x/y"),
            destinations: &[],
            arg0: Some("yes"),
        };
        r.candidates(&lookup, |_| met += 1);
        assert!(met <= 2, "a message met {met} rules");
    }
}
