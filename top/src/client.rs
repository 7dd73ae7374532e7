//! A blocking D-Bus client of the bus driver: connects to a unix address (`path=` or
//! `abstract=`), authenticates with EXTERNAL, says Hello and calls driver methods.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

use busd_wire::address::ListenAddress;
use busd_wire::marshal::{Endian, Writer};
use busd_wire::message::{self, encode, HeaderFields, Message};

pub const DBUS_NAME: &str = "org.freedesktop.DBus";
pub const DBUS_INTERFACE: &str = "org.freedesktop.DBus";

/// What goes wrong, said in one line to the person who ran busd-top.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Address(#[from] busd_wire::address::Error),
    #[error("no unix:path= or unix:abstract= address in \"{0}\"")]
    NoClientAddress(String),
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("the bus refused authentication ({0})")]
    Refused(String),
    /// The driver answered a call with an error.
    #[error("{method}: {name}: {text}")]
    Call {
        method: String,
        name: String,
        text: String,
    },
    #[error("connection to the bus lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("the bus sent a malformed message")]
    Malformed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// One connection to a bus, after Hello.
pub struct Client {
    stream: UnixStream,
    serial: u32,
    /// The unique name Hello gave.
    pub unique: String,
}

/// The first entry of a `;`-separated address list that a client can connect to.
fn connectable(address: &str) -> Result<(String, SocketAddr)> {
    let mut first_error = None;
    for entry in address.split(';').filter(|e| !e.is_empty()) {
        let addr = match ListenAddress::parse(entry) {
            Ok(ListenAddress::Path(p)) => SocketAddr::from_pathname(p),
            Ok(ListenAddress::Abstract(name)) => SocketAddr::from_abstract_name(name.as_bytes()),
            Ok(_) => continue,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let addr = addr.map_err(|source| Error::Connect {
            address: entry.to_string(),
            source,
        })?;
        return Ok((entry.to_string(), addr));
    }
    Err(match first_error {
        Some(e) => e.into(),
        None => Error::NoClientAddress(address.to_string()),
    })
}

impl Client {
    pub fn connect(address: &str) -> Result<Client> {
        let (entry, addr) = connectable(address)?;
        let mut stream = UnixStream::connect_addr(&addr).map_err(|source| Error::Connect {
            address: entry.clone(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        stream.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if stream.read(&mut byte)? == 0 {
                return Err(Error::Refused("it closed the connection".into()));
            }
            line.push(byte[0]);
            if line.len() > 4096 {
                return Err(Error::Malformed);
            }
        }
        if !line.starts_with(b"OK ") {
            return Err(Error::Refused(
                String::from_utf8_lossy(&line).trim().to_string(),
            ));
        }
        stream.write_all(b"BEGIN\r\n")?;
        let mut c = Client {
            stream,
            serial: 0,
            unique: String::new(),
        };
        let hello = c.call(DBUS_INTERFACE, "Hello", None)?;
        c.unique = hello
            .body_reader()
            .string()
            .map_err(|_| Error::Malformed)?
            .to_string();
        Ok(c)
    }

    /// Calls a driver method with no argument or one string; returns the reply.
    pub fn call(&mut self, iface: &str, member: &str, arg: Option<&str>) -> Result<Message> {
        self.serial += 1;
        let mut body = Writer::new(Endian::Little);
        if let Some(a) = arg {
            body.string(a);
        }
        let f = HeaderFields {
            path: Some("/org/freedesktop/DBus"),
            interface: Some(iface),
            member: Some(member),
            destination: Some(DBUS_NAME),
            signature: arg.map(|_| "s"),
            ..Default::default()
        };
        let bytes = encode(
            Endian::Little,
            message::METHOD_CALL,
            0,
            self.serial,
            &f,
            &body.into_vec(),
        );
        self.stream.write_all(&bytes)?;
        loop {
            let mut fixed = [0u8; message::FIXED_HEADER_SIZE];
            self.stream.read_exact(&mut fixed)?;
            let total = message::total_length(&fixed).map_err(|_| Error::Malformed)?;
            let mut all = fixed.to_vec();
            all.resize(total, 0);
            self.stream
                .read_exact(&mut all[message::FIXED_HEADER_SIZE..])?;
            let msg = Message::parse(all, Vec::new()).map_err(|_| Error::Malformed)?;
            if msg.reply_serial() != Some(self.serial) {
                continue; // a signal (NameAcquired...)
            }
            if msg.msg_type() == message::ERROR {
                return Err(Error::Call {
                    method: member.to_string(),
                    name: msg.error_name().unwrap_or("").to_string(),
                    text: msg.body_reader().string().unwrap_or("").to_string(),
                });
            }
            return Ok(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_first_address_a_client_can_use() {
        let (entry, addr) = connectable("unix:tmpdir=/tmp;unix:abstract=b%20x,guid=01").unwrap();
        assert_eq!(entry, "unix:abstract=b%20x,guid=01");
        assert_eq!(addr.as_abstract_name(), Some(&b"b x"[..]));
        let (_, addr) = connectable("unix:path=/run/a").unwrap();
        assert_eq!(addr.as_pathname(), Some(std::path::Path::new("/run/a")));
        assert_eq!(
            connectable("nonsense").unwrap_err().to_string(),
            "invalid address \"nonsense\": no transport"
        );
        assert_eq!(
            connectable("unix:runtime=yes").unwrap_err().to_string(),
            "no unix:path= or unix:abstract= address in \"unix:runtime=yes\""
        );
    }
}
