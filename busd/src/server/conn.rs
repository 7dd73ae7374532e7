//! One client connection: authentication, reading messages with their fds, and the output
//! queue (partial writes, fds sent with a message's first byte).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use nix::sys::socket::{self, sockopt, MsgFlags};

use crate::bus::{Credentials, Meters};
use crate::queue::Outgoing;
use busd_wire::fds;
use busd_wire::message::{self, Message};
use busd_wire::sasl::{Mechanism, SaslServer};

pub const READ_CHUNK: usize = 64 * 1024;

pub enum ReadOutcome {
    /// Read something; there may be more.
    More,
    /// Read less than asked, without descriptors: the kernel had no more then, unless
    /// the peer hung up too (see [`crate::server`]'s `Until`).
    Short,
    /// Nothing more to read for now.
    Drained,
    Closed,
    Invalid(String),
}

/// Messages one write takes at most.
const MAX_WRITE_BATCH: usize = 64;

/// Bytes of authentication replies a client may leave unread (libdbus's bound).
const MAX_AUTH_OUTPUT: usize = 16 * 1024;

pub struct Conn {
    stream: UnixStream,
    sasl: Option<SaslServer>,
    auth_deadline: Option<Instant>,
    /// Since when fds have waited for the rest of their message (pending_fd_timeout).
    fds_pending_since: Option<Instant>,
    /// The deadline of the one timer the shell keeps for this connection's fds (an earlier
    /// pending period's, or the current one's): at most one at a time, so that a client
    /// that starts and ends pending periods fast does not fill the shell's timer heap.
    fds_timer_at: Option<Instant>,
    creds: Credentials,
    meters: Meters,
    unix_fds: bool,
    inbuf: Vec<u8>,
    infds: VecDeque<OwnedFd>,
    messages: Vec<Message>,
    /// SASL replies, written before any message.
    auth_out: Vec<u8>,
    outq: VecDeque<(Outgoing, usize)>,
    /// What was last written asks for an answer: a message other than a signal
    /// ([`crate::server::write_space`]).
    last_write_converses: bool,
    /// Its socket is armed in [`crate::server::write_space`].
    pub write_space_armed: bool,
}

/// The authentication conversation of a new connection; DBUS_COOKIE_SHA1, when offered,
/// uses the keyring of the bus's own user.
fn sasl_server(mechanisms: &[Mechanism], uid: Option<u32>, guid: &str) -> SaslServer {
    let sasl = SaslServer::new(mechanisms.to_vec(), uid, guid, true);
    if mechanisms.contains(&Mechanism::CookieSha1) {
        sasl.with_cookies(Box::new(super::keyring::Keyring::of_this_user()))
    } else {
        sasl
    }
}

impl Conn {
    pub fn new(
        stream: UnixStream,
        mechanisms: &[Mechanism],
        guid: &str,
        auth_timeout: Duration,
    ) -> io::Result<Conn> {
        let cred =
            socket::getsockopt(&stream, sockopt::PeerCredentials).map_err(io::Error::from)?;
        let pid = cred.pid() as u32;
        let creds = Credentials {
            uid: Some(cred.uid()),
            pid: Some(pid),
            gid: Some(cred.gid()),
            groups: super::identity::peer_groups(std::os::fd::AsFd::as_fd(&stream), cred.gid()),
            at_console: false,
            // Read once the client authenticated and the policy let it in (as dbus-daemon
            // reads it when a connection completes): not for every socket that connects.
            command: None,
        };
        Ok(Conn {
            sasl: Some(sasl_server(mechanisms, creds.uid, guid)),
            auth_deadline: Some(Instant::now() + auth_timeout),
            fds_pending_since: None,
            fds_timer_at: None,
            stream,
            creds,
            meters: Meters::default(),
            unix_fds: false,
            inbuf: Vec::new(),
            infds: VecDeque::new(),
            messages: Vec::new(),
            auth_out: Vec::new(),
            outq: VecDeque::new(),
            last_write_converses: false,
            write_space_armed: false,
        })
    }

