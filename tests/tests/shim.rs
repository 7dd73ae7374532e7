//! zbus applications on the fast path through busd-shim, on one bus with plain zbus,
//! dbus-send and dbus-monitor: every message arrives as it would on the standard path
//! (body, SENDER, destination, fds, per-sender order), and the shim's figures show which
//! path it took.

use std::sync::atomic::Ordering;
use std::time::Duration;

use busd_tests::{dbus_daemon, require, zbus_connect, Busd, Echo};
use futures_util::StreamExt;
use zbus::{fdo, object_server::SignalEmitter, Connection, MatchRule, MessageStream};

fn fast_address(bus: &Busd) -> String {
    format!("{},fastpath=1", bus.address)
}

async fn shim(bus: &Busd) -> Connection {
    busd_shim::builder(&fast_address(bus))
        .await
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn shim_service(bus: &Busd, name: &str) -> Connection {
    busd_shim::builder(&fast_address(bus))
        .await
        .unwrap()
        .name(name)
        .unwrap()
        .serve_at("/echo", Echo)
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn echo(client: &Connection, dest: &str, text: &str) -> zbus::Result<String> {
    client
        .call_method(
            Some(dest),
            "/echo",
            Some("org.example.Echo"),
            "Echo",
            &(text,),
        )
        .await?
        .body()
        .deserialize()
}

async fn add_match(conn: &Connection, rule: &str) {
    fdo::DBusProxy::new(conn)
        .await
        .unwrap()
        .add_match_rule(MatchRule::try_from(rule).unwrap())
        .await
        .unwrap();
}

fn timeout<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(20), f)
}

/// The next signal called `member` on a stream.
async fn next_signal(s: &mut MessageStream, member: &str) -> zbus::Message {
    loop {
        let m = s.next().await.unwrap().unwrap();
        if m.header().member().is_some_and(|m| m == member) {
            return m;
        }
    }
}

fn direct(conn: &Connection) -> u64 {
    busd_shim::stats(conn)
        .expect("on the fast path")
        .direct
        .load(Ordering::Relaxed)
}

#[tokio::test]
async fn calls_replies_errors_and_fds_go_direct_between_members_and_work_with_everyone() {
    let bus = Busd::start();
    let service = shim_service(&bus, "org.example.Fast").await;
    let member = shim(&bus).await;
    let plain = zbus_connect(&bus).await;

    let before = direct(&member);
    assert_eq!(
        timeout(echo(&member, "org.example.Fast", "hi"))
            .await
            .unwrap()
            .unwrap(),
        "echo: hi"
    );
    assert!(
        direct(&member) > before,
        "the call went straight to the service"
    );
    assert!(direct(&service) > 0, "and so did the reply");
    assert_eq!(
        timeout(echo(&plain, "org.example.Fast", "hello"))
            .await
            .unwrap()
            .unwrap(),
        "echo: hello"
    );
    // By unique name too.
    let unique = service.unique_name().unwrap().to_string();
    assert_eq!(echo(&member, &unique, "u").await.unwrap(), "echo: u");

    let err = member
        .call_method(
            Some("org.example.Fast"),
            "/echo",
            Some("org.example.Echo"),
            "Fail",
            &(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, zbus::Error::MethodError(n, Some(t), _)
            if n.as_str() == "org.freedesktop.DBus.Error.Failed" && t == "it failed"),
        "{err:?}"
    );

    busd_tests::assert_fd_passing(&member, "org.example.Fast").await;

    // The bus itself and names nobody owns answer as usual.
    let dbus = fdo::DBusProxy::new(&member).await.unwrap();
    assert!(dbus
        .name_has_owner("org.example.Fast".try_into().unwrap())
        .await
        .unwrap());
    let err = echo(&member, "org.example.Nobody", "x").await.unwrap_err();
    assert!(
        matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown"),
        "{err:?}"
    );
}

