//! Security policy through real clients: the same configuration is given to busd and to
//! dbus-daemon, and the clients must see the same outcomes (AccessDenied exactly where
//! dbus-daemon gives it, with the same text).

use std::path::Path;
use std::process::Command;

use busd_tests::{
    both, busd_binary, dbus_send, require, require_root, run, session_config, write_config, Busd,
    Sink,
};

/// A session-like bus with a few denials.
const RESTRICTED: &str = r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <deny own="org.example.Forbidden"/>
    <deny send_interface="org.example.Secret"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="ListActivatableNames"/>
    <deny receive_interface="org.example.Hidden"/>
  </policy>
</busconfig>"#;

fn gdbus_call(bus: &Busd, method: &str, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("gdbus")
        .args(["call", "--address", &bus.address])
        .args(["--dest", "org.freedesktop.DBus"])
        .args(["--object-path", "/org/freedesktop/DBus"])
        .args(["--method", method])
        .args(args));
    (ok, format!("{out}{err}").trim().to_string())
}

#[test]
fn denials_match_dbus_daemon_for_dbus_send_and_gdbus() {
    require("dbus-send");
    require("gdbus");
    require("dbus-daemon");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "restricted.conf", RESTRICTED);
    let outcomes = both(&config, |bus| {
        vec![
            dbus_send(
                bus,
                &[
                    "--dest=org.freedesktop.DBus",
                    "/",
                    "org.example.Secret.Poke",
                ],
            ),
            dbus_send(
                bus,
                &[
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.ListActivatableNames",
                ],
            ),
            dbus_send(
                bus,
                &[
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.GetNameOwner",
                    "string:org.freedesktop.DBus",
                ],
            ),
            gdbus_call(
                bus,
                "org.freedesktop.DBus.RequestName",
                &["org.example.Forbidden", "0"],
            ),
            gdbus_call(
                bus,
                "org.freedesktop.DBus.RequestName",
                &["org.example.Allowed", "0"],
            ),
        ]
    });
    let (ok, text) = &outcomes[0];
    assert!(!ok);
    assert!(
        text.starts_with(
            "Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message, 2 matched rules; type=\"method_call\""
        ),
        "{text}"
    );
    assert!(
        text.ends_with("interface=\"org.example.Secret\" member=\"Poke\" error name=\"(unset)\" requested_reply=\"0\" destination=\"org.freedesktop.DBus\" (bus)"),
        "{text}"
    );
    assert!(
        !outcomes[1].0
            && outcomes[1]
                .1
                .contains("AccessDenied: Rejected send message, 2 matched rules"),
        "{:?}",
        outcomes[1]
    );
    assert!(
        outcomes[2].0 && outcomes[2].1.contains("org.freedesktop.DBus"),
        "{:?}",
        outcomes[2]
    );
    assert!(!outcomes[3].0, "{:?}", outcomes[3]);
    assert!(
        outcomes[3].1.contains("GDBus.Error:org.freedesktop.DBus.Error.AccessDenied: Connection \":1.")
            && outcomes[3].1.contains("is not allowed to own the service \"org.example.Forbidden\" due to security policies in the configuration file"),
        "{:?}",
        outcomes[3]
    );
    assert_eq!(outcomes[4], (true, "(uint32 1,)".to_string()));
}

#[test]
fn receive_rules_refuse_delivery_and_tell_the_sender() {
    require("dbus-send");
    require("python3-dbus");
    require("dbus-daemon");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "restricted.conf", RESTRICTED);
    let outcomes = both(&config, |bus| {
        let _sink = Sink::start(&bus.address, "org.example.Sink");
        vec![
            dbus_send(
                bus,
                &["--dest=org.example.Sink", "/", "org.example.Hidden.Ping"],
            ),
            // Delivered, never answered: the client gives up on its own.
            dbus_send(
                bus,
                &[
                    "--reply-timeout=200",
                    "--dest=org.example.Sink",
                    "/",
                    "org.example.Open.Ping",
                ],
            ),
        ]
    });
    assert!(
        outcomes[0]
            .1
            .starts_with("Error org.freedesktop.DBus.Error.AccessDenied: Rejected receive message, 2 matched rules;"),
        "{:?}",
        outcomes[0]
    );
    assert!(outcomes[1].1.contains("NoReply"), "{:?}", outcomes[1]);
}

