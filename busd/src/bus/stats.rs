//! `org.freedesktop.DBus.Debug.Stats` (dbus-daemon's bus/stats.c): counts and peaks of
//! connections, names, match rules and queues, and every connection's match rules; and
//! busd's own `busd.` keys: the fast path, cumulative traffic per connection, and monitors.

use super::compose;
use super::driver::{connection_arg, Failure, Reply};
use super::{Bus, PeerId};
use crate::bus::error::{DriverError, ErrorName};
use busd_wire::marshal::{Reader, Writer};
use busd_wire::message::Message;

/// Peaks dbus-daemon reports, updated as names and rules are added.
#[derive(Debug, Default)]
pub(super) struct Peaks {
    pub match_rules: u32,
    pub match_rules_per_connection: u32,
    pub bus_names: u32,
    pub bus_names_per_connection: u32,
    /// Serial numbers of the GetStats and GetConnectionStats answers.
    pub stats_serial: u32,
    pub connection_stats_serial: u32,
}

impl Bus {
    /// Every match rule on the bus, monitors' included (as dbus-daemon counts them).
    pub(super) fn match_rule_count(&self) -> usize {
        self.matches.len() + self.monitor_rules
    }

    /// A connection's match rules, or its monitor rules.
    fn rules_of_peer(&self, peer: PeerId) -> usize {
        let monitor = self.peers.get(&peer).and_then(|p| p.monitor.as_ref());
        self.matches.rules_of(peer).len() + monitor.map_or(0, Vec::len)
    }

    /// Call after a connection gained a match rule (or became a monitor).
    pub(super) fn note_match_rules(&mut self, peer: PeerId) {
        let total = self.match_rule_count() as u32;
        let mine = self.rules_of_peer(peer) as u32;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.peak_rules = p.peak_rules.max(mine);
        self.peaks.match_rules = self.peaks.match_rules.max(total);
        self.peaks.match_rules_per_connection = self.peaks.match_rules_per_connection.max(mine);
    }

    /// Call after a connection gained a name (its unique name included).
    pub(super) fn note_bus_names(&mut self, peer: PeerId) {
        let total = self.bus_name_count();
        let held = self.names.held_by(peer).len() as u32;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mine = held + u32::from(p.unique.is_some());
        p.peak_names = p.peak_names.max(mine);
        self.peaks.bus_names = self.peaks.bus_names.max(total);
        self.peaks.bus_names_per_connection = self.peaks.bus_names_per_connection.max(mine);
    }

    /// Names with an owner, unique names included (dbus-daemon's registry size).
    fn bus_name_count(&self) -> u32 {
        (self.peers.unique_name_count() + self.names.names().count()) as u32
    }

    /// The monitor that had the unique name `name` before it became one.
    fn monitor_named(&self, name: &str) -> Option<PeerId> {
        self.monitors
            .iter()
            .copied()
            .find(|m| self.peers.get(m).and_then(|p| p.unique.as_deref()) == Some(name))
    }
}

fn add_u(w: &mut Writer, key: &str, value: u32) {
    w.align(8);
    w.string(key);
    w.signature(b"u");
    w.u32(value);
}

fn add_t(w: &mut Writer, key: &str, value: u64) {
    w.align(8);
    w.string(key);
    w.signature(b"t");
    w.u64(value);
}

