//! The zbus socket: a read half and a write half over the stream connection to the bus,
//! which, once the connection has joined the fast path, also send and take in datagrams.
//!
//! Joining is transparent: when the answer to zbus's Hello comes in, the read half sends
//! `Join`; the write half holds back whatever zbus sends until the answer is in, and the
//! read half takes the answer out of the stream and holds back Hello's answer (and anything
//! else before it) until then, so that a connection zbus has built is already set up. From
//! then on, the write half parses each
//! message once and hands it to the member (`Member::send`), and the read half merges the
//! stream with the member socket. On any error (dbus-daemon answers UnknownInterface) the
//! connection simply stays on the stream.
//!
//! Messages reach zbus through its own decoder ([`Replay`]), so that they get zbus's
//! receive sequence: that is zbus's one copy of them. Stream messages go to it straight
//! from the read buffer, and what the shim needs of them is read off zbus's decoded header.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use busd_wire::fds;
use busd_wire::message::{self as wire, Message};
use nix::sys::socket::{self, MsgFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::debug;
use zbus::connection::socket::{ReadHalf, WriteHalf};

use crate::batch::Batch;
use crate::calls::CALLEE_CHECK;
use crate::figures::Counters;
use crate::join;
use crate::member::{Held, Incoming, Member, Sent};

#[derive(Clone)]
enum Phase {
    /// Not asked yet.
    Start,
    /// Join sent with this serial; waiting for the answer.
    Joining(u32),
    Joined(Arc<Member>),
    /// Not offered (or refused): the stream carries everything.
    Standard,
}

/// How long a broadcast waits, at most, for the bus's answer to an AddMatch that would
/// want it (the D-Bus default reply timeout). The bus answers long before unless it is
/// gone; past it the AddMatch counts as refused for that broadcast.
const HOLD_AT_MOST: Duration = Duration::from_secs(25);

/// How long the shim waits for the bus's answer to Join (the D-Bus default reply
/// timeout): the bus always answers (dbus-daemon with an error), but a peer in between
/// that does not must not keep zbus from ever getting Hello's answer. Past it the
/// connection stays on the stream.
const JOIN_AT_MOST: Duration = Duration::from_secs(25);

/// Bytes of the stream one read takes: at first, and at most.
const CHUNK_FIRST: usize = 4096;
const CHUNK_MOST: usize = 64 * 1024;

struct Shared {
    stream: UnixStream,
    /// Whole messages go out one at a time (Join is written by the read half).
    write_lock: tokio::sync::Mutex<()>,
    phase: watch::Sender<Phase>,
    counters: Arc<Counters>,
    /// Bytes one receiver's backlog may hold (`fastpath_backlog=` in the address).
    backlog_bound: usize,
}

pub fn split(
    stream: UnixStream,
    counters: Arc<Counters>,
    backlog_bound: usize,
) -> (ShimRead, ShimWrite) {
    let shared = Arc::new(Shared {
        stream,
        write_lock: tokio::sync::Mutex::new(()),
        phase: watch::channel(Phase::Start).0,
        counters,
        backlog_bound,
    });
    (
        ShimRead {
            shared: Arc::clone(&shared),
            buf: Vec::new(),
            pos: 0,
            fds: VecDeque::new(),
            started: false,
            chunk: vec![0; CHUNK_FIRST],
            batch: Batch::default(),
            held: None,
            rules_changed: false,
            early: VecDeque::new(),
            join_deadline: None,
        },
        ShimWrite { shared },
    )
}

pub struct ShimRead {
    shared: Arc<Shared>,
    /// Stream bytes read and not yet handed on: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    fds: VecDeque<OwnedFd>,
    started: bool,
    /// What one read of the stream takes: small at first (most connections only ever get
    /// small messages, and zeroing 64 KiB per connection was a fifth of a client's cost of
    /// connecting), doubled up to [`CHUNK_MOST`] whenever a read fills it.
    chunk: Vec<u8>,
    /// Datagrams taken off the member socket and not yet handed on.
    batch: Batch,
    /// A broadcast waiting for the bus's answer to an AddMatch; no frame is taken while
    /// one waits.
    held: Option<Held>,
    /// The bus answered an AddMatch or RemoveMatch since the held broadcast was judged.
    rules_changed: bool,
    /// Stream messages that came before the answer to Join (Hello's answer first): zbus
    /// gets them once the connection is set up, so that a built connection is already on
    /// the fast path (or known not to be).
    early: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// When waiting for Join's answer ends ([`JOIN_AT_MOST`] after it was first awaited).
    join_deadline: Option<tokio::time::Instant>,
}

pub struct ShimWrite {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShimRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busd_shim::ShimRead")
    }
}

