//! Fan-out with every subscriber in a process of its own: busd-bench runs itself again as
//! `busd-bench --subscriber ...` once per subscriber, so the subscribers' work can run in
//! parallel with the emitter's and the daemon's (the fast path moves the daemon's work into
//! the clients; with every client on one thread, that parallelism cannot show).
//!
//! The subscriber processes are not pinned: they run on either CPU, beside the daemon (on
//! CPU 1) and the emitter (this process, on CPU 0). Each connects as the in-process
//! subscribers do ([`super::client_builder`], [`super::fan_rule`]) and speaks this protocol
//! with the parent:
//!
//! - arguments: `--subscriber INDEX SIGNALS WINDOW PAYLOAD FAST ACK_FD ADDRESS`;
//! - stdout: `ready JOINED` once its rule is added (`JOINED`: 1 when on the fast path);
//! - stdin: a byte `s` when the measured phase starts; end of file when it is over;
//! - fd `ACK_FD`, one pipe shared by every subscriber: two bytes, `INDEX` and the window's
//!   number modulo 256, when it has the last signal of a window (writes of two bytes to a
//!   pipe are not interleaved);
//! - stdout at end of file on stdin: `done RECEIVED DISORDERED UNEXPECTED CPU_NS LATENCY...`:
//!   signals received, received after a later one, not of the run (another sequence number,
//!   payload size or body), its CPU time (CLOCK_PROCESS_CPUTIME_ID) from `s` to end of file,
//!   then each signal's latency in nanoseconds (CLOCK_MONOTONIC, the same in every process);
//!   then it exits.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;
use zbus::MessageStream;

use super::{client_builder, connect, cpus, fan_rule, summarize, tick, Daemon, Fan, Measure};

/// The hidden first argument that makes busd-bench a subscriber process.
pub const SUBSCRIBER: &str = "--subscriber";

/// How long the subscriber processes may take to start, connect and add their rules.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a window may take to reach every subscriber (as in the in-process fan-out).
const WINDOW_WAIT: Duration = Duration::from_secs(10);
/// How often a window's wait looks for subscribers that ended.
const EXIT_CHECK: Duration = Duration::from_secs(1);
/// Windows that may time out before the run gives up on the subscribers.
const LATE_WINDOWS: usize = 3;
/// How long the subscribers may take to report once the run is over.
const REPORT_WAIT: Duration = Duration::from_secs(10);

/// The time of CLOCK_MONOTONIC, in nanoseconds: the signals' timestamps, comparable across
/// processes.
fn monotonic_ns() -> u64 {
    super::clock_ns(libc::CLOCK_MONOTONIC)
}

/// One subscriber process, as the parent sees it.
struct Sub {
    child: Child,
    pid: u32,
    /// Closed (None) when the measured phase is over.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Sub {
    /// The next line the subscriber writes, by `deadline`; `what` names it in errors.
    async fn line(&mut self, i: usize, what: &str, deadline: Instant) -> Result<String> {
        let mut line = String::new();
        let read = tokio::time::timeout_at(deadline, self.stdout.read_line(&mut line)).await;
        match read {
            Err(_) => bail!(
                "subscriber process {i} (pid {}) sent no {what} in time",
                self.pid
            ),
            Ok(Err(e)) => Err(e).context(format!("reading subscriber process {i}")),
            Ok(Ok(0)) => {
                let status = self.status().await;
                bail!(
                    "subscriber process {i} (pid {}) ended before its {what}: {status}",
                    self.pid
                )
            }
            Ok(Ok(_)) => Ok(line),
        }
    }

    /// How the process ended, for an error message.
    async fn status(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("cannot wait for it: {e}"),
            Err(_) => "still running".into(),
        }
    }
}

/// What one subscriber process reports at the end.
#[derive(Default)]
struct Report {
    received: u64,
    disordered: u64,
    unexpected: u64,
    cpu_ns: u64,
    latencies: Vec<u64>,
}

impl Report {
    fn parse(line: &str) -> Option<Report> {
        let mut words = line.strip_prefix("done ")?.split_whitespace();
        let mut next = || words.next()?.parse::<u64>().ok();
        let mut r = Report {
            received: next()?,
            disordered: next()?,
            unexpected: next()?,
            cpu_ns: next()?,
            latencies: Vec::new(),
        };
        while let Some(l) = next() {
            r.latencies.push(l);
        }
        (r.latencies.len() as u64 == r.received).then_some(r)
    }
}