#[tokio::test]
async fn broadcasts_reach_members_plain_clients_and_monitors_in_order() {
    require("dbus-monitor");
    let bus = Busd::start();
    let emitter = shim_service(&bus, "org.example.Ticker").await;
    let member = shim(&bus).await;
    let plain = zbus_connect(&bus).await;
    let rule = "type='signal',interface='org.example.Echo',member='Tick'";
    add_match(&member, rule).await;
    add_match(&plain, rule).await;
    let mut at_member = MessageStream::from(&member);
    let mut at_plain = MessageStream::from(&plain);
    let mut monitor = std::process::Command::new("dbus-monitor")
        .args(["--address", &bus.address, "type='signal',member='Tick'"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the monitor register before the signals go out.
    tokio::time::sleep(Duration::from_millis(300)).await;

    const N: u32 = 200;
    let emitter_name = emitter.unique_name().unwrap().to_string();
    // Emitted while the receivers read: a member that does not read holds its senders
    // back (its socket queue is full) instead of losing messages.
    let sender = emitter.clone();
    let emitting = tokio::spawn(async move {
        let e = SignalEmitter::new(&sender, "/echo").unwrap();
        for n in 0..N {
            Echo::tick(&e, n).await.unwrap();
        }
    });
    for (who, stream) in [("member", &mut at_member), ("plain", &mut at_plain)] {
        let mut next = 0;
        timeout(async {
            while next < N {
                let m = stream.next().await.unwrap().unwrap();
                if m.header().member().is_some_and(|m| m == "Tick") {
                    assert_eq!(m.header().sender().unwrap().as_str(), emitter_name);
                    assert!(m.header().destination().is_none());
                    assert_eq!(m.body().deserialize::<u32>().unwrap(), next, "{who}: order");
                    next += 1;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{who} got {next} of {N}"));
    }
    timeout(emitting).await.unwrap().unwrap();
    assert!(
        direct(&emitter) >= u64::from(N),
        "the member had them directly"
    );
    let stdout = monitor.stdout.take().unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("member=Tick"))
            .take(N as usize)
            .count()
    });
    let seen = timeout(seen).await.unwrap().unwrap();
    monitor.kill().unwrap();
    let _ = monitor.wait();
    assert_eq!(seen, N as usize, "dbus-monitor saw every signal");
}

#[tokio::test]
async fn a_signal_with_a_destination_reaches_only_its_destination() {
    let bus = Busd::start();
    let emitter = shim(&bus).await;
    let target = shim(&bus).await;
    let bystander = shim(&bus).await;
    let rule = "type='signal',member='Poke'";
    add_match(&target, rule).await;
    add_match(&bystander, rule).await;
    let mut at_target = MessageStream::from(&target);
    let mut at_bystander = MessageStream::from(&bystander);
    let target_name = target.unique_name().unwrap().to_string();
    emitter
        .emit_signal(
            Some(target_name.as_str()),
            "/p",
            "org.example.P",
            "Poke",
            &(1u32,),
        )
        .await
        .unwrap();
    // Then one for everybody, so that the bystander's stream has something to show.
    emitter
        .emit_signal(None::<&str>, "/p", "org.example.P", "Poke", &(2u32,))
        .await
        .unwrap();
    let body = |m: &zbus::Message| m.body().deserialize::<u32>().unwrap();
    let first = timeout(next_signal(&mut at_target, "Poke")).await.unwrap();
    assert_eq!(body(&first), 1);
    assert_eq!(
        first.header().destination().unwrap().as_str(),
        target_name.as_str()
    );
    assert_eq!(
        body(&timeout(next_signal(&mut at_target, "Poke")).await.unwrap()),
        2
    );
    assert_eq!(
        body(
            &timeout(next_signal(&mut at_bystander, "Poke"))
                .await
                .unwrap()
        ),
        2,
        "the bystander never saw the addressed signal"
    );
}

#[tokio::test]
async fn a_name_that_moves_between_members_is_followed() {
    let bus = Busd::start();
    let first = shim_service(&bus, "org.example.Moving").await;
    let caller = shim(&bus).await;
    let _ = echo(&caller, "org.example.Moving", "1").await.unwrap();
    let dbus = fdo::DBusProxy::new(&caller).await.unwrap();
    let mut changes = dbus
        .receive_name_owner_changed_with_args(&[(0, "org.example.Moving")])
        .await
        .unwrap();
    drop(first);
    let second = shim_service(&bus, "org.example.Moving").await;
    let second_name = second.unique_name().unwrap().to_string();
    timeout(async {
        loop {
            let c = changes.next().await.unwrap();
            let a = c.args().unwrap();
            if a.new_owner()
                .as_ref()
                .is_some_and(|n| n.as_str() == second_name)
            {
                break;
            }
        }
    })
    .await
    .expect("NameOwnerChanged for the new owner");
    assert_eq!(
        echo(&caller, "org.example.Moving", "2").await.unwrap(),
        "echo: 2"
    );
}

#[tokio::test]
async fn dbus_send_reaches_a_member_and_the_flag_is_harmless_on_dbus_daemon() {
    require("dbus-send");
    require("gdbus");
    let daemon = dbus_daemon();
    let bus = Busd::start();
    let _service = shim_service(&bus, "org.example.Fast").await;
    let address = bus.address.clone();
    // In a thread of its own: the service answers on this runtime meanwhile.
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let (ok, out, err) = busd_tests::run(std::process::Command::new("dbus-send").args([
            &format!("--bus={address}"),
            "--print-reply",
            "--dest=org.example.Fast",
            "/echo",
            "org.example.Echo.Echo",
            "string:cli",
        ]));
        (ok, format!("{out}{err}"))
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("echo: cli"), "{out}");
    let address = bus.address.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let (ok, out, err) = busd_tests::run(std::process::Command::new("gdbus").args([
            "call",
            "--address",
            &address,
            "--dest",
            "org.example.Fast",
            "--object-path",
            "/echo",
            "--method",
            "org.example.Echo.Echo",
            "gdbus",
        ]));
        (ok, format!("{out}{err}"))
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("echo: gdbus"), "{out}");
    let reference = Busd::start_program(&daemon, &["--session"]);
    let service = shim_service(&reference, "org.example.Fast").await;
    let client = shim(&reference).await;
    assert_eq!(
        echo(&client, "org.example.Fast", "x").await.unwrap(),
        "echo: x"
    );
    assert!(busd_shim::stats(&service).is_none(), "not on the fast path");
}

/// Never answers, until its connection goes.
struct Silent;

#[zbus::interface(name = "org.example.Silent")]
impl Silent {
    async fn wait(&self) {
        std::future::pending::<()>().await
    }
}

#[tokio::test]
async fn a_direct_call_whose_callee_leaves_gets_no_reply_as_from_dbus_daemon() {
    let bus = Busd::start();
    let callee = busd_shim::builder(&fast_address(&bus))
        .await
        .unwrap()
        .name("org.example.Silent")
        .unwrap()
        .serve_at("/s", Silent)
        .unwrap()
        .build()
        .await
        .unwrap();
    let caller = shim(&bus).await;
    let call = caller.call_method(
        Some("org.example.Silent"),
        "/s",
        Some("org.example.Silent"),
        "Wait",
        &(),
    );
    let leave = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        callee.close().await.unwrap();
    };
    let (result, ()) = tokio::join!(timeout(call), leave);
    let err = result.expect("the call ended").unwrap_err();
    assert!(
        matches!(&err, zbus::Error::MethodError(n, Some(t), _)
            if n.as_str() == "org.freedesktop.DBus.Error.NoReply"
            && t == "Message recipient disconnected from message bus without replying"),
        "{err:?}"
    );
    assert!(direct(&caller) > 0, "the call went directly");
}

