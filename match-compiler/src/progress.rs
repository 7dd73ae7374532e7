//! Causal order on the fast path (DESIGN 5.5): every member publishes how far its sends
//! have got, so that a member that received something from it can wait, before it sends
//! anything itself, until that send has reached every receiver.
//!
//! A send to several receivers is not atomic: a receiver woken by the first datagram of a
//! broadcast can react before the sender has reached the others, or while the sender keeps
//! the frame for a full receiver in its backlog. So each member counts its sends in a slot
//! of shared memory: `started` before a send's first datagram, and `completed`, the
//! highest number below which every send has reached every receiver's queue. A member that
//! receives a frame from M notes M's `started`; before it sends, it waits until M's
//! `completed` has reached that number. Then whatever it sends is queued behind M's frame
//! at every common receiver.
//!
//! The daemon creates the memory (a memfd sealed against shrinking and growing, so nobody
//! can make another member's mapping fault), gives each member a slot when it joins and
//! writes the slot's owner; members write only the counters of their own slot. The layout
//! is in `docs/fastpath-protocol.md`.

use std::sync::atomic::{AtomicU64, Ordering};

pub const MAGIC: u32 = 0x4255_5350; // "BUSP"
pub const VERSION: u32 = 1;
/// Bytes before the first slot.
pub const PREFIX_LEN: usize = 64;
/// Bytes per slot: the counters in the first cache line (so that members do not slow each
/// other's writes), the member's figures in the next ones.
pub const SLOT_LEN: usize = 256;
const SLOT_WORDS: usize = SLOT_LEN / 8;
/// The slot of a member without one (the memory was full): nobody waits for it.
pub const NO_SLOT: u32 = u32::MAX;

const OWNER: usize = 0;
const STARTED: usize = 1;
const COMPLETED: usize = 2;
/// The first word of the figures.
const FIGURES_AT: usize = 8;

/// What a member's shim counts and publishes in its slot, for the daemon's
/// `GetConnectionStats` (as `busd.FastPath.<name>`) and busd-top, in this order.
pub const FIGURES: [&str; 20] = [
    // Messages sent straight to other members (each receiver counts).
    "SentDirect",
    // Their bytes.
    "SentDirectBytes",
    // Messages sent to the daemon on the member's inbox.
    "SentViaDaemon",
    // Messages that took the stream connection (no memfd could be made).
    "SentViaStream",
    // Messages sent in a sealed memfd.
    "SentInMemfd",
    // Broadcasts sent directly.
    "FanOuts",
    // Receivers a broadcast did not go to because their interest summary rules it out.
    "ReceiversSkipped",
    // Messages received from other members and handed to the application.
    "Received",
    // Their bytes.
    "ReceivedBytes",
    // Frames dropped: their sender lied about who it is.
    "DroppedSpoofed",
    // Frames dropped: not well formed.
    "DroppedMalformed",
    // Broadcasts the kernel filter let through that no rule of the member matches.
    "DroppedUnwanted",
    // Messages for a name the member does not own (any more), given back to their sender.
    "Returned",
    // Frames that waited in a backlog for a full receiver.
    "Backlogged",
    // Frames a receiver did not get: its backlog was at its bound.
    "RejectedFullQueue",
    // Frames in backlogs now.
    "BacklogDepth",
    // Sends that waited for an earlier send they may depend on (causal order).
    "CausalWaits",
    // Such waits given up after their bound.
    "CausalTimeouts",
    // Messages of the member's that a receiver gave back, resent through the daemon.
    "Resent",
    // Direct frames dropped: the policy does not let their sender reach the member directly.
    "DroppedNotDirect",
];
const _: () = assert!(FIGURES_AT + FIGURES.len() <= SLOT_WORDS);

/// The memory's size in words for `slots` slots.
pub fn words_for(slots: u32) -> usize {
    (PREFIX_LEN + slots as usize * SLOT_LEN) / 8
}

/// Writes the prefix (the daemon, once).
pub fn init(shm: &[AtomicU64]) {
    shm[0].store(
        u64::from(VERSION) << 32 | u64::from(MAGIC),
        Ordering::Relaxed,
    );
    shm[1].store(slots_in(shm) as u64, Ordering::Release);
}

/// How many slots memory of this size holds.
pub fn slots_in(shm: &[AtomicU64]) -> u32 {
    ((shm.len() * 8).saturating_sub(PREFIX_LEN) / SLOT_LEN).min(NO_SLOT as usize) as u32
}

/// Whether `shm` starts with the prefix [`init`] writes.
pub fn valid(shm: &[AtomicU64]) -> bool {
    shm.len() >= PREFIX_LEN / 8
        && shm[0].load(Ordering::Acquire) == u64::from(VERSION) << 32 | u64::from(MAGIC)
}

