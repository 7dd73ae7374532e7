//! Activation with a real service binary (src/bin/busd-test-service.rs): started by a method
//! call, by StartServiceByName, and failing in each way dbus-daemon reports; compared with
//! dbus-daemon on the same configuration.

use std::path::Path;
use std::time::Duration;

use busd_tests::{both, dbus_send, require, session_config, write_config, Busd};
use futures_util::StreamExt;

const SERVICE: &str = env!("CARGO_BIN_EXE_busd-test-service");

/// A session-like configuration with one service directory and a short start timeout.
fn setup(dir: &Path) -> std::path::PathBuf {
    let services = dir.join("services");
    std::fs::create_dir_all(&services).unwrap();
    let file = |name: &str, exec: &str| {
        std::fs::write(
            services.join(format!("{name}.service")),
            format!("[D-BUS Service]\nName={name}\nExec={exec}\n"),
        )
        .unwrap();
    };
    file("org.example.Ok", &format!("{SERVICE} org.example.Ok"));
    file(
        "org.example.Started",
        &format!("{SERVICE} org.example.Started"),
    );
    file(
        "org.example.EnvCheck",
        &format!("{SERVICE} org.example.EnvCheck"),
    );
    file(
        "org.example.Exit",
        &format!("{SERVICE} org.example.Exit exit:3"),
    );
    file(
        "org.example.Signal",
        &format!("{SERVICE} org.example.Signal signal:9"),
    );
    file(
        "org.example.Hang",
        &format!("{SERVICE} org.example.Hang hang"),
    );
    file("org.example.Missing", "/nonexistent/busd-test-binary");
    file("org.example.Quotes", &format!("{SERVICE} 'unclosed"));
    config_with_services(dir, &services)
}

/// A session-like configuration in `dir` with the service directory `services` and a start
/// timeout of 1 s.
fn config_with_services(dir: &Path, services: &Path) -> std::path::PathBuf {
    write_config(
        dir,
        "activation.conf",
        &session_config(
            "",
            &format!(
                r#"<servicedir>{}</servicedir>
  <limit name="service_start_timeout">1000</limit>"#,
                services.display()
            ),
        ),
    )
}

fn call_at(bus: &Busd, dest: &str, path: &str, member: &str, args: &[&str]) -> (bool, String) {
    let dest = format!("--dest={dest}");
    let mut all = vec![dest.as_str(), path, member];
    all.extend_from_slice(args);
    dbus_send(bus, &all)
}

fn call(bus: &Busd, dest: &str, member: &str, args: &[&str]) -> (bool, String) {
    call_at(bus, dest, "/", member, args)
}

fn driver(bus: &Busd, member: &str, args: &[&str]) -> (bool, String) {
    let member = format!("org.freedesktop.DBus.{member}");
    call_at(
        bus,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        &member,
        args,
    )
}

#[test]
fn services_start_on_demand_and_failures_read_as_with_dbus_daemon() {
    require("dbus-send");
    require("dbus-daemon");
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let env = "org.example.TestService.Env";
    let outcomes = both(&config, |bus| {
        vec![
            call(
                bus,
                "org.example.Ok",
                env,
                &["string:DBUS_STARTER_BUS_TYPE"],
            ),
            driver(
                bus,
                "StartServiceByName",
                &["string:org.example.Started", "uint32:0"],
            ),
            driver(
                bus,
                "StartServiceByName",
                &["string:org.example.Started", "uint32:0"],
            ),
            driver(
                bus,
                "UpdateActivationEnvironment",
                &["dict:string:string:BUSD_TEST_VAR,hello"],
            ),
            call(bus, "org.example.EnvCheck", env, &["string:BUSD_TEST_VAR"]),
            call(bus, "org.example.Exit", env, &["string:X"]),
            call(bus, "org.example.Signal", env, &["string:X"]),
            call(bus, "org.example.Missing", env, &["string:X"]),
            call(bus, "org.example.Hang", env, &["string:X"]),
            call(bus, "org.example.Nobody", env, &["string:X"]),
            call(bus, "org.example.Quotes", env, &["string:X"]),
        ]
    });
    let text = |i: usize| outcomes[i].1.as_str();
    assert!(
        outcomes[0].0 && text(0).ends_with("string \"session\""),
        "{}",
        text(0)
    );
    assert!(text(1).ends_with("uint32 1"), "{}", text(1));
    assert!(text(2).ends_with("uint32 2"), "{}", text(2));
    assert!(outcomes[3].0, "{}", text(3));
    assert!(text(4).ends_with("string \"hello\""), "{}", text(4));
    let errors = [
        (5, "Error org.freedesktop.DBus.Error.Spawn.ChildExited: Process org.example.Exit exited with status 3"),
        (6, "Error org.freedesktop.DBus.Error.Spawn.ChildSignaled: Process org.example.Signal received signal 9"),
        (7, "Error org.freedesktop.DBus.Error.Spawn.ExecFailed: Failed to execute program org.example.Missing: No such file or directory"),
        (8, "Error org.freedesktop.DBus.Error.TimedOut: Failed to activate service 'org.example.Hang': timed out (service_start_timeout=1000ms)"),
        (9, "Error org.freedesktop.DBus.Error.ServiceUnknown: The name org.example.Nobody was not provided by any .service files"),
        (10, "Error org.freedesktop.DBus.Error.InvalidArgs: Unclosed quotes in command line"),
    ];
    for (i, want) in errors {
        assert_eq!(outcomes[i], (false, want.to_string()), "outcome {i}");
    }
}

