//! `<limit>`s reached through real clients, each with dbus-daemon's outcome (compared with
//! dbus-daemon on the same configuration where a client sees a message).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use busd_tests::{both, bus_arg, dbus_send, require, session_config, write_config, Busd, Sink};

fn config_with(limits: &str) -> String {
    session_config("", limits)
}

fn start(dir: &std::path::Path, limits: &str) -> Busd {
    let config = write_config(dir, "limits.conf", &config_with(limits));
    Busd::start_with(&[&format!("--config-file={}", config.display())])
}

/// Starts `dbus-send --print-reply` without waiting for it.
fn spawn_dbus_send(bus: &Busd, args: &[&str]) -> std::process::Child {
    Command::new("dbus-send")
        .arg(bus_arg(bus))
        .arg("--print-reply")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn socket_of(bus: &Busd) -> UnixStream {
    UnixStream::connect(bus.dir.path().join("bus")).unwrap()
}

fn auth_line() -> String {
    let uid = nix::unistd::getuid().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    format!("\0AUTH EXTERNAL {hex}\r\n")
}

#[test]
fn the_bus_gives_up_on_replies_after_reply_timeout() {
    require("dbus-send");
    require("python3-dbus");
    require("dbus-daemon");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "timeout.conf",
        &config_with(r#"<limit name="reply_timeout">300</limit>"#),
    );
    let outcomes = both(&config, |bus| {
        let _sink = Sink::start(&bus.address, "org.example.Sink");
        vec![dbus_send(
            bus,
            &[
                "--reply-timeout=10000",
                "--dest=org.example.Sink",
                "/",
                "org.example.Sink.Wait",
            ],
        )]
    });
    assert_eq!(
        outcomes[0],
        (
            false,
            "Error org.freedesktop.DBus.Error.NoReply: Message did not receive a reply (timeout by message bus)".to_string()
        )
    );
}

#[test]
fn a_caller_hears_no_reply_when_the_callee_disconnects() {
    require("dbus-send");
    require("python3-dbus");
    let dir = tempfile::tempdir().unwrap();
    let bus = start(dir.path(), "");
    let sink = Sink::start(&bus.address, "org.example.Sink");
    let caller = spawn_dbus_send(
        &bus,
        &[
            "--reply-timeout=10000",
            "--dest=org.example.Sink",
            "/",
            "org.example.Sink.Wait",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(sink);
    let out = caller.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "Error org.freedesktop.DBus.Error.NoReply: Message recipient disconnected from message bus without replying"
    );
}

#[test]
fn connections_beyond_max_incomplete_wait_instead_of_failing() {
    require("dbus-send");
    let dir = tempfile::tempdir().unwrap();
    let bus = start(
        dir.path(),
        r#"<limit name="max_incomplete_connections">2</limit>"#,
    );
    let first = socket_of(&bus);
    let _second = socket_of(&bus);
    std::thread::sleep(Duration::from_millis(100));
    let mut waiting = spawn_dbus_send(
        &bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/",
            "org.freedesktop.DBus.GetId",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the third client must wait while two are authenticating"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = waiting.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the waiting client never got in");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

#[test]
fn max_completed_and_per_user_connections_fail_the_next_hello() {
    require("dbus-send");
    require("python3-dbus");
    require("dbus-daemon");
    for limit in ["max_completed_connections", "max_connections_per_user"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            "limit.conf",
            &config_with(&format!(r#"<limit name="{limit}">1</limit>"#)),
        );
        let outcomes = both(&config, |bus| {
            let get_id = || {
                dbus_send(
                    bus,
                    &[
                        "--dest=org.freedesktop.DBus",
                        "/",
                        "org.freedesktop.DBus.GetId",
                    ],
                )
            };
            let held = Sink::start(&bus.address, "org.example.Held");
            let refused = get_id();
            drop(held);
            std::thread::sleep(Duration::from_millis(200));
            vec![refused, (get_id().0, String::new())]
        });
        assert!(!outcomes[0].0, "{limit}: {:?}", outcomes[0]);
        assert!(
            outcomes[0]
                .1
                .contains("The maximum number of active connections"),
            "{limit}: {:?}",
            outcomes[0]
        );
        assert!(outcomes[1].0, "{limit}: a place is free again");
    }
}

#[test]
fn fds_without_their_message_are_dropped_after_pending_fd_timeout() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let dir = tempfile::tempdir().unwrap();
    let bus = start(
        dir.path(),
        r#"<limit name="pending_fd_timeout">300</limit>"#,
    );
    let mut s = socket_of(&bus);
    s.write_all(format!("{}NEGOTIATE_UNIX_FD\r\nBEGIN\r\n", auth_line()).as_bytes())
        .unwrap();
    // The start of a message (its fixed header only) and an fd.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let fds = [devnull.as_raw_fd()];
    let partial = [b'l', 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0];
    sendmsg::<()>(
        s.as_raw_fd(),
        &[std::io::IoSlice::new(&partial)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("busd closes the connection");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("OK ") && text.contains("AGREE_UNIX_FD"),
        "{text}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

/// A connection that does not complete (authenticate and say Hello) within auth_timeout
/// is closed, as dbus-daemon closes it; one that did stays, however long it is idle.
#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start(dir.path(), r#"<limit name="auth_timeout">300</limit>"#);
    let mut done = socket_of(&bus);
    let hello = busd_wire::message::encode(
        busd_wire::marshal::Endian::Little,
        busd_wire::message::METHOD_CALL,
        0,
        1,
        &busd_wire::message::HeaderFields {
            path: Some("/org/freedesktop/DBus"),
            interface: Some("org.freedesktop.DBus"),
            member: Some("Hello"),
            destination: Some("org.freedesktop.DBus"),
            ..Default::default()
        },
        &[],
    );
    done.write_all(format!("{}BEGIN\r\n", auth_line()).as_bytes())
        .unwrap();
    done.write_all(&hello).unwrap();
    let mut slow = socket_of(&bus);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    slow.read_to_end(&mut all)
        .expect("busd closes the connection");
    assert!(all.is_empty(), "{}", String::from_utf8_lossy(&all));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // The one that completed is still there: it has its OK, Hello's answer and
    // NameAcquired, and then nothing, not an end of file.
    std::thread::sleep(Duration::from_millis(400));
    done.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    let err = loop {
        match done.read(&mut buf) {
            Ok(0) => panic!("it was closed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(String::from_utf8_lossy(&got).starts_with("OK "));
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "it was closed");
}
