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
    fn bucket_mut(&mut self, rule: &MatchRule, create: bool) -> Option<(&mut Vec<Entry>, Option<(u8, String)>)> {
        let (map, key, kind) = if let Some(s) = &rule.sender {
            (&mut self.by_sender, s, 0)
        } else if let Some(i) = &rule.interface {
            (&mut self.by_interface, i, 1)
        } else if let Some(m) = &rule.member {
            (&mut self.by_member, m, 2)
        } else {
            return Some((&mut self.any, None));
        };
        if create {
            Some((map.entry(key.clone()).or_default(), Some((kind, key.clone()))))
        } else {
            map.get_mut(key).map(|b| (b, Some((kind, key.clone()))))
        }
    }

    pub fn add(&mut self, peer: PeerId, rule: MatchRule) {
        if let Some((bucket, _)) = self.bucket_mut(&rule, true) {
            bucket.push(Entry { peer, rule });
        }
        self.len += 1;
    }

    /// Removes one instance of `rule` added by `peer`; false if there is none.
    pub fn remove(&mut self, peer: PeerId, rule: &MatchRule) -> bool {
        let Some((bucket, key)) = self.bucket_mut(rule, false) else {
            return false;
        };
        let Some(pos) = bucket.iter().position(|e| e.peer == peer && &e.rule == rule) else {
            return false;
        };
        bucket.remove(pos);
        if bucket.is_empty() {
            match key {
                Some((0, k)) => drop(self.by_sender.remove(&k)),
                Some((1, k)) => drop(self.by_interface.remove(&k)),
                Some((_, k)) => drop(self.by_member.remove(&k)),
                None => {}
            }
        }
        self.len -= 1;
        true
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
        assert_eq!(hits(&r, &[":1.0", "org.a"], Some("i.x"), Some("M")), vec![1, 2, 3, 4]);
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
