//! busd-bench: the same zbus clients against dbus-daemon (twice: the second instance is an
//! A/A control that shows the run's noise), dbus-broker, busd on the standard path and busd
//! with the fast path (clients through busd-shim), side by side, with floors that have no bus.
//!
//! Scenarios: method-call round trip (sequential calls to a well-known name); signal
//! fan-out to 1, 10, 50 and 200 subscribers with 64 B, 1 KiB, 64 KiB and 1 MiB payloads,
//! sent in windows of 16 (the emitter waits until every subscriber has the window's last
//! signal, so it measures delivery, not the emitter's queue), and one at a time for unloaded
//! latency; the same windowed fan-out to 10 and 50 subscribers (64 B, 1 KiB) with every
//! subscriber in a process of its own ("subscribers in processes", module `procs`);
//! selective signals (50 subscribers, one has a matching rule, the others must receive
//! nothing); connection rate (connect, authenticate, Hello, close); name churn (RequestName
//! and ReleaseName with a NameOwnerChanged watcher). Each reports the rate, latency p50/p99
//! (timestamps in the bodies), the daemon's CPU time per operation (/proc/PID/task/*/schedstat
//! of the daemon and its descendants, every thread, around the measured phase only), the total CPU time per
//! operation (the daemon's plus this process's, where every client runs, plus the
//! subscriber processes' where they have their own: what the operation costs the machine,
//! the fast path's work in its clients included) and losses (a run that loses a message
//! fails). Floors: zbus peer to peer over a socketpair and a bare AF_UNIX ping-pong for
//! calls; bare AF_UNIX streams for fan-out (none for subscribers in processes).
//!
//! Method: the daemon is pinned to CPU 1, every client in this process to CPU 0; the
//! subscriber processes are not pinned and run on either CPU, so their work can run in
//! parallel with the emitter's and the daemon's (where the fast path's parallelism shows,
//! if it has any); each scenario starts a fresh daemon; the order of the daemons rotates
//! per round and per scenario; medians of the rounds, with ratios against dbus-daemon and
//! dbus-broker.
//!
//! dbus-broker (when installed) runs without systemd: `dbus-broker-launch --scope user`
//! under `systemd-socket-activate`, in a private mount namespace whose
//! `/run/systemd/journal/socket` discards what it gets (the launcher aborts without one).
//!
//!   busd-bench [--busd=PATH] [--rounds=N] [--quick] [--scale] [--json=FILE] [--plots=DIR] [--only=TEXT]
//!              [--daemon=COLUMN]...
//!
//! `--daemon=` (repeated) keeps only those columns, e.g. `--daemon='busd, fast path'` to
//! profile one daemon; the floors run only when one of them names `floor`. `--only=TEXT`
//! (repeated: any of them) keeps the scenarios whose name contains TEXT, or, when TEXT ends
//! with `$`, is the rest.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use zbus::{connection, interface, Connection, MatchRule, MessageStream};

mod scale;

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

/// Where each daemon gets a directory of its own for its socket (and busd its fast-path
/// sockets): `$XDG_RUNTIME_DIR` when set, else `/dev/shm`: a tmpfs, as a desktop's
/// `/run/user/UID` is (on a disk file system, creating and removing sockets costs several
/// times more, which no session bus pays).
fn runtime_base() -> std::path::PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|d| d.is_dir()))
        .unwrap_or_else(std::env::temp_dir)
}

