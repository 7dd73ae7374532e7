//! The bus driver, `org.freedesktop.DBus`: a table of (interface, member, signature, handler),
//! with dbus-daemon's path rules, privilege checks and error messages (bus/driver.c).

use crate::bus::error::{DriverError, ErrorName};
use busd_match::MatchRule;
use busd_wire::names::{self as valid, BusName};
use tracing::{info, warn};

use busd_wire::marshal::Reader;
use busd_wire::message::{self, Message};

use super::compose::{self, DriverMessage};
use super::names::{self as reg, NameEvent};
use super::{Bus, Effect, PeerId, DBUS_INTERFACE, DBUS_NAME, DBUS_PATH};
use busd_match::protocol::{self as fastpath, JoinReply};

const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
const PEER: &str = "org.freedesktop.DBus.Peer";
const MONITORING: &str = "org.freedesktop.DBus.Monitoring";
const STATS: &str = "org.freedesktop.DBus.Debug.Stats";

/// An error reply: (D-Bus error name, message).
pub(super) type Failure = DriverError;
/// A successful reply: (body, signature), or None when the handler already replied.
pub(super) type Reply = Option<(Vec<u8>, &'static str)>;
type Handler = fn(&mut Bus, PeerId, &Message, &mut Reader<'_>) -> Result<Reply, Failure>;

mod credentials;
mod properties;

pub(super) use credentials::connection_arg;
use credentials::{
    get_adt_audit_session_data, get_connection_credentials, get_selinux_context,
    get_unix_process_id, get_unix_user,
};
pub use properties::introspection_xml;
use properties::{introspect, properties_get, properties_get_all, properties_set};

struct Method {
    name: &'static str,
    args: &'static str,
    out: &'static str,
    handler: Handler,
    any_path: bool,
    privileged: bool,
}

struct Interface {
    name: &'static str,
    methods: &'static [Method],
    any_path: bool,
    /// Listed in the `Interfaces` property (dbus-daemon omits the "uninteresting" ones).
    interesting: bool,
    signals_xml: &'static str,
}

const fn m(name: &'static str, args: &'static str, out: &'static str, handler: Handler) -> Method {
    Method {
        name,
        args,
        out,
        handler,
        any_path: true,
        privileged: false,
    }
}

static DBUS_METHODS: &[Method] = &[
    m("Hello", "", "s", hello),
    m("RequestName", "su", "u", request_name),
    m("ReleaseName", "s", "u", release_name),
    m("StartServiceByName", "su", "u", start_service_by_name),
    Method {
        privileged: true,
        any_path: false,
        ..m(
            "UpdateActivationEnvironment",
            "a{ss}",
            "",
            update_activation_environment,
        )
    },
    m("NameHasOwner", "s", "b", name_has_owner),
    m("ListNames", "", "as", list_names),
    m("ListActivatableNames", "", "as", list_activatable_names),
    m("AddMatch", "s", "", add_match),
    m("RemoveMatch", "s", "", remove_match),
    m("GetNameOwner", "s", "s", get_name_owner),
    m("ListQueuedOwners", "s", "as", list_queued_owners),
    m("GetConnectionUnixUser", "s", "u", get_unix_user),
    m("GetConnectionUnixProcessID", "s", "u", get_unix_process_id),
    m(
        "GetAdtAuditSessionData",
        "s",
        "ay",
        get_adt_audit_session_data,
    ),
    m(
        "GetConnectionSELinuxSecurityContext",
        "s",
        "ay",
        get_selinux_context,
    ),
    m("ReloadConfig", "", "", reload_config),
    m("GetId", "", "s", get_id),
    m(
        "GetConnectionCredentials",
        "s",
        "a{sv}",
        get_connection_credentials,
    ),
];

static PROPERTIES_METHODS: &[Method] = &[
    Method {
        any_path: false,
        ..m("Get", "ss", "v", properties_get)
    },
    Method {
        any_path: false,
        ..m("GetAll", "s", "a{sv}", properties_get_all)
    },
    Method {
        any_path: false,
        ..m("Set", "ssv", "", properties_set)
    },
];

static INTROSPECTABLE_METHODS: &[Method] = &[m("Introspect", "", "s", introspect)];

static MONITORING_METHODS: &[Method] = &[Method {
    privileged: true,
    any_path: false,
    ..m("BecomeMonitor", "asu", "", become_monitor)
}];

static STATS_METHODS: &[Method] = &[
    m("GetStats", "", "a{sv}", super::stats::get_stats),
    m(
        "GetConnectionStats",
        "s",
        "a{sv}",
        super::stats::get_connection_stats,
    ),
    m(
        "GetAllMatchRules",
        "",
        "a{sas}",
        super::stats::get_all_match_rules,
    ),
];

static FASTPATH_METHODS: &[Method] = &[
    Method {
        any_path: false,
        ..m(fastpath::JOIN, "", JoinReply::SIGNATURE, fast_join)
    },
    Method {
        any_path: false,
        ..m(fastpath::READY, "", "", fast_ready)
    },
];

static PEER_METHODS: &[Method] = &[
    m("GetMachineId", "", "s", get_machine_id),
    m("Ping", "", "", ping),
];

static INTERFACES: &[Interface] = &[
    Interface {
        name: DBUS_INTERFACE,
        methods: DBUS_METHODS,
        any_path: true,
        interesting: false,
        // Properties, then signals, in dbus-daemon 1.14's order (ActivatableServicesChanged
        // included: 1.14 declares and emits it).
        signals_xml: "    <property name=\"Features\" type=\"as\" access=\"read\">\n      <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"const\"/>\n    </property>\n    <property name=\"Interfaces\" type=\"as\" access=\"read\">\n      <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"const\"/>\n    </property>\n    <signal name=\"NameOwnerChanged\">\n      <arg type=\"s\"/>\n      <arg type=\"s\"/>\n      <arg type=\"s\"/>\n    </signal>\n    <signal name=\"NameLost\">\n      <arg type=\"s\"/>\n    </signal>\n    <signal name=\"NameAcquired\">\n      <arg type=\"s\"/>\n    </signal>\n    <signal name=\"ActivatableServicesChanged\">\n    </signal>\n",
    },
    Interface {
        name: PROPERTIES,
        methods: PROPERTIES_METHODS,
        any_path: false,
        interesting: false,
        signals_xml: "    <signal name=\"PropertiesChanged\">\n      <arg type=\"s\" name=\"interface_name\"/>\n      <arg type=\"a{sv}\" name=\"changed_properties\"/>\n      <arg type=\"as\" name=\"invalidated_properties\"/>\n    </signal>\n",
    },
    Interface { name: INTROSPECTABLE, methods: INTROSPECTABLE_METHODS, any_path: true, interesting: false, signals_xml: "" },
    Interface { name: MONITORING, methods: MONITORING_METHODS, any_path: false, interesting: true, signals_xml: "" },
    Interface { name: STATS, methods: STATS_METHODS, any_path: false, interesting: true, signals_xml: "" },
    Interface { name: PEER, methods: PEER_METHODS, any_path: true, interesting: false, signals_xml: "" },
    Interface { name: fastpath::INTERFACE, methods: FASTPATH_METHODS, any_path: false, interesting: false, signals_xml: "" },
];

/// A method call (or other message) addressed to `org.freedesktop.DBus`.
pub(super) fn handle(bus: &mut Bus, from: PeerId, msg: &Message) {
    if msg.msg_type() != message::METHOD_CALL {
        return;
    }
    let active = bus.peers.get(&from).is_some_and(|p| p.unique.is_some());
    let member = msg.member().unwrap_or("");
    let is_hello = member == "Hello" && matches!(msg.interface(), None | Some(DBUS_INTERFACE));
    if !(active || is_hello) {
        let e = DriverError::new(
            ErrorName::AccessDenied,
            "Client tried to send a message other than Hello without being registered".into(),
        );
        bus.error_reply(from, msg, &e);
        return;
    }
    let canonical = msg.path() == Some(DBUS_PATH);
    let mut found_interface = false;
    for iface in INTERFACES {
        if !(canonical || iface.any_path) {
            continue;
        }
        if msg.interface().is_some_and(|i| i != iface.name) {
            continue;
        }
        found_interface = true;
        let Some(method) = iface.methods.iter().find(|m| m.name == member) else {
            continue;
        };
        let result = call(bus, from, msg, method, canonical);
        match result {
            Ok(Some((body, sig))) => {
                if !(sig.is_empty() && msg.no_reply_expected()) {
                    bus.send_from_driver(Some(from), DriverMessage::reply(msg.serial(), body, sig));
                }
            }
            Ok(None) => {}
            Err(e) => bus.error_reply(from, msg, &e),
        }
        return;
    }
    let name = if found_interface {
        ErrorName::UnknownMethod
    } else {
        ErrorName::UnknownInterface
    };
    let text = format!("{DBUS_NAME} does not understand message {member}");
    bus.error_reply(from, msg, &DriverError::new(name, text));
}

fn call(
    bus: &mut Bus,
    from: PeerId,
    msg: &Message,
    method: &Method,
    canonical: bool,
) -> Result<Reply, Failure> {
    if method.privileged {
        check_privileged(bus, from, msg)?;
    }
    if !(canonical || method.any_path) {
        return Err(DriverError::new(
            ErrorName::AccessDenied,
            format!(
                "Method '{}' is only available at the canonical object path '{DBUS_PATH}'",
                method.name
            ),
        ));
    }
    if msg.signature() != method.args {
        return Err(DriverError::new(
            ErrorName::InvalidArgs,
            format!(
                "Call to {} has wrong args ({}, expected {})\n",
                method.name,
                msg.signature(),
                method.args
            ),
        ));
    }
    let mut r = msg.body_reader();
    let reply = (method.handler)(bus, from, msg, &mut r)?;
    debug_assert!(reply.as_ref().is_none_or(|(_, sig)| *sig == method.out));
    Ok(reply)
}

fn malformed() -> Failure {
    DriverError::new(
        ErrorName::InvalidArgs,
        "Message has invalid arguments".to_string(),
    )
}

/// Parses rule text for AddMatch, RemoveMatch and BecomeMonitor: an over-long rule is
/// `LimitsExceeded`, any other problem `MatchRuleInvalid` (as dbus-daemon answers).
fn parse_rule(text: &str) -> Result<MatchRule, Failure> {
    MatchRule::parse(text).map_err(|e| match e {
        busd_match::Error::TooLong(_) => DriverError::new(ErrorName::LimitsExceeded, e.to_string()),
        _ => DriverError::new(ErrorName::MatchRuleInvalid, e.to_string()),
    })
}

fn read_s<'a>(r: &mut Reader<'a>) -> Result<&'a str, Failure> {
    r.string().map_err(|_| malformed())
}

