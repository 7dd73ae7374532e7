//! The fast path's routing table (DESIGN 5.1, 5.3): what a member needs to send without the
//! daemon — the members, their interest summaries, which of them may exchange messages
//! directly, and which member owns each well-known name.
//!
//! The daemon publishes it in shared memory (a sealed memfd every member maps read-only)
//! with a sequence lock: the writer makes the sequence odd, rewrites the body, makes it even
//! again; a reader copies the body and keeps the copy only if the sequence was the same even
//! number before and after. Both sides work on the memory as a slice of `AtomicU64`, so the
//! concurrent access is defined behaviour. The layout is in `docs/fastpath-protocol.md`.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::summary::Summary;

pub const MAGIC: u32 = 0x4255_5352; // "BUSR"
/// The layout of the table, and of the set-up around it: a shim that finds another
/// version stays on the stream. (5: Join passes the inbox as a socket pair.)
pub const VERSION: u32 = 6;
/// Bytes before the body: magic, version, sequence, body length, then reserved words.
pub const PREFIX_LEN: usize = 64;
const WORD_SEQ: usize = 1;
const WORD_LEN: usize = 2;

const TABLE_OBSERVED: u32 = 1;
const TABLE_CALLS_MEDIATED: u32 = 2;
const MEMBER_DIRECT: u32 = 1;
const MEMBER_EVERYTHING: u32 = 2;
const MEMBER_DEPARTED: u32 = 4;
const MEMBER_READY: u32 = 8;
/// A listed member's record; a departed one's is [`DEPARTED_LEN`] (id, flags, pid: its
/// slot and summary are nobody's concern any more, and up to 256 of them are listed).
const MEMBER_LEN: usize = 48;
const DEPARTED_LEN: usize = 12;

/// One member as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    /// The policy lets it exchange messages with other direct members without the daemon.
    pub direct: bool,
    /// Its slot in the progress memory ([`crate::progress`]; [`crate::progress::NO_SLOT`]
    /// for none).
    pub slot: u32,
    /// Its interest summary (only `everything` and `bits` travel; `keys` stay empty).
    pub summary: Summary,
    /// The process that joined as this member, as the daemon saw it (its pid namespace,
    /// [`Table::pid_namespace`]); 0 when unknown. A receiver takes a direct frame only
    /// from that process (DESIGN 5.8).
    pub pid: u32,
    /// It set up what Join gave it: until then nobody sends to it directly (it may send
    /// directly itself).
    pub ready: bool,
    /// It left: nobody sends to it any more, but what it sent before still counts as its
    /// own (the table keeps the last departures for that).
    pub departed: bool,
}

impl Member {
    /// Whether a member may send to it directly now.
    pub fn reachable(&self) -> bool {
        self.direct && self.ready && !self.departed
    }
}

/// A decoded table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Someone watches traffic between others (a monitor or an eavesdropping rule): a copy
    /// of every direct unicast goes to the daemon too.
    pub observed: bool,
    /// The bus times out calls that wait for a reply (`reply_timeout`): members send every
    /// method call that expects one through the daemon, which keeps the time.
    pub calls_mediated: bool,
    /// Sorted by id; member 0 (the daemon) first.
    pub members: Vec<Member>,
    /// Well-known names owned by members, sorted by name.
    pub names: Vec<(String, u32)>,
    /// The bus's `max_message_size`: no member takes a larger message (0: no limit told).
    pub max_message: u32,
    /// The bus's `max_message_unix_fds`: no member takes a message with more descriptors
    /// (0: none; the daemon always tells).
    pub max_fds: u32,
    /// The daemon's pid namespace (the inode of its `/proc/self/ns/pid`): members' pids are
    /// as seen from there (0: unknown).
    pub pid_namespace: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the routing table is truncated")]
    Truncated,
    #[error("the routing table has an invalid name")]
    BadName,
    #[error("not a busd routing table (magic or version)")]
    BadMagic,
    #[error("the routing table does not fit its shared memory")]
    TooLarge,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let (lo, hi) = (self.u32()?, self.u32()?);
        Ok(u64::from(hi) << 32 | u64::from(lo))
    }
}

