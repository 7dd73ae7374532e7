//! Figures: what a connection counts ([`Counters`]), how it publishes them in its progress
//! slot for the daemon's `GetConnectionStats` and busd-top, and how [`crate::stats`] finds
//! them again for a zbus connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use busd_match::progress;
use tokio::sync::Notify;

/// What the shim counts (per connection; see [`crate::stats`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// The connection's unique name, once it joined.
    pub unique: OnceLock<String>,
    /// The bus's GUID, from the authentication.
    pub guid: OnceLock<String>,
    /// Frames sent straight to another member (each destination counts).
    pub direct: AtomicU64,
    /// Messages sent to the daemon on the member's inbox.
    pub via_daemon: AtomicU64,
    /// Messages that could not go as frames (no memfd could be made for a large one),
    /// sent on the stream connection instead.
    pub via_stream: AtomicU64,
    /// Messages sent in a sealed memfd (larger than 32 KiB), once however many receivers
    /// they have.
    pub large: AtomicU64,
    /// Frames received from other members and handed to zbus.
    pub received: AtomicU64,
    /// Frames dropped because they lied about their sender.
    pub spoofed: AtomicU64,
    /// Frames dropped because they were not well formed (routing header, message, or a
    /// memfd that is not sealed or not of the announced size).
    pub malformed: AtomicU64,
    /// Broadcasts the kernel filter let through that no rule of this member matches.
    pub filtered: AtomicU64,
    /// Messages for a name this member does not own (any more), given back to their
    /// sender.
    pub returned: AtomicU64,
    /// Messages of this member's that a receiver gave back, resent through the daemon.
    pub resent: AtomicU64,
    /// Direct frames dropped: the policy does not let their sender reach this member
    /// directly.
    pub not_direct: AtomicU64,
    /// Frames that waited in a backlog because their receiver's queue was full.
    pub backlogged: AtomicU64,
    /// Frames a receiver did not get because its backlog was at its bound (signals are
    /// dropped for it, calls answered with LimitsExceeded, as dbus-daemon does with a
    /// reader that does not read).
    pub rejected: AtomicU64,
    /// Frames in backlogs now, over all receivers.
    pub backlog_depth: AtomicU64,
    /// Sends that first waited for a member whose message this one had received to reach
    /// all its receivers (causal order, DESIGN 5.5).
    pub causal_waits: AtomicU64,
    /// Such waits given up after 200 ms: that member's send had not reached a receiver
    /// that long (one that does not read).
    pub causal_timeouts: AtomicU64,
    /// Broadcasts sent directly.
    pub fan_outs: AtomicU64,
    /// Receivers broadcasts did not go to, since their interest summary rules them out
    /// (the kernel filters of those that do get a broadcast drop what their rules cannot
    /// want; the kernel counts none of that).
    pub skipped: AtomicU64,
    /// Bytes of the messages in `direct` (each receiver counts).
    pub direct_bytes: AtomicU64,
    /// Bytes of the messages in `received`.
    pub received_bytes: AtomicU64,
}

impl Counters {
    /// A message of `len` bytes reached `receivers` more members directly.
    pub(crate) fn sent_direct(&self, receivers: u64, len: u64) {
        self.direct.fetch_add(receivers, Ordering::Relaxed);
        self.direct_bytes
            .fetch_add(receivers * len, Ordering::Relaxed);
    }

