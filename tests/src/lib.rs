//! Shared harness for busd's end-to-end tests: starts `busd` (or dbus-daemon, to compare) as a
//! process on a private socket and hands its address to real clients. The tests themselves are
//! in `tests/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod busd_build;
pub mod member;

/// The busd binary under test: `$BUSD` when set, or else the workspace's busd built from the
/// current sources (once per test process), so that no test runs a stale `target/debug/busd`.
pub fn busd_binary() -> PathBuf {
    match std::env::var_os("BUSD") {
        Some(p) => PathBuf::from(p),
        None => busd_build::program("busd"),
    }
}

/// Another program of the workspace (busd-top, its own package): the one beside `$BUSD`
/// when that is set, or else built from the current sources along with busd.
pub fn busd_program(name: &str) -> PathBuf {
    match std::env::var_os("BUSD") {
        Some(p) => PathBuf::from(p).with_file_name(name),
        None => busd_build::program(name),
    }
}

/// A running busd, killed when dropped.
pub struct Busd {
    child: Child,
    pub address: String,
    pub dir: tempfile::TempDir,
}

impl Busd {
    /// Starts busd with the stock session configuration on a socket in a temporary directory.
    pub fn start() -> Busd {
        Self::start_with(&["--session"])
    }

    pub fn start_with(args: &[&str]) -> Busd {
        Self::start_program(&busd_binary(), args)
    }

    /// Starts another bus daemon (dbus-daemon, to compare) the same way.
    pub fn start_program(program: &Path, args: &[&str]) -> Busd {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = format!("unix:path={}", dir.path().join("bus").display());
        Self::start_listening(program, args, &sock, dir)
    }

    /// Starts busd listening on `address` (`unix:abstract=...`, say).
    pub fn start_at(address: &str) -> Busd {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_listening(&busd_binary(), &["--session"], address, dir)
    }

