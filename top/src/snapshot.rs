//! One look at the bus, from its driver: ListNames and GetNameOwner (who owns what),
//! GetConnectionCredentials (process and user), and `org.freedesktop.DBus.Debug.Stats`
//! (counts, match rules and, on busd, each connection's traffic, fast-path figures and the
//! monitors). A bus without Debug.Stats still shows its connections and names.

use std::collections::HashMap;
use std::time::Instant;

use busd_wire::message::Message;

use crate::client::{Client, Error, Result, DBUS_INTERFACE, DBUS_NAME};

const STATS: &str = "org.freedesktop.DBus.Debug.Stats";

/// The bus-wide figures of GetStats.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub active: u64,
    pub authenticating: u64,
    pub names: u64,
    pub peak_names: u64,
    pub rules: u64,
    pub peak_rules: u64,
}

/// What a connection sent through the bus and what the bus delivered to it, since it
/// connected (busd's `busd.Sent*` and `busd.Received*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub sent_messages: u64,
    pub sent_bytes: u64,
    pub received_messages: u64,
    pub received_bytes: u64,
}

/// One connection, as the bus describes it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub unique: String,
    /// Well-known names it is the primary owner of, sorted.
    pub names: Vec<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// `/proc/PID/comm` (when busd-top runs where the bus's pids mean something).
    pub command: Option<String>,
    pub rules: Option<u64>,
    pub monitor: bool,
    /// Its fast-path member id, when it is on the fast path.
    pub fast_member: Option<u64>,
    pub traffic: Option<Traffic>,
    /// What its fast-path shim published (`busd.FastPath.<figure>`).
    pub fast: HashMap<String, u64>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken: Instant,
    /// None when the bus has no Debug.Stats.
    pub totals: Option<Totals>,
    /// How many monitors the bus reports (None: it does not say).
    pub monitors: Option<usize>,
    pub connections: Vec<Connection>,
}

/// The numbers (`u`, `t`) and string lists (`as`) of an `a{sv}` answer.
#[derive(Debug, Default)]
struct Dict {
    numbers: HashMap<String, u64>,
    lists: HashMap<String, Vec<String>>,
}

impl Dict {
    fn read(msg: &Message) -> Result<Dict> {
        let bad = |_| Error::Malformed;
        let mut r = msg.body_reader();
        let mut d = Dict::default();
        let end = r.array_start(b'{').map_err(bad)?;
        while r.pos() < end {
            r.align(8).map_err(bad)?;
            let key = r.string().map_err(bad)?.to_string();
            let sig = r.signature().map_err(bad)?.to_vec();
            match sig.as_slice() {
                b"u" => drop(d.numbers.insert(key, r.u32().map_err(bad)?.into())),
                b"t" => drop(d.numbers.insert(key, r.u64().map_err(bad)?)),
                b"as" => {
                    let list = r.string_array().map_err(bad)?;
                    d.lists
                        .insert(key, list.into_iter().map(str::to_string).collect());
                }
                other => drop(r.skip_value(other, 0).map_err(bad)?),
            }
        }
        Ok(d)
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.numbers.get(key).copied()
    }

    fn u32(&self, key: &str) -> Option<u32> {
        self.number(key).and_then(|n| u32::try_from(n).ok())
    }
}

/// An answer the driver gave as an error: the bus lacks the method, or the connection left
/// between ListNames and the call. Anything else (the connection to the bus broke) is fatal.
fn answered<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Call { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn command_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The `N` of a unique name `:1.N`, for ordering connections by age.
pub fn unique_order(unique: &str) -> (u64, &str) {
    let n = unique
        .rsplit_once('.')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u64::MAX);
    (n, unique)
}

impl Snapshot {
    pub fn take(c: &mut Client) -> Result<Snapshot> {
        let stats = answered(c.call(STATS, "GetStats", None).and_then(|m| Dict::read(&m)))?;
        let totals = stats.as_ref().map(|d| {
            let n = |k: &str| d.number(k).unwrap_or(0);
            Totals {
                active: n("ActiveConnections"),
                authenticating: n("IncompleteConnections"),
                names: n("BusNames"),
                peak_names: n("PeakBusNames"),
                rules: n("MatchRules"),
                peak_rules: n("PeakMatchRules"),
            }
        });
        let monitors = stats
            .as_ref()
            .and_then(|d| d.lists.get("busd.Monitors").cloned());
        let all_names: Vec<String> = c
            .call(DBUS_INTERFACE, "ListNames", None)?
            .body_reader()
            .string_array()
            .map_err(|_| Error::Malformed)?
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut owned: HashMap<String, Vec<String>> = HashMap::new();
        for name in all_names
            .iter()
            .filter(|n| !n.starts_with(':') && *n != DBUS_NAME)
        {
            let Some(reply) = answered(c.call(DBUS_INTERFACE, "GetNameOwner", Some(name)))? else {
                continue;
            };
            if let Ok(owner) = reply.body_reader().string() {
                owned
                    .entry(owner.to_string())
                    .or_default()
                    .push(name.clone());
            }
        }
        let mut connections = Vec::new();
        let uniques = all_names.iter().filter(|n| n.starts_with(':'));
        let monitor_names = monitors.iter().flatten();
        for (unique, monitor) in uniques
            .map(|u| (u, false))
            .chain(monitor_names.map(|m| (m, true)))
        {
            let figures = if stats.is_some() {
                answered(
                    c.call(STATS, "GetConnectionStats", Some(unique))
                        .and_then(|m| Dict::read(&m)),
                )?
            } else {
                None
            };
            // A monitor's name designates nobody: GetConnectionCredentials cannot answer.
            let creds = if monitor {
                None
            } else {
                answered(
                    c.call(DBUS_INTERFACE, "GetConnectionCredentials", Some(unique))
                        .and_then(|m| Dict::read(&m)),
                )?
            };
            if monitor && figures.is_none() {
                continue; // it left meanwhile
            }
            let from_creds = |k: &str| creds.as_ref().and_then(|d| d.u32(k));
            let from_stats = |k: &str| figures.as_ref().and_then(|d| d.u32(k));
            let pid = from_creds("ProcessID").or_else(|| from_stats("busd.ProcessID"));
            let traffic = figures.as_ref().and_then(|d| {
                Some(Traffic {
                    sent_messages: d.number("busd.SentMessages")?,
                    sent_bytes: d.number("busd.SentBytes")?,
                    received_messages: d.number("busd.ReceivedMessages")?,
                    received_bytes: d.number("busd.ReceivedBytes")?,
                })
            });
            let fast = figures
                .iter()
                .flat_map(|d| &d.numbers)
                .filter_map(|(k, v)| Some((k.strip_prefix("busd.FastPath.")?.to_string(), *v)))
                .collect();
            let mut names = owned.remove(unique).unwrap_or_default();
            names.sort();
            connections.push(Connection {
                unique: unique.clone(),
                names,
                pid,
                uid: from_creds("UnixUserID").or_else(|| from_stats("busd.UnixUserID")),
                command: pid.and_then(command_of),
                rules: figures.as_ref().and_then(|d| d.number("MatchRules")),
                monitor,
                fast_member: figures
                    .as_ref()
                    .and_then(|d| d.number("busd.FastPathMember"))
                    .filter(|&m| m != 0),
                traffic,
                fast,
            });
        }
        connections.sort_by(|a, b| unique_order(&a.unique).cmp(&unique_order(&b.unique)));
        Ok(Snapshot {
            taken: Instant::now(),
            totals,
            monitors: monitors.map(|m| m.len()),
            connections,
        })
    }
}
