//! The fast path's trust model (DESIGN 5.8) against a hostile member: each test is one
//! attack, carried out as a program that does not use busd-shim would (frames built byte
//! by byte, sockets bound in the bus's directory, another process holding a member's
//! socket), against victims that are plain zbus connections on busd-shim. Each attack
//! worked against busd before the trust model was built (issue 17).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::Duration;

use busd_match::header::{self, ROUTE_RETURNED, TO_DAEMON};
use busd_match::protocol;
use busd_tests::member::*;
use busd_tests::{write_config, zbus_connect, Busd, Echo};
use busd_wire::message::SIGNAL;
use futures_util::StreamExt;
use zbus::fdo::{DBusProxy, RequestNameFlags};
use zbus::names::BusName;
use zbus::{Connection, MessageStream};

const VICTIM: &str = "org.example.Victim";

/// The current owner of `name`, asked of the bus by a fresh connection.
async fn owner(bus: &Busd, name: &str) -> Option<String> {
    let c = zbus_connect(bus).await;
    DBusProxy::new(&c)
        .await
        .unwrap()
        .get_name_owner(BusName::try_from(name).unwrap())
        .await
        .ok()
        .map(|o| o.to_string())
}

/// Whether `conn` is still connected to the bus: a call to the bus answers within 2 s.
async fn connected(conn: &Connection) -> bool {
    let call = DBusProxy::new(conn);
    let answer = async { call.await?.get_id().await };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), answer).await,
        Ok(Ok(_))
    )
}

