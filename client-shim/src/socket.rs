//! The zbus socket: a read half and a write half over the stream connection to the bus,
//! which, once the connection has joined the fast path, also send and take in datagrams.
//!
//! Joining is transparent: when the answer to zbus's Hello comes in, the read half sends
//! `Join` (its serial comes from zbus's own counter, so it never collides); the write half
//! holds back whatever zbus sends until the answer is in, and the read half takes the
//! answer out of the stream. From then on,
//! the write half routes each message (`Member::send`) and the read half merges the stream
//! with the member socket. On any error (dbus-daemon answers UnknownInterface) the
//! connection simply stays on the stream.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use busd_match::protocol::{self, JoinFds, JoinReply};
use busd_match::MatchRule;
use busd_wire::fds;
use busd_wire::message::{self as wire, Message};
use nix::sys::socket::{self, MsgFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::debug;
use zbus::connection::socket::{ReadHalf, WriteHalf};

use crate::member::{Counters, Joining, Member, Sent};

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

/// How often callees of direct calls still waiting for replies are checked.
const CALLEE_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

struct Shared {
    stream: UnixStream,
    /// Whole messages go out one at a time (Join is written by the read half).
    write_lock: tokio::sync::Mutex<()>,
    phase: watch::Sender<Phase>,
    counters: Arc<Counters>,
    /// Bytes one receiver's backlog may hold (`fastpath_backlog=` in the address).
    backlog_bound: usize,
    /// Rules of this connection, for the exact check of what the kernel filter let in,
    /// kept from the AddMatch and RemoveMatch calls zbus sends.
    rules: Mutex<Vec<MatchRule>>,
    /// Calls that came through the daemon (sender, serial): their replies go back through
    /// it too, so that its reply bookkeeping (requested replies, NoReply) stays exact.
    stream_calls: Mutex<std::collections::HashSet<(String, u32)>>,
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
        rules: Mutex::new(Vec::new()),
        stream_calls: Mutex::new(std::collections::HashSet::new()),
    });
    (
        ShimRead {
            shared: Arc::clone(&shared),
            buf: Vec::new(),
            fds: VecDeque::new(),
            started: false,
            chunk: vec![0; 64 * 1024],
            datagram: Vec::new(),
            made: VecDeque::new(),
        },
        ShimWrite { shared },
    )
}

pub struct ShimRead {
    shared: Arc<Shared>,
    /// Stream bytes not yet making a whole message.
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    started: bool,
    chunk: Vec<u8>,
    datagram: Vec<u8>,
    /// Errors made here for zbus (NoReply for direct calls whose callee left).
    made: VecDeque<Vec<u8>>,
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
        let join = zbus::Message::method_call(protocol::PATH, protocol::JOIN)?
            .destination("org.freedesktop.DBus")?
            .interface(protocol::INTERFACE)?
            .build(&())?;
        let serial = join.primary_header().serial_num().get();
        self.phase.send_replace(Phase::Joining(serial));
        self.write_all(join.data(), &[]).await?;
        Ok(())
    }

    /// Keeps the rule list in step with what zbus asks the bus for.
    fn note_rules(&self, msg: &Message) {
        if msg.destination() != Some("org.freedesktop.DBus")
            || msg.interface() != Some("org.freedesktop.DBus")
        {
            return;
        }
        let add = match msg.member() {
            Some("AddMatch") => true,
            Some("RemoveMatch") => false,
            _ => return,
        };
        let Ok(text) = msg.body_reader().string() else {
            return;
        };
        let Ok(rule) = MatchRule::parse(text) else {
            return;
        };
        let mut rules = self.rules.lock().expect("rules lock");
        if add {
            rules.push(rule);
        } else if let Some(i) = rules.iter().position(|r| r == &rule) {
            rules.remove(i);
        }
        if let Phase::Joined(m) = &*self.phase.borrow() {
            *m.rules.lock().expect("rules lock") = rules.clone();
        }
    }
}

/// A finished message handed to zbus's own decoding (so it gets zbus's receive sequence).
#[derive(Debug)]
struct Replay {
    bytes: Vec<u8>,
    pos: usize,
    fds: Vec<OwnedFd>,
}

#[async_trait::async_trait]
impl ReadHalf for Replay {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let n = buf.len().min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok((n, std::mem::take(&mut self.fds)))
    }
}

async fn to_zbus(bytes: Vec<u8>, fds: Vec<OwnedFd>, seq: u64) -> zbus::Result<zbus::Message> {
    let mut r = Replay { bytes, pos: 0, fds };
    r.receive_message(seq, &mut Vec::new(), &mut Vec::new())
        .await
}

