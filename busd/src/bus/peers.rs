//! The peer registry: the connections the bus knows, the unique names they were given at
//! Hello, and how many are complete (per user too), for max_completed_connections and
//! max_connections_per_user without counting them all on every Hello.

use std::collections::HashMap;
use std::rc::Rc;

use busd_match::MatchRule;
use busd_policy::ClientPolicy;

use super::{fastpath, Credentials, IdMap, PeerId};
use crate::queue::QueueLoad;

#[derive(Debug)]
pub(super) struct Peer {
    /// Its unique name, from Hello (written only by [`PeerRegistry::register`]). A monitor
    /// keeps it for the log, though the name no longer designates it.
    pub unique: Option<String>,
    pub creds: Credentials,
    pub policy: Rc<ClientPolicy>,
    pub outgoing: Rc<QueueLoad>,
    pub live: Rc<QueueLoad>,
    pub unix_fds: bool,
    /// Monitor rules, once the peer became a monitor.
    pub monitor: Option<Vec<MatchRule>>,
    /// Most match rules and names it ever had at once (Debug.Stats).
    pub peak_rules: u32,
    pub peak_names: u32,
    pub stamp: u64,
    /// Set while its departure is announced: nothing more is sent to it.
    pub closing: bool,
    /// Joined the fast path.
    pub fast: Option<fastpath::FastMember>,
    /// Frames the daemon took from it on its fast-path inbox.
    pub fast_frames: u64,
}

impl Peer {
    pub fn new(creds: Credentials, policy: Rc<ClientPolicy>, unix_fds: bool) -> Self {
        Peer {
            unique: None,
            creds,
            policy,
            outgoing: Rc::default(),
            live: Rc::default(),
            unix_fds,
            monitor: None,
            peak_rules: 0,
            peak_names: 0,
            stamp: 0,
            closing: false,
            fast: None,
            fast_frames: 0,
        }
    }

    /// Said Hello (monitors too: they stay complete connections).
    pub fn is_active(&self) -> bool {
        self.unique.is_some() || self.monitor.is_some()
    }
}

#[derive(Debug, Default)]
pub(super) struct PeerRegistry {
    peers: IdMap<PeerId, Peer>,
    /// The connection each unique name designates (not a monitor's any more).
    by_unique: HashMap<String, PeerId>,
    next_unique: u64,
    /// Connections that said Hello, in all and per uid.
    active: usize,
    active_per_uid: IdMap<u32, usize>,
}

impl PeerRegistry {
    pub fn insert(&mut self, id: PeerId, peer: Peer) {
        debug_assert!(peer.unique.is_none(), "a new peer has not said Hello");
        self.peers.insert(id, peer);
    }

    /// Hello: gives `id` the next unique name (`:1.0`, `:1.1`, ... as dbus-daemon numbers
    /// them) and counts it as complete. None if `id` is unknown or already has one.
    pub fn register(&mut self, id: PeerId) -> Option<String> {
        let p = self.peers.get_mut(&id).filter(|p| p.unique.is_none())?;
        let (n, unique) = Self::free_name(&self.by_unique, self.next_unique);
        self.next_unique = n + 1;
        p.unique = Some(unique.clone());
        self.by_unique.insert(unique.clone(), id);
        self.active += 1;
        if let Some(uid) = p.creds.uid {
            *self.active_per_uid.entry(uid).or_default() += 1;
        }
        Some(unique)
    }

    /// The name the next [`PeerRegistry::register`] gives (monitors see a Hello call with
    /// it as the sender, as dbus-daemon shows them).
    pub fn next_unique(&self) -> String {
        Self::free_name(&self.by_unique, self.next_unique).1
    }

    /// The first `:1.N` from `from` on that designates nobody, with its N.
    fn free_name(by_unique: &HashMap<String, PeerId>, from: u64) -> (u64, String) {
        (from..)
            .map(|n| (n, format!(":1.{n}")))
            .find(|(_, name)| !by_unique.contains_key(name))
            .expect("an unused unique name")
    }

    /// A connection that became a monitor: its unique name designates nobody any more (it
    /// stays complete, and keeps the name for the log).
    pub fn unname(&mut self, id: PeerId) {
        if let Some(u) = self.peers.get(&id).and_then(|p| p.unique.as_deref()) {
            if self.by_unique.get(u) == Some(&id) {
                self.by_unique.remove(u);
            }
        }
    }

