//! A raw fast-path member for the end-to-end tests: a zbus connection that joined, and
//! the datagram socket, table and directory the bus handed it, so that a test builds every
//! frame itself (as a hostile member would) instead of going through busd-shim.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use busd_match::header::{self, Fields, HEADER_LEN};
use busd_match::protocol::{self, JoinFds, JoinReply};
use busd_match::table::{self, Table};
use busd_wire::marshal::Endian;
use busd_wire::message::encode;
use busd_wire::message::HeaderFields;
use zbus::{Connection, MatchRule};

use crate::{zbus_connect, Busd};

pub struct Member {
    pub conn: Connection,
    pub unique: String,
    pub id: u32,
    pub dir: PathBuf,
    pub socket: UnixDatagram,
    /// Its end of the pair of sockets to the daemon's inbox for it.
    pub inbox: UnixDatagram,
    pub table: std::fs::File,
    /// The progress memory, writable as every member gets it.
    pub progress: std::fs::File,
}

pub async fn join(conn: &Connection) -> zbus::Result<zbus::Message> {
    conn.call_method(
        Some("org.freedesktop.DBus"),
        protocol::PATH,
        Some(protocol::INTERFACE),
        protocol::JOIN,
        &(),
    )
    .await
}

/// `Ready`: the member set up what Join gave it (others may now send to it directly).
pub async fn ready(conn: &Connection) -> zbus::Result<zbus::Message> {
    conn.call_method(
        Some("org.freedesktop.DBus"),
        protocol::PATH,
        Some(protocol::INTERFACE),
        protocol::READY,
        &(),
    )
    .await
}

/// A connection that joined the fast path and said it is ready.
pub async fn member(bus: &Busd) -> Member {
    let m = unready_member(bus).await;
    ready(&m.conn).await.unwrap();
    m
}

/// A connection that joined the fast path and did not say it is ready.
pub async fn unready_member(bus: &Busd) -> Member {
    let conn = zbus_connect(bus).await;
    let reply = join(&conn).await.unwrap();
    // Read as the shim reads it: the named layout, then the fds in their order.
    let data = reply.data();
    let parsed = busd_wire::Message::parse(data.bytes().to_vec(), Vec::new()).unwrap();
    let JoinReply {
        member: id,
        directory: dir,
        ..
    } = JoinReply::decode(&mut parsed.body_reader()).unwrap();
    let fds = data
        .fds()
        .iter()
        .map(|f| f.as_fd().try_clone_to_owned().unwrap());
    let JoinFds {
        socket,
        inbox,
        table,
        progress,
    } = JoinFds::from_vec(fds.collect()).unwrap();
    let socket = UnixDatagram::from(socket);
    socket.set_nonblocking(true).unwrap();
    let inbox = UnixDatagram::from(inbox);
    Member {
        unique: conn.unique_name().unwrap().to_string(),
        conn,
        id,
        dir: PathBuf::from(dir),
        socket,
        inbox,
        table: std::fs::File::from(table),
        progress: std::fs::File::from(progress),
    }
}

