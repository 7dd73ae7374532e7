//! Debug.Stats figures compared with dbus-daemon's for the same situation.

use std::time::{Duration, Instant};

use busd_tests::{dbus_daemon, dbus_send, require, Busd, Monitor};

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

/// MatchRules and PeakMatchRules once `monitors` dbus-monitor processes watch the bus.
fn rules_with_monitors(bus: &Busd, monitors: usize) -> (u32, u32) {
    let _running: Vec<Monitor> = (0..monitors).map(|_| Monitor::start(bus)).collect();
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

type Figures = std::collections::HashMap<String, zbus::zvariant::OwnedValue>;

async fn stats_call(
    c: &zbus::Connection,
    method: &str,
    arg: Option<&str>,
) -> zbus::Result<Figures> {
    const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
    let path = "/org/freedesktop/DBus";
    let reply = match arg {
        Some(a) => {
            c.call_method(
                Some("org.freedesktop.DBus"),
                path,
                Some(STATS),
                method,
                &(a,),
            )
            .await?
        }
        None => {
            c.call_method(Some("org.freedesktop.DBus"), path, Some(STATS), method, &())
                .await?
        }
    };
    reply.body().deserialize()
}

fn figure(f: &Figures, key: &str) -> u64 {
    let v = f.get(key).unwrap_or_else(|| panic!("no {key} in {f:?}"));
    u64::try_from(v)
        .or_else(|_| u32::try_from(v).map(u64::from))
        .unwrap_or_else(|_| panic!("{key} is not a number: {v:?}"))
}

/// busd's own GetConnectionStats keys count what a connection sent and what it was sent,
/// since it connected (dbus-daemon's Incoming/Outgoing keys count only what is queued).
#[tokio::test]
async fn connection_stats_count_what_a_connection_sent_and_received() {
    let bus = Busd::start();
    let talker = busd_tests::zbus_connect(&bus).await;
    let asker = busd_tests::zbus_connect(&bus).await;
    let name = talker.unique_name().unwrap().to_string();
    let before = stats_call(&asker, "GetConnectionStats", Some(&name))
        .await
        .unwrap();
    for _ in 0..10 {
        busd_tests::get_id(&talker).await.unwrap();
    }
    let after = stats_call(&asker, "GetConnectionStats", Some(&name))
        .await
        .unwrap();
    let grew = |key: &str| figure(&after, key) - figure(&before, key);
    assert!(grew("busd.SentMessages") >= 10, "{after:?}");
    assert!(
        grew("busd.ReceivedMessages") >= 10,
        "the replies: {after:?}"
    );
    // A call is at least its header; a reply carries a 32-digit id.
    assert!(grew("busd.SentBytes") >= 10 * 64, "{after:?}");
    assert!(grew("busd.ReceivedBytes") >= 10 * (64 + 32), "{after:?}");
    assert_eq!(figure(&after, "busd.Monitor"), 0);
    assert_eq!(
        figure(&after, "busd.ProcessID"),
        u64::from(std::process::id())
    );
}

/// A monitor's name designates nobody (as with dbus-daemon), so GetStats lists monitors by
/// the names they had and GetConnectionStats answers for them, with their process.
#[tokio::test]
async fn get_stats_lists_monitors_and_connection_stats_answer_for_them() {
    let bus = Busd::start();
    let asker = busd_tests::zbus_connect(&bus).await;
    let monitor = Monitor::start(&bus);
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let stats = stats_call(&asker, "GetStats", None).await.unwrap();
        let names: Vec<String> = stats["busd.Monitors"]
            .try_clone()
            .unwrap()
            .try_into()
            .unwrap();
        if !names.is_empty() {
            break names;
        }
        assert!(Instant::now() < deadline, "no monitor listed: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names.len(), 1);
    let of_monitor = stats_call(&asker, "GetConnectionStats", Some(&names[0]))
        .await
        .unwrap();
    assert_eq!(figure(&of_monitor, "busd.Monitor"), 1);
    assert_eq!(
        figure(&of_monitor, "busd.ProcessID"),
        u64::from(monitor.pid())
    );
    let creds = asker
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetConnectionCredentials",
            &(names[0].as_str(),),
        )
        .await;
    assert!(
        matches!(&creds, Err(zbus::Error::MethodError(n, _, _)) if n.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner"),
        "{creds:?}"
    );
}