    pub fn remove(&mut self, id: PeerId) -> Option<Peer> {
        let p = self.peers.remove(&id)?;
        if let Some(u) = &p.unique {
            if self.by_unique.get(u) == Some(&id) {
                self.by_unique.remove(u);
            }
            self.active -= 1;
            if let Some(uid) = p.creds.uid {
                if let Some(n) = self.active_per_uid.get_mut(&uid) {
                    *n -= 1;
                    if *n == 0 {
                        self.active_per_uid.remove(&uid);
                    }
                }
            }
        }
        Some(p)
    }

    /// The connection a unique name designates.
    pub fn by_unique(&self, name: &str) -> Option<PeerId> {
        self.by_unique.get(name).copied()
    }

    /// Every unique name that designates a connection.
    pub fn unique_names(&self) -> impl Iterator<Item = &str> {
        self.by_unique.keys().map(String::as_str)
    }

    pub fn unique_name_count(&self) -> usize {
        self.by_unique.len()
    }

    /// Connections that said Hello.
    pub fn active_count(&self) -> usize {
        self.active
    }

    /// Connections of user `uid` that said Hello.
    pub fn active_of_uid(&self, uid: u32) -> usize {
        self.active_per_uid.get(&uid).copied().unwrap_or(0)
    }

    pub fn get(&self, id: &PeerId) -> Option<&Peer> {
        self.peers.get(id)
    }

    pub fn get_mut(&mut self, id: &PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id)
    }

    pub fn contains_key(&self, id: &PeerId) -> bool {
        self.peers.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.peers.iter()
    }
}

impl std::ops::Index<&PeerId> for PeerRegistry {
    type Output = Peer;

    fn index(&self, id: &PeerId) -> &Peer {
        &self.peers[id]
    }
}

impl<'a> IntoIterator for &'a PeerRegistry {
    type Item = (&'a PeerId, &'a Peer);
    type IntoIter = std::collections::hash_map::Iter<'a, PeerId, Peer>;

    fn into_iter(self) -> Self::IntoIter {
        self.peers.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busd_policy::{Accounts, ClientIdentity, CompiledPolicy, Config};

    struct NoAccounts;
    impl Accounts for NoAccounts {
        fn user_id(&self, _: &str) -> Option<u32> {
            None
        }
        fn group_id(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn peer(uid: Option<u32>) -> Peer {
        let config = Config::from_str_at("<busconfig/>", std::path::Path::new("t.conf")).unwrap();
        let policy = CompiledPolicy::compile(&config, &NoAccounts).unwrap();
        let client = policy.client_policy(&ClientIdentity {
            uid,
            groups: Vec::new(),
            at_console: false,
        });
        Peer::new(
            Credentials {
                uid,
                ..Credentials::default()
            },
            Rc::new(client),
            true,
        )
    }

    #[test]
    fn unique_names_are_given_in_order_and_follow_their_connection() {
        let mut r = PeerRegistry::default();
        r.insert(10, peer(Some(1000)));
        r.insert(11, peer(Some(1000)));
        r.insert(12, peer(None));
        assert_eq!(r.next_unique(), ":1.0");
        assert_eq!(r.register(11).as_deref(), Some(":1.0"));
        assert_eq!(r.next_unique(), ":1.1");
        assert_eq!(r.register(10).as_deref(), Some(":1.1"));
        assert_eq!(r.register(10), None, "a second Hello gets no name");
        assert_eq!(r.by_unique(":1.0"), Some(11));
        assert_eq!((r.active_count(), r.active_of_uid(1000)), (2, 2));
        // A monitor's name designates nobody; it still counts as complete.
        r.unname(11);
        assert_eq!(r.by_unique(":1.0"), None);
        assert_eq!(r[&11].unique.as_deref(), Some(":1.0"));
        assert_eq!(r.active_count(), 2);
        r.remove(11);
        r.remove(10);
        assert_eq!((r.active_count(), r.active_of_uid(1000)), (0, 0));
        assert_eq!(r.unique_name_count(), 0);
        // Anonymous connections count in all, not per user.
        assert_eq!(r.register(12).as_deref(), Some(":1.2"));
        assert_eq!((r.active_count(), r.active_of_uid(0)), (1, 0));
        assert_eq!(r.len(), 1);
    }
}
