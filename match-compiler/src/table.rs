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
/// version stays on the stream. (5: Join passes the inbox as a socket pair; 8: a departed
/// member's record says when its socket was shut down. 7 was a layout of the same day
/// that never shipped.)
pub const VERSION: u32 = 8;
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
/// A listed member's record; a departed one's is [`DEPARTED_LEN`] (id, flags, pid, when its
/// socket was shut down: its slot and summary are nobody's concern any more, and up to 512
/// of them are listed).
const MEMBER_LEN: usize = 48;
const DEPARTED_LEN: usize = 20;

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
    /// When the daemon had shut its socket down, on `CLOCK_REALTIME` in nanoseconds (0: it
    /// has not left, or the daemon does not know yet): a frame the kernel queued after
    /// that (`SO_TIMESTAMPNS`, the same clock) came from a socket bound at its path again.
    pub left: u64,
}

impl Member {
    /// Whether a member may send to it directly now.
    pub fn reachable(&self) -> bool {
        self.direct && self.ready && !self.departed
    }

    /// Its record ([`MEMBER_LEN`] bytes, [`DEPARTED_LEN`] once departed).
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.id);
        let mut flags = 0;
        if self.direct {
            flags |= MEMBER_DIRECT;
        }
        if self.summary.everything {
            flags |= MEMBER_EVERYTHING;
        }
        if self.departed {
            flags |= MEMBER_DEPARTED;
        }
        if self.ready {
            flags |= MEMBER_READY;
        }
        put_u32(out, flags);
        if self.departed {
            put_u32(out, self.pid);
            out.extend_from_slice(&self.left.to_le_bytes());
            return;
        }
        put_u32(out, self.slot);
        put_u32(out, self.pid);
        for w in self.summary.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
}

/// What changed in a table since its body was last encoded ([`Encoded::update`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Anything, or more than is worth following: encode the body again whole.
    pub all: bool,
    /// The bus-wide fields (flags, limits, pid namespace).
    pub header: bool,
    /// Members whose entry was added, changed or removed, by id (repeats allowed).
    pub members: Vec<u32>,
    /// The names.
    pub names: bool,
}

impl Changes {
    /// Past this many member changes at once, encoding the body whole costs no more.
    const MEMBERS_AT_MOST: usize = 64;

    pub fn member(&mut self, id: u32) {
        if !self.all {
            self.members.push(id);
            if self.members.len() > Self::MEMBERS_AT_MOST {
                self.everything();
            }
        }
    }

    pub fn everything(&mut self) {
        *self = Changes {
            all: true,
            ..Changes::default()
        };
    }

    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// A table's body, kept encoded and changed where the table changed (DESIGN 8: a join,
/// Ready or a member's rules rewrite one record, not every member's), with the byte
/// ranges that differ from the body before, for [`publish_changed`].
#[derive(Debug, Default)]
pub struct Encoded {
    body: Vec<u8>,
    /// Each listed member's id and where its record starts, in id order.
    at: Vec<(u32, usize)>,
    /// Where the name count starts (the members' records end).
    names_at: usize,
    /// The body was encoded at least once.
    valid: bool,
}

/// Bytes of the bus-wide fields, then the member count's 4.
const HEADER_LEN: usize = 20;

impl Encoded {
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The whole body, as the range that changed.
    fn whole(&self) -> Vec<std::ops::Range<usize>> {
        let all = 0..self.body.len();
        vec![all]
    }

    /// The memory no longer holds this body (something else was published): the next
    /// update encodes and writes everything.
    pub fn forget(&mut self) {
        self.valid = false;
    }

    /// Encodes `t` whole.
    pub fn set(&mut self, t: &Table) {
        self.body.clear();
        t.encode_header(&mut self.body);
        put_u32(&mut self.body, t.members.len() as u32);
        self.at.clear();
        self.body.reserve(t.members.len() * MEMBER_LEN);
        for m in &t.members {
            self.at.push((m.id, self.body.len()));
            m.encode(&mut self.body);
        }
        self.names_at = self.body.len();
        t.encode_names(&mut self.body);
        self.valid = true;
    }

