//! A joined connection: its member socket, the shared memory it maps, and its one state;
//! sending a message (route, frame, deliver) and taking in frames (check, want, hand over).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use busd_match::header::{self, TO_DAEMON};
use busd_match::protocol;
use busd_match::table::Table;
use busd_wire::message::{Message, METHOD_CALL};
use busd_wire::names;
use nix::sys::socket::UnixAddr;
use tokio::io::Interest;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::backlog::{Backlogs, Delivery, Outgoing, Service};
use crate::batch::Batch;
use crate::calls::Calls;
use crate::causal::{Causal, Progress, Sends};
use crate::fanout::too_large;
use crate::figures::{Counters, Publisher};
use crate::frame::Frame;
use crate::receive::{self, Checked, Me, Refusal, Want};
use crate::returns::Returnable;
use crate::route::{self, Route};
use crate::rules::Rules;
use crate::table::{Cached, TableView};

/// A connection on the fast path (made by `crate::join` from the daemon's answer), shared
/// by its read and write halves and by the backlog service.
pub struct Member {
    pub id: u32,
    pub unique: String,
    pub(crate) dir: PathBuf,
    /// Registered with the connection's runtime, but blocking: every wait-free call passes
    /// MSG_DONTWAIT, and a send to the daemon can then wait in the kernel (`crate::join`).
    pub(crate) socket: tokio::net::UnixDatagram,
    /// This member's end of the pair of sockets to the daemon's inbox for it (blocking,
    /// like `socket`; only sent on).
    pub(crate) inbox: std::os::unix::net::UnixDatagram,
    pub(crate) table: TableView,
    pub(crate) progress: Progress,
    pub(crate) counters: Arc<Counters>,
    /// Bytes one receiver's backlog may hold (`fastpath_backlog=` in the address).
    pub(crate) backlog_bound: usize,
    /// The backlog service of the connection's runtime.
    pub(crate) service: Arc<Service>,
    pub(crate) figures: Arc<Publisher>,
    /// This process's pid namespace, to compare members' pids in ([`receive::attested`]).
    pub(crate) pid_namespace: u64,
    /// Wakes the read half: a direct call started waiting (its callee is watched), or
    /// messages were made for zbus.
    pub wake: Notify,
    /// Use [`Member::state`].
    pub(crate) state: Mutex<State>,
}

/// Everything about the connection that changes, behind its one lock. The lock is held
/// for bookkeeping only: never across an await, a send or a read of a memfd.
#[derive(Default)]
pub(crate) struct State {
    pub rules: Rules,
    pub calls: Calls,
    pub table: Cached,
    pub backlogs: Backlogs,
    pub sends: Sends,
    pub causal: Causal,
    /// What receivers may give back ([`Returnable`]).
    pub returnable: Returnable,
    /// Messages given back, on their way to the daemon in the order they came back; a
    /// task sends them while this is not empty.
    pub resends: VecDeque<Arc<Frame>>,
}

/// What sending a message came to.
pub enum Sent {
    Done,
    /// Larger than a datagram may be: send it on the stream instead.
    TooLarge,
}

/// What the member socket gave the read half.
pub enum Incoming {
    /// A message for zbus, and its fds.
    Message(Vec<u8>, Vec<OwnedFd>),
    /// A broadcast only an AddMatch the bus has not answered yet wants: the read half keeps
    /// it, and takes no more frames (so nothing overtakes it), until the bus answered.
    Held(Held),
}

pub struct Held {
    checked: Checked,
    fds: Vec<OwnedFd>,
    pub since: Instant,
}

/// How long after the daemon noted a member's socket shut down a frame the kernel queued
/// from that member's path is still taken as the member's: a send that passed the kernel's
/// check just before the shutdown may queue its datagram just after, and the daemon reads
/// the clock once the shutdown returned. (A process that binds the path again waits for the
/// daemon to remove the name first, moments before the shutdown.)
pub const QUEUED_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