impl Table {
    /// The member with this id.
    pub fn member(&self, id: u32) -> Option<&Member> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// The member owning a well-known name.
    pub fn owner(&self, name: &str) -> Option<u32> {
        self.names
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.names[i].1)
    }

    /// The body as it is published (little-endian words).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut flags = 0;
        if self.observed {
            flags |= TABLE_OBSERVED;
        }
        if self.calls_mediated {
            flags |= TABLE_CALLS_MEDIATED;
        }
        put_u32(out, flags);
        put_u32(out, self.max_message);
        put_u32(out, self.max_fds);
        out.extend_from_slice(&self.pid_namespace.to_le_bytes());
        put_u32(out, self.members.len() as u32);
        out.reserve(self.members.len() * MEMBER_LEN);
        for m in &self.members {
            put_u32(out, m.id);
            let mut flags = 0;
            if m.direct {
                flags |= MEMBER_DIRECT;
            }
            if m.summary.everything {
                flags |= MEMBER_EVERYTHING;
            }
            if m.departed {
                flags |= MEMBER_DEPARTED;
            }
            if m.ready {
                flags |= MEMBER_READY;
            }
            put_u32(out, flags);
            if m.departed {
                put_u32(out, m.pid);
                continue;
            }
            put_u32(out, m.slot);
            put_u32(out, m.pid);
            for w in m.summary.bits {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        put_u32(out, self.names.len() as u32);
        for (name, id) in &self.names {
            put_u32(out, *id);
            put_u32(out, name.len() as u32);
            out.extend_from_slice(name.as_bytes());
            out.resize(out.len().next_multiple_of(4), 0);
        }
    }

    pub fn decode(body: &[u8]) -> Result<Table, Error> {
        let mut c = Cursor { b: body, pos: 0 };
        let flags = c.u32()?;
        let observed = flags & TABLE_OBSERVED != 0;
        let calls_mediated = flags & TABLE_CALLS_MEDIATED != 0;
        let max_message = c.u32()?;
        let max_fds = c.u32()?;
        let pid_namespace = c.u64()?;
        let n = c.u32()? as usize;
        if n > body.len() / DEPARTED_LEN {
            return Err(Error::Truncated);
        }
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let id = c.u32()?;
            let flags = c.u32()?;
            let departed = flags & MEMBER_DEPARTED != 0;
            let (slot, pid) = if departed {
                (crate::progress::NO_SLOT, c.u32()?)
            } else {
                (c.u32()?, c.u32()?)
            };
            let mut bits = [0u64; 4];
            if !departed {
                for w in &mut bits {
                    *w = c.u64()?;
                }
            }
            members.push(Member {
                id,
                direct: flags & MEMBER_DIRECT != 0,
                slot,
                summary: Summary {
                    everything: !departed && flags & MEMBER_EVERYTHING != 0,
                    keys: Vec::new(),
                    bits,
                },
                pid,
                ready: flags & MEMBER_READY != 0,
                departed,
            });
        }
        let n = c.u32()? as usize;
        if n > body.len() / 8 {
            return Err(Error::Truncated);
        }
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            let id = c.u32()?;
            let len = c.u32()? as usize;
            let bytes = c.take(len)?;
            c.take(len.next_multiple_of(4) - len)?;
            let name = std::str::from_utf8(bytes).map_err(|_| Error::BadName)?;
            names.push((name.to_string(), id));
        }
        // Lookups binary-search: a table that is not sorted is not trusted.
        if !members.windows(2).all(|w| w[0].id < w[1].id)
            || !names.windows(2).all(|w| w[0].0 < w[1].0)
        {
            return Err(Error::BadName);
        }
        Ok(Table {
            observed,
            calls_mediated,
            members,
            names,
            max_message,
            max_fds,
            pid_namespace,
        })
    }
}

/// The shared memory's size in words for `capacity` body bytes.
pub fn words_for(capacity: usize) -> usize {
    (PREFIX_LEN + capacity).div_ceil(8)
}

