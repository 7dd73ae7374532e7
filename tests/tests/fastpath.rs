//! The fast path's daemon side against a busd process: joining, the member sockets and
//! their kernel filters, the routing table, and what the daemon does with the frames
//! members send it. The members here are zbus connections plus the raw datagram socket the
//! bus hands them, so that every frame is built by the test.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use busd_match::header::{self, HEADER_LEN};
use busd_match::protocol;
use busd_shim::Counters;
use busd_tests::member::*;
use busd_tests::{busd_binary, require, require_root, zbus_connect, Busd};
use busd_wire::message::{METHOD_CALL, SIGNAL};
use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use zbus::{Connection, MatchRule, MessageStream};

#[tokio::test]
async fn members_get_a_private_filtered_socket_and_the_routing_table() {
    let bus = Busd::start();
    let a = member(&bus).await;
    let b = member(&bus).await;
    assert_ne!(a.id, b.id);
    assert_eq!(a.dir, b.dir);
    let meta = std::fs::metadata(&a.dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), nix::unistd::getuid().as_raw());
    let local = a.socket.local_addr().unwrap();
    assert_eq!(
        local.as_pathname(),
        Some(a.dir.join(a.id.to_string()).as_path())
    );

    b.conn.request_name("org.example.B").await.unwrap();
    add_match(&b.conn, "type='signal',member='Ping'").await;
    let t = a
        .table_until(|t| t.owner("org.example.B") == Some(b.id))
        .await;
    let ids: Vec<u32> = t.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, [0, a.id, b.id]);
    let ping = header::hash32("Ping");
    assert!(t.member(b.id).unwrap().summary.selects(ping, 0, 0));

    // The kernel filter the daemon compiled from B's rules: Pong is dropped in the
    // sender's sendmsg and never wakes B; Ping and a message addressed to B arrive.
    a.send_to(b.id, &a.frame(SIGNAL, 0, None, "Pong")).unwrap();
    assert_eq!(
        b.queued(),
        0,
        "a broadcast B has no rule for reached its queue"
    );
    a.send_to(b.id, &a.frame(SIGNAL, 0, None, "Ping")).unwrap();
    let got = b.receive().await;
    assert_eq!(header::Header::decode(&got).unwrap().member, ping);
    a.send_to(
        b.id,
        &a.frame(METHOD_CALL, b.id, Some("org.example.B"), "Call"),
    )
    .unwrap();
    let got = b.receive().await;
    assert_eq!(header::Header::decode(&got).unwrap().destination, b.id);

    // Removing the rule replaces the filter at once.
    remove_match(&b.conn, "type='signal',member='Ping'").await;
    a.send_to(b.id, &a.frame(SIGNAL, 0, None, "Ping")).unwrap();
    assert_eq!(b.queued(), 0);

    // A member that leaves is listed as departed, and gone from the directory.
    let (b_id, b_path) = (b.id, b.dir.join(b.id.to_string()));
    drop(b);
    a.table_until(|t| t.member(b_id).is_none_or(|m| m.departed))
        .await;
    assert!(!b_path.exists());
}

#[tokio::test]
async fn the_daemon_routes_what_members_send_it() {
    let bus = Busd::start();
    let a = member(&bus).await;
    let standard = zbus_connect(&bus).await;
    add_match(&standard, "type='signal',member='Ping'").await;
    let mut signals = MessageStream::from(&standard);
    // The daemon's interest is in the table: a member knows to include it for Ping only.
    let t = a
        .table_until(|t| {
            t.member(0)
                .is_some_and(|d| d.summary.selects(header::hash32("Ping"), 0, 0))
        })
        .await;
    assert!(!t
        .member(0)
        .unwrap()
        .summary
        .selects(header::hash32("Pong"), 0, 0));

    a.send_to_daemon(&a.frame(SIGNAL, 0, None, "Ping")).unwrap();
    let msg = timeout(async {
        loop {
            let m = signals.next().await.unwrap().unwrap();
            if m.header().member().is_some_and(|m| m == "Ping") {
                return m;
            }
        }
    })
    .await
    .expect("the standard client got the member's broadcast");
    assert_eq!(msg.header().sender().unwrap().as_str(), a.unique);

    // A call to the driver comes back on the member's stream connection.
    let mut replies = MessageStream::from(&a.conn);
    a.send_to_daemon(&a.frame(
        METHOD_CALL,
        header::TO_DAEMON,
        Some("org.freedesktop.DBus"),
        "GetId",
    ))
    .unwrap();
    let reply = timeout(async {
        loop {
            let m = replies.next().await.unwrap().unwrap();
            if m.header().reply_serial().map(|s| s.get()) == Some(77) {
                return m;
            }
        }
    })
    .await
    .expect("the driver answered the member");
    let id: String = reply.body().deserialize().unwrap();
    assert_eq!(id.len(), 32);

    // Debug.Stats shows the member and what the daemon took from it.
    let stats = standard
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus.Debug.Stats"),
            "GetConnectionStats",
            &(a.unique.as_str(),),
        )
        .await
        .unwrap();
    let stats: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
        stats.body().deserialize().unwrap();
    let get = |k: &str| u32::try_from(&stats[k]).unwrap();
    assert_eq!(get("busd.FastPathMember"), a.id);
    assert_eq!(get("busd.FastPathFrames"), 2);
}

