//! Messages the bus driver sends: replies, errors and signals from `org.freedesktop.DBus`,
//! and the few calls it makes itself (to systemd).

use busd_wire::marshal::{Endian, Writer};
use busd_wire::message::{self, HeaderFields, FLAG_NO_REPLY_EXPECTED};

use super::{DBUS_INTERFACE, DBUS_NAME, DBUS_PATH};

#[derive(Debug)]
enum Kind<'a> {
    Reply {
        reply_serial: u32,
    },
    Error {
        reply_serial: u32,
        name: &'a str,
    },
    Signal {
        path: &'a str,
        interface: &'a str,
        member: &'a str,
    },
    Call {
        path: &'a str,
        interface: &'a str,
        member: &'a str,
    },
}

/// A message from the driver, before it gets a serial and a destination.
#[derive(Debug)]
pub struct DriverMessage<'a> {
    kind: Kind<'a>,
    body: Vec<u8>,
    signature: &'a str,
}

impl<'a> DriverMessage<'a> {
    pub fn reply(reply_serial: u32, body: Vec<u8>, signature: &'a str) -> Self {
        DriverMessage {
            kind: Kind::Reply { reply_serial },
            body,
            signature,
        }
    }

    pub fn error(reply_serial: u32, name: &'a str, text: &str) -> Self {
        DriverMessage {
            kind: Kind::Error { reply_serial, name },
            body: body_s(text),
            signature: "s",
        }
    }

    /// The error `e` in reply to the call with serial `reply_serial`.
    pub fn failure(reply_serial: u32, e: &'a super::error::DriverError) -> Self {
        Self::error(reply_serial, e.dbus_name(), &e.text)
    }

    pub fn signal(member: &'a str, body: Vec<u8>, signature: &'a str) -> Self {
        Self::signal_on(DBUS_PATH, DBUS_INTERFACE, member, body, signature)
    }

    /// A signal on another interface (systemd's ActivationRequest).
    pub fn signal_on(
        path: &'a str,
        interface: &'a str,
        member: &'a str,
        body: Vec<u8>,
        signature: &'a str,
    ) -> Self {
        DriverMessage {
            kind: Kind::Signal {
                path,
                interface,
                member,
            },
            body,
            signature,
        }
    }

    /// A method call from the bus; like all its messages, it expects no reply.
    pub fn call(
        path: &'a str,
        interface: &'a str,
        member: &'a str,
        body: Vec<u8>,
        signature: &'a str,
    ) -> Self {
        DriverMessage {
            kind: Kind::Call {
                path,
                interface,
                member,
            },
            body,
            signature,
        }
    }

    pub fn encode(&self, serial: u32, destination: Option<&str>) -> Vec<u8> {
        self.encode_with_fds(serial, destination, 0)
    }

    /// As [`DriverMessage::encode`], for a body that refers to `unix_fds` descriptors.
    pub fn encode_with_fds(
        &self,
        serial: u32,
        destination: Option<&str>,
        unix_fds: u32,
    ) -> Vec<u8> {
        let mut f = HeaderFields {
            destination,
            sender: Some(DBUS_NAME),
            signature: Some(self.signature),
            unix_fds,
            ..Default::default()
        };
        let ty = match self.kind {
            Kind::Reply { reply_serial } => {
                f.reply_serial = Some(reply_serial);
                message::METHOD_RETURN
            }
            Kind::Error { reply_serial, name } => {
                f.reply_serial = Some(reply_serial);
                f.error_name = Some(name);
                message::ERROR
            }
            Kind::Signal {
                path,
                interface,
                member,
            } => {
                f.path = Some(path);
                f.interface = Some(interface);
                f.member = Some(member);
                message::SIGNAL
            }
            Kind::Call {
                path,
                interface,
                member,
            } => {
                f.path = Some(path);
                f.interface = Some(interface);
                f.member = Some(member);
                message::METHOD_CALL
            }
        };
        message::encode(
            Endian::Little,
            ty,
            FLAG_NO_REPLY_EXPECTED,
            serial,
            &f,
            &self.body,
        )
    }
}

pub fn writer() -> Writer {
    Writer::new(Endian::Little)
}

pub fn body_s(s: &str) -> Vec<u8> {
    let mut w = writer();
    w.string(s);
    w.into_vec()
}

pub fn body_sss(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut w = writer();
    w.string(a);
    w.string(b);
    w.string(c);
    w.into_vec()
}

pub fn body_u(v: u32) -> Vec<u8> {
    let mut w = writer();
    w.u32(v);
    w.into_vec()
}

pub fn body_b(v: bool) -> Vec<u8> {
    let mut w = writer();
    w.bool(v);
    w.into_vec()
}

pub fn body_as<'s>(items: impl IntoIterator<Item = &'s str>) -> Vec<u8> {
    let mut w = writer();
    w.string_array(items);
    w.into_vec()
}
