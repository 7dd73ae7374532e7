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

/// How long after this member first saw another leave it still takes that member's
/// frames: what it sent before it left is already in this member's queue by then, unless
/// this member did not read for that long. After, a process that left (and kept its
/// socket's path, or bound it again) sends nothing more under its old name.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(5);

/// The table as last decoded, with the sequence it was read at (0: never read). It lives in
/// the connection's state; decoding happens outside its lock.
#[derive(Debug, Default)]
pub struct Cached {
    pub seq: u64,
    pub table: Arc<Table>,
    /// Members listed as departed, and when this member first saw them so (None: they
    /// had left before this member set up, so nothing they sent can be for it).
    departed: HashMap<u32, Option<Instant>>,
}

impl Cached {
    /// The cached table, if it is still the daemon's current one.
    pub fn fresh(&self, seq: u64) -> Option<Arc<Table>> {
        (self.seq == seq && seq != 0).then(|| Arc::clone(&self.table))
    }

    /// Keeps a table read at `seq` unless a newer one is already kept; returns the newest.
    pub fn keep(&mut self, seq: u64, table: Arc<Table>) -> Arc<Table> {
        self.keep_at(seq, table, Instant::now())
    }

    fn keep_at(&mut self, seq: u64, table: Arc<Table>, now: Instant) -> Arc<Table> {
        self.keep_seen(seq, table, Some(now))
    }

    /// Keeps the table read as this member set up (before it told the bus it is ready):
    /// the members it lists as departed left before anyone could send to this member
    /// directly, so none of their frames is ever taken.
    pub fn set_up_with(&mut self, seq: u64, table: Arc<Table>) {
        self.keep_seen(seq, table, None);
    }

    fn keep_seen(&mut self, seq: u64, table: Arc<Table>, now: Option<Instant>) -> Arc<Table> {
        if seq >= self.seq {
            let before = std::mem::take(&mut self.departed);
            self.departed = table
                .members
                .iter()
                .filter(|m| m.departed)
                .map(|m| (m.id, before.get(&m.id).copied().unwrap_or(now)))
                .collect();
            self.seq = seq;
            self.table = table;
        }
        Arc::clone(&self.table)
    }

    /// Whether member `id`, listed in the table as departed, left longer ago than
    /// [`DEPARTED_GRACE`] (as this member saw it), or before this member set up.
    pub fn left_long_ago(&self, id: u32, now: Instant) -> bool {
        self.departed
            .get(&id)
            .is_some_and(|&seen| seen.is_none_or(|seen| now.duration_since(seen) >= DEPARTED_GRACE))
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
        c.keep(4, table(false));
        assert!(c.fresh(4).is_some());
        assert!(c.fresh(6).is_none());
        // A reader that was slower keeps the newer table.
        assert!(c.keep(6, table(true)).observed);
        assert!(c.keep(4, table(false)).observed);
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
        }
    }

    /// A member that left is still heard for a while (what it sent before is queued), from
    /// when this member first saw it gone; not after.
    #[test]
    fn a_member_that_left_is_heard_for_a_grace_only() {
        let with = |departed: bool| {
            Arc::new(Table {
                members: vec![member(2, departed), member(3, false)],
                ..Table::default()
            })
        };
        let t0 = Instant::now();
        let mut c = Cached::default();
        c.keep_at(2, with(false), t0);
        assert!(
            !c.left_long_ago(2, t0 + 2 * DEPARTED_GRACE),
            "listed, not departed"
        );
        let left = t0 + Duration::from_secs(1);
        c.keep_at(4, with(true), left);
        // A later table keeps when it was first seen.
        c.keep_at(6, with(true), left + DEPARTED_GRACE / 2);
        assert!(!c.left_long_ago(2, left + DEPARTED_GRACE / 2));
        assert!(c.left_long_ago(2, left + DEPARTED_GRACE));
        assert!(!c.left_long_ago(3, left + 2 * DEPARTED_GRACE));
    }

    /// A member that set up after another left never takes that one's frames: nobody
    /// sent to it directly before it was ready, so none of them can be genuine (a process
    /// that kept a departed member's socket must not reach newcomers for DEPARTED_GRACE).
    #[test]
    fn members_gone_before_set_up_are_never_heard() {
        let t0 = Instant::now();
        let mut c = Cached::default();
        c.set_up_with(
            2,
            Arc::new(Table {
                members: vec![member(2, true), member(3, false)],
                ..Table::default()
            }),
        );
        assert!(c.left_long_ago(2, t0), "gone before set-up");
        // One that leaves later gets the grace, and the earlier one stays unheard.
        c.keep_at(
            4,
            Arc::new(Table {
                members: vec![member(2, true), member(3, true)],
                ..Table::default()
            }),
            t0,
        );
        assert!(c.left_long_ago(2, t0));
        assert!(!c.left_long_ago(3, t0 + DEPARTED_GRACE / 2));
        assert!(c.left_long_ago(3, t0 + DEPARTED_GRACE));
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
