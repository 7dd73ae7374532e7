//! The fast path's routing header: a fixed layout in front of every fast-path datagram, so
//! classic BPF filters can decide on a message by loading words at fixed offsets. The
//! layout, hash and bloom parameters are specified in `docs/fastpath-protocol.md`; this
//! module is the reference encoder and decoder (neither allocates).

use crate::matcher::{path_in_namespace, Arg};

/// "BUSD" in ASCII, the first word of every frame.
pub const MAGIC: u32 = 0x4255_5344;
pub const VERSION: u8 = 1;

/// Word offsets (bytes) of the fixed fields. Every field is a big-endian 32-bit word, the
/// byte order cBPF's `BPF_LD|BPF_W|BPF_ABS` loads in.
pub const OFF_MAGIC: u32 = 0;
/// version << 24 | message type << 16 | D-Bus header flags << 8 | routing flags.
pub const OFF_KIND: u32 = 4;
/// Routing flag: a receiver gives a direct frame back to the member that sent it, because it
/// was for a well-known name the receiver does not own (any more). The sender word is the
/// receiver's, the destination word the member it goes back to, whose own message (SENDER)
/// it carries unchanged. That member resends it through the daemon as itself, and only if
/// it is a message it sent that receiver (DESIGN 5.8): nobody speaks for anyone else.
pub const ROUTE_RETURNED: u8 = 1;
/// Routing flag: the D-Bus message is not in the frame but in a sealed memfd, the first
/// descriptor passed with it ([`crate::sealed`]).
pub const ROUTE_MEMFD: u8 = 2;
pub const OFF_SENDER: u32 = 8;
/// 0: no destination (a broadcast).
pub const OFF_DESTINATION: u32 = 12;
/// The destination word of a frame a member sends the daemon to route (its D-Bus
/// destination is not a member, or is the bus itself). Member ids never take this value;
/// the daemon's filter accepts it as its own id.
pub const TO_DAEMON: u32 = u32::MAX;
pub const OFF_INTERFACE: u32 = 16;
pub const OFF_MEMBER: u32 = 20;
pub const OFF_PATH: u32 = 24;
/// Hash of the first argument when it is a STRING, else 0.
pub const OFF_ARG0: u32 = 28;
pub const OFF_BLOOM: u32 = 32;

/// Bloom filter size in bits and number of bits per entry (see the measured table in
/// `docs/fastpath-protocol.md`).
pub const BLOOM_BITS: u32 = 512;
pub const BLOOM_HASHES: u32 = 8;
pub const BLOOM_WORDS: usize = (BLOOM_BITS / 32) as usize;
/// Bytes of header before the D-Bus message.
pub const HEADER_LEN: usize = OFF_BLOOM as usize + BLOOM_WORDS * 4;
/// Arguments past this index are not described (rules on them are widened).
pub const MAX_ARGS: usize = 64;

/// FNV-1a (32 bits) of `s`, never 0 (0 means "absent" in the header).
pub fn hash32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

/// FNV-1a (64 bits) over several pieces, as if concatenated.
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// MurmurHash3's 64-bit finalizer (SplitMix64's mixing step).
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bloom bit positions of one entry (`kind` + `value`, e.g. `"member:"` + `"Foo"`);
/// see [`bloom_positions_with`].
pub fn bloom_positions(kind: &str, value: &str) -> [u32; BLOOM_HASHES as usize] {
    let mut out = [0u32; BLOOM_HASHES as usize];
    for (o, p) in out
        .iter_mut()
        .zip(bloom_positions_with(kind, value, BLOOM_BITS, BLOOM_HASHES))
    {
        *o = p;
    }
    out
}

/// The same positions for other bloom sizes (a power of two) and hash counts, to measure
/// the trade-off. Each position takes the top bits of the next value of a SplitMix64
/// sequence seeded with the entry's FNV-1a hash: independent positions (double hashing mod
/// a small power of two correlates them, measured at 1000x the expected false positives).
pub fn bloom_positions_with(
    kind: &str,
    value: &str,
    bits: u32,
    hashes: u32,
) -> impl Iterator<Item = u32> {
    let mut state = hash64(&[kind.as_bytes(), value.as_bytes()]);
    let shift = 64 - bits.trailing_zeros();
    (0..hashes).map(move |_| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (fmix64(state) >> shift) as u32
    })
}

/// The bloom filter of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bloom(pub [u32; BLOOM_WORDS]);

impl Bloom {
    pub fn insert(&mut self, kind: &str, value: &str) {
        for p in bloom_positions(kind, value) {
            self.0[(p / 32) as usize] |= 1 << (31 - p % 32);
        }
    }

    pub fn contains(&self, kind: &str, value: &str) -> bool {
        bloom_positions(kind, value)
            .iter()
            .all(|&p| self.0[(p / 32) as usize] & (1 << (31 - p % 32)) != 0)
    }
}

