//! Running under systemd: socket activation (`--address=systemd:`, LISTEN_FDS) and the
//! readiness protocol (NOTIFY_SOCKET).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use busd_tests::{busd_binary, dbus_send_at, require, wait_for_socket};

#[test]
fn takes_its_listening_socket_from_systemd() {
    require("systemd-socket-activate");
    require("dbus-send");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bus");
    // systemd-socket-activate listens, and starts busd with the socket on the first
    // connection, as a socket unit would.
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(busd_binary())
        .args([
            "--session",
            "--address=systemd:",
            "--nofork",
            "--print-address",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let (ok, out, err) = dbus_send_at(
        &sock,
        &[
            "--dest=org.freedesktop.DBus",
            "/",
            "org.freedesktop.DBus.GetId",
        ],
    );
    assert!(ok, "{out}{err}");
    let mut line = String::new();
    BufReader::new(activator.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with(&format!("unix:path={},guid=", sock.display())),
        "busd printed {line:?}"
    );
    let _ = activator.kill();
    let _ = activator.wait();
}

#[test]
fn tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut busd = Command::new(busd_binary())
        .args(["--session", "--nofork", "--print-address"])
        .arg(format!(
            "--address=unix:path={}",
            dir.path().join("bus").display()
        ))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    let pid = nix::unistd::Pid::from_raw(busd.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(next(), "STOPPING=1");
    assert!(busd.wait().unwrap().success());
}

/// The shipped user units (busd/systemd) are what systemd accepts: `systemd-analyze verify`
/// reports nothing for them, with ExecStart pointing at the busd under test.
#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    require("systemd-analyze");
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../busd/systemd");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["busd.socket", "busd.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(
            unit != "busd.service" || text.contains("ExecStart=/usr/local/bin/busd "),
            "{unit}: the install guide's path"
        );
        let text = text.replace(
            "/usr/local/bin/busd ",
            &format!("{} ", busd_binary().display()),
        );
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "./busd.socket", "./busd.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
