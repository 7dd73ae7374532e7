//! The fast path's I/O (DESIGN 5): the bus's private directory, each member's datagram
//! socket with its kernel filter, the daemon's inbox for each member, and the routing table
//! in a sealed memfd. The decisions are the bus core's ([`crate::bus::fastpath`]).
//!
//! Per member `N` the directory holds one socket, created and bound by the daemon: `N`,
//! the member's own (its descriptor is passed to the client; the daemon keeps a duplicate
//! to replace the filter). The daemon's inbox for the member is one end of a pair of
//! connected datagram sockets (`socketpair`), the member getting the other end: it has no
//! name, so nothing but that end can reach it, and being connected it is exempt from the
//! datagram queue limit, so a member sending to the daemon is held back only by its own
//! send buffer. (An inbox bound in the directory and `connect()`ed to `N` cost the daemon a
//! path lookup at its bind and connect and an unlink at the end, about a fifth of a
//! fast-path connection, and every send to it a path lookup.) The directory also holds
//! `lock`, which the daemon keeps locked while it lives: another busd removes a directory
//! only when that lock is free (its owner has ended).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use busd_match::bpf::{self, Program};
use busd_match::header;
use busd_match::progress;
use busd_match::protocol::{self, check_frame};
use busd_match::shm::Mapping;
use busd_match::table::{self, Table};
use busd_wire::fds;
use mio::net::UnixDatagram;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::socket::MsgFlags;
use nix::sys::stat::Mode;
use tracing::{debug, warn};

use crate::bus::fastpath::Joined;
use crate::bus::{IdMap, PeerId};

/// Bytes of routing-table body the shared memory holds (members take 40 bytes each, names
/// 8 bytes plus their length): far beyond any bus; a table that does not fit sends
/// everything through the daemon.
const TABLE_CAPACITY: usize = 4 << 20;

/// A frame a member sent the daemon.
pub struct Frame {
    pub destination: u32,
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

pub enum Received {
    Frame(Frame),
    /// Nothing more for now.
    Drained,
    /// The member broke the protocol (the reason): it is disconnected.
    Invalid(String),
}

struct Member {
    id: u32,
    /// Its slot in the progress memory.
    slot: u32,
    /// The daemon's duplicate of the member's socket, to replace its filter.
    socket: OwnedFd,
    /// The filter attached to it (None: none yet, as the member had no rules).
    filter: Option<Program>,
    inbox: UnixDatagram,
    /// The daemon's filter is on its inbox: attached at its first broadcast, not at Join
    /// (most members never broadcast, and each attach costs the kernel a verification and
    /// a JIT compilation; until then the daemon's routing, which is exact, drops what it
    /// does not want).
    inbox_filtered: bool,
}

/// A memfd of fixed size mapped writable here, sealed with `seals` once mapped.
struct SharedMemory {
    memfd: OwnedFd,
    map: Mapping,
}

impl SharedMemory {
    fn new(name: &str, len: usize, seals: libc::c_int) -> io::Result<Self> {
        let (memfd, map) = Mapping::create(name, len, seals)?;
        Ok(SharedMemory { memfd, map })
    }

    fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }
}

/// The routing table's shared memory, sealed so that nobody else can write it or change
/// its size.
struct SharedTable {
    shm: SharedMemory,
    /// The body published last, changed where the table changes.
    body: table::Encoded,
    /// The memfd opened again read-only, once: each member gets a duplicate (a path
    /// lookup in /proc per join cost more than the rest of handing the table out).
    read_only: OwnedFd,
}

