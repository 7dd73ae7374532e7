//! Message framing, header parsing and validation, and the bus's header rewrite.
//!
//! Hand-written: every message passes through here, and it must apply every rule of the
//! specification's "Message Format" section exactly. A message is parsed once into a
//! [`Message`], which keeps the raw bytes and the positions of the header fields; later code
//! never re-checks. Forwarding rebuilds only the header fields (`SENDER` set by the bus, unknown
//! fields dropped) and copies the body bytes unchanged.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::marshal::{align_to, Endian, Reader, Writer};
use crate::names;

/// Largest message the specification allows (2^27 bytes).
pub const MAX_MESSAGE_SIZE: usize = 1 << 27;
/// Largest array (2^26 bytes), including the header-field array.
pub const MAX_ARRAY_SIZE: usize = 1 << 26;
/// Size of the fixed part of the header.
pub const FIXED_HEADER_SIZE: usize = 16;

pub const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

pub const FLAG_NO_REPLY_EXPECTED: u8 = 0x1;
pub const FLAG_NO_AUTO_START: u8 = 0x2;
pub const FLAG_ALLOW_INTERACTIVE_AUTHORIZATION: u8 = 0x4;

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SENDER: u8 = 7;
const FIELD_SIGNATURE: u8 = 8;
const FIELD_UNIX_FDS: u8 = 9;

pub const LOCAL_PATH: &str = "/org/freedesktop/DBus/Local";
pub const LOCAL_INTERFACE: &str = "org.freedesktop.DBus.Local";

