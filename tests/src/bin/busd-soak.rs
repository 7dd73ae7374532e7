//! busd-soak: many clients doing calls, signals and name churn on one bus for a set time,
//! counting every message: any loss, duplicate, reordering or misrouted reply is reported
//! and makes the run fail. The daemon's memory is sampled before, during and after.
//!
//!   busd-soak --address=ADDRESS [--clients=N] [--seconds=S] [--daemon-pid=PID] [--fastpath]
//!
//! With `--fastpath`, clients connect through busd-shim on the fast path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use zbus::{connection, interface, Connection, MatchRule, MessageStream};

struct Echo;

#[interface(name = "org.example.Soak")]
impl Echo {
    fn echo(&self, seq: u64) -> u64 {
        seq
    }
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    bad_replies: AtomicU64,
    call_errors: AtomicU64,
    signals_sent: AtomicU64,
    signals_received: AtomicU64,
    out_of_order: AtomicU64,
    name_churns: AtomicU64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// What every client shares.
struct Run {
    clients: usize,
    address: String,
    fastpath: bool,
    /// How long traffic lasts once every client is ready.
    traffic: Duration,
    /// When the last client became ready (set by the barrier's leader).
    started: Mutex<Option<Instant>>,
    counts: Counts,
    /// (receiver, emitter) -> last sequence number seen.
    seen: Mutex<HashMap<(usize, usize), u64>>,
    /// Emitter -> signals it sent.
    sent: Mutex<HashMap<usize, u64>>,
    ready: tokio::sync::Barrier,
    /// Each fast-path connection's figures, for a report when the run does not end.
    shims: Mutex<Vec<Arc<busd_shim::Counters>>>,
    /// Clients whose traffic phase is over.
    finished: AtomicU64,
    /// What each client is doing (for the report of a run that does not end).
    doing: Vec<std::sync::atomic::AtomicU8>,
}

const CALLING: u8 = 1;
const EMITTING: u8 = 2;
const CHURNING: u8 = 3;
const DONE: u8 = 4;

async fn client(i: usize, run: Arc<Run>) -> Result<()> {
    let name = format!("org.example.Soak.C{i}");
    let (n, counts) = (run.clients, &run.counts);
    let builder = if run.fastpath {
        busd_shim::builder(&format!("{},fastpath=1", run.address)).await?
    } else {
        connection::Builder::address(run.address.as_str())?
    };
    let conn: Connection = builder
        .name(name.clone())?
        .serve_at("/soak", Echo)?
        .build()
        .await?;
    if let Some(c) = busd_shim::stats(&conn) {
        run.shims.lock().unwrap().push(c);
    }
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.example.Soak")?
        .member("Tick")?
        .build();
    let mut ticks = MessageStream::for_match_rule(rule, &conn, None).await?;
    let receiver = {
        let run = run.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ticks.next().await {
                let Ok((from, seq)) = m.body().deserialize::<(u64, u64)>() else {
                    continue;
                };
                run.counts.signals_received.fetch_add(1, Ordering::Relaxed);
                let mut seen = run.seen.lock().unwrap();
                let last = seen.entry((i, from as usize)).or_insert(u64::MAX);
                // Per-sender order: every signal of an emitter, once, in order.
                if seq != last.wrapping_add(1) {
                    run.counts.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *last = seq;
            }
        })
    };
    // Traffic starts once every client is connected and subscribed: a signal sent before a
    // receiver's rule exists is not one it may expect.
    if run.ready.wait().await.is_leader() {
        *run.started.lock().unwrap() = Some(Instant::now());
    }
    // (Every client waits for the leader's start time.)
    run.ready.wait().await;
    let deadline = run.started.lock().unwrap().expect("set by the leader") + run.traffic;
    let peer = format!("org.example.Soak.C{}", (i + 1) % n);
    let (mut seq, mut tick) = (0u64, 0u64);
    let mut last_churn = Instant::now();
    while Instant::now() < deadline {
        run.doing[i].store(CALLING, Ordering::Relaxed);
        match conn
            .call_method(
                Some(peer.as_str()),
                "/soak",
                Some("org.example.Soak"),
                "Echo",
                &seq,
            )
            .await
        {
            Ok(reply) => {
                counts.calls.fetch_add(1, Ordering::Relaxed);
                if reply.body().deserialize::<u64>().ok() != Some(seq) {
                    counts.bad_replies.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The peer may be between releasing and re-taking its name.
            Err(_) => {
                counts.call_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        seq += 1;
        if seq % 4 == 0 {
            run.doing[i].store(EMITTING, Ordering::Relaxed);
            conn.emit_signal(
                None::<&str>,
                "/soak",
                "org.example.Soak",
                "Tick",
                &(i as u64, tick),
            )
            .await?;
            tick += 1;
            counts.signals_sent.fetch_add(1, Ordering::Relaxed);
        }
        if last_churn.elapsed() > Duration::from_millis(500) {
            run.doing[i].store(CHURNING, Ordering::Relaxed);
            conn.release_name(name.as_str()).await?;
            conn.request_name(name.as_str()).await?;
            counts.name_churns.fetch_add(1, Ordering::Relaxed);
            last_churn = Instant::now();
        }
    }
    run.sent.lock().unwrap().insert(i, tick);
    run.finished.fetch_add(1, Ordering::Relaxed);
    run.doing[i].store(DONE, Ordering::Relaxed);
    // Everyone stops sending; then let the last signals arrive before leaving.
    run.ready.wait().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut address = None;
    let (mut clients, mut seconds, mut pid) = (100usize, 10u64, None::<u32>);
    let mut fastpath = false;
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("--address=") {
            address = Some(v.to_string());
        } else if let Some(v) = arg.strip_prefix("--clients=") {
            clients = v.parse()?;
        } else if let Some(v) = arg.strip_prefix("--seconds=") {
            seconds = v.parse()?;
        } else if let Some(v) = arg.strip_prefix("--daemon-pid=") {
            pid = Some(v.parse()?);
        } else if arg == "--fastpath" {
            fastpath = true;
        } else {
            bail!("usage: busd-soak --address=A [--clients=N] [--seconds=S] [--daemon-pid=PID] [--fastpath]");
        }
    }
    let address = address.context("--address= is required")?;
    // Every client holds a socket: make room for them.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    let rss_before = pid.and_then(rss_kib);
    let run = Arc::new(Run {
        clients,
        address,
        fastpath,
        // Traffic lasts `seconds` from when every client is connected and subscribed.
        traffic: Duration::from_secs(seconds),
        started: Mutex::new(None),
        counts: Counts::default(),
        seen: Mutex::new(HashMap::new()),
        sent: Mutex::new(HashMap::new()),
        ready: tokio::sync::Barrier::new(clients),
        shims: Mutex::new(Vec::new()),
        finished: AtomicU64::new(0),
        doing: (0..clients).map(|_| Default::default()).collect(),
    });
    let launched = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(i, run.clone())))
        .collect();
    // Memory under load: half way through the traffic.
    let started = loop {
        if let Some(t) = *run.started.lock().unwrap() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let setup = started - launched;
    eprintln!(
        "{clients} clients ready after {:.1} s; traffic for {seconds} s",
        setup.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
    let rss_peak = pid.and_then(rss_kib);
    // Bounded in time: a run whose clients do not all finish within 30 s of the end of the
    // traffic reports what is stuck and fails.
    let all = async {
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    };
    let grace = Duration::from_secs(seconds) / 2 + Duration::from_secs(30);
    match tokio::time::timeout(grace, all).await {
        Ok(r) => r?,
        Err(_) => {
            let shims = run.shims.lock().unwrap();
            let sum = |f: fn(&busd_shim::Counters) -> &AtomicU64| {
                shims
                    .iter()
                    .map(|c| f(c).load(Ordering::Relaxed))
                    .sum::<u64>()
            };
            let doing = |what| {
                run.doing
                    .iter()
                    .filter(|d| d.load(Ordering::Relaxed) == what)
                    .count()
            };
            bail!(
                "the run did not end: {} of {clients} clients finished their traffic \
                 ({} stuck in a call, {} emitting, {} changing their name); \
                 fast path: {} frames in backlogs, {} backlogged in all, {} refused",
                run.finished.load(Ordering::Relaxed),
                doing(CALLING),
                doing(EMITTING),
                doing(CHURNING),
                sum(|c| &c.backlog_depth),
                sum(|c| &c.backlogged),
                sum(|c| &c.rejected),
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = pid.and_then(rss_kib);

    // Every receiver must have every signal of every emitter (the rule matches all).
    let sent = run.sent.lock().unwrap().clone();
    let seen = run.seen.lock().unwrap().clone();
    let mut lost = 0u64;
    for r in 0..clients {
        for (&e, &n) in &sent {
            let got = seen.get(&(r, e)).map_or(0, |&last| last.wrapping_add(1));
            lost += n.saturating_sub(got);
        }
    }
    let c = &run.counts;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "clients {clients} connected and subscribed in {:.1} s, then {seconds} s of traffic: {} calls ({} errors while names churned, {} wrong replies), \
         {} signals sent, {} received ({} expected), {} out of order, {} lost, {} name churns",
        setup.as_secs_f64(),
        get(&c.calls),
        get(&c.call_errors),
        get(&c.bad_replies),
        get(&c.signals_sent),
        get(&c.signals_received),
        get(&c.signals_sent) * clients as u64,
        get(&c.out_of_order),
        lost,
        get(&c.name_churns),
    );
    if let (Some(b), Some(p), Some(a)) = (rss_before, rss_peak, rss_after) {
        println!("daemon RSS: {b} KiB before, {p} KiB under load, {a} KiB after the clients left");
    }
    if get(&c.bad_replies) > 0 || get(&c.out_of_order) > 0 || lost > 0 {
        bail!("messages were lost, duplicated, reordered or misrouted");
    }
    if get(&c.calls) == 0 || get(&c.signals_received) == 0 {
        bail!("no traffic: nothing was measured");
    }
    Ok(())
}