/// Sends and receives a configuration denies: members whose policy does not allow every
/// message go through the daemon, which applies it, so a fast-path client sees what a
/// client of dbus-daemon sees with the same configuration file.
#[tokio::test]
async fn members_under_a_restrictive_policy_get_dbus_daemons_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = busd_tests::write_config(
        dir.path(),
        "guarded.conf",
        &busd_tests::session_config(
            r#"<deny send_destination="org.example.Guarded" send_interface="org.example.Echo" send_member="Fail"/>
    <deny receive_interface="org.example.Noisy" receive_type="signal"/>"#,
            "",
        ),
    );
    let arg = format!("--config-file={}", config.display());
    let busd = Busd::start_with(&[&arg]);
    let ours = guarded_scenario(&busd).await;
    // Nothing went straight between members: the daemon saw (and checked) every message.
    assert_eq!(ours.1, 0, "messages went direct under a restrictive policy");
    assert_eq!(
        ours.0,
        [
            "echo: x",
            "org.freedesktop.DBus.Error.AccessDenied",
            "Quiet",
        ]
    );
    let reference = Busd::start_program(&dbus_daemon(), &[&arg]);
    assert_eq!(guarded_scenario(&reference).await.0, ours.0);
}

/// What a client sees: a permitted call, a denied one, and which of two signals (the first
/// denied to the receiver) arrive. Also how many frames went direct.
async fn guarded_scenario(bus: &Busd) -> (Vec<String>, u64) {
    let _service = shim_service(bus, "org.example.Guarded").await;
    let client = shim(bus).await;
    let listener = shim(bus).await;
    add_match(&listener, "type='signal',member='Ping'").await;
    let mut signals = MessageStream::from(&listener);
    let mut seen = vec![timeout(echo(&client, "org.example.Guarded", "x"))
        .await
        .unwrap()
        .unwrap()];
    let denied = client
        .call_method(
            Some("org.example.Guarded"),
            "/echo",
            Some("org.example.Echo"),
            "Fail",
            &(),
        )
        .await;
    seen.push(match denied {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => format!("{other:?}"),
    });
    for iface in ["org.example.Noisy", "org.example.Quiet"] {
        client
            .emit_signal(None::<&str>, "/echo", iface, "Ping", &())
            .await
            .unwrap();
    }
    // The sender's order is kept: when Quiet arrives, Noisy would have come first.
    let m = timeout(next_signal(&mut signals, "Ping")).await.unwrap();
    let iface = m
        .header()
        .interface()
        .map(|i| i.to_string())
        .unwrap_or_default();
    seen.push(iface.trim_start_matches("org.example.").to_string());
    let direct = busd_shim::stats(&client).map_or(0, |c| c.direct.load(Ordering::Relaxed));
    (seen, direct)
}

