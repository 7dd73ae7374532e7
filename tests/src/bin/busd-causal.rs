//! busd-causal: tries to break causal order on the fast path (DESIGN 5.5) and counts how
//! often it did.
//!
//!   busd-causal --address=ADDRESS [--members=N] [--pings=P] [--seconds=LIMIT]
//!
//! N fast-path members (busd-shim connections on a multi-threaded runtime, so on every CPU)
//! each broadcast P `Ping(origin, n)` signals as fast as they can, and every member hears
//! every other member's broadcasts. For each ping, one other member (chosen by the ping's
//! number) reacts at once with a broadcast `Pong(reactor, origin, n)`. A member that gets
//! a pong before the ping it answers has seen causal order broken: a violation. Each
//! member also checks that every sender's messages arrive in the order sent, and that
//! none is lost or duplicated. Prints the counts; exits 1 on any violation, loss or
//! reordering, or when the run does not end within LIMIT seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, MatchRule, MessageStream};

const INTERFACE: &str = "org.example.Causal";
const PATH: &str = "/org/example/Causal";

#[derive(Default)]
struct Counts {
    pings: AtomicU64,
    pongs: AtomicU64,
    received: AtomicU64,
    violations: AtomicU64,
    out_of_order: AtomicU64,
}

struct Run {
    members: u32,
    pings: u64,
    counts: Counts,
}

/// The member that answers ping `n` of `origin`: never the origin itself.
fn reactor(members: u32, origin: u32, n: u64) -> u32 {
    (origin + 1 + (n % u64::from(members - 1)) as u32) % members
}

/// What one member has heard so far.
struct Heard {
    /// Per origin: the last ping number received (pings count from 1).
    pings: Vec<u64>,
    /// Per reactor: the last pong number received.
    pongs: Vec<u64>,
    pongs_total: u64,
}

async fn member(me: u32, conn: Connection, mut stream: MessageStream, run: Arc<Run>) -> Result<()> {
    let n = run.members as usize;
    let mut heard = Heard {
        pings: vec![0; n],
        pongs: vec![0; n],
        pongs_total: 0,
    };
    let emitter = SignalEmitter::new(&conn, PATH)?;
    let (mut sent_pings, mut sent_pongs) = (0u64, 0u64);
    // Every member hears every broadcast, its own included (as from dbus-daemon: its rule
    // matches them), and every ping gets exactly one pong.
    let all = run.pings * u64::from(run.members);
    let mut pings_heard = 0u64;
    loop {
        // Interleave: send a ping whenever nothing waits to be read.
        let next = if sent_pings < run.pings {
            match tokio::time::timeout(Duration::ZERO, stream.next()).await {
                Ok(m) => m,
                Err(_) => {
                    sent_pings += 1;
                    emitter
                        .emit(INTERFACE, "Ping", &(me, sent_pings))
                        .await
                        .context("sending a ping")?;
                    run.counts.pings.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        } else if pings_heard == all && heard.pongs_total == all {
            return Ok(());
        } else {
            stream.next().await
        };
        let msg = next.context("the connection ended")??;
        let header = msg.header();
        if header.interface().map(|i| i.as_str()) != Some(INTERFACE) {
            continue;
        }
        run.counts.received.fetch_add(1, Ordering::Relaxed);
        match header.member().map(|m| m.as_str()) {
            Some("Ping") => {
                let (origin, k): (u32, u64) = msg.body().deserialize()?;
                let last = &mut heard.pings[origin as usize];
                if k != *last + 1 {
                    run.counts.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *last = k.max(*last);
                pings_heard += 1;
                if reactor(run.members, origin, k) == me {
                    sent_pongs += 1;
                    emitter
                        .emit(INTERFACE, "Pong", &(me, sent_pongs, origin, k))
                        .await
                        .context("sending a pong")?;
                    run.counts.pongs.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("Pong") => {
                let (from, k, origin, ping): (u32, u64, u32, u64) = msg.body().deserialize()?;
                let last = &mut heard.pongs[from as usize];
                if k != *last + 1 {
                    run.counts.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *last = k.max(*last);
                heard.pongs_total += 1;
                // The pong answers a ping this member must have had first.
                if origin != me && heard.pings[origin as usize] < ping {
                    run.counts.violations.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let address = arg(&args, "address").context("--address=ADDRESS is required")?;
    let members: u32 = arg(&args, "members").map_or(Ok(8), |v| v.parse())?;
    let pings: u64 = arg(&args, "pings").map_or(Ok(1000), |v| v.parse())?;
    let limit: u64 = arg(&args, "seconds").map_or(Ok(300), |v| v.parse())?;
    if members < 3 {
        bail!("--members must be at least 3 (an origin, a reactor and a witness)");
    }
    let run = Arc::new(Run {
        members,
        pings,
        counts: Counts::default(),
    });
    let rule_text = format!("type='signal',interface='{INTERFACE}'");
    let rule = MatchRule::try_from(rule_text.as_str())?;
    let (mut conns, mut shims) = (Vec::new(), Vec::new());
    for _ in 0..members {
        let conn = busd_shim::builder(&format!("{address},fastpath=1"))
            .await?
            .build()
            .await?;
        // (The shim joins when the answer to Hello comes, which build() does not wait for.)
        let mut stats = None;
        for _ in 0..200 {
            stats = busd_shim::stats(&conn);
            if stats.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Some(stats) = stats else {
            bail!("the bus at {address} does not offer the fast path");
        };
        shims.push(stats);
        let stream = MessageStream::for_match_rule(rule.clone(), &conn, Some(4096)).await?;
        conns.push((conn, stream));
    }
    // Every member's rule is in everyone's view of the table before the first ping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, (conn, stream))| tokio::spawn(member(i as u32, conn, stream, Arc::clone(&run))))
        .collect();
    let all = futures_util::future::join_all(tasks);
    let finished = tokio::time::timeout(Duration::from_secs(limit), all).await;
    let elapsed = started.elapsed();
    let c = &run.counts;
    let (pings, pongs) = (
        c.pings.load(Ordering::Relaxed),
        c.pongs.load(Ordering::Relaxed),
    );
    println!(
        "members {members}, broadcasts {} ({pings} pings, {pongs} pongs) in {:.1} s; \
         received {}; causal violations {}; out of order {}",
        pings + pongs,
        elapsed.as_secs_f64(),
        c.received.load(Ordering::Relaxed),
        c.violations.load(Ordering::Relaxed),
        c.out_of_order.load(Ordering::Relaxed),
    );
    let sum = |f: fn(&busd_shim::Counters) -> &AtomicU64| {
        shims
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    println!(
        "sends that waited for an earlier one {}, waits given up {}, frames that waited in \
         backlogs {}",
        sum(|s| &s.causal_waits),
        sum(|s| &s.causal_timeouts),
        sum(|s| &s.backlogged),
    );
    let Ok(results) = finished else {
        bail!("the run did not end within {limit} s (messages lost or stuck)");
    };
    for r in results {
        r.context("a member task panicked")??;
    }
    if c.violations.load(Ordering::Relaxed) > 0 || c.out_of_order.load(Ordering::Relaxed) > 0 {
        bail!("causal order or per-sender order was broken");
    }
    Ok(())
}
