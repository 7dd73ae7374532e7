//! Joining the fast path (DESIGN 5.1): the `Join` call, and the member made from the
//! daemon's answer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use busd_match::progress;
use busd_match::protocol::{self, JoinFds, JoinReply};
use busd_match::shm::Mapping;
use busd_wire::message::{self as wire, Message};
use nix::sys::socket;
use tokio::sync::Notify;

use crate::backlog::Service;
use crate::causal::Progress;
use crate::figures::{Counters, Publisher};
use crate::member::Member;
use crate::table::TableView;

/// Senders raise their send buffer as far as the system allows: every unread datagram
/// stays charged to it (DESIGN 4).
const SEND_BUFFER: usize = 8 << 20;

/// The `Join` call (its serial comes from zbus's own counter, so it never collides).
pub fn call() -> zbus::Result<zbus::Message> {
    zbus::Message::method_call(protocol::PATH, protocol::JOIN)?
        .destination("org.freedesktop.DBus")?
        .interface(protocol::INTERFACE)?
        .build(&())
}

/// The `Ready` call, sent once the member is set up (no reply is waited for).
pub fn ready() -> zbus::Result<zbus::Message> {
    zbus::Message::method_call(protocol::PATH, protocol::READY)?
        .destination("org.freedesktop.DBus")?
        .interface(protocol::INTERFACE)?
        .with_flags(zbus::message::Flags::NoReplyExpected)?
        .build(&())
}

/// What the daemon's answer to Join gives.
pub struct Joining {
    pub id: u32,
    pub unique: String,
    pub dir: PathBuf,
    pub socket: OwnedFd,
    pub inbox: OwnedFd,
    pub table: OwnedFd,
    pub progress: OwnedFd,
    pub slot: u32,
}

/// The member the daemon's answer to Join makes, or why there is none (the connection
/// then stays on the stream: dbus-daemon answers UnknownInterface).
pub fn answered(
    answer: &Message,
    fds: Vec<OwnedFd>,
    counters: &Arc<Counters>,
    backlog_bound: usize,
) -> Result<Arc<Member>, String> {
    if answer.msg_type() != wire::METHOD_RETURN {
        return Err(answer.error_name().unwrap_or("no answer").to_string());
    }
    let reply = JoinReply::decode(&mut answer.body_reader())
        .map_err(|_| format!("an answer of signature {}", answer.signature()))?;
    let unique = answer.destination().ok_or("no destination")?.to_string();
    let fds = JoinFds::from_vec(fds).ok_or("the answer carries no sockets")?;
    let j = Joining {
        id: reply.member,
        unique,
        dir: PathBuf::from(reply.directory),
        socket: fds.socket,
        inbox: fds.inbox,
        table: fds.table,
        progress: fds.progress,
        slot: reply.slot,
    };
    member(j, Arc::clone(counters), backlog_bound).map_err(|e| e.to_string())
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`; 0 if unknown), read
/// once: a process never changes its own.
fn own_pid_namespace() -> u64 {
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/pid")
            .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m))
    })
}

/// Sets up the member: its socket registered with the current runtime (the connection's),
/// the table and progress memory mapped, its figures published from a task of that runtime.
pub fn member(
    j: Joining,
    counters: Arc<Counters>,
    backlog_bound: usize,
) -> io::Result<Arc<Member>> {
    let socket = UnixDatagram::from(j.socket);
    // tokio registers only non-blocking sockets; afterwards the socket is made blocking
    // again. Every wait-free call passes MSG_DONTWAIT, and a send to the daemon whose
    // send buffer is full can then block in the kernel (`Member::send_to_daemon`).
    socket.set_nonblocking(true)?;
    let _ = socket::setsockopt(&socket, socket::sockopt::SndBuf, &SEND_BUFFER);
    // The kernel stamps each datagram as it queues it (`CLOCK_REALTIME`): a frame from a
    // member that left is its own only if queued before its socket was shut down (the
    // table tells when). Without stamps, the grace after the departure applies.
    if let Err(e) = socket::setsockopt(&socket, socket::sockopt::ReceiveTimestampns, &true) {
        tracing::warn!("no queue stamps on the member's socket (a departed member's path is heard for a grace): {e}");
    }
    let socket = {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let s = tokio::net::UnixDatagram::from_std(socket)?;
        let flags = OFlag::from_bits_truncate(fcntl(s.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(s.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
        s
    };
    // The end of the pair to the daemon's inbox: blocking, as the socket (a send to the
    // daemon waits in the kernel when its buffer is full; the first try passes
    // MSG_DONTWAIT). The daemon made the pair non-blocking, each end its own file.
    let inbox = UnixDatagram::from(j.inbox);
    inbox.set_nonblocking(false)?;
    let _ = socket::setsockopt(&inbox, socket::sockopt::SndBuf, &SEND_BUFFER);
    let table = Mapping::open(j.table.as_fd(), busd_match::table::PREFIX_LEN, false)?;
    // A table of another layout (a busd of another version) could not be read later, and
    // the member would take nothing sent to it directly: it stays on the stream instead.
    if let Err(e) = busd_match::table::read(table.words(), &mut Vec::new()) {
        return Err(io::Error::other(format!(
            "the routing table is not one this shim reads (a busd of another version?): {e}"
        )));
    }
    let map = Mapping::open(j.progress.as_fd(), progress::PREFIX_LEN, true)?;
    if !progress::valid(map.words()) {
        return Err(io::Error::other("the progress memory is not busd's"));
    }
    let m = Arc::new(Member {
        id: j.id,
        unique: j.unique,
        dir: j.dir,
        socket,
        inbox,
        table: TableView::new(table),
        progress: Progress { map, slot: j.slot },
        counters,
        backlog_bound,
        service: Service::current(),
        figures: Arc::new(Publisher::default()),
        pid_namespace: own_pid_namespace(),
        wake: Notify::new(),
        state: Mutex::default(),
    });
    // The table as the member sets up, before it tells the bus it is ready: whoever it
    // lists as departed is never heard (`Cached::keep`).
    if let Some((seq, t)) = m.table.read() {
        m.state().table.keep(seq, Arc::new(t), m.id);
    }
    m.figures.spawn(Arc::downgrade(&m), Member::publish_figures);
    Ok(m)
}