/// Why a message is invalid. Any of these disconnects the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid byte-order mark {0:#04x}")]
    ByteOrder(u8),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("message of {0} bytes exceeds the maximum size")]
    TooLarge(usize),
    #[error("header field array of {0} bytes exceeds the maximum")]
    FieldsTooLarge(usize),
    #[error("invalid message type 0")]
    Type,
    #[error("serial number is zero")]
    ZeroSerial,
    #[error("malformed header: {0}")]
    Malformed(&'static str),
    #[error("header field {0} has the wrong type")]
    FieldType(u8),
    #[error("header field {0} appears twice")]
    DuplicateField(u8),
    #[error("invalid {0} in header")]
    InvalidName(&'static str),
    #[error("required header field {0} missing")]
    MissingField(&'static str),
    #[error("message uses the reserved local path or interface")]
    Local,
    #[error("header padding is not zero")]
    Padding,
    #[error("message of {got} bytes, its header announces {announced}")]
    Length { announced: usize, got: usize },
}

/// The highest argument index a match rule can test (`arg63`).
pub const MAX_ARG_INDEX: u8 = 63;

/// A top-level argument of a message body, as match rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// A STRING argument.
    Str(&'a str),
    /// An OBJECT_PATH argument.
    Path(&'a str),
    /// An argument of another type.
    Other,
    /// The body has fewer arguments.
    Missing,
}

/// Byte range of a field's string value inside the message.
type Span = Option<(u32, u32)>;

/// A complete, validated message: its bytes, its unix fds, and where each header field is.
#[derive(Debug)]
pub struct Message {
    bytes: Arc<Vec<u8>>,
    pub fds: Vec<OwnedFd>,
    endian: Endian,
    msg_type: u8,
    flags: u8,
    serial: u32,
    /// Where the body and each string field lie in `bytes`.
    at: Spans,
    reply_serial: Option<u32>,
    unix_fds: u32,
    /// Whether the header holds fields the bus does not know (to be filtered when forwarding).
    has_unknown_fields: bool,
}

/// Given at least [`FIXED_HEADER_SIZE`] bytes, the total length of the message they start.
pub fn total_length(fixed: &[u8]) -> Result<usize, Error> {
    let endian = match fixed[0] {
        b'l' => Endian::Little,
        b'B' => Endian::Big,
        b => return Err(Error::ByteOrder(b)),
    };
    if fixed[3] != 1 {
        return Err(Error::Version(fixed[3]));
    }
    let body_len = endian.u32(&fixed[4..8]) as usize;
    let fields_len = endian.u32(&fixed[12..16]) as usize;
    if fields_len > MAX_ARRAY_SIZE {
        return Err(Error::FieldsTooLarge(fields_len));
    }
    let header_len = align_to(FIXED_HEADER_SIZE + fields_len, 8);
    let total = header_len + body_len;
    if body_len > MAX_MESSAGE_SIZE || total > MAX_MESSAGE_SIZE {
        return Err(Error::TooLarge(total));
    }
    Ok(total)
}

/// The UNIX_FDS header field of a complete message, read before full validation so the right
/// number of received fds can be attached; 0 if absent or unreadable (validation then decides).
pub fn declared_unix_fds(bytes: &[u8]) -> u32 {
    let endian = if bytes[0] == b'l' {
        Endian::Little
    } else {
        Endian::Big
    };
    let fields_end = FIXED_HEADER_SIZE + endian.u32(&bytes[12..16]) as usize;
    let mut r = Reader::new(
        &bytes[..fields_end.min(bytes.len())],
        endian,
        FIXED_HEADER_SIZE,
    );
    while r.pos() < fields_end {
        let Ok(()) = r.align(8) else { return 0 };
        let (Ok(code), Ok(sig)) = (r.u8(), r.signature()) else {
            return 0;
        };
        if code == FIELD_UNIX_FDS && sig == b"u" {
            return r.u32().unwrap_or(0);
        }
        if r.skip_value(sig, 0).is_err() {
            return 0;
        }
    }
    0
}

impl Message {
    /// Parses and validates one complete message: exactly the `total_length` bytes its fixed
    /// header announces (a fast-path frame carries whatever its sender put in it).
    pub fn parse(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<Message, Error> {
        let Some(fixed) = bytes.get(..FIXED_HEADER_SIZE) else {
            return Err(Error::Length {
                announced: FIXED_HEADER_SIZE,
                got: bytes.len(),
            });
        };
        let total = total_length(fixed)?;
        if total != bytes.len() {
            return Err(Error::Length {
                announced: total,
                got: bytes.len(),
            });
        }
        let endian = if bytes[0] == b'l' {
            Endian::Little
        } else {
            Endian::Big
        };
        let msg_type = bytes[1];
        if msg_type == 0 {
            return Err(Error::Type);
        }
        let serial = endian.u32(&bytes[8..12]);
        if serial == 0 {
            return Err(Error::ZeroSerial);
        }
        let fields_len = endian.u32(&bytes[12..16]) as usize;
        let fields_end = FIXED_HEADER_SIZE + fields_len;
        let body_offset = align_to(fields_end, 8);
        if bytes[fields_end..body_offset].iter().any(|&b| b != 0) {
            return Err(Error::Padding);
        }
        let mut m = Message {
            endian,
            msg_type,
            flags: bytes[2],
            serial,
            at: Spans {
                body_offset,
                ..Spans::default()
            },
            reply_serial: None,
            unix_fds: 0,
            has_unknown_fields: false,
            bytes: Arc::new(Vec::new()),
            fds,
        };
        let mut seen = 0u32;
        {
            let mut r = Reader::new(&bytes[..fields_end], endian, FIXED_HEADER_SIZE);
            while r.pos() < fields_end {
                r.align(8)
                    .map_err(|_| Error::Malformed("field alignment"))?;
                if r.pos() >= fields_end {
                    return Err(Error::Malformed("field padding"));
                }
                let code = r.u8().map_err(|_| Error::Malformed("field code"))?;
                let sig = r
                    .signature()
                    .map_err(|_| Error::Malformed("field signature"))?;
                if !names::is_single_complete_type(sig) {
                    return Err(Error::Malformed("field signature"));
                }
                if (1..=9).contains(&code) {
                    if seen & (1 << code) != 0 {
                        return Err(Error::DuplicateField(code));
                    }
                    seen |= 1 << code;
                }
                let expected: &[u8] = match code {
                    FIELD_PATH => b"o",
                    FIELD_INTERFACE | FIELD_MEMBER | FIELD_ERROR_NAME | FIELD_DESTINATION
                    | FIELD_SENDER => b"s",
                    FIELD_REPLY_SERIAL | FIELD_UNIX_FDS => b"u",
                    FIELD_SIGNATURE => b"g",
                    _ => {
                        m.has_unknown_fields = true;
                        r.skip_value(sig, 0)
                            .map_err(|_| Error::Malformed("field value"))?;
                        continue;
                    }
                };
                if sig != expected {
                    return Err(Error::FieldType(code));
                }
                let start = r.pos();
                match code {
                    FIELD_REPLY_SERIAL | FIELD_UNIX_FDS => {
                        let v = r.u32().map_err(|_| Error::Malformed("field value"))?;
                        if code == FIELD_REPLY_SERIAL {
                            if v == 0 {
                                return Err(Error::Malformed("reply serial is zero"));
                            }
                            m.reply_serial = Some(v);
                        } else {
                            m.unix_fds = v;
                        }
                        continue;
                    }
                    FIELD_SIGNATURE => {
                        let s = r.signature().map_err(|_| Error::Malformed("signature"))?;
                        if !names::is_valid_signature(s) {
                            return Err(Error::InvalidName("signature"));
                        }
                        let end = r.pos() - 1;
                        m.at.signature = Some((start as u32 + 1, end as u32));
                        continue;
                    }
                    _ => {}
                }
                let s = r.string().map_err(|_| Error::Malformed("string field"))?;
                let end = r.pos() - 1;
                let span = Some((start as u32 + 4, end as u32));
                match code {
                    FIELD_PATH => {
                        if !names::is_valid_object_path(s) {
                            return Err(Error::InvalidName("object path"));
                        }
                        if s == LOCAL_PATH {
                            return Err(Error::Local);
                        }
                        m.at.path = span;
                    }
                    FIELD_INTERFACE => {
                        if !names::is_valid_interface(s) {
                            return Err(Error::InvalidName("interface"));
                        }
                        if s == LOCAL_INTERFACE {
                            return Err(Error::Local);
                        }
                        m.at.interface = span;
                    }
                    FIELD_MEMBER => {
                        if !names::is_valid_member(s) {
                            return Err(Error::InvalidName("member"));
                        }
                        m.at.member = span;
                    }
                    FIELD_ERROR_NAME => {
                        if !names::is_valid_error_name(s) {
                            return Err(Error::InvalidName("error name"));
                        }
                        m.at.error_name = span;
                    }
                    FIELD_DESTINATION => {
                        if !names::is_valid_bus_name(s) {
                            return Err(Error::InvalidName("destination"));
                        }
                        m.at.destination = span;
                    }
                    _ => {
                        if !names::is_valid_bus_name(s) {
                            return Err(Error::InvalidName("sender"));
                        }
                        m.at.sender = span;
                    }
                }
            }
        }
        match msg_type {
            METHOD_CALL => {
                if m.at.path.is_none() {
                    return Err(Error::MissingField("PATH"));
                }
                if m.at.member.is_none() {
                    return Err(Error::MissingField("MEMBER"));
                }
            }
            SIGNAL => {
                if m.at.path.is_none() {
                    return Err(Error::MissingField("PATH"));
                }
                if m.at.interface.is_none() {
                    return Err(Error::MissingField("INTERFACE"));
                }
                if m.at.member.is_none() {
                    return Err(Error::MissingField("MEMBER"));
                }
            }
            ERROR => {
                if m.at.error_name.is_none() {
                    return Err(Error::MissingField("ERROR_NAME"));
                }
                if m.reply_serial.is_none() {
                    return Err(Error::MissingField("REPLY_SERIAL"));
                }
            }
            METHOD_RETURN if m.reply_serial.is_none() => {
                return Err(Error::MissingField("REPLY_SERIAL"))
            }
            // Unknown types are valid on the wire; the bus decides what to do with them.
            _ => {}
        }
        // An empty SIGNATURE field says the same as none: no body (libdbus rejects the bytes
        // as too much data).
        let no_signature = !matches!(m.at.signature, Some((start, end)) if start < end);
        if no_signature && bytes.len() > body_offset {
            return Err(Error::Malformed("body without signature"));
        }
        m.bytes = Arc::new(bytes);
        Ok(m)
    }

    fn str_at(&self, span: Span) -> Option<&str> {
        // (Called several times per message routed: checking UTF-8 again each time showed.)
        span.map(|(s, e)| {
            let bytes = &self.bytes[s as usize..e as usize];
            // SAFETY: a span is set only by `parse`, over a string it checked is UTF-8 (or a
            // signature it checked is ASCII), or by `forward`, over a copy of such a string
            // or over the new SENDER, a `&str` it checked is a valid bus name (a property
            // test checks forward's spans against parsing); the bytes never change after.
            unsafe { std::str::from_utf8_unchecked(bytes) }
        })
    }

    pub fn msg_type(&self) -> u8 {
        self.msg_type
    }
    pub fn flags(&self) -> u8 {
        self.flags
    }
    pub fn serial(&self) -> u32 {
        self.serial
    }
    pub fn endian(&self) -> Endian {
        self.endian
    }
    pub fn no_reply_expected(&self) -> bool {
        self.flags & FLAG_NO_REPLY_EXPECTED != 0
    }
    pub fn auto_start(&self) -> bool {
        self.flags & FLAG_NO_AUTO_START == 0
    }
    pub fn path(&self) -> Option<&str> {
        self.str_at(self.at.path)
    }
    pub fn interface(&self) -> Option<&str> {
        self.str_at(self.at.interface)
    }
    pub fn member(&self) -> Option<&str> {
        self.str_at(self.at.member)
    }
    pub fn error_name(&self) -> Option<&str> {
        self.str_at(self.at.error_name)
    }
    pub fn destination(&self) -> Option<&str> {
        self.str_at(self.at.destination)
    }
    pub fn sender(&self) -> Option<&str> {
        self.str_at(self.at.sender)
    }
    pub fn signature(&self) -> &str {
        self.str_at(self.at.signature).unwrap_or("")
    }
    pub fn reply_serial(&self) -> Option<u32> {
        self.reply_serial
    }
    /// Whether the header holds fields the bus does not know ([`Message::forwarded`] drops
    /// them).
    pub fn has_unknown_fields(&self) -> bool {
        self.has_unknown_fields
    }
    /// The UNIX_FDS header field.
    pub fn unix_fds(&self) -> u32 {
        self.unix_fds
    }
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.at.body_offset..]
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The message's bytes, without a copy unless they are shared.
    pub fn into_bytes(self) -> Vec<u8> {
        Arc::try_unwrap(self.bytes).unwrap_or_else(|shared| (*shared).clone())
    }
    /// A reader over the body, in the message's byte order.
    pub fn body_reader(&self) -> Reader<'_> {
        Reader::new(self.body(), self.endian, 0)
    }

    /// The bytes to deliver: the same message with `SENDER` set to `sender` and every header
    /// field the bus does not know removed. The body is copied unchanged.
    pub fn forwarded(&self, sender: &str) -> Vec<u8> {
        if !self.has_unknown_fields && self.sender() == Some(sender) {
            return self.bytes.to_vec();
        }
        encode(
            self.endian,
            self.msg_type,
            self.flags,
            self.serial,
            &self.fields_with(sender),
            self.body(),
        )
    }

    /// This message's known header fields, with `sender` as SENDER.
    fn fields_with<'a>(&'a self, sender: &'a str) -> HeaderFields<'a> {
        HeaderFields {
            path: self.path(),
            interface: self.interface(),
            member: self.member(),
            error_name: self.error_name(),
            reply_serial: self.reply_serial,
            destination: self.destination(),
            sender: Some(sender),
            signature: self.str_at(self.at.signature),
            unix_fds: self.unix_fds,
        }
    }
}

impl Message {
    /// Up to 64 top-level arguments, as match rules see them (STRING and OBJECT_PATH values;
    /// the others only counted). Stops at the first argument that does not decode.
    pub fn args(&self) -> Vec<Arg<'_>> {
        let mut out = Vec::new();
        self.each_arg(|a| {
            out.push(a);
            out.len() <= usize::from(MAX_ARG_INDEX)
        });
        out
    }

    /// The first argument, as [`Message::args`] would give it, without reading the others.
    pub fn arg0(&self) -> Option<Arg<'_>> {
        let mut first = None;
        self.each_arg(|a| {
            first = Some(a);
            false
        });
        first
    }

    /// Reads arguments in order while `more` returns true, up to the first malformed one.
    fn each_arg<'a>(&'a self, mut more: impl FnMut(Arg<'a>) -> bool) {
        let sig = self.signature().as_bytes();
        let mut r = self.body_reader();
        let mut p = 0;
        while p < sig.len() {
            let arg = match sig[p] {
                b's' => r.string().map(Arg::Str),
                b'o' => r.string().map(Arg::Path),
                _ => r.skip_value(&sig[p..], 0).map(|_| Arg::Other),
            };
            match arg {
                Ok(a) if more(a) => {}
                _ => break,
            }
            p = match names::complete_type_end(sig, p, 0, 0) {
                Some(e) => e,
                None => break,
            };
        }
    }

    /// The message as it is delivered (see [`Message::forwarded`]), keeping its fds. Returns
    /// None only if re-encoding produced an invalid message, which would be a bug in busd.
    pub fn forward(self, sender: &str) -> Option<Message> {
        if !self.has_unknown_fields && self.sender() == Some(sender) {
            return Some(self);
        }
        let fields = self.fields_with(sender);
        let head = Head {
            endian: self.endian,
            msg_type: self.msg_type,
            flags: self.flags,
            serial: self.serial,
        };
        let (bytes, spans) = encode_with_spans(head, &fields, self.body());
        // Every other field comes from this message, which parsing validated, so the new
        // bytes need no second validation: only where each field now lies, the new SENDER,
        // and the length (a longer SENDER can take a message past the limit; a bus name is
        // at most 255 bytes, so no length written in the header can have wrapped).
        if !names::is_valid_bus_name(sender) || total_length(&bytes) != Ok(bytes.len()) {
            return None;
        }
        let m = Message {
            bytes: Arc::new(bytes),
            fds: Vec::new(),
            endian: self.endian,
            msg_type: self.msg_type,
            flags: self.flags,
            serial: self.serial,
            at: spans,
            reply_serial: self.reply_serial,
            unix_fds: self.unix_fds,
            has_unknown_fields: false,
        };
        debug_assert!(
            Message::parse(m.bytes.to_vec(), Vec::new()).is_ok_and(|p| p.same_fields(&m)),
            "forwarding produced a message that parses differently"
        );
        Some(Message { fds: self.fds, ..m })
    }

    /// Whether both messages have the same header (in tests, and checked in debug builds
    /// after forwarding).
    fn same_fields(&self, other: &Message) -> bool {
        self.bytes == other.bytes
            && (
                self.endian,
                self.msg_type,
                self.flags,
                self.serial,
                self.at.body_offset,
            ) == (
                other.endian,
                other.msg_type,
                other.flags,
                other.serial,
                other.at.body_offset,
            )
            && (
                self.path(),
                self.interface(),
                self.member(),
                self.error_name(),
            ) == (
                other.path(),
                other.interface(),
                other.member(),
                other.error_name(),
            )
            && (self.destination(), self.sender(), self.signature())
                == (other.destination(), other.sender(), other.signature())
            && (self.reply_serial, self.unix_fds, self.has_unknown_fields)
                == (other.reply_serial, other.unix_fds, other.has_unknown_fields)
    }

    /// The message's bytes, shared: queued on many connections without a copy.
    pub fn shared_bytes(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.bytes)
    }
}