/// Entry kinds (the prefix of each bloom entry), after kdbus's.
pub const E_INTERFACE: &str = "interface:";
pub const E_MEMBER: &str = "member:";
pub const E_PATH: &str = "path:";
pub const E_PATH_PREFIX: &str = "path-slash-prefix:";

/// The entry kind of an argument (`argN:`, `argN-dot-prefix:`...), built on the stack so
/// that encoding does not allocate.
#[derive(Clone, Copy)]
pub struct ArgKind {
    buf: [u8; 24],
    len: usize,
}

impl ArgKind {
    fn new(n: usize, suffix: &str) -> ArgKind {
        let mut buf = [0u8; 24];
        let mut len = 0;
        for b in b"arg" {
            buf[len] = *b;
            len += 1;
        }
        if n >= 10 {
            buf[len] = b'0' + (n / 10 % 10) as u8;
            len += 1;
        }
        buf[len] = b'0' + (n % 10) as u8;
        len += 1;
        for b in suffix.bytes() {
            buf[len] = b;
            len += 1;
        }
        ArgKind { buf, len }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// `argN:` (a STRING argument's value).
pub fn e_arg(n: usize) -> ArgKind {
    ArgKind::new(n, ":")
}
/// `argN-dot-prefix:` (the value and each prefix ending before a `.`).
pub fn e_arg_dot_prefix(n: usize) -> ArgKind {
    ArgKind::new(n, "-dot-prefix:")
}
/// `argN-path:` (a STRING or OBJECT_PATH argument's value, for argNpath).
pub fn e_arg_path(n: usize) -> ArgKind {
    ArgKind::new(n, "-path:")
}
/// `argN-slash-prefix:` (each prefix of the value that ends with `/`, the value included).
pub fn e_arg_slash_prefix(n: usize) -> ArgKind {
    ArgKind::new(n, "-slash-prefix:")
}

/// Turns a frame member `receiver` got from member `to` into the one it gives back to it
/// ([`ROUTE_RETURNED`]): the receiver's id as the sender word, `to` as the destination.
pub fn mark_returned(frame: &mut [u8], receiver: u32, to: u32) {
    frame[OFF_KIND as usize + 3] |= ROUTE_RETURNED;
    frame[OFF_SENDER as usize..][..4].copy_from_slice(&receiver.to_be_bytes());
    frame[OFF_DESTINATION as usize..][..4].copy_from_slice(&to.to_be_bytes());
}

/// The largest frame a member sends with its message inline: a larger message travels in
/// a sealed memfd (or, when none can be made, on the member's stream connection). So a
/// member's receive buffer is this big, not [`largest_datagram`] (which with a raised
/// `wmem_max` is megabytes per connection); a larger datagram is not a member's frame.
pub const MAX_INLINE: usize = 64 * 1024;

/// The largest datagram a member may send, hence the buffer a receiver needs: a send
/// buffer holds at most twice `net.core.wmem_max` (the kernel doubles what is asked).
pub fn largest_datagram() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(212_992);
    (2 * wmem_max).clamp(256 * 1024, 64 << 20)
}

/// What a frame describes: the fields of the D-Bus message that match rules test.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub msg_type: u8,
    pub flags: u8,
    pub sender: u32,
    /// 0 for a broadcast.
    pub destination: u32,
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    pub path: Option<&'a str>,
}

fn for_each_prefix(s: &str, sep: u8, include_sep: bool, mut f: impl FnMut(&str)) {
    for (i, b) in s.bytes().enumerate() {
        if b == sep {
            f(&s[..if include_sep { i + 1 } else { i }]);
        }
    }
}

/// Writes the routing header for a message into `out` (HEADER_LEN bytes).
pub fn encode(fields: &Fields<'_>, args: &[Arg<'_>], out: &mut [u8; HEADER_LEN]) {
    let mut bloom = Bloom::default();
    if let Some(i) = fields.interface {
        bloom.insert(E_INTERFACE, i);
    }
    if let Some(m) = fields.member {
        bloom.insert(E_MEMBER, m);
    }
    if let Some(p) = fields.path {
        bloom.insert(E_PATH, p);
        // Every namespace the path is in: "/", then each "/a", "/a/b"..., then the path.
        bloom.insert(E_PATH_PREFIX, "/");
        for_each_prefix(p, b'/', false, |prefix| {
            if !prefix.is_empty() && path_in_namespace(prefix, p) {
                bloom.insert(E_PATH_PREFIX, prefix);
            }
        });
        bloom.insert(E_PATH_PREFIX, p);
    }
    let mut arg0 = 0;
    for (n, arg) in args.iter().enumerate().take(MAX_ARGS) {
        match *arg {
            Arg::Str(s) => {
                if n == 0 {
                    arg0 = hash32(s);
                }
                bloom.insert(e_arg(n).as_str(), s);
                let dot = e_arg_dot_prefix(n);
                for_each_prefix(s, b'.', false, |p| bloom.insert(dot.as_str(), p));
                bloom.insert(dot.as_str(), s);
                insert_path_entries(&mut bloom, n, s);
            }
            Arg::Path(s) => insert_path_entries(&mut bloom, n, s),
            Arg::Other | Arg::Missing => {}
        }
    }
    let words = [
        MAGIC,
        u32::from(VERSION) << 24 | u32::from(fields.msg_type) << 16 | u32::from(fields.flags) << 8,
        fields.sender,
        fields.destination,
        fields.interface.map_or(0, hash32),
        fields.member.map_or(0, hash32),
        fields.path.map_or(0, hash32),
        arg0,
    ];
    for (i, w) in words.iter().chain(bloom.0.iter()).enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
    }
}

