//! The D-Bus marshalling format: a bounds-checked reader and a writer.
//!
//! Hand-written because the bus reads only a few argument types (driver arguments and the
//! arguments match rules look at) and must not allocate per message when matching. Bodies are
//! never decoded for forwarding.

use crate::names;

/// Byte order of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

impl Endian {
    pub fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }
}

pub fn align_to(n: usize, a: usize) -> usize {
    (n + a - 1) & !(a - 1)
}

/// The body does not hold what its signature says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message body")]
pub struct Malformed;

type Result<T> = std::result::Result<T, Malformed>;

fn alignment(code: u8) -> usize {
    match code {
        b'y' | b'g' | b'v' => 1,
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

/// Reads values from a buffer. `base` is the offset of `data[0]` from the start of the
/// message's alignment frame (0 for a body, whose start is 8-aligned).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    endian: Endian,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `data`, starting at `pos` (alignment is computed from `data[0]`).
    pub fn new(data: &'a [u8], endian: Endian, pos: usize) -> Self {
        Reader { data, endian, pos }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn align(&mut self, a: usize) -> Result<()> {
        let next = align_to(self.pos, a);
        if next > self.data.len() {
            return Err(Malformed);
        }
        self.pos = next;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let s = self.data.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.align(4)?;
        Ok(self.endian.u32(self.take(4)?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.align(8)?;
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| Malformed)?;
        Ok(match self.endian {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        })
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed),
        }
    }

    /// A STRING or OBJECT_PATH: length, UTF-8 bytes without interior nul, nul terminator.
    pub fn string(&mut self) -> Result<&'a str> {
        let len = self.u32()? as usize;
        let s = self.take(len)?;
        if self.take(1)? != [0] || s.contains(&0) {
            return Err(Malformed);
        }
        std::str::from_utf8(s).map_err(|_| Malformed)
    }

    /// A SIGNATURE: one length byte, bytes, nul.
    pub fn signature(&mut self) -> Result<&'a [u8]> {
        let len = self.u8()? as usize;
        let s = self.take(len)?;
        if self.take(1)? != [0] {
            return Err(Malformed);
        }
        Ok(s)
    }

    /// Reads an array header: returns the end position of the array's contents.
    pub fn array_start(&mut self, elem: u8) -> Result<usize> {
        let len = self.u32()? as usize;
        if len > super::message::MAX_ARRAY_SIZE {
            return Err(Malformed);
        }
        self.align(alignment(elem))?;
        let end = self.pos.checked_add(len).ok_or(Malformed)?;
        if end > self.data.len() {
            return Err(Malformed);
        }
        Ok(end)
    }

    /// `as`
    pub fn string_array(&mut self) -> Result<Vec<&'a str>> {
        let end = self.array_start(b's')?;
        let mut v = Vec::new();
        while self.pos < end {
            v.push(self.string()?);
        }
        if self.pos != end {
            return Err(Malformed);
        }
        Ok(v)
    }

    /// `a{ss}`
    pub fn string_dict(&mut self) -> Result<Vec<(&'a str, &'a str)>> {
        let end = self.array_start(b'{')?;
        let mut v = Vec::new();
        while self.pos < end {
            self.align(8)?;
            let k = self.string()?;
            let val = self.string()?;
            v.push((k, val));
        }
        if self.pos != end {
            return Err(Malformed);
        }
        Ok(v)
    }

    /// Skips one value of the complete type starting at `sig[0]`; returns the signature bytes
    /// it consumed. `depth` bounds recursion through variants.
    pub fn skip_value<'s>(&mut self, sig: &'s [u8], depth: u32) -> Result<&'s [u8]> {
        if depth > 64 {
            return Err(Malformed);
        }
        let end = names::complete_type_end(sig, 0, 0, 0).ok_or(Malformed)?;
        let this = &sig[..end];
        match this[0] {
            b'y' => {
                self.take(1)?;
            }
            b'n' | b'q' => {
                self.align(2)?;
                self.take(2)?;
            }
            b'b' => {
                self.bool()?;
            }
            b'i' | b'u' | b'h' => {
                self.u32()?;
            }
            b'x' | b't' | b'd' => {
                self.align(8)?;
                self.take(8)?;
            }
            b's' | b'o' => {
                self.string()?;
            }
            b'g' => {
                self.signature()?;
            }
            b'v' => {
                let inner = self.signature()?;
                if !names::is_single_complete_type(inner) {
                    return Err(Malformed);
                }
                self.skip_value(inner, depth + 1)?;
            }
            b'a' => {
                let elem = this[1];
                let array_end = self.array_start(elem)?;
                // Elements are not examined: the bus forwards bodies unchanged.
                self.pos = array_end;
            }
            b'(' => {
                self.align(8)?;
                let mut p = 1;
                while this[p] != b')' {
                    let used = self.skip_value(&this[p..], depth + 1)?.len();
                    p += used;
                }
            }
            _ => return Err(Malformed),
        }
        Ok(this)
    }
}

