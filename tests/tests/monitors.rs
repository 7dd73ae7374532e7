//! What a monitor sees, message by message, compared with dbus-daemon: a whole client life
//! (Hello, NameAcquired, RequestName, a call, NameLost and NameOwnerChanged when it leaves)
//! and another monitor coming and going.

use std::process::{Command, Stdio};
use std::time::Duration;

use busd_tests::{dbus_daemon, require, Busd};

/// A client's life on the bus, from python3-dbus: connect, own a name, call the bus, leave.
const CLIENT: &str = r#"
import dbus, sys
b = dbus.bus.BusConnection(sys.argv[1])
b.request_name("org.example.Watched")
b.call_blocking("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
    "GetNameOwner", "s", ("org.example.Watched",))
b.close()
"#;

/// What dbus-monitor printed while `client` ran against `bus`, with serials and times
/// (which differ between any two buses) blanked.
fn watch(bus: &Busd, client: impl Fn(&Busd)) -> String {
    let mut monitor = Command::new("dbus-monitor")
        .args(["--address", &bus.address])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-monitor");
    // dbus-monitor is a monitor once its own NameLost went by; give it time to get there.
    std::thread::sleep(Duration::from_millis(500));
    client(bus);
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().expect("dbus-monitor output");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| match w.split_once('=') {
                    Some(("serial" | "time" | "reply_serial", _)) => w.split('=').next().unwrap(),
                    _ => w,
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn compare(client: impl Fn(&Busd)) {
    let ours = watch(&Busd::start(), &client);
    let theirs = watch(
        &Busd::start_program(&dbus_daemon(), &["--session"]),
        &client,
    );
    assert_eq!(
        ours, theirs,
        "what a monitor saw: busd (left), dbus-daemon (right)"
    );
}

#[test]
fn a_monitor_sees_a_client_life_as_dbus_daemon_shows_it() {
    require("dbus-monitor");
    require("python3-dbus");
    compare(|bus| {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", CLIENT, &bus.address])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn a_monitor_sees_another_monitor_come_and_go_as_dbus_daemon_shows_it() {
    require("dbus-monitor");
    compare(|bus| {
        let mut other = Command::new("dbus-monitor")
            .args(["--address", &bus.address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-monitor");
        std::thread::sleep(Duration::from_millis(500));
        let _ = other.kill();
        let _ = other.wait();
    });
}
