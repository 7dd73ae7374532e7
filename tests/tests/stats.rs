//! Debug.Stats figures compared with dbus-daemon's for the same situation.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use busd_tests::{dbus_daemon, dbus_send, require, Busd};

/// The uint32 that `dbus-send --print-reply` shows for `key` in a GetStats reply.
fn stat(reply: &str, key: &str) -> Option<u32> {
    let mut lines = reply.lines();
    lines.find(|l| l.trim() == format!("string \"{key}\""))?;
    lines.next()?.split_whitespace().last()?.parse().ok()
}

fn get_stats(bus: &Busd) -> String {
    let (ok, out) = dbus_send(
        bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.Debug.Stats.GetStats",
        ],
    );
    assert!(ok, "{out}");
    out
}

struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// MatchRules and PeakMatchRules once `monitors` dbus-monitor processes watch the bus.
fn rules_with_monitors(bus: &Busd, monitors: usize) -> (u32, u32) {
    let _running: Vec<Monitor> = (0..monitors)
        .map(|_| {
            Monitor(
                Command::new("dbus-monitor")
                    .args(["--address", &bus.address])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("dbus-monitor"),
            )
        })
        .collect();
    // Until both have become monitors (each asks with no rule: one rule for everything),
    // or long enough that a bus that does not count them has shown it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get_stats(bus);
        let rules = stat(&reply, "MatchRules").expect("MatchRules");
        if rules as usize >= monitors || Instant::now() > deadline {
            return (
                rules,
                stat(&reply, "PeakMatchRules").expect("PeakMatchRules"),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn monitors_rules_count_in_get_stats_as_with_dbus_daemon() {
    require("dbus-monitor");
    require("dbus-send");
    let ours = rules_with_monitors(&Busd::start(), 2);
    let theirs = rules_with_monitors(&Busd::start_program(&dbus_daemon(), &["--session"]), 2);
    assert_eq!(
        ours, theirs,
        "(MatchRules, PeakMatchRules): busd, dbus-daemon"
    );
    assert_eq!(ours, (2, 2));
}