/// Waits up to 5 s for `conn` to be disconnected.
async fn disconnected(conn: &Connection) -> bool {
    for _ in 0..10 {
        if !connected(conn).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A zbus connection on busd-shim that owns [`VICTIM`].
async fn victim(bus: &Busd) -> Connection {
    let v = shim(bus, "").await;
    v.request_name(VICTIM).await.unwrap();
    v
}

/// The shim's counters of a connection, once it joined the fast path.
async fn stats(conn: &Connection) -> std::sync::Arc<busd_shim::Counters> {
    for _ in 0..100 {
        if let Some(c) = busd_shim::stats(conn) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection never joined the fast path");
}

/// Waits up to 2 s for `counter` to count something.
async fn counted(counter: &std::sync::atomic::AtomicU64) {
    for _ in 0..100 {
        if counter.load(Ordering::Relaxed) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member's socket name in the directory.
fn path_of(m: &Member, id: u32) -> std::path::PathBuf {
    m.dir.join(protocol::socket_name(id))
}

/// The victim's `ReleaseName` of [`VICTIM`], as bytes (SENDER: the victim).
fn release_victim(victim_name: &str) -> Vec<u8> {
    call_bytes(
        victim_name,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "ReleaseName",
        3,
        Some(VICTIM),
    )
}

/// Item 1: a member passes the daemon a frame carrying the victim's `ReleaseName` (the
/// old "forwarded" frames). The daemon takes nothing from a member under another's name:
/// the victim keeps its name, and the liar is disconnected.
#[tokio::test]
async fn a_member_cannot_make_the_daemon_act_for_another() {
    let bus = Busd::start();
    let v = victim(&bus).await;
    let attacker = member(&bus).await;
    let victim_name = v.unique_name().unwrap().to_string();
    let release = release_victim(&victim_name);
    let mut frame = frame_for(attacker.id, TO_DAEMON, &release);
    frame[header::OFF_KIND as usize + 3] |= ROUTE_RETURNED;
    attacker.send_to_daemon(&frame).unwrap();
    assert!(
        disconnected(&attacker.conn).await,
        "a member that sent under another's name stayed connected"
    );
    assert_eq!(owner(&bus, VICTIM).await, Some(victim_name));
    assert!(connected(&v).await);
}

/// A shim member subscribed to `Ping` signals, its messages and counters.
async fn ping_receiver(
    bus: &Busd,
) -> (
    Connection,
    MessageStream,
    std::sync::Arc<busd_shim::Counters>,
) {
    let receiver = shim(bus, "").await;
    add_match(&receiver, "type='signal',member='Ping'").await;
    let signals = MessageStream::from(&receiver);
    let counters = stats(&receiver).await;
    (receiver, signals, counters)
}

/// The next `Ping` the application gets: its path.
async fn next_ping(signals: &mut MessageStream) -> String {
    timeout(async {
        loop {
            let m = signals.next().await.unwrap().unwrap();
            if m.header().member().is_some_and(|n| n == "Ping") {
                return m.header().path().unwrap().to_string();
            }
        }
    })
    .await
    .expect("no Ping arrived")
}

/// A Ping signal from `sender` at `path`.
fn ping(sender: &str, path: &str) -> Vec<u8> {
    ping_declaring(sender, path, 0)
}

/// Item 2: a process of the bus's user that is no member binds look-alikes of a member's
/// socket name (`02` for member 2) and the name of a member that never was, and sends
/// frames claiming those members. The receiver's application gets none of them; each is
/// counted as spoofed.
#[tokio::test]
async fn sockets_that_only_look_like_members_get_nothing_through() {
    let bus = Busd::start();
    let (receiver, mut signals, counters) = ping_receiver(&bus).await;
    let m = member(&bus).await;
    let to = path_of(&m, member_id(&receiver));
    let never = 4000;
    for (name, id) in [
        (format!("0{}", m.id), m.id),
        (format!("+{}", m.id), m.id),
        (protocol::socket_name(never), never),
    ] {
        let s = UnixDatagram::bind(m.dir.join(&name)).unwrap();
        let frame = frame_for(id, 0, &ping(&protocol::unique_of_member(id), "/forged"));
        s.send_to(&frame, &to).unwrap();
        std::fs::remove_file(m.dir.join(&name)).unwrap();
    }
    m.send_to(
        member_id(&receiver),
        &frame_for(m.id, 0, &ping(&m.unique, "/honest")),
    )
    .unwrap();
    assert_eq!(next_ping(&mut signals).await, "/honest");
    assert_eq!(counters.spoofed.load(Ordering::Relaxed), 3);
}

/// Item 2: another process sends with a member's own socket (it inherited or was passed
/// the descriptor). The kernel names that process, not the one that joined: nothing gets
/// through, and it is counted.
#[tokio::test]
async fn another_process_with_a_members_socket_gets_nothing_through() {
    busd_tests::require("python3-dbus");
    let bus = Busd::start();
    let (receiver, mut signals, counters) = ping_receiver(&bus).await;
    let m = member(&bus).await;
    let frame = frame_for(m.id, 0, &ping(&m.unique, "/other_process"));
    // Also one whose message is in a memfd, not sealed: the receiver must find out who
    // sent it before it reads the memfd (refused as spoofed, not as malformed).
    let (in_memfd, memfd) = Member::in_memfd(
        &frame_for(m.id, 0, &ping(&m.unique, "/other_memfd")),
        false,
        None,
    );
    let to = path_of(&m, member_id(&receiver));
    // Descriptors of the member's socket and of the memfd the child inherits (no CLOEXEC).
    // SAFETY: dups of descriptors this test owns; the copies are closed below.
    let (fd, memfd_copy) = unsafe {
        (
            libc::dup(m.socket.as_raw_fd()),
            libc::dup(memfd.as_raw_fd()),
        )
    };
    assert!(fd >= 0 && memfd_copy >= 0);
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import array, os, socket, sys\n\
             s = socket.socket(fileno=int(sys.argv[1]))\n\
             s.sendto(bytes.fromhex(sys.argv[2]), sys.argv[3])\n\
             fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [int(sys.argv[5])]))]\n\
             s.sendmsg([bytes.fromhex(sys.argv[4])], fds, 0, sys.argv[3])\n",
        ])
        .arg(fd.to_string())
        .arg(hex(&frame))
        .arg(&to)
        .arg(hex(&in_memfd))
        .arg(memfd_copy.to_string())
        .output()
        .unwrap();
    // SAFETY: the copies made above, no longer used.
    unsafe {
        libc::close(fd);
        libc::close(memfd_copy);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.send_to(
        member_id(&receiver),
        &frame_for(m.id, 0, &ping(&m.unique, "/honest")),
    )
    .unwrap();
    assert_eq!(next_ping(&mut signals).await, "/honest");
    assert_eq!(counters.spoofed.load(Ordering::Relaxed), 2);
    assert_eq!(counters.malformed.load(Ordering::Relaxed), 0);
}

/// A bus whose policy denies `com.example.Secret`: no member may exchange messages
/// directly (the daemon must see each one).
fn mediated_bus() -> (tempfile::TempDir, Busd) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "secret.conf",
        r#"<busconfig>
  <include>/usr/share/dbus-1/session.conf</include>
  <policy context="default">
    <deny send_interface="com.example.Secret"/>
  </policy>
</busconfig>"#,
    );
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    (dir, bus)
}