impl SharedTable {
    fn new() -> io::Result<Self> {
        // From now on the size is fixed and only this mapping can write (F_SEAL_FUTURE_WRITE
        // leaves existing writable mappings alone and refuses new ones, and write(2)).
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        let len = table::words_for(TABLE_CAPACITY) * 8;
        let shm = SharedMemory::new("busd-routing-table", len, seals)?;
        let path = format!("/proc/self/fd/{}", shm.memfd.as_raw_fd());
        let read_only = std::fs::File::open(path)?.into();
        Ok(SharedTable {
            shm,
            body: table::Encoded::default(),
            read_only,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        self.shm.words()
    }

    /// Publishes `t`, which `changes` says how it differs from the table published last.
    fn publish(&mut self, t: &Table, changes: &table::Changes) {
        let dirty = self.body.update(t, changes);
        #[cfg(debug_assertions)]
        {
            let mut whole = Vec::new();
            t.encode(&mut whole);
            debug_assert!(
                self.body.body() == whole,
                "the table's changes were not all told"
            );
        }
        if table::publish_changed(self.words(), self.body.body(), &dirty).is_err() {
            self.body.forget();
            warn!("the fast path's routing table is too large; members send through the daemon");
            let fallback = Table {
                observed: true,
                calls_mediated: true,
                members: vec![table::Member {
                    id: 0,
                    direct: true,
                    slot: progress::NO_SLOT,
                    summary: busd_match::summary::Summary {
                        everything: true,
                        ..Default::default()
                    },
                    pid: 0,
                    ready: true,
                    departed: false,
                    left: 0,
                }],
                names: Vec::new(),
                max_message: t.max_message,
                max_fds: t.max_fds,
                pid_namespace: t.pid_namespace,
            };
            let mut body = Vec::new();
            fallback.encode(&mut body);
            let _ = table::publish(self.words(), &body);
        }
    }

    /// A read-only descriptor of the table, for a member (all share one open file
    /// description: members only map it, and its seals refuse writable mappings).
    fn read_only(&self) -> io::Result<OwnedFd> {
        self.read_only.try_clone()
    }
}

/// Slots in the progress memory: far more members than a bus has at once (the memory is
/// allocated only where slots are used).
const PROGRESS_SLOTS: u32 = 1 << 16;

/// The memory where members publish how far their sends have got, for causal order
/// ([`busd_match::progress`]). Members write their own slot; it is sealed against
/// shrinking and growing, so no member can make another's mapping fault.
struct SharedProgress {
    /// (Shared with the bus core, which reads members' figures for Debug.Stats.)
    shm: std::rc::Rc<SharedMemory>,
    /// Slots free for reuse, the longest free first (a member that has just left may still
    /// write its old slot for a moment).
    free: std::collections::VecDeque<u32>,
    /// Slots never used yet start here.
    next: u32,
}

impl SharedProgress {
    fn new() -> io::Result<Self> {
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let len = progress::words_for(PROGRESS_SLOTS) * 8;
        let shm = std::rc::Rc::new(SharedMemory::new("busd-progress", len, seals)?);
        progress::init(shm.words());
        Ok(SharedProgress {
            shm,
            free: Default::default(),
            next: 0,
        })
    }

    /// A slot for `member` (NO_SLOT when all are taken: its receivers then do not wait).
    fn take(&mut self, member: u32) -> u32 {
        let slot = if self.free.len() > 64 || self.next == PROGRESS_SLOTS {
            self.free.pop_front()
        } else {
            self.next += 1;
            Some(self.next - 1)
        };
        match slot {
            Some(s) => {
                progress::assign(self.shm.words(), s, member);
                s
            }
            None => {
                warn!(
                    member,
                    "no progress slot left: causal order is not kept for its sends"
                );
                progress::NO_SLOT
            }
        }
    }

    fn give_back(&mut self, slot: u32) {
        if slot != progress::NO_SLOT {
            progress::assign(self.shm.words(), slot, 0);
            self.free.push_back(slot);
        }
    }

    /// A descriptor members map writable.
    fn shared(&self) -> io::Result<OwnedFd> {
        self.shm.memfd.try_clone()
    }
}

pub struct FastPath {
    dir: PathBuf,
    /// Held on the directory's [`LOCK`] for the bus's whole life; released (the field
    /// dropped) only after `drop` has removed the directory.
    _lock: Flock<File>,
    table: SharedTable,
    progress: SharedProgress,
    members: IdMap<PeerId, Member>,
    daemon_filter: Program,
    buf: Vec<u8>,
    /// What monitors are shown in place of the descriptors of a Join's answer (see
    /// [`crate::bus::fastpath::Joined::shown`]): `/dev/null`, once per descriptor.
    stand_ins: std::rc::Rc<Vec<OwnedFd>>,
}

/// Where the directory goes: `$XDG_RUNTIME_DIR` (private to the user) when set, else the
/// system's runtime directory for root, else the temporary directory.
fn runtime_base() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if d.is_dir() {
            return d;
        }
    }
    if nix::unistd::geteuid().is_root() && Path::new("/run").is_dir() {
        return PathBuf::from("/run");
    }
    std::env::temp_dir()
}

const DIR_PREFIX: &str = "busd-fastpath-";

