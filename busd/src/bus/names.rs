//! The name registry: well-known names, their owner queues and RequestName/ReleaseName with
//! dbus-daemon's semantics (bus/services.c). Returns change records; the caller emits signals.
//! It is the one record of who holds which name: the names a connection owns or queues
//! for are asked of it ([`NameRegistry::held_by`]), never kept beside it.

use std::collections::{HashMap, VecDeque};

use super::{IdMap, PeerId};

pub const NAME_FLAG_ALLOW_REPLACEMENT: u32 = 0x1;
pub const NAME_FLAG_REPLACE_EXISTING: u32 = 0x2;
pub const NAME_FLAG_DO_NOT_QUEUE: u32 = 0x4;

pub const REQUEST_PRIMARY_OWNER: u32 = 1;
pub const REQUEST_IN_QUEUE: u32 = 2;
pub const REQUEST_EXISTS: u32 = 3;
pub const REQUEST_ALREADY_OWNER: u32 = 4;

pub const RELEASE_RELEASED: u32 = 1;
pub const RELEASE_NON_EXISTENT: u32 = 2;
pub const RELEASE_NOT_OWNER: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    peer: PeerId,
    flags: u32,
}

/// A change to announce, in the order dbus-daemon announces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameEvent {
    /// `NameLost` to `peer`.
    Lost { peer: PeerId, name: String },
    /// `NameAcquired` to `peer`.
    Acquired { peer: PeerId, name: String },
    /// `NameOwnerChanged` broadcast.
    OwnerChanged {
        name: String,
        old: Option<PeerId>,
        new: Option<PeerId>,
    },
}

#[derive(Debug, Default)]
pub struct NameRegistry {
    names: HashMap<String, VecDeque<Owner>>,
    /// Per connection, the names it owns or is queued for, in the order it entered each
    /// queue (its disconnection releases them in that order, as dbus-daemon does).
    held: IdMap<PeerId, Vec<String>>,
}

/// `peer` entered `name`'s queue.
fn joined(held: &mut IdMap<PeerId, Vec<String>>, peer: PeerId, name: &str) {
    let names = held.entry(peer).or_default();
    if !names.iter().any(|n| n == name) {
        names.push(name.to_string());
    }
}

/// `peer` left `name`'s queue.
fn left(held: &mut IdMap<PeerId, Vec<String>>, peer: PeerId, name: &str) {
    if let Some(names) = held.get_mut(&peer) {
        names.retain(|n| n != name);
        if names.is_empty() {
            held.remove(&peer);
        }
    }
}

impl NameRegistry {
    pub fn primary_owner(&self, name: &str) -> Option<PeerId> {
        self.names.get(name).and_then(|q| q.front()).map(|o| o.peer)
    }

    /// Owners in queue order, primary first.
    pub fn queue(&self, name: &str) -> Option<impl Iterator<Item = PeerId> + '_> {
        self.names.get(name).map(|q| q.iter().map(|o| o.peer))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The names `peer` owns or is queued for, in the order it entered their queues.
    pub fn held_by(&self, peer: PeerId) -> &[String] {
        self.held.get(&peer).map_or(&[], Vec::as_slice)
    }

    pub fn is_in_queue(&self, name: &str, peer: PeerId) -> bool {
        self.names
            .get(name)
            .is_some_and(|q| q.iter().any(|o| o.peer == peer))
    }