/// Writes values into a growing buffer (alignment relative to the buffer's start).
#[derive(Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
    endian: Endian,
}

impl Writer {
    pub fn new(endian: Endian) -> Self {
        Self::with_capacity(endian, 64)
    }

    pub fn with_capacity(endian: Endian, n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
            endian,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    pub fn align(&mut self, a: usize) {
        let n = align_to(self.buf.len(), a);
        self.buf.resize(n, 0);
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub fn u32(&mut self, v: u32) {
        self.align(4);
        let b = match self.endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.buf.extend_from_slice(&b);
    }

    pub fn u64(&mut self, v: u64) {
        self.align(8);
        let b = match self.endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.buf.extend_from_slice(&b);
    }

    pub fn bool(&mut self, v: bool) {
        self.u32(v as u32);
    }

    pub fn patch_u32(&mut self, at: usize, v: u32) {
        let b = match self.endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.buf[at..at + 4].copy_from_slice(&b);
    }

    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    pub fn signature(&mut self, s: &[u8]) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s);
        self.buf.push(0);
    }

    /// Starts an array whose elements align to `elem_align`; returns a token for [`Self::end_array`].
    pub fn begin_array(&mut self, elem_align: usize) -> (usize, usize) {
        self.u32(0);
        let len_at = self.buf.len() - 4;
        self.align(elem_align);
        (len_at, self.buf.len())
    }

    pub fn end_array(&mut self, (len_at, start): (usize, usize)) {
        let n = (self.buf.len() - start) as u32;
        self.patch_u32(len_at, n);
    }

    pub fn string_array<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) {
        let a = self.begin_array(4);
        for s in items {
            self.string(s);
        }
        self.end_array(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_arrays_round_trip() {
        for endian in [Endian::Little, Endian::Big] {
            let mut w = Writer::new(endian);
            w.u8(7);
            w.string("héllo");
            w.string_array(["a", "bc"]);
            let d = w.begin_array(8);
            for (k, v) in [("K", "V"), ("K2", "V2")] {
                w.align(8);
                w.string(k);
                w.string(v);
            }
            w.end_array(d);
            w.u32(99);
            w.u64(0x0102_0304_0506_0708);
            let buf = w.into_vec();
            let mut r = Reader::new(&buf, endian, 0);
            assert_eq!(r.u8().unwrap(), 7);
            assert_eq!(r.string().unwrap(), "héllo");
            assert_eq!(r.string_array().unwrap(), vec!["a", "bc"]);
            assert_eq!(r.string_dict().unwrap(), vec![("K", "V"), ("K2", "V2")]);
            assert_eq!(r.u32().unwrap(), 99);
            assert_eq!(r.u64().unwrap(), 0x0102_0304_0506_0708);
            assert!(r.at_end());
        }
    }

    #[test]
    fn skip_walks_every_type() {
        let mut w = Writer::new(Endian::Little);
        w.u8(1); // y
        w.align(8);
        w.bytes(&[0; 8]); // x
        w.signature(b"v"); // v holding ai
        w.signature(b"ai");
        w.string_array(["x"]); // an `as` is laid out like ai for skipping purposes
        w.align(8);
        w.u32(5); // (us)
        w.string("s");
        w.string("end");
        let buf = w.into_vec();
        let sig = b"yxv(us)s";
        let mut r = Reader::new(&buf, Endian::Little, 0);
        let mut p = 0;
        while p < 7 {
            p += r.skip_value(&sig[p..], 0).unwrap().len();
        }
        assert_eq!(r.string().unwrap(), "end");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut r = Reader::new(&[5, 0, 0, 0, b'a'], Endian::Little, 0);
        assert_eq!(r.string(), Err(Malformed));
        let mut r = Reader::new(&[1, 0, 0, 0, b'a', 1], Endian::Little, 0);
        assert_eq!(r.string(), Err(Malformed), "missing nul terminator");
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff], Endian::Little, 0);
        assert_eq!(r.array_start(b's'), Err(Malformed));
        let mut r = Reader::new(&[2, 0, 0, 0], Endian::Little, 0);
        assert_eq!(r.bool(), Err(Malformed));
    }
}
