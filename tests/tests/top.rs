//! busd-top as a person uses it: in a real 80x24 terminal (tmux), typing keys and reading
//! the screen; and its one-line errors, `--once` and `unix:abstract=` addresses.

use std::process::Command;
use std::time::{Duration, Instant};

use busd_tests::{busd_program, require, run, Busd, Monitor};

/// A tmux server of its own running one command in an 80x24 pane; killed when dropped,
/// also when the test fails.
struct Pane {
    server: String,
    /// The server's socket, which kill-server leaves behind.
    socket: Option<std::path::PathBuf>,
}

impl Pane {
    /// Runs busd-top with `args` in a new pane. When busd-top ends, the pane says
    /// `busd-top exited: STATUS` and stays, so that what it printed can be read.
    fn start(test: &str, args: &[&str]) -> Pane {
        Pane::start_redirected(test, args, "")
    }

    /// As [`Pane::start`], with `redirect` (a shell redirection) after busd-top's arguments.
    fn start_redirected(test: &str, args: &[&str], redirect: &str) -> Pane {
        require("tmux");
        let mut pane = Pane {
            server: format!("busd-top-{}-{test}", std::process::id()),
            socket: None,
        };
        let (ok, _, err) = run(pane
            .tmux(&[
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
            ])
            .arg(pane.shell(args, redirect)));
        assert!(ok, "tmux: {err}");
        let (ok, socket, err) = run(&mut pane.tmux(&["display-message", "-p", "#{socket_path}"]));
        assert!(ok, "tmux: {err}");
        pane.socket = Some(socket.trim().into());
        pane
    }

    /// The shell line the pane runs: busd-top, then a line with its exit status.
    fn shell(&self, args: &[&str], redirect: &str) -> String {
        let mut command = format!("'{}'", busd_program("busd-top").display());
        for a in args {
            assert!(!a.contains('\''), "{a}");
            command.push_str(&format!(" '{a}'"));
        }
        command + " " + redirect + "; echo \"busd-top exited: $?\"; sleep 3600"
    }

    fn tmux(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.server]).args(args);
        c
    }

    /// The pid of the busd-top the pane runs.
    fn busd_top_pid(&self) -> i32 {
        let (ok, shell, err) = run(&mut self.tmux(&["display-message", "-p", "#{pane_pid}"]));
        assert!(ok, "tmux: {err}");
        let (ok, pid, err) = run(Command::new("pgrep").args(["-P", shell.trim(), "busd-top"]));
        assert!(ok, "pgrep: {err}");
        pid.trim().parse().expect("busd-top's pid")
    }

    /// What the pane shows, line by line.
    fn screen(&self) -> String {
        let (ok, out, err) = run(&mut self.tmux(&["capture-pane", "-p"]));
        assert!(ok, "capture-pane: {err}");
        out
    }

    fn keys(&self, keys: &[&str]) {
        let (ok, _, err) = run(self.tmux(&["send-keys"]).args(keys));
        assert!(ok, "send-keys: {err}");
    }

    /// Waits up to 20 s for the screen to satisfy `holds`; returns that screen, or fails
    /// the test with `what` and the last screen.
    fn wait_for(&self, what: &str, holds: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if holds(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]).output();
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The lines of the connections' table: those that start with a unique name.
fn rows(screen: &str) -> Vec<&str> {
    screen.lines().filter(|l| l.starts_with(":1.")).collect()
}

/// The row of the connection that owns `name`.
fn row_of<'s>(screen: &'s str, name: &str) -> Option<&'s str> {
    rows(screen)
        .into_iter()
        .find(|l| l.split_whitespace().any(|w| w == name))
}

/// A connection of the test process that owns `name`.
async fn owner(bus: &Busd, name: &str) -> zbus::Connection {
    let c = busd_tests::zbus_connect(bus).await;
    c.request_name(name).await.unwrap();
    c
}

fn top_args(bus: &Busd) -> [String; 2] {
    [
        format!("--address={}", bus.address),
        "--interval=0.3".to_string(),
    ]
}

fn start_top(test: &str, bus: &Busd) -> Pane {
    let args = top_args(bus);
    Pane::start(test, &[&args[0], &args[1]])
}