impl std::fmt::Debug for ShimWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busd_shim::ShimWrite")
    }
}

fn recv_stream(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let m = fds::recv::<()>(fd, buf, MsgFlags::MSG_DONTWAIT)?;
    Ok((m.len, m.fds))
}

impl Shared {
    async fn recvmsg(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        loop {
            self.stream.readable().await?;
            match self.stream.try_io(Interest::READABLE, || {
                recv_stream(self.stream.as_raw_fd(), buf)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    async fn sendmsg(&self, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
        loop {
            self.stream.writable().await?;
            let r = self.stream.try_io(Interest::WRITABLE, || {
                let iov = [io::IoSlice::new(data)];
                fds::send::<()>(
                    self.stream.as_raw_fd(),
                    &iov,
                    fds,
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(io::Error::from)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Writes a whole message on the stream (fds with its first byte).
    async fn write_all(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let _one_at_a_time = self.write_lock.lock().await;
        let mut pos = self.sendmsg(data, fds).await?;
        while pos < data.len() {
            pos += self.sendmsg(&data[pos..], &[]).await?;
        }
        Ok(())
    }

    fn peer_credentials(&self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        let c = socket::getsockopt(&self.stream.as_fd(), socket::sockopt::PeerCredentials)?;
        Ok(zbus::fdo::ConnectionCredentials::default()
            .set_unix_user_id(c.uid())
            .set_process_id(c.pid() as u32))
    }

    /// Sends `Join` on the stream (once, after Hello).
    async fn send_join(&self) -> zbus::Result<()> {
        let join = join::call()?;
        let serial = join.primary_header().serial_num().get();
        self.phase.send_replace(Phase::Joining(serial));
        self.write_all(join.data(), &[]).await?;
        Ok(())
    }

    fn joined(&self) -> Option<Arc<Member>> {
        match &*self.phase.borrow() {
            Phase::Joined(m) => Some(Arc::clone(m)),
            _ => None,
        }
    }
}

/// A finished message handed to zbus's own decoding (so it gets zbus's receive sequence):
/// `bytes[pos..end]`. It never waits, so zbus's decoding of it completes in one poll.
#[derive(Debug)]
struct Replay {
    bytes: Vec<u8>,
    pos: usize,
    end: usize,
    fds: Vec<OwnedFd>,
}

#[async_trait::async_trait]
impl ReadHalf for Replay {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok((n, std::mem::take(&mut self.fds)))
    }
}

impl Replay {
    async fn decode(&mut self, seq: u64) -> zbus::Result<zbus::Message> {
        self.receive_message(seq, &mut Vec::new(), &mut Vec::new())
            .await
    }
}

/// A message that came in a frame, for zbus; None when zbus cannot decode it: another
/// member's frame is dropped and counted, never taken for a broken connection (zbus ends
/// the connection on a decoding error).
async fn frame_to_zbus(
    m: &Member,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    seq: u64,
) -> Option<zbus::Message> {
    to_zbus(bytes, fds, seq)
        .await
        .inspect_err(|e| m.undecodable(e))
        .ok()
}

async fn to_zbus(bytes: Vec<u8>, fds: Vec<OwnedFd>, seq: u64) -> zbus::Result<zbus::Message> {
    let end = bytes.len();
    Replay {
        bytes,
        pos: 0,
        end,
        fds,
    }
    .decode(seq)
    .await
}

impl ShimRead {
    /// The next whole message in the stream buffer: where it ends, and its fds.
    fn next_stream_message(&mut self) -> Option<(usize, Vec<OwnedFd>)> {
        let rest = &self.buf[self.pos..];
        if rest.len() < wire::FIXED_HEADER_SIZE {
            return None;
        }
        let len = wire::total_length(&rest[..wire::FIXED_HEADER_SIZE]).ok()?;
        if rest.len() < len {
            return None;
        }
        let n = (wire::declared_unix_fds(&rest[..len]) as usize).min(self.fds.len());
        Some((self.pos + len, self.fds.drain(..n).collect()))
    }

    /// Hands zbus the stream message `buf[pos..end]` from the buffer itself (lent to
    /// [`Replay`] and taken back: the decoding never waits, so nothing can cancel it
    /// halfway).
    async fn stream_to_zbus(
        &mut self,
        end: usize,
        fds: Vec<OwnedFd>,
        seq: u64,
    ) -> zbus::Result<zbus::Message> {
        let mut r = Replay {
            bytes: std::mem::take(&mut self.buf),
            pos: self.pos,
            end,
            fds,
        };
        let msg = r.decode(seq).await;
        self.buf = r.bytes;
        self.pos = end;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        msg
    }

    /// The answer to our Join: set up the member, or stay on the stream.
    fn joined(&self, answer: &Message, fds: Vec<OwnedFd>) {
        let shared = &self.shared;
        let phase = match join::answered(answer, fds, &shared.counters, shared.backlog_bound) {
            Ok(m) => {
                debug!(member = m.id, "joined the fast path");
                let _ = shared.counters.unique.set(m.unique.clone());
                // Set up: others may send to it directly from now on (until the bus has
                // this, everything for it comes on the stream).
                match join::ready() {
                    Ok(ready) => {
                        let shared = Arc::clone(shared);
                        tokio::spawn(async move {
                            if let Err(e) = shared.write_all(ready.data(), &[]).await {
                                debug!("cannot tell the bus the member is ready: {e}");
                            }
                        });
                    }
                    Err(e) => debug!("cannot tell the bus the member is ready: {e}"),
                }
                Phase::Joined(m)
            }
            Err(e) => {
                debug!("the fast path is not available: {e}");
                Phase::Standard
            }
        };
        shared.phase.send_replace(phase);
    }

    /// The held broadcast, if the bus's answers settled it (or it waited too long): Some
    /// when it goes to zbus now.
    fn settle_held(&mut self, m: &Arc<Member>) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        let held = self.held.take()?;
        let expired = held.since.elapsed() >= HOLD_AT_MOST;
        if !std::mem::take(&mut self.rules_changed) && !expired {
            self.held = Some(held);
            return None;
        }
        match m.judge_held(held, expired)? {
            Incoming::Message(bytes, fds) => Some((bytes, fds)),
            Incoming::Held(still) => {
                self.held = Some(still);
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl ReadHalf for ShimRead {
    async fn receive_message(
        &mut self,
        seq: u64,
        already_received_bytes: &mut Vec<u8>,
        already_received_fds: &mut Vec<OwnedFd>,
    ) -> zbus::Result<zbus::Message> {
        if !self.started {
            self.started = true;
            self.buf.append(already_received_bytes);
            self.fds.extend(already_received_fds.drain(..));
        }
        loop {
            let joining = matches!(
                *self.shared.phase.borrow(),
                Phase::Start | Phase::Joining(_)
            );
            if joining && matches!(*self.shared.phase.borrow(), Phase::Joining(_)) {
                self.join_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + JOIN_AT_MOST);
            }
            if !joining {
                if let Some((bytes, fds)) = self.early.pop_front() {
                    // (As any stream message: a call that came through the daemon is
                    // answered through it.)
                    let msg = to_zbus(bytes, fds, seq).await?;
                    if let Some(m) = self.shared.joined() {
                        self.rules_changed |= m.note_stream_message(&msg);
                    }
                    return Ok(msg);
                }
            }
            let member = self.shared.joined();
            if let Some(m) = &member {
                if let Some((bytes, fds)) = self.settle_held(m) {
                    if let Some(msg) = frame_to_zbus(m, bytes, fds, seq).await {
                        return Ok(msg);
                    }
                    continue;
                }
            }
            if let Some((end, fds)) = self.next_stream_message() {
                let join_serial = match &*self.shared.phase.borrow() {
                    Phase::Joining(s) => Some(*s),
                    _ => None,
                };
                if let Some(serial) = join_serial {
                    // (Once per connection: the messages before Join's answer.)
                    if let Ok(answer) = Message::parse(self.buf[self.pos..end].to_vec(), Vec::new())
                    {
                        // Only the bus's own answer is believed (DESIGN 5.8): any peer may
                        // send a reply with a guessed serial, and the bus stamps SENDER.
                        if answer.reply_serial() == Some(serial)
                            && answer.sender() == Some("org.freedesktop.DBus")
                        {
                            self.pos = end;
                            self.joined(&answer, fds);
                            continue;
                        }
                    }
                }
                if matches!(*self.shared.phase.borrow(), Phase::Start) {
                    // The first message after authenticating answers Hello.
                    self.shared.send_join().await?;
                }
                if joining {
                    self.early
                        .push_back((self.buf[self.pos..end].to_vec(), fds));
                    self.pos = end;
                    continue;
                }
                let msg = self.stream_to_zbus(end, fds, seq).await?;
                if let Some(m) = &member {
                    self.rules_changed |= m.note_stream_message(&msg);
                }
                return Ok(msg);
            }
            if let Some(made) = member.as_ref().and_then(|m| m.take_made()) {
                return to_zbus(made, Vec::new(), seq).await;
            }
            let Self {
                shared,
                chunk,
                batch,
                held,
                join_deadline,
                ..
            } = self;
            let (n, fds) = match &member {
                None => match join_deadline.filter(|_| joining) {
                    Some(deadline) => tokio::select! {
                        r = shared.recvmsg(chunk) => r?,
                        _ = tokio::time::sleep_until(deadline) => {
                            debug!("the bus did not answer Join: the connection stays on the stream");
                            shared.phase.send_replace(Phase::Standard);
                            continue;
                        }
                    },
                    None => shared.recvmsg(chunk).await?,
                },
                Some(m) => {
                    // Whatever is ready to read goes first; while direct calls wait for
                    // replies, their callees are checked now and then (a reply queued
                    // before the callee left is always read before its absence is noticed).
                    let watching = m.calls_waiting();
                    let hold_ends = held.as_ref().map(|h| h.since + HOLD_AT_MOST);
                    tokio::select! {
                        biased;
                        r = shared.recvmsg(chunk) => r?,
                        incoming = m.receive(batch), if hold_ends.is_none() => {
                            match incoming? {
                                Incoming::Message(bytes, fds) => {
                                    if let Some(msg) = frame_to_zbus(m, bytes, fds, seq).await {
                                        return Ok(msg);
                                    }
                                }
                                Incoming::Held(h) => *held = Some(h),
                            }
                            continue;
                        }
                        _ = tokio::time::sleep(CALLEE_CHECK), if watching => {
                            m.check_callees();
                            continue;
                        }
                        _ = m.wake.notified(), if !watching => continue,
                        _ = sleep_until(hold_ends) => continue,
                    }
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the bus closed the connection",
                )
                .into());
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
            if n == self.chunk.len() && n < CHUNK_MOST {
                self.chunk.resize(n * 2, 0);
            }
            self.fds.extend(fds);
        }
    }

    /// Used by zbus for the authentication only: the bus's GUID (in its `OK` line) is
    /// noted, so that figures are told apart between buses. Descriptors are kept here, not
    /// handed to zbus: none belongs to the authentication, and what zbus reads past it
    /// (Hello's answer and, as Join follows Hello at once, Join's with its three
    /// descriptors) comes back as the bytes of the first `receive_message`, while zbus
    /// hands its descriptors over only later.
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let (n, fds) = self.shared.recvmsg(buf).await?;
        self.fds.extend(fds);
        let r = (n, Vec::new());
        if self.shared.counters.guid.get().is_none() {
            let text = String::from_utf8_lossy(&buf[..r.0]);
            if let Some(guid) = text
                .split("\r\n")
                .find_map(|l| l.strip_prefix("OK "))
                .filter(|g| g.len() == 32)
            {
                let _ = self.shared.counters.guid.set(guid.to_string());
            }
        }
        Ok(r)
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        self.shared.peer_credentials()
    }
}

/// Whether these handshake bytes end with `BEGIN` and then a whole `Hello` call.
fn ends_with_hello(buffer: &[u8]) -> bool {
    const BEGIN: &[u8] = b"BEGIN\r\n";
    let Some(at) = buffer.windows(BEGIN.len()).rposition(|w| w == BEGIN) else {
        return false;
    };
    let rest = &buffer[at + BEGIN.len()..];
    !rest.is_empty()
        && Message::parse(rest.to_vec(), Vec::new()).is_ok_and(|m| {
            m.member() == Some("Hello") && m.destination() == Some("org.freedesktop.DBus")
        })
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl WriteHalf for ShimWrite {
    async fn send_message(&mut self, msg: &zbus::Message) -> zbus::Result<()> {
        let data = msg.data();
        let raw: Vec<RawFd> = data.fds().iter().map(|f| f.as_fd().as_raw_fd()).collect();
        if matches!(*self.shared.phase.borrow(), Phase::Start) {
            self.shared.send_join().await?;
        }
        // Nothing overtakes Join: what zbus sends after it waits for the answer.
        let mut phase_rx = self.shared.phase.subscribe();
        let phase = phase_rx
            .wait_for(|p| !matches!(p, Phase::Joining(_)))
            .await
            .map(|p| p.clone())
            .unwrap_or(Phase::Standard);
        let Phase::Joined(member) = phase else {
            return Ok(self.shared.write_all(data, &raw).await?);
        };
        // Parsed once (one copy of zbus's bytes): the routing, the frame (which shares the
        // body) and the rule bookkeeping all read this.
        let Ok(parsed) = Message::parse(data.to_vec(), Vec::new()) else {
            return Ok(self.shared.write_all(data, &raw).await?);
        };
        match member.send(&parsed, &raw).await? {
            Sent::Done => {
                if data.len() > busd_match::header::MAX_INLINE {
                    // A message this large goes in a memfd, and its send never waits for
                    // the receiver, where a stream's would have waited for the reader:
                    // the application's other tasks (its receivers on the same thread
                    // among them) get their turn now, rather than after a whole burst.
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
            Sent::TooLarge => {
                Counters::add(&member.counters.via_stream, 1);
                member.figures.touched();
                Ok(self.shared.write_all(data, &raw).await?)
            }
        }
    }

    /// Used by zbus for the authentication only; it writes `BEGIN` and its `Hello` at once,
    /// and `Join` follows them at once: its answer then comes right after Hello's, one
    /// round trip sooner than if Join waited for Hello's answer.
    async fn sendmsg(&mut self, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let written = self.shared.sendmsg(buffer, &raw).await?;
        if written == buffer.len()
            && matches!(*self.shared.phase.borrow(), Phase::Start)
            && ends_with_hello(buffer)
        {
            self.shared.send_join().await.map_err(io::Error::other)?;
        }
        Ok(written)
    }

    async fn close(&mut self) -> io::Result<()> {
        socket::shutdown(self.shared.stream.as_raw_fd(), socket::Shutdown::Both)
            .map_err(io::Error::from)
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        self.shared.peer_credentials()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busd_wire::marshal::{Endian, Writer};
    use busd_wire::message::{encode, HeaderFields, ERROR, METHOD_RETURN};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn from(
        sender: &str,
        kind: u8,
        reply_serial: u32,
        error: Option<&str>,
        body: &[u8],
    ) -> Vec<u8> {
        let f = HeaderFields {
            reply_serial: Some(reply_serial),
            destination: Some(":1.5"),
            sender: Some(sender),
            error_name: error,
            signature: Some(if body.is_empty() { "" } else { "s" }),
            ..HeaderFields::default()
        };
        encode(Endian::Little, kind, 0, 100, &f, body)
    }

    /// A shim's read half and the bus's end of its stream, Hello's answer (`:1.5`) written.
    async fn answered_hello() -> (ShimRead, UnixStream) {
        let (ours, mut bus) = UnixStream::pair().unwrap();
        let (read, _write) = split(ours, Arc::default(), 1 << 20);
        let mut name = Writer::new(Endian::Little);
        name.string(":1.5");
        let hello = from(
            "org.freedesktop.DBus",
            METHOD_RETURN,
            1,
            None,
            &name.into_vec(),
        );
        bus.write_all(&hello).await.unwrap();
        (read, bus)
    }

    /// A peer that answers Join with the right serial before the bus does is not believed:
    /// its message goes to zbus as any other, and the bus's answer decides.
    #[tokio::test]
    async fn only_the_buss_answer_to_join_is_believed() {
        let (mut read, mut bus) = answered_hello().await;
        // Hello's answer reaches zbus once the bus has answered Join, and only the bus's
        // answer counts: a peer's, with the right serial and first, is one more message.
        let receiving = async {
            let mut got = Vec::new();
            for seq in 1..=2 {
                got.push(
                    read.receive_message(seq, &mut Vec::new(), &mut Vec::new())
                        .await
                        .unwrap(),
                );
                assert!(
                    matches!(*read.shared.phase.borrow(), Phase::Standard),
                    "nothing reaches zbus before the bus has answered Join"
                );
            }
            got
        };
        let answering = async {
            // The shim asked to join, with a serial of its own.
            let mut buf = vec![0u8; 4096];
            let n = bus.read(&mut buf).await.unwrap();
            let join = Message::parse(buf[..n].to_vec(), Vec::new()).unwrap();
            assert_eq!(join.member(), Some("Join"));
            let serial = join.serial();
            // A peer answers first; then the bus (dbus-daemon's answer: no such interface).
            let mut text = Writer::new(Endian::Little);
            text.string("forged");
            let forged = from(
                ":1.9",
                ERROR,
                serial,
                Some("org.example.Forged"),
                &text.into_vec(),
            );
            let mut text = Writer::new(Endian::Little);
            text.string("no");
            let real = from(
                "org.freedesktop.DBus",
                ERROR,
                serial,
                Some("org.freedesktop.DBus.Error.UnknownInterface"),
                &text.into_vec(),
            );
            bus.write_all(&[forged, real].concat()).await.unwrap();
        };
        let (got, ()) = tokio::join!(receiving, answering);
        assert_eq!(got[0].header().reply_serial().map(|s| s.get()), Some(1));
        assert_eq!(
            got[1].header().sender().map(|s| s.as_str()),
            Some(":1.9"),
            "the forged answer goes to zbus, not to the join"
        );
        // The bus's answer is taken out of the stream (it refused: the stream carries on),
        // and what follows it reaches zbus.
        let after = from("org.freedesktop.DBus", METHOD_RETURN, 77, None, &[]);
        bus.write_all(&after).await.unwrap();
        let got = read
            .receive_message(3, &mut Vec::new(), &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(got.header().reply_serial().map(|s| s.get()), Some(77));
        assert!(matches!(*read.shared.phase.borrow(), Phase::Standard));
    }

    /// zbus writes BEGIN and its Hello at once; Join follows them at once, before Hello's
    /// answer (one round trip less per connection). Other handshake writes send nothing.
    #[tokio::test]
    async fn join_follows_begin_and_hello_at_once() {
        let (ours, mut bus) = UnixStream::pair().unwrap();
        let (_read, mut write) = split(ours, Arc::default(), 1 << 20);
        let f = HeaderFields {
            path: Some("/org/freedesktop/DBus"),
            interface: Some("org.freedesktop.DBus"),
            member: Some("Hello"),
            destination: Some("org.freedesktop.DBus"),
            ..HeaderFields::default()
        };
        let hello = encode(
            Endian::Little,
            busd_wire::message::METHOD_CALL,
            0,
            1,
            &f,
            &[],
        );
        let auth = b"\0AUTH EXTERNAL 30\r\n".to_vec();
        assert_eq!(write.sendmsg(&auth, &[]).await.unwrap(), auth.len());
        assert!(matches!(*write.shared.phase.borrow(), Phase::Start));
        let begin = [b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\n".to_vec(), hello.clone()].concat();
        assert_eq!(write.sendmsg(&begin, &[]).await.unwrap(), begin.len());
        assert!(matches!(*write.shared.phase.borrow(), Phase::Joining(_)));
        let mut got = vec![0u8; auth.len() + begin.len()];
        bus.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [auth, begin].concat());
        let mut buf = vec![0u8; 4096];
        let n = bus.read(&mut buf).await.unwrap();
        let join = Message::parse(buf[..n].to_vec(), Vec::new()).unwrap();
        assert_eq!(join.member(), Some("Join"));
    }

    /// Descriptors that arrive while zbus authenticates (Join's, when its answer comes in
    /// the same read as the last authentication line) stay with the shim, which gets the
    /// bytes back from zbus without them.
    #[tokio::test]
    async fn descriptors_read_during_authentication_stay_with_the_shim() {
        let (ours, bus) = UnixStream::pair().unwrap();
        let (mut read, _write) = split(ours, Arc::default(), 1 << 20);
        let fd = std::fs::File::open("/dev/null").unwrap();
        let iov = [io::IoSlice::new(
            b"OK 0123456789abcdef0123456789abcdef\r\nrest",
        )];
        fds::send::<()>(
            bus.as_raw_fd(),
            &iov,
            &[fd.as_raw_fd()],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = vec![0u8; 256];
        let (n, given) = ReadHalf::recvmsg(&mut read, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"OK 0123456789abcdef0123456789abcdef\r\nrest");
        assert!(given.is_empty(), "zbus gets no descriptor");
        assert_eq!(read.fds.len(), 1, "the shim keeps it");
    }

    /// A bus (or anything in between) that never answers Join does not keep zbus from
    /// Hello's answer: past JOIN_AT_MOST the connection stays on the stream.
    #[tokio::test(start_paused = true)]
    async fn a_join_never_answered_leaves_the_connection_on_the_stream() {
        let (mut read, mut bus) = answered_hello().await;
        let started = tokio::time::Instant::now();
        let got = tokio::time::timeout(
            2 * JOIN_AT_MOST,
            read.receive_message(1, &mut Vec::new(), &mut Vec::new()),
        )
        .await
        .expect("Hello's answer, once waiting for Join's has ended")
        .unwrap();
        assert_eq!(got.header().reply_serial().map(|s| s.get()), Some(1));
        assert!(started.elapsed() >= JOIN_AT_MOST);
        assert!(matches!(*read.shared.phase.borrow(), Phase::Standard));
        // The Join was sent, and what comes next reaches zbus.
        let mut buf = vec![0u8; 4096];
        let n = bus.read(&mut buf).await.unwrap();
        let join = Message::parse(buf[..n].to_vec(), Vec::new()).unwrap();
        assert_eq!(join.member(), Some("Join"));
        let after = from("org.freedesktop.DBus", METHOD_RETURN, 77, None, &[]);
        bus.write_all(&after).await.unwrap();
        let got = read
            .receive_message(2, &mut Vec::new(), &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(got.header().reply_serial().map(|s| s.get()), Some(77));
    }
}
