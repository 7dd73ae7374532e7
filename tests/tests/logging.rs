//! Where the log goes: warnings on stderr by default, nothing there with --syslog-only.

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