/// This process's pid namespace: the inode of `/proc/self/ns/pid` (0 when it cannot be
/// read). A member compares it with its own before it compares pids (DESIGN 5.8).
pub fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// The file in a bus's directory its busd holds an exclusive `flock` on for as long as it
/// lives: the lock is the kernel's, on the open file, so it ends with the process whatever
/// pid namespace that is in, and another busd can tell a live bus's directory from one
/// left behind. (Never a socket's name: members are decimal numbers, inboxes `dN`.)
const LOCK: &str = "lock";

/// Where the lock file is created and locked before it is renamed [`LOCK`]: a `lock`
/// nobody holds is never seen in a live bus's directory.
const LOCK_NEW: &str = "lock.new";

/// Creates the lock file in `dir`, a directory this process has just made, and locks it.
/// The descriptor is close-on-exec (std opens every file so): services the bus starts do
/// not inherit it, and cannot keep the lock after the bus is gone.
fn lock_directory(dir: &Path) -> io::Result<Flock<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let new = dir.join(LOCK_NEW);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&new)?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)?;
    std::fs::rename(&new, dir.join(LOCK))?;
    Ok(lock)
}

/// Removes the directories of busd processes that ended without removing theirs (killed
/// with SIGKILL): each `busd-fastpath-*` directory of this user whose lock file nobody
/// holds. A pid proves nothing (a busd in another pid namespace runs under pids this one
/// cannot see), and a directory without a lock file (an older busd's, or anything else)
/// is left alone: nothing shows that its owner is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().as_bytes().starts_with(DIR_PREFIX.as_bytes()) {
            continue;
        }
        let path = e.path();
        match take_abandoned(&path) {
            // Held while the directory goes, so that no other busd sweeps it at once.
            Ok(Some(_lock)) => {
                debug!(
                    "removing {}: the busd that made it has ended",
                    path.display()
                );
                // (remove_dir_all removes a symlink found in its place, never follows it.)
                if let Err(err) = std::fs::remove_dir_all(&path) {
                    debug!("cannot remove {}: {err}", path.display());
                }
            }
            Ok(None) => debug!("{} is in use: its busd runs", path.display()),
            Err(err) => debug!("leaving {} alone: {err}", path.display()),
        }
    }
}

/// The lock of the bus directory at `path`, taken, when the busd that made it has
/// provably ended: `path` is a directory of this user (not a symlink: it is not followed)
/// whose lock file, a file of this user, nobody holds. None while its busd runs; an error
/// (why it is not a stale directory) otherwise.
fn take_abandoned(path: &Path) -> io::Result<Option<Flock<File>>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let uid = nix::unistd::geteuid().as_raw();
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    let meta = dir.metadata()?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(io::Error::other("not a directory of this user"));
    }
    // Opened in the directory just checked, not through its path again.
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        LOCK,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat has just returned this descriptor; nothing else owns it.
    let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != uid {
        return Err(io::Error::other("its lock is not a file of this user"));
    }
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