/// A member killed in the middle of a fan-out: the sender goes on without waiting for it,
/// and the other receivers get every signal, in order.
#[tokio::test]
async fn a_member_killed_during_a_fan_out_holds_nobody_back() {
    use std::io::BufRead;
    const SIGNALS: u32 = 5000;
    let bus = Busd::start();
    let emitter = shim(&bus).await;
    let receiver = shim(&bus).await;
    add_match(&receiver, "type='signal',member='Tick'").await;
    let mut ticks = MessageStream::from(&receiver);
    let mut victim = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_busd-shim-member"))
            .arg(&bus.address)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufReader::new(victim.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with(":1."), "{ready}");
    let count = tokio::spawn(async move {
        let mut next = 0u32;
        while next < SIGNALS {
            let m = ticks.next().await.unwrap().unwrap();
            if m.header().member().is_some_and(|m| m == "Tick") {
                let n: u32 = m.body().deserialize().unwrap();
                assert_eq!(n, next, "out of order or lost");
                next += 1;
            }
        }
    });
    let emitting = async {
        for n in 0..SIGNALS {
            if n == SIGNALS / 4 {
                victim.0.kill().unwrap();
                victim.0.wait().unwrap();
            }
            emitter
                .emit_signal(None::<&str>, "/echo", "org.example.Echo", "Tick", &n)
                .await
                .unwrap();
        }
    };
    timeout(emitting).await.expect("the emitter was held back");
    timeout(count).await.expect("signals missing").unwrap();
}

