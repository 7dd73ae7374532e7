//! Shared harness for busd's end-to-end tests: starts `busd` as a process on a private socket
//! and hands its address to real clients. The tests themselves are in `tests/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The busd binary under test: `$BUSD` or the workspace's debug build.
pub fn busd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BUSD") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/busd");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p busd` first (or set BUSD)",
        p.display()
    );
    p
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
        let sock = dir.path().join("bus");
        let mut child = Command::new(program)
            .args(args)
            .arg(format!("--address=unix:path={}", sock.display()))
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
        assert!(line.starts_with("unix:path="), "busd printed {line:?}");
        Busd {
            child,
            address: line.trim().to_string(),
            dir,
        }
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Busd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a command is installed; says so on stderr when it is not (the README's test
/// command installs every tool the tests use).
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// Runs a client command with a timeout; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
