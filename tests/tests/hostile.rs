//! Hostile and broken clients: each is disconnected or refused the way dbus-daemon does it,
//! and the bus keeps serving everybody else.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use busd_tests::{busd_binary, dbus_send, require, session_config, write_config, Busd};
use busd_wire::marshal::Endian;
use busd_wire::message::{encode, HeaderFields, METHOD_CALL};

fn socket_path(bus: &Busd) -> std::path::PathBuf {
    bus.dir.path().join("bus")
}

fn hex_uid() -> String {
    let uid = nix::unistd::getuid().as_raw().to_string();
    uid.bytes().map(|b| format!("{b:02x}")).collect()
}

fn call_bytes(
    serial: u32,
    dest: &str,
    path: &str,
    iface: &str,
    member: &str,
    unix_fds: u32,
) -> Vec<u8> {
    call_with_body(serial, dest, path, iface, member, unix_fds, None, &[])
}

#[allow(clippy::too_many_arguments)]
fn call_with_body(
    serial: u32,
    dest: &str,
    path: &str,
    iface: &str,
    member: &str,
    unix_fds: u32,
    signature: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let f = HeaderFields {
        path: Some(path),
        interface: Some(iface),
        member: Some(member),
        destination: Some(dest),
        signature,
        unix_fds,
        ..Default::default()
    };
    encode(Endian::Little, METHOD_CALL, 0, serial, &f, body)
}

/// RequestName(name, 0) to the bus.
fn request_name(serial: u32, name: &str) -> Vec<u8> {
    let mut body = busd_wire::marshal::Writer::new(Endian::Little);
    body.string(name);
    body.u32(0);
    call_with_body(
        serial,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "RequestName",
        0,
        Some("su"),
        &body.into_vec(),
    )
}

/// A raw client that authenticated (with fd passing) and said Hello.
fn raw_client(bus: &Busd) -> UnixStream {
    let mut s = UnixStream::connect(socket_path(bus)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = format!(
        "\0AUTH EXTERNAL {}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n",
        hex_uid()
    );
    s.write_all(auth.as_bytes()).unwrap();
    s.write_all(&call_bytes(
        1,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "Hello",
        0,
    ))
    .unwrap();
    // The SASL lines, the Hello reply and NameAcquired: read until something arrived.
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    s
}

/// Reads until the bus closes the connection; fails if it does not within 10 s.
fn assert_closed(mut s: UnixStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the bus did not close the connection: {e}"),
        }
    }
}

fn still_serving(bus: &Busd) {
    let (ok, out) = dbus_send(
        bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/",
            "org.freedesktop.DBus.GetId",
        ],
    );
    assert!(ok, "the bus stopped serving others: {out}");
}

/// A session bus, with dbus-send to check that it keeps serving.
fn checked_bus() -> Busd {
    require("dbus-send");
    Busd::start()
}