fn insert_path_entries(bloom: &mut Bloom, n: usize, s: &str) {
    bloom.insert(e_arg_path(n).as_str(), s);
    let slash = e_arg_slash_prefix(n);
    for_each_prefix(s, b'/', true, |p| bloom.insert(slash.as_str(), p));
}

/// A decoded routing header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub flags: u8,
    /// Routing flags ([`ROUTE_RETURNED`], [`ROUTE_MEMFD`]).
    pub routing: u8,
    pub sender: u32,
    pub destination: u32,
    pub interface: u32,
    pub member: u32,
    pub path: u32,
    pub arg0: u32,
    pub bloom: Bloom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame shorter than the routing header")]
    Short,
    #[error("not a busd fast-path frame")]
    BadMagic,
    #[error("unsupported routing header version {0}")]
    Version(u8),
}

impl Header {
    /// Reads the header at the start of a frame; the D-Bus message follows at HEADER_LEN.
    pub fn decode(frame: &[u8]) -> Result<Header, DecodeError> {
        if frame.len() < HEADER_LEN {
            return Err(DecodeError::Short);
        }
        let word = |off: usize| {
            u32::from_be_bytes([frame[off], frame[off + 1], frame[off + 2], frame[off + 3]])
        };
        if word(0) != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let kind = word(OFF_KIND as usize);
        let version = (kind >> 24) as u8;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut bloom = Bloom::default();
        for (i, w) in bloom.0.iter_mut().enumerate() {
            *w = word(OFF_BLOOM as usize + i * 4);
        }
        Ok(Header {
            version,
            msg_type: (kind >> 16) as u8,
            flags: (kind >> 8) as u8,
            routing: kind as u8,
            sender: word(OFF_SENDER as usize),
            destination: word(OFF_DESTINATION as usize),
            interface: word(OFF_INTERFACE as usize),
            member: word(OFF_MEMBER as usize),
            path: word(OFF_PATH as usize),
            arg0: word(OFF_ARG0 as usize),
            bloom,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode() {
        let fields = Fields {
            msg_type: 4,
            flags: 1,
            sender: 7,
            destination: 0,
            interface: Some("org.example.Iface"),
            member: Some("Changed"),
            path: Some("/org/example/obj"),
        };
        let mut buf = [0u8; HEADER_LEN];
        encode(
            &fields,
            &[Arg::Str("org.example.Name"), Arg::Path("/a/b/")],
            &mut buf,
        );
        let h = Header::decode(&buf).unwrap();
        assert_eq!((h.msg_type, h.flags, h.sender, h.destination), (4, 1, 7, 0));
        assert_eq!(h.interface, hash32("org.example.Iface"));
        assert_eq!(h.arg0, hash32("org.example.Name"));
        for (kind, value) in [
            (E_MEMBER, "Changed"),
            (E_PATH_PREFIX, "/"),
            (E_PATH_PREFIX, "/org"),
            (E_PATH_PREFIX, "/org/example"),
            (E_PATH_PREFIX, "/org/example/obj"),
        ] {
            assert!(h.bloom.contains(kind, value), "{kind}{value}");
        }
        assert!(h
            .bloom
            .contains(e_arg_dot_prefix(0).as_str(), "org.example"));
        assert!(h.bloom.contains(e_arg_slash_prefix(1).as_str(), "/a/"));
        assert!(h.bloom.contains(e_arg_slash_prefix(1).as_str(), "/a/b/"));
        assert_eq!(e_arg_slash_prefix(63).as_str(), "arg63-slash-prefix:");
        assert!(!h.bloom.contains(E_PATH_PREFIX, "/org/exam"));
        assert_eq!(Header::decode(&buf[..10]), Err(DecodeError::Short));
        buf[0] = 0;
        assert_eq!(Header::decode(&buf), Err(DecodeError::BadMagic));
    }

    #[test]
    fn hash32_is_never_zero_and_matches_fnv1a() {
        assert_eq!(hash32(""), 0x811c_9dc5);
        assert_eq!(hash32("a"), 0xe40c_292c);
    }
}
