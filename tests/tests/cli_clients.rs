//! Standard command-line clients against a busd process: dbus-send, dbus-monitor, gdbus,
//! busctl, python3-dbus and dbus-run-session. Each fails, naming the package, if its tool is
//! missing (the README's test command installs them).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use busd_tests::{busd_binary, busd_program, require, run, Busd};

/// Starts a long-running client and returns it with a reader of its stdout.
fn spawn_lines(cmd: &mut Command) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle`; returns everything read up to it.
fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
    }
    panic!("never saw {needle:?}; got:\n{seen}");
}

#[test]
fn dbus_send_calls_the_driver() {
    require("dbus-send");
    let bus = Busd::start();
    let (ok, out, err) = run(Command::new("dbus-send").args([
        &format!("--bus={}", bus.address),
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.ListNames",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("string \"org.freedesktop.DBus\""), "{out}");
    let (ok, _, err) = run(Command::new("dbus-send").args([
        &format!("--bus={}", bus.address),
        "--print-reply",
        "--dest=org.example.Nobody",
        "/",
        "org.example.X.Y",
    ]));
    assert!(!ok);
    assert!(
        err.contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{err}"
    );
}

#[test]
fn dbus_monitor_sees_a_signal_from_dbus_send() {
    require("dbus-send");
    require("dbus-monitor");
    let bus = Busd::start();
    let (mut mon, rx) = spawn_lines(Command::new("dbus-monitor").args(["--address", &bus.address]));
    // dbus-monitor prints its own NameLost/NameOwnerChanged once it became a monitor.
    wait_for(&rx, "NameLost");
    let (ok, _, err) = run(Command::new("dbus-send").args([
        &format!("--bus={}", bus.address),
        "--type=signal",
        "/org/example",
        "org.example.Iface.Happened",
        "string:payload-42",
    ]));
    assert!(ok, "{err}");
    let seen = wait_for(&rx, "payload-42");
    assert!(
        seen.contains("interface=org.example.Iface; member=Happened"),
        "{seen}"
    );
    let _ = mon.kill();
    let _ = mon.wait();
}

#[test]
fn gdbus_call_emit_and_monitor() {
    require("gdbus");
    let bus = Busd::start();
    let (ok, out, err) = run(Command::new("gdbus").args([
        "call",
        "--address",
        &bus.address,
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.GetNameOwner",
        "org.freedesktop.DBus",
    ]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "('org.freedesktop.DBus',)");
    let (ok, out, err) = run(Command::new("gdbus").args([
        "call",
        "--address",
        &bus.address,
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        "org.freedesktop.DBus",
        "Features",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("HeaderFiltering"), "{out}");
    let (mut mon, rx) = spawn_lines(Command::new("gdbus").args([
        "monitor",
        "--address",
        &bus.address,
        "--dest",
        "org.freedesktop.DBus",
    ]));
    wait_for(&rx, "Monitoring");
    let (ok, _, err) = run(Command::new("gdbus").args([
        "emit",
        "--address",
        &bus.address,
        "--object-path",
        "/org/example",
        "--signal",
        "org.example.Iface.Hello",
        "'from-gdbus'",
    ]));
    assert!(ok, "{err}");
    let _ = mon.kill();
    let _ = mon.wait();
}

#[test]
fn busctl_lists_and_calls() {
    require("busctl");
    let bus = Busd::start();
    let (ok, out, err) = run(Command::new("busctl").args([
        &format!("--address={}", bus.address),
        "list",
        "--no-pager",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("org.freedesktop.DBus"), "{out}");
    let (ok, out, err) = run(Command::new("busctl").args([
        &format!("--address={}", bus.address),
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "NameHasOwner",
        "s",
        "org.freedesktop.DBus",
    ]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "b true");
}

#[test]
fn python_dbus_owns_a_name_and_answers_a_call() {
    require("python3-dbus");
    let bus = Busd::start();
    let script = r#"
import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
assert bus.request_name("org.example.Py") == dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER
drv = dbus.Interface(bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"), "org.freedesktop.DBus")
print("owner", drv.GetNameOwner("org.example.Py") == bus.get_unique_name())
print("names", "org.example.Py" in drv.ListNames())
print("id", len(drv.GetId()))
import os
creds = drv.GetConnectionCredentials(bus.get_unique_name())
print("keys", [str(k) for k in creds.keys()])
print("uid", creds["UnixUserID"] == os.geteuid(), "pid", creds["ProcessID"] == os.getpid())
print("groups", sorted(creds["UnixGroupIDs"]) == sorted(set(os.getgroups()) | {os.getegid()}))
"#;
    let (ok, out, err) = run(Command::new("/usr/bin/python3").args(["-c", script, &bus.address]));
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "owner True\nnames True\nid 32\n\
         keys ['ProcessID', 'UnixUserID', 'UnixGroupIDs']\n\
         uid True pid True\ngroups True\n"
    );
}

#[test]
fn dbus_run_session_uses_busd() {
    require("dbus-run-session");
    require("dbus-send");
    let (ok, out, err) = run(Command::new("dbus-run-session").args([
        &format!("--dbus-daemon={}", busd_binary().display()),
        "--",
        "dbus-send",
        "--session",
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.GetId",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("string \""), "{out}");
}

#[test]
fn a_malformed_message_disconnects_only_its_sender() {
    require("dbus-send");
    let mut bus = Busd::start();
    let path = bus
        .address
        .trim_start_matches("unix:path=")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let mut bad = UnixStream::connect(&path).unwrap();
    let uid = nix::unistd::getuid().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    bad.write_all(format!("\0AUTH EXTERNAL {hex}\r\nBEGIN\r\n").as_bytes())
        .unwrap();
    // A header with an invalid byte-order mark.
    bad.write_all(b"X\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00")
        .unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(bad.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "{line}");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "the bad client got data after its bad message"
    );
    assert!(bus.is_running());
    let (ok, _, err) = run(Command::new("dbus-send").args([
        &format!("--bus={}", bus.address),
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.GetId",
    ]));
    assert!(ok, "other clients keep working: {err}");
}

#[test]
fn fork_prints_address_and_pid_then_the_parent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bus");
    let out = Command::new(busd_binary())
        .args(["--session", "--fork", "--print-address", "--print-pid"])
        .arg(format!("--address=unix:path={}", sock.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("unix:path="));
    let pid: i32 = lines.next().unwrap().parse().unwrap();
    assert!(
        UnixStream::connect(&sock).is_ok(),
        "the forked daemon listens"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
}

#[test]
fn bad_usage_and_bad_config_fail_clearly() {
    let out = Command::new(busd_binary()).arg("--bogus").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown option"));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "<busconfig>\n  <listen>unix:tmpdir=/tmp</listen>\n  <limit name=\"nope\">1</limit>\n</busconfig>\n").unwrap();
    let out = Command::new(busd_binary())
        .arg(format!("--config-file={}", conf.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:3:") && err.contains("nope"), "{err}");
}

#[test]
fn busd_top_lists_connections_with_their_names_and_processes() {
    require("python3-dbus");
    let bus = Busd::start();
    let _sink = busd_tests::Sink::start(&bus.address, "org.example.Top");
    let top = busd_program("busd-top");
    let (ok, out, err) = run(Command::new(top)
        .arg(format!("--address={}", bus.address))
        .arg("--once"));
    assert!(ok, "{err}");
    assert!(out.starts_with("connections: 2 active"), "{out}");
    let line = out
        .lines()
        .find(|l| l.ends_with("org.example.Top"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("python3"), "{line}");
}

/// The driver's introspection data, from `--introspect` and from a live `Introspect` call,
/// is dbus-daemon 1.14's, but for busd's own fast-path interface (ActivatableServicesChanged
/// declared, properties before signals).
#[test]
fn introspection_is_dbus_daemons_plus_the_fast_path_interface() {
    require("gdbus");
    let daemon = busd_tests::dbus_daemon();
    /// Removes busd's own interface, which dbus-daemon does not have.
    fn without_fast_path(xml: &str) -> String {
        let start = xml
            .find("  <interface name=\"org.freedesktop.busd.FastPath1\">")
            .expect("busd declares its fast-path interface");
        let end = start + xml[start..].find("  </interface>\n").unwrap() + "  </interface>\n".len();
        format!("{}{}", &xml[..start], &xml[end..])
    }
    let flag = |program: &std::path::Path| {
        let out = Command::new(program).arg("--introspect").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(without_fast_path(&flag(&busd_binary())), flag(&daemon));
    let live = |bus: &Busd| {
        let (ok, out, err) = run(Command::new("gdbus").args([
            "introspect",
            "--xml",
            "--address",
            &bus.address,
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
        ]));
        assert!(ok, "{err}");
        out
    };
    let ours = live(&Busd::start());
    assert!(ours.contains("<signal name=\"ActivatableServicesChanged\">"));
    let theirs = live(&Busd::start_program(&daemon, &["--session"]));
    assert_eq!(without_fast_path(&ours), theirs);
}

/// What a person reads when the bus cannot start: each file named once, with the system's
/// reason once (dbus-daemon's "Failed to open"), a missing include at the line that
/// includes it, and a listen address as it was written, with the socket that failed.
#[test]
fn startup_errors_name_the_file_line_and_address_once() {
    let dir = tempfile::tempdir().unwrap();
    let fail = |args: &[&str]| {
        let out = Command::new(busd_binary())
            .args(args)
            .arg("--nofork")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    let missing = dir.path().join("none.conf");
    assert_eq!(
        fail(&[&format!("--config-file={}", missing.display())]),
        format!(
            "busd: Failed to open \"{}\": No such file or directory",
            missing.display()
        )
    );
    let including = dir.path().join("main.conf");
    std::fs::write(
        &including,
        "<busconfig>\n  <type>session</type>\n  <include>gone.conf</include>\n</busconfig>\n",
    )
    .unwrap();
    assert_eq!(
        fail(&[&format!("--config-file={}", including.display())]),
        format!(
            "busd: {}:3: Failed to open \"{}\": No such file or directory",
            including.display(),
            dir.path().join("gone.conf").display()
        )
    );
    let err = fail(&["--session", "--address=unix:tmpdir=/nonexistent/busd-test"]);
    assert!(
        err.starts_with(
            "busd: Failed to listen on \"unix:tmpdir=/nonexistent/busd-test\": \
             Failed to bind socket \"/nonexistent/busd-test/dbus-"
        ) && err.ends_with("\": No such file or directory"),
        "{err}"
    );
}

/// `--check-config` refuses what the daemon refuses, with the daemon's message: a
/// configuration without `<listen>` and one with a tcp address.
#[test]
fn check_config_fails_where_the_daemon_would() {
    let dir = tempfile::tempdir().unwrap();
    for (name, listen) in [
        ("none.conf", ""),
        ("tcp.conf", "<listen>tcp:host=localhost,port=0</listen>"),
    ] {
        let config = dir.path().join(name);
        std::fs::write(
            &config,
            format!("<busconfig><type>session</type>{listen}</busconfig>"),
        )
        .unwrap();
        let arg = format!("--config-file={}", config.display());
        let check = Command::new(busd_binary())
            .args([&arg, "--check-config"])
            .output()
            .unwrap();
        let start = Command::new(busd_binary())
            .args([&arg, "--nofork"])
            .output()
            .unwrap();
        assert!(!check.status.success(), "{name}: --check-config passed");
        assert!(!start.status.success(), "{name}: the daemon started");
        assert_eq!(
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&start.stderr),
            "{name}"
        );
    }
}

/// `--check-config` shows what an administrator checks: where services are looked for,
/// the process settings, users and groups by name beside their ids, timeouts with units.
#[test]
fn check_config_shows_directories_settings_names_and_units() {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services");
    std::fs::create_dir(&services).unwrap();
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <pidfile>{pid}</pidfile>
  <servicedir>{services}</servicedir>
  <servicedir>{missing}</servicedir>
  <limit name="auth_timeout">5000</limit>
  <policy context="default"><allow send_destination="*"/></policy>
  <policy user="root"><allow own="*"/></policy>
  <policy group="root"><allow own="*"/></policy>
</busconfig>"#,
            pid = dir.path().join("pid").display(),
            services = services.display(),
            missing = dir.path().join("nowhere").display(),
        ),
    )
    .unwrap();
    let out = Command::new(busd_binary())
        .args([
            &format!("--config-file={}", config.display()),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "fork: no".to_string(),
        "syslog: no".to_string(),
        format!("pidfile: {}", dir.path().join("pid").display()),
        "servicehelper: (none)".to_string(),
        "service directories searched:".to_string(),
        format!("  {}", services.display()),
        format!("  {} (missing)", dir.path().join("nowhere").display()),
        "  auth_timeout = 5000 ms".to_string(),
        "  user 0 (root): 0/0/1/0".to_string(),
        "  group 0 (root): 0/0/1/0".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
}