/// Item 3: under a policy that denies an interface, the call through the daemon is
/// refused, and the same call sent straight to the victim's socket is dropped by the
/// victim's shim (whatever the sender's shim would have done), and counted.
#[tokio::test]
async fn receivers_enforce_the_policy_on_direct_frames() {
    let (_dir, bus) = mediated_bus();
    let v = shim(&bus, "").await;
    let counters = stats(&v).await;
    let mut calls = MessageStream::from(&v);
    let attacker = member(&bus).await;
    let secret = |path| {
        call_bytes(
            &attacker.unique,
            v.unique_name().unwrap(),
            path,
            "com.example.Secret",
            "Reveal",
            9,
            None,
        )
    };
    // Through the daemon: AccessDenied, as dbus-daemon answers.
    let refused = attacker
        .conn
        .call_method(
            Some(v.unique_name().unwrap().as_str()),
            "/daemon",
            Some("com.example.Secret"),
            "Reveal",
            &(),
        )
        .await;
    assert!(
        matches!(&refused, Err(zbus::Error::MethodError(n, _, _)) if n.as_str() == "org.freedesktop.DBus.Error.AccessDenied"),
        "{refused:?}"
    );
    let id = member_id(&v);
    attacker
        .send_to(id, &frame_for(attacker.id, id, &secret("/direct")))
        .unwrap();
    counted(&counters.not_direct).await;
    // Then something the policy allows, through the daemon: the first call the
    // application sees. (Nobody answers it: it is not waited for.)
    let open = attacker.conn.clone();
    let dest = v.unique_name().unwrap().to_string();
    let _unanswered = tokio::spawn(async move {
        open.call_method(
            Some(dest.as_str()),
            "/allowed",
            Some("org.example.Open"),
            "Hello",
            &(),
        )
        .await
    });
    let path = timeout(async {
        loop {
            let m = calls.next().await.unwrap().unwrap();
            if let Some(p) = m.header().path() {
                if p.as_str() != "/org/freedesktop/DBus" {
                    return p.to_string();
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        path, "/allowed",
        "the direct Secret call reached the application"
    );
    assert_eq!(counters.not_direct.load(Ordering::Relaxed), 1);
}

/// Item 5: frames for a name the victim does not own (once with more descriptors than the
/// bus allows in a message, once without) used to make the victim pass them to the
/// daemon, which disconnected the victim. Now the victim gives a frame back to its
/// sender (or drops one it could not give back checked), and stays connected.
#[tokio::test]
async fn a_member_cannot_get_another_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "fds.conf",
        r#"<busconfig>
  <include>/usr/share/dbus-1/session.conf</include>
  <limit name="max_message_unix_fds">2</limit>
</busconfig>"#,
    );
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    let v = shim(&bus, "").await;
    let attacker = member(&bus).await;
    let id = member_id(&v);
    let mut with_fds = busd_wire::message::encode(
        busd_wire::marshal::Endian::Little,
        busd_wire::message::METHOD_CALL,
        0,
        11,
        &busd_wire::message::HeaderFields {
            path: Some("/p"),
            interface: Some("org.example.I"),
            member: Some("Take"),
            destination: Some("org.example.NotTheVictims"),
            sender: Some(&attacker.unique),
            signature: Some("hhh"),
            unix_fds: 3,
            ..Default::default()
        },
        &[0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0],
    );
    let frame = frame_for(attacker.id, id, &with_fds);
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    attacker.send_with_fds(&protocol::socket_name(id), &frame, &[fd, fd, fd]);
    // Without descriptors: given back to its sender, unchanged but for the routing words.
    with_fds = call_bytes(
        &attacker.unique,
        "org.example.NotTheVictims",
        "/p",
        "org.example.I",
        "Plain",
        12,
        None,
    );
    attacker
        .send_to(id, &frame_for(attacker.id, id, &with_fds))
        .unwrap();
    let back = attacker.receive().await;
    let h = header::Header::decode(&back).unwrap();
    assert_ne!(h.routing & ROUTE_RETURNED, 0);
    assert_eq!((h.sender, h.destination), (id, attacker.id));
    assert_eq!(&back[header::HEADER_LEN..], &with_fds[..]);
    assert!(connected(&v).await, "the victim was disconnected");
}

/// Item 1, the other way round: a receiver gives the victim a "returned" message it never
/// sent (its own `ReleaseName`, or a message it did send, a second time). The victim
/// resends only what it sent that receiver, once; the rest is counted as spoofed.
#[tokio::test]
async fn a_receiver_cannot_make_a_sender_say_what_it_did_not() {
    let bus = Busd::start();
    let v = victim(&bus).await;
    let counters = stats(&v).await;
    let attacker = member(&bus).await;
    let victim_name = v.unique_name().unwrap().to_string();
    let id = member_id(&v);
    let release = release_victim(&victim_name);
    let mut frame = frame_for(attacker.id, id, &release);
    header::mark_returned(&mut frame, attacker.id, id);
    attacker.send_to(id, &frame).unwrap();
    counted(&counters.spoofed).await;
    assert_eq!(counters.spoofed.load(Ordering::Relaxed), 1);
    assert_eq!(counters.resent.load(Ordering::Relaxed), 0);
    assert_eq!(owner(&bus, VICTIM).await, Some(victim_name));
}

/// The honest case the returns exist for: a call sent directly to the member that owned a
/// name reaches the name's new owner after the first one gave it back, exactly once
/// (given back twice, the second is refused).
#[tokio::test]
async fn a_call_for_a_name_that_moved_reaches_the_new_owner_once() {
    const NAME: &str = "org.example.Moving";
    let bus = Busd::start();
    let caller = shim(&bus, "").await;
    let counters = stats(&caller).await;
    let first = member(&bus).await;
    DBusProxy::new(&first.conn)
        .await
        .unwrap()
        .request_name(
            NAME.try_into().unwrap(),
            RequestNameFlags::DoNotQueue.into(),
        )
        .await
        .unwrap();
    first.table_until(|t| t.owner(NAME) == Some(first.id)).await;
    // The caller's shim reads the same table: the call goes straight to `first`.
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move {
            caller
                .call_method(
                    Some(NAME),
                    "/echo",
                    Some("org.example.Echo"),
                    "Echo",
                    &("hi",),
                )
                .await
        })
    };
    let frame = first.receive().await;
    // `first` gives the name up; a zbus service takes it.
    DBusProxy::new(&first.conn)
        .await
        .unwrap()
        .release_name(NAME.try_into().unwrap())
        .await
        .unwrap();
    let service = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .serve_at("/echo", Echo)
        .unwrap()
        .name(NAME)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut back = frame.clone();
    let caller_id = member_id(&caller);
    header::mark_returned(&mut back, first.id, caller_id);
    first.send_to(caller_id, &back).unwrap();
    let reply = timeout(call).await.unwrap().unwrap().unwrap();
    let answer: String = reply.body().deserialize().unwrap();
    assert_eq!(answer, "echo: hi");
    assert_eq!(
        reply.header().sender().map(|s| s.to_string()),
        service.unique_name().map(|s| s.to_string())
    );
    // Given back again: refused, counted, not resent.
    first.send_to(caller_id, &back).unwrap();
    counted(&counters.spoofed).await;
    assert_eq!(counters.spoofed.load(Ordering::Relaxed), 1);
    assert_eq!(counters.resent.load(Ordering::Relaxed), 1);
}

