//! The match-rule registry, indexed so a message only meets the rules that could match it.
//!
//! Every rule is filed under exactly one key, the most selective it has: its sender, else its
//! interface, else its member, else the catch-all list. A message looks up its sender's names,
//! its interface and its member, plus the catch-all list, and runs the exact matcher only on
//! those rules (dbus-broker indexes the same way).

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
        }
        removed
    }

    /// Removes every rule of `peer` (on disconnect); `rules` lists them.
    pub fn remove_peer<'a>(&mut self, peer: PeerId, rules: impl Iterator<Item = &'a MatchRule>) {
        for rule in rules {
            self.remove(peer, rule);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
}
