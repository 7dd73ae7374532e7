//! Interest summaries: what a sender checks, per member, before sending it a broadcast, and
//! an index that finds the candidates for a message without looking at every member
//! (DESIGN 5.3). Like filters, summaries are supersets: a member whose rules match a message
//! is always a candidate; a member that is a candidate may still not want it.
//!
//! A rule is summarised by one key, the most selective field it tests exactly: its member,
//! else its interface, else its path. A rule with none of these (e.g. only `sender=` or
//! `arg0=`) makes the member want every broadcast.

use std::collections::HashMap;

use crate::header::hash32;
use crate::matcher::MessageInfo;
use crate::rule::MatchRule;

/// Which field a key hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Member,
    Interface,
    Path,
}

/// A key: a field and the hash of its value (the routing header's hash words).
pub type Key = (Field, u32);

/// One member's interest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Some rule may match any message.
    pub everything: bool,
    /// The rules' keys, for the [`Index`].
    pub keys: Vec<Key>,
    /// The keys as a 256-bit set (bit = a mix of field and hash), so that a sender tests a
    /// member in constant time: three bit tests.
    pub bits: [u64; 4],
}

fn bit(key: Key) -> (usize, u64) {
    let h = key.1.wrapping_mul(0x9e37_79b9) ^ (key.0 as u32).wrapping_mul(0x85eb_ca6b);
    let b = (h >> 24) as usize;
    (b / 64, 1u64 << (b % 64))
}

fn key_of(rule: &MatchRule) -> Option<Key> {
    if let Some(m) = &rule.member {
        return Some((Field::Member, hash32(m)));
    }
    if let Some(i) = &rule.interface {
        return Some((Field::Interface, hash32(i)));
    }
    rule.path.as_ref().map(|p| (Field::Path, hash32(p)))
}

impl Summary {
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a MatchRule>) -> Summary {
        let mut s = Summary::default();
        for r in rules {
            match key_of(r) {
                Some(k) => {
                    if !s.keys.contains(&k) {
                        s.keys.push(k);
                        let (w, m) = bit(k);
                        s.bits[w] |= m;
                    }
                }
                None => s.everything = true,
            }
        }
        s.keys.sort_unstable();
        s
    }

    /// Whether a message with these header hashes (0: field absent) may interest the
    /// member: constant time, a superset of the exact answer.
    pub fn selects(&self, member: u32, interface: u32, path: u32) -> bool {
        self.everything
            || [
                (Field::Member, member),
                (Field::Interface, interface),
                (Field::Path, path),
            ]
            .into_iter()
            .any(|k| {
                let (w, m) = bit(k);
                k.1 != 0 && self.bits[w] & m != 0
            })
    }
}

/// The keys of a message, as the routing header carries them.
pub fn message_keys(msg: &impl MessageInfo) -> (u32, u32, u32) {
    (
        msg.member().map_or(0, hash32),
        msg.interface().map_or(0, hash32),
        msg.path().map_or(0, hash32),
    )
}

/// All members' summaries, indexed by key: the candidates for a message are the members
/// that want everything plus those filed under one of its three keys.
#[derive(Debug, Clone, Default)]
pub struct Index {
    everything: Vec<u32>,
    by_key: HashMap<Key, Vec<u32>>,
}

impl Index {
    pub fn insert(&mut self, member: u32, summary: &Summary) {
        if summary.everything {
            self.everything.push(member);
            return;
        }
        for k in &summary.keys {
            self.by_key.entry(*k).or_default().push(member);
        }
    }

    pub fn remove(&mut self, member: u32) {
        self.everything.retain(|&m| m != member);
        self.by_key.retain(|_, v| {
            v.retain(|&m| m != member);
            !v.is_empty()
        });
    }

    /// Calls `f` with every candidate (a member may come more than once).
    pub fn candidates(&self, member: u32, interface: u32, path: u32, mut f: impl FnMut(u32)) {
        self.everything.iter().for_each(|&m| f(m));
        for key in [
            (Field::Member, member),
            (Field::Interface, interface),
            (Field::Path, path),
        ] {
            if key.1 != 0 {
                if let Some(v) = self.by_key.get(&key) {
                    v.iter().for_each(|&m| f(m));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::Arg;
    use proptest::prelude::*;

    struct Msg {
        interface: Option<&'static str>,
        member: Option<&'static str>,
        path: Option<&'static str>,
    }

    impl MessageInfo for Msg {
        fn msg_type(&self) -> u8 {
            4
        }
        fn interface(&self) -> Option<&str> {
            self.interface
        }
        fn member(&self) -> Option<&str> {
            self.member
        }
        fn path(&self) -> Option<&str> {
            self.path
        }
        fn destination(&self) -> Option<&str> {
            None
        }
        fn sender_is(&self, _: &str) -> bool {
            true
        }
        fn destination_is(&self, _: &str) -> bool {
            false
        }
        fn arg(&self, _: u8) -> Arg<'_> {
            Arg::Str("a")
        }
    }

    fn rule(t: &str) -> MatchRule {
        MatchRule::parse(t).unwrap()
    }

    #[test]
    fn the_index_finds_candidates_by_key() {
        let mut idx = Index::default();
        idx.insert(1, &Summary::of(&[rule("member='A'")]));
        idx.insert(2, &Summary::of(&[rule("interface='i.x'")]));
        idx.insert(3, &Summary::of(&[rule("sender=':1.1'")]));
        let mut got = Vec::new();
        let (m, i, p) = message_keys(&Msg {
            interface: Some("i.y"),
            member: Some("A"),
            path: Some("/"),
        });
        idx.candidates(m, i, p, |c| got.push(c));
        got.sort_unstable();
        assert_eq!(got, vec![1, 3]);
        idx.remove(3);
        got.clear();
        idx.candidates(m, i, p, |c| got.push(c));
        assert_eq!(got, vec![1]);
    }

    proptest! {
        /// Whatever a member's rules match, its summary selects, and the index lists it.
        #[test]
        fn exact_match_implies_the_summary_selects(
            keys in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(&["A", "B"][..]).prop_map(|v| format!("member='{v}'")),
                    prop::sample::select(&["i.x", "i.y"][..]).prop_map(|v| format!("interface='{v}'")),
                    prop::sample::select(&["/", "/a"][..]).prop_map(|v| format!("path='{v}'")),
                    Just("arg0='a'".to_string()),
                ],
                0..3,
            ),
            interface in prop::option::of(prop::sample::select(&["i.x", "i.y"][..])),
            member in prop::option::of(prop::sample::select(&["A", "B"][..])),
            path in prop::option::of(prop::sample::select(&["/", "/a"][..])),
        ) {
            // Repeated keys make invalid rules (dbus-daemon refuses them): nothing to check.
            let Ok(r) = MatchRule::parse(&keys.join(",")) else { return Ok(()) };
            let msg = Msg { interface, member, path };
            let s = Summary::of(std::slice::from_ref(&r));
            let (m, i, p) = message_keys(&msg);
            if r.matches(&msg) {
                prop_assert!(s.selects(m, i, p));
                let mut idx = Index::default();
                idx.insert(7, &s);
                let mut found = false;
                idx.candidates(m, i, p, |c| found |= c == 7);
                prop_assert!(found);
            }
        }
    }
}
