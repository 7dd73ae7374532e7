//! The member's view of the routing table: the daemon's shared memory, read under its
//! sequence lock, decoded again only when the sequence moved.

use std::sync::Arc;

use busd_match::shm::Mapping;
use busd_match::table::{self, Table};
use tracing::warn;

/// The routing table's memory (mapped read-only).
pub struct TableView {
    map: Mapping,
}

/// The table as last decoded, with the sequence it was read at (0: never read). It lives in
/// the connection's state; decoding happens outside its lock.
#[derive(Debug, Default)]
pub struct Cached {
    pub seq: u64,
    pub table: Arc<Table>,
}

impl Cached {
    /// The cached table, if it is still the daemon's current one.
    pub fn fresh(&self, seq: u64) -> Option<Arc<Table>> {
        (self.seq == seq && seq != 0).then(|| Arc::clone(&self.table))
    }

    /// Keeps a table read at `seq` unless a newer one is already kept; returns the newest.
    pub fn keep(&mut self, seq: u64, table: Arc<Table>) -> Arc<Table> {
        if seq >= self.seq {
            *self = Cached { seq, table };
        }
        Arc::clone(&self.table)
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
