//! Where the log goes: warnings and activation messages on stderr by default (as dbus-daemon
//! writes them), nothing there with --syslog-only.

use std::io::Read;
use std::process::{Command, Stdio};

use busd_tests::{
    busd_binary, dbus_send_at, require, session_config, wait_for_socket, write_config,
};

/// Runs busd with `flags`, makes it refuse one message, stops it; returns its stderr.
fn stderr_of_a_denial(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "deny.conf",
        &session_config(r#"<deny send_interface="org.example.Secret"/>"#, ""),
    );
    let sock = dir.path().join("bus");
    let mut busd = Command::new(busd_binary())
        .arg(format!("--config-file={}", config.display()))
        .arg(format!("--address=unix:path={}", sock.display()))
        .args(["--nofork"])
        .args(flags)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let (ok, _, _) = dbus_send_at(
        &sock,
        &[
            "--dest=org.freedesktop.DBus",
            "/",
            "org.example.Secret.Poke",
        ],
    );
    assert!(!ok);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(busd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    busd.wait().unwrap();
    let mut err = String::new();
    busd.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn warnings_go_to_stderr_unless_syslog_only() {
    require("dbus-send");
    let err = stderr_of_a_denial(&[]);
    assert!(
        err.contains("Rejected send message, 2 matched rules"),
        "{err}"
    );
    assert!(
        !err.contains("INFO"),
        "lifecycle messages stay off stderr: {err}"
    );
    assert!(stderr_of_a_denial(&["--syslog"]).contains("Rejected send message"));
    assert_eq!(stderr_of_a_denial(&["--syslog-only"]), "");
}

/// Starts two services that fail (one exits 3, one does not exist) through `program` and
/// returns the messages it wrote on stderr about them, without its own line prefix.
fn activation_log(program: &std::path::Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services");
    std::fs::create_dir(&services).unwrap();
    for (name, exec) in [
        ("org.example.Fails", "/bin/sh -c \"exit 3\""),
        ("org.example.Missing", "/nonexistent/busd-test-program"),
    ] {
        std::fs::write(
            services.join(format!("{name}.service")),
            format!("[D-BUS Service]\nName={name}\nExec={exec}\n"),
        )
        .unwrap();
    }
    let config = write_config(
        dir.path(),
        "bus.conf",
        &session_config(
            "",
            &format!("<servicedir>{}</servicedir>", services.display()),
        ),
    );
    let sock = dir.path().join("bus");
    let mut bus = Command::new(program)
        .arg(format!("--config-file={}", config.display()))
        .arg(format!("--address=unix:path={}", sock.display()))
        .args(["--nofork", "--nopidfile"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    for name in ["org.example.Fails", "org.example.Missing"] {
        let (ok, _, _) = dbus_send_at(
            &sock,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.StartServiceByName",
                &format!("string:{name}"),
                "uint32:0",
            ],
        );
        assert!(!ok, "{name} cannot start");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bus.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    bus.wait().unwrap();
    let mut err = String::new();
    bus.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let dir_path = dir.path().display().to_string();
    err.lines()
        .filter(|l| l.contains("ctivat"))
        .map(|l| l.replace(&dir_path, "DIR"))
        // dbus-daemon: "dbus-daemon[PID]: [session uid=0 pid=PID] TEXT"; busd: "TIME  INFO TEXT".
        .map(|l| match l.split_once("] ") {
            Some((_, text)) if l.starts_with("dbus-daemon[") => text.to_string(),
            _ => l
                .split_once(" INFO ")
                .map_or(l.as_str(), |(_, t)| t)
                .trim()
                .to_string(),
        })
        // The requester's pid differs between the two runs.
        .map(|l| match l.find(" pid=") {
            Some(i) => {
                let rest = &l[i + 5..];
                let end = rest.find(' ').unwrap_or(rest.len());
                format!("{} pid=PID{}", &l[..i], &rest[end..])
            }
            None => l,
        })
        .collect()
}

#[test]
fn activation_is_logged_on_stderr_as_dbus_daemon_logs_it() {
    require("dbus-send");
    let ours = activation_log(&busd_binary());
    let theirs = activation_log(&busd_tests::dbus_daemon());
    assert_eq!(ours, theirs, "busd (left), dbus-daemon (right)");
    assert_eq!(ours.len(), 4, "{ours:#?}");
}