/// Item 7: a member corrupts the progress memory (every member maps it writable), so
/// that the next connection's shim cannot set up what Join gave it. That connection stays
/// on the stream, and loses nothing: it is not direct until it says it is ready, so a
/// member that joined before sends it everything through the daemon.
#[tokio::test]
async fn a_connection_whose_set_up_failed_loses_nothing() {
    use std::os::unix::fs::FileExt;
    let bus = Busd::start();
    let caller = shim(&bus, "").await;
    stats(&caller).await;
    let attacker = member(&bus).await;
    attacker.progress.write_at(&[0xff; 8], 0).unwrap();
    let victim = shim(&bus, "").await;
    victim.object_server().at("/echo", Echo).await.unwrap();
    // A round trip: the answer to Join is in.
    DBusProxy::new(&victim)
        .await
        .unwrap()
        .get_id()
        .await
        .unwrap();
    assert!(
        busd_shim::stats(&victim).is_none(),
        "the shim set up on corrupted memory"
    );
    let id = member_id(&victim);
    let t = attacker.table_until(|t| t.member(id).is_some()).await;
    assert!(!t.member(id).unwrap().reachable());
    let reply = timeout(caller.call_method(
        Some(victim.unique_name().unwrap().as_str()),
        "/echo",
        Some("org.example.Echo"),
        "Echo",
        &("still there",),
    ))
    .await
    .expect("the call was lost")
    .unwrap();
    let answer: String = reply.body().deserialize().unwrap();
    assert_eq!(answer, "echo: still there");
}