fn check_privileged(bus: &Bus, from: PeerId, msg: &Message) -> Result<(), Failure> {
    let peer = bus.peers.get(&from);
    let name = peer
        .and_then(|p| p.unique.as_deref())
        .unwrap_or("(inactive)");
    let method = msg.member().unwrap_or("");
    match peer.and_then(|p| p.creds.uid) {
        None => Err(DriverError::new(
            ErrorName::AccessDenied,
            format!("rejected attempt to call {method} by connection {name} with unknown uid"),
        )),
        Some(uid) if uid == 0 || uid == bus.settings.uid => Ok(()),
        Some(uid) => {
            warn!(
                method,
                peer = name,
                uid,
                "rejected attempt to call a privileged method"
            );
            Err(DriverError::new(
                ErrorName::AccessDenied,
                format!("rejected attempt to call {method} by connection {name} with uid {uid}"),
            ))
        }
    }
}

fn hello(bus: &mut Bus, from: PeerId, msg: &Message, _: &mut Reader<'_>) -> Result<Reply, Failure> {
    if bus.peers.get(&from).is_some_and(|p| p.unique.is_some()) {
        return Err(DriverError::new(
            ErrorName::Failed,
            "Already handled an Hello message".into(),
        ));
    }
    // A connection counts as complete once it said Hello; over a limit, the Hello fails and
    // the connection is left as it is, as dbus-daemon does (it may retry, or time out).
    let limits = &bus.settings.limits;
    let uid = bus.peers.get(&from).and_then(|p| p.creds.uid);
    let total = bus.peers.active_count() as u64;
    let same_user = uid.map_or(0, |u| bus.peers.active_of_uid(u)) as u64;
    let over = if total >= limits.max_completed_connections {
        Some((
            "The maximum number of active connections has been reached".to_string(),
            "max_completed_connections",
            limits.max_completed_connections,
        ))
    } else if same_user >= limits.max_connections_per_user {
        Some((
            format!(
                "The maximum number of active connections for UID {} has been reached",
                uid.unwrap_or_default()
            ),
            "max_connections_per_user",
            limits.max_connections_per_user,
        ))
    } else {
        None
    };
    if let Some((text, limit_name, limit)) = over {
        warn!("{text} ({limit_name}={limit})");
        return Err(DriverError::new(ErrorName::LimitsExceeded, text));
    }
    let Some(unique) = bus.peers.register(from) else {
        return Ok(None);
    };
    bus.note_bus_names(from);
    // The reply comes first, then the announcements (bus/driver.c, Hello).
    bus.send_from_driver(
        Some(from),
        DriverMessage::reply(msg.serial(), compose::body_s(&unique), "s"),
    );
    bus.emit_name_events(vec![
        NameEvent::OwnerChanged {
            name: unique.clone(),
            old: None,
            new: Some(from),
        },
        NameEvent::Acquired {
            peer: from,
            name: unique,
        },
    ]);
    Ok(None)
}