    /// RequestName for a name already validated. Returns the reply code; `events` receives the
    /// announcements. `newly_queued` tells the caller the peer now holds a new queue entry.
    pub fn request(
        &mut self,
        name: &str,
        peer: PeerId,
        flags: u32,
        events: &mut Vec<NameEvent>,
    ) -> u32 {
        let Some(queue) = self.names.get_mut(name) else {
            self.names
                .insert(name.to_string(), VecDeque::from([Owner { peer, flags }]));
            joined(&mut self.held, peer, name);
            events.push(NameEvent::OwnerChanged {
                name: name.to_string(),
                old: None,
                new: Some(peer),
            });
            events.push(NameEvent::Acquired {
                peer,
                name: name.to_string(),
            });
            return REQUEST_PRIMARY_OWNER;
        };
        let primary = queue[0];
        if primary.peer == peer {
            queue[0].flags = flags;
            return REQUEST_ALREADY_OWNER;
        }
        let allow_replacement = primary.flags & NAME_FLAG_ALLOW_REPLACEMENT != 0;
        let do_not_queue = flags & NAME_FLAG_DO_NOT_QUEUE != 0;
        let replace = flags & NAME_FLAG_REPLACE_EXISTING != 0;
        if do_not_queue && (!allow_replacement || !replace) {
            // It cannot be queued, so it leaves the queue if it was in it.
            queue.retain(|o| o.peer != peer);
            left(&mut self.held, peer, name);
            return REQUEST_EXISTS;
        }
        if !do_not_queue && (!replace || !allow_replacement) {
            match queue.iter_mut().find(|o| o.peer == peer) {
                Some(o) => o.flags = flags,
                None => {
                    queue.push_back(Owner { peer, flags });
                    joined(&mut self.held, peer, name);
                }
            }
            return REQUEST_IN_QUEUE;
        }
        // Replace the primary owner: the new owner goes right after it, then the old one is
        // removed (if it asked not to be queued) or moved to second place.
        queue.retain(|o| o.peer != peer);
        queue.insert(1, Owner { peer, flags });
        joined(&mut self.held, peer, name);
        let old = queue.remove(0).expect("queue has a primary owner");
        if old.flags & NAME_FLAG_DO_NOT_QUEUE == 0 {
            queue.insert(1, old);
        } else {
            left(&mut self.held, old.peer, name);
        }
        events.push(NameEvent::Lost {
            peer: old.peer,
            name: name.to_string(),
        });
        events.push(NameEvent::OwnerChanged {
            name: name.to_string(),
            old: Some(old.peer),
            new: Some(peer),
        });
        events.push(NameEvent::Acquired {
            peer,
            name: name.to_string(),
        });
        REQUEST_PRIMARY_OWNER
    }