fn clamp(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

pub(super) fn get_stats(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let serial = bus.peaks.stats_serial;
    bus.peaks.stats_serial = serial.wrapping_add(1);
    let active = bus.peers.active_count() as u32;
    let incomplete = bus.peers.len() as u32 - active;
    let rules = bus.match_rule_count() as u32;
    let mut w = compose::writer();
    let a = w.begin_array(8);
    add_u(&mut w, "Serial", serial);
    add_u(&mut w, "ActiveConnections", active);
    add_u(&mut w, "IncompleteConnections", incomplete);
    add_u(&mut w, "MatchRules", rules);
    add_u(&mut w, "PeakMatchRules", bus.peaks.match_rules);
    add_u(
        &mut w,
        "PeakMatchRulesPerConnection",
        bus.peaks.match_rules_per_connection,
    );
    add_u(&mut w, "BusNames", bus.bus_name_count());
    add_u(&mut w, "busd.FastPathMembers", bus.fast_member_count());
    add_u(&mut w, "PeakBusNames", bus.peaks.bus_names);
    add_u(
        &mut w,
        "PeakBusNamesPerConnection",
        bus.peaks.bus_names_per_connection,
    );
    // Monitors by the unique names they had: no name designates a monitor any more, so
    // ListNames does not show them (as with dbus-daemon).
    w.align(8);
    w.string("busd.Monitors");
    w.signature(b"as");
    w.string_array(
        bus.monitors
            .iter()
            .filter_map(|m| bus.peers.get(m).and_then(|p| p.unique.as_deref())),
    );
    w.end_array(a);
    Ok(Some((w.into_vec(), "a{sv}")))
}

pub(super) fn get_connection_stats(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let asked = r.clone();
    let peer = match connection_arg(bus, r, "statistics") {
        Ok(Some(peer)) => peer,
        Ok(None) => return Err(DriverError::new(ErrorName::InvalidArgs,
            "GetConnectionStats is not meaningful for the message bus \"org.freedesktop.DBus\" itself".into(),
        )),
        // busd answers for a monitor too, by the unique name it had (busd.Monitors).
        Err(e) => match asked.clone().string().ok().and_then(|n| bus.monitor_named(n)) {
            Some(monitor) => monitor,
            None => return Err(e),
        },
    };
    let serial = bus.peaks.connection_stats_serial;
    bus.peaks.connection_stats_serial = serial.wrapping_add(1);
    let Some(p) = bus.peers.get(&peer) else {
        return Ok(Some((Vec::new(), "a{sv}")));
    };
    let mut w = compose::writer();
    let a = w.begin_array(8);
    add_u(&mut w, "Serial", serial);
    add_u(&mut w, "MatchRules", bus.rules_of_peer(peer) as u32);
    add_u(&mut w, "PeakMatchRules", p.peak_rules);
    add_u(
        &mut w,
        "BusNames",
        bus.names.held_by(peer).len() as u32 + u32::from(p.unique.is_some()),
    );
    add_u(&mut w, "PeakBusNames", p.peak_names);
    w.align(8);
    w.string("UniqueName");
    w.signature(b"s");
    w.string(p.unique.as_deref().unwrap_or(""));
    let (live, out) = (&p.live, &p.outgoing);
    let (live_peak_bytes, live_peak_fds) = live.peaks();
    let (out_peak_bytes, out_peak_fds) = out.peaks();
    add_u(&mut w, "IncomingMessages", clamp(live.messages()));
    add_u(&mut w, "IncomingBytes", clamp(live.bytes()));
    add_u(&mut w, "IncomingFDs", clamp(live.fds()));
    add_u(&mut w, "PeakIncomingBytes", clamp(live_peak_bytes));
    add_u(&mut w, "PeakIncomingFDs", clamp(live_peak_fds));
    add_u(&mut w, "OutgoingMessages", clamp(out.messages()));
    add_u(&mut w, "OutgoingBytes", clamp(out.bytes()));
    add_u(&mut w, "OutgoingFDs", clamp(out.fds()));
    add_u(&mut w, "PeakOutgoingBytes", clamp(out_peak_bytes));
    add_u(&mut w, "PeakOutgoingFDs", clamp(out_peak_fds));
    // busd's own: the connection's fast-path member id (0: standard path) and the frames
    // the daemon took from it on its inbox.
    add_u(&mut w, "busd.FastPathMember", p.fast.map_or(0, |f| f.id));
    add_u(&mut w, "busd.FastPathFrames", clamp(p.fast_frames));
    // Every message (and its bytes) the bus took from the connection, and queued for it,
    // since it connected: the queue meters' totals.
    let (sent_messages, sent_bytes) = live.totals();
    let (received_messages, received_bytes) = out.totals();
    add_t(&mut w, "busd.SentMessages", sent_messages);
    add_t(&mut w, "busd.SentBytes", sent_bytes);
    add_t(&mut w, "busd.ReceivedMessages", received_messages);
    add_t(&mut w, "busd.ReceivedBytes", received_bytes);
    add_u(&mut w, "busd.Monitor", u32::from(p.monitor.is_some()));
    // GetConnectionCredentials' figures, which it cannot give for a monitor.
    if let Some(pid) = p.creds.pid {
        add_u(&mut w, "busd.ProcessID", pid);
    }
    if let Some(uid) = p.creds.uid {
        add_u(&mut w, "busd.UnixUserID", uid);
    }
    // What the member's shim counts and publishes (docs/fastpath-protocol.md).
    for (name, value) in bus.fast_figures(peer) {
        add_u(&mut w, &format!("busd.FastPath.{name}"), clamp(value));
    }
    w.end_array(a);
    Ok(Some((w.into_vec(), "a{sv}")))
}

pub(super) fn get_all_match_rules(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let mut by_name: Vec<(&str, Vec<String>)> = bus
        .peers
        .iter()
        .filter_map(|(&id, p)| {
            let unique = p.unique.as_deref()?;
            let rules = bus.matches.rules_of(id);
            Some((unique, rules.iter().map(ToString::to_string).collect()))
        })
        .collect();
    by_name.sort();
    let mut w = compose::writer();
    let a = w.begin_array(8);
    for (name, rules) in by_name {
        w.align(8);
        w.string(name);
        w.string_array(rules.iter().map(String::as_str));
    }
    w.end_array(a);
    Ok(Some((w.into_vec(), "a{sas}")))
}