/// CPUs online. (Not `available_parallelism`: that follows this process's affinity, which
/// is one CPU once the bench pinned itself, and a daemon forked from it would then be pinned
/// to the clients' CPU.)
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(1)
            .max(1)
    })
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
        let dir = tempfile::Builder::new()
            .prefix("busd-bench-")
            .tempdir_in(runtime_base())?;
        let sock = dir.path().join("bus");
        if program == BROKER {
            return Self::start_broker(dir, sock);
        }
        let mut cmd = Command::new(program);
        // (busd makes its fast-path directory there.)
        cmd.env("XDG_RUNTIME_DIR", dir.path());
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
        client_builder(&self.address, self.fast).await
    }

    /// Resident memory of the daemon and its descendants, in bytes.
    fn rss_bytes(&self) -> u64 {
        self.tree()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum::<u64>()
            * 1024
    }

    /// The daemon's process and its descendants (dbus-broker's work happens in a child of
    /// its launcher).
    fn tree(&self) -> Vec<u32> {
        let mut out = vec![self.child.id()];
        let mut i = 0;
        while i < out.len() {
            let pid = out[i];
            i += 1;
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        out
    }

    /// The daemon's and the clients' CPU time now.
    fn cpu(&self) -> Cpu {
        Cpu {
            daemon: self.cpu_ns(),
            clients: process_cpu_ns(),
        }
    }

    /// CPU time the daemon and its descendants have used, in nanoseconds (dbus-broker's
    /// work happens in a child of its launcher).
    fn cpu_ns(&self) -> u64 {
        self.tree()
            .into_iter()
            .map(|pid| {
                // Every thread's (a process's own schedstat is its main thread's only).
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    return 0;
                };
                tasks
                    .flatten()
                    .filter_map(|t| {
                        std::fs::read_to_string(t.path().join("schedstat"))
                            .ok()?
                            .split_whitespace()
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

/// CPU time, in nanoseconds: the daemon's (with its descendants), and this process's,
/// where every client of every scenario runs (the fast path's work included: it moves
/// work from the daemon into the clients, so only the sum says what an operation costs
/// the machine).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    daemon: u64,
    clients: u64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            daemon: self.daemon.saturating_sub(earlier.daemon),
            clients: self.clients.saturating_sub(earlier.clients),
        }
    }
}

impl Cpu {
    /// This process's CPU time only (the floors, which have no daemon).
    fn clients_only() -> Cpu {
        Cpu {
            daemon: 0,
            clients: process_cpu_ns(),
        }
    }
}

/// CPU time of this process, all its threads.
fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// `clock`'s time, in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

/// A client connection builder for the bus at `address`: plain zbus, or busd-shim on the
/// fast path (`fast`). Every client of every scenario is built here, in this process or in a
/// subscriber process of its own.
async fn client_builder(address: &str, fast: bool) -> Result<connection::Builder<'static>> {
    Ok(if fast {
        busd_shim::builder(&format!("{address},fastpath=1")).await?
    } else {
        connection::Builder::address(address)?
    })
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
    /// The daemon's and every client's CPU per operation ([`Cpu`]).
    total_cpu_ns_per_op: f64,
    lost: u64,
    /// Daemon memory (RSS) the operation's state costs, in bytes (scale scenarios; 0:
    /// not measured).
    rss_per_op: f64,
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
    time_calls(&client, Some("org.bench.Server"), calls, || daemon.cpu()).await
}

/// Times `calls` sequential 64-byte Echo calls after a warm-up; `cpu` reads the CPU time
/// ([`Cpu::clients_only`] without a daemon).
async fn time_calls(
    client: &Connection,
    destination: Option<&str>,
    calls: usize,
    cpu: impl Fn() -> Cpu,
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
    let cpu0 = cpu();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        call().await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let used = cpu() - cpu0;
    Ok(summarize(lat, calls as f64 / elapsed, used, calls, 0))
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
    let m = time_calls(&client, None, calls, Cpu::clients_only).await;
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

/// A fan-out subscriber's rule: signals `member` of `org.bench.Fan`.
fn fan_rule(member: &str) -> zbus::Result<MatchRule<'_>> {
    Ok(MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.bench.Fan")?
        .member(member)?
        .build())
}

/// Fan-out to `subscribers`, of which the first `matching` have a rule for the signal; the
/// others have a rule for another member and must receive nothing (selective signals: a
/// Tick that reaches one of them counts as lost).
async fn fan_out(daemon: &Daemon, fan: Fan, signals: u64) -> Result<Measure> {
    let Fan {
        subscribers,
        matching,
        payload,
        window,
    } = fan;
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut done_marks = Vec::new();
    // Subscribers wake the emitter as they advance: it waits without spinning, so the
    // clients' CPU time is their work, not the emitter's wait for the daemon.
    let advanced = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    let mut bystanders = Vec::new();
    let mut bystander_conns = Vec::new();
    for i in 0..subscribers {
        let conn = connect(daemon).await?;
        if i >= matching {
            let own = MessageStream::for_match_rule(fan_rule("Tock")?, &conn, None).await?;
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
        let mut stream = MessageStream::for_match_rule(fan_rule("Tick")?, &conn, None).await?;
        let last = Arc::new(AtomicU64::new(u64::MAX));
        done_marks.push(last.clone());
        let received = received.clone();
        let latencies = latencies.clone();
        let advanced = advanced.clone();
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
                advanced.notify_one();
            }
            latencies.lock().unwrap().append(&mut local);
        }));
    }
    let emitter = connect(daemon).await?;
    let data = vec![0xabu8; payload];
    let cpu0 = daemon.cpu();
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < signals {
        for _ in 0..window.min(signals - seq) {
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
            // (A notification given before this wait is kept for it: none is missed.)
            let _ = tokio::time::timeout_at(deadline.into(), advanced.notified()).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = daemon.cpu() - cpu0;
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
    let lat = std::mem::take(&mut *latencies.lock().unwrap());
    Ok(summarize(
        lat,
        delivered as f64 / elapsed,
        cpu,
        delivered as usize,
        expected.saturating_sub(delivered) + unexpected,
    ))
}

/// Connection rate: connect (authentication, Hello; Join on the fast path), then close.
async fn connect_rate(daemon: &Daemon, connections: usize) -> Result<Measure> {
    for _ in 0..20 {
        drop(connect(daemon).await?); // warm-up
    }
    let cpu0 = daemon.cpu();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(connections);
    for _ in 0..connections {
        let t = Instant::now();
        let conn = connect(daemon).await?;
        lat.push(t.elapsed().as_nanos() as u64);
        drop(conn);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(summarize(
        lat,
        connections as f64 / elapsed,
        daemon.cpu() - cpu0,
        connections,
        0,
    ))
}

/// Name churn: RequestName then ReleaseName of one name, with another connection watching
/// its NameOwnerChanged signals (each churn must produce two).
async fn name_churn(daemon: &Daemon, churns: usize) -> Result<Measure> {
    const NAME: &str = "org.bench.Churn";
    let owner = connect(daemon).await?;
    let watcher = connect(daemon).await?;
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")?
        .member("NameOwnerChanged")?
        .add_arg(NAME)?
        .build();
    let mut changes = MessageStream::for_match_rule(rule, &watcher, None).await?;
    let seen = Arc::new(AtomicU64::new(0));
    let counter = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(_)) = changes.next().await {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let dbus = zbus::fdo::DBusProxy::new(&owner).await?;
    let name = zbus::names::WellKnownName::try_from(NAME)?;
    let churn = || async {
        dbus.request_name(name.clone(), zbus::fdo::RequestNameFlags::DoNotQueue.into())
            .await?;
        dbus.release_name(name.clone()).await?;
        anyhow::Ok(())
    };
    for _ in 0..20 {
        churn().await?; // warm-up
    }
    let expected_before = 40;
    let cpu0 = daemon.cpu();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(churns);
    for _ in 0..churns {
        let t = Instant::now();
        churn().await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = daemon.cpu() - cpu0;
    let expected = expected_before + 2 * churns as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    counter.abort();
    let lost = expected.saturating_sub(seen.load(Ordering::Relaxed));
    Ok(summarize(lat, churns as f64 / elapsed, cpu, churns, lost))
}

fn summarize(mut lat: Vec<u64>, rate: f64, cpu: Cpu, ops: usize, lost: u64) -> Measure {
    lat.sort_unstable();
    let ops = ops.max(1) as f64;
    Measure {
        rate,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        cpu_ns_per_op: cpu.daemon as f64 / ops,
        total_cpu_ns_per_op: (cpu.daemon + cpu.clients) as f64 / ops,
        lost,
        rss_per_op: 0.0,
    }
}

/// The bare floor for calls: 64 bytes there and back over an AF_UNIX socketpair, with a
/// thread echoing (no D-Bus at all).
fn bare_ping_pong(calls: usize) -> Result<Measure> {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..200 {
        a.write_all(&buf)?;
        a.read_exact(&mut buf)?;
    }
    let (cpu0, start) = (Cpu::clients_only(), Instant::now());
    for _ in 0..calls {
        let t = Instant::now();
        a.write_all(&buf)?;
        a.read_exact(&mut buf)?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = Cpu::clients_only() - cpu0;
    drop(a);
    let _ = echo.join();
    Ok(summarize(lat, calls as f64 / elapsed, cpu, calls, 0))
}

/// The bare floor for fan-out: the emitter writes each signal (sequence, timestamp,
/// payload) to one AF_UNIX stream per subscriber, each read by a thread of its own, in the
/// same windows as the bus runs.
fn bare_fan_out(fan: Fan, signals: u64) -> Result<Measure> {
    use std::io::{Read, Write};
    let epoch = Instant::now();
    let mut writers = Vec::new();
    let mut marks = Vec::new();
    let mut readers = Vec::new();
    // Readers wake the emitter at a window's last signal: it waits parked, not spinning.
    let emitter = std::thread::current();
    for _ in 0..fan.subscribers {
        let (w, mut r) = std::os::unix::net::UnixStream::pair()?;
        writers.push(w);
        let last = Arc::new(AtomicU64::new(u64::MAX));
        marks.push(last.clone());
        let payload = fan.payload;
        let emitter = emitter.clone();
        let window = fan.window;
        readers.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut buf = vec![0u8; 16 + payload];
            while r.read_exact(&mut buf).is_ok() {
                let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                let sent = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
                lat.push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent));
                last.store(seq, Ordering::Release);
                if (seq + 1) % window == 0 || seq + 1 == signals {
                    emitter.unpark();
                }
            }
            lat
        }));
    }
    let mut frame = vec![0xabu8; 16 + fan.payload];
    let (cpu0, start) = (Cpu::clients_only(), Instant::now());
    let mut seq = 0u64;
    while seq < signals {
        for _ in 0..fan.window.min(signals - seq) {
            frame[..8].copy_from_slice(&seq.to_le_bytes());
            let now = epoch.elapsed().as_nanos() as u64;
            frame[8..16].copy_from_slice(&now.to_le_bytes());
            for w in &mut writers {
                w.write_all(&frame)?;
            }
            seq += 1;
        }
        let target = seq - 1;
        while marks
            .iter()
            .any(|m| m.load(Ordering::Acquire).wrapping_add(1) < target + 1)
        {
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = Cpu::clients_only() - cpu0;
    drop(writers);
    let mut lat = Vec::new();
    for r in readers {
        lat.append(&mut r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?);
    }
    let delivered = lat.len();
    Ok(summarize(
        lat,
        delivered as f64 / elapsed,
        cpu,
        delivered,
        (signals * fan.subscribers as u64).saturating_sub(delivered as u64),
    ))
}

/// The name standing for dbus-broker in the daemon list.
const BROKER: &str = "dbus-broker";

/// A fan-out run: `subscribers` connections, the first `matching` of which have a rule for
/// the signal; signals of `payload` bytes in windows of `window`.
#[derive(Debug, Clone, Copy)]
struct Fan {
    subscribers: usize,
    matching: usize,
    payload: usize,
    window: u64,
}

impl Fan {
    fn all(subscribers: usize, payload: usize) -> Fan {
        Fan {
            subscribers,
            matching: subscribers,
            payload,
            window: 16,
        }
    }

    /// Signals per run: enough to measure, with the bytes delivered kept within reason.
    fn signals(self, quick: bool) -> u64 {
        let delivered_bytes = (self.payload.max(256) * self.matching.max(1)) as u64;
        let budget: u64 = if quick { 16 << 20 } else { 256 << 20 };
        (budget / delivered_bytes)
            .clamp(if quick { 10 } else { 20 }, if quick { 200 } else { 2000 })
    }

    fn name(self) -> String {
        let payload = match self.payload {
            p if p >= 1 << 20 => format!("{} MiB", p >> 20),
            p if p >= 1024 => format!("{} KiB", p >> 10),
            p => format!("{p} B"),
        };
        if self.matching < self.subscribers {
            format!(
                "selective: {} of {} match, {payload}",
                self.matching, self.subscribers
            )
        } else if self.window == 1 {
            format!("fan-out to {}, {payload}, one at a time", self.subscribers)
        } else {
            format!("fan-out to {}, {payload}", self.subscribers)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    RoundTrip,
    FanOut(Fan),
    /// The same fan-out with every subscriber in a process of its own ([`procs`]).
    FanOutProcesses(Fan),
    Connect,
    NameChurn,
    /// Method calls beside this many idle connections (`--scale`).
    Idle(usize),
    /// Signals to one subscriber beside this many rules of a shape that never matches.
    Unrelated(usize, scale::Shape),
    /// This many clients connecting and adding [`scale::RULES_EACH`] rules each.
    Storm(usize),
    /// This many zbus clients connecting and staying (on the fast path: joining it).
    Members(usize),
}

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::RoundTrip => "method call round trip".into(),
            Scenario::FanOut(f) => f.name(),
            Scenario::FanOutProcesses(f) => format!("{}, subscribers in processes", f.name()),
            Scenario::Connect => "connection (auth, Hello, close)".into(),
            Scenario::NameChurn => "name churn (RequestName + ReleaseName)".into(),
            Scenario::Idle(n) => format!("method call beside {n} idle connections"),
            Scenario::Unrelated(n, shape) => {
                format!("signal to 1 beside {n} rules: {}", shape.name())
            }
            Scenario::Storm(n) => format!(
                "login storm: {n} clients x {} rules (rate: clients/s)",
                scale::RULES_EACH
            ),
            Scenario::Members(n) => {
                format!("{n} zbus clients connecting and staying (rate: clients/s)")
            }
        }
    }

    async fn run(self, daemon: &Daemon, quick: bool) -> Result<Measure> {
        match self {
            Scenario::RoundTrip => round_trip(daemon, if quick { 500 } else { 5000 }).await,
            Scenario::FanOut(f) => fan_out(daemon, f, f.signals(quick)).await,
            Scenario::FanOutProcesses(f) => procs::fan_out(daemon, f, f.signals(quick)).await,
            Scenario::Connect => connect_rate(daemon, if quick { 100 } else { 1000 }).await,
            Scenario::NameChurn => name_churn(daemon, if quick { 200 } else { 2000 }).await,
            Scenario::Idle(n) => {
                let rss0 = daemon.rss_bytes();
                let (_idle, _) = scale::clients(&daemon.address, n, 0, scale::Shape::Member)?;
                let rss = daemon.rss_bytes().saturating_sub(rss0);
                let m = round_trip(daemon, if quick { 500 } else { 5000 }).await?;
                Ok(Measure {
                    rss_per_op: rss as f64 / n.max(1) as f64,
                    ..m
                })
            }
            Scenario::Unrelated(n, shape) => {
                let clients = n.div_ceil(scale::RULES_EACH);
                let (_others, _) =
                    scale::clients(&daemon.address, clients, scale::RULES_EACH, shape)?;
                // Measured once the bus settled: busd compiles its fast-path filter from
                // every rule once, after the changes stop (counted in the storm scenario).
                tokio::time::sleep(scale::settle(n)).await;
                fan_out(daemon, Fan::all(1, 64), if quick { 2000 } else { 20000 }).await
            }
            Scenario::Members(n) => {
                let (cpu0, start) = (daemon.cpu(), Instant::now());
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    clients.push(connect(daemon).await?);
                }
                let took = start.elapsed();
                if daemon.fast {
                    // (A join that failed would leave a client on the standard path, and
                    // flatter the figure.)
                    let standard = clients
                        .iter()
                        .filter(|c| busd_shim::stats(c).is_none())
                        .count();
                    if standard > 0 {
                        bail!("{standard} of {n} clients did not join the fast path");
                    }
                }
                tokio::time::sleep(scale::settle(n)).await;
                Ok(summarize(
                    Vec::new(),
                    n as f64 / took.as_secs_f64(),
                    daemon.cpu() - cpu0,
                    n,
                    0,
                ))
            }
            Scenario::Storm(n) => {
                let (cpu0, rss0) = (daemon.cpu(), daemon.rss_bytes());
                let (_clients, took) =
                    scale::clients(&daemon.address, n, scale::RULES_EACH, scale::Shape::Arg0)?;
                // The daemon's CPU until it settled (busd's deferred filter compile).
                tokio::time::sleep(scale::settle(n * scale::RULES_EACH)).await;
                let cpu = daemon.cpu() - cpu0;
                let rss = daemon.rss_bytes().saturating_sub(rss0);
                Ok(Measure {
                    rss_per_op: rss as f64 / (n * scale::RULES_EACH) as f64,
                    ..summarize(Vec::new(), n as f64 / took.as_secs_f64(), cpu, n, 0)
                })
            }
        }
    }

    /// The floor without a bus, where there is one.
    async fn floors(self, quick: bool) -> Result<Vec<(&'static str, Measure)>> {
        let calls = if quick { 500 } else { 5000 };
        Ok(match self {
            Scenario::RoundTrip => vec![
                ("floor: zbus peer to peer", peer_to_peer(calls).await?),
                ("floor: bare AF_UNIX ping-pong", bare_ping_pong(calls)?),
            ],
            Scenario::FanOut(f) if f.matching == f.subscribers => {
                vec![(
                    "floor: bare AF_UNIX streams",
                    bare_fan_out(f, f.signals(quick))?,
                )]
            }
            _ => Vec::new(),
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Every measure of one run: `results[scenario][column]`, one per round; the columns are
/// the daemons, then the floors.
struct Results {
    scenarios: Vec<Scenario>,
    columns: Vec<String>,
    results: Vec<Vec<Vec<Measure>>>,
    /// Runs that ended in an error, with the error.
    failures: Vec<Vec<Vec<String>>>,
}

impl Results {
    fn median(&self, s: usize, c: usize, f: fn(&Measure) -> f64) -> Option<f64> {
        let ms = &self.results[s][c];
        (!ms.is_empty()).then(|| median(ms.iter().map(f).collect()))
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        out.push_str("| scenario | daemon | rate (/s) | p50 (us) | p99 (us) | daemon CPU per op (us) | total CPU per op (us) | daemon RSS per op (B) | lost | rate vs dbus-daemon | rate vs dbus-broker |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        let base = self.column("dbus-daemon");
        let broker = self.column(BROKER);
        for (s, scenario) in self.scenarios.iter().enumerate() {
            let rate_of = |c: Option<usize>| c.and_then(|c| self.median(s, c, |m| m.rate));
            let (base_rate, broker_rate) = (rate_of(base), rate_of(broker));
            for (c, column) in self.columns.iter().enumerate() {
                if let Some(e) = self.failures[s][c].first() {
                    let _ = writeln!(
                        out,
                        "| {} | {column} | failed in {} of {} rounds: {} | | | | | | | | |",
                        scenario.name(),
                        self.failures[s][c].len(),
                        self.failures[s][c].len() + self.results[s][c].len(),
                        e.replace('|', "/").replace('\n', " ")
                    );
                }
                let Some(rate) = self.median(s, c, |m| m.rate) else {
                    continue;
                };
                let med = |f: fn(&Measure) -> f64| self.median(s, c, f).unwrap_or(0.0);
                let lost: u64 = self.results[s][c].iter().map(|m| m.lost).sum();
                let ratio = |b: Option<f64>| {
                    b.map_or("-".into(), |b| format!("{:.2}x", rate / b.max(1e-9)))
                };
                let floor = column.starts_with("floor");
                let _ = writeln!(
                    out,
                    "| {} | {column} | {rate:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {lost} | {} | {} |",
                    scenario.name(),
                    med(|m| m.p50_us),
                    med(|m| m.p99_us),
                    if floor {
                        "-".into()
                    } else {
                        format!("{:.1}", med(|m| m.cpu_ns_per_op) / 1000.0)
                    },
                    med(|m| m.total_cpu_ns_per_op) / 1000.0,
                    match med(|m| m.rss_per_op) {
                        0.0 => "-".into(),
                        b => format!("{b:.0}"),
                    },
                    ratio(base_rate),
                    ratio(broker_rate),
                );
            }
        }
        out
    }

    fn json_lines(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (s, scenario) in self.scenarios.iter().enumerate() {
            for (c, column) in self.columns.iter().enumerate() {
                for (round, m) in self.results[s][c].iter().enumerate() {
                    let _ = writeln!(
                        out,
                        r#"{{"scenario":"{}","daemon":"{}","round":{round},"rate":{:.1},"p50_us":{:.1},"p99_us":{:.1},"cpu_us_per_op":{:.3},"total_cpu_us_per_op":{:.3},"lost":{}}}"#,
                        scenario.name(),
                        column,
                        m.rate,
                        m.p50_us,
                        m.p99_us,
                        m.cpu_ns_per_op / 1000.0,
                        m.total_cpu_ns_per_op / 1000.0,
                        m.lost
                    );
                }
            }
        }
        out
    }
}

/// Commit, machine and date, for the report's heading.
fn provenance() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "commit {}, {} CPUs ({cpu}), kernel {}, {}",
        run("git", &["rev-parse", "--short", "HEAD"]),
        cpus(),
        run("uname", &["-r"]),
        run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

const USAGE: &str = "busd-bench [--busd=PATH] [--rounds=N] [--quick] [--scale] [--json=FILE] [--plots=DIR] [--only=TEXT]... [--daemon=COLUMN]...";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some(procs::SUBSCRIBER) {
        // A subscriber process of a fan-out run, started by busd-bench itself.
        return procs::subscriber(std::env::args().skip(2).collect()).await;
    }
    let mut busd = std::env::current_exe()?
        .parent()
        .map(|p| p.join("busd"))
        .context("no busd next to busd-bench")?
        .display()
        .to_string();
    let (mut rounds, mut quick) = (3usize, false);
    let (mut json, mut plots) = (None, None);
    let mut only: Vec<String> = Vec::new();
    let mut keep: Option<Vec<String>> = None;
    let mut scaled = false;
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("--busd=") {
            busd = v.to_string();
        } else if let Some(v) = arg.strip_prefix("--rounds=") {
            rounds = v.parse()?;
        } else if let Some(v) = arg.strip_prefix("--json=") {
            json = Some(v.to_string());
        } else if let Some(v) = arg.strip_prefix("--plots=") {
            plots = Some(v.to_string());
        } else if arg == "--scale" {
            scaled = true;
        } else if let Some(v) = arg.strip_prefix("--only=") {
            only.push(v.to_string());
        } else if let Some(v) = arg.strip_prefix("--daemon=") {
            keep.get_or_insert_with(Vec::new).push(v.to_string());
        } else if arg == "--quick" {
            quick = true;
        } else if arg == "--help" || arg == "-h" {
            println!("usage: {USAGE}");
            return Ok(());
        } else {
            // (A usage error is one line, not an error with a backtrace.)
            eprintln!("busd-bench: unknown argument {arg:?}\nusage: {USAGE}");
            std::process::exit(2);
        }
    }
    if cpus() < 2 {
        eprintln!("one CPU: the daemon and the clients share it");
    }
    pin(0)?;
    // (column, program, fast path)
    let mut daemons = vec![("dbus-daemon", "/usr/bin/dbus-daemon".to_string(), false)];
    // The A/A control: dbus-daemon again, as a separate column; its ratio to the first shows
    // the noise of the run.
    daemons.push((
        "dbus-daemon (A/A control)",
        "/usr/bin/dbus-daemon".to_string(),
        false,
    ));
    if std::path::Path::new("/usr/bin/dbus-broker-launch").exists() {
        daemons.push((BROKER, BROKER.to_string(), false));
    } else {
        eprintln!("dbus-broker is not installed (apt-get install dbus-broker): not compared");
    }
    daemons.push(("busd", busd.clone(), false));
    daemons.push(("busd, fast path", busd, true));
    if let Some(keep) = &keep {
        daemons.retain(|(name, _, _)| keep.iter().any(|k| k == name));
        if daemons.is_empty() {
            bail!("--daemon= names none of: dbus-daemon, dbus-daemon (A/A control), {BROKER}, busd, busd, fast path");
        }
    }

    let mut scenarios = vec![Scenario::RoundTrip];
    for subs in [1usize, 10, 50, 200] {
        for payload in [64usize, 1024, 64 << 10, 1 << 20] {
            if quick && (subs > 10 || payload > 1024) {
                continue;
            }
            // 1 MiB to 50 or 200 subscribers takes minutes per daemon (the subscribers
            // decode every byte) and dbus-broker's quotas refuse it: not in the table.
            if payload >= 1 << 20 && subs > 10 {
                continue;
            }
            scenarios.push(Scenario::FanOut(Fan::all(subs, payload)));
        }
    }
    for subs in [10usize, 50] {
        for payload in [64usize, 1024] {
            if quick && (subs > 10 || payload > 64) {
                continue;
            }
            scenarios.push(Scenario::FanOutProcesses(Fan::all(subs, payload)));
        }
    }
    scenarios.push(Scenario::FanOut(Fan {
        window: 1,
        ..Fan::all(10, 64)
    }));
    scenarios.push(Scenario::FanOut(Fan {
        matching: 1,
        ..Fan::all(50, 64)
    }));
    scenarios.push(Scenario::Connect);
    scenarios.push(Scenario::NameChurn);
    if scaled {
        // Only the scale scenarios: each costs seconds per daemon.
        scale::raise_descriptor_limit();
        scenarios.clear();
        // The empty bus first: what the others are compared with.
        scenarios.push(Scenario::Idle(0));
        scenarios.push(Scenario::Unrelated(0, scale::Shape::Member));
        for n in [1000, 10000] {
            scenarios.push(Scenario::Idle(n));
            for shape in scale::Shape::ALL {
                scenarios.push(Scenario::Unrelated(n, shape));
            }
            scenarios.push(Scenario::Storm(n));
        }
        scenarios.push(Scenario::Members(1000));
    }
    if !only.is_empty() {
        let picked = |name: &str| {
            only.iter().any(|o| match o.strip_suffix('$') {
                Some(exact) => name == exact,
                None => name.contains(o.as_str()),
            })
        };
        scenarios.retain(|s| picked(&s.name()));
    }

    let floor_names = [
        "floor: zbus peer to peer",
        "floor: bare AF_UNIX ping-pong",
        "floor: bare AF_UNIX streams",
    ];
    let mut columns: Vec<String> = daemons.iter().map(|d| d.0.to_string()).collect();
    columns.extend(floor_names.iter().map(|f| f.to_string()));
    let mut r = Results {
        results: vec![vec![Vec::new(); columns.len()]; scenarios.len()],
        failures: vec![vec![Vec::new(); columns.len()]; scenarios.len()],
        scenarios,
        columns,
    };
    for round in 0..rounds {
        for (s, scenario) in r.scenarios.clone().into_iter().enumerate() {
            for k in 0..daemons.len() {
                // Rotate which daemon goes first.
                let d = (k + round + s) % daemons.len();
                let daemon = Daemon::start(&daemons[d].1, daemons[d].2)?;
                // A run that fails is shown in the table and fails the bench at the end;
                // the other runs go on.
                let m = match scenario.run(&daemon, quick).await {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("FAILED: {} on {}: {e:#}", scenario.name(), daemons[d].0);
                        r.failures[s][d].push(format!("{e:#}"));
                        continue;
                    }
                };
                if m.lost > 0 {
                    eprintln!(
                        "LOST: {} on {}: {} messages",
                        scenario.name(),
                        daemons[d].0,
                        m.lost
                    );
                }
                r.results[s][d].push(m);
            }
            let floors = match &keep {
                Some(keep) => keep.iter().any(|k| k.starts_with("floor")),
                None => true,
            };
            for (name, m) in if floors {
                scenario.floors(quick).await?
            } else {
                Vec::new()
            } {
                let c = r.column(name).expect("a floor column");
                r.results[s][c].push(m);
            }
            eprintln!("round {round}: {}", scenario.name());
        }
    }
    println!("Run: {}, {rounds} rounds, medians.\n", provenance());
    print!("{}", r.markdown());
    if let Some(path) = json {
        std::fs::write(&path, r.json_lines()).with_context(|| format!("writing {path}"))?;
    }
    if let Some(dir) = plots {
        plot::all(&r, std::path::Path::new(&dir))?;
    }
    let failed = r.failures.iter().flatten().flatten().count();
    let lost: u64 = r.results.iter().flatten().flatten().map(|m| m.lost).sum();
    if lost > 0 {
        bail!("{lost} messages were not delivered (or reached a subscriber without a rule)");
    }
    if failed > 0 {
        bail!("{failed} runs failed: see the table");
    }
    Ok(())
}

mod plot;
mod procs;
