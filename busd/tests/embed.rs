//! The server embedded in another program, as a library: it takes already-bound listeners,
//! runs on a thread of its caller, answers a client, and stops when asked through its
//! `Control`, without touching the process's signal mask.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use busd::bus::{Bus, BusSettings};
use busd::server::identity::NssAccounts;
use busd::server::{self, Server, ServerConfig};
use busd_policy::{CompiledPolicy, Config};
use busd_wire::address::ListenAddress;
use busd_wire::marshal::Endian;
use busd_wire::message::{encode, total_length, HeaderFields, Message, METHOD_CALL};
use busd_wire::sasl::Mechanism;

const CONFIG: &str = r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>"#;

fn server_config() -> ServerConfig {
    let config = Config::from_str_at(CONFIG, Path::new("embed.conf")).expect("config");
    let policy = CompiledPolicy::compile(&config, &NssAccounts).expect("policy");
    ServerConfig {
        mechanisms: vec![Mechanism::External],
        limits: config.limits.clone(),
        policy: Rc::new(policy),
        servicehelper: None,
        services: Vec::new(),
        watched_dirs: Vec::new(),
        service_dirs: Vec::new(),
    }
}

/// Authenticates, says Hello and returns the unique name the bus answered with.
fn hello(path: &Path) -> String {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = busd_wire::sasl::auth_external(nix::unistd::getuid().as_raw());
    s.write_all(format!("{auth}BEGIN\r\n").as_bytes()).unwrap();
    let call = encode(
        Endian::Little,
        METHOD_CALL,
        0,
        1,
        &HeaderFields {
            path: Some("/org/freedesktop/DBus"),
            interface: Some("org.freedesktop.DBus"),
            member: Some("Hello"),
            destination: Some("org.freedesktop.DBus"),
            ..HeaderFields::default()
        },
        &[],
    );
    s.write_all(&call).unwrap();
    // "OK <guid>\r\n", then the reply.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
    let mut fixed = vec![0u8; 16];
    s.read_exact(&mut fixed).unwrap();
    let mut all = fixed.clone();
    all.resize(total_length(&fixed).unwrap(), 0);
    s.read_exact(&mut all[16..]).unwrap();
    let reply = Message::parse(all, Vec::new()).unwrap();
    assert_eq!(reply.reply_serial(), Some(1));
    reply.body_reader().string().unwrap().to_string()
}

#[test]
fn an_embedded_server_serves_and_stops_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus");
    let addr = ListenAddress::Path(path.display().to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let listeners = server::bind(&addr).expect("bind");
        let config = server_config();
        let settings = BusSettings {
            guid: "0123456789abcdef0123456789abcdef".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            uid: nix::unistd::geteuid().as_raw(),
            pid: std::process::id(),
            limits: config.limits.clone(),
            policy: Rc::clone(&config.policy),
            servicehelper: None,
            systemd_activation: false,
        };
        let reloader: server::Reloader = Box::new(|| Ok(server_config()));
        let server = Server::new(
            listeners,
            Bus::new(settings),
            config,
            reloader,
            Vec::new(),
            server::notify::Notifier::from_env(),
            None,
        )
        .expect("server");
        // The thread's signal mask after the server was made: it is the embedder's own.
        let mask = nix::sys::signal::SigSet::thread_get_mask().unwrap();
        tx.send((server.control(), mask)).unwrap();
        server.run()
    });
    let (control, mask) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server started");
    for sig in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGCHLD,
    ] {
        assert!(!mask.contains(sig), "the server blocked {sig:?}");
    }
    assert_eq!(hello(&path), ":1.0");
    // A reload request is handled between events and the bus keeps serving.
    control.reload();
    assert_eq!(hello(&path), ":1.1");
    control.shutdown();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(thread.join()).unwrap());
    let result = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server stopped within 10 s");
    result.expect("no panic").expect("run() returned Ok");
    assert!(
        !path.exists(),
        "the socket file is removed when the server ends"
    );
}
