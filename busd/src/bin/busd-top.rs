//! busd-top: what is on a bus, refreshed like top. Connections with their process, names,
//! match rules and traffic, from the bus's own driver (ListNames, GetConnectionCredentials,
//! org.freedesktop.DBus.Debug.Stats). Works with any bus that has Debug.Stats (busd, and
//! dbus-daemon built with --enable-stats, as Debian's is). On busd, each connection's path
//! (standard or fast) shows, and a second table gives each fast-path member's own figures
//! (what its shim published: sent directly and through the bus, fan-outs, receivers its
//! broadcasts skipped, received, unwanted, backlog depth, dropped, causal waits).
//!
//!   busd-top [--session | --system | --address=ADDRESS] [--once] [--interval=SECONDS]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use busd_wire::marshal::{Endian, Reader, Writer};
use busd_wire::message::{self, encode, HeaderFields, Message};

const USAGE: &str =
    "busd-top [--session | --system | --address=ADDRESS] [--once] [--interval=SECONDS]";

/// A blocking client that says Hello and calls the bus driver.
struct Client {
    stream: UnixStream,
    serial: u32,
}

fn socket_path(address: &str) -> Result<String> {
    for part in address.split(';') {
        let Some(params) = part.strip_prefix("unix:") else {
            continue;
        };
        for kv in params.split(',') {
            if let Some(p) = kv.strip_prefix("path=") {
                return busd_wire::address::unescape(p).context("bad address");
            }
        }
    }
    bail!("no unix:path= address in {address:?} (abstract sockets are not supported here)")
}

impl Client {
    fn connect(address: &str) -> Result<Client> {
        let path = socket_path(address)?;
        let mut stream =
            UnixStream::connect(&path).with_context(|| format!("cannot connect to {path}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        stream.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            stream.read_exact(&mut byte)?;
            line.push(byte[0]);
        }
        if !line.starts_with(b"OK ") {
            bail!(
                "authentication refused: {}",
                String::from_utf8_lossy(&line).trim()
            );
        }
        stream.write_all(b"BEGIN\r\n")?;
        let mut c = Client { stream, serial: 0 };
        c.call("org.freedesktop.DBus", "Hello", "", Vec::new())?;
        Ok(c)
    }

    /// Calls a driver method; returns the reply (or the error as an Err).
    fn call(&mut self, iface: &str, member: &str, sig: &str, body: Vec<u8>) -> Result<Message> {
        self.serial += 1;
        let f = HeaderFields {
            path: Some("/org/freedesktop/DBus"),
            interface: Some(iface),
            member: Some(member),
            destination: Some("org.freedesktop.DBus"),
            signature: (!sig.is_empty()).then_some(sig),
            ..Default::default()
        };
        let bytes = encode(
            Endian::Little,
            message::METHOD_CALL,
            0,
            self.serial,
            &f,
            &body,
        );
        self.stream.write_all(&bytes)?;
        loop {
            let mut fixed = [0u8; message::FIXED_HEADER_SIZE];
            self.stream.read_exact(&mut fixed)?;
            let total = message::total_length(&fixed)?;
            let mut all = fixed.to_vec();
            all.resize(total, 0);
            self.stream
                .read_exact(&mut all[message::FIXED_HEADER_SIZE..])?;
            let msg = Message::parse(all, Vec::new())?;
            if msg.reply_serial() != Some(self.serial) {
                continue; // a signal (NameAcquired...)
            }
            if msg.msg_type() == message::ERROR {
                let text = msg.body_reader().string().unwrap_or("").to_string();
                bail!("{}: {text}", msg.error_name().unwrap_or("error"));
            }
            return Ok(msg);
        }
    }

    fn call_s(&mut self, iface: &str, member: &str, arg: &str) -> Result<Message> {
        let mut w = Writer::new(Endian::Little);
        w.string(arg);
        self.call(iface, member, "s", w.into_vec())
    }
}

/// The `u`, `s` and `au` values of an `a{sv}` reply (others are skipped).
#[derive(Debug, Default)]
struct Dict {
    numbers: HashMap<String, u32>,
    strings: HashMap<String, String>,
}

fn read_dict(msg: &Message) -> Result<Dict> {
    let mut r = msg.body_reader();
    let mut d = Dict::default();
    let end = r
        .array_start(b'{')
        .map_err(|_| anyhow::anyhow!("bad a{{sv}}"))?;
    while r.pos() < end {
        let bad = |_| anyhow::anyhow!("bad a{{sv}}");
        r.align(8).map_err(bad)?;
        let key = r.string().map_err(bad)?.to_string();
        let sig = r.signature().map_err(bad)?.to_vec();
        match sig.as_slice() {
            b"u" => {
                d.numbers.insert(key, r.u32().map_err(bad)?);
            }
            b"s" => {
                d.strings.insert(key, r.string().map_err(bad)?.to_string());
            }
            other => {
                r.skip_value(other, 0).map_err(bad)?;
            }
        }
    }
    Ok(d)
}

fn read_rules(msg: &Message) -> Result<HashMap<String, usize>> {
    let mut r: Reader<'_> = msg.body_reader();
    let bad = |_| anyhow::anyhow!("bad a{{sas}}");
    let end = r.array_start(b'{').map_err(bad)?;
    let mut out = HashMap::new();
    while r.pos() < end {
        r.align(8).map_err(bad)?;
        let name = r.string().map_err(bad)?.to_string();
        let rules = r.string_array().map_err(bad)?;
        out.insert(name, rules.len());
    }
    Ok(out)
}

fn command_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn human(n: u32) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{}k", n / 1000),
        _ => format!("{}M", n / 1_000_000),
    }
}