#[tokio::test]
async fn monitors_see_direct_traffic_through_the_copies_members_send() {
    require("dbus-monitor");
    let bus = Busd::start();
    let a = member(&bus).await;
    let b = member(&bus).await;
    let mut monitor = std::process::Command::new("dbus-monitor")
        .args(["--address", &bus.address])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = monitor.stdout.take().unwrap();
    a.table_until(|t| t.observed).await;
    let frame = a.frame(METHOD_CALL, b.id, Some(&b.unique), "Direct");
    a.send_to(b.id, &frame).unwrap();
    a.send_to_daemon(&frame).unwrap();
    assert!(!b.receive().await.is_empty());
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("member=Direct"))
    });
    let line = timeout(seen).await.unwrap().unwrap().unwrap();
    monitor.kill().unwrap();
    let _ = monitor.wait();
    assert!(line.contains(&format!("sender={}", a.unique)), "{line}");
    assert!(
        line.contains(&format!("destination={}", b.unique)),
        "{line}"
    );
}

#[tokio::test]
async fn a_member_that_sends_under_another_name_is_disconnected() {
    let bus = Busd::start();
    let a = member(&bus).await;
    let other = zbus_connect(&bus).await;
    let victim = other.unique_name().unwrap().to_string();
    // (Addressed to the daemon: its filter would drop a broadcast nobody wants.)
    a.send_to_daemon(&a.frame_as(&victim, SIGNAL, header::TO_DAEMON, None, "Ping"))
        .unwrap();
    // The daemon closes A's stream, and A is gone from the table.
    let observer = member(&bus).await;
    let a_id = a.id;
    observer
        .table_until(|t| t.member(a_id).is_none_or(|m| m.departed))
        .await;
    let dbus = zbus::fdo::DBusProxy::new(&other).await.unwrap();
    assert!(!dbus
        .name_has_owner(a.unique.as_str().try_into().unwrap())
        .await
        .unwrap());
}

/// Each malformed frame disconnects its sender only; the daemon goes on serving the others.
/// (A truncated message used to crash the daemon: found by the `message` fuzz target.)
/// A frame without the routing header's magic never reaches the daemon: its inbox filter
/// drops it in the kernel.
#[tokio::test]
async fn malformed_frames_disconnect_only_their_sender() {
    let bus = Busd::start();
    let observer = member(&bus).await;
    let other = zbus_connect(&bus).await;
    let dbus = zbus::fdo::DBusProxy::new(&other).await.unwrap();
    let good = |m: &Member| m.frame(SIGNAL, header::TO_DAEMON, None, "Ping");
    type Spoil = fn(Vec<u8>) -> Vec<u8>;
    let cases: [(&str, Spoil); 5] = [
        ("message cut short", |f| f[..f.len() - 4].to_vec()),
        ("only the routing header", |f| f[..HEADER_LEN].to_vec()),
        ("half a fixed header", |f| f[..HEADER_LEN + 8].to_vec()),
        ("bytes after the message", |f| [&f[..], &[0u8; 8]].concat()),
        ("bad byte-order mark", |mut f| {
            f[HEADER_LEN] = b'x';
            f
        }),
    ];
    for (what, spoil) in cases {
        let a = member(&bus).await;
        a.send_to_daemon(&spoil(good(&a))).unwrap();
        let a_id = a.id;
        observer
            .table_until(|t| t.member(a_id).is_none_or(|m| m.departed))
            .await;
        assert!(
            !dbus
                .name_has_owner(a.unique.as_str().try_into().unwrap())
                .await
                .unwrap(),
            "{what}: the sender is still connected"
        );
    }
    assert!(dbus.list_names().await.unwrap().len() >= 3);
}