impl FastPath {
    pub fn new() -> io::Result<Self> {
        let base = runtime_base();
        remove_stale(&base);
        let template = base.join(format!("{DIR_PREFIX}{}-XXXXXX", std::process::id()));
        // mkdtemp creates it with mode 0700: only the bus's user reaches member sockets.
        let dir = nix::unistd::mkdtemp(&template).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot create a directory in {}: {}",
                    base.display(),
                    e.desc()
                ),
            )
        })?;
        let lock = lock_directory(&dir).map_err(|e| {
            // Without its lock file no busd would ever sweep it.
            let _ = std::fs::remove_dir_all(&dir);
            io::Error::new(
                e.kind(),
                format!("cannot create the lock file in {}: {e}", dir.display()),
            )
        })?;
        let mut table = SharedTable::new()?;
        table.publish(&Table::default(), &table::Changes::default());
        let stand_ins = (0..protocol::JoinReply::FDS)
            .map(|_| File::open("/dev/null").map(OwnedFd::from))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(FastPath {
            dir,
            _lock: lock,
            table,
            progress: SharedProgress::new()?,
            members: IdMap::default(),
            daemon_filter: Program {
                insns: Vec::new(),
                widened: false,
            },
            buf: Vec::new(),
            stand_ins: std::rc::Rc::new(stand_ins),
        })
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Reads the figures members publish in their progress slots.
    pub fn figures(&self) -> crate::bus::fastpath::FigureSource {
        let shm = std::rc::Rc::clone(&self.progress.shm);
        Box::new(move |slot, member| progress::figures(shm.words(), slot, member))
    }

    /// Creates a member's socket (its filter attached, if it has one yet) and the pair of
    /// sockets to the daemon's inbox for it; returns what the client gets, and the inbox to
    /// register with the event loop.
    pub fn join(
        &mut self,
        peer: PeerId,
        id: u32,
        filter: Option<&Program>,
    ) -> io::Result<(Joined, &mut UnixDatagram)> {
        let path = self.dir.join(protocol::socket_name(id));
        let socket = StdDatagram::bind(&path)?;
        let made = (|| {
            if let Some(filter) = filter {
                bpf::attach(socket.as_fd(), filter)?;
            }
            // The kernel tells the member which process sent each datagram (DESIGN 5.8).
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
                .map_err(io::Error::from)?;
            let (inbox, members_end) = inbox_pair()?;
            let kept = socket.as_fd().try_clone_to_owned()?;
            Ok((
                inbox,
                members_end,
                kept,
                self.table.read_only()?,
                self.progress.shared()?,
            ))
        })();
        // (A join that failed leaves no name behind.)
        let (inbox, members_end, kept, table, progress) = made.inspect_err(|_: &io::Error| {
            let _ = std::fs::remove_file(&path);
        })?;
        let slot = self.progress.take(id);
        let joined = Joined {
            directory: String::from_utf8_lossy(self.dir.as_os_str().as_bytes()).into_owned(),
            socket: socket.into(),
            inbox: members_end,
            table,
            progress,
            slot,
            shown: std::rc::Rc::clone(&self.stand_ins),
        };
        let member = Member {
            id,
            slot,
            socket: kept,
            filter: filter.cloned(),
            inbox: UnixDatagram::from_std(inbox),
            inbox_filtered: false,
        };
        self.members.insert(peer, member);
        let m = self.members.get_mut(&peer).expect("just inserted");
        Ok((joined, &mut m.inbox))
    }

    /// Forgets a member: its socket's name goes, and the socket is shut down, its process's
    /// copy too: a member that left (disconnected, or became a monitor) sends nobody
    /// anything as its old name, and receives nothing. (What it sent before is delivered:
    /// the receivers' queues keep it.)
    /// Returns the member's id (None: not a member).
    pub fn leave(&mut self, peer: PeerId) -> Option<u32> {
        let m = self.members.remove(&peer)?;
        self.progress.give_back(m.slot);
        // (The name first: a sender that finds it gone sends through the daemon.)
        let _ = std::fs::remove_file(self.dir.join(protocol::socket_name(m.id)));
        let _ = nix::sys::socket::shutdown(m.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        Some(m.id)
    }

    pub fn set_filter(&mut self, peer: PeerId, prog: &Program) {
        if let Some(m) = self.members.get_mut(&peer) {
            // Attaching costs the kernel a verification and a JIT compilation.
            if m.filter.as_ref() == Some(prog) {
                return;
            }
            match bpf::attach(m.socket.as_fd(), prog) {
                Ok(()) => m.filter = Some(prog.clone()),
                Err(e) => {
                    // The old filter may drop what the new rules want: the member gets
                    // every broadcast instead (its own rules pick), until a program fits.
                    warn!(
                        member = m.id,
                        "cannot replace a fast-path filter, taking it off: {e}"
                    );
                    unfilter(m.socket.as_fd(), m.id);
                    m.filter = None;
                }
            }
        }
    }

    pub fn set_daemon_filter(&mut self, prog: Program) {
        // Every inbox carries it: replacing it with the same program would cost one
        // setsockopt per member on every join and departure.
        if prog == self.daemon_filter {
            return;
        }
        debug!(
            members = self.members.len(),
            insns = prog.insns.len(),
            "replacing the daemon's filter"
        );
        for m in self.members.values().filter(|m| m.inbox_filtered) {
            if let Err(e) = bpf::attach(m.inbox.as_fd(), &prog) {
                // The daemon's routing is exact: without a filter it only reads more.
                warn!(
                    member = m.id,
                    "cannot replace the daemon's filter, taking it off: {e}"
                );
                unfilter(m.inbox.as_fd(), m.id);
            }
        }
        self.daemon_filter = prog;
    }

    /// Publishes `t`; `changes` says how it differs from the table published before.
    pub fn publish(&mut self, t: &Table, changes: &table::Changes) {
        self.table.publish(t, changes);
    }

    /// Reads one frame from a member's inbox.
    pub fn receive(&mut self, peer: PeerId, max_message: usize, max_fds: usize) -> Received {
        let Some(m) = self.members.get_mut(&peer) else {
            return Received::Drained;
        };
        if self.buf.is_empty() {
            self.buf = vec![0; header::largest_datagram()];
        }
        let (n, flags, mut fds) = match fds::recv::<()>(
            m.inbox.as_raw_fd(),
            &mut self.buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(r) => (r.len, r.flags, r.fds),
            Err(nix::errno::Errno::EAGAIN) => return Received::Drained,
            Err(e) => return Received::Invalid(format!("reading its frames failed: {e}")),
        };
        if flags.contains(MsgFlags::MSG_CTRUNC) {
            return Received::Invalid("a frame carried more fds than one message may".into());
        }
        if n > self.buf.len() {
            return Received::Invalid(format!("a frame of {n} bytes is larger than allowed"));
        }
        let frame = match check_frame(&self.buf[..n], &fds, m.id, max_message) {
            Ok(f) => f,
            Err(why) => return Received::Invalid(why.to_string()),
        };
        if frame.memfd {
            fds.remove(0);
        }
        if frame.header.destination == 0 && !m.inbox_filtered {
            // Its first broadcast: from now on the kernel drops those the daemon does not
            // want (an empty program is the "nothing compiled yet" state: no filter).
            m.inbox_filtered = true;
            if !self.daemon_filter.insns.is_empty() {
                if let Err(e) = bpf::attach(m.inbox.as_fd(), &self.daemon_filter) {
                    warn!(member = m.id, "cannot attach the daemon's filter: {e}");
                }
            }
        }
        if fds.len() > max_fds {
            return Received::Invalid("a message exceeds max_message_unix_fds".into());
        }
        debug!(
            member = m.id,
            len = frame.message.len(),
            fds = fds.len(),
            "frame"
        );
        Received::Frame(Frame {
            destination: frame.header.destination,
            bytes: frame.message,
            fds,
        })
    }
}

