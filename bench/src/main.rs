//! busd-bench: the same zbus clients against dbus-daemon, dbus-broker and busd (standard
//! path, and fast path through busd-shim), side by side.
//!
//! Scenarios: method-call round trip (sequential calls to a well-known name; with a floor:
//! the same calls between two zbus connections over a socketpair, no bus), signal fan-out to
//! 1, 10 and 50 subscribers with 64 B, 1 KiB and 64 KiB payloads, and selective signals
//! (50 subscribers, one has a matching rule, the others must receive nothing), sent in
//! windows (the emitter waits until every subscriber has the window's last signal, so it
//! measures delivery, not the emitter's queue). Each reports the rate, latency p50/p99
//! (timestamps in the bodies), the daemon's CPU time per operation (/proc/PID/schedstat) and
//! losses. The daemon runs pinned to one CPU, the clients to another; daemons alternate
//! order over rounds and the medians are reported, with ratios against dbus-daemon.
//!
//! dbus-broker (when installed) runs without systemd: `dbus-broker-launch --scope user`
//! under `systemd-socket-activate`, in a private mount namespace whose
//! `/run/systemd/journal/socket` discards what it gets (the launcher aborts without one).
//!
//!   busd-bench [--busd=PATH] [--rounds=N] [--quick]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use zbus::{connection, interface, Connection, MatchRule, MessageStream};

struct Server;

