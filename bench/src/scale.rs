//! Scale scenarios (`--scale`; DESIGN 8, issue 18): what a bus costs at the size of a real
//! desktop session. Many raw clients (a socket each: authentication, Hello and their
//! AddMatch calls written at once, the replies read back) stand for the session's idle
//! connections and their rules; the measured traffic then runs beside them with the same
//! zbus clients as every other scenario.
//!
//! - *idle*: N idle connections, then the method-call round trip (daemon CPU per call);
//! - *unrelated rules*: N rules of one shape that never match the traffic (10 per client),
//!   then signals to one matching subscriber (daemon CPU per signal);
//! - *login storm*: N clients connecting and adding 10 rules each, timed as a whole.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The shapes of rules that never match the measured signals (member `Tick` of
/// `org.bench.Fan` at `/org/bench/Fan`, first argument a u64), one of each kind a rule can
/// have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The same interface, another member.
    Member,
    /// The same member, another arg0.
    Arg0,
    /// Another path.
    Path,
    /// Another path namespace.
    PathNamespace,
    /// Another arg0 namespace.
    Arg0Namespace,
    /// Another sender (a name nobody owns).
    Sender,
}

impl Shape {
    pub const ALL: [Shape; 6] = [
        Shape::Member,
        Shape::Arg0,
        Shape::Path,
        Shape::PathNamespace,
        Shape::Arg0Namespace,
        Shape::Sender,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Member => "same interface, other member",
            Shape::Arg0 => "same member, other arg0",
            Shape::Path => "other path",
            Shape::PathNamespace => "other path_namespace",
            Shape::Arg0Namespace => "other arg0namespace",
            Shape::Sender => "other sender",
        }
    }

    /// Rule `j` of client `i`.
    fn rule(self, i: usize, j: usize) -> String {
        let n = format!("{i}_{j}");
        match self {
            Shape::Member => {
                format!("type='signal',interface='org.bench.Fan',member='Other{n}'")
            }
            Shape::Arg0 => format!("type='signal',member='Tick',arg0='nope{n}'"),
            Shape::Path => format!("type='signal',path='/org/bench/other/p{n}'"),
            Shape::PathNamespace => format!("type='signal',path_namespace='/org/bench/ns{n}'"),
            Shape::Arg0Namespace => format!("type='signal',arg0namespace='org.nope{n}'"),
            Shape::Sender => format!("type='signal',sender='org.bench.Nobody{n}'"),
        }
    }
}

/// Rules per raw client.
pub const RULES_EACH: usize = 10;

/// The bus socket's path in a `unix:path=` address.
fn socket_path(address: &str) -> Result<&str> {
    address
        .strip_prefix("unix:path=")
        .map(|p| p.split(',').next().unwrap_or(p))
        .context("scale scenarios need a unix:path= address")
}

/// A method call to the bus, as bytes (little-endian; no SENDER: the bus stamps it).
fn call(serial: u32, member: &str, arg: Option<&str>) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>, to: usize) {
        while !v.len().is_multiple_of(to) {
            v.push(0);
        }
    }
    let mut fields = Vec::new();
    let mut field = |code: u8, sig: u8, value: &str| {
        pad(&mut fields, 8);
        fields.extend_from_slice(&[code, 1, sig, 0]);
        fields.extend_from_slice(&(value.len() as u32).to_le_bytes());
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    };
    field(1, b'o', "/org/freedesktop/DBus");
    field(2, b's', "org.freedesktop.DBus");
    field(3, b's', member);
    field(6, b's', "org.freedesktop.DBus");
    let mut body = Vec::new();
    if let Some(a) = arg {
        pad(&mut fields, 8);
        fields.extend_from_slice(&[8, 1, b'g', 0, 1, b's', 0]);
        body.extend_from_slice(&(a.len() as u32).to_le_bytes());
        body.extend_from_slice(a.as_bytes());
        body.push(0);
    }
    let mut m = vec![b'l', 1, 0, 1];
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(&serial.to_le_bytes());
    m.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    m.extend_from_slice(&fields);
    pad(&mut m, 8);
    m.extend_from_slice(&body);
    m
}

/// Reads from `s` until `replies` method returns or errors arrived (after the SASL OK).
fn read_replies(s: &mut UnixStream, replies: usize) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut at = None;
    let mut got = 0;
    while got < replies {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("the bus closed a client's connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = match at {
            Some(p) => p,
            None => match buf.windows(2).position(|w| w == b"\r\n") {
                Some(end) if buf.starts_with(b"OK ") => end + 2,
                Some(_) => bail!("authentication refused"),
                None => continue,
            },
        };
        while buf.len() >= pos + 16 {
            let word = |o: usize| u32::from_le_bytes(buf[pos + o..pos + o + 4].try_into().unwrap());
            let fields = word(12) as usize;
            let len = 16 + fields.next_multiple_of(8) + word(4) as usize;
            if buf.len() < pos + len {
                break;
            }
            if matches!(buf[pos + 1], 2 | 3) {
                got += 1;
            }
            pos += len;
        }
        at = Some(pos);
    }
    Ok(())
}

/// `n` raw clients of the bus at `address`, each with `rules` rules of `shape` (accepted by
/// the bus before this returns), and how long that took.
pub fn clients(
    address: &str,
    n: usize,
    rules: usize,
    shape: Shape,
) -> Result<(Vec<UnixStream>, Duration)> {
    let path = socket_path(address)?;
    let uid: String = nix::unistd::getuid()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let start = Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = UnixStream::connect(path).context("connecting a raw client")?;
        let mut bytes = format!("\0AUTH EXTERNAL {uid}\r\nBEGIN\r\n").into_bytes();
        bytes.extend(call(1, "Hello", None));
        for j in 0..rules {
            bytes.extend(call(2 + j as u32, "AddMatch", Some(&shape.rule(i, j))));
        }
        s.write_all(&bytes)?;
        read_replies(&mut s, 1 + rules)?;
        out.push(s);
    }
    Ok((out, start.elapsed()))
}

/// How long a bus with `rules` rules may take to settle after they were added: busd
/// compiles its fast-path filter once, 200 ms (or 20 us per rule) after the last change.
pub fn settle(rules: usize) -> Duration {
    Duration::from_millis(300).max(Duration::from_micros(30 * rules as u64))
}

/// Raises this process's descriptor limit as far as it may go (10,000 clients need it).
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_well_formed_d_bus_messages() {
        let m = call(7, "AddMatch", Some("type='signal'"));
        assert_eq!(&m[..4], &[b'l', 1, 0, 1]);
        let fields = u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize;
        let body = u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(m.len(), 16 + fields.next_multiple_of(8) + body);
        assert_eq!(body, 4 + "type='signal'".len() + 1);
    }
}