/// A child process killed and reaped when dropped, whatever the test's outcome.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The daemon dies (killed) while members talk directly: their calls end with an error,
/// none waits forever; on a daemon started again, everything works as before.
#[tokio::test]
async fn when_the_daemon_dies_no_member_waits_forever() {
    let bus = Busd::start();
    let service = shim_service(&bus, "org.example.Fast").await;
    let client = shim(&bus).await;
    assert_eq!(
        echo(&client, "org.example.Fast", "a").await.unwrap(),
        "echo: a"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bus.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Calls may still reach the service directly for a moment; soon every call fails.
    let outcome = timeout(async {
        loop {
            if echo(&client, "org.example.Fast", "b").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "a member kept waiting after the daemon died"
    );
    drop(service);

    // A daemon started again (as a session's init system would) begins with a fresh
    // table: the applications connect again, take their names back, and go direct.
    let again = Busd::start();
    let service = shim_service(&again, "org.example.Fast").await;
    let client = shim(&again).await;
    assert_eq!(
        timeout(echo(&client, "org.example.Fast", "c"))
            .await
            .unwrap()
            .unwrap(),
        "echo: c"
    );
    // (Direct once the service said it is ready and the client read the table again.)
    let again_direct = timeout(async {
        while direct(&client) == 0 {
            echo(&client, "org.example.Fast", "d").await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(again_direct.is_ok(), "direct again");
    drop(service);
}

fn counter(
    conn: &Connection,
    pick: fn(&busd_shim::Counters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(&busd_shim::stats(conn).expect("on the fast path")).load(Ordering::Relaxed)
}

#[tokio::test]
async fn large_messages_go_direct_in_sealed_memfds_and_keep_their_place() {
    let bus = Busd::start();
    let service = shim_service(&bus, "org.example.Fast").await;
    let member = shim(&bus).await;
    let plain = zbus_connect(&bus).await;

    // Larger than any datagram on this machine (a send buffer is at most twice
    // net.core.wmem_max), and than dbus-daemon's default limit for one message in
    // flight on a system bus: only a memfd carries it.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let big = "x".repeat((2 * wmem_max + 1).max(24 << 20));
    let direct_before = direct(&member);
    let answer = timeout(echo(&member, "org.example.Fast", &big))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.len(), big.len() + "echo: ".len());
    assert!(answer.ends_with(&big[..1000]) && answer.starts_with("echo: x"));
    assert!(direct(&member) > direct_before, "the call went direct");
    assert!(counter(&member, |c| &c.large) >= 1, "in a memfd");
    assert!(counter(&service, |c| &c.large) >= 1, "and so did the reply");

    // Broadcasts: small and large ones, in one order at a member and at a plain client
    // (which gets them from the daemon, which read the same memfd).
    let rule = "type='signal',interface='org.example.Echo',member='Sized'";
    add_match(&member, rule).await;
    add_match(&plain, rule).await;
    let mut at_member = MessageStream::from(&member);
    let mut at_plain = MessageStream::from(&plain);
    let sizes = [10, 100_000, 20, 3 << 20, 30, 40_000, 50];
    for (n, &size) in sizes.iter().enumerate() {
        service
            .emit_signal(
                None::<()>,
                "/echo",
                "org.example.Echo",
                "Sized",
                &(n as u32, "y".repeat(size)),
            )
            .await
            .unwrap();
    }
    for (who, stream) in [("member", &mut at_member), ("plain", &mut at_plain)] {
        for (n, &size) in sizes.iter().enumerate() {
            let m = timeout(next_signal(stream, "Sized")).await.unwrap();
            let (got, text): (u32, String) = m.body().deserialize().unwrap();
            assert_eq!((got, text.len()), (n as u32, size), "{who}: order and size");
        }
    }
    assert!(counter(&service, |c| &c.large) >= 4);
    for conn in [&service, &member] {
        assert_eq!(
            counter(conn, |c| &c.via_stream),
            0,
            "nothing took the stream"
        );
        assert_eq!(counter(conn, |c| &c.malformed), 0);
    }
}

/// What a member's shim counts reaches the bus's Debug.Stats (as `busd.FastPath.*`) and
/// busd-top's fast-path table.
#[tokio::test]
async fn a_members_own_figures_reach_debug_stats_and_busd_top() {
    let bus = Busd::start();
    let _service = shim_service(&bus, "org.example.Fast").await;
    let member = shim(&bus).await;
    let plain = zbus_connect(&bus).await;
    for n in 0..5 {
        echo(&member, "org.example.Fast", &n.to_string())
            .await
            .unwrap();
    }
    let unique = member.unique_name().unwrap().to_string();
    let stats = || async {
        let reply = plain
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus.Debug.Stats"),
                "GetConnectionStats",
                &(unique.as_str(),),
            )
            .await
            .unwrap();
        let stats: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
            reply.body().deserialize().unwrap();
        stats
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u32::try_from(v).ok()?)))
            .collect::<std::collections::HashMap<String, u32>>()
    };
    // Published within a quarter of a second of the last change.
    let mut seen = stats().await;
    for _ in 0..100 {
        if seen.get("busd.FastPath.SentDirect").copied().unwrap_or(0) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = stats().await;
    }
    assert!(seen["busd.FastPath.SentDirect"] >= 5, "{seen:?}");
    assert!(seen["busd.FastPath.Received"] >= 5, "the replies: {seen:?}");
    // Each call carries at least its one-byte argument and its header.
    assert!(seen["busd.FastPath.SentDirectBytes"] >= 5 * 32, "{seen:?}");
    assert!(seen["busd.FastPath.ReceivedBytes"] >= 5 * 32, "{seen:?}");
    assert_eq!(seen["busd.FastPath.BacklogDepth"], 0);
    assert_eq!(seen["busd.FastPath.DroppedSpoofed"], 0);

    let top = busd_tests::busd_program("busd-top");
    let (ok, out, err) = busd_tests::run(
        std::process::Command::new(top)
            .arg(format!("--address={}", bus.address))
            .arg("--once"),
    );
    assert!(ok, "{err}");
    let (_, fast) = out
        .split_once("fast path (as each member's shim counts)")
        .unwrap_or_else(|| panic!("{out}"));
    let line = fast
        .lines()
        .find(|l| l.starts_with(&format!("{unique} ")))
        .unwrap_or_else(|| panic!("{out}"));
    let direct: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(direct >= 5, "{line}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{unique} ")) && l.contains(" fast ")),
        "{out}"
    );
}