    /// Brings the body to `t`, of which `changes` says what changed since the body was
    /// last brought up to date; returns the byte ranges that may differ from before (a
    /// change of length moves everything after it). Costs what changed, plus a move of
    /// the bytes after a record that changed length.
    pub fn update(&mut self, t: &Table, changes: &Changes) -> Vec<std::ops::Range<usize>> {
        if changes.all || !self.valid {
            self.set(t);
            return self.whole();
        }
        let mut dirty = Vec::new();
        if changes.header {
            let mut h = Vec::with_capacity(HEADER_LEN);
            t.encode_header(&mut h);
            self.body[..HEADER_LEN].copy_from_slice(&h);
            dirty.push(0..HEADER_LEN);
        }
        let mut ids = changes.members.clone();
        ids.sort_unstable();
        ids.dedup();
        let mut record = Vec::with_capacity(MEMBER_LEN);
        // (Moved from here to the end: the first record that changed length.)
        let mut moved = usize::MAX;
        for id in ids {
            record.clear();
            if let Some(m) = t.member(id) {
                m.encode(&mut record);
            }
            let (i, old) = match self.at.binary_search_by_key(&id, |&(id, _)| id) {
                Ok(i) => {
                    let start = self.at[i].1;
                    let end = self.at.get(i + 1).map_or(self.names_at, |&(_, at)| at);
                    (i, start..end)
                }
                Err(i) => {
                    let start = self.at.get(i).map_or(self.names_at, |&(_, at)| at);
                    (i, start..start)
                }
            };
            let start = old.start;
            let (old_len, new_len) = (old.len(), record.len());
            self.body.splice(old, record.iter().copied());
            match (old_len > 0, new_len > 0) {
                (true, false) => {
                    self.at.remove(i);
                }
                (false, true) => self.at.insert(i, (id, start)),
                _ => {}
            }
            if old_len == new_len {
                dirty.push(start..start + new_len);
                continue;
            }
            let first_after = if new_len > 0 { i + 1 } else { i };
            for (_, at) in &mut self.at[first_after..] {
                *at = *at + new_len - old_len;
            }
            self.names_at = self.names_at + new_len - old_len;
            moved = moved.min(start);
        }
        if self.at.len() != t.members.len() {
            // (Changes missed a member: never from the daemon, whose tests compare.)
            self.set(t);
            return self.whole();
        }
        let count = (t.members.len() as u32).to_le_bytes();
        if self.body[HEADER_LEN..HEADER_LEN + 4] != count {
            self.body[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&count);
            dirty.push(HEADER_LEN..HEADER_LEN + 4);
        }
        if changes.names {
            self.body.truncate(self.names_at);
            t.encode_names(&mut self.body);
            moved = moved.min(self.names_at);
        }
        if moved != usize::MAX {
            dirty.push(moved..self.body.len());
        }
        dirty
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
        self.encode_header(out);
        put_u32(out, self.members.len() as u32);
        out.reserve(self.members.len() * MEMBER_LEN);
        for m in &self.members {
            m.encode(out);
        }
        self.encode_names(out);
    }

    /// The bus-wide fields: [`HEADER_LEN`] bytes, before the member count.
    fn encode_header(&self, out: &mut Vec<u8>) {
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
    }

