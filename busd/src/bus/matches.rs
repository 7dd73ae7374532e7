//! The match-rule registry, indexed so a message only meets the rules that could match it.
//!
//! Every rule is filed under exactly one key, the most selective it has: its sender, else its
//! interface, else its member, else the catch-all list. A message looks up its sender's names,
//! its interface and its member, plus the catch-all list, and runs the exact matcher only on
//! those rules (dbus-broker indexes the same way).
//!
//! It is the one record of each connection's rules ([`MatchRegistry::rules_of`], in the order
//! they were added), for routing, the fast path's filters, limits and Debug.Stats alike.

use std::collections::HashMap;

use busd_match::MatchRule;

use super::PeerId;

#[derive(Debug)]
pub struct Entry {
    pub peer: PeerId,
    pub rule: MatchRule,
}

/// Rules filed by their most selective key; separate maps so lookups borrow the message's
/// strings and never allocate.
#[derive(Debug, Default)]
pub struct MatchRegistry {
    by_sender: HashMap<String, Vec<Entry>>,
    by_interface: HashMap<String, Vec<Entry>>,
    by_member: HashMap<String, Vec<Entry>>,
    any: Vec<Entry>,
    len: usize,
    /// How many of the rules have `eavesdrop=true`.
    eavesdropping: usize,
    /// Each connection's rules, in the order it added them.
    by_peer: HashMap<PeerId, Vec<MatchRule>>,
}

impl MatchRegistry {
    fn map_for(&mut self, rule: &MatchRule) -> Option<(&mut HashMap<String, Vec<Entry>>, String)> {
        if let Some(s) = &rule.sender {
            Some((&mut self.by_sender, s.clone()))
        } else if let Some(i) = &rule.interface {
            Some((&mut self.by_interface, i.clone()))
        } else {
            rule.member
                .as_ref()
                .map(|m| (&mut self.by_member, m.clone()))
        }
    }

    pub fn add(&mut self, peer: PeerId, rule: MatchRule) {
        self.by_peer.entry(peer).or_default().push(rule.clone());
        self.eavesdropping += usize::from(rule.eavesdrop);
        let entry = Entry { peer, rule };
        match self.map_for(&entry.rule) {
            Some((map, key)) => map.entry(key).or_default().push(entry),
            None => self.any.push(entry),
        }
        self.len += 1;
    }

    /// Removes one instance of `rule` added by `peer`; false if there is none.
    pub fn remove(&mut self, peer: PeerId, rule: &MatchRule) -> bool {
        let found = |bucket: &mut Vec<Entry>| match bucket
            .iter()
            .position(|e| e.peer == peer && &e.rule == rule)
        {
            Some(pos) => {
                bucket.remove(pos);
                true
            }
            None => false,
        };
        let removed = match self.map_for(rule) {
            Some((map, key)) => {
                let removed = map.get_mut(&key).is_some_and(found);
                if map.get(&key).is_some_and(Vec::is_empty) {
                    map.remove(&key);
                }
                removed
            }
            None => found(&mut self.any),
        };
        if removed {
            self.len -= 1;
            self.eavesdropping -= usize::from(rule.eavesdrop);
            if let Some(rules) = self.by_peer.get_mut(&peer) {
                if let Some(i) = rules.iter().position(|r| r == rule) {
                    rules.remove(i);
                }
                if rules.is_empty() {
                    self.by_peer.remove(&peer);
                }
            }
        }
        removed
    }

    /// Removes every rule of `peer` (it disconnected or became a monitor); returns how many
    /// it had.
    pub fn remove_peer(&mut self, peer: PeerId) -> usize {
        let rules = self.by_peer.get(&peer).cloned().unwrap_or_default();
        for rule in &rules {
            self.remove(peer, rule);
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

    /// Whether some rule has `eavesdrop=true` (without looking at every rule).
    pub fn any_eavesdropping(&self) -> bool {
        self.eavesdropping > 0
    }

    /// Calls `f` for every rule that may match a message with these properties.
    /// `sender_names` are the sender's unique name and the names it owns.
    pub fn candidates<'a>(
        &'a self,
        sender_names: &[&str],
        interface: Option<&str>,
        member: Option<&str>,
        mut f: impl FnMut(&'a Entry),
    ) {
        if self.len == 0 {
            return;
        }
        for s in sender_names {
            if let Some(b) = self.by_sender.get(*s) {
                b.iter().for_each(&mut f);
            }
        }
        if let Some(b) = interface.and_then(|i| self.by_interface.get(i)) {
            b.iter().for_each(&mut f);
        }
        if let Some(b) = member.and_then(|m| self.by_member.get(m)) {
            b.iter().for_each(&mut f);
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
        let mut v = Vec::new();
        r.candidates(senders, i, m, |e| v.push(e.peer));
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
}