/// A Ping signal from `sender` at `path` that declares `unix_fds` descriptors.
fn ping_declaring(sender: &str, path: &str, unix_fds: u32) -> Vec<u8> {
    busd_wire::message::encode(
        busd_wire::marshal::Endian::Little,
        SIGNAL,
        0,
        5,
        &busd_wire::message::HeaderFields {
            path: Some(path),
            interface: Some("org.example.Fast"),
            member: Some("Ping"),
            sender: Some(sender),
            unix_fds,
            ..Default::default()
        },
        &[],
    )
}

fn dev_null() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap()
}

/// A frame whose message declares more or fewer descriptors than came with it. A receiver
/// that takes a message's descriptors by the count it declares (libdbus does) would give
/// one message's descriptors to the next, another sender's, or stall until they come. The
/// daemon disconnects a member that sends it one; a receiver drops it and counts it.
#[tokio::test]
async fn a_frame_carries_exactly_the_descriptors_its_message_declares() {
    let bus = Busd::start();
    let null = dev_null();
    let fd = null.as_raw_fd();
    for (declared, attached) in [(1, vec![]), (0, vec![fd]), (2, vec![fd])] {
        let m = member(&bus).await;
        let frame = frame_for(m.id, 0, &ping_declaring(&m.unique, "/liar", declared));
        m.send_to_daemon_with_fds(&frame, &attached);
        assert!(
            disconnected(&m.conn).await,
            "a member whose frame declared {declared} descriptors and carried {} stayed",
            attached.len()
        );
    }
    let honest = member(&bus).await;
    let frame = frame_for(honest.id, 0, &ping_declaring(&honest.unique, "/one", 1));
    honest.send_to_daemon_with_fds(&frame, &[fd]);
    assert!(connected(&honest.conn).await, "one declared, one carried");

    let (receiver, mut signals, counters) = ping_receiver(&bus).await;
    let m = member(&bus).await;
    let to = member_id(&receiver);
    for (declared, attached) in [(1, vec![]), (0, vec![fd])] {
        let frame = frame_for(m.id, 0, &ping_declaring(&m.unique, "/liar", declared));
        m.send_with_fds(&protocol::socket_name(to), &frame, &attached);
    }
    m.send_to(to, &frame_for(m.id, 0, &ping(&m.unique, "/honest")))
        .unwrap();
    assert_eq!(next_ping(&mut signals).await, "/honest");
    assert_eq!(counters.malformed.load(Ordering::Relaxed), 2);
}