    /// ReleaseName (also used when a peer disconnects or becomes a monitor).
    pub fn release(&mut self, name: &str, peer: PeerId, events: &mut Vec<NameEvent>) -> u32 {
        let Some(queue) = self.names.get_mut(name) else {
            return RELEASE_NON_EXISTENT;
        };
        let Some(pos) = queue.iter().position(|o| o.peer == peer) else {
            return RELEASE_NOT_OWNER;
        };
        queue.remove(pos);
        left(&mut self.held, peer, name);
        if pos == 0 {
            events.push(NameEvent::Lost {
                peer,
                name: name.to_string(),
            });
            let new = queue.front().map(|o| o.peer);
            events.push(NameEvent::OwnerChanged {
                name: name.to_string(),
                old: Some(peer),
                new,
            });
            if let Some(new) = new {
                events.push(NameEvent::Acquired {
                    peer: new,
                    name: name.to_string(),
                });
            }
        }
        if queue.is_empty() {
            self.names.remove(name);
        }
        RELEASE_RELEASED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = 1;
    const B: PeerId = 2;
    const C: PeerId = 3;

    fn req(r: &mut NameRegistry, peer: PeerId, flags: u32) -> (u32, Vec<NameEvent>) {
        let mut ev = Vec::new();
        let code = r.request("org.x", peer, flags, &mut ev);
        (code, ev)
    }

    fn changed(old: Option<PeerId>, new: Option<PeerId>) -> NameEvent {
        NameEvent::OwnerChanged {
            name: "org.x".into(),
            old,
            new,
        }
    }

    #[test]
    fn first_request_owns_and_announces_in_order() {
        let mut r = NameRegistry::default();
        let (code, ev) = req(&mut r, A, 0);
        assert_eq!(code, REQUEST_PRIMARY_OWNER);
        assert_eq!(
            ev,
            vec![
                changed(None, Some(A)),
                NameEvent::Acquired {
                    peer: A,
                    name: "org.x".into()
                }
            ]
        );
        assert_eq!(req(&mut r, A, 0).0, REQUEST_ALREADY_OWNER);
    }

    #[test]
    fn queueing_and_handover_on_release() {
        let mut r = NameRegistry::default();
        req(&mut r, A, 0);
        assert_eq!(req(&mut r, B, 0).0, REQUEST_IN_QUEUE);
        assert_eq!(req(&mut r, C, NAME_FLAG_DO_NOT_QUEUE).0, REQUEST_EXISTS);
        assert_eq!(r.queue("org.x").unwrap().collect::<Vec<_>>(), vec![A, B]);
        let mut ev = Vec::new();
        assert_eq!(r.release("org.x", A, &mut ev), RELEASE_RELEASED);
        assert_eq!(
            ev,
            vec![
                NameEvent::Lost {
                    peer: A,
                    name: "org.x".into()
                },
                changed(Some(A), Some(B)),
                NameEvent::Acquired {
                    peer: B,
                    name: "org.x".into()
                },
            ]
        );
        assert_eq!(r.release("org.x", A, &mut ev), RELEASE_NOT_OWNER);
        assert_eq!(r.release("org.y", A, &mut ev), RELEASE_NON_EXISTENT);
    }

    #[test]
    fn replacement_needs_both_flags() {
        let mut r = NameRegistry::default();
        req(&mut r, A, 0);
        // REPLACE_EXISTING without ALLOW_REPLACEMENT on the owner: queued.
        assert_eq!(
            req(&mut r, B, NAME_FLAG_REPLACE_EXISTING).0,
            REQUEST_IN_QUEUE
        );
        // The owner allows replacement now.
        assert_eq!(
            req(&mut r, A, NAME_FLAG_ALLOW_REPLACEMENT).0,
            REQUEST_ALREADY_OWNER
        );
        let (code, ev) = req(&mut r, C, NAME_FLAG_REPLACE_EXISTING);
        assert_eq!(code, REQUEST_PRIMARY_OWNER);
        assert_eq!(
            ev,
            vec![
                NameEvent::Lost {
                    peer: A,
                    name: "org.x".into()
                },
                changed(Some(A), Some(C)),
                NameEvent::Acquired {
                    peer: C,
                    name: "org.x".into()
                },
            ]
        );
        // The old owner stays queued right behind the new one.
        assert_eq!(r.queue("org.x").unwrap().collect::<Vec<_>>(), vec![C, A, B]);
    }

    #[test]
    fn replaced_owner_that_asked_not_to_queue_is_dropped() {
        let mut r = NameRegistry::default();
        req(
            &mut r,
            A,
            NAME_FLAG_ALLOW_REPLACEMENT | NAME_FLAG_DO_NOT_QUEUE,
        );
        assert_eq!(
            req(
                &mut r,
                B,
                NAME_FLAG_REPLACE_EXISTING | NAME_FLAG_DO_NOT_QUEUE
            )
            .0,
            REQUEST_PRIMARY_OWNER
        );
        assert_eq!(r.queue("org.x").unwrap().collect::<Vec<_>>(), vec![B]);
    }

    #[test]
    fn do_not_queue_removes_an_existing_queue_entry() {
        let mut r = NameRegistry::default();
        req(&mut r, A, 0);
        req(&mut r, B, 0);
        assert_eq!(req(&mut r, B, NAME_FLAG_DO_NOT_QUEUE).0, REQUEST_EXISTS);
        assert!(!r.is_in_queue("org.x", B));
    }

    #[test]
    fn what_each_connection_holds_follows_every_queue_change() {
        let mut r = NameRegistry::default();
        let mut ev = Vec::new();
        r.request("org.y", A, NAME_FLAG_ALLOW_REPLACEMENT, &mut ev);
        req(&mut r, A, NAME_FLAG_ALLOW_REPLACEMENT);
        assert_eq!(r.held_by(A), ["org.y", "org.x"]);
        // Queued, then replacing: B holds the name either way.
        req(&mut r, B, 0);
        assert_eq!(r.held_by(B), ["org.x"]);
        req(&mut r, B, NAME_FLAG_REPLACE_EXISTING);
        assert_eq!(r.held_by(B), ["org.x"]);
        // The replaced owner stays queued (it did not ask not to be).
        assert_eq!(r.held_by(A), ["org.y", "org.x"]);
        // DO_NOT_QUEUE takes A out of the queue it was in.
        assert_eq!(req(&mut r, A, NAME_FLAG_DO_NOT_QUEUE).0, REQUEST_EXISTS);
        assert_eq!(r.held_by(A), ["org.y"]);
        // An owner replaced after asking not to be queued holds it no more.
        r.request(
            "org.y",
            A,
            NAME_FLAG_ALLOW_REPLACEMENT | NAME_FLAG_DO_NOT_QUEUE,
            &mut ev,
        );
        r.request("org.y", C, NAME_FLAG_REPLACE_EXISTING, &mut ev);
        assert!(r.held_by(A).is_empty());
        assert_eq!(r.held_by(C), ["org.y"]);
        r.release("org.x", B, &mut ev);
        r.release("org.y", C, &mut ev);
        assert!(r.held_by(B).is_empty() && r.held_by(C).is_empty());
        assert!(r.held.is_empty());
    }

    #[test]
    fn last_release_removes_the_name() {
        let mut r = NameRegistry::default();
        req(&mut r, A, 0);
        let mut ev = Vec::new();
        r.release("org.x", A, &mut ev);
        assert_eq!(ev[1], changed(Some(A), None));
        assert!(r.primary_owner("org.x").is_none());
        assert_eq!(r.names().count(), 0);
    }
}