fn load_bytes(shm: &[AtomicU64], from: usize, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let first = from / 8;
    out.reserve(len.div_ceil(8) * 8);
    for w in &shm[first..first + len.div_ceil(8)] {
        out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    out.truncate(len);
}

/// Writes a new body (the writer is the only one; readers may be reading meanwhile).
pub fn publish(shm: &[AtomicU64], body: &[u8]) -> Result<(), Error> {
    if PREFIX_LEN + body.len() > shm.len() * 8 {
        return Err(Error::TooLarge);
    }
    let seq = shm[WORD_SEQ].load(Ordering::Relaxed);
    shm[WORD_SEQ].store(seq | 1, Ordering::Relaxed);
    fence(Ordering::Release);
    shm[0].store(
        u64::from(VERSION) << 32 | u64::from(MAGIC),
        Ordering::Relaxed,
    );
    shm[WORD_LEN].store(body.len() as u64, Ordering::Relaxed);
    // (Whole words without a copy through a buffer: a copy of variable length per word
    // was a library call per 8 bytes, the bulk of a publication's cost.)
    let words = &shm[PREFIX_LEN / 8..];
    let mut chunks = body.chunks_exact(8);
    for (w, chunk) in words.iter().zip(chunks.by_ref()) {
        let chunk: [u8; 8] = chunk.try_into().expect("chunks of 8");
        w.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        words[body.len() / 8].store(u64::from_le_bytes(last), Ordering::Relaxed);
    }
    fence(Ordering::Release);
    shm[WORD_SEQ].store((seq | 1) + 1, Ordering::Release);
    Ok(())
}

/// The current sequence number (even when stable).
pub fn sequence(shm: &[AtomicU64]) -> u64 {
    shm[WORD_SEQ].load(Ordering::Acquire)
}

/// Copies a consistent body into `out` and returns its sequence number, or None while the
/// writer is busy (try again) — or an error if the memory is not a routing table.
pub fn read(shm: &[AtomicU64], out: &mut Vec<u8>) -> Result<Option<u64>, Error> {
    let before = shm[WORD_SEQ].load(Ordering::Acquire);
    if before & 1 != 0 {
        return Ok(None);
    }
    let head = shm[0].load(Ordering::Relaxed);
    let len = shm[WORD_LEN].load(Ordering::Relaxed) as usize;
    if head != u64::from(VERSION) << 32 | u64::from(MAGIC) {
        // A table not yet published at all reads as empty words.
        return if head == 0 && before == 0 {
            Ok(None)
        } else {
            Err(Error::BadMagic)
        };
    }
    if PREFIX_LEN + len > shm.len() * 8 {
        return Err(Error::TooLarge);
    }
    load_bytes(shm, PREFIX_LEN, len, out);
    fence(Ordering::Acquire);
    let after = shm[WORD_SEQ].load(Ordering::Relaxed);
    Ok((after == before).then_some(before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::MatchRule;
    use proptest::prelude::*;

    fn sample() -> Table {
        let rules = [MatchRule::parse("type='signal',member='Changed'").unwrap()];
        Table {
            observed: true,
            calls_mediated: true,
            members: vec![
                Member {
                    id: 0,
                    direct: true,
                    slot: crate::progress::NO_SLOT,
                    summary: Summary {
                        everything: true,
                        ..Summary::default()
                    },
                    pid: 0,
                    ready: true,
                    departed: false,
                },
                Member {
                    id: 7,
                    direct: false,
                    slot: 3,
                    summary: Summary {
                        keys: Vec::new(),
                        ..Summary::of(&rules)
                    },
                    pid: 4242,
                    ready: false,
                    departed: false,
                },
                Member {
                    id: 8,
                    direct: true,
                    slot: crate::progress::NO_SLOT,
                    summary: Summary::default(),
                    pid: 4343,
                    ready: true,
                    departed: true,
                },
            ],
            names: vec![("a.b".into(), 7), ("org.example.Name".into(), 9)],
            max_message: 1 << 20,
            max_fds: 16,
            pid_namespace: 0x1234_5678_9abc,
        }
    }

    #[test]
    fn round_trip_and_lookups() {
        let t = sample();
        let mut body = Vec::new();
        t.encode(&mut body);
        let d = Table::decode(&body).unwrap();
        assert_eq!(d, t);
        assert_eq!(d.owner("org.example.Name"), Some(9));
        assert_eq!(d.owner("org.example"), None);
        assert!(!d.member(7).unwrap().direct);
        assert_eq!(d.member(7).unwrap().slot, 3);
        let h = crate::header::hash32("Changed");
        assert!(d.member(7).unwrap().summary.selects(h, 0, 0));
        assert!(d.member(3).is_none());
        assert_eq!(d.member(8).unwrap().pid, 4343);
    }

    /// A departed member is listed in 12 bytes (the table keeps 256 of them, and every
    /// member reads the table whenever it changes): its slot and summary do not travel.
    #[test]
    fn a_departed_member_is_listed_by_id_flags_and_pid_only() {
        let mut t = sample();
        let mut body = Vec::new();
        t.encode(&mut body);
        let before = body.len();
        let mut gone = t.members[1].clone();
        gone.id = 9;
        gone.departed = true;
        t.members.push(gone);
        t.encode(&mut body);
        assert_eq!(body.len(), before + 12);
        let d = Table::decode(&body).unwrap();
        let m = d.member(9).unwrap();
        assert_eq!((m.id, m.pid, m.direct, m.ready), (9, 4242, false, false));
        assert_eq!(
            (m.slot, &m.summary),
            (crate::progress::NO_SLOT, &Summary::default())
        );
        // Cut anywhere, it reads as truncated, never as another table.
        for cut in 0..body.len() {
            assert!(Table::decode(&body[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn bodies_of_every_length_come_back_whole() {
        let shm: Vec<AtomicU64> = (0..words_for(64)).map(|_| AtomicU64::new(0)).collect();
        let mut out = Vec::new();
        // (Longer each time, and other bytes: a word left over from before matches nothing.)
        for len in 0..=64u8 {
            let body: Vec<u8> = (0..len).map(|b| b.wrapping_mul(37) ^ len | 1).collect();
            publish(&shm, &body).unwrap();
            assert!(read(&shm, &mut out).unwrap().is_some());
            assert_eq!(out, body, "a body of {len} bytes");
        }
        assert_eq!(publish(&shm, &[1; 65]), Err(Error::TooLarge));
    }

    #[test]
    fn shared_memory_round_trip() {
        let shm: Vec<AtomicU64> = (0..words_for(4096)).map(|_| AtomicU64::new(0)).collect();
        let mut out = Vec::new();
        assert_eq!(read(&shm, &mut out), Ok(None), "nothing published yet");
        let mut body = Vec::new();
        sample().encode(&mut body);
        publish(&shm, &body).unwrap();
        let seq = read(&shm, &mut out).unwrap().unwrap();
        assert_eq!(seq % 2, 0);
        assert_eq!(Table::decode(&out).unwrap(), sample());
        Table::default().encode(&mut body);
        publish(&shm, &body).unwrap();
        assert!(read(&shm, &mut out).unwrap().unwrap() > seq);
        assert_eq!(Table::decode(&out).unwrap(), Table::default());
        // A reader that starts while the writer is busy is told to retry.
        shm[WORD_SEQ].fetch_add(1, Ordering::Relaxed);
        assert_eq!(read(&shm, &mut out), Ok(None));
        let big = vec![0u8; 5000];
        assert_eq!(publish(&shm, &big), Err(Error::TooLarge));
    }

    #[test]
    fn unsorted_tables_are_refused() {
        let mut t = sample();
        t.names.reverse();
        let mut body = Vec::new();
        t.encode(&mut body);
        assert_eq!(Table::decode(&body), Err(Error::BadName));
    }

    proptest! {
        /// Whatever the memory holds, decoding never panics (members map it read-only but
        /// must not trust it more than that).
        #[test]
        fn decoding_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Table::decode(&body);
        }
    }
}