#[tokio::test]
async fn fastpath_off_refuses_to_join() {
    let bus = Busd::start_with(&["--session", "--fastpath=off"]);
    let conn = zbus_connect(&bus).await;
    let err = join(&conn).await.unwrap_err();
    match err {
        zbus::Error::MethodError(name, _, _) => {
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.NotSupported")
        }
        e => panic!("unexpected {e}"),
    }
}

/// Whether an open file holds the lock of the bus directory `dir`: its busd runs.
fn lock_held(dir: &Path) -> bool {
    let file = std::fs::File::open(dir.join("lock")).unwrap();
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err((_, e)) => panic!("locking {}: {e}", dir.display()),
    }
}

/// The flags process `pid` has its descriptor of `path` open with (/proc/PID/fdinfo).
fn open_flags(pid: u32, path: &Path) -> libc::c_int {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        if std::fs::read_link(e.path()).is_ok_and(|target| target == path) {
            let fd = e.file_name().into_string().unwrap();
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap();
            return libc::c_int::from_str_radix(flags.trim(), 8).unwrap();
        }
    }
    panic!("process {pid} has no descriptor of {}", path.display());
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_directory_goes_with_the_daemon_and_stale_ones_are_swept() {
    let bus = Busd::start();
    let a = member(&bus).await;
    let dir = a.dir.clone();
    let base = dir.parent().unwrap().to_path_buf();
    // What a busd killed with SIGKILL leaves behind: its lock file, which nobody holds.
    let stale = base.join(format!("busd-fastpath-999999999-s{}", std::process::id()));
    std::fs::create_dir_all(stale.join("inner")).unwrap();
    std::fs::write(stale.join("lock"), b"").unwrap();
    // Without a lock file nothing shows that its owner is gone (an older busd's, say; no
    // such pid runs here).
    let unproven = base.join(format!("busd-fastpath-999999998-u{}", std::process::id()));
    std::fs::create_dir_all(unproven.join("inner")).unwrap();
    drop(a);
    drop(bus); // SIGTERM: busd removes its directory as it exits
    assert!(!dir.exists(), "{} is left behind", dir.display());
    let next = Busd::start();
    let b = member(&next).await;
    assert_eq!(b.dir.parent(), Some(base.as_path()));
    assert!(
        !stale.exists(),
        "a stale directory survived a new busd's start"
    );
    let kept = unproven.join("inner").exists();
    let _ = std::fs::remove_dir_all(&unproven);
    assert!(kept, "a directory without a lock file was swept");
    // The live bus holds its lock, on a descriptor the services it starts do not inherit.
    assert!(lock_held(&b.dir), "nobody holds {}/lock", b.dir.display());
    let flags = open_flags(next.pid(), &b.dir.join("lock"));
    assert_ne!(
        flags & libc::O_CLOEXEC,
        0,
        "the lock is inherited across exec"
    );
}