/// With more connections than rows, the screen keeps its shape: the summary on top, one
/// line per connection (cut at 80 columns, never wrapped), the address at the bottom.
#[tokio::test(flavor = "multi_thread")]
async fn an_80x24_terminal_shows_what_fits_and_cuts_the_rest() {
    let bus = Busd::start();
    let mut many = Vec::new();
    for i in 0..30 {
        many.push(
            owner(
                &bus,
                &format!("org.example.AVeryLongWellKnownName.Number{i}"),
            )
            .await,
        );
    }
    let top = start_top("fit", &bus);
    let screen = top.wait_for("the connections", |s| rows(s).len() >= 10);
    let lines: Vec<&str> = screen.lines().collect();
    assert_eq!(lines.len(), 24, "{screen}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{screen}");
    assert!(lines[0].starts_with("connections: 31 active"), "{screen}");
    assert!(lines[2].starts_with("NAME "), "{screen}");
    // Every line between the header and the bottom line is a whole row: nothing wrapped.
    assert!(
        lines[3..23].iter().all(|l| l.starts_with(":1.")),
        "{screen}"
    );
    assert!(lines[23].starts_with("unix:path="), "{screen}");
    assert!(
        lines[3].contains("org.example.AVeryLong"),
        "names are cut, not wrapped: {screen}"
    );
}

/// `n` sorts by well-known name (the same key again reverses), `u` back to the order the
/// connections came in.
#[tokio::test(flavor = "multi_thread")]
async fn sort_keys_reorder_the_rows() {
    let bus = Busd::start();
    let _first = owner(&bus, "org.example.Zed").await;
    let _second = owner(&bus, "org.example.Alpha").await;
    let top = start_top("sort", &bus);
    let order = |s: &str| {
        let names: Vec<&str> = rows(s)
            .into_iter()
            .filter_map(|l| l.split_whitespace().last())
            .filter(|n| n.starts_with("org.example."))
            .collect();
        names.join(" ")
    };
    top.wait_for("the connections in order", |s| {
        order(s) == "org.example.Zed org.example.Alpha"
    });
    top.keys(&["n"]);
    top.wait_for("sorted by name", |s| {
        order(s) == "org.example.Alpha org.example.Zed" && s.contains("by well-known names")
    });
    top.keys(&["n"]);
    top.wait_for("the order reversed", |s| {
        order(s) == "org.example.Zed org.example.Alpha" && s.contains("(z-a)")
    });
    top.keys(&["u"]);
    top.wait_for("sorted by unique name", |s| s.contains("by unique name"));
}

/// `/` then text filters the rows by name or process; Esc clears the filter.
#[tokio::test(flavor = "multi_thread")]
async fn the_filter_hides_rows_that_do_not_match() {
    let bus = Busd::start();
    let _zed = owner(&bus, "org.example.Zed").await;
    let _alpha = owner(&bus, "org.example.Alpha").await;
    let top = start_top("filter", &bus);
    top.wait_for("both", |s| {
        row_of(s, "org.example.Zed").is_some() && row_of(s, "org.example.Alpha").is_some()
    });
    top.keys(&["/", "alp"]);
    top.wait_for("the filter typed", |s| s.contains("filter: alp"));
    top.keys(&["Enter"]);
    let screen = top.wait_for("only Alpha", |s| {
        row_of(s, "org.example.Alpha").is_some() && rows(s).len() == 1
    });
    assert!(screen.contains("1 of 3 connections"), "{screen}");
    top.keys(&["Escape"]);
    top.wait_for("every row again", |s| rows(s).len() == 3);
}

/// `h` shows the keys; any key closes the help.
#[test]
fn help_shows_the_keys() {
    let bus = Busd::start();
    let top = start_top("help", &bus);
    top.wait_for("the table", |s| s.contains("NAME "));
    top.keys(&["h"]);
    top.wait_for("the help", |s| {
        s.contains("sort by messages") && s.contains("q  quit") && s.contains("/  filter")
    });
    top.keys(&["x"]);
    top.wait_for("the help closed", |s| {
        !s.contains("sort by messages") && s.contains("NAME ")
    });
    top.keys(&["?"]);
    top.wait_for("the help again", |s| s.contains("sort by messages"));
}