#[test]
fn garbage_impossible_lengths_and_lying_fd_counts_disconnect_only_their_sender() {
    let bus = checked_bus();
    let mut garbage = raw_client(&bus);
    garbage
        .write_all(b"this is not a D-Bus message at all, sorry\r\n")
        .unwrap();
    assert_closed(garbage);
    still_serving(&bus);

    // A header that announces a 4 GiB body.
    let mut huge = raw_client(&bus);
    let mut bytes = call_bytes(
        2,
        "org.freedesktop.DBus",
        "/",
        "org.freedesktop.DBus",
        "GetId",
        0,
    );
    bytes[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    huge.write_all(&bytes).unwrap();
    assert_closed(huge);
    still_serving(&bus);

    // UNIX_FDS says 3, one fd comes.
    let liar = raw_client(&bus);
    let bytes = call_bytes(
        2,
        "org.freedesktop.DBus",
        "/",
        "org.freedesktop.DBus",
        "GetId",
        3,
    );
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let fds = [devnull.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        liar.as_raw_fd(),
        &[std::io::IoSlice::new(&bytes)],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_closed(liar);
    still_serving(&bus);
}

/// Descriptors that come ahead of a message not yet whole wait with the connection; a
/// client that keeps sending descriptors and never finishes the message would make the
/// bus hold them until it had none left. One message's worth may wait
/// (max_message_unix_fds, 16 here); past that the client is disconnected, as libdbus does.
#[test]
fn descriptors_waiting_for_a_message_are_bounded() {
    let bus = checked_bus();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let send = |s: &UnixStream, bytes: &[u8], n: usize| {
        let fds = vec![devnull.as_raw_fd(); n];
        nix::sys::socket::sendmsg::<()>(
            s.as_raw_fd(),
            &[std::io::IoSlice::new(bytes)],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
    };
    // The first bytes of a message that announces a body of 1 MiB, then a byte at a time,
    // each with 8 descriptors.
    let mut head = call_bytes(
        2,
        "org.freedesktop.DBus",
        "/",
        "org.freedesktop.DBus",
        "GetId",
        0,
    );
    head[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let hoarder = raw_client(&bus);
    send(&hoarder, &head[..16], 8);
    send(&hoarder, &head[16..17], 8);
    send(&hoarder, &head[17..18], 8);
    assert_closed(hoarder);
    still_serving(&bus);

    // One message's worth waits for the rest of its message: the connection stays.
    let patient = raw_client(&bus);
    send(&patient, &head[..16], 16);
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&bus);
    // (What the bus sent after Hello may still be unread: only the end means closed.)
    let mut rest = [0u8; 4096];
    patient.set_nonblocking(true).unwrap();
    loop {
        match (&patient).read(&mut rest) {
            Ok(0) => panic!("the bus closed a connection with one message's descriptors waiting"),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_client_killed_in_the_middle_of_a_message_harms_nobody() {
    let bus = checked_bus();
    let mut half = raw_client(&bus);
    let bytes = call_bytes(
        2,
        "org.freedesktop.DBus",
        "/",
        "org.freedesktop.DBus",
        "GetId",
        0,
    );
    half.write_all(&bytes[..bytes.len() / 2]).unwrap();
    drop(half);
    still_serving(&bus);
}

#[tokio::test]
async fn a_reader_that_never_reads_gets_a_full_queue_not_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "small-queues.conf",
        &session_config("", r#"<limit name="max_outgoing_bytes">200000</limit>"#),
    );
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    // The sleeper takes a name, then never reads again.
    let sleeper = raw_client(&bus);
    (&sleeper)
        .write_all(&request_name(2, "org.example.Sleepy"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    tokio::time::timeout(Duration::from_secs(30), async {
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let payload = vec![0u8; 32 * 1024];
        let calls = (0..100).map(|_| {
            let conn = conn.clone();
            let payload = payload.clone();
            async move {
                conn.call_method(
                    Some("org.example.Sleepy"),
                    "/",
                    Some("org.example.Food"),
                    "Eat",
                    &(payload,),
                )
                .await
            }
        });
        let mut calls: Vec<_> = calls.map(Box::pin).collect();
        // Wait for the first refusal: the queue is full, the flooder is told so.
        let refused = loop {
            let (r, _, rest) = futures_util::future::select_all(calls).await;
            calls = rest;
            if let Err(zbus::Error::MethodError(name, Some(text), _)) = r {
                break (name.to_string(), text);
            }
        };
        assert_eq!(refused.0, "org.freedesktop.DBus.Error.LimitsExceeded");
        assert!(
            refused
                .1
                .starts_with("Rejected: destination has a full message queue"),
            "{}",
            refused.1
        );
        // Everybody else is served meanwhile.
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        dbus.get_id().await.unwrap();
        // The sleeper leaves: the calls it held end with NoReply.
        drop(sleeper);
        for r in futures_util::future::join_all(calls).await {
            match r {
                Err(zbus::Error::MethodError(name, _, _)) => assert!(
                    name.as_str() == "org.freedesktop.DBus.Error.NoReply"
                        || name.as_str() == "org.freedesktop.DBus.Error.LimitsExceeded",
                    "{name}"
                ),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .unwrap();
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_recovers() {
    require("dbus-send");
    require("prlimit");
    let prlimit = Path::new("prlimit");
    let busd = busd_binary();
    let bus = Busd::start_program(
        prlimit,
        &["--nofile=40:40", busd.to_str().unwrap(), "--session"],
    );
    still_serving(&bus);
    // Fill the descriptor table with idle connections.
    let hogs: Vec<UnixStream> = (0..60)
        .filter_map(|_| UnixStream::connect(socket_path(&bus)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A client arrives meanwhile: it waits in the listen backlog.
    let waiting = std::process::Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/",
            "org.freedesktop.DBus.GetId",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(hogs);
    // Once the hogs are gone the bus accepts again, and the waiting client is served
    // without any new connection having to arrive.
    let mut waiting = waiting;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = waiting.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bus did not recover"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    still_serving(&bus);
}

/// busd raises its descriptor limit to the hard limit (a fast-path member costs it three
/// descriptors), and starts services with the limit it was given, as dbus-daemon does.
#[test]
fn the_descriptor_limit_is_raised_for_the_bus_and_restored_for_services() {
    require("dbus-send");
    require("prlimit");
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services");
    std::fs::create_dir_all(&services).unwrap();
    let seen = dir.path().join("limit");
    std::fs::write(
        services.join("org.example.Limit.service"),
        format!(
            "[D-BUS Service]\nName=org.example.Limit\nExec=/bin/sh -c \"ulimit -n > {}\"\n",
            seen.display()
        ),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        "limit.conf",
        &session_config(
            "",
            &format!("<servicedir>{}</servicedir>", services.display()),
        ),
    );
    let busd = busd_binary();
    let bus = Busd::start_program(
        Path::new("prlimit"),
        &[
            "--nofile=256:4096",
            busd.to_str().unwrap(),
            &format!("--config-file={}", config.display()),
        ],
    );
    let (ok, out) = dbus_send(
        &bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/",
            "org.freedesktop.DBus.GetConnectionUnixProcessID",
            "string:org.freedesktop.DBus",
        ],
    );
    assert!(ok, "{out}");
    let pid: u32 = out.split_whitespace().last().unwrap().parse().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, ["4096", "4096"], "{limits}");
    // The service exits without taking its name: the call fails, the file is written.
    let _ = dbus_send(
        &bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/",
            "org.freedesktop.DBus.StartServiceByName",
            "string:org.example.Limit",
            "uint32:0",
        ],
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "256");
}

/// A client that writes its last message and hangs up at once is seen leaving: the bus
/// hears of the bytes and the hang-up in one readiness event, and must read on to the end
/// (busd reads a quiet connection only up to a short read; stopping there left such a
/// client, and the name it took, on the bus for good: nothing is written to it that
/// could fail, and no event comes again).
#[tokio::test]
async fn a_client_that_writes_and_hangs_up_at_once_is_seen_leaving() {
    use futures_util::StreamExt;
    let bus = Busd::start();
    let watcher = busd_tests::zbus_connect(&bus).await;
    let dbus = zbus::fdo::DBusProxy::new(&watcher).await.unwrap();
    let mut changes = dbus.receive_name_owner_changed().await.unwrap();
    let pid = nix::unistd::Pid::from_raw(bus.pid() as i32);
    for round in 0..5 {
        let name = format!("org.example.Brief{round}");
        let mut s = raw_client(&bus);
        s.write_all(&request_name(2, &name)).unwrap();
        loop {
            let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
                .await
                .expect("the name is taken")
                .unwrap();
            if change.args().unwrap().name().as_str() == name {
                break;
            }
        }
        // A last signal, and gone: the bus, stopped meanwhile, learns of both at once.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let f = HeaderFields {
            path: Some("/org/example"),
            interface: Some("org.example.Brief"),
            member: Some("Bye"),
            ..Default::default()
        };
        s.write_all(&encode(
            Endian::Little,
            busd_wire::message::SIGNAL,
            0,
            3,
            &f,
            &[],
        ))
        .unwrap();
        drop(s);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        loop {
            let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: {name} kept by a client that left"))
                .unwrap();
            let a = change.args().unwrap();
            if a.name().as_str() == name && a.new_owner().is_none() {
                break;
            }
        }
    }
}

/// A client that sends authentication commands and never reads the answers is
/// disconnected once they pass 16 KiB (as libdbus bounds them), instead of making the
/// bus keep them for the whole auth_timeout.
#[test]
fn a_client_that_never_reads_its_authentication_replies_is_disconnected() {
    let bus = Busd::start();
    let mut s = UnixStream::connect(socket_path(&bus)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\0").unwrap();
    // What the kernel may hold of the bus's replies is bounded by the bus's send buffer
    // (unix sockets start with the same one, whose size depends on the machine).
    let sndbuf = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::SndBuf).unwrap();
    // Unknown commands whose `ERROR "Unknown command"` answers are 8 times that, and at
    // least 1 MB: far more than the socket buffers hold.
    const ANSWER: usize = "ERROR \"Unknown command\"\r\n".len();
    let commands = (8 * sndbuf / ANSWER).max(40_000);
    let lines = "X\r\n".repeat(commands);
    // (The bus may close while they are still being written.)
    let _ = s.write_all(lines.as_bytes());
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("still connected after {} bytes of replies: {e}", got.len()),
    }
    // What the kernel buffered for the client (its skbs may be larger than the buffer's
    // nominal size), and at most 16 KiB more: never all the answers.
    assert!(
        got.len() < 4 * sndbuf + 16 * 1024 && got.len() < commands * ANSWER,
        "{} bytes of replies with a send buffer of {sndbuf} bytes",
        got.len()
    );
    // The bus serves others.
    let (ok, out) = dbus_send(
        &bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ],
    );
    assert!(ok, "{out}");
}