/// Issue 17, item 6: a busd started in another pid namespace, whose /proc does not show
/// this bus's pid, leaves the bus's directory alone, and the bus goes on taking members.
/// Killed (it cannot remove its directory), the bus holds its lock no more, and the next
/// busd sweeps the directory. (Needs root, for the namespaces.)
#[tokio::test]
async fn a_busd_in_another_pid_namespace_leaves_a_live_bus_directory_alone() {
    require_root("to start a busd in new pid and mount namespaces");
    require("unshare");
    let mut first = Busd::start();
    let a = member(&first).await;
    let before = listing(&a.dir);
    // unshare ignores SIGTERM; when the test kills it, it passes SIGTERM on to busd.
    let busd = busd_binary();
    let unshare = [
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child=SIGTERM",
        "--",
        busd.to_str().unwrap(),
        "--session",
    ];
    let elsewhere = Busd::start_program(Path::new("unshare"), &unshare);
    // Once it has a member its fast path is up: its sweep is over.
    let c = member(&elsewhere).await;
    assert_eq!(c.dir.parent(), a.dir.parent());
    assert_ne!(c.dir, a.dir);
    assert!(
        a.dir.exists(),
        "a busd in another pid namespace removed a live bus's directory"
    );
    assert_eq!(listing(&a.dir), before, "the live bus's directory changed");
    // The bus still takes members, and they reach each other.
    let b = member(&first).await;
    assert_eq!(b.dir, a.dir);
    a.send_to(b.id, &a.frame(METHOD_CALL, b.id, Some(&b.unique), "Call"))
        .unwrap();
    let got = b.receive().await;
    assert_eq!(header::Header::decode(&got).unwrap().destination, b.id);

    let pid = nix::unistd::Pid::from_raw(first.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(first.wait_exit().is_some(), "busd survived SIGKILL");
    let next = Busd::start();
    member(&next).await;
    assert!(
        !a.dir.exists(),
        "the directory of a killed busd survived a new busd's start"
    );
}

// What docs/security.md claims of the fast path, each checked against the kernel.

/// The daemon's inbox for a member is one end of a pair of connected sockets, the member
/// holding the other: it has no name in the directory (which holds the members' sockets
/// and the lock, nothing else) or anywhere, so nothing but the member's end reaches it.
#[tokio::test]
async fn an_inbox_takes_frames_from_its_own_member_only() {
    let bus = Busd::start();
    let a = member(&bus).await;
    let b = member(&bus).await;
    let mut names: Vec<String> = std::fs::read_dir(&a.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec![
        protocol::socket_name(a.id),
        protocol::socket_name(b.id),
        "lock".to_string(),
    ];
    expected.sort();
    assert_eq!(names, expected);
    // The member's end is connected to an unnamed socket (the daemon's end).
    let peer = a.inbox.peer_addr().unwrap();
    assert!(peer.is_unnamed(), "{peer:?}");
    // A's own frames go through.
    a.send_to_daemon(&a.frame(SIGNAL, header::TO_DAEMON, None, "Ping"))
        .unwrap();
}

/// The routing table is a memfd members get read-only, sealed so that nobody but the
/// daemon's own mapping can change it: no write, no resize, no writable mapping, and the
/// seals cannot be lifted.
#[tokio::test]
async fn members_cannot_change_the_routing_table() {
    let bus = Busd::start();
    let a = member(&bus).await;
    let fd = a.table.as_raw_fd();
    // SAFETY: F_GET_SEALS takes no argument and returns the seals or -1.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    let wanted =
        libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE;
    assert_eq!(seals & wanted, wanted, "seals {seals:#x}");
    assert!(
        a.table.write_at(b"x", 0).is_err(),
        "the descriptor is read-only"
    );
    // Opened again for writing (same user), the seals still refuse.
    let rw = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .unwrap();
    let err = rw.write_at(b"x", 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert!(rw.set_len(1).is_err(), "resized");
    // SAFETY: a fresh shared mapping request; nothing is mapped if it fails.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            rw.as_raw_fd(),
            0,
        )
    };
    assert_eq!(
        map,
        libc::MAP_FAILED,
        "a writable shared mapping was granted"
    );
    // SAFETY: F_ADD_SEALS with an int argument; F_SEAL_SEAL makes it fail.
    let r = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
    assert_eq!(r, -1);
    // And the table still reads.
    a.table_until(|t| t.member(a.id).is_some()).await;
}

/// Another user cannot send to member sockets: the bus's directory is 0700. (Needs root,
/// to run the sender as nobody.)
#[tokio::test]
async fn other_users_cannot_reach_member_sockets() {
    require_root("to run a sender as another user");
    let bus = Busd::start();
    let a = member(&bus).await;
    {
        let path = a.dir.join(protocol::socket_name(a.id));
        let out = std::process::Command::new("/usr/bin/python3")
            .uid(65534)
            .gid(65534)
            .args([
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                 try:\n    s.sendto(b'BUSD', sys.argv[1])\n\
                 except PermissionError:\n    sys.exit(3)\n",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(a.queued(), 0);
}

/// A shim member subscribed to `Ping` (its connection, messages and counters), and a raw
/// member that sees it subscribed in the table; returns the shim's member id too.
async fn ping_receiver(bus: &Busd) -> (Connection, MessageStream, Arc<Counters>, Member, u32) {
    let receiver = shim(bus, "").await;
    add_match(&receiver, "type='signal',member='Ping'").await;
    let signals = MessageStream::from(&receiver);
    let counters = busd_shim::stats(&receiver).expect("on the fast path");
    let m = member(bus).await;
    let id = member_id(&receiver);
    m.table_until(|t| {
        t.member(id)
            .is_some_and(|r| r.summary.selects(header::hash32("Ping"), 0, 0))
    })
    .await;
    (receiver, signals, counters, m, id)
}

/// A frame from a member that names another sender is dropped by the receiving shim,
/// counted, and the receiver goes on taking honest frames.
#[tokio::test]
async fn receivers_drop_frames_that_lie_about_their_sender() {
    let bus = Busd::start();
    let (_receiver, mut signals, counters, m, id) = ping_receiver(&bus).await;
    let liar = m.frame_as(":1.999", SIGNAL, 0, None, "Ping");
    m.send_to(id, &liar).unwrap();
    m.send_to(id, &m.frame(SIGNAL, 0, None, "Ping")).unwrap();
    let got = timeout(signals.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        got.header().sender().map(|s| s.to_string()),
        Some(m.unique.clone())
    );
    assert_eq!(
        counters.spoofed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The shim wants only what the bus accepted: a rule the bus refused (here past
/// `max_match_rules_per_connection`) lets nothing through, even a broadcast that reaches
/// the member's socket (addressed to it in the routing header, which the kernel filter
/// passes whatever the rules); it is dropped and counted, and accepted rules still work.
#[tokio::test]
async fn a_rule_the_bus_refused_lets_no_broadcast_through() {
    let dir = tempfile::tempdir().unwrap();
    let config = busd_tests::write_config(
        dir.path(),
        "rules.conf",
        r#"<busconfig>
  <include>/usr/share/dbus-1/session.conf</include>
  <limit name="max_match_rules_per_connection">1</limit>
</busconfig>"#,
    );
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    let receiver = shim(&bus, "").await;
    add_match(&receiver, "type='signal',member='Pong'").await;
    let refused = zbus::fdo::DBusProxy::new(&receiver)
        .await
        .unwrap()
        .add_match_rule(MatchRule::try_from("type='signal',member='Ping'").unwrap())
        .await;
    assert!(
        matches!(refused, Err(zbus::fdo::Error::LimitsExceeded(_))),
        "{refused:?}"
    );
    let mut signals = MessageStream::from(&receiver);
    let counters = busd_shim::stats(&receiver).expect("on the fast path");
    let m = member(&bus).await;
    let id = member_id(&receiver);
    m.send_to(id, &m.frame(SIGNAL, id, None, "Ping")).unwrap();
    m.send_to(id, &m.frame(SIGNAL, id, None, "Pong")).unwrap();
    let got = timeout(async {
        loop {
            let msg = signals.next().await.unwrap().unwrap();
            match msg.header().member().map(|m| m.to_string()) {
                Some(name) if name == "Ping" || name == "Pong" => return name,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, "Pong", "the refused rule let Ping through");
    assert_eq!(
        counters.filtered.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// An emitter (through busd-shim, with `options` added to its address), a reader (the
/// same) and a raw member that reads only when the test says, both subscribed to `Tick`.
async fn sleeper_and_reader(bus: &Busd, options: &str) -> (Connection, Connection, Member) {
    let emitter = shim(bus, options).await;
    let reader = shim(bus, "").await;
    add_match(&reader, "type='signal',member='Tick'").await;
    let sleeper = member(bus).await;
    add_match(&sleeper.conn, "type='signal',member='Tick'").await;
    let tick = header::hash32("Tick");
    let ids = [sleeper.id, member_id(&reader)];
    sleeper
        .table_until(|t| {
            ids.iter()
                .all(|&id| t.member(id).is_some_and(|m| m.summary.selects(tick, 0, 0)))
        })
        .await;
    (emitter, reader, sleeper)
}

/// A member that does not read holds nobody back: the emitter goes on (the frames for the
/// sleeper wait in the emitter's backlog for it), another receiver gets every signal at
/// once, and when the sleeper reads it gets every signal too, in order.
#[tokio::test]
async fn a_receiver_that_does_not_read_holds_nobody_back() {
    const SIGNALS: u32 = 2000;
    let bus = Busd::start();
    let (emitter, reader, sleeper) = sleeper_and_reader(&bus, "").await;
    let mut ticks = MessageStream::from(&reader);
    let counters = busd_shim::stats(&emitter).expect("on the fast path");
    timeout(async {
        for n in 0..SIGNALS {
            emitter
                .emit_signal(None::<&str>, "/t", "org.example.T", "Tick", &n)
                .await
                .unwrap();
        }
    })
    .await
    .expect("the emitter was held back by the sleeper");
    timeout(async {
        let mut next = 0u32;
        while next < SIGNALS {
            let m = ticks.next().await.unwrap().unwrap();
            if m.header().member().is_some_and(|m| m == "Tick") {
                assert_eq!(m.body().deserialize::<u32>().unwrap(), next);
                next += 1;
            }
        }
    })
    .await
    .expect("the reader was held back by the sleeper");
    assert!(
        counters
            .backlogged
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the sleeper's queue never filled"
    );
    for next in 0..SIGNALS {
        let frame = sleeper.receive().await;
        let m =
            busd_wire::message::Message::parse(frame[HEADER_LEN..].to_vec(), Vec::new()).unwrap();
        assert_eq!(m.body_reader().u32().unwrap(), next, "lost or out of order");
    }
    assert_eq!(
        counters
            .backlog_depth
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// At its bound a backlog takes no more, with dbus-daemon's outcome for a reader that does
/// not read: signals are dropped for that receiver (and counted), calls to it fail with
/// LimitsExceeded; everyone else is served, and what the backlog kept arrives in order.
#[tokio::test]
async fn a_full_backlog_refuses_as_dbus_daemon_refuses_a_full_queue() {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SIGNALS: u32 = 2000;
    const WINDOW: u32 = 32;
    let bus = Busd::start();
    let (emitter, reader, sleeper) = sleeper_and_reader(&bus, ",fastpath_backlog=16384").await;
    let mut ticks = MessageStream::from(&reader);
    // The reader reads as fast as it can (in order, every one); the emitter sends in
    // windows it lets the reader take, so only the sleeper's backlog fills.
    let read = std::sync::Arc::new(AtomicU32::new(0));
    let reading = {
        let read = read.clone();
        tokio::spawn(async move {
            while read.load(Ordering::Acquire) < SIGNALS {
                let m = ticks.next().await.unwrap().unwrap();
                if m.header().member().is_some_and(|m| m == "Tick") {
                    let n = m.body().deserialize::<u32>().unwrap();
                    assert_eq!(n, read.load(Ordering::Acquire), "lost or out of order");
                    read.store(n + 1, Ordering::Release);
                }
            }
        })
    };
    let counters = busd_shim::stats(&emitter).expect("on the fast path");
    timeout(async {
        for n in 0..SIGNALS {
            emitter
                .emit_signal(None::<&str>, "/t", "org.example.T", "Tick", &n)
                .await
                .unwrap();
            if (n + 1) % WINDOW == 0 {
                while read.load(Ordering::Acquire) <= n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    })
    .await
    .expect("the emitter was held back");
    timeout(reading)
        .await
        .expect("the reader was held back")
        .unwrap();
    let rejected = counters.rejected.load(Ordering::Relaxed);
    assert!(rejected > 0, "the bound was never reached");
    let err = timeout(emitter.call_method(
        Some(sleeper.unique.as_str()),
        "/t",
        Some("org.example.T"),
        "Wake",
        &(),
    ))
    .await
    .expect("the call was held back")
    .unwrap_err();
    match err {
        zbus::Error::MethodError(name, text, _) => {
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.LimitsExceeded");
            assert_eq!(
                text.as_deref(),
                Some("Rejected: destination has a full message queue")
            );
        }
        e => panic!("unexpected {e}"),
    }
    // The sleeper gets what its queue and the backlog held: the first signals, in order.
    let kept = u64::from(SIGNALS) - rejected;
    for next in 0..kept {
        let frame = sleeper.receive().await;
        let m =
            busd_wire::message::Message::parse(frame[HEADER_LEN..].to_vec(), Vec::new()).unwrap();
        assert_eq!(u64::from(m.body_reader().u32().unwrap()), next);
    }
}

/// Large messages travel in sealed memfds: a receiver reads only a memfd sealed against
/// change, of the size its frame announces; anything else is dropped and counted (and the
/// receiver keeps working), and the daemon disconnects a member that sends it such a frame.
#[tokio::test]
async fn memfd_frames_must_be_sealed_and_of_the_announced_size() {
    let bus = Busd::start();
    let plain = zbus_connect(&bus).await;
    add_match(&plain, "type='signal',member='Ping'").await;
    let mut at_plain = MessageStream::from(&plain);
    let (_receiver, mut at_receiver, counters, m, id) = ping_receiver(&bus).await;
    let to = id.to_string();
    let good = m.frame(SIGNAL, 0, None, "Ping");
    let (unsealed, open_fd) = Member::in_memfd(&good, false, None);
    m.send_with_fds(&to, &unsealed, &[open_fd.as_raw_fd()]);
    let (short, fd) = Member::in_memfd(&good, true, Some(10));
    m.send_with_fds(&to, &short, &[fd.as_raw_fd()]);
    m.send_with_fds(&to, &short, &[]);
    let (sealed, fd) = Member::in_memfd(&good, true, None);
    m.send_with_fds(&to, &sealed, &[fd.as_raw_fd()]);
    let got = timeout(at_receiver.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.header().member().unwrap().as_str(), "Ping");
    assert_eq!(
        counters
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // The daemon reads the same frames from its inbox: a sealed one is delivered (here to
    // a client off the fast path), an unsealed one disconnects its sender.
    m.send_to_daemon_with_fds(&sealed, &[fd.as_raw_fd()]);
    let got = timeout(at_plain.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.header().member().unwrap().as_str(), "Ping");
    m.send_to_daemon_with_fds(&unsealed, &[open_fd.as_raw_fd()]);
    let m_id = m.id;
    let watcher = member(&bus).await;
    watcher
        .table_until(|t| t.member(m_id).is_none_or(|m| m.departed))
        .await;
}

/// A monitor sees every message, a Join's answer too; but whoever holds that answer's
/// descriptors can take the member's datagrams off its socket, send the daemon frames as
/// the member on its inbox and write the progress memory. The monitor here is an honest
/// zbus monitor that looks at what it was handed: /dev/null in every place.
#[tokio::test]
async fn a_monitor_gets_no_descriptor_of_a_member() {
    use nix::sys::stat::{fstat, SFlag};
    let bus = Busd::start();
    let monitor = zbus_connect(&bus).await;
    zbus::fdo::MonitoringProxy::new(&monitor)
        .await
        .unwrap()
        .become_monitor(&[], 0)
        .await
        .unwrap();
    let mut seen = MessageStream::from(&monitor);
    let m = member(&bus).await;
    let unique = m.conn.unique_name().unwrap().to_string();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = seen.next().await {
            let h = msg.header();
            if msg.message_type() == zbus::message::Type::MethodReturn
                && h.destination().map(|d| d.to_string()) == Some(unique.clone())
                && h.unix_fds() == Some(4)
            {
                return msg;
            }
        }
        panic!("the monitor's stream ended");
    })
    .await
    .expect("the monitor saw the Join answer");
    let null = nix::sys::stat::stat("/dev/null").unwrap();
    let data = answer.data();
    let fds = data.fds();
    assert_eq!(fds.len(), 4, "the answer is whole");
    for (i, fd) in fds.iter().enumerate() {
        let st = fstat(fd.as_raw_fd()).unwrap();
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        assert_eq!(
            (kind, st.st_rdev),
            (SFlag::S_IFCHR, null.st_rdev),
            "descriptor {i} of the Join answer the monitor got is not /dev/null"
        );
    }
    // The member itself got the real ones.
    assert_eq!(
        m.socket.local_addr().unwrap().as_pathname(),
        Some(m.dir.join(m.id.to_string()).as_path())
    );
}