impl ShimRead {
    /// A whole message from the stream buffer, if there is one.
    fn take_stream_message(&mut self) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        if self.buf.len() < 16 {
            return None;
        }
        let len = wire::total_length(&self.buf[..16]).ok()?;
        if self.buf.len() < len {
            return None;
        }
        let rest = self.buf.split_off(len);
        let bytes = std::mem::replace(&mut self.buf, rest);
        let n = (wire::declared_unix_fds(&bytes) as usize).min(self.fds.len());
        let fds = self.fds.drain(..n).collect();
        Some((bytes, fds))
    }

    /// The answer to our Join: set up the member, or stay on the stream.
    fn joined(&self, answer: &Message, fds: Vec<OwnedFd>) {
        let member = (|| -> Result<Member, String> {
            if answer.msg_type() != wire::METHOD_RETURN {
                return Err(answer.error_name().unwrap_or("no answer").to_string());
            }
            let reply = JoinReply::decode(&mut answer.body_reader())
                .map_err(|_| format!("an answer of signature {}", answer.signature()))?;
            let unique = answer.destination().ok_or("no destination")?.to_string();
            let fds = JoinFds::from_vec(fds).ok_or("the answer carries no sockets")?;
            let m = Member::new(
                Joining {
                    id: reply.member,
                    unique,
                    dir: PathBuf::from(reply.directory),
                    socket: fds.socket,
                    table: fds.table,
                    progress: fds.progress,
                    slot: reply.slot,
                },
                Arc::clone(&self.shared.counters),
                self.shared.backlog_bound,
            )
            .map_err(|e| e.to_string())?;
            *m.rules.lock().expect("rules lock") =
                self.shared.rules.lock().expect("rules lock").clone();
            Ok(m)
        })();
        let phase = match member {
            Ok(m) => {
                debug!(member = m.id, "joined the fast path");
                let _ = self.shared.counters.unique.set(m.unique.clone());
                Phase::Joined(Arc::new(m))
            }
            Err(e) => {
                debug!("the fast path is not available: {e}");
                Phase::Standard
            }
        };
        self.shared.phase.send_replace(phase);
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
            while let Some((bytes, fds)) = self.take_stream_message() {
                let join_serial = match &*self.shared.phase.borrow() {
                    Phase::Joining(s) => Some(*s),
                    _ => None,
                };
                if let Some(serial) = join_serial {
                    if let Ok(m) = Message::parse(bytes.clone(), Vec::new()) {
                        if m.reply_serial() == Some(serial) {
                            self.joined(&m, fds);
                            continue;
                        }
                    }
                }
                let joined = match &*self.shared.phase.borrow() {
                    Phase::Joined(m) => Some(Arc::clone(m)),
                    _ => None,
                };
                match joined {
                    Some(m) => {
                        let call = bytes[1] == wire::METHOD_CALL
                            && bytes[2] & wire::FLAG_NO_REPLY_EXPECTED == 0;
                        if call || m.has_pending_calls() {
                            if let Ok(msg) = Message::parse(bytes.clone(), Vec::new()) {
                                if let Some(r) = msg.reply_serial() {
                                    m.note_reply(r);
                                }
                                if let (true, Some(sender)) = (call, msg.sender()) {
                                    let mut calls =
                                        self.shared.stream_calls.lock().expect("calls lock");
                                    // Bounded: past this, replies go directly (still
                                    // delivered; only the daemon's accounting suffers).
                                    if calls.len() < 65536 {
                                        calls.insert((sender.to_string(), msg.serial()));
                                    }
                                }
                            }
                        }
                    }
                    None => {
                        if matches!(*self.shared.phase.borrow(), Phase::Start) {
                            // The first message after authenticating answers Hello.
                            self.shared.send_join().await?;
                        }
                    }
                }
                return to_zbus(bytes, fds, seq).await;
            }
            if let Some(error) = self.made.pop_front() {
                return to_zbus(error, Vec::new(), seq).await;
            }
            let member = match &*self.shared.phase.borrow() {
                Phase::Joined(m) => Some(Arc::clone(m)),
                _ => None,
            };
            let (shared, chunk, datagram) = (&self.shared, &mut self.chunk, &mut self.datagram);
            let (n, fds) = match member {
                None => shared.recvmsg(chunk).await?,
                Some(m) => {
                    // Whatever is ready to read goes first; while direct calls wait for
                    // replies, their callees are checked now and then (a reply queued
                    // before the callee left is always read before its absence is noticed).
                    let made = m.take_made();
                    if !made.is_empty() {
                        self.made.extend(made);
                        continue;
                    }
                    let watching = m.has_pending_calls();
                    tokio::select! {
                        biased;
                        r = shared.recvmsg(chunk) => r?,
                        frame = m.receive(datagram) => {
                            let (bytes, fds) = frame?;
                            return to_zbus(bytes, fds, seq).await;
                        }
                        _ = tokio::time::sleep(CALLEE_CHECK), if watching => {
                            self.made.extend(m.orphaned_calls());
                            continue;
                        }
                        _ = m.calls_changed.notified(), if !watching => continue,
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
            self.buf.extend_from_slice(&self.chunk[..n]);
            self.fds.extend(fds);
        }
    }

    /// Used by zbus for the authentication only: the bus's GUID (in its `OK` line) is
    /// noted, so that figures are told apart between buses.
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let r = self.shared.recvmsg(buf).await?;
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
        // Everything that needs the parsed message happens here, before any waiting.
        let plan = Message::parse(data.to_vec(), Vec::new())
            .ok()
            .and_then(|m| {
                self.shared.note_rules(&m);
                match &phase {
                    Phase::Joined(member) => {
                        let through_daemon = match (m.reply_serial(), m.destination()) {
                            (Some(r), Some(d)) => self
                                .shared
                                .stream_calls
                                .lock()
                                .expect("calls lock")
                                .remove(&(d.to_string(), r)),
                            _ => false,
                        };
                        m.forward(&member.unique)
                            .map(|m| member.plan(&m, through_daemon))
                    }
                    _ => None,
                }
            });
        match (phase, plan) {
            (Phase::Joined(member), Some(plan)) => match member.send(plan, &raw).await? {
                Sent::Done => Ok(()),
                Sent::TooLarge => {
                    member
                        .counters
                        .via_stream
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::member::touched();
                    Ok(self.shared.write_all(data, &raw).await?)
                }
            },
            _ => Ok(self.shared.write_all(data, &raw).await?),
        }
    }

    async fn sendmsg(&mut self, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.shared.sendmsg(buffer, &raw).await
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