impl Member {
    /// The connection's state. A poisoned lock is taken as it is: every update under it is
    /// a few map and counter operations that leave the state consistent at each step.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn path_of(&self, member: u32) -> PathBuf {
        self.dir.join(protocol::socket_name(member))
    }

    /// The address of member `member`'s socket, made without allocating (a broadcast
    /// needs one per receiver per message).
    pub(crate) fn address_of(&self, member: u32) -> io::Result<UnixAddr> {
        use std::io::Write;
        use std::os::unix::ffi::OsStrExt;
        let dir = self.dir.as_os_str().as_bytes();
        // sun_path's size: a longer path is refused by UnixAddr::new as it would be here.
        let mut path = [0u8; 108];
        let mut w = &mut path[..];
        w.write_all(dir)
            .and_then(|()| write!(w, "/{member}"))
            .map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let len = 108 - w.len();
        debug_assert_eq!(&path[..len], self.path_of(member).as_os_str().as_bytes());
        UnixAddr::new(std::ffi::OsStr::from_bytes(&path[..len])).map_err(io::Error::from)
    }

    fn me(&self) -> Me<'_> {
        Me {
            id: self.id,
            unique: &self.unique,
            dir: &self.dir,
            pid_namespace: self.pid_namespace,
        }
    }

    /// The routing table as the daemon last published it (decoded only when it changed).
    pub(crate) fn table_now(&self) -> Arc<Table> {
        let seq = self.table.sequence();
        if let Some(t) = self.state().table.fresh(seq) {
            return t;
        }
        match self.table.read() {
            Some((seq, t)) => self.state().table.keep(seq, Arc::new(t), self.id),
            None => Arc::clone(&self.state().table.table),
        }
    }

    /// Writes the figures in the member's progress slot.
    pub(crate) fn publish_figures(&self) {
        busd_match::progress::publish_figures(
            self.progress.words(),
            self.progress.slot,
            &self.counters.figures(),
        );
    }

    /// Sends a message zbus handed over, parsed once by the caller (SENDER is set in its
    /// frame). Frames for other members never wait for a receiver: one whose queue is full
    /// gets them through its backlog.
    pub async fn send(self: &Arc<Self>, msg: &Message, fds: &[RawFd]) -> io::Result<Sent> {
        let table = self.table_now();
        let reply_via_daemon = {
            let mut s = self.state();
            s.rules.asked(msg);
            match (msg.reply_serial(), msg.destination()) {
                (Some(r), Some(d)) => s.calls.reply_via_daemon(d, r),
                _ => false,
            }
        };
        let route = route::plan(msg, &table, self.id, reply_via_daemon);
        let frame = Arc::new(Frame::new(msg, self.id, &self.unique, route.destination()));
        if frame.too_large_inline() {
            return Ok(Sent::TooLarge);
        }
        if let Route::Direct {
            members,
            destination: 0,
            skipped,
            ..
        } = &route
        {
            Counters::add(&self.counters.skipped, *skipped);
            if !members.is_empty() {
                Counters::add(&self.counters.fan_outs, 1);
            }
        }
        if let (Route::Direct { destination, .. }, Some(d)) = (&route, msg.destination()) {
            if *destination != 0 && !names::is_unique_name(d) {
                // Before it leaves: its receiver may give it back at once.
                let mut s = self.state();
                let digest = s.returnable.digest(&frame.message_parts());
                s.returnable.sent(*destination, msg.serial(), digest);
            }
        }
        let call =
            (msg.msg_type() == METHOD_CALL && !msg.no_reply_expected()).then(|| msg.serial());
        let r = self.send_frame(route, &frame, fds, call).await;
        if r.is_err() {
            // It never reached the bus: no answer will come.
            self.state().rules.not_sent(msg.serial());
        }
        r
    }

    async fn send_frame(
        self: &Arc<Self>,
        route: Route,
        frame: &Arc<Frame>,
        fds: &[RawFd],
        call: Option<u32>,
    ) -> io::Result<Sent> {
        if frame.in_memfd() {
            Counters::add(&self.counters.large, 1);
        }
        // Whatever this member received directly is at every receiver first.
        self.wait_causal().await;
        match route {
            Route::Daemon(_) => {
                if let Err(e) = self.send_to_daemon(frame, &frame.fds(fds)).await {
                    return too_large_or(e);
                }
                Counters::add(&self.counters.via_daemon, 1);
                self.figures.touched();
                Ok(Sent::Done)
            }
            Route::Direct {
                members,
                destination,
                copy_to_daemon,
                ..
            } => {
                // Numbered and published before its first datagram leaves, complete once
                // every frame left its backlog (causal order, DESIGN 5.5).
                let n = self.begin_send();
                let mut out = Outgoing::new(frame, fds, n);
                let mut r = self
                    .send_direct(&members, destination, call, &mut out)
                    .await;
                if r.is_ok() && copy_to_daemon {
                    r = self.send_to_daemon(frame, &out.raw).await;
                    if r.is_ok() {
                        Counters::add(&self.counters.via_daemon, 1);
                    }
                }
                self.end_send(n);
                self.figures.touched();
                r.map(|()| Sent::Done).or_else(too_large_or)
            }
        }
    }

    /// The direct part of a send: to each of `members`, or a fan-out.
    async fn send_direct(
        self: &Arc<Self>,
        members: &[u32],
        destination: u32,
        call: Option<u32>,
        out: &mut Outgoing<'_>,
    ) -> io::Result<()> {
        if destination == 0 && members.len() > 1 {
            return self.fan_out(members, out);
        }
        for &m in members {
            if let (Some(serial), true) = (call, destination != 0) {
                self.state().calls.waits(serial, m);
                self.wake.notify_one();
            }
            match self.deliver(m, out)? {
                Delivery::Sent => self.counters.sent_direct(1, out.frame.message_len()),
                Delivery::Queued => {}
                Delivery::Gone if destination != 0 => {
                    // It left since the table was read: the daemon answers a message for
                    // it as dbus-daemon would (and gets what it needs from this copy).
                    debug!(member = m, "member gone");
                    if let Some(serial) = call {
                        self.state().calls.forget(serial);
                    }
                    let routed = Arc::new(out.frame.to_daemon());
                    self.send_to_daemon(&routed, &out.raw).await?;
                    Counters::add(&self.counters.via_daemon, 1);
                    return Ok(());
                }
                // A broadcast skips a receiver that left.
                Delivery::Gone => debug!(member = m, "member gone"),
                Delivery::Rejected => {
                    if let Some(serial) = call {
                        self.state().calls.refuse(serial, &self.unique);
                        self.wake.notify_one();
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for the next frame worth handing to zbus: checked (its source address, header
    /// and SENDER agree) and wanted (addressed to this member, or matched by one of its
    /// rules), or one that must wait for the bus's answer to an AddMatch.
    pub async fn receive(self: &Arc<Self>, batch: &mut Batch) -> io::Result<Incoming> {
        loop {
            // (The datagrams of the last call first: they stay in the batch if the wait
            // is cancelled, and none is taken while a broadcast is held.)
            while let Some(d) = batch.next() {
                let table = self.table_now();
                let me = self.me();
                // (Who sent it first: a large message is read only for a sender that is who
                // it says.)
                let checked = receive::sender_of(d.source, &me)
                    .and_then(|s| receive::attested(s, d.pid, &table, &me).map(|()| s))
                    .and_then(|s| self.not_long_gone(s, &table, d.queued))
                    .and_then(|s| {
                        let limits = (receive::max_message(&table), receive::max_fds(&table));
                        receive::check_from(s, d.frame, &d.fds, &me, limits)
                    });
                let incoming = match checked {
                    Ok(checked) => self.settle(checked, d.fds, d.frame),
                    Err(why) => {
                        self.refused(&why, d.source);
                        None
                    }
                };
                self.figures.touched();
                if let Some(incoming) = incoming {
                    return Ok(incoming);
                }
            }
            batch.wait(self.socket.readable()).await?;
            let r = self.socket.try_io(Interest::READABLE, || {
                match batch.fill(self.socket.as_fd()) {
                    // The call found the queue empty: tokio forgets the readiness now,
                    // rather than after one more call (a datagram that came since raised
                    // an event of its own, which it keeps).
                    Ok(true) => Err(io::ErrorKind::WouldBlock.into()),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            });
            match r {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// What becomes of a checked frame, by the table and rules as they are now.
    fn settle(self: &Arc<Self>, c: Checked, fds: Vec<OwnedFd>, frame: &[u8]) -> Option<Incoming> {
        let table = self.table_now();
        let want = {
            let mut s = self.state();
            let want = receive::wanted(&c, &table, &s.rules, &self.me());
            if want == Want::Deliver {
                // (Only the callee's answer ends a direct call's wait for NoReply.)
                if let Some(r) = c.msg.reply_serial() {
                    s.calls.answered_by(r, c.sender);
                    s.returnable.answered(c.sender, r);
                }
                self.note_progress(&mut s, c.sender, &table);
            }
            want
        };
        match want {
            Want::Deliver => Some(self.delivered(c, fds)),
            Want::Return => {
                self.give_back(c, frame, fds);
                None
            }
            Want::Resend => {
                self.resend(c);
                None
            }
            Want::NotDirect => {
                self.not_direct(c.sender);
                None
            }
            Want::Wait => Some(Incoming::Held(Held {
                checked: c,
                fds,
                since: Instant::now(),
            })),
            Want::Unwanted => {
                Counters::add(&self.counters.filtered, 1);
                None
            }
        }
    }

    /// A held broadcast, judged again now that the bus answered (or, `expired`, did not in
    /// time: an unanswered AddMatch then counts as refused). None when it is dropped;
    /// [`Incoming::Held`] gives it back while it still waits.
    pub fn judge_held(self: &Arc<Self>, held: Held, expired: bool) -> Option<Incoming> {
        let table = self.table_now();
        let want = {
            let mut s = self.state();
            let want = receive::wanted(&held.checked, &table, &s.rules, &self.me());
            if want == Want::Deliver {
                self.note_progress(&mut s, held.checked.sender, &table);
            }
            want
        };
        match want {
            Want::Deliver => Some(self.delivered(held.checked, held.fds)),
            Want::Wait if !expired => Some(Incoming::Held(held)),
            // (A broadcast is never forwarded.)
            _ => {
                Counters::add(&self.counters.filtered, 1);
                None
            }
        }
    }

    /// A frame for the application: its message, and its own fds (the memfd it may have
    /// come in is not the application's).
    fn delivered(&self, c: Checked, mut fds: Vec<OwnedFd>) -> Incoming {
        if c.memfd && !fds.is_empty() {
            fds.remove(0);
        }
        // Header fields the bus does not know go, as the daemon drops them from what it
        // forwards (zbus refuses a message with one).
        let bytes = if c.msg.has_unknown_fields() {
            let sender = c.msg.sender().unwrap_or_default().to_string();
            c.msg.forwarded(&sender)
        } else {
            c.msg.into_bytes()
        };
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.received_bytes, bytes.len() as u64);
        Incoming::Message(bytes, fds)
    }

    /// `sender`, unless it left and this frame is not what it sent before: its process
    /// may still hold its socket's path (it left the bus, or became a monitor) and must not
    /// go on sending as its old name. Where the kernel stamped the frame as it queued it and
    /// the table tells when the daemon shut the member's socket down, the frame is its own
    /// if it was queued before (within [`QUEUED_SLACK`]); otherwise for
    /// [`crate::table::DEPARTED_GRACE`] after this member first saw it leave.
    fn not_long_gone(
        &self,
        sender: u32,
        table: &Table,
        queued: Option<u64>,
    ) -> Result<u32, Refusal> {
        // (The state's lock and the clock only for a sender the table lists as departed:
        // every datagram comes this way.)
        let Some(m) = table.member(sender).filter(|m| m.departed) else {
            return Ok(sender);
        };
        let gone = crate::table::departed_frame_refused(
            &self.state().table,
            sender,
            queued,
            m.left,
            QUEUED_SLACK,
            std::time::Instant::now(),
        );
        if gone {
            return Err(Refusal::Spoofed(format!(
                "member {sender} had left before this frame was sent"
            )));
        }
        Ok(sender)
    }

    /// A message zbus could not decode (it passed busd's own checks): dropped and counted
    /// as malformed.
    pub(crate) fn undecodable(&self, e: &zbus::Error) {
        self.refused(
            &Refusal::Malformed(format!("zbus cannot decode its message: {e}")),
            None,
        );
    }

    /// Drops a frame that is not what a member sends: counted, and said the first time.
    fn refused(&self, why: &Refusal, source: Option<&Path>) {
        let (counter, why) = match why {
            Refusal::Spoofed(w) => (&self.counters.spoofed, w),
            Refusal::Malformed(w) => (&self.counters.malformed, w),
        };
        if counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            warn!("dropped a fast-path frame from {source:?}: {why} (counted from now on)");
        }
    }

    /// Gives a frame for a name this member does not own back to the member that sent it
    /// (DESIGN 5.8), which resends it through the daemon as itself. Through that member's
    /// backlog when its queue is full; a member that does not read its own returns loses
    /// them (counted in `rejected`), as a reader that does not read loses messages.
    fn give_back(self: &Arc<Self>, c: Checked, frame: &[u8], mut fds: Vec<OwnedFd>) {
        let mut bytes = frame.to_vec();
        header::mark_returned(&mut bytes, self.id, c.sender);
        // (Only the memfd travels with it: messages with descriptors never come here.)
        let memfd = if c.memfd && !fds.is_empty() {
            Some(fds.remove(0))
        } else {
            None
        };
        let back = Arc::new(Frame::given_back(bytes, memfd, c.msg.bytes().len() as u64));
        let n = self.begin_send();
        let mut out = Outgoing::new(&back, &[], n);
        match self.deliver(c.sender, &mut out) {
            Ok(Delivery::Sent | Delivery::Queued) => Counters::add(&self.counters.returned, 1),
            Ok(Delivery::Gone) => debug!(member = c.sender, "gone before it got its message back"),
            Ok(Delivery::Rejected) => {}
            Err(e) => warn!(member = c.sender, "cannot give a message back: {e}"),
        }
        self.end_send(n);
    }

    /// A message of this member's that a receiver gave back: resent through the daemon,
    /// in the order messages came back, if it is exactly one this member sent that
    /// receiver directly and not given back before; anything else is a lie, dropped and
    /// counted.
    fn resend(self: &Arc<Self>, c: Checked) {
        let serial = c.msg.serial();
        let start = {
            let mut s = self.state();
            let digest = s.returnable.digest(&[c.msg.bytes()]);
            if !s.returnable.take(c.sender, serial, digest) {
                drop(s);
                let why = format!(
                    "member {} gave back a message this member did not send it",
                    c.sender
                );
                return self.refused(&Refusal::Spoofed(why), Some(&self.path_of(c.sender)));
            }
            // The daemon answers it now; its first receiver no longer does.
            s.calls.forget(serial);
            let frame = Arc::new(Frame::new(&c.msg, self.id, &self.unique, TO_DAEMON));
            s.resends.push_back(frame);
            s.resends.len() == 1
        };
        Counters::add(&self.counters.resent, 1);
        if start {
            let member = Arc::clone(self);
            tokio::spawn(async move { member.send_resends().await });
        }
    }

    /// Sends the messages given back to the daemon, in order, until none is left.
    async fn send_resends(self: Arc<Self>) {
        loop {
            let Some(frame) = self.state().resends.front().cloned() else {
                return;
            };
            if let Err(e) = self.send_to_daemon(&frame, &frame.fds(&[])).await {
                warn!("cannot resend a message through the daemon: {e}");
            }
            Counters::add(&self.counters.via_daemon, 1);
            let mut s = self.state();
            s.resends.pop_front();
            if s.resends.is_empty() {
                return;
            }
        }
    }

    /// A direct frame from a member that may not reach this one directly.
    fn not_direct(&self, sender: u32) {
        if self
            .counters
            .not_direct
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            warn!(
                sender,
                "dropped a direct frame from a member the policy does not let reach this one directly (counted from now on)"
            );
        }
    }

    /// A message from the daemon on the stream, as zbus decoded it: a reply ends a call
    /// waiting for it and may answer an AddMatch or RemoveMatch; a call is remembered, so
    /// that its reply goes back the same way. Returns whether the rules changed.
    pub fn note_stream_message(&self, msg: &zbus::Message) -> bool {
        use zbus::message::{Flags, Type};
        let h = msg.header();
        let reply_serial = h.reply_serial().map(|s| s.get());
        let call = msg.message_type() == Type::MethodCall
            && !msg
                .primary_header()
                .flags()
                .contains(Flags::NoReplyExpected);
        if reply_serial.is_none() && !call {
            return false;
        }
        let mut s = self.state();
        let mut rules_changed = false;
        if let Some(r) = reply_serial {
            // (A direct call's reply through the daemon still names its callee.)
            if let Some(id) = h
                .sender()
                .and_then(|n| busd_match::protocol::member_of_unique(n.as_str()))
            {
                s.calls.answered_by(r, id);
                s.returnable.answered(id, r);
            }
            let kind = match msg.message_type() {
                Type::MethodReturn => busd_wire::message::METHOD_RETURN,
                Type::Error => busd_wire::message::ERROR,
                _ => 0,
            };
            rules_changed = s.rules.answered(kind, h.sender().map(|s| s.as_str()), r);
        }
        if let (true, Some(sender)) = (call, h.sender()) {
            s.calls
                .came_via_daemon(sender.as_str(), msg.primary_header().serial_num().get());
        }
        rules_changed
    }

    /// Whether direct calls wait for replies (then the read half watches their callees).
    pub fn calls_waiting(&self) -> bool {
        self.state().calls.any_waiting()
    }

    /// Ends the direct calls whose callee is no longer in the table with NoReply (looking
    /// only when the table changed or calls were added since the last look). Returns
    /// whether it made any.
    pub fn check_callees(&self) -> bool {
        let seq = self.table.sequence();
        if !self.state().calls.needs_check(seq) {
            return false;
        }
        let table = self.table_now();
        self.state().calls.orphans(seq, &table, &self.unique)
    }

    /// The next message the shim made for zbus (NoReply, LimitsExceeded).
    pub fn take_made(&self) -> Option<Vec<u8>> {
        self.state().calls.take_made()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.figures.ended();
    }
}

fn too_large_or(e: io::Error) -> io::Result<Sent> {
    if too_large(&e) {
        Ok(Sent::TooLarge)
    } else {
        Err(e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::join::Joining;
    use busd_match::progress;
    use busd_match::shm::Mapping;
    use std::os::unix::net::UnixDatagram;

    /// A member with id `id`, its socket bound in `dir`, an empty routing table and its own
    /// progress memory (slot 1); made on the current runtime, as the read half makes it.
    pub fn member(dir: &Path, id: u32) -> Arc<Member> {
        let socket = UnixDatagram::bind(dir.join(protocol::socket_name(id))).unwrap();
        // Sealed as the daemon seals them (a member refuses memory that could shrink).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        let (table, _) =
            Mapping::create("table", busd_match::table::words_for(4096) * 8, seals).unwrap();
        let (progress, map) =
            Mapping::create("progress", progress::words_for(4) * 8, seals).unwrap();
        progress::init(map.words());
        progress::assign(map.words(), 1, id);
        let (daemons_end, inbox) = UnixDatagram::pair().unwrap();
        // (Kept open for the test's life: what is sent to the daemon waits there unread.)
        std::mem::forget(daemons_end);
        let j = Joining {
            id,
            unique: protocol::unique_of_member(id),
            dir: dir.to_path_buf(),
            socket: OwnedFd::from(socket),
            inbox: OwnedFd::from(inbox),
            table,
            progress,
            slot: 1,
        };
        crate::join::member(j, Arc::default(), crate::backlog::DEFAULT_BACKLOG_BYTES).unwrap()
    }

    /// A routing table of another layout (a busd of another version) keeps the connection
    /// on the stream: as a member, it could read no table and would take nothing sent to
    /// it directly.
    #[tokio::test]
    async fn a_table_of_another_layout_keeps_the_connection_on_the_stream() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join(protocol::socket_name(5))).unwrap();
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        let (table, words) =
            Mapping::create("table", busd_match::table::words_for(4096) * 8, seals).unwrap();
        let older = u64::from(busd_match::table::VERSION - 1) << 32;
        words.words()[0].store(older | u64::from(busd_match::table::MAGIC), Relaxed);
        words.words()[1].store(2, Relaxed);
        let (progress, map) =
            Mapping::create("progress", progress::words_for(4) * 8, seals).unwrap();
        progress::init(map.words());
        progress::assign(map.words(), 1, 5);
        let j = Joining {
            id: 5,
            unique: protocol::unique_of_member(5),
            dir: dir.path().to_path_buf(),
            socket: OwnedFd::from(socket),
            inbox: OwnedFd::from(UnixDatagram::pair().unwrap().1),
            table,
            progress,
            slot: 1,
        };
        let e = crate::join::member(j, Arc::default(), crate::backlog::DEFAULT_BACKLOG_BYTES)
            .err()
            .expect("no member");
        assert!(e.to_string().contains("another version"), "{e}");
    }
}
