//! D-Bus server addresses (specification, "Server Addresses") for the unix transport.

use std::fmt;

/// One listen address, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Path(String),
    Abstract(String),
    /// A new socket with a random name in this directory (`tmpdir=` and `dir=`).
    Dir(String),
    /// `$XDG_RUNTIME_DIR/bus`.
    Runtime,
    /// `systemd:`: the listening sockets systemd passed (socket activation, LISTEN_FDS).
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address \"{address}\": {reason}")]
pub struct Error {
    pub address: String,
    pub reason: String,
}

/// Decodes `%xx` escapes of an address value.
pub fn unescape(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes an address value: everything but `[-0-9A-Za-z_/.\*]` becomes `%xx`.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for &c in v.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-_/.\\*".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02x}"));
        }
    }
    out
}

impl ListenAddress {
    /// Parses a `;`-separated list of addresses.
    pub fn parse_list(s: &str) -> Result<Vec<ListenAddress>, Error> {
        s.split(';')
            .filter(|a| !a.is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn parse(s: &str) -> Result<ListenAddress, Error> {
        let err = |reason: &str| Error {
            address: s.to_string(),
            reason: reason.to_string(),
        };
        let (transport, params) = s.split_once(':').ok_or_else(|| err("no transport"))?;
        if transport == "systemd" {
            if !params.is_empty() {
                return Err(err("systemd: takes no parameters"));
            }
            return Ok(ListenAddress::Systemd);
        }
        if transport != "unix" {
            return Err(err("only the unix transport is supported"));
        }
        let mut found = None;
        for kv in params.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err("parameter without '='"))?;
            let v = unescape(v).ok_or_else(|| err("bad %-escape"))?;
            let a = match k {
                "path" => ListenAddress::Path(v),
                "abstract" => ListenAddress::Abstract(v),
                "tmpdir" | "dir" => ListenAddress::Dir(v),
                "runtime" if v == "yes" => ListenAddress::Runtime,
                "runtime" => return Err(err("runtime must be 'yes'")),
                // The guid a client may name is not ours to check at listen time.
                "guid" => continue,
                _ => return Err(err(&format!("unknown key '{k}'"))),
            };
            if found.replace(a).is_some() {
                return Err(err(
                    "more than one of path, abstract, tmpdir, dir and runtime",
                ));
            }
        }
        found.ok_or_else(|| err("needs one of path, abstract, tmpdir, dir or runtime"))
    }
}

/// A concrete address clients can connect to, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddress {
    Path(String),
    Abstract(String),
}

impl fmt::Display for BoundAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundAddress::Path(p) => write!(f, "unix:path={}", escape(p)),
            BoundAddress::Abstract(p) => write!(f, "unix:abstract={}", escape(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unix_form() {
        assert_eq!(
            ListenAddress::parse("systemd:").unwrap(),
            ListenAddress::Systemd
        );
        assert!(ListenAddress::parse("systemd:x=1").is_err());
        assert_eq!(
            ListenAddress::parse_list("unix:path=/tmp/a%20b;unix:abstract=x;unix:tmpdir=/tmp;unix:dir=/run;unix:runtime=yes").unwrap(),
            vec![
                ListenAddress::Path("/tmp/a b".into()),
                ListenAddress::Abstract("x".into()),
                ListenAddress::Dir("/tmp".into()),
                ListenAddress::Dir("/run".into()),
                ListenAddress::Runtime,
            ]
        );
    }

    #[test]
    fn rejects_what_it_cannot_listen_on() {
        for bad in [
            "tcp:host=localhost",
            "unix:",
            "unix:path=/a,abstract=b",
            "unix:foo=bar",
            "unix:path=%zz",
            "unix:runtime=no",
            "nocolon",
        ] {
            assert!(ListenAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bound_addresses_print_escaped() {
        assert_eq!(
            BoundAddress::Path("/tmp/a b".into()).to_string(),
            "unix:path=/tmp/a%20b"
        );
        assert_eq!(unescape(&escape("/x,y=z;")).unwrap(), "/x,y=z;");
    }
}