/// [`super::fan_out`] with every subscriber in a process of its own (see the module
/// comment); the CPU time of the subscriber processes over the measured phase counts with
/// this process's.
pub async fn fan_out(daemon: &Daemon, fan: Fan, signals: u64) -> Result<Measure> {
    let Fan {
        subscribers,
        matching,
        payload,
        window,
    } = fan;
    if matching != subscribers || subscribers == 0 || subscribers > 256 {
        bail!("subscribers in processes: 1 to 256 subscribers, every one matching");
    }
    let (ack_read, ack_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut any_cpu = nix::sched::CpuSet::new();
    for cpu in 0..cpus() {
        any_cpu.set(cpu)?;
    }
    let exe = std::env::current_exe()?;
    let ack_fd = ack_write.as_raw_fd();
    let mut subs = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg(SUBSCRIBER)
            .args(
                [
                    i as u64,
                    signals,
                    window,
                    payload as u64,
                    daemon.fast as u64,
                ]
                .map(|v| v.to_string()),
            )
            .arg(ack_fd.to_string())
            .arg(&daemon.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let before_exec = move || {
            // The acknowledgement pipe stays open across exec (and only it: every other
            // descriptor of this process is close-on-exec).
            // SAFETY: F_SETFD on a descriptor this process owns.
            if unsafe { libc::fcntl(ack_fd, libc::F_SETFD, 0) } == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Not pinned: the subscriber runs on any CPU (this process is on CPU 0).
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &any_cpu)
                .map_err(std::io::Error::from)
        };
        // SAFETY: only fcntl and sched_setaffinity between fork and exec.
        unsafe {
            cmd.pre_exec(before_exec);
        }
        let mut child = cmd.spawn().context("cannot start a subscriber process")?;
        subs.push(Sub {
            pid: child.id().unwrap_or(0),
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().context("subscriber stdout")?),
            child,
        });
    }
    // (Only the subscribers hold the write end now: when they are all gone, reads end.)
    drop(ack_write);
    let mut acks = tokio::net::unix::pipe::Receiver::from_owned_fd(ack_read)?;

    let deadline = Instant::now() + READY_WAIT;
    let mut joined = 0;
    for (i, sub) in subs.iter_mut().enumerate() {
        let line = sub.line(i, "ready line", deadline).await?;
        match line.trim_end() {
            "ready 1" => joined += 1,
            "ready 0" => {}
            other => bail!("subscriber process {i} said {other:?}, not ready"),
        }
    }
    if daemon.fast && joined < subscribers {
        // (A subscriber on the standard path would flatter the fast path's figures.)
        bail!(
            "{} of {subscribers} subscriber processes did not join the fast path",
            subscribers - joined
        );
    }

    let emitter = connect(daemon).await?;
    let data = vec![0xabu8; payload];
    for (i, sub) in subs.iter_mut().enumerate() {
        let stdin = sub.stdin.as_mut().context("subscriber stdin")?;
        stdin.write_all(b"s").await?;
        stdin
            .flush()
            .await
            .with_context(|| format!("starting subscriber process {i}"))?;
    }
    let cpu0 = daemon.cpu();
    let start = std::time::Instant::now();
    // The window each subscriber acknowledged last.
    let mut acked = vec![u64::MAX; subscribers];
    let mut half: Option<u8> = None;
    let mut buf = [0u8; 1024];
    let mut late = 0;
    let (mut seq, mut w) = (0u64, 0u64);
    while seq < signals {
        for _ in 0..window.min(signals - seq) {
            tick(&emitter, seq, monotonic_ns(), &data).await?;
            seq += 1;
        }
        // The window is delivered when every subscriber has its last signal.
        let mut pending = subscribers;
        let deadline = Instant::now() + WINDOW_WAIT;
        while pending > 0 {
            // (Every second without an acknowledgement, whether a subscriber ended.)
            let slice = deadline.min(Instant::now() + EXIT_CHECK);
            let Ok(read) = tokio::time::timeout_at(slice, acks.read(&mut buf)).await else {
                let missing: Vec<usize> = (0..subscribers).filter(|&i| acked[i] != w).collect();
                for &i in &missing {
                    if let Some(status) = subs[i].child.try_wait()? {
                        bail!(
                            "subscriber process {i} (pid {}) ended in window {w}: {status}",
                            subs[i].pid
                        );
                    }
                }
                if Instant::now() < deadline {
                    continue;
                }
                late += 1;
                if late >= LATE_WINDOWS {
                    bail!(
                        "{late} windows were not delivered in {WINDOW_WAIT:?}; the last \
                         to subscriber processes {missing:?}"
                    );
                }
                eprintln!(
                    "window {w} did not reach subscriber processes {missing:?} in \
                     {WINDOW_WAIT:?}: counted as lost"
                );
                break;
            };
            let n = read.context("reading the subscribers' acknowledgements")?;
            if n == 0 {
                bail!("every subscriber process closed its acknowledgement pipe in window {w}");
            }
            for &b in &buf[..n] {
                let Some(index) = half.take() else {
                    half = Some(b);
                    continue;
                };
                // (An acknowledgement of an earlier window, after its time ran out, is
                // stale.)
                let i = index as usize;
                if b == w as u8 && i < subscribers && acked[i] != w {
                    acked[i] = w;
                    pending -= 1;
                }
            }
        }
        w += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut cpu = daemon.cpu() - cpu0;

    // End of file on their stdin: the subscribers report and exit.
    for sub in &mut subs {
        sub.stdin = None;
    }
    let deadline = Instant::now() + REPORT_WAIT;
    let mut total = Report::default();
    for (i, sub) in subs.iter_mut().enumerate() {
        let line = sub.line(i, "report", deadline).await?;
        let Some(mut r) = Report::parse(&line) else {
            bail!("subscriber process {i} reported {:?}", truncated(&line));
        };
        match tokio::time::timeout_at(deadline, sub.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => bail!("subscriber process {i} (pid {}): {status}", sub.pid),
            Ok(Err(e)) => return Err(e).context(format!("waiting for subscriber process {i}")),
            Err(_) => bail!(
                "subscriber process {i} (pid {}) did not exit after its report",
                sub.pid
            ),
        }
        total.received += r.received;
        total.disordered += r.disordered;
        total.unexpected += r.unexpected;
        total.cpu_ns += r.cpu_ns;
        total.latencies.append(&mut r.latencies);
    }
    cpu.clients += total.cpu_ns;
    if total.disordered > 0 {
        eprintln!(
            "{} signals reached subscriber processes after a later one",
            total.disordered
        );
    }
    if total.unexpected > 0 {
        eprintln!(
            "{} messages that the run did not send reached subscriber processes",
            total.unexpected
        );
    }
    let expected = signals * subscribers as u64;
    Ok(summarize(
        total.latencies,
        total.received as f64 / elapsed,
        cpu,
        total.received as usize,
        expected.saturating_sub(total.received) + total.disordered + total.unexpected,
    ))
}