/// Takes a filter that could not be replaced off its socket: a stale filter would drop
/// what the rules now want, where no filter only lets more through.
fn unfilter(socket: std::os::fd::BorrowedFd<'_>, member: u32) {
    if let Err(e) = bpf::detach(socket) {
        // Only a kernel without socket filters fails here, and it never attached one.
        warn!(member, "cannot take a filter off: {e}");
    }
}

/// The daemon's inbox for a member (non-blocking), and the member's end of the pair.
fn inbox_pair() -> io::Result<(StdDatagram, OwnedFd)> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
    // (Both ends non-blocking from the start: one system call less than setting the
    // daemon's after; the member sets its own end as it needs.)
    let (inbox, member) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((StdDatagram::from(inbox), member))
}

impl Drop for FastPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busd_match::bpf::{Insn, BPF_JA, BPF_JMP, BPF_K, BPF_RET};

    fn ret(k: u32) -> Insn {
        Insn {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// Sends a datagram to member `id`'s socket; true if the member got it.
    fn reaches(fast: &FastPath, member: &StdDatagram, id: u32) -> bool {
        let sender = StdDatagram::unbound().unwrap();
        sender
            .send_to(b"x", fast.directory().join(protocol::socket_name(id)))
            .unwrap();
        let mut buf = [0u8; 8];
        member.recv(&mut buf).is_ok()
    }

    #[test]
    fn a_filter_the_kernel_refuses_takes_the_old_one_off() {
        let mut fast = FastPath::new().unwrap();
        let none = Program {
            insns: vec![ret(0)],
            widened: false,
        };
        let (joined, _) = fast.join(1, 7, Some(&none)).unwrap();
        let member = StdDatagram::from(joined.socket);
        member.set_nonblocking(true).unwrap();
        assert!(
            !reaches(&fast, &member, 7),
            "the first filter drops everything"
        );

        // A jump past the program's end: the kernel refuses it.
        let refused = Program {
            insns: vec![
                Insn {
                    code: BPF_JMP | BPF_JA,
                    jt: 0,
                    jf: 0,
                    k: 5,
                },
                ret(bpf::ACCEPT),
            ],
            widened: false,
        };
        fast.set_filter(1, &refused);
        assert!(
            reaches(&fast, &member, 7),
            "the stale filter no longer drops what the new rules may want"
        );

        // And a program that fits goes on again.
        fast.set_filter(1, &none);
        assert!(!reaches(&fast, &member, 7));

        // A join the kernel refuses the first filter of fails whole, and leaves no name.
        assert!(fast.join(2, 8, Some(&refused)).is_err());
        assert!(!fast.directory().join(protocol::socket_name(8)).exists());
    }
}
