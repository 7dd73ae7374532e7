//! DBUS_COOKIE_SHA1, the one authentication mechanism of dbus-daemon's that is not tied to
//! the socket's credentials: libdbus (dbus-send) and GDBus (gdbus) clients authenticate
//! with the keyring in the home directory of the bus's user, which busd reads and fills as
//! they do; a client that cannot read that keyring gets nowhere, whatever it claims.
//!
//! The bus and its clients run as a user of their own (made here), with a temporary home
//! directory in `$HOME` that is not the user database's: libdbus, GDBus and busd all take
//! `$HOME` when a process runs as itself, and the tests touch no real keyring. Needs root.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use busd_tests::{busd_binary, require, require_root, run, write_config};

const USER: &str = "busd-cookie-test";

/// The test user (made if missing), owning `home`; its home directory in the user database
/// is one that does not exist.
fn user_with_home(home: &Path) -> (u32, u32) {
    require("useradd");
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        let (ok, out, err) = run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ]));
        assert!(ok, "useradd: {out}{err}");
    }
    let (ok, out, err) =
        run(Command::new("usermod").args(["--home", "/nonexistent/busd-cookie-test", USER]));
    assert!(ok, "usermod: {out}{err}");
    let u = nix::unistd::User::from_name(USER).unwrap().unwrap();
    nix::unistd::chown(home, Some(u.uid), Some(u.gid)).unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

/// A command run as the test user, with its home directory in the environment.
fn as_user(program: &str, uid: u32, gid: u32, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.uid(uid)
        .gid(gid)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    c
}

/// busd as the test user, offering only DBUS_COOKIE_SHA1; killed when dropped.
struct Bus(Child);

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bus(uid: u32, gid: u32, home: &Path) -> (Bus, String) {
    let socket = home.join("bus");
    let config = write_config(
        home,
        "cookie.conf",
        &format!(
            r#"<busconfig><type>session</type><listen>unix:path={}</listen>
  <auth>DBUS_COOKIE_SHA1</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
  </policy>
</busconfig>"#,
            socket.display()
        ),
    );
    let mut child = as_user(busd_binary().to_str().unwrap(), uid, gid, home)
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn busd");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("unix:path="), "busd printed {line:?}");
    (Bus(child), format!("unix:path={}", socket.display()))
}

/// What a raw client is told after claiming to be `user` and answering the challenge with
/// a hash made from `cookie` (not the keyring's).
fn raw_attempt(socket: &Path, user: &str, cookie: &str) -> String {
    let script = r#"
import binascii, hashlib, socket, sys
path, user, cookie = sys.argv[1:]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
def line():
    b = b""
    while not b.endswith(b"\r\n"):
        b += s.recv(1)
    return b.decode().strip()
s.sendall(b"\0AUTH DBUS_COOKIE_SHA1 " + binascii.hexlify(user.encode()) + b"\r\n")
r = line()
if not r.startswith("DATA "):
    print(r); sys.exit()
context, cid, challenge = binascii.unhexlify(r[5:]).decode().split(" ")
mine = "c0ffee"
proof = hashlib.sha1(f"{challenge}:{mine}:{cookie}".encode()).hexdigest()
s.sendall(b"DATA " + binascii.hexlify(f"{mine} {proof}".encode()) + b"\r\n")
print(line())
"#;
    let (ok, out, err) = run(Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(socket)
        .args([user, cookie]));
    assert!(ok, "{err}");
    out.trim().to_string()
}

#[test]
fn libdbus_and_gdbus_clients_authenticate_with_the_users_cookies() {
    require_root("to run the bus and its clients as a user of their own");
    require("dbus-send");
    require("gdbus");
    let home = tempfile::tempdir().unwrap();
    let (uid, gid) = user_with_home(home.path());
    let (_bus, address) = start_bus(uid, gid, home.path());

    // libdbus: EXTERNAL is not offered, so this is DBUS_COOKIE_SHA1.
    let (ok, out, err) = run(as_user("dbus-send", uid, gid, home.path())
        .arg(format!("--bus={address}"))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetConnectionUnixUser",
            "string:org.freedesktop.DBus",
        ]));
    assert!(ok, "dbus-send: {out}{err}");
    // The keyring busd made, as libdbus and GDBus keep it.
    let keyrings = home.path().join(".dbus-keyrings");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&keyrings).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    let cookies = std::fs::read_to_string(keyrings.join("org_freedesktop_general")).unwrap();
    let first: Vec<&str> = cookies.lines().next().unwrap().split(' ').collect();
    assert_eq!(first.len(), 3, "{cookies}");
    assert_eq!(first[2].len(), 48, "24 random bytes in hex: {cookies}");

    // GDBus, with the same keyring.
    let (ok, out, err) = run(as_user("gdbus", uid, gid, home.path()).args([
        "call",
        "-a",
        &address,
        "-d",
        "org.freedesktop.DBus",
        "-o",
        "/org/freedesktop/DBus",
        "-m",
        "org.freedesktop.DBus.GetId",
    ]));
    assert!(ok, "gdbus: {out}{err}");

    // Whoever cannot read the keyring gets nowhere: a guessed cookie, or another user
    // (root here, whose keyring the bus cannot use), is rejected.
    let socket = home.path().join("bus");
    let rejected = "REJECTED DBUS_COOKIE_SHA1";
    assert_eq!(
        raw_attempt(&socket, &uid.to_string(), "0123456789abcdef"),
        rejected
    );
    assert_eq!(raw_attempt(&socket, USER, "0123456789abcdef"), rejected);
    assert_eq!(raw_attempt(&socket, "0", first[2]), rejected);
    // And with the cookie read from the file, the same raw client is let in.
    assert!(
        raw_attempt(&socket, &uid.to_string(), first[2]).starts_with("OK "),
        "the cookie from the keyring"
    );
}