    /// One more of `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The figures in the order the progress memory holds them
    /// ([`busd_match::progress::FIGURES`]).
    pub fn figures(&self) -> [u64; progress::FIGURES.len()] {
        [
            &self.direct,
            &self.direct_bytes,
            &self.via_daemon,
            &self.via_stream,
            &self.large,
            &self.fan_outs,
            &self.skipped,
            &self.received,
            &self.received_bytes,
            &self.spoofed,
            &self.malformed,
            &self.filtered,
            &self.returned,
            &self.backlogged,
            &self.rejected,
            &self.backlog_depth,
            &self.causal_waits,
            &self.causal_timeouts,
            &self.resent,
            &self.not_direct,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Figures are published at most this often while they change.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// A joined connection's publisher: a task on the connection's runtime, woken when its
/// figures change (the first change after a publication), that publishes them after
/// [`PUBLISH_EVERY`]; an idle connection costs nothing. The task ends with the member
/// ([`Publisher::ended`]).
#[derive(Debug, Default)]
pub struct Publisher {
    dirty: AtomicBool,
    wake: Notify,
}

impl Publisher {
    /// Figures changed: they are published soon.
    pub fn touched(&self) {
        if !self.dirty.load(Ordering::Relaxed) && !self.dirty.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// The member is gone: its task ends.
    pub fn ended(&self) {
        self.wake.notify_one();
    }

    /// Starts the task on the current runtime. `publish` writes the figures of whatever it
    /// upgrades; once it cannot (the member is gone), the task ends.
    pub fn spawn<T: Send + Sync + 'static>(self: &Arc<Self>, of: Weak<T>, publish: fn(&T)) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                this.wake.notified().await;
                tokio::time::sleep(PUBLISH_EVERY).await;
                // Changes from now on wake the task again.
                this.dirty.store(false, Ordering::Release);
                match of.upgrade() {
                    Some(member) => publish(&member),
                    None => return,
                }
            }
        });
        self.touched();
    }
}

/// The counters of every connection this crate built, for [`crate::stats`]: zbus gives no
/// way from a `Connection` back to its socket halves, so they are found by bus GUID and
/// unique name. Process-wide because `stats` may be asked from anywhere; it holds only weak
/// references (a connection that is gone is dropped from it) and serves nothing, so no
/// runtime's end can leave anything behind in it.
fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
}

#[derive(Default)]
struct Registry {
    all: Vec<Weak<Counters>>,
    /// How many were left at the last sweep of those that are gone.
    swept: usize,
}

/// A new connection's counters, found again by [`find`].
pub fn register(counters: &Arc<Counters>) {
    let mut r = registry().lock().unwrap_or_else(PoisonError::into_inner);
    // Connections that are gone are swept out once the list has doubled since the last
    // sweep: a process that opens many connections pays O(1) for each, not O(all).
    if r.all.len() >= 2 * r.swept.max(16) {
        r.all.retain(|c| c.strong_count() > 0);
        r.swept = r.all.len();
    }
    r.all.push(Arc::downgrade(counters));
}

/// The counters of the connection with this bus GUID and unique name.
pub fn find(guid: &str, unique: &str) -> Option<Arc<Counters>> {
    let mut r = registry().lock().unwrap_or_else(PoisonError::into_inner);
    // Connections that are gone no longer count.
    r.all.retain(|c| c.strong_count() > 0);
    r.swept = r.all.len();
    r.all.iter().filter_map(Weak::upgrade).find(|c| {
        c.unique.get().map(String::as_str) == Some(unique)
            && c.guid.get().map(String::as_str) == Some(guid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_found_by_guid_and_unique_name_while_they_live() {
        let a = Arc::new(Counters::default());
        a.guid.set("g".repeat(32)).unwrap();
        a.unique.set(":1.7".into()).unwrap();
        register(&a);
        let guid = "g".repeat(32);
        assert!(find(&guid, ":1.7").is_some_and(|c| Arc::ptr_eq(&c, &a)));
        assert!(find(&guid, ":1.8").is_none());
        assert!(find(&"h".repeat(32), ":1.7").is_none());
        drop(a);
        assert!(find(&guid, ":1.7").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn figures_are_published_once_per_burst_and_the_task_ends_with_its_member() {
        let published = Arc::new(AtomicU64::new(0));
        let member = Arc::new(Arc::clone(&published));
        let p = Arc::new(Publisher::default());
        p.spawn(Arc::downgrade(&member), |m: &Arc<AtomicU64>| {
            m.fetch_add(1, Ordering::Relaxed);
        });
        for _ in 0..100 {
            p.touched();
        }
        tokio::time::sleep(PUBLISH_EVERY * 2).await;
        assert_eq!(
            published.load(Ordering::Relaxed),
            1,
            "one burst, one publication"
        );
        p.touched();
        tokio::time::sleep(PUBLISH_EVERY * 2).await;
        assert_eq!(published.load(Ordering::Relaxed), 2);
        drop(member);
        p.ended();
        tokio::time::sleep(PUBLISH_EVERY * 2).await;
        assert_eq!(
            Arc::strong_count(&p),
            1,
            "the task ended and let go of its publisher"
        );
    }
}