/// A member that left (here: it became a monitor, which may not send) keeps its socket's
/// descriptor. The daemon shut that socket down as it left: it sends nobody anything as
/// its old name. Its process can bind the path again (the directory is its user's): the
/// kernel stamps each datagram as it queues it, the table tells when the member's socket
/// was shut down, and receivers take nothing queued after that from there, whether they
/// were members before the departure or joined after.
#[tokio::test]
async fn a_member_that_left_sends_nothing_as_its_old_name() {
    let bus = Busd::start();
    let (receiver, mut signals, counters) = ping_receiver(&bus).await;
    let to = member_id(&receiver);
    let m = member(&bus).await;
    m.send_to(to, &frame_for(m.id, 0, &ping(&m.unique, "/before")))
        .unwrap();
    assert_eq!(next_ping(&mut signals).await, "/before");
    leave_and_wait_for_the_shutdown(&m, to).await;
    let after = tokio::time::timeout(Duration::from_millis(500), next_ping(&mut signals)).await;
    assert!(after.is_err(), "a Ping from a member that left arrived");

    let ghost = UnixDatagram::bind(path_of(&m, m.id)).unwrap();
    let (newcomer, mut newcomer_signals, newcomer_counters) = ping_receiver(&bus).await;
    let to_newcomer = member_id(&newcomer);
    let honest = member(&bus).await;
    // The departed member's path, then an honest member, send `to` a Ping each.
    let ghost_then_honest = |to: u32, label: &str| {
        ghost
            .send_to(
                &frame_for(m.id, 0, &ping(&m.unique, &format!("/ghost_{label}"))),
                path_of(&m, to),
            )
            .unwrap();
        honest
            .send_to(
                to,
                &frame_for(
                    honest.id,
                    0,
                    &ping(&honest.unique, &format!("/honest_{label}")),
                ),
            )
            .unwrap();
    };
    ghost_then_honest(to, "to_a_member");
    assert_eq!(next_ping(&mut signals).await, "/honest_to_a_member");
    assert_eq!(counters.spoofed.load(Ordering::Relaxed), 1);
    ghost_then_honest(to_newcomer, "to_a_newcomer");
    assert_eq!(
        next_ping(&mut newcomer_signals).await,
        "/honest_to_a_newcomer"
    );
    assert_eq!(newcomer_counters.spoofed.load(Ordering::Relaxed), 1);
}

/// Makes member `m` leave (it becomes a monitor), and waits until its socket is shut down
/// (a send to `to` fails).
async fn leave_and_wait_for_the_shutdown(m: &Member, to: u32) {
    zbus::fdo::MonitoringProxy::new(&m.conn)
        .await
        .unwrap()
        .become_monitor(&[], 0)
        .await
        .unwrap();
    // (Its departure reaches the daemon's state with the answer; the socket is shut then.)
    let mut refused = None;
    for _ in 0..100 {
        match m.send_to(to, &frame_for(m.id, 0, &ping(&m.unique, "/after"))) {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let e = refused.expect("the socket of a member that left still sends");
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}");
}

/// What a member sent just before it left is delivered however late the receiver reads
/// it (here its runtime does not run for longer than [`busd_shim::DEPARTED_GRACE`]): the
/// kernel queued it before the member's socket was shut down.
#[tokio::test]
async fn what_a_member_sent_before_it_left_is_delivered_however_late_it_is_read() {
    let bus = Busd::start();
    let address = bus.address.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stall_tx, stall_rx) = std::sync::mpsc::channel::<Duration>();
    let (ping_tx, ping_rx) = std::sync::mpsc::channel::<String>();
    // The receiver, on a runtime of its own in a thread that can be stopped.
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let conn = busd_shim::builder(&format!("{address},fastpath=1"))
                .await
                .unwrap()
                .build()
                .await
                .unwrap();
            add_match(&conn, "type='signal',member='Ping'").await;
            let mut signals = MessageStream::from(&conn);
            ready_tx
                .send((member_id(&conn), stats(&conn).await))
                .unwrap();
            loop {
                match stall_rx.try_recv() {
                    Ok(d) => std::thread::sleep(d),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                let next = tokio::time::timeout(Duration::from_millis(10), signals.next());
                if let Ok(Some(Ok(m))) = next.await {
                    if m.header().member().is_some_and(|n| n == "Ping") {
                        let _ = ping_tx.send(m.header().path().unwrap().to_string());
                    }
                }
            }
        });
    });
    let (to, counters) = ready_rx.recv().unwrap();
    let m = member(&bus).await;
    stall_tx
        .send(busd_shim::DEPARTED_GRACE + Duration::from_millis(1500))
        .unwrap();
    // (The receiver's thread stops within 10 ms.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    m.send_to(to, &frame_for(m.id, 0, &ping(&m.unique, "/last_words")))
        .unwrap();
    leave_and_wait_for_the_shutdown(&m, to).await;
    let got = ping_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(got, "/last_words");
    assert_eq!(counters.spoofed.load(Ordering::Relaxed), 0);
    drop(stall_tx);
    thread.join().unwrap();
}