/// Header fields of a message the bus composes.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeaderFields<'a> {
    pub path: Option<&'a str>,
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    pub error_name: Option<&'a str>,
    pub reply_serial: Option<u32>,
    pub destination: Option<&'a str>,
    pub sender: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub unix_fds: u32,
}

/// Encodes a whole message from header fields and an already-marshalled body.
pub fn encode(
    endian: Endian,
    msg_type: u8,
    flags: u8,
    serial: u32,
    f: &HeaderFields<'_>,
    body: &[u8],
) -> Vec<u8> {
    let head = Head {
        endian,
        msg_type,
        flags,
        serial,
    };
    encode_with_spans(head, f, body).0
}

/// The fixed part of a header, but for the body's length.
struct Head {
    endian: Endian,
    msg_type: u8,
    flags: u8,
    serial: u32,
}

/// Where a message's body and string header fields lie in its bytes.
#[derive(Debug, Default)]
struct Spans {
    path: Span,
    interface: Span,
    member: Span,
    error_name: Span,
    destination: Span,
    sender: Span,
    signature: Span,
    body_offset: usize,
}

fn encode_with_spans(head: Head, f: &HeaderFields<'_>, body: &[u8]) -> (Vec<u8>, Spans) {
    let Head {
        endian,
        msg_type,
        flags,
        serial,
    } = head;
    let mut spans = Spans::default();
    let mut w = Writer::with_capacity(endian, 128 + body.len());
    w.u8(if endian == Endian::Little { b'l' } else { b'B' });
    w.u8(msg_type);
    w.u8(flags);
    w.u8(1);
    w.u32(body.len() as u32);
    w.u32(serial);
    let len_at = w.len();
    w.u32(0);
    let start = w.len();
    // Writes a field; returns where its value's bytes lie (without length and nul).
    let str_field = |w: &mut Writer, code: u8, sig: u8, v: Option<&str>| -> Span {
        let v = v?;
        w.align(8);
        w.u8(code);
        w.signature(&[sig]);
        // (A value starts aligned: the code and its one-letter signature take 4 bytes.)
        let start = w.len() + if sig == b'g' { 1 } else { 4 };
        if sig == b'g' {
            w.signature(v.as_bytes());
        } else {
            w.string(v);
        }
        Some((start as u32, (start + v.len()) as u32))
    };
    spans.path = str_field(&mut w, FIELD_PATH, b'o', f.path);
    spans.interface = str_field(&mut w, FIELD_INTERFACE, b's', f.interface);
    spans.member = str_field(&mut w, FIELD_MEMBER, b's', f.member);
    spans.error_name = str_field(&mut w, FIELD_ERROR_NAME, b's', f.error_name);
    if let Some(rs) = f.reply_serial {
        w.align(8);
        w.u8(FIELD_REPLY_SERIAL);
        w.signature(b"u");
        w.u32(rs);
    }
    spans.destination = str_field(&mut w, FIELD_DESTINATION, b's', f.destination);
    spans.sender = str_field(&mut w, FIELD_SENDER, b's', f.sender);
    spans.signature = str_field(
        &mut w,
        FIELD_SIGNATURE,
        b'g',
        f.signature.filter(|s| !s.is_empty()),
    );
    if f.unix_fds > 0 {
        w.align(8);
        w.u8(FIELD_UNIX_FDS);
        w.signature(b"u");
        w.u32(f.unix_fds);
    }
    let fields_len = (w.len() - start) as u32;
    w.patch_u32(len_at, fields_len);
    w.align(8);
    spans.body_offset = w.len();
    w.bytes(body);
    (w.into_vec(), spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(endian: Endian) -> Vec<u8> {
        let mut body = Writer::new(endian);
        body.string("hello");
        body.u32(7);
        encode(
            endian,
            METHOD_CALL,
            0,
            42,
            &HeaderFields {
                path: Some("/org/example"),
                interface: Some("org.example.I"),
                member: Some("Do"),
                destination: Some("org.example.Svc"),
                signature: Some("su"),
                ..Default::default()
            },
            &body.into_vec(),
        )
    }

    #[test]
    fn round_trip_in_both_byte_orders() {
        for endian in [Endian::Little, Endian::Big] {
            let bytes = call(endian);
            assert_eq!(total_length(&bytes[..16]).unwrap(), bytes.len());
            let m = Message::parse(bytes, vec![]).unwrap();
            assert_eq!(m.msg_type(), METHOD_CALL);
            assert_eq!(m.serial(), 42);
            assert_eq!(m.path(), Some("/org/example"));
            assert_eq!(m.interface(), Some("org.example.I"));
            assert_eq!(m.member(), Some("Do"));
            assert_eq!(m.destination(), Some("org.example.Svc"));
            assert_eq!(m.signature(), "su");
            let mut r = m.body_reader();
            assert_eq!(r.string().unwrap(), "hello");
            assert_eq!(r.u32().unwrap(), 7);
        }
    }

    #[test]
    fn forwarding_sets_sender_and_keeps_body() {
        for endian in [Endian::Little, Endian::Big] {
            let m = Message::parse(call(endian), vec![]).unwrap();
            let f = Message::parse(m.forwarded(":1.7"), vec![]).unwrap();
            assert_eq!(f.sender(), Some(":1.7"));
            assert_eq!(f.body(), m.body());
            assert_eq!(f.endian(), endian);
            assert_eq!(f.member(), Some("Do"));
        }
    }

    #[test]
    fn forwarding_under_a_name_that_is_none_gives_nothing() {
        for bad in ["", "no", ":1.\0", "a..b", "\u{e9}t\u{e9}.a"] {
            let m = Message::parse(call(Endian::Little), vec![]).unwrap();
            assert!(m.forward(bad).is_none(), "{bad:?}");
        }
        let m = Message::parse(call(Endian::Little), vec![]).unwrap();
        let long = format!("a.{}", "b".repeat(300));
        assert!(m.forward(&long).is_none(), "a name of 302 bytes");
    }

    /// A message with an extra header field of code 200 holding a variant.
    fn with_unknown_field() -> Vec<u8> {
        let mut w = Writer::new(Endian::Little);
        w.bytes(b"l\x04\x00\x01");
        w.u32(0);
        w.u32(9);
        let len_at = w.len();
        w.u32(0);
        let start = w.len();
        for (code, v) in [(1u8, "/p"), (2, "a.b"), (3, "M")] {
            w.align(8);
            w.u8(code);
            w.signature(if code == 1 { b"o" } else { b"s" });
            w.string(v);
        }
        w.align(8);
        w.u8(200);
        w.signature(b"v");
        w.signature(b"s");
        w.string("sneaky");
        let n = (w.len() - start) as u32;
        w.patch_u32(len_at, n);
        w.align(8);
        w.into_vec()
    }

    #[test]
    fn unknown_header_fields_are_dropped_when_forwarding() {
        let m = Message::parse(with_unknown_field(), vec![]).unwrap();
        let out = m.forwarded(":1.1");
        assert!(!out.windows(6).any(|w| w == b"sneaky"));
        let f = Message::parse(out, vec![]).unwrap();
        assert_eq!(f.member(), Some("M"));
        assert_eq!(f.sender(), Some(":1.1"));
        let forwarded = m.forward(":1.1").unwrap();
        assert!(forwarded.same_fields(&f), "{forwarded:?} against {f:?}");
    }

    fn expect_invalid(bytes: Vec<u8>) -> Error {
        Message::parse(bytes, vec![]).unwrap_err()
    }

    #[test]
    fn invalid_headers_are_rejected() {
        let good = call(Endian::Little);
        let mut b = good.clone();
        b[0] = b'x';
        assert_eq!(total_length(&b[..16]), Err(Error::ByteOrder(b'x')));
        let mut b = good.clone();
        b[3] = 2;
        assert_eq!(total_length(&b[..16]), Err(Error::Version(2)));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(expect_invalid(b), Error::ZeroSerial);
        let mut b = good.clone();
        b[1] = 0;
        assert_eq!(expect_invalid(b), Error::Type);
        let mut b = good.clone();
        b[4..8].copy_from_slice(&(MAX_MESSAGE_SIZE as u32).to_le_bytes());
        assert!(matches!(total_length(&b[..16]), Err(Error::TooLarge(_))));
    }

    /// Found by the `message` fuzz target: a fast-path frame hands parse whatever its sender
    /// wrote, so a length that disagrees with the header is an error, not a panic.
    #[test]
    fn a_length_that_disagrees_with_the_header_is_an_error() {
        let good = call(Endian::Little);
        let n = good.len();
        assert_eq!(
            expect_invalid(Vec::new()),
            Error::Length {
                announced: 16,
                got: 0
            }
        );
        assert_eq!(
            expect_invalid(good[..20].to_vec()),
            Error::Length {
                announced: n,
                got: 20
            }
        );
        let mut long = good.clone();
        long.extend_from_slice(&[0; 8]);
        assert_eq!(
            expect_invalid(long),
            Error::Length {
                announced: n,
                got: n + 8
            }
        );
    }

    #[test]
    fn required_fields_and_names_are_checked() {
        let enc = |t: u8, f: HeaderFields<'_>| encode(Endian::Little, t, 0, 1, &f, &[]);
        let sig = HeaderFields {
            path: Some("/"),
            member: Some("M"),
            ..Default::default()
        };
        assert_eq!(
            expect_invalid(enc(SIGNAL, sig)),
            Error::MissingField("INTERFACE")
        );
        assert_eq!(
            expect_invalid(enc(
                METHOD_CALL,
                HeaderFields {
                    path: Some("/"),
                    ..Default::default()
                }
            )),
            Error::MissingField("MEMBER")
        );
        assert_eq!(
            expect_invalid(enc(METHOD_RETURN, HeaderFields::default())),
            Error::MissingField("REPLY_SERIAL")
        );
        assert_eq!(
            expect_invalid(enc(
                ERROR,
                HeaderFields {
                    reply_serial: Some(1),
                    ..Default::default()
                }
            )),
            Error::MissingField("ERROR_NAME")
        );
        let bad_member = HeaderFields {
            path: Some("/"),
            member: Some("a.b"),
            ..Default::default()
        };
        assert_eq!(
            expect_invalid(enc(METHOD_CALL, bad_member)),
            Error::InvalidName("member")
        );
        let bad_path = HeaderFields {
            path: Some("/a/"),
            member: Some("M"),
            ..Default::default()
        };
        assert_eq!(
            expect_invalid(enc(METHOD_CALL, bad_path)),
            Error::InvalidName("object path")
        );
        let local = HeaderFields {
            path: Some(LOCAL_PATH),
            member: Some("M"),
            ..Default::default()
        };
        assert_eq!(expect_invalid(enc(METHOD_CALL, local)), Error::Local);
        let bad_dest = HeaderFields {
            path: Some("/"),
            member: Some("M"),
            destination: Some("nodots"),
            ..Default::default()
        };
        assert_eq!(
            expect_invalid(enc(METHOD_CALL, bad_dest)),
            Error::InvalidName("destination")
        );
        // Unknown message types are accepted by the parser.
        assert!(Message::parse(enc(9, HeaderFields::default()), vec![]).is_ok());
    }

    #[test]
    fn body_without_signature_is_invalid() {
        let b = encode(
            Endian::Little,
            SIGNAL,
            0,
            1,
            &HeaderFields {
                path: Some("/"),
                interface: Some("a.b"),
                member: Some("M"),
                ..Default::default()
            },
            &[1, 2, 3, 4],
        );
        assert_eq!(
            expect_invalid(b),
            Error::Malformed("body without signature")
        );
    }

    /// Found by the `message` fuzz target: an empty SIGNATURE field with a body was taken,
    /// and the bus's re-encoding (which leaves empty signatures out) then refused it.
    #[test]
    fn an_empty_signature_field_means_no_body() {
        let mut w = Writer::with_capacity(Endian::Little, 64);
        for b in [b'l', SIGNAL, 0, 1] {
            w.u8(b);
        }
        w.u32(4);
        w.u32(1);
        let fields_len_at = w.len();
        w.u32(0);
        let start = w.len();
        for (code, value) in [
            (FIELD_PATH, "/a"),
            (FIELD_INTERFACE, "a.b"),
            (FIELD_MEMBER, "M"),
        ] {
            w.align(8);
            w.u8(code);
            w.signature(if code == FIELD_PATH { b"o" } else { b"s" });
            w.string(value);
        }
        w.align(8);
        w.u8(FIELD_SIGNATURE);
        w.signature(b"g");
        w.signature(b"");
        let fields_len = (w.len() - start) as u32;
        w.patch_u32(fields_len_at, fields_len);
        w.align(8);
        w.bytes(&[1, 2, 3, 4]);
        assert_eq!(
            expect_invalid(w.into_vec()),
            Error::Malformed("body without signature")
        );
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics_on_arbitrary_bytes(mut data in proptest::collection::vec(proptest::num::u8::ANY, 16..512)) {
            data[0] = b'l';
            data[3] = 1;
            if let Ok(n) = total_length(&data[..16]) {
                if n <= data.len() {
                    data.truncate(n);
                    let _ = Message::parse(data, vec![]);
                }
            }
        }

        /// `forward` works out where the fields of the message it builds lie instead of
        /// parsing it: it must see exactly what parsing its bytes sees.
        #[test]
        fn a_forwarded_message_is_what_parsing_its_bytes_gives(
            big in proptest::bool::ANY,
            ty in 1u8..=5,
            flags in proptest::num::u8::ANY,
            serial in 1u32..,
            path in proptest::option::of("(/[a-z_]{1,6}){0,3}"),
            interface in proptest::option::of("[a-z]{1,5}\\.[A-Za-z_]{1,9}"),
            member in proptest::option::of("[A-Za-z_][A-Za-z0-9_]{0,12}"),
            error_name in proptest::option::of("[a-z]{1,5}\\.[A-Z][a-z]{0,9}"),
            reply_serial in proptest::option::of(1u32..),
            destination in proptest::option::of("(:1\\.[0-9]{1,4}|[a-z]{1,6}\\.[a-z]{1,6})"),
            sender in proptest::option::of(":1\\.[0-9]{1,4}"),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            unix_fds in 0u32..3,
            new_sender in "(:1\\.[0-9]{1,6}|org\\.freedesktop\\.DBus)",
        ) {
            let endian = if big { Endian::Big } else { Endian::Little };
            let path = path.map(|p| if p.is_empty() { "/".to_string() } else { p });
            let signature = (!body.is_empty()).then_some("ay");
            let mut b = Writer::new(endian);
            if !body.is_empty() {
                b.u32(body.len() as u32);
                b.bytes(&body);
            }
            let bytes = encode(endian, ty, flags, serial, &HeaderFields {
                path: path.as_deref(),
                interface: interface.as_deref(),
                member: member.as_deref(),
                error_name: error_name.as_deref(),
                reply_serial,
                destination: destination.as_deref(),
                sender: sender.as_deref(),
                signature,
                unix_fds,
            }, &b.into_vec());
            // (Generated headers may lack what their type requires: those are not messages.)
            if let Ok(m) = Message::parse(bytes, vec![]) {
                let expected = m.forwarded(&new_sender);
                let f = m.forward(&new_sender).expect("forwarded");
                let parsed = Message::parse(f.bytes().to_vec(), vec![]).expect("parses");
                proptest::prop_assert!(parsed.same_fields(&f), "{f:?} parses as {parsed:?}");
                proptest::prop_assert_eq!(f.sender(), Some(new_sender.as_str()));
                proptest::prop_assert_eq!(f.bytes(), &expected[..]);
            }
        }

        #[test]
        fn parser_never_panics_on_mutated_messages(pos in 0usize..200, val in proptest::num::u8::ANY) {
            let mut b = call(Endian::Little);
            let p = pos % b.len();
            b[p] = val;
            if let Ok(n) = total_length(&b[..16]) {
                if n == b.len() {
                    let _ = Message::parse(b, vec![]);
                }
            }
        }
    }
}