fn peer_name(bus: &Bus, peer: PeerId) -> String {
    bus.unique_of(peer).to_string()
}

fn request_name(
    bus: &mut Bus,
    from: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let name = read_s(r)?;
    let flags = r.u32().map_err(|_| malformed())?;
    let name = match BusName::parse(name) {
        Some(BusName::WellKnown(name)) => name,
        Some(BusName::Unique(name)) => {
            return Err(DriverError::new(
                ErrorName::InvalidArgs,
                format!("Cannot acquire a service starting with ':' such as \"{name}\""),
            ))
        }
        None => {
            return Err(DriverError::new(
                ErrorName::InvalidArgs,
                format!("Requested bus name \"{name}\" is not valid"),
            ))
        }
    };
    if name == DBUS_NAME {
        return Err(DriverError::new(ErrorName::InvalidArgs,
            format!(
                "Connection \"{}\" is not allowed to own the service \"{DBUS_NAME}\"because it is reserved for D-Bus' use only",
                peer_name(bus, from)
            ),
        ));
    }
    if !bus.peers.get(&from).is_some_and(|p| p.policy.may_own(name)) {
        return Err(DriverError::new(ErrorName::AccessDenied,
            format!(
                "Connection \"{}\" is not allowed to own the service \"{name}\" due to security policies in the configuration file",
                peer_name(bus, from)
            ),
        ));
    }
    let limit = bus.settings.limits.max_names_per_connection;
    let held = bus.names.held_by(from).len() as u64 + 1;
    if held >= limit && !bus.names.is_in_queue(name, from) {
        let text = format!(
            "Connection \"{}\" is not allowed to own more services (increase limits in configuration file if required; max_names_per_connection={limit})",
            peer_name(bus, from)
        );
        warn!("{text}");
        return Err(DriverError::new(ErrorName::LimitsExceeded, text));
    }
    let mut events = Vec::new();
    let code = bus.names.request(name, from, flags, &mut events);
    bus.note_bus_names(from);
    bus.emit_name_events(events);
    if code == reg::REQUEST_PRIMARY_OWNER {
        // Messages that started this service go on now, before the reply (as in
        // dbus-daemon).
        bus.activation_name_acquired(name, from);
    }
    Ok(Some((compose::body_u(code), "u")))
}