fn truncated(line: &str) -> &str {
    match line.char_indices().nth(80) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// A subscriber process: `args` are what follows [`SUBSCRIBER`] (see the module comment).
pub async fn subscriber(args: Vec<String>) -> Result<()> {
    let [index, signals, window, payload, fast, ack_fd, address] = args.as_slice() else {
        bail!("usage: busd-bench {SUBSCRIBER} INDEX SIGNALS WINDOW PAYLOAD FAST ACK_FD ADDRESS");
    };
    let index: u8 = index.parse().context("INDEX")?;
    let signals: u64 = signals.parse().context("SIGNALS")?;
    let window: u64 = window.parse::<u64>().context("WINDOW")?.max(1);
    let payload: usize = payload.parse().context("PAYLOAD")?;
    let fast = fast == "1";
    let ack_fd: i32 = ack_fd.parse().context("ACK_FD")?;
    // SAFETY: the parent left this descriptor open across exec for this process, and
    // nothing else here owns it.
    let mut acks = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ack_fd) });
    let mut control = tokio::net::unix::pipe::Receiver::from_owned_fd(
        std::io::stdin().as_fd().try_clone_to_owned()?,
    )
    .context("stdin is not the parent's pipe")?;

    let conn = client_builder(address, fast).await?.build().await?;
    let mut stream = MessageStream::for_match_rule(fan_rule("Tick")?, &conn, None).await?;
    let joined = busd_shim::stats(&conn).is_some();
    say(&format!("ready {}\n", joined as u8))?;

    let (mut received, mut disordered, mut unexpected) = (0u64, 0u64, 0u64);
    let mut next = 0u64;
    let mut latencies = Vec::with_capacity(signals as usize);
    let mut cpu0 = None;
    let mut byte = [0u8; 16];
    loop {
        tokio::select! {
            // (The parent's `s` comes before the first signal: take it first.)
            biased;
            read = control.read(&mut byte) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if byte[..n].contains(&b's') {
                        cpu0 = Some(super::process_cpu_ns());
                    }
                }
            },
            m = stream.next() => {
                let Some(m) = m else { bail!("the bus closed the connection") };
                let Ok(m) = m else {
                    unexpected += 1;
                    continue;
                };
                let Ok((seq, sent_ns, data)) = m.body().deserialize::<(u64, u64, Vec<u8>)>()
                else {
                    unexpected += 1;
                    continue;
                };
                let now = monotonic_ns();
                if seq >= signals || data.len() != payload {
                    unexpected += 1;
                    continue;
                }
                // (A gap is a loss, which the count shows; an earlier one after a later
                // one is out of order.)
                if seq < next {
                    disordered += 1;
                }
                next = next.max(seq + 1);
                received += 1;
                latencies.push(now.saturating_sub(sent_ns));
                if seq % window == window - 1 || seq == signals - 1 {
                    use std::io::Write;
                    acks.write_all(&[index, (seq / window) as u8])
                        .context("acknowledging a window")?;
                }
            }
        }
    }
    let cpu = cpu0.map_or(0, |c| super::process_cpu_ns().saturating_sub(c));
    let mut report = format!("done {received} {disordered} {unexpected} {cpu}");
    for l in &latencies {
        use std::fmt::Write;
        let _ = write!(report, " {l}");
    }
    report.push('\n');
    say(&report)?;
    drop(stream);
    drop(conn);
    Ok(())
}

/// A line to the parent, on stdout.
fn say(line: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}