/// One screen: totals, then one line per connection.
fn snapshot(c: &mut Client) -> Result<String> {
    const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
    let totals = read_dict(&c.call(STATS, "GetStats", "", Vec::new())?)?;
    let rules = read_rules(&c.call(STATS, "GetAllMatchRules", "", Vec::new())?)?;
    let names_msg = c.call("org.freedesktop.DBus", "ListNames", "", Vec::new())?;
    let all_names: Vec<String> = names_msg
        .body_reader()
        .string_array()
        .map_err(|_| anyhow::anyhow!("bad ListNames reply"))?
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut owned: HashMap<String, Vec<String>> = HashMap::new();
    for n in all_names
        .iter()
        .filter(|n| !n.starts_with(':') && *n != "org.freedesktop.DBus")
    {
        if let Ok(m) = c.call_s("org.freedesktop.DBus", "GetNameOwner", n) {
            if let Ok(owner) = m.body_reader().string() {
                owned.entry(owner.to_string()).or_default().push(n.clone());
            }
        }
    }
    let mut out = String::new();
    let n = |k: &str| totals.numbers.get(k).copied().unwrap_or(0);
    out.push_str(&format!(
        "connections: {} active, {} authenticating   names: {} (peak {})   match rules: {} (peak {})\n\n",
        n("ActiveConnections"),
        n("IncompleteConnections"),
        n("BusNames"),
        n("PeakBusNames"),
        n("MatchRules"),
        n("PeakMatchRules"),
    ));
    out.push_str(&format!(
        "{:<10} {:>7} {:>6} {:<16} {:<4} {:>5} {:>8} {:>8} {:>8} {:>8}  {}\n",
        "NAME",
        "PID",
        "UID",
        "COMMAND",
        "PATH",
        "RULES",
        "IN-MSG",
        "IN-BYTE",
        "OUT-MSG",
        "OUT-BYTE",
        "WELL-KNOWN NAMES"
    ));
    let mut uniques: Vec<&String> = all_names.iter().filter(|n| n.starts_with(':')).collect();
    uniques.sort_by_key(|u| {
        u.trim_start_matches(":1.")
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    });
    let mut fast = String::new();
    for u in uniques {
        let creds = c
            .call_s("org.freedesktop.DBus", "GetConnectionCredentials", u)
            .and_then(|m| read_dict(&m))
            .unwrap_or_default();
        let stats = c
            .call_s(STATS, "GetConnectionStats", u)
            .and_then(|m| read_dict(&m))
            .unwrap_or_default();
        let pid = creds.numbers.get("ProcessID").copied();
        let s = |k: &str| human(stats.numbers.get(k).copied().unwrap_or(0));
        let f = |k: &str| stats.numbers.get(&format!("busd.FastPath.{k}")).copied();
        let member = stats
            .numbers
            .get("busd.FastPathMember")
            .copied()
            .unwrap_or(0);
        if member != 0 {
            // What its shim published (nothing yet right after joining).
            let h = |k: &str| f(k).map_or("-".into(), human);
            let dropped = [
                "DroppedSpoofed",
                "DroppedMalformed",
                "DroppedNotDirect",
                "RejectedFullQueue",
            ]
            .iter()
            .map(|k| f(k))
            .sum::<Option<u32>>();
            fast.push_str(&format!(
                "{:<10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7}\n",
                u,
                member,
                h("SentDirect"),
                h("SentViaDaemon"),
                h("FanOuts"),
                h("ReceiversSkipped"),
                h("Received"),
                h("DroppedUnwanted"),
                h("BacklogDepth"),
                dropped.map_or("-".into(), human),
                h("CausalWaits"),
            ));
        }
        let mut names = owned.get(u).cloned().unwrap_or_default();
        names.sort();
        out.push_str(&format!(
            "{:<10} {:>7} {:>6} {:<16} {:<4} {:>5} {:>8} {:>8} {:>8} {:>8}  {}\n",
            u,
            pid.map_or("-".into(), |p| p.to_string()),
            creds
                .numbers
                .get("UnixUserID")
                .map_or("-".into(), |u| u.to_string()),
            pid.map_or("-".into(), command_of),
            if member != 0 { "fast" } else { "std" },
            rules.get(u.as_str()).copied().unwrap_or(0),
            s("IncomingMessages"),
            s("IncomingBytes"),
            s("OutgoingMessages"),
            s("OutgoingBytes"),
            names.join(" ")
        ));
    }
    if !fast.is_empty() {
        out.push_str(&format!(
            "\nfast path (as each member's shim counts)\n\
             {:<10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7}\n{fast}",
            "NAME",
            "MEMBER",
            "DIRECT",
            "VIA-BUS",
            "FAN-OUTS",
            "SKIPPED",
            "RECEIVED",
            "UNWANTED",
            "BACKLOG",
            "DROPPED",
            "WAITS",
        ));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let mut address = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
    let mut once = false;
    let mut interval = 2.0f64;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--session" => address = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok(),
            "--system" => {
                address = Some(
                    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                        .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into()),
                )
            }
            "--once" => once = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            a => {
                if let Some(v) = a.strip_prefix("--address=") {
                    address = Some(v.to_string());
                } else if let Some(v) = a.strip_prefix("--interval=") {
                    interval = v.parse().context("--interval takes seconds")?;
                } else {
                    bail!("unknown argument {a}\n{USAGE}");
                }
            }
        }
    }
    let address =
        address.context("no bus address: give --address=, or set DBUS_SESSION_BUS_ADDRESS")?;
    let mut client = Client::connect(&address)?;
    loop {
        let screen = snapshot(&mut client)?;
        if once {
            print!("{screen}");
            return Ok(());
        }
        // Clear the terminal and draw again, like top.
        print!("\x1b[H\x1b[2J{screen}");
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
}
