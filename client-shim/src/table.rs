//! The member's view of the routing table: the daemon's shared memory, read under its
//! sequence lock, decoded again only when the sequence moved.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use busd_match::shm::Mapping;
use busd_match::table::{self, Table};
use tracing::warn;

/// The routing table's memory (mapped read-only).
pub struct TableView {
    map: Mapping,
}

/// Where a frame has no queue stamp or the table no shutdown time for its departed sender
/// (`Member::not_long_gone` compares those otherwise): how long after this member first
/// saw another leave it still takes that member's frames. What it sent before it left is
/// already in this member's queue by then, unless this member did not read for that long.
/// After, a process that left (and kept its socket's path, or bound it again) sends
/// nothing more under its old name.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(5);

/// The table as last decoded, with the sequence it was read at (0: never read). It lives in
/// the connection's state; decoding happens outside its lock.
#[derive(Debug, Default)]
pub struct Cached {
    pub seq: u64,
    pub table: Arc<Table>,
    /// Members listed as departed, and when this member first saw them so (None: they
    /// had left before anyone could send to this member directly, so nothing they sent can
    /// be for it).
    departed: HashMap<u32, Option<Instant>>,
}

impl Cached {
    /// The cached table, if it is still the daemon's current one.
    pub fn fresh(&self, seq: u64) -> Option<Arc<Table>> {
        (self.seq == seq && seq != 0).then(|| Arc::clone(&self.table))
    }

    /// Keeps a table read at `seq` by member `me` unless a newer one is already kept;
    /// returns the newest.
    pub fn keep(&mut self, seq: u64, table: Arc<Table>, me: u32) -> Arc<Table> {
        self.keep_at(seq, table, me, Instant::now())
    }

    fn keep_at(&mut self, seq: u64, table: Arc<Table>, me: u32, now: Instant) -> Arc<Table> {
        if seq >= self.seq {
            // Nobody sends to a member directly before it is listed as ready: whoever this
            // table lists as departed while it does not list `me` as ready left before it
            // could send `me` anything, and is never heard. Others are, for a grace.
            let unready = table.member(me).is_none_or(|m| !m.ready);
            let seen = (!unready).then_some(now);
            let before = std::mem::take(&mut self.departed);
            self.departed = table
                .members
                .iter()
                .filter(|m| m.departed)
                .map(|m| (m.id, before.get(&m.id).copied().unwrap_or(seen)))
                .collect();
            self.seq = seq;
            self.table = table;
        }
        Arc::clone(&self.table)
    }

    /// Whether member `id`, listed in the table as departed, left longer ago than
    /// [`DEPARTED_GRACE`] (as this member saw it), or before this member was ready.
    pub fn left_long_ago(&self, id: u32, now: Instant) -> bool {
        self.departed
            .get(&id)
            .is_some_and(|&seen| seen.is_none_or(|seen| now.duration_since(seen) >= DEPARTED_GRACE))
    }

    /// Whether member `id` left before this member was listed as ready: nothing it sent
    /// can be for this member.
    pub fn never_heard(&self, id: u32) -> bool {
        self.departed.get(&id).is_some_and(Option::is_none)
    }
}

/// Whether a frame from a member the table lists as departed is refused. `queued`: when
/// the kernel queued it (`CLOCK_REALTIME` ns, if stamped); `left`: when the daemon had
/// shut the member's socket down (the same clock; 0: not told yet); `slack`: how much
/// later a genuine frame may still have been queued. A member that left before this one
/// was ready is never heard; with both times, the frame is the member's if queued before
/// the shutdown (within the slack); otherwise [`DEPARTED_GRACE`] from when this member
/// first saw the departure decides.
pub fn departed_frame_refused(
    cached: &Cached,
    sender: u32,
    queued: Option<u64>,
    left: u64,
    slack: Duration,
    now: Instant,
) -> bool {
    match queued.filter(|_| left != 0) {
        Some(queued) => {
            cached.never_heard(sender)
                || queued > left.saturating_add(u64::try_from(slack.as_nanos()).unwrap_or(u64::MAX))
        }
        None => cached.left_long_ago(sender, now),
    }
}

impl TableView {
    pub fn new(map: Mapping) -> TableView {
        TableView { map }
    }

    /// The daemon's sequence number now (it moves with every change).
    pub fn sequence(&self) -> u64 {
        table::sequence(self.map.words())
    }

