//! Security policy through real clients: the same configuration is given to busd and, when
//! it is installed, to dbus-daemon, and the clients must see the same outcomes (AccessDenied
//! exactly where dbus-daemon gives it, with the same text).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use busd_tests::{busd_binary, have, run, Busd};

const HEADER: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">"#;

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

fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{HEADER}\n{body}\n")).unwrap();
    p
}

fn dbus_daemon() -> Option<PathBuf> {
    have("dbus-daemon").then(|| PathBuf::from("dbus-daemon"))
}

/// The bus address without the guid, for clients that want only the path.
fn bus_arg(bus: &Busd) -> String {
    format!("--bus={}", bus.address)
}

/// Makes two daemons' answers comparable: connection names, pids and command lines differ.
fn normalize(text: &str) -> String {
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
fn both<F>(config: &Path, scenario: F) -> Vec<(bool, String)>
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
    let ours = run_on(Busd::start_with(&args));
    match dbus_daemon() {
        Some(reference) => {
            let theirs = run_on(Busd::start_program(&reference, &args));
            // Errors must read the same; successful replies carry serials, times and ids
            // that differ between any two buses.
            let n = |v: &[(bool, String)]| -> Vec<(bool, String)> {
                v.iter()
                    .map(|(ok, t)| (*ok, if *ok { String::new() } else { normalize(t) }))
                    .collect()
            };
            assert_eq!(n(&ours), n(&theirs), "busd and dbus-daemon disagree");
        }
        None => eprintln!("dbus-daemon not installed: checked busd alone"),
    }
    ours
}

fn dbus_send(bus: &Busd, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("dbus-send")
        .arg(bus_arg(bus))
        .arg("--print-reply")
        .args(args));
    (ok, format!("{out}{err}").trim().to_string())
}

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
    if !(have("dbus-send") && have("gdbus")) {
        return;
    }
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

/// A python-dbus connection that owns `name` and never answers.
struct Sink(std::process::Child);

impl Sink {
    fn start(address: &str, name: &str) -> Sink {
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

#[test]
fn receive_rules_refuse_delivery_and_tell_the_sender() {
    if !(have("dbus-send") && Path::new("/usr/bin/python3").exists()) {
        return;
    }
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
    if !have("dbus-send") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "nobody.conf",
        r#"<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
    <deny user="*"/>
  </policy></busconfig>"#,
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
    if !have("dbus-send") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let allow_all = r#"<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
  </policy></busconfig>"#;
    let config = write_config(dir.path(), "bus.conf", allow_all);
    let arg = format!("--config-file={}", config.display());
    let bus = Busd::start_with(&[&arg]);
    let reload = || {
        dbus_send(
            &bus,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ReloadConfig",
            ],
        )
    };
    let own = || {
        dbus_send(
            &bus,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.RequestName",
                "string:org.example.Late",
                "uint32:0",
            ],
        )
    };
    std::fs::write(&config, "<busconfig>\n<policy context=\"default\">\n<allow send_member=\"X\"/>\n</policy></busconfig>").unwrap();
    let (ok, text) = reload();
    assert!(!ok);
    assert!(
        text.contains("org.freedesktop.DBus.Error.Failed")
            && text.contains(&format!("{}:3:", config.display()))
            && text.contains("if you specify a member"),
        "{text}"
    );
    assert!(own().0, "the old policy still applies");
    std::fs::write(
        &config,
        format!(
            "{HEADER}\n{}",
            allow_all.replace(
                "<allow own=\"*\"/>",
                "<allow own=\"*\"/><deny own=\"org.example.Later\"/>"
            )
        ),
    )
    .unwrap();
    assert!(reload().0);
    let (ok, text) = dbus_send(
        &bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            "string:org.example.Later",
            "uint32:0",
        ],
    );
    assert!(!ok && text.contains("AccessDenied"), "{text}");
}

#[test]
fn the_stock_system_configuration_loads_and_is_enforced() {
    let system_conf = Path::new("/usr/share/dbus-1/system.conf");
    if !(system_conf.exists() && have("dbus-send")) {
        eprintln!("SKIPPED: no system.conf");
        return;
    }
    // busd --check-config needs no privileges.
    let (ok, out, err) = run(Command::new(busd_binary()).args(["--system", "--check-config"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("bus type: system") && out.contains("default: "),
        "{out}"
    );
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: running the system bus needs root (it switches to <user>)");
        return;
    }
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