fn release_name(
    bus: &mut Bus,
    from: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let name = read_s(r)?;
    let name = match BusName::parse(name) {
        Some(BusName::WellKnown(name)) => name,
        Some(BusName::Unique(name)) => {
            return Err(DriverError::new(
                ErrorName::InvalidArgs,
                format!("Cannot release a service starting with ':' such as \"{name}\""),
            ))
        }
        None => {
            return Err(DriverError::new(
                ErrorName::InvalidArgs,
                format!("Given bus name \"{name}\" is not valid"),
            ))
        }
    };
    if name == DBUS_NAME {
        return Err(DriverError::new(
            ErrorName::InvalidArgs,
            format!("Cannot release the {DBUS_NAME} service because it is owned by the bus"),
        ));
    }
    let mut events = Vec::new();
    let code = bus.names.release(name, from, &mut events);
    bus.emit_name_events(events);
    Ok(Some((compose::body_u(code), "u")))
}

fn start_service_by_name(
    bus: &mut Bus,
    from: PeerId,
    msg: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let name = read_s(r)?.to_string();
    if name == DBUS_NAME {
        // DBUS_START_REPLY_ALREADY_RUNNING: the bus is always running.
        return Ok(Some((compose::body_u(2), "u")));
    }
    // Flags are unused, as in dbus-daemon. The answer comes when the name appears.
    let request = super::activation::Request::Start {
        serial: msg.serial(),
    };
    bus.activate(Some(from), request, &name)?;
    Ok(None)
}