/// A message as a member's shim would never send it: of message type `ty`, with `flags`,
/// and (`extra`) a header field of code 10 that the specification does not define.
fn odd_message(
    sender: &str,
    destination: Option<&str>,
    path: &str,
    ty: u8,
    flags: u8,
    extra: bool,
) -> Vec<u8> {
    use busd_wire::marshal::{Endian, Writer};
    let mut w = Writer::new(Endian::Little);
    w.bytes(&[b'l', ty, flags, 1]);
    w.u32(0);
    w.u32(41);
    let len_at = w.len();
    w.u32(0);
    let start = w.len();
    let mut fields = vec![
        (1u8, "o", path),
        (2, "s", "org.example.Fast"),
        (3, "s", "Ping"),
        (7, "s", sender),
    ];
    if let Some(d) = destination {
        fields.push((6, "s", d));
    }
    for (code, sig, value) in fields {
        w.align(8);
        w.u8(code);
        w.signature(sig.as_bytes());
        w.string(value);
    }
    if extra {
        w.align(8);
        w.u8(10);
        w.signature(b"u");
        w.u32(42);
    }
    let n = (w.len() - start) as u32;
    w.patch_u32(len_at, n);
    w.align(8);
    w.into_vec()
}

/// zbus ends a connection over a message it cannot decode: a header field the
/// specification does not define, a flag it does not know, a message type it does not
/// know. busd's parser takes all three, as the daemon must; what a member sends another
/// directly must not reach that member's zbus as it came. A field the bus does not know
/// goes (as the daemon drops it from what it forwards), the others are dropped and
/// counted: the receiver stays connected and gets what honest members send it.
#[tokio::test]
async fn a_frame_zbus_cannot_decode_does_not_end_the_receivers_connection() {
    let bus = Busd::start();
    let (receiver, mut signals, counters) = ping_receiver(&bus).await;
    let to = member_id(&receiver);
    let unique = receiver.unique_name().unwrap().to_string();
    let m = member(&bus).await;
    for (destination, path, ty, flags, extra) in [
        (0, "/unknown_field", SIGNAL, 0, true),
        (0, "/unknown_flags", SIGNAL, 0x80, false),
        (to, "/unknown_type", 5, 0, false),
    ] {
        let dest = (destination != 0).then_some(unique.as_str());
        let message = odd_message(&m.unique, dest, path, ty, flags, extra);
        m.send_to(to, &frame_for(m.id, destination, &message))
            .unwrap();
    }
    m.send_to(to, &frame_for(m.id, 0, &ping(&m.unique, "/honest")))
        .unwrap();
    assert_eq!(next_ping(&mut signals).await, "/unknown_field");
    assert_eq!(next_ping(&mut signals).await, "/honest");
    assert_eq!(counters.malformed.load(Ordering::Relaxed), 2);
    assert!(connected(&receiver).await);
}