fn word(shm: &[AtomicU64], slot: u32, w: usize) -> Option<&AtomicU64> {
    shm.get(PREFIX_LEN / 8 + slot as usize * SLOT_WORDS + w)
}

/// Gives `slot` to `member`, its counters at zero (the daemon, before it hands the slot
/// out), or frees it (`member` 0).
pub fn assign(shm: &[AtomicU64], slot: u32, member: u32) {
    if let (Some(owner), Some(started), Some(completed)) = (
        word(shm, slot, OWNER),
        word(shm, slot, STARTED),
        word(shm, slot, COMPLETED),
    ) {
        owner.store(0, Ordering::Release);
        started.store(0, Ordering::Relaxed);
        completed.store(0, Ordering::Relaxed);
        publish_figures(shm, slot, &[0; FIGURES.len()]);
        owner.store(u64::from(member), Ordering::Release);
    }
}

/// A member's view of a slot: its own, to publish, or another's, to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub started: u64,
    pub completed: u64,
}

/// Publishes that send number `n` starts (before its first datagram leaves).
pub fn start(shm: &[AtomicU64], slot: u32, n: u64) {
    if let Some(w) = word(shm, slot, STARTED) {
        w.store(n, Ordering::SeqCst);
    }
}

/// Publishes that every send up to `n` has reached all its receivers.
pub fn complete(shm: &[AtomicU64], slot: u32, n: u64) {
    if let Some(w) = word(shm, slot, COMPLETED) {
        w.store(n, Ordering::Release);
    }
}

/// Publishes a member's figures (in [`FIGURES`] order) in its slot.
pub fn publish_figures(shm: &[AtomicU64], slot: u32, values: &[u64; FIGURES.len()]) {
    for (i, v) in values.iter().enumerate() {
        if let Some(w) = word(shm, slot, FIGURES_AT + i) {
            w.store(*v, Ordering::Relaxed);
        }
    }
}

/// The figures `member` last published, if `slot` is still `member`'s.
pub fn figures(shm: &[AtomicU64], slot: u32, member: u32) -> Option<[u64; FIGURES.len()]> {
    let owner = word(shm, slot, OWNER)?;
    if owner.load(Ordering::Acquire) != u64::from(member) {
        return None;
    }
    let mut values = [0; FIGURES.len()];
    for (i, v) in values.iter_mut().enumerate() {
        *v = word(shm, slot, FIGURES_AT + i)?.load(Ordering::Relaxed);
    }
    (owner.load(Ordering::Acquire) == u64::from(member)).then_some(values)
}

/// `member`'s counters, if `slot` is still `member`'s (a slot is reused after its member
/// leaves; a member that left has nothing more to complete).
pub fn read(shm: &[AtomicU64], slot: u32, member: u32) -> Option<Counts> {
    let owner = word(shm, slot, OWNER)?;
    if owner.load(Ordering::Acquire) != u64::from(member) {
        return None;
    }
    let counts = Counts {
        started: word(shm, slot, STARTED)?.load(Ordering::SeqCst),
        completed: word(shm, slot, COMPLETED)?.load(Ordering::Acquire),
    };
    // Still the same member's (it was not reassigned while we read).
    (owner.load(Ordering::Acquire) == u64::from(member)).then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shm(slots: u32) -> Vec<AtomicU64> {
        (0..words_for(slots)).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn counters_belong_to_the_slot_owner() {
        let m = shm(4);
        init(&m);
        assert!(valid(&m));
        assert_eq!(slots_in(&m), 4);
        assign(&m, 2, 17);
        start(&m, 2, 5);
        complete(&m, 2, 4);
        assert_eq!(
            read(&m, 2, 17),
            Some(Counts {
                started: 5,
                completed: 4
            })
        );
        assert_eq!(read(&m, 2, 18), None, "another member's slot");
        let mut values = [0; FIGURES.len()];
        values[3] = 9;
        values[FIGURES.len() - 1] = 1;
        publish_figures(&m, 2, &values);
        assert_eq!(figures(&m, 2, 17), Some(values));
        assert_eq!(figures(&m, 2, 18), None);
        assign(&m, 2, 18);
        assert_eq!(
            read(&m, 2, 18),
            Some(Counts {
                started: 0,
                completed: 0
            }),
            "a reused slot starts from zero"
        );
        assert_eq!(read(&m, 2, 17), None, "the old member left");
        assert_eq!(figures(&m, 2, 18), Some([0; FIGURES.len()]));
        assign(&m, 2, 0);
        assert_eq!(read(&m, 2, 18), None);
    }

    #[test]
    fn slots_outside_the_memory_are_nobody_s() {
        let m = shm(1);
        init(&m);
        assign(&m, 1, 5);
        start(&m, 1, 1);
        assert_eq!(read(&m, 1, 5), None);
        assert_eq!(read(&m, NO_SLOT, 5), None);
        assert!(!valid(&shm(0)[..0]));
    }
}