    /// Reads and decodes the table; None when it cannot be read consistently or does not
    /// decode (the caller keeps what it had).
    pub fn read(&self) -> Option<(u64, Table)> {
        let words = self.map.words();
        let mut body = Vec::new();
        for _ in 0..1000 {
            match table::read(words, &mut body) {
                Ok(Some(seq)) => match Table::decode(&body) {
                    Ok(t) => return Some((seq, t)),
                    Err(e) => {
                        warn!("the routing table does not decode: {e}");
                        return None;
                    }
                },
                // The daemon is rewriting it.
                Ok(None) => std::hint::spin_loop(),
                Err(e) => {
                    warn!("the routing table is unreadable: {e}");
                    return None;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(observed: bool) -> Arc<Table> {
        Arc::new(Table {
            observed,
            ..Table::default()
        })
    }

    #[test]
    fn a_cached_table_serves_its_own_sequence_and_never_goes_back() {
        let mut c = Cached::default();
        assert!(c.fresh(0).is_none(), "sequence 0: never published");
        c.keep(4, table(false), 1);
        assert!(c.fresh(4).is_some());
        assert!(c.fresh(6).is_none());
        // A reader that was slower keeps the newer table.
        assert!(c.keep(6, table(true), 1).observed);
        assert!(c.keep(4, table(false), 1).observed);
        assert_eq!(c.seq, 6);
    }

    fn member(id: u32, departed: bool) -> busd_match::table::Member {
        busd_match::table::Member {
            id,
            direct: true,
            slot: 0,
            summary: Default::default(),
            pid: 0,
            ready: true,
            departed,
            left: 0,
        }
    }

    /// This member (id 9), ready or not, and others: 2 and 3, departed as said.
    fn listing(ready: bool, two_left: bool, three_left: bool) -> Arc<Table> {
        let me = busd_match::table::Member {
            ready,
            ..member(9, false)
        };
        Arc::new(Table {
            members: vec![member(2, two_left), member(3, three_left), me],
            ..Table::default()
        })
    }

    /// A member that left is still heard for a while (what it sent before is queued), from
    /// when this member first saw it gone; not after.
    #[test]
    fn a_member_that_left_is_heard_for_a_grace_only() {
        let t0 = Instant::now();
        let mut c = Cached::default();
        c.keep_at(2, listing(true, false, false), 9, t0);
        assert!(
            !c.left_long_ago(2, t0 + 2 * DEPARTED_GRACE),
            "listed, not departed"
        );
        let left = t0 + Duration::from_secs(1);
        c.keep_at(4, listing(true, true, false), 9, left);
        // A later table keeps when it was first seen.
        c.keep_at(6, listing(true, true, false), 9, left + DEPARTED_GRACE / 2);
        assert!(!c.left_long_ago(2, left + DEPARTED_GRACE / 2));
        assert!(c.left_long_ago(2, left + DEPARTED_GRACE));
        assert!(!c.left_long_ago(3, left + 2 * DEPARTED_GRACE));
    }

    /// Whoever left before this member was listed as ready never sent it anything directly
    /// (nobody sends to a member that is not ready), so none of its frames is taken: a
    /// process that kept a departed member's socket must not reach newcomers for
    /// DEPARTED_GRACE. One that leaves once this member is ready gets the grace.
    #[test]
    fn members_gone_before_this_one_was_ready_are_never_heard() {
        let t0 = Instant::now();
        let mut c = Cached::default();
        c.keep_at(2, listing(false, true, false), 9, t0);
        assert!(c.left_long_ago(2, t0), "gone before set-up");
        c.keep_at(4, listing(true, true, true), 9, t0);
        assert!(c.left_long_ago(2, t0), "still unheard");
        assert!(!c.left_long_ago(3, t0 + DEPARTED_GRACE / 2));
        assert!(c.left_long_ago(3, t0 + DEPARTED_GRACE));
        // Not listed at all (a table from before it joined): the same.
        let mut c = Cached::default();
        c.keep_at(2, listing(true, true, false), 7, t0);
        assert!(c.left_long_ago(2, t0));
    }

    /// A departed member's frame: its own if queued before the daemon shut its socket
    /// down (within the slack), however late it is read; never from a member that left
    /// before this one was ready, stamp or not; without a stamp or a time, by the grace.
    #[test]
    fn a_departed_members_frame_is_judged_by_when_it_was_queued() {
        let t0 = Instant::now();
        let slack = Duration::from_millis(100);
        let mut c = Cached::default();
        c.keep_at(2, listing(true, true, false), 9, t0);
        let late = t0 + 10 * DEPARTED_GRACE;
        let refused = |c: &Cached, id, queued, left, now| {
            departed_frame_refused(c, id, queued, left, slack, now)
        };
        assert!(
            !refused(&c, 2, Some(1_000), 2_000, late),
            "queued before, read late"
        );
        assert!(
            !refused(&c, 2, Some(2_000 + 99_000_000), 2_000, t0),
            "within the slack"
        );
        assert!(
            refused(&c, 2, Some(2_000 + 101_000_000), 2_000, t0),
            "queued after"
        );
        assert!(!refused(&c, 2, None, 2_000, t0), "no stamp: the grace");
        assert!(
            refused(&c, 2, None, 2_000, late),
            "no stamp: the grace is over"
        );
        assert!(!refused(&c, 2, Some(5_000), 0, t0), "no time: the grace");
        // A member that left before this one was ready: never, stamp or not.
        let mut c = Cached::default();
        c.keep_at(2, listing(false, true, false), 9, t0);
        assert!(refused(&c, 2, Some(2_000), 2_000, t0));
        assert!(refused(&c, 2, None, 0, t0));
    }

    #[test]
    fn a_published_table_reads_back() {
        let words = table::words_for(4096);
        let (_fd, map) = Mapping::create("table", words * 8, 0).unwrap();
        let t = Table {
            observed: true,
            ..Table::default()
        };
        let mut body = Vec::new();
        t.encode(&mut body);
        table::publish(map.words(), &body).unwrap();
        let view = TableView::new(map);
        let (seq, read) = view.read().unwrap();
        assert_eq!(read, t);
        assert_eq!(seq, view.sequence());
    }
}