#[interface(name = "org.bench.Echo")]
impl Server {
    fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

/// What dbus-broker needs to run without systemd; `$1` is the socket path.
const BROKER_SCRIPT: &str = r#"set -e
mkdir -p /run/systemd/journal
mount -t tmpfs tmpfs /run/systemd/journal
python3 -c '
import socket, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
while True:
    s.recv(65536)
' &
while [ ! -S /run/systemd/journal/socket ]; do sleep 0.05; done
export DBUS_SESSION_BUS_ADDRESS=unix:path=$1
exec systemd-socket-activate -E DBUS_SESSION_BUS_ADDRESS -l "$1" dbus-broker-launch --scope user
"#;

/// A bus daemon under test, on a private socket.
struct Daemon {
    child: Child,
    address: String,
    /// Clients go through busd-shim with the fast path asked for.
    fast: bool,
    /// Runs in a process group of its own, killed as a whole (dbus-broker).
    group: bool,
    _dir: tempfile::TempDir,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pin(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu % cpus())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

impl Daemon {
    fn start(program: &str, fast: bool) -> Result<Daemon> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("bus");
        if program == BROKER {
            return Self::start_broker(dir, sock);
        }
        let mut cmd = Command::new(program);
        cmd.args(["--session", "--nofork", "--print-address"])
            .arg(format!("--address=unix:path={}", sock.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: only sched_setaffinity between fork and exec.
        unsafe {
            cmd.pre_exec(|| pin(1).map_err(std::io::Error::from));
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if !line.starts_with("unix:") {
            bail!("{program} printed {line:?}");
        }
        Ok(Daemon {
            child,
            address: line.trim().to_string(),
            fast,
            group: false,
            _dir: dir,
        })
    }

    /// dbus-broker as the module comment says; it starts on the first connection.
    fn start_broker(dir: tempfile::TempDir, sock: std::path::PathBuf) -> Result<Daemon> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c", BROKER_SCRIPT, "sh"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: only sched_setaffinity between fork and exec.
        unsafe {
            cmd.pre_exec(|| pin(1).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().context("cannot start dbus-broker")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if Instant::now() > deadline {
                bail!("dbus-broker did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon {
            child,
            address: format!("unix:path={}", sock.display()),
            fast: false,
            group: true,
            _dir: dir,
        })
    }

    /// A client connection builder: plain zbus, or busd-shim on the fast path.
    async fn builder(&self) -> Result<connection::Builder<'static>> {
        Ok(if self.fast {
            busd_shim::builder(&format!("{},fastpath=1", self.address)).await?
        } else {
            connection::Builder::address(self.address.as_str())?
        })
    }

    /// CPU time the daemon and its descendants have used, in nanoseconds (dbus-broker's
    /// work happens in a child of its launcher).
    fn cpu_ns(&self) -> u64 {
        fn tree(pid: u32) -> u64 {
            let own = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| {
                    c.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect::<Vec<u32>>()
                })
                .collect();
            own + children.into_iter().map(tree).sum::<u64>()
        }
        tree(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.group {
            // The whole process group (dbus-broker, its launcher, the journal sink).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(daemon: &Daemon) -> Result<Connection> {
    Ok(daemon.builder().await?.build().await?)
}

/// Results of one scenario on one daemon.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_ns_per_op: f64,
    lost: u64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn round_trip(daemon: &Daemon, calls: usize) -> Result<Measure> {
    let _server = daemon
        .builder()
        .await?
        .name("org.bench.Server")?
        .serve_at("/echo", Server)?
        .build()
        .await?;
    let client = connect(daemon).await?;
    time_calls(&client, Some("org.bench.Server"), calls, || daemon.cpu_ns()).await
}

/// Times `calls` sequential 64-byte Echo calls after a warm-up; `cpu_ns` reads the daemon's
/// CPU time (0 without one).
async fn time_calls(
    client: &Connection,
    destination: Option<&str>,
    calls: usize,
    cpu_ns: impl Fn() -> u64,
) -> Result<Measure> {
    let payload = vec![0u8; 64];
    let call = || {
        client.call_method(
            destination,
            "/echo",
            Some("org.bench.Echo"),
            "Echo",
            &payload,
        )
    };
    for _ in 0..200 {
        call().await?; // warm-up
    }
    let cpu0 = cpu_ns();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        call().await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_ns() - cpu0;
    lat.sort_unstable();
    Ok(Measure {
        rate: calls as f64 / elapsed,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        cpu_ns_per_op: cpu as f64 / calls as f64,
        lost: 0,
    })
}

/// The floor: the same calls between two zbus connections over a socketpair, no bus.
async fn peer_to_peer(calls: usize) -> Result<Measure> {
    let (a, b) = tokio::net::UnixStream::pair()?;
    let guid = zbus::Guid::generate();
    let server = async {
        connection::Builder::unix_stream(a)
            .server(guid)?
            .p2p()
            .serve_at("/echo", Server)?
            .build()
            .await
    };
    let client = async { connection::Builder::unix_stream(b).p2p().build().await };
    let (server, client) = tokio::try_join!(server, client)?;
    let m = time_calls(&client, None, calls, || 0).await;
    drop(server);
    m
}

/// One fan-out signal: sequence number, send time (ns since the run's epoch), payload.
async fn tick(emitter: &Connection, seq: u64, sent_ns: u64, data: &[u8]) -> Result<()> {
    emitter
        .emit_signal(
            None::<&str>,
            "/fan",
            "org.bench.Fan",
            "Tick",
            &(seq, sent_ns, data),
        )
        .await?;
    Ok(())
}

/// The sequence number that tells subscribers the run is over.
const STOP: u64 = u64::MAX;

/// Fan-out to `subscribers`, of which the first `matching` have a rule for the signal; the
/// others have a rule for another member and must receive nothing (selective signals: a
/// Tick that reaches one of them counts as lost).
async fn fan_out(
    daemon: &Daemon,
    subscribers: usize,
    matching: usize,
    payload: usize,
    signals: u64,
) -> Result<Measure> {
    const WINDOW: u64 = 16;
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut done_marks = Vec::new();
    let mut tasks = Vec::new();
    let mut bystanders = Vec::new();
    let mut bystander_conns = Vec::new();
    for i in 0..subscribers {
        let conn = connect(daemon).await?;
        let rule = |member| {
            MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface("org.bench.Fan")
                .and_then(|b| b.member(member))
                .map(|b| b.build())
        };
        if i >= matching {
            let own = MessageStream::for_match_rule(rule("Tock")?, &conn, None).await?;
            let mut everything = MessageStream::from(&conn);
            let unexpected = unexpected.clone();
            bystanders.push(tokio::spawn(async move {
                let _own = own;
                while let Some(Ok(m)) = everything.next().await {
                    if m.header().member().is_some_and(|m| m == "Tick") {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            bystander_conns.push(conn);
            continue;
        }
        let mut stream = MessageStream::for_match_rule(rule("Tick")?, &conn, None).await?;
        let last = Arc::new(AtomicU64::new(u64::MAX));
        done_marks.push(last.clone());
        let received = received.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let _conn = conn;
            let mut local = Vec::new();
            while let Some(Ok(m)) = stream.next().await {
                let Ok((seq, sent_ns, _data)) = m.body().deserialize::<(u64, u64, Vec<u8>)>()
                else {
                    continue;
                };
                if seq == STOP {
                    break;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                local.push(now.saturating_sub(sent_ns));
                received.fetch_add(1, Ordering::Relaxed);
                last.store(seq, Ordering::Release);
            }
            latencies.lock().unwrap().append(&mut local);
        }));
    }
    let emitter = connect(daemon).await?;
    let data = vec![0xabu8; payload];
    let cpu0 = daemon.cpu_ns();
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < signals {
        for _ in 0..WINDOW.min(signals - seq) {
            tick(&emitter, seq, epoch.elapsed().as_nanos() as u64, &data).await?;
            seq += 1;
        }
        // The window is delivered when every subscriber has its last signal.
        let target = seq - 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while done_marks
            .iter()
            .any(|m| m.load(Ordering::Acquire).wrapping_add(1) < target + 1)
        {
            if Instant::now() > deadline {
                break; // counted as lost below
            }
            tokio::task::yield_now().await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = daemon.cpu_ns() - cpu0;
    tick(&emitter, STOP, 0, &[]).await?;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    for b in bystanders {
        b.abort();
    }
    drop(bystander_conns);
    let delivered = received.load(Ordering::Relaxed);
    let expected = signals * matching as u64;
    let unexpected = unexpected.load(Ordering::Relaxed);
    if unexpected > 0 {
        eprintln!("{unexpected} signals reached subscribers without a matching rule");
    }
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    Ok(Measure {
        rate: delivered as f64 / elapsed,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        cpu_ns_per_op: cpu as f64 / delivered.max(1) as f64,
        lost: expected.saturating_sub(delivered) + unexpected,
    })
}

/// The name standing for dbus-broker in the daemon list.
const BROKER: &str = "dbus-broker";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut busd = std::env::current_exe()?
        .parent()
        .map(|p| p.join("busd"))
        .context("no busd next to busd-bench")?
        .display()
        .to_string();
    let (mut rounds, mut quick) = (3usize, false);
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("--busd=") {
            busd = v.to_string();
        } else if let Some(v) = arg.strip_prefix("--rounds=") {
            rounds = v.parse()?;
        } else if arg == "--quick" {
            quick = true;
        } else {
            bail!("usage: busd-bench [--busd=PATH] [--rounds=N] [--quick]");
        }
    }
    pin(0)?;
    let mut daemons = vec![("dbus-daemon", "/usr/bin/dbus-daemon".to_string(), false)];
    if std::path::Path::new("/usr/bin/dbus-broker-launch").exists() {
        daemons.push(("dbus-broker", BROKER.to_string(), false));
    } else {
        eprintln!("dbus-broker is not installed (apt-get install dbus-broker): not compared");
    }
    daemons.push(("busd", busd.clone(), false));
    daemons.push(("busd, fast path", busd, true));
    let calls = if quick { 500 } else { 5000 };
    let mut names: Vec<String> = vec!["method call round trip".into()];
    // (subscribers, of which matching, payload)
    let mut configs: Vec<(usize, usize, usize)> = Vec::new();
    for subs in [1usize, 10, 50] {
        for payload in [64usize, 1024, 65536] {
            if quick && (subs > 10 || payload > 1024) {
                continue;
            }
            names.push(format!("fan-out to {subs}, {payload} B"));
            configs.push((subs, subs, payload));
        }
    }
    names.push("selective: 1 of 50 matches, 64 B".into());
    configs.push((50, 1, 64));
    // The floor: zbus peer to peer over a socketpair, no bus, once per round.
    let mut floor = Vec::new();
    // results[scenario][daemon] = per-round measures
    let mut results = vec![vec![Vec::<Measure>::new(); daemons.len()]; names.len()];
    for round in 0..rounds {
        for k in 0..daemons.len() {
            // Rotate which daemon goes first.
            let d = (k + round) % daemons.len();
            let daemon = Daemon::start(&daemons[d].1, daemons[d].2)?;
            results[0][d].push(round_trip(&daemon, calls).await?);
            drop(daemon);
            for (i, &(subs, matching, payload)) in configs.iter().enumerate() {
                let daemon = Daemon::start(&daemons[d].1, daemons[d].2)?;
                let signals = if quick {
                    200
                } else if payload >= 65536 {
                    500
                } else {
                    2000
                };
                results[i + 1][d].push(fan_out(&daemon, subs, matching, payload, signals).await?);
            }
        }
        floor.push(peer_to_peer(calls).await?);
    }
    let broker = daemons.iter().position(|d| d.0 == BROKER);
    println!(
        "| scenario | daemon | rate (/s) | p50 (us) | p99 (us) | daemon CPU per op (us) | lost | rate vs dbus-daemon | rate vs dbus-broker |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (s, name) in names.iter().enumerate() {
        let base_rate = median(results[s][0].iter().map(|m| m.rate).collect());
        let broker_rate = broker.map(|b| median(results[s][b].iter().map(|m| m.rate).collect()));
        for (d, (dname, _, _)) in daemons.iter().enumerate() {
            let ms = &results[s][d];
            let med = |f: fn(&Measure) -> f64| median(ms.iter().map(f).collect());
            let rate = med(|m| m.rate);
            let lost: u64 = ms.iter().map(|m| m.lost).sum();
            let vs_broker =
                broker_rate.map_or("-".to_string(), |b| format!("{:.2}x", rate / b.max(1e-9)));
            println!(
                "| {name} | {dname} | {:.0} | {:.0} | {:.0} | {:.1} | {lost} | {:.2}x | {vs_broker} |",
                rate,
                med(|m| m.p50_us),
                med(|m| m.p99_us),
                med(|m| m.cpu_ns_per_op) / 1000.0,
                rate / base_rate.max(1e-9)
            );
        }
    }
    let med = |f: fn(&Measure) -> f64| median(floor.iter().map(f).collect());
    println!(
        "| method call round trip | floor: zbus peer to peer, no bus | {:.0} | {:.0} | {:.0} | - | 0 | - | - |",
        med(|m| m.rate),
        med(|m| m.p50_us),
        med(|m| m.p99_us)
    );
    let lost: u64 = results.iter().flatten().flatten().map(|m| m.lost).sum();
    if lost > 0 {
        bail!("{lost} signals were not delivered: a bus lost messages");
    }
    Ok(())
}