    /// The name count and the names, which end the body.
    fn encode_names(&self, out: &mut Vec<u8>) {
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
            let (slot, pid, left) = if departed {
                (crate::progress::NO_SLOT, c.u32()?, c.u64()?)
            } else {
                (c.u32()?, c.u32()?, 0)
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
                left,
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

/// `CLOCK_REALTIME` now, in nanoseconds: the clock of [`Member::left`] and of the
/// kernel's `SO_TIMESTAMPNS`.
pub fn realtime_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, a local alive for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
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
    publish_changed(shm, body, std::slice::from_ref(&(0..body.len())))
}

/// Writes the body again where it changed: `dirty` holds the byte ranges of `body` that may
/// differ from the body last published (the rest is as published). Readers copy the whole
/// body under the sequence lock, as after [`publish`].
pub fn publish_changed(
    shm: &[AtomicU64],
    body: &[u8],
    dirty: &[std::ops::Range<usize>],
) -> Result<(), Error> {
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
    let words = &shm[PREFIX_LEN / 8..];
    for r in dirty {
        // The whole words the range touches.
        let first = r.start / 8;
        let bytes = &body[(first * 8).min(body.len())
            ..r.end.min(body.len()).next_multiple_of(8).min(body.len())];
        // (Whole words without a copy through a buffer: a copy of variable length per word
        // was a library call per 8 bytes, the bulk of a publication's cost.)
        let mut chunks = bytes.chunks_exact(8);
        for (w, chunk) in words[first..].iter().zip(chunks.by_ref()) {
            let chunk: [u8; 8] = chunk.try_into().expect("chunks of 8");
            w.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            words[first + bytes.len() / 8].store(u64::from_le_bytes(last), Ordering::Relaxed);
        }
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
                    left: 0,
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
                    left: 0,
                },
                Member {
                    id: 8,
                    direct: true,
                    slot: crate::progress::NO_SLOT,
                    summary: Summary::default(),
                    pid: 4343,
                    ready: true,
                    departed: true,
                    left: 77,
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

    /// A departed member is listed in 20 bytes (the table keeps 256 to 512 of them, and
    /// every member reads the table whenever it changes): its slot and summary do not
    /// travel; when it left does.
    #[test]
    fn a_departed_member_is_listed_by_id_flags_pid_and_when_it_left() {
        let mut t = sample();
        let mut body = Vec::new();
        t.encode(&mut body);
        let before = body.len();
        let mut gone = t.members[1].clone();
        gone.id = 9;
        gone.departed = true;
        gone.left = 123_456_789_012;
        t.members.push(gone);
        t.encode(&mut body);
        assert_eq!(body.len(), before + 20);
        let d = Table::decode(&body).unwrap();
        let m = d.member(9).unwrap();
        assert_eq!((m.id, m.pid, m.direct, m.ready), (9, 4242, false, false));
        assert_eq!(m.left, 123_456_789_012);
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

    /// One change to a table, as the daemon makes them.
    #[derive(Debug, Clone)]
    enum Op {
        /// Lists (or replaces) member `id`: departed, ready, a summary word.
        List(u32, bool, bool, u64),
        Unlist(u32),
        /// Name `n` (of a few) owned by member `id`, or by nobody.
        Name(u8, Option<u32>),
        Observed(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..40, any::<bool>(), any::<bool>(), any::<u64>())
                .prop_map(|(id, d, r, w)| Op::List(id, d, r, w)),
            2 => (0u32..40).prop_map(Op::Unlist),
            2 => (0u8..6, proptest::option::of(0u32..40)).prop_map(|(n, id)| Op::Name(n, id)),
            1 => any::<bool>().prop_map(Op::Observed),
        ]
    }

    /// Applies `op` to `t` and notes it in `changes` as the daemon does.
    fn apply(t: &mut Table, changes: &mut Changes, op: &Op) {
        match *op {
            Op::List(id, departed, ready, word) => {
                let m = Member {
                    id,
                    direct: true,
                    slot: id + 1,
                    summary: Summary {
                        bits: [word, 0, !word, 1],
                        ..Summary::default()
                    },
                    pid: 100 + id,
                    ready,
                    departed,
                    left: 0,
                };
                match t.members.binary_search_by_key(&id, |m| m.id) {
                    Ok(i) => t.members[i] = m,
                    Err(i) => t.members.insert(i, m),
                }
                changes.member(id);
            }
            Op::Unlist(id) => {
                if let Ok(i) = t.members.binary_search_by_key(&id, |m| m.id) {
                    t.members.remove(i);
                    changes.member(id);
                }
            }
            Op::Name(n, owner) => {
                let name = format!("org.example.N{}", "x".repeat(usize::from(n)));
                let at = t.names.binary_search_by(|(x, _)| x.as_str().cmp(&name));
                match (at, owner) {
                    (Ok(i), Some(id)) => t.names[i].1 = id,
                    (Ok(i), None) => {
                        t.names.remove(i);
                    }
                    (Err(i), Some(id)) => t.names.insert(i, (name, id)),
                    (Err(_), None) => {}
                }
                changes.names = true;
            }
            Op::Observed(o) => {
                t.observed = o;
                changes.header = true;
            }
        }
    }

    /// A body brought up to date where it changed, and published only there, reads back
    /// as the table encoded whole.
    #[test]
    fn a_body_changed_in_place_is_the_body_encoded_whole() {
        let mut t = sample();
        let mut e = Encoded::default();
        let words = words_for(8192);
        let (_fd, map) = crate::shm::Mapping::create("table", words * 8, 0).unwrap();
        let dirty = e.update(&t, &Changes::default());
        publish_changed(map.words(), e.body(), &dirty).unwrap();
        let ops = [
            Op::List(9, false, false, 5),
            Op::List(9, false, true, 5),
            Op::List(3, true, false, 0),
            Op::Unlist(0),
            Op::Name(1, Some(9)),
            Op::List(30, false, true, 1),
            Op::Observed(false),
        ];
        for op in &ops {
            let mut changes = Changes::default();
            apply(&mut t, &mut changes, op);
            let dirty = e.update(&t, &changes);
            publish_changed(map.words(), e.body(), &dirty).unwrap();
            let mut whole = Vec::new();
            t.encode(&mut whole);
            assert_eq!(e.body(), whole, "after {op:?}");
            let mut read = Vec::new();
            assert!(read_published(map.words(), &mut read), "after {op:?}");
            assert_eq!(read, whole, "after {op:?}");
        }
        // Ready rewrites one record, the last here, and nothing else.
        let mut changes = Changes::default();
        apply(&mut t, &mut changes, &Op::List(30, false, false, 1));
        let last = e.at[e.at.len() - 1].1;
        let dirty = e.update(&t, &changes);
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0], last..last + MEMBER_LEN);
    }

    fn read_published(shm: &[AtomicU64], out: &mut Vec<u8>) -> bool {
        matches!(read(shm, out), Ok(Some(_)))
    }

    proptest! {
        /// Whatever the memory holds, decoding never panics (members map it read-only but
        /// must not trust it more than that).
        #[test]
        fn decoding_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Table::decode(&body);
        }

        /// Any sequence of changes, in batches of any size: the body kept up to date, and
        /// the memory written only where it changed, are the table encoded whole.
        #[test]
        fn any_changes_keep_the_body_and_the_memory_whole(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 0..6), 1..20)
        ) {
            let mut t = Table::default();
            let mut e = Encoded::default();
            let words = words_for(8192);
            let (_fd, map) = crate::shm::Mapping::create("table", words * 8, 0).unwrap();
            for batch in &batches {
                let mut changes = Changes::default();
                for op in batch {
                    apply(&mut t, &mut changes, op);
                }
                let dirty = e.update(&t, &changes);
                publish_changed(map.words(), e.body(), &dirty).unwrap();
                let mut whole = Vec::new();
                t.encode(&mut whole);
                prop_assert_eq!(e.body(), &whole[..]);
                let mut read = Vec::new();
                prop_assert!(read_published(map.words(), &mut read));
                prop_assert_eq!(read, whole);
            }
        }
    }
}