    fn start_listening(
        program: &Path,
        args: &[&str],
        address: &str,
        dir: tempfile::TempDir,
    ) -> Busd {
        let mut child = Command::new(program)
            .args(args)
            .arg(format!("--address={address}"))
            .arg("--print-address")
            .arg("--nofork")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn busd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read address");
        assert!(line.starts_with("unix:"), "busd printed {line:?}");
        Busd {
            child,
            address: line.trim().to_string(),
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to 5 s for the daemon to exit; returns its exit status if it did.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Busd {
    /// SIGTERM first, so that the daemon removes what it created (sockets, the fast
    /// path's directory); SIGKILL if it does not exit within a second.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A zbus client connected to a running bus.
pub async fn zbus_connect(bus: &Busd) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .expect("a valid address")
        .build()
        .await
        .expect("connect")
}

/// A round trip through the bus: the driver's `GetId`.
pub async fn get_id(c: &zbus::Connection) -> zbus::Result<String> {
    c.call_method(
        Some("org.freedesktop.DBus"),
        "/org/freedesktop/DBus",
        Some("org.freedesktop.DBus"),
        "GetId",
        &(),
    )
    .await?
    .body()
    .deserialize()
}

/// What the tests need from the system, each with the Debian package that provides it
/// (tests/run-all.sh installs them all): commands found on PATH, files by absolute path,
/// and python3-dbus (the system interpreter's `dbus` module).
const REQUIREMENTS: &[(&str, &str)] = &[
    ("dbus-send", "dbus-bin"),
    ("dbus-monitor", "dbus-bin"),
    ("dbus-run-session", "dbus-daemon"),
    ("dbus-daemon", "dbus-daemon"),
    ("gdbus", "libglib2.0-bin"),
    ("busctl", "systemd"),
    ("systemd-socket-activate", "systemd"),
    ("systemd-analyze", "systemd"),
    ("prlimit", "util-linux"),
    ("unshare", "util-linux"),
    ("python3-dbus", "python3-dbus"),
    ("useradd", "passwd"),
    ("tmux", "tmux"),
    ("/usr/share/dbus-1/system.conf", "dbus-system-bus-common"),
];

/// Fails the test unless `what` (a command, an absolute path or `python3-dbus`, as listed
/// in `REQUIREMENTS`) is installed, naming the package to install. A missing tool is a
/// failure, never a silent pass: the README's test command (tests/run-all.sh) installs them.
#[track_caller]
pub fn require(what: &str) {
    let Some((_, package)) = REQUIREMENTS.iter().find(|(w, _)| *w == what) else {
        panic!("require({what:?}): unknown; add it and its package to REQUIREMENTS and tests/run-all.sh");
    };
    let found = if what == "python3-dbus" {
        // The system interpreter, as the tests run it (a pyenv one lacks the Debian package).
        Command::new("/usr/bin/python3")
            .args(["-c", "import dbus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    } else if what.starts_with('/') {
        Path::new(what).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| is_executable(&dir.join(what)))
        })
    };
    let shown = match what {
        "python3-dbus" => "python3-dbus (the dbus module of /usr/bin/python3)",
        _ => what,
    };
    assert!(
        found,
        "{shown} not found: install package {package} (tests/run-all.sh does)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails the test unless it runs as root, saying what for: the project's machines and CI
/// run the tests as root (tests/run-all.sh needs root to install the packages).
#[track_caller]
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root {why}: run the tests as root (the project's CI does)"
    );
}

/// Runs a client command with a timeout; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    run_within(cmd, Duration::from_secs(20))
}

/// As [`run`], killing the client after `limit` (and saying so in its stderr).
pub fn run_within(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let deadline = std::time::Instant::now() + limit;
    let mut killed = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait client");
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if killed {
        err.push_str(&format!("\n(killed: still running after {limit:?})"));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

/// The doctype line dbus-daemon's configuration files start with.
pub const HEADER: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">"#;

/// A session bus configuration that allows everything (as the stock session.conf does),
/// with `extra_policy` appended to its default policy and `extra` (limits, service
/// directories...) to the configuration.
pub fn session_config(extra_policy: &str, extra: &str) -> String {
    format!(
        r#"<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
    {extra_policy}
  </policy>
  {extra}
</busconfig>"#
    )
}

/// Writes a configuration file (the doctype is added).
pub fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{HEADER}\n{body}\n")).unwrap();
    p
}

/// dbus-daemon, the reference to compare with (required: see [`require`]).
pub fn dbus_daemon() -> PathBuf {
    require("dbus-daemon");
    PathBuf::from("dbus-daemon")
}

/// dbus-send's option naming this bus (it then says Hello, unlike with `--address`).
pub fn bus_arg(bus: &Busd) -> String {
    format!("--bus={}", bus.address)
}

/// Makes two daemons' answers comparable: connection names, pids and command lines differ.
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find([':', 'p', 'c']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let skip_digits = |s: &str, prefix: &str| -> Option<usize> {
            let after = s.strip_prefix(prefix)?;
            let n = after.bytes().take_while(|b| b.is_ascii_digit()).count();
            (n > 0).then_some(prefix.len() + n)
        };
        if let Some(n) = skip_digits(rest, ":1.") {
            out.push_str(":1.N");
            rest = &rest[n..];
        } else if let Some(n) = skip_digits(rest, "pid=") {
            out.push_str("pid=N");
            rest = &rest[n..];
        } else if let Some(after) = rest.strip_prefix("comm=\"") {
            let end = after.find('"').map_or(after.len(), |e| e + 1);
            out.push_str("comm=\"\"");
            rest = &after[end..];
        } else {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Runs `scenario` against busd and dbus-daemon with the same configuration file; returns
/// busd's outcome after checking dbus-daemon's is the same.
pub fn both<F>(config: &Path, scenario: F) -> Vec<(bool, String)>
where
    F: Fn(&Busd) -> Vec<(bool, String)>,
{
    let arg = format!("--config-file={}", config.display());
    // No pid file: the stock system.conf names the real bus's.
    let args = [arg.as_str(), "--nopidfile"];
    // Addresses differ between the two buses; they appear in some client errors.
    let run_on = |bus: Busd| -> Vec<(bool, String)> {
        scenario(&bus)
            .into_iter()
            .map(|(ok, t)| (ok, t.replace(&bus.address, "ADDRESS")))
            .collect()
    };
    let reference = dbus_daemon();
    let ours = run_on(Busd::start_with(&args));
    let theirs = run_on(Busd::start_program(&reference, &args));
    // Errors must read the same; successful replies carry serials, times and ids that
    // differ between any two buses.
    let n = |v: &[(bool, String)]| -> Vec<(bool, String)> {
        v.iter()
            .map(|(ok, t)| (*ok, if *ok { String::new() } else { normalize(t) }))
            .collect()
    };
    assert_eq!(n(&ours), n(&theirs), "busd and dbus-daemon disagree");
    ours
}

/// Waits (up to 2 s) for a socket file to appear.
pub fn wait_for_socket(path: &Path) {
    for _ in 0..100 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `dbus-send --print-reply` on the bus listening at `socket`, with `args`.
pub fn dbus_send_at(socket: &Path, args: &[&str]) -> (bool, String, String) {
    run(Command::new("dbus-send")
        .arg(format!("--bus=unix:path={}", socket.display()))
        .arg("--print-reply")
        .args(args))
}

/// Runs `dbus-send --print-reply` on the bus; returns (success, output and errors).
pub fn dbus_send(bus: &Busd, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("dbus-send")
        .arg(bus_arg(bus))
        .arg("--print-reply")
        .args(args));
    (ok, format!("{out}{err}").trim().to_string())
}

/// A python-dbus connection that owns `name` and never answers.
pub struct Sink(std::process::Child);

impl Sink {
    pub fn start(address: &str, name: &str) -> Sink {
        require("python3-dbus");
        let script = format!(
            "import dbus, time\n\
             b = dbus.bus.BusConnection('{address}')\n\
             b.request_name('{name}')\n\
             print('ready', flush=True)\n\
             time.sleep(60)\n"
        );
        // The system interpreter: python3-dbus is a Debian package.
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Sink(child)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `dbus-monitor` watching a bus, killed when dropped.
pub struct Monitor(Child);

impl Monitor {
    pub fn start(bus: &Busd) -> Monitor {
        require("dbus-monitor");
        Monitor(
            Command::new("dbus-monitor")
                .args(["--address", &bus.address])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dbus-monitor"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The service the zbus tests talk to: an echo, an error, a write through a passed fd, and
/// a signal.
pub struct Echo;

#[zbus::interface(name = "org.example.Echo")]
impl Echo {
    fn echo(&self, s: String) -> String {
        format!("echo: {s}")
    }

    fn fail(&self) -> zbus::fdo::Result<()> {
        Err(zbus::fdo::Error::Failed("it failed".into()))
    }

    fn write_to(&self, fd: zbus::zvariant::OwnedFd) -> u32 {
        use std::io::Write;
        let mut f = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
        f.write_all(b"written through a passed fd").unwrap();
        7
    }

    #[zbus(signal)]
    pub async fn tick(e: &zbus::object_server::SignalEmitter<'_>, n: u32) -> zbus::Result<()>;
}

/// Calls `Echo.WriteTo` on `dest` with the write end of a pipe, and checks what the
/// service wrote through it.
pub async fn assert_fd_passing(client: &zbus::Connection, dest: &str) {
    use std::io::Read;
    let (mut r, w) = std::io::pipe().unwrap();
    let w = std::os::fd::OwnedFd::from(w);
    let reply = client
        .call_method(
            Some(dest),
            "/echo",
            Some("org.example.Echo"),
            "WriteTo",
            &(zbus::zvariant::Fd::from(&w),),
        )
        .await
        .unwrap();
    assert_eq!(reply.body().deserialize::<u32>().unwrap(), 7);
    drop(w);
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "written through a passed fd");
}