struct Slow;

#[zbus::interface(name = "org.example.Slow")]
impl Slow {
    async fn wait(&self) -> u32 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        1
    }
}

/// A caller on the fast path, a callee that answers late, and a bus with reply_timeout:
/// the error the caller gets, how long it took, and what the caller sent directly.
async fn late_answer(bus: &Busd) -> (String, Duration, Option<u64>) {
    let _callee = busd_shim::builder(&fast_address(bus))
        .await
        .unwrap()
        .name("org.example.Slow")
        .unwrap()
        .serve_at("/slow", Slow)
        .unwrap()
        .build()
        .await
        .unwrap();
    let caller = shim(bus).await;
    let start = std::time::Instant::now();
    let r = caller
        .call_method(
            Some("org.example.Slow"),
            "/slow",
            Some("org.example.Slow"),
            "Wait",
            &(),
        )
        .await;
    let took = start.elapsed();
    let name = match r {
        Err(zbus::Error::MethodError(n, _, _)) => n.to_string(),
        other => format!("{other:?}"),
    };
    let direct = busd_shim::stats(&caller).map(|c| c.direct.load(Ordering::Relaxed));
    (name, took, direct)
}

/// `reply_timeout` holds for members too: their calls that expect a reply go through the
/// daemon, which ends one unanswered in time with dbus-daemon's NoReply.
#[tokio::test]
async fn reply_timeout_ends_calls_between_members_as_dbus_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    // The stock session bus (whose policy lets members go direct), with a reply timeout.
    let config = busd_tests::write_config(
        dir.path(),
        "timeout.conf",
        r#"<busconfig>
  <include>/usr/share/dbus-1/session.conf</include>
  <limit name="reply_timeout">300</limit>
</busconfig>"#,
    );
    let arg = format!("--config-file={}", config.display());
    let busd = Busd::start_with(&[&arg]);
    let (error, took, direct) = late_answer(&busd).await;
    assert_eq!(error, "org.freedesktop.DBus.Error.NoReply");
    assert_eq!(direct, Some(0), "the call went through the daemon");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let reference = Busd::start_program(&dbus_daemon(), &[&arg]);
    assert_eq!(late_answer(&reference).await.0, error);
}