/// `q` quits at once, with status 0, and gives the terminal back; also typed right after
/// the Esc that leaves the filter (which a terminal sends as one Alt+q).
#[test]
fn q_quits() {
    let bus = Busd::start();
    let top = start_top("quit", &bus);
    top.wait_for("the table", |s| s.contains("NAME "));
    top.keys(&["/", "x"]);
    top.wait_for("the filter", |s| s.contains("filter: x"));
    top.keys(&["Escape", "q"]);
    let screen = top.wait_for("busd-top to end", |s| s.contains("busd-top exited: "));
    assert!(screen.contains("busd-top exited: 0"), "{screen}");
    assert!(
        !screen.contains("NAME "),
        "the screen is given back: {screen}"
    );
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// SIGTERM (and SIGHUP, SIGINT) end busd-top as q does: the terminal is given back, not
/// left in raw mode on the alternate screen; then the signal ends it, so its status says so.
#[test]
fn sigterm_gives_the_terminal_back() {
    let bus = Busd::start();
    let top = start_top("sigterm", &bus);
    top.wait_for("the table", |s| s.contains("NAME "));
    signal(top.busd_top_pid(), nix::sys::signal::Signal::SIGTERM);
    let screen = top.wait_for("busd-top to end", |s| s.contains("busd-top exited: "));
    // Ended by the signal, as the shell sees it (128 + SIGTERM).
    assert!(screen.contains("busd-top exited: 143"), "{screen}");
    assert!(
        !screen.contains("NAME "),
        "the screen is given back: {screen}"
    );
}

/// A terminal that goes away (its window closed; here its tmux killed) ends busd-top: it
/// does not stay behind, reading the dead terminal on a core of its own.
#[test]
fn a_terminal_that_goes_away_ends_busd_top() {
    let bus = Busd::start();
    let top = start_top("hangup", &bus);
    top.wait_for("the table", |s| s.contains("NAME "));
    let pid = top.busd_top_pid();
    drop(top);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Gone, or ended and not yet reaped (a zombie, state Z).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        if state.is_none_or(|s| s == "Z") {
            break;
        }
        if Instant::now() > deadline {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("busd-top outlived its terminal by 10 s (state {state:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keys come from standard input: busd-top refuses to start without a terminal there,
/// rather than read the end of a file again and again (as crossterm would, on a core).
#[test]
fn standard_input_must_be_a_terminal() {
    let bus = Busd::start();
    let address = format!("--address={}", bus.address);
    let top = Pane::start_redirected("stdin", &[&address], "< /dev/null");
    let screen = top.wait_for("busd-top to end", |s| s.contains("busd-top exited: "));
    assert!(screen.contains("busd-top exited: 1"), "{screen}");
    assert!(
        screen.contains("busd-top: standard input is not a terminal"),
        "{screen}"
    );
}

/// A connection that keeps calling shows message and byte rates above zero, both ways.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_connection_shows_its_rates() {
    let bus = Busd::start();
    let busy = owner(&bus, "org.example.Busy").await;
    let _idle = owner(&bus, "org.example.Idle").await;
    let calls = tokio::spawn(async move {
        loop {
            busd_tests::get_id(&busy).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let top = start_top("rates", &bus);
    // NAME COMMAND TX RX TX/s RX/s TXB/s RXB/s NAMES, at 80 columns.
    let rate = |row: &str, column: usize| -> f64 {
        let cell = row.split_whitespace().nth(column).unwrap_or("-");
        let (digits, scale) = match cell.strip_suffix('k') {
            Some(d) => (d, 1000.0),
            None => (cell, 1.0),
        };
        digits.parse::<f64>().map_or(-1.0, |v| v * scale)
    };
    let screen = top.wait_for("rates of the busy connection", |s| {
        row_of(s, "org.example.Busy").is_some_and(|r| (4..8).all(|c| rate(r, c) > 0.0))
    });
    assert!(
        screen.contains("TX/s") && screen.contains("RXB/s"),
        "{screen}"
    );
    let idle = row_of(&screen, "org.example.Idle").unwrap();
    assert_eq!(rate(idle, 4), 0.0, "{screen}");
    top.keys(&["m"]);
    top.wait_for("the busy connection first", |s| {
        rows(s)
            .first()
            .is_some_and(|r| r.contains("org.example.Busy"))
    });
    calls.abort();
}

/// A monitor is listed, with its process, though no name designates it.
#[test]
fn monitors_are_listed() {
    let bus = Busd::start();
    let _monitor = Monitor::start(&bus);
    let top = start_top("monitors", &bus);
    top.wait_for("the monitor", |s| {
        rows(s)
            .iter()
            .any(|r| r.contains("dbus-monitor") && r.ends_with("(monitor)"))
            && s.contains("monitors: 1")
    });
}

/// busd-top reaches a bus on an abstract socket.
#[test]
fn abstract_addresses_work() {
    let name = format!("busd-top-test-{}", std::process::id());
    let bus = Busd::start_at(&format!("unix:abstract={name}"));
    assert!(bus.address.starts_with("unix:abstract="), "{}", bus.address);
    let (ok, out, err) = run(Command::new(busd_program("busd-top"))
        .arg(format!("--address={}", bus.address))
        .arg("--once"));
    assert!(ok, "{err}");
    assert!(out.starts_with("connections: 1 active"), "{out}");
    assert!(out.contains("busd-top"), "{out}");
}

/// What a person gets wrong (the address, the arguments) or what refuses them (no bus
/// there, the bus's authentication) is one line on stderr and a failure status; no
/// backtrace, no Rust debug form, even with RUST_BACKTRACE set.
#[test]
fn a_user_error_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let anonymous_only = busd_tests::write_config(
        dir.path(),
        "anonymous.conf",
        &busd_tests::session_config("", "<auth>ANONYMOUS</auth><allow_anonymous/>"),
    );
    let refusing = Busd::start_with(&[&format!("--config-file={}", anonymous_only.display())]);
    let missing = format!("unix:path={}", dir.path().join("none").display());
    let cases: [(&[&str], &str); 5] = [
        (&["--address=nonsense"], "invalid address \"nonsense\""),
        (&[&format!("--address={missing}")], "cannot connect to"),
        (
            &["--address=unix:abstract=busd-top-nobody"],
            "cannot connect to",
        ),
        (
            &[&format!("--address={}", refusing.address)],
            "the bus refused authentication",
        ),
        (&["--bogus"], "unknown argument \"--bogus\""),
    ];
    for (args, says) in cases {
        let (ok, out, err) = run(Command::new(busd_program("busd-top"))
            .args(args)
            .arg("--once")
            .env("RUST_BACKTRACE", "1"));
        assert!(!ok, "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("busd-top: ") && err.contains(says),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains(" { ") && !err.contains("Os {"),
            "{args:?}: {err}"
        );
    }
}

/// Against dbus-daemon, which counts no traffic, busd-top still lists connections with
/// their names and processes, and shows `-` for what it cannot know.
#[test]
fn against_dbus_daemon_what_it_cannot_know_shows_a_dash() {
    let daemon = busd_tests::dbus_daemon();
    let bus = Busd::start_program(&daemon, &["--session"]);
    let _sink = busd_tests::Sink::start(&bus.address, "org.example.Top");
    let (ok, out, err) = run(Command::new(busd_program("busd-top"))
        .arg(format!("--address={}", bus.address))
        .arg("--once"));
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.ends_with("org.example.Top"))
        .unwrap_or_else(|| panic!("{out}"));
    // NAME PID UID COMMAND PATH RULES TX RX TX/s RX/s TXB/s RXB/s NAMES
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[3], "python3", "{out}");
    assert!(cells[6..12].iter().all(|c| *c == "-"), "{out}");
    assert!(
        !out.contains("monitors:"),
        "dbus-daemon does not say: {out}"
    );
}

/// Fast-path members get a section of their own under the table, with their shim's
/// figures; the screen keeps its shape.
#[tokio::test(flavor = "multi_thread")]
async fn fast_path_members_have_a_section_of_their_own() {
    let bus = Busd::start();
    let member = busd_shim::builder(&format!("{},fastpath=1", bus.address))
        .await
        .unwrap()
        .name("org.example.Fast")
        .unwrap()
        .build()
        .await
        .unwrap();
    let unique = member.unique_name().unwrap().to_string();
    let top = start_top("fast", &bus);
    let screen = top.wait_for("the fast-path section", |s| {
        s.contains("fast path (as each member's shim counts)")
    });
    let lines: Vec<&str> = screen.lines().collect();
    assert_eq!(lines.len(), 24, "{screen}");
    let title = lines
        .iter()
        .position(|l| l.starts_with("fast path"))
        .unwrap();
    assert!(lines[title + 1].starts_with("NAME "), "{screen}");
    assert!(
        lines[title + 2].starts_with(&format!("{unique} ")),
        "{screen}"
    );
    assert!(
        row_of(&screen, "org.example.Fast").is_some_and(|r| r.starts_with(&unique)),
        "{screen}"
    );
    assert!(lines[23].starts_with("unix:path="), "{screen}");
}