fn update_activation_environment(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    if bus.settings.servicehelper.is_some() {
        return Err(DriverError::new(
            ErrorName::AccessDenied,
            "Cannot change activation environment on a system bus.".into(),
        ));
    }
    let vars: Vec<(String, String)> = r
        .string_dict()
        .map_err(|_| malformed())?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &vars {
        bus.activation_env.insert(k.clone(), v.clone());
    }
    if bus.settings.systemd_activation {
        bus.forward_environment_to_systemd(&vars);
    }
    Ok(Some((Vec::new(), "")))
}

fn name_has_owner(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let name = read_s(r)?;
    let owned = name == DBUS_NAME || bus.owner_of(name).is_some();
    Ok(Some((compose::body_b(owned), "b")))
}

fn list_names(bus: &mut Bus, _: PeerId, _: &Message, _: &mut Reader<'_>) -> Result<Reply, Failure> {
    let mut all: Vec<&str> = vec![DBUS_NAME];
    all.extend(bus.names.names());
    all.extend(bus.peers.unique_names());
    Ok(Some((compose::body_as(all), "as")))
}

fn list_activatable_names(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let mut names = vec![DBUS_NAME];
    names.extend(bus.activatable_names());
    Ok(Some((compose::body_as(names), "as")))
}

fn add_match(
    bus: &mut Bus,
    from: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let text = read_s(r)?;
    let rule = parse_rule(text)?;
    let limit = bus.settings.limits.max_match_rules_per_connection;
    let count = bus.matches.rules_of(from).len() as u64;
    if count >= limit {
        let text = format!(
            "Connection \"{}\" is not allowed to add more match rules (increase limits in configuration file if required; max_match_rules_per_connection={limit})",
            peer_name(bus, from)
        );
        warn!("{text}");
        return Err(DriverError::new(ErrorName::LimitsExceeded, text));
    }
    bus.matches.add(from, rule);
    bus.note_match_rules(from);
    bus.fast_rules_changed(from);
    Ok(Some((Vec::new(), "")))
}

fn remove_match(
    bus: &mut Bus,
    from: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let text = read_s(r)?;
    let rule = parse_rule(text)?;
    if !bus.matches.remove(from, &rule) {
        return Err(DriverError::new(
            ErrorName::MatchRuleNotFound,
            "The given match rule wasn't found and can't be removed".into(),
        ));
    }
    bus.fast_rules_changed(from);
    Ok(Some((Vec::new(), "")))
}

fn get_name_owner(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let name = read_s(r)?;
    if name == DBUS_NAME {
        return Ok(Some((compose::body_s(DBUS_NAME), "s")));
    }
    match bus.owner_of(name) {
        Some(p) => Ok(Some((compose::body_s(bus.unique_of(p)), "s"))),
        None => Err(DriverError::new(
            ErrorName::NameHasNoOwner,
            format!("Could not get owner of name '{name}': no such name"),
        )),
    }
}

fn list_queued_owners(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let name = read_s(r)?;
    if name == DBUS_NAME {
        return Ok(Some((compose::body_as([DBUS_NAME]), "as")));
    }
    let owners: Vec<String> = if valid::is_unique_name(name) {
        if bus.peers.by_unique(name).is_some() {
            vec![name.to_string()]
        } else {
            Vec::new()
        }
    } else {
        bus.names
            .queue(name)
            .map(|q| q.map(|p| bus.unique_of(p).to_string()).collect())
            .unwrap_or_default()
    };
    if owners.is_empty() {
        return Err(DriverError::new(
            ErrorName::NameHasNoOwner,
            format!("Could not get owners of name '{name}': no such name"),
        ));
    }
    Ok(Some((
        compose::body_as(owners.iter().map(String::as_str)),
        "as",
    )))
}