#[test]
fn users_the_policy_refuses_cannot_connect() {
    require("dbus-send");
    require("dbus-daemon");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "nobody.conf",
        &session_config(r#"<deny user="*"/>"#, ""),
    );
    let outcomes = both(&config, |bus| {
        vec![dbus_send(
            bus,
            &[
                "--dest=org.freedesktop.DBus",
                "/",
                "org.freedesktop.DBus.GetId",
            ],
        )]
    });
    assert!(!outcomes[0].0, "{:?}", outcomes[0]);
    // The SASL exchange completes, then the bus hangs up: the client's Hello goes
    // unanswered.
    assert!(
        outcomes[0]
            .1
            .starts_with("Failed to register on connection"),
        "{:?}",
        outcomes[0]
    );
}

#[test]
fn reload_keeps_the_old_configuration_when_the_new_one_is_broken() {
    require("dbus-send");
    let dir = tempfile::tempdir().unwrap();
    let allow_all = session_config("", "");
    let config = write_config(dir.path(), "bus.conf", &allow_all);
    let arg = format!("--config-file={}", config.display());
    let mut bus = Busd::start_with(&[&arg]);
    let reload = |bus: &Busd| {
        dbus_send(
            bus,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ReloadConfig",
            ],
        )
    };
    // Each dbus-send is a new connection: the name is released when it leaves.
    let own = |bus: &Busd, name: &str| {
        dbus_send(
            bus,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.RequestName",
                &format!("string:{name}"),
                "uint32:0",
            ],
        )
    };
    std::fs::write(
        &config,
        "<busconfig>\n<policy context=\"default\">\n<allow send_member=\"X\"/>\n</policy></busconfig>",
    )
    .unwrap();
    let (ok, text) = reload(&bus);
    assert!(!ok);
    assert!(
        text.contains("org.freedesktop.DBus.Error.Failed")
            && text.contains(&format!("{}:3:", config.display()))
            && text.contains("if you specify a member"),
        "{text}"
    );
    assert!(
        own(&bus, "org.example.Late").0,
        "the old policy still applies"
    );

    let denying = session_config(r#"<deny own="org.example.Later"/>"#, "");
    write_config(dir.path(), "bus.conf", &denying);
    assert!(reload(&bus).0);
    let (ok, text) = own(&bus, "org.example.Later");
    assert!(!ok && text.contains("AccessDenied"), "{text}");

    // SIGHUP reloads too, as with dbus-daemon.
    write_config(dir.path(), "bus.conf", &allow_all);
    let pid = nix::unistd::Pid::from_raw(bus.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !own(&bus, "org.example.Later").0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // SIGTERM ends the bus cleanly and removes its socket.
    let socket = bus.dir.path().join("bus");
    assert!(socket.exists());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = bus.wait_exit().expect("busd exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
}

#[test]
fn the_stock_system_configuration_loads_and_is_enforced() {
    require("/usr/share/dbus-1/system.conf");
    require("dbus-send");
    require("dbus-daemon");
    let system_conf = Path::new("/usr/share/dbus-1/system.conf");
    // busd --check-config needs no privileges.
    let (ok, out, err) = run(Command::new(busd_binary()).args(["--system", "--check-config"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("bus type: system") && out.contains("default: "),
        "{out}"
    );
    require_root("to run the system bus, which switches to its <user>");
    let outcomes = both(system_conf, |bus| {
        vec![
            dbus_send(
                bus,
                &[
                    "--dest=org.freedesktop.DBus",
                    "/",
                    "org.freedesktop.DBus.GetId",
                ],
            ),
            dbus_send(
                bus,
                &[
                    "--dest=org.freedesktop.DBus",
                    "/",
                    "org.freedesktop.DBus.UpdateActivationEnvironment",
                    "dict:string:string:A,B",
                ],
            ),
        ]
    });
    assert!(outcomes[0].0, "{:?}", outcomes[0]);
    assert!(
        outcomes[1]
            .1
            .starts_with("Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message, 3 matched rules;"),
        "{:?}",
        outcomes[1]
    );
}