impl Member {
    /// The routing table as published now.
    pub fn table(&self) -> Table {
        for _ in 0..100 {
            let mut raw = vec![0u8; table::PREFIX_LEN + 64 * 1024];
            let n = self.table.read_at(&mut raw, 0).unwrap();
            raw.truncate(n - n % 8);
            let words: Vec<AtomicU64> = raw
                .chunks(8)
                .map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().unwrap())))
                .collect();
            let mut body = Vec::new();
            if let Ok(Some(_)) = table::read(&words, &mut body) {
                return Table::decode(&body).unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no consistent routing table");
    }

    /// Waits until the table satisfies `ok` (it is republished after each event).
    pub async fn table_until(&self, ok: impl Fn(&Table) -> bool) -> Table {
        for _ in 0..200 {
            let t = self.table();
            if ok(&t) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the routing table never got there: {:?}", self.table());
    }

    /// A frame: routing header for `destination` (0: a broadcast), then a
    /// message that names this member as its SENDER unless `sender` says otherwise.
    pub fn frame(
        &self,
        kind: u8,
        destination: u32,
        dest_name: Option<&str>,
        member: &str,
    ) -> Vec<u8> {
        self.frame_as(&self.unique, kind, destination, dest_name, member)
    }

    pub fn frame_as(
        &self,
        sender: &str,
        kind: u8,
        destination: u32,
        dest_name: Option<&str>,
        member: &str,
    ) -> Vec<u8> {
        let (path, iface) = if dest_name == Some("org.freedesktop.DBus") {
            ("/org/freedesktop/DBus", "org.freedesktop.DBus")
        } else {
            ("/org/example", "org.example.Fast")
        };
        let f = HeaderFields {
            path: Some(path),
            interface: Some(iface),
            member: Some(member),
            destination: dest_name,
            sender: Some(sender),
            ..Default::default()
        };
        let msg = encode(Endian::Little, kind, 0, 77, &f, &[]);
        let mut out = [0u8; HEADER_LEN];
        header::encode(
            &Fields {
                msg_type: kind,
                flags: 0,
                sender: self.id,
                destination,
                interface: Some(iface),
                member: Some(member),
                path: Some(path),
            },
            &[],
            &mut out,
        );
        [&out[..], &msg].concat()
    }

    pub fn send_to(&self, member: u32, frame: &[u8]) -> std::io::Result<usize> {
        self.socket
            .send_to(frame, self.dir.join(member.to_string()))
    }

    /// Turns a frame into one whose message is in a memfd (`seal`: sealed as required),
    /// announcing `len` bytes (None: the message's length); returns the frame and the memfd.
    pub fn in_memfd(frame: &[u8], seal: bool, len: Option<u64>) -> (Vec<u8>, OwnedFd) {
        let message = &frame[HEADER_LEN..];
        let memfd = if seal {
            busd_match::sealed::seal(message).unwrap()
        } else {
            // SAFETY: a valid name; the result is checked.
            let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(raw >= 0);
            // SAFETY: a new descriptor nobody else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            let mut file = std::fs::File::from(fd);
            std::io::Write::write_all(&mut file, message).unwrap();
            file.into()
        };
        let mut head = frame[..HEADER_LEN].to_vec();
        head[header::OFF_KIND as usize + 3] |= header::ROUTE_MEMFD;
        let len = len.unwrap_or(message.len() as u64);
        ([&head[..], &len.to_be_bytes()[..]].concat(), memfd)
    }

    /// Sends a frame with descriptors to `path` in the bus's directory.
    pub fn send_with_fds(&self, to: &str, frame: &[u8], fds: &[std::os::fd::RawFd]) {
        use nix::sys::socket::{MsgFlags, UnixAddr};
        let addr = UnixAddr::new(&self.dir.join(to)).unwrap();
        busd_wire::fds::send(
            self.socket.as_raw_fd(),
            &[std::io::IoSlice::new(frame)],
            fds,
            MsgFlags::empty(),
            Some(&addr),
        )
        .unwrap();
    }

    pub fn send_to_daemon(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.inbox.send(frame)
    }

    /// Sends the daemon a frame with descriptors.
    pub fn send_to_daemon_with_fds(&self, frame: &[u8], fds: &[std::os::fd::RawFd]) {
        busd_wire::fds::send(
            self.inbox.as_raw_fd(),
            &[std::io::IoSlice::new(frame)],
            fds,
            nix::sys::socket::MsgFlags::empty(),
            None::<&nix::sys::socket::UnixAddr>,
        )
        .unwrap();
    }

    /// The next datagram on this member's socket, waiting up to 5 s.
    pub async fn receive(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        for _ in 0..500 {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return buf;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("nothing arrived on member {}'s socket", self.id);
    }

    /// Bytes waiting in this member's socket queue (SIOCINQ).
    pub fn queued(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer.
        let r = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(r, 0);
        n as usize
    }
}

pub async fn add_match(conn: &Connection, rule: &str) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
    dbus.add_match_rule(MatchRule::try_from(rule).unwrap())
        .await
        .unwrap();
}

pub async fn remove_match(conn: &Connection, rule: &str) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
    dbus.remove_match_rule(MatchRule::try_from(rule).unwrap())
        .await
        .unwrap();
}

pub fn timeout<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(20), f)
}

/// A zbus connection through busd-shim on the fast path, with `options` added to the
/// address.
pub async fn shim(bus: &Busd, options: &str) -> Connection {
    shim_builder(bus, options).await.build().await.unwrap()
}

/// The builder of such a connection, to add to it (names, served objects).
pub async fn shim_builder(bus: &Busd, options: &str) -> zbus::connection::Builder<'static> {
    busd_shim::builder(&format!("{},fastpath=1{options}", bus.address))
        .await
        .unwrap()
}

pub fn member_id(conn: &Connection) -> u32 {
    let n: u32 = conn.unique_name().unwrap()[3..].parse().unwrap();
    n + 1
}

/// A frame carrying `message` (D-Bus bytes, SENDER as the caller wants it), with the
/// routing header's sender word `sender` and destination word `destination` (0: a
/// broadcast), as a member's shim would build it, or a hostile member without one.
pub fn frame_for(sender: u32, destination: u32, message: &[u8]) -> Vec<u8> {
    let msg = busd_wire::Message::parse(message.to_vec(), Vec::new()).expect("a valid message");
    let mut out = [0u8; HEADER_LEN];
    header::encode(
        &Fields {
            msg_type: msg.msg_type(),
            flags: msg.flags(),
            sender,
            destination,
            interface: msg.interface(),
            member: msg.member(),
            path: msg.path(),
        },
        &msg.args(),
        &mut out,
    );
    [&out[..], message].concat()
}

/// A method call's bytes: `member` of `interface` at `path` on `destination`, from
/// `sender`, with serial `serial` and one string argument `arg` (if any).
pub fn call_bytes(
    sender: &str,
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    serial: u32,
    arg: Option<&str>,
) -> Vec<u8> {
    let mut body = busd_wire::marshal::Writer::new(Endian::Little);
    if let Some(a) = arg {
        body.string(a);
    }
    let f = HeaderFields {
        path: Some(path),
        interface: Some(interface),
        member: Some(member),
        destination: Some(destination),
        sender: Some(sender),
        signature: arg.map(|_| "s"),
        ..Default::default()
    };
    encode(
        Endian::Little,
        busd_wire::message::METHOD_CALL,
        0,
        serial,
        &f,
        &body.into_vec(),
    )
}