fn reload_config(
    bus: &mut Bus,
    from: PeerId,
    msg: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    bus.effects.push(Effect::ReloadConfig {
        peer: from,
        serial: msg.serial(),
    });
    Ok(None)
}

fn fast_join(
    bus: &mut Bus,
    from: PeerId,
    msg: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    bus.fast_join_request(from, msg)
}

fn fast_ready(
    bus: &mut Bus,
    from: PeerId,
    _: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    bus.fast_ready(from)
}

fn get_id(bus: &mut Bus, _: PeerId, _: &Message, _: &mut Reader<'_>) -> Result<Reply, Failure> {
    Ok(Some((compose::body_s(&bus.settings.guid), "s")))
}

fn get_machine_id(
    bus: &mut Bus,
    _: PeerId,
    _: &Message,
    _: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    Ok(Some((compose::body_s(&bus.settings.machine_id), "s")))
}

fn ping(_: &mut Bus, _: PeerId, _: &Message, _: &mut Reader<'_>) -> Result<Reply, Failure> {
    Ok(Some((Vec::new(), "")))
}

fn become_monitor(
    bus: &mut Bus,
    from: PeerId,
    msg: &Message,
    r: &mut Reader<'_>,
) -> Result<Reply, Failure> {
    let texts = r.string_array().map_err(|_| malformed())?;
    let flags = r.u32().map_err(|_| malformed())?;
    if flags != 0 {
        return Err(DriverError::new(
            ErrorName::InvalidArgs,
            "BecomeMonitor does not support any flags yet".into(),
        ));
    }
    let texts = if texts.is_empty() { vec![""] } else { texts };
    let mut rules = Vec::with_capacity(texts.len());
    for t in texts {
        let mut rule = parse_rule(t)?;
        // Monitors always eavesdrop.
        rule.eavesdrop = true;
        rules.push(rule);
    }
    // The reply goes out before the connection becomes a monitor.
    if !msg.no_reply_expected() {
        bus.send_from_driver(
            Some(from),
            DriverMessage::reply(msg.serial(), Vec::new(), ""),
        );
    }
    let unique = peer_name(bus, from);
    info!("Connection {unique} became a monitor.");
    bus.fast_leave(from);
    bus.fast_monitors_changed();
    bus.matches.remove_peer(from);
    bus.release_all_names(from);
    // Its unique name goes too, as if it had disconnected.
    bus.peers.unname(from);
    bus.emit_name_events(vec![
        NameEvent::Lost {
            peer: from,
            name: unique.clone(),
        },
        NameEvent::OwnerChanged {
            name: unique.clone(),
            old: Some(from),
            new: None,
        },
    ]);
    // The calls it made and those it owed a reply to are forgotten (without NoReply, as
    // busd always did here; their callers' counts go down now).
    bus.replies.forget_peer(from);
    bus.monitor_rules += rules.len();
    if let Some(p) = bus.peers.get_mut(&from) {
        p.monitor = Some(rules);
    }
    bus.monitors.push(from);
    bus.note_match_rules(from);
    Ok(None)
}

/// A method call without a destination: addressed to the bus connection itself, which answers
/// `org.freedesktop.DBus.Peer` as any libdbus connection does, and nothing else.
pub(super) fn handle_peer_to_peer(bus: &mut Bus, from: PeerId, msg: &Message) {
    let member = msg.member().unwrap_or("");
    match (msg.interface(), member, msg.signature()) {
        (None | Some(PEER), "Ping", "") => {
            bus.send_from_driver(
                Some(from),
                DriverMessage::reply(msg.serial(), Vec::new(), ""),
            );
        }
        (None | Some(PEER), "GetMachineId", "") => {
            let id = bus.settings.machine_id.clone();
            bus.send_from_driver(
                Some(from),
                DriverMessage::reply(msg.serial(), compose::body_s(&id), "s"),
            );
        }
        (iface, _, sig) => {
            let text = format!(
                "Method \"{member}\" with signature \"{sig}\" on interface \"{}\" doesn't exist\n",
                iface.unwrap_or("(null)")
            );
            bus.error_reply(from, msg, &DriverError::new(ErrorName::UnknownMethod, text));
        }
    }
}