#[tokio::test]
async fn reloading_finds_new_services_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    tokio::time::timeout(Duration::from_secs(20), async {
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let names = dbus.list_activatable_names().await.unwrap();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        assert_eq!(names[0], "org.freedesktop.DBus");
        assert!(names.contains(&"org.example.Ok") && !names.contains(&"org.example.Late"));

        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .member("ActivatableServicesChanged")
            .unwrap()
            .build();
        let mut changes = zbus::MessageStream::for_match_rule(rule, &conn, None)
            .await
            .unwrap();
        std::fs::write(
            dir.path().join("services/org.example.Late.service"),
            format!("[D-BUS Service]\nName=org.example.Late\nExec={SERVICE} org.example.Late\n"),
        )
        .unwrap();
        // The directory is watched, as dbus-daemon watches it: no ReloadConfig needed.
        changes.next().await.unwrap().unwrap();
        let names = dbus.list_activatable_names().await.unwrap();
        assert!(names.iter().any(|n| n.as_str() == "org.example.Late"));
        let reply = conn
            .call_method(
                Some("org.example.Late"),
                "/",
                Some("org.example.TestService"),
                "Env",
                &("DBUS_STARTER_ADDRESS",),
            )
            .await
            .unwrap();
        let address: String = reply.body().deserialize().unwrap();
        assert_eq!(address, bus.address);
    })
    .await
    .unwrap();
}

/// A service directory that did not exist when the bus started (a fresh account's
/// `~/.local/share/dbus-1/services`) is read when a name is asked for that no file
/// provided, as dbus-daemon does, without a reload; compared with dbus-daemon.
#[test]
fn a_service_directory_created_after_start_is_read_when_a_name_is_asked_for() {
    require("dbus-send");
    let dir = tempfile::tempdir().unwrap();
    let later = dir.path().join("created-later");
    let config = write_config(
        dir.path(),
        "late.conf",
        &session_config("", &format!("<servicedir>{}</servicedir>", later.display())),
    );
    let outcomes = both(&config, |bus| {
        // The directory appears (with its file) only once the bus runs, and goes again
        // before the other bus starts.
        std::fs::create_dir(&later).unwrap();
        std::fs::write(
            later.join("org.example.Late.service"),
            format!("[D-BUS Service]\nName=org.example.Late\nExec={SERVICE} org.example.Late\n"),
        )
        .unwrap();
        let started = driver(
            bus,
            "StartServiceByName",
            &["string:org.example.Late", "uint32:0"],
        );
        let unknown = driver(
            bus,
            "StartServiceByName",
            &["string:org.example.NotThere", "uint32:0"],
        );
        std::fs::remove_dir_all(&later).unwrap();
        vec![started, unknown]
    });
    assert!(outcomes[0].0, "started: {}", outcomes[0].1);
    assert!(outcomes[0].1.contains("uint32 1"), "{}", outcomes[0].1);
    assert!(
        outcomes[1]
            .1
            .contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{}",
        outcomes[1].1
    );
}

/// A service gets descriptors 0-2 only, as from dbus-daemon: busd makes every descriptor of
/// its own close-on-exec, and one it inherited open from whoever started it (here: this
/// test) does not reach its services either.
#[test]
fn a_service_inherits_no_descriptor_but_standard_ones() {
    require("dbus-send");
    let dir = tempfile::tempdir().unwrap();
    let inherited = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&inherited);
    // Open across exec, so that the bus started below inherits it.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let services = dir.path().join("services");
    std::fs::create_dir_all(&services).unwrap();
    let seen = dir.path().join("seen");
    std::fs::write(
        services.join("org.example.Fds.service"),
        format!(
            "[D-BUS Service]\nName=org.example.Fds\nExec=/bin/sh -c 'ls /proc/self/fd > {}'\n",
            seen.display()
        ),
    )
    .unwrap();
    let config = config_with_services(dir.path(), &services);
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    drop(inherited);
    // (The service never takes its name: the start fails once it exits, which is enough.)
    let _ = driver(
        &bus,
        "StartServiceByName",
        &["string:org.example.Fds", "uint32:0"],
    );
    let listing = std::fs::read_to_string(&seen).expect("the service ran");
    let fds: Vec<u32> = listing.lines().filter_map(|l| l.parse().ok()).collect();
    // 0-2, and the directory ls opened to list (the lowest free number, 3).
    assert_eq!(
        fds,
        [0, 1, 2, 3],
        "the service had {fds:?}; {fd} was inherited"
    );
}