    pub fn source(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    pub fn is_authenticated(&self) -> bool {
        self.sasl.is_none()
    }

    /// Until the connection says Hello, it must get there before auth_timeout (as in
    /// dbus-daemon, where it is "incomplete" until then).
    pub fn auth_deadline(&self) -> Option<Instant> {
        self.auth_deadline
    }

    /// The connection said Hello: it is complete, and no longer on the clock.
    pub fn completed(&mut self) {
        self.auth_deadline = None;
    }

    pub fn is_complete(&self) -> bool {
        self.auth_deadline.is_none()
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    pub fn credentials_mut(&mut self) -> &mut Credentials {
        &mut self.creds
    }

    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// When fds that arrived without the rest of their message have waited too long.
    pub fn fds_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.fds_pending_since.map(|t| t + timeout)
    }

    /// The fds deadline the shell should arm a timer for: only while it keeps none for
    /// this connection (one it keeps fires no later than the current deadline, and is
    /// followed by this one's then: see [`Conn::fds_timer_fired`]).
    pub fn fds_timer(&mut self, timeout: Duration) -> Option<Instant> {
        let d = self.fds_deadline(timeout)?;
        if self.fds_timer_at.is_some() {
            return None;
        }
        self.fds_timer_at = Some(d);
        Some(d)
    }

    /// The shell's fds timer at `at` fired (or was found not to stand).
    pub fn fds_timer_fired(&mut self, at: Instant) {
        if self.fds_timer_at == Some(at) {
            self.fds_timer_at = None;
        }
    }

    /// Whether a timer at `at` is this connection's authentication deadline or its fds
    /// timer.
    pub fn deadline_is(&self, at: Instant) -> bool {
        self.auth_deadline == Some(at) || self.fds_timer_at == Some(at)
    }

    pub fn unix_fds(&self) -> bool {
        self.unix_fds
    }

    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    /// Reads once from the socket into `buf` (the shell's, reused for every read: a
    /// fresh zeroed 64 KiB per read cost more than the read); complete messages are
    /// collected for [`Conn::take_messages`].
    pub fn read_once(&mut self, limits: &busd_policy::Limits, buf: &mut [u8]) -> ReadOutcome {
        let r = fds::recv::<()>(self.stream.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT);
        let (n, fds) = match r {
            // The kernel could not give this process every descriptor that came (it is
            // out of them): the message cannot be delivered whole, and the stream cannot
            // go on without it. dbus-daemon disconnects too; the log says whose fault.
            Ok(r) if r.flags.contains(MsgFlags::MSG_CTRUNC) => {
                return ReadOutcome::Invalid(
                    "descriptors sent with a message were lost: the bus is out of file descriptors"
                        .into(),
                );
            }
            Ok(r) => (r.len, r.fds),
            Err(nix::errno::Errno::EAGAIN) => return ReadOutcome::Drained,
            Err(e) => {
                tracing::debug!("read failed: {e}");
                return ReadOutcome::Closed;
            }
        };
        if n == 0 && fds.is_empty() {
            return ReadOutcome::Closed;
        }
        // (The kernel ends a read early after a message with descriptors, so only a short
        // read without them says the queue was empty.)
        let short = n < buf.len() && fds.is_empty();
        self.infds.extend(fds);
        self.inbuf.extend_from_slice(&buf[..n]);
        if let Err(why) = self.process(limits) {
            return ReadOutcome::Invalid(why);
        }
        // What waits now is for the message not yet whole: one message's worth at most (the
        // kernel hands over one sendmsg's descriptors per read). Without this bound a client
        // could hold descriptors by the hundred per write until the bus had none left (the
        // pending-fd timeout alone lets them stay for minutes); libdbus disconnects too.
        if self.infds.len() as u64 > limits.max_message_unix_fds {
            return ReadOutcome::Invalid(format!(
                "{} unix fds wait for a message, more than max_message_unix_fds",
                self.infds.len()
            ));
        }
        // Checked after the SASL lines of the same read were taken in: fds may follow
        // NEGOTIATE_UNIX_FD and BEGIN in one read.
        if !self.infds.is_empty() && !self.unix_fds {
            return ReadOutcome::Invalid("unix fds sent without NEGOTIATE_UNIX_FD".into());
        }
        if self.infds.is_empty() {
            self.fds_pending_since = None;
        } else if self.fds_pending_since.is_none() {
            self.fds_pending_since = Some(Instant::now());
        }
        if short {
            ReadOutcome::Short
        } else {
            ReadOutcome::More
        }
    }

    fn process(&mut self, limits: &busd_policy::Limits) -> Result<(), String> {
        if let Some(sasl) = &mut self.sasl {
            let progress = sasl
                .feed(&self.inbuf, &mut self.auth_out)
                .map_err(|e| e.to_string())?;
            self.inbuf.drain(..progress.consumed);
            // A client that keeps typing commands and never reads the answers would make
            // them pile up here for the whole auth_timeout: past what any honest
            // conversation needs, it is disconnected (as libdbus's MAX_BUFFER does).
            if self.auth_out.len() > MAX_AUTH_OUTPUT {
                return Err("authentication replies not read by the client".into());
            }
            if !progress.done {
                return Ok(());
            }
            self.unix_fds = sasl.unix_fd_negotiated();
            if let Some(busd_wire::sasl::Identity::Anonymous) = sasl.identity() {
                // An anonymous peer has no identity the bus may rely on.
                self.creds.uid = None;
                self.creds.groups.clear();
            }
            self.sasl = None;
        }
        // Messages are taken from `start` on, and what they took goes in one move at the
        // end (not one per message: a read of many small ones would move the rest of the
        // buffer each time).
        let mut start = 0;
        while self.inbuf.len() - start >= message::FIXED_HEADER_SIZE {
            let head = &self.inbuf[start..start + message::FIXED_HEADER_SIZE];
            let total = message::total_length(head).map_err(|e| e.to_string())?;
            if total as u64 > limits.max_message_size {
                return Err(format!("message of {total} bytes exceeds max_message_size"));
            }
            if self.inbuf.len() - start < total {
                break;
            }
            let bytes: Vec<u8> = if start == 0 && self.inbuf.len() == total {
                std::mem::take(&mut self.inbuf)
            } else {
                start += total;
                self.inbuf[start - total..start].to_vec()
            };
            // (With no descriptors waiting, which is nearly always, the header is read
            // once, by the parse, rather than scanned for UNIX_FDS first.)
            let declared = if self.infds.is_empty() {
                None
            } else {
                Some(message::declared_unix_fds(&bytes))
            };
            let check = |declared: u32| {
                if declared as u64 > limits.max_message_unix_fds {
                    return Err(format!(
                        "message carries {declared} fds, more than max_message_unix_fds"
                    ));
                }
                if declared as usize > self.infds.len() {
                    return Err("message declares more unix fds than were sent".to_string());
                }
                Ok(())
            };
            let msg = match declared {
                Some(declared) => {
                    check(declared)?;
                    let fds: Vec<OwnedFd> = self.infds.drain(..declared as usize).collect();
                    Message::parse(bytes, fds).map_err(|e| e.to_string())?
                }
                None => {
                    let msg = Message::parse(bytes, Vec::new()).map_err(|e| e.to_string())?;
                    check(msg.unix_fds())?;
                    msg
                }
            };
            self.messages.push(msg);
        }
        self.inbuf.drain(..start);
        Ok(())
    }

    /// Output is waiting for the socket to take it.
    pub fn has_output(&self) -> bool {
        !self.auth_out.is_empty() || !self.outq.is_empty()
    }

    /// Whether the bus wants to be woken as the peer reads: while output waits for room,
    /// and while what it was last sent asks for an answer.
    pub fn wants_write_space(&self) -> bool {
        self.has_output() || self.last_write_converses
    }

    pub fn queue(&mut self, out: Outgoing) {
        self.meters
            .outgoing
            .add(out.bytes.len() as u64, out.fds.len() as u64);
        self.outq.push_back((out, 0));
    }

    /// Writes as much queued output as the socket takes.
    pub fn flush(&mut self) -> io::Result<()> {
        let fd = self.stream.as_raw_fd();
        while !self.auth_out.is_empty() {
            match socket::send(
                fd,
                &self.auth_out,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => drop(self.auth_out.drain(..n)),
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some((first, offset)) = self.outq.front() {
            // One sendmsg for as many queued messages as follow without fds of their own:
            // a message's fds go with its first byte, so one that has some starts the next
            // call. (The kernel keeps them with the bytes they came with: a reader gets
            // them with the read that reaches that message, never with an earlier one.)
            let raw: Vec<RawFd> = if *offset == 0 {
                first.fds.iter().map(|f| f.as_raw_fd()).collect()
            } else {
                Vec::new()
            };
            let mut iov = [IoSlice::new(&[]); MAX_WRITE_BATCH];
            let (mut count, mut converses) = (0, false);
            for (i, (out, offset)) in self.outq.iter().enumerate().take(MAX_WRITE_BATCH) {
                if i > 0 && !out.fds.is_empty() {
                    break;
                }
                iov[i] = IoSlice::new(&out.bytes[*offset..]);
                converses |= out.bytes.get(1) != Some(&message::SIGNAL);
                count += 1;
            }
            match fds::send::<()>(fd, &iov[..count], &raw, MsgFlags::MSG_DONTWAIT, None) {
                Ok(mut n) => {
                    self.last_write_converses = converses;
                    while let Some((out, offset)) = self.outq.front_mut() {
                        let left = out.bytes.len() - *offset;
                        if n < left {
                            *offset += n;
                            break;
                        }
                        n -= left;
                        self.meters
                            .outgoing
                            .sub(out.bytes.len() as u64, out.fds.len() as u64);
                        self.outq.pop_front();
                        if n == 0 {
                            break;
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                // The kernel refuses the first message's descriptors: this user has too many
                // in flight (ETOOMANYREFS: other peers do not read theirs) or they are more
                // than one sendmsg may carry (EINVAL). That message cannot be delivered, as
                // dbus-daemon finds; the peer is not at fault and stays connected.
                Err(e @ (nix::errno::Errno::ETOOMANYREFS | nix::errno::Errno::EINVAL))
                    if !raw.is_empty() =>
                {
                    tracing::warn!(
                        fds = raw.len(),
                        "a message with unix fds could not be sent ({e}); dropping it"
                    );
                    if let Some((out, _)) = self.outq.pop_front() {
                        self.meters
                            .outgoing
                            .sub(out.bytes.len() as u64, out.fds.len() as u64);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_and_peer() -> (Conn, std::os::unix::net::UnixStream) {
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let conn = Conn::new(
            UnixStream::from_std(ours),
            &[Mechanism::External],
            "0123456789abcdef0123456789abcdef",
            Duration::from_secs(30),
        )
        .unwrap();
        (conn, peer)
    }

    fn message(byte: u8, len: usize, fds: usize) -> Outgoing {
        let fds = (0..fds)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect();
        Outgoing::new(vec![byte; len], fds)
    }

    /// Reads exactly `len` bytes (in as many reads as it takes); returns them and the fds
    /// that came with them.
    fn read(peer: &std::os::unix::net::UnixStream, len: usize) -> (Vec<u8>, usize) {
        let (mut bytes, mut fds) = (Vec::new(), 0);
        while bytes.len() < len {
            let mut buf = vec![0; len - bytes.len()];
            let r = fds::recv::<()>(peer.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
            assert!(r.len > 0, "the connection closed");
            bytes.extend_from_slice(&buf[..r.len]);
            fds += r.fds.len();
        }
        (bytes, fds)
    }

    /// Messages queued together leave in as few writes as their fds allow, and each
    /// message's fds still come with its own first byte: never with an earlier message's
    /// bytes, as a reader that reads up to a message's end would otherwise get them.
    #[test]
    fn queued_messages_go_out_together_and_fds_keep_their_message() {
        let (mut conn, peer) = conn_and_peer();
        for m in [
            message(1, 10, 0),
            message(2, 20, 0),
            message(3, 30, 2),
            message(4, 40, 0),
            message(5, 50, 1),
        ] {
            conn.queue(m);
        }
        conn.flush().unwrap();
        assert!(!conn.has_output());
        assert_eq!(conn.meters().outgoing.bytes(), 0);
        let expect = |b: u8, n: usize| vec![b; n];
        assert_eq!(
            read(&peer, 30),
            ([expect(1, 10), expect(2, 20)].concat(), 0)
        );
        assert_eq!(
            read(&peer, 70),
            ([expect(3, 30), expect(4, 40)].concat(), 2)
        );
        assert_eq!(read(&peer, 50), (expect(5, 50), 1));
    }

    /// A write the socket takes only in part goes on where it stopped, whatever message
    /// it stopped in, and sends no message's fds twice.
    #[test]
    fn a_partial_write_goes_on_where_it_stopped() {
        let (mut conn, peer) = conn_and_peer();
        let mut expected = Vec::new();
        let mut fds_expected = 0;
        for i in 0..200u8 {
            let (len, fds) = (1000 + 997 * (i as usize % 7), usize::from(i % 50 == 0));
            expected.extend(std::iter::repeat_n(i, len));
            fds_expected += fds;
            conn.queue(message(i, len, fds));
        }
        let (mut got, mut fds_got) = (Vec::new(), 0);
        while got.len() < expected.len() {
            conn.flush().unwrap();
            let chunk = (expected.len() - got.len()).min(12_345);
            let (bytes, fds) = read(&peer, chunk);
            got.extend(bytes);
            fds_got += fds;
        }
        assert!(got == expected, "the bytes came in order");
        assert_eq!(fds_got, fds_expected);
        assert!(!conn.has_output());
    }

    /// However many pending periods start and end, the shell keeps one fds timer per
    /// connection: the next is asked for when that one fires.
    #[test]
    fn one_fds_timer_at_a_time() {
        let (mut conn, _peer) = conn_and_peer();
        let timeout = Duration::from_secs(150);
        let t0 = Instant::now();
        conn.fds_pending_since = Some(t0);
        assert_eq!(conn.fds_timer(timeout), Some(t0 + timeout));
        for i in 1..1000 {
            conn.fds_pending_since = None;
            conn.fds_pending_since = Some(t0 + Duration::from_millis(i));
            assert_eq!(conn.fds_timer(timeout), None, "period {i}");
        }
        assert!(conn.deadline_is(t0 + timeout));
        conn.fds_timer_fired(t0 + timeout);
        assert!(!conn.deadline_is(t0 + timeout));
        let current = t0 + Duration::from_millis(999) + timeout;
        assert_eq!(conn.fds_timer(timeout), Some(current));
        assert!(conn.deadline_is(current));
    }

    /// Several messages in one read, the last cut short: each is taken whole and in order,
    /// and the rest of the last waits for the next read.
    #[test]
    fn messages_are_taken_from_a_read_in_order_and_a_partial_one_waits() {
        use busd_wire::message::{encode, HeaderFields, SIGNAL};
        use std::io::Write;
        let (mut conn, mut peer) = conn_and_peer();
        let limits = busd_policy::Limits::default();
        let mut buf = vec![0; READ_CHUNK];
        let auth = busd_wire::sasl::auth_external(nix::unistd::getuid().as_raw());
        peer.write_all(format!("{auth}BEGIN\r\n").as_bytes())
            .unwrap();
        let signal = |serial: u32| {
            let member = format!("M{serial}");
            let f = HeaderFields {
                path: Some("/p"),
                interface: Some("a.b"),
                member: Some(&member),
                ..Default::default()
            };
            encode(
                busd_wire::marshal::Endian::Little,
                SIGNAL,
                0,
                serial,
                &f,
                &[],
            )
        };
        let all: Vec<u8> = (1..=4).flat_map(signal).collect();
        let cut = all.len() - 5;
        peer.write_all(&all[..cut]).unwrap();
        conn.read_once(&limits, &mut buf);
        assert!(conn.is_authenticated());
        let serials =
            |c: &mut Conn| -> Vec<u32> { c.take_messages().iter().map(|m| m.serial()).collect() };
        assert_eq!(serials(&mut conn), [1, 2, 3]);
        peer.write_all(&all[cut..]).unwrap();
        conn.read_once(&limits, &mut buf);
        assert_eq!(serials(&mut conn), [4]);
    }

    /// A message whose descriptors the kernel refuses (more than one sendmsg may carry
    /// here: EINVAL; too many in flight for the bus's user: ETOOMANYREFS) cannot be
    /// delivered: it is dropped, and the connection goes on with the next ones.
    #[test]
    fn a_message_whose_fds_the_kernel_refuses_is_dropped_not_the_connection() {
        let (mut conn, peer) = conn_and_peer();
        conn.queue(message(1, 10, 0));
        conn.queue(message(2, 20, 254));
        conn.queue(message(3, 30, 1));
        conn.flush().unwrap();
        assert!(!conn.has_output());
        assert_eq!(conn.meters().outgoing.bytes(), 0);
        assert_eq!(read(&peer, 10), (vec![1; 10], 0));
        assert_eq!(read(&peer, 30), (vec![3; 30], 1));
    }
}
