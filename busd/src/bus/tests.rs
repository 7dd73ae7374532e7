//! Bus state machine tests: peers are plain ids, messages are built in memory, and effects are
//! inspected without sockets.

use super::*;
use busd_wire::marshal::{Endian, Writer};
use busd_wire::message::{encode, HeaderFields, Message};
use std::time::Duration;

use activation::ServiceEntry;

/// The stock session bus's policy.
const SESSION_POLICY: &str = r#"<policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
</policy>"#;

fn bus() -> Bus {
    bus_with(SESSION_POLICY, busd_policy::Limits::default())
}

struct NoAccounts;

impl busd_policy::Accounts for NoAccounts {
    fn user_id(&self, _: &str) -> Option<u32> {
        None
    }
    fn group_id(&self, _: &str) -> Option<u32> {
        None
    }
}

fn compile(policy: &str) -> Rc<CompiledPolicy> {
    let text = format!("<busconfig>{policy}</busconfig>");
    let config =
        busd_policy::Config::from_str_at(&text, std::path::Path::new("/test.conf")).unwrap();
    Rc::new(CompiledPolicy::compile(&config, &NoAccounts).unwrap())
}

fn bus_with(policy: &str, limits: busd_policy::Limits) -> Bus {
    Bus::new(BusSettings {
        guid: "0123456789abcdef0123456789abcdef".into(),
        machine_id: "fedcba9876543210fedcba9876543210".into(),
        uid: 1000,
        pid: 1,
        limits,
        policy: compile(policy),
        servicehelper: None,
        systemd_activation: false,
    })
}

fn creds(uid: u32, pid: u32) -> Credentials {
    Credentials {
        uid: Some(uid),
        pid: Some(pid),
        gid: Some(uid),
        groups: vec![uid],
        ..Default::default()
    }
}

struct Sent {
    to: PeerId,
    msg: Message,
}

fn drain(bus: &mut Bus) -> Vec<Sent> {
    bus.take_effects()
        .filter_map(|e| match e {
            Effect::Send(to, out) => Some(Sent {
                to,
                msg: Message::parse(out.bytes.to_vec(), Vec::new()).unwrap(),
            }),
            _ => None,
        })
        .collect()
}

fn call(serial: u32, dest: &str, iface: &str, member: &str, sig: &str, body: Vec<u8>) -> Message {
    let f = HeaderFields {
        path: Some(DBUS_PATH),
        interface: Some(iface),
        member: Some(member),
        destination: Some(dest),
        signature: Some(sig),
        ..Default::default()
    };
    Message::parse(
        encode(Endian::Little, message::METHOD_CALL, 0, serial, &f, &body),
        Vec::new(),
    )
    .unwrap()
}

/// A call to the bus driver's own interface.
fn dcall(serial: u32, member: &str, sig: &str, body: Vec<u8>) -> Message {
    call(serial, DBUS_NAME, DBUS_INTERFACE, member, sig, body)
}

fn s_body(s: &str) -> Vec<u8> {
    let mut w = Writer::new(Endian::Little);
    w.string(s);
    w.into_vec()
}

fn su_body(s: &str, u: u32) -> Vec<u8> {
    let mut w = Writer::new(Endian::Little);
    w.string(s);
    w.u32(u);
    w.into_vec()
}

/// Connects and says Hello; returns the unique name.
fn join(bus: &mut Bus, id: PeerId) -> String {
    join_with(bus, id, Meters::default())
}

fn join_with(bus: &mut Bus, id: PeerId, meters: Meters) -> String {
    bus.connect(id, creds(1000, id as u32), true, meters);
    bus.handle_message(id, dcall(1, "Hello", "", vec![]));
    let sent = drain(bus);
    sent[0].msg.body_reader().string().unwrap().to_string()
}

fn describe(s: &Sent) -> String {
    format!(
        "{}:{}",
        s.to,
        s.msg.member().or(s.msg.error_name()).unwrap_or(
            if s.msg.msg_type() == message::METHOD_RETURN {
                "return"
            } else {
                "?"
            }
        )
    )
}

#[test]
fn hello_assigns_unique_names_and_replies_before_name_acquired() {
    let mut b = bus();
    b.connect(7, Credentials::default(), false, Meters::default());
    b.handle_message(7, dcall(1, "Hello", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!(
        sent.iter().map(describe).collect::<Vec<_>>(),
        vec!["7:return", "7:NameAcquired"]
    );
    assert_eq!(sent[0].msg.body_reader().string().unwrap(), ":1.0");
    assert_eq!(sent[0].msg.destination(), Some(":1.0"));
    assert_eq!(sent[0].msg.sender(), Some(DBUS_NAME));
    assert_eq!(join(&mut b, 8), ":1.1");
    // A second Hello is an error.
    b.handle_message(7, dcall(2, "Hello", "", vec![]));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.Failed")
    );
}

#[test]
fn messages_before_hello_are_refused() {
    let mut b = bus();
    b.connect(1, Credentials::default(), false, Meters::default());
    b.handle_message(1, dcall(1, "ListNames", "", vec![]));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied")
    );
    b.handle_message(1, call(2, "org.example", "org.example", "Foo", "", vec![]));
    assert!(matches!(
        b.take_effects().next(),
        Some(Effect::Disconnect(1))
    ));
}

#[test]
fn request_name_announces_in_dbus_daemon_order() {
    let mut b = bus();
    join(&mut b, 1);
    join(&mut b, 2);
    // Peer 2 watches NameOwnerChanged.
    b.handle_message(
        2,
        dcall(2, "AddMatch", "s", s_body("member='NameOwnerChanged'")),
    );
    drain(&mut b);
    b.handle_message(
        1,
        dcall(2, "RequestName", "su", su_body("org.example.A", 0)),
    );
    let sent = drain(&mut b);
    assert_eq!(
        sent.iter().map(describe).collect::<Vec<_>>(),
        vec!["2:NameOwnerChanged", "1:NameAcquired", "1:return"]
    );
    let mut r = sent[0].msg.body_reader();
    assert_eq!(
        (
            r.string().unwrap(),
            r.string().unwrap(),
            r.string().unwrap()
        ),
        ("org.example.A", "", ":1.0")
    );
    // Disconnecting releases the name and then the unique name.
    b.disconnected(1);
    let sent = drain(&mut b);
    let changes: Vec<(String, String, String)> = sent
        .iter()
        .map(|s| {
            let mut r = s.msg.body_reader();
            (
                r.string().unwrap().into(),
                r.string().unwrap().into(),
                r.string().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("org.example.A".into(), ":1.0".into(), "".into()),
            (":1.0".into(), ":1.0".into(), "".into())
        ]
    );
}

/// Takes the effects; a request to read the service directories again is answered with
/// `entries` (what the shell would find), and what follows is taken too.
fn drain_rescanned(bus: &mut Bus, entries: Vec<ServiceEntry>) -> Vec<Sent> {
    let rescan = bus
        .take_effects()
        .any(|e| matches!(e, Effect::RescanServices));
    assert!(
        rescan,
        "an unknown name makes the bus read its directories again"
    );
    bus.services_rescanned(entries);
    drain(bus)
}

#[test]
fn unknown_destinations_get_dbus_daemons_errors() {
    let mut b = bus();
    join(&mut b, 1);
    b.handle_message(1, call(5, "org.nobody", "org.x", "M", "", vec![]));
    let e = drain_rescanned(&mut b, Vec::new());
    assert_eq!(
        e[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown")
    );
    assert_eq!(e[0].msg.reply_serial(), Some(5));
    b.handle_message(1, call(6, ":1.99", "org.x", "M", "", vec![]));
    let e = drain_rescanned(&mut b, Vec::new());
    assert_eq!(
        e[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown")
    );
    assert_eq!(
        e[0].msg.body_reader().string().unwrap(),
        "The name :1.99 was not provided by any .service files"
    );
}

#[test]
fn a_service_file_added_after_the_last_reload_is_found_when_asked_for() {
    let mut b = bus();
    join(&mut b, 1);
    let mut body = Writer::new(Endian::Little);
    body.string("org.example.New");
    body.u32(0);
    b.handle_message(
        1,
        call(
            5,
            DBUS_NAME,
            DBUS_INTERFACE,
            "StartServiceByName",
            "su",
            body.into_vec(),
        ),
    );
    // The directories are read again before anything is answered; they hold it now.
    let entry = ServiceEntry {
        name: "org.example.New".into(),
        exec: "/usr/bin/example-new".into(),
        user: None,
        systemd_service: None,
        assumed_apparmor_label: None,
    };
    let rescan = b
        .take_effects()
        .any(|e| matches!(e, Effect::RescanServices));
    assert!(rescan);
    b.services_rescanned(vec![entry]);
    let spawned = b
        .take_effects()
        .any(|e| matches!(e, Effect::Spawn { ref service, .. } if service == "org.example.New"));
    assert!(spawned, "the service is started");
}

fn reply(serial: u32, reply_serial: u32, dest: &str) -> Message {
    let f = HeaderFields {
        reply_serial: Some(reply_serial),
        destination: Some(dest),
        ..Default::default()
    };
    Message::parse(
        encode(Endian::Little, message::METHOD_RETURN, 0, serial, &f, &[]),
        Vec::new(),
    )
    .unwrap()
}

#[test]
fn unrequested_replies_are_up_to_the_policy() {
    // The session policy's eavesdrop="true" send rule lets unrequested replies through, as
    // on dbus-daemon.
    let mut b = bus();
    join(&mut b, 1);
    join(&mut b, 2);
    b.handle_message(2, reply(1, 11, ":1.0"));
    let sent = drain(&mut b);
    assert_eq!((sent.len(), sent[0].to), (1, 1));

    // A policy without it refuses them, and tells the sender.
    let mut b = bus_with(
        r#"<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/></policy>"#,
        busd_policy::Limits::default(),
    );
    join(&mut b, 1);
    let callee = join(&mut b, 2);
    b.handle_message(2, reply(1, 11, ":1.0"));
    let sent = drain(&mut b);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, 2);
    assert_eq!(
        sent[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied")
    );
    let text = sent[0].msg.body_reader().string().unwrap().to_string();
    assert!(
        text.starts_with("Rejected send message, 0 matched rules; type=\"method_return\", sender=\":1.1\" (uid=1000 pid=2 comm=\"\")"),
        "{text}"
    );
    // A requested reply passes, once.
    b.handle_message(1, call(10, &callee, "org.x", "M", "", vec![]));
    assert_eq!(drain(&mut b)[0].to, 2);
    b.handle_message(2, reply(2, 10, ":1.0"));
    let sent = drain(&mut b);
    assert_eq!((sent[0].to, sent[0].msg.reply_serial()), (1, Some(10)));
    b.handle_message(2, reply(3, 10, ":1.0"));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied")
    );
}

#[test]
fn send_and_receive_rules_refuse_with_dbus_daemons_errors() {
    let mut b = bus_with(
        r#"<policy context="default">
             <allow send_destination="*"/><allow receive_sender="*"/><allow own="*"/>
             <deny send_interface="org.example.Secret"/>
             <deny receive_interface="org.example.Private"/>
           </policy>"#,
        busd_policy::Limits::default(),
    );
    join(&mut b, 1);
    let callee = join(&mut b, 2);
    b.handle_message(1, call(5, &callee, "org.example.Secret", "M", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!(sent.len(), 1, "only the error, nothing reaches the callee");
    assert_eq!(sent[0].to, 1);
    let text = sent[0].msg.body_reader().string().unwrap().to_string();
    assert!(
        text.starts_with("Rejected send message, 2 matched rules; type=\"method_call\""),
        "{text}"
    );
    assert!(text.ends_with("interface=\"org.example.Secret\" member=\"M\" error name=\"(unset)\" requested_reply=\"0\" destination=\":1.1\" (uid=1000 pid=2 comm=\"\")"), "{text}");
    b.handle_message(1, call(6, &callee, "org.example.Private", "M", "", vec![]));
    let text = drain(&mut b)[0]
        .msg
        .body_reader()
        .string()
        .unwrap()
        .to_string();
    assert!(
        text.starts_with("Rejected receive message, 2 matched rules"),
        "{text}"
    );
    b.handle_message(1, call(7, &callee, "org.example.Public", "M", "", vec![]));
    assert_eq!(drain(&mut b)[0].to, 2);
}

#[test]
fn own_rules_refuse_request_name() {
    let mut b = bus_with(
        r#"<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/>
             <allow own="*"/><deny own_prefix="org.example"/></policy>"#,
        busd_policy::Limits::default(),
    );
    join(&mut b, 1);
    b.handle_message(
        1,
        dcall(2, "RequestName", "su", su_body("org.example.Foo", 0)),
    );
    let sent = drain(&mut b);
    assert_eq!(
        sent[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied")
    );
    assert_eq!(
        sent[0].msg.body_reader().string().unwrap(),
        "Connection \":1.0\" is not allowed to own the service \"org.example.Foo\" due to security policies in the configuration file"
    );
    b.handle_message(1, dcall(3, "RequestName", "su", su_body("org.other", 0)));
    assert!(drain(&mut b)
        .iter()
        .any(|s| s.msg.msg_type() == message::METHOD_RETURN && s.msg.reply_serial() == Some(3)));
}

#[test]
fn calls_to_the_driver_are_checked_against_send_rules() {
    let mut b = bus_with(
        r#"<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/>
             <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="ListNames"/>
           </policy>"#,
        busd_policy::Limits::default(),
    );
    join(&mut b, 1);
    b.handle_message(1, dcall(2, "ListNames", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied")
    );
    b.handle_message(1, dcall(3, "GetId", "", vec![]));
    assert_eq!(drain(&mut b)[0].msg.msg_type(), message::METHOD_RETURN);
}

#[test]
fn a_full_queue_refuses_with_limits_exceeded() {
    let limits = busd_policy::Limits {
        max_outgoing_bytes: 100,
        ..Default::default()
    };
    let mut b = bus_with(SESSION_POLICY, limits);
    join(&mut b, 1);
    let slow = Meters::default();
    let callee = join_with(&mut b, 2, slow.clone());
    slow.outgoing.add(101, 0);
    b.handle_message(1, call(5, &callee, "org.x", "M", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!((sent.len(), sent[0].to), (1, 1));
    assert_eq!(
        sent[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.LimitsExceeded")
    );
    assert!(sent[0]
        .msg
        .body_reader()
        .string()
        .unwrap()
        .starts_with("Rejected: destination has a full message queue, 0 matched rules;"));
    slow.outgoing.sub(101, 0);
    b.handle_message(1, call(6, &callee, "org.x", "M", "", vec![]));
    assert_eq!(drain(&mut b)[0].to, 2);
}

#[test]
fn queued_messages_count_against_their_sender_until_written() {
    let mut b = bus();
    let sender = Meters::default();
    join_with(&mut b, 1, sender.clone());
    let callee = join(&mut b, 2);
    b.handle_message(1, call(5, &callee, "org.x", "M", "", vec![]));
    let out: Vec<Effect> = b.take_effects().collect();
    assert!(sender.live.bytes() > 0);
    drop(out);
    assert_eq!(sender.live.bytes(), 0);
}

#[test]
fn callers_hear_no_reply_when_the_callee_leaves_or_the_time_is_up() {
    let limits = busd_policy::Limits {
        reply_timeout: Some(1000),
        ..Default::default()
    };
    let mut b = bus_with(SESSION_POLICY, limits);
    let t0 = Instant::now();
    b.set_now(t0);
    join(&mut b, 1);
    let callee = join(&mut b, 2);
    b.handle_message(1, call(5, &callee, "org.x", "M", "", vec![]));
    drain(&mut b);
    assert_eq!(b.next_deadline(), Some(t0 + Duration::from_secs(1)));
    b.expire(t0 + Duration::from_millis(999));
    assert!(drain(&mut b).is_empty());
    b.expire(t0 + Duration::from_secs(1));
    let sent = drain(&mut b);
    assert_eq!((sent[0].to, sent[0].msg.reply_serial()), (1, Some(5)));
    assert_eq!(
        sent[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.NoReply")
    );
    assert_eq!(
        sent[0].msg.body_reader().string().unwrap(),
        "Message did not receive a reply (timeout by message bus)"
    );
    // The late reply is now unrequested.
    b.handle_message(2, reply(9, 5, ":1.0"));
    drain(&mut b);

    b.handle_message(1, call(6, &callee, "org.x", "M", "", vec![]));
    drain(&mut b);
    b.disconnected(2);
    let sent = drain(&mut b);
    let no_reply = sent
        .iter()
        .find(|s| s.msg.error_name() == Some("org.freedesktop.DBus.Error.NoReply"))
        .unwrap();
    assert_eq!((no_reply.to, no_reply.msg.reply_serial()), (1, Some(6)));
    assert_eq!(
        no_reply.msg.body_reader().string().unwrap(),
        "Message recipient disconnected from message bus without replying"
    );
}

#[test]
fn reloading_rebuilds_every_connections_policy() {
    let mut b = bus();
    join(&mut b, 1);
    b.reconfigure(
        busd_policy::Limits::default(),
        compile(r#"<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/></policy>"#),
        None,
    );
    b.handle_message(
        1,
        dcall(2, "RequestName", "su", su_body("org.example.Foo", 0)),
    );
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied")
    );
}

#[test]
fn broadcasts_follow_match_rules_and_args() {
    let mut b = bus();
    join(&mut b, 1);
    join(&mut b, 2);
    join(&mut b, 3);
    b.handle_message(
        2,
        dcall(2, "AddMatch", "s", s_body("type='signal',arg0='yes'")),
    );
    b.handle_message(
        3,
        dcall(2, "AddMatch", "s", s_body("type='signal',arg0='no'")),
    );
    drain(&mut b);
    let f = HeaderFields {
        path: Some("/a"),
        interface: Some("org.x"),
        member: Some("S"),
        signature: Some("s"),
        ..Default::default()
    };
    let sig = Message::parse(
        encode(Endian::Big, message::SIGNAL, 0, 9, &f, &{
            let mut w = Writer::new(Endian::Big);
            w.string("yes");
            w.into_vec()
        }),
        Vec::new(),
    )
    .unwrap();
    b.handle_message(1, sig);
    let sent = drain(&mut b);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, 2);
    assert_eq!(sent[0].msg.sender(), Some(":1.0"));
}

#[test]
fn match_rule_errors_and_removal() {
    let mut b = bus();
    join(&mut b, 1);
    b.handle_message(1, dcall(2, "AddMatch", "s", s_body("type='bogus'")));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.MatchRuleInvalid")
    );
    b.handle_message(1, dcall(3, "RemoveMatch", "s", s_body("member='X'")));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.MatchRuleNotFound")
    );
    b.handle_message(1, dcall(4, "AddMatch", "s", s_body("member='X'")));
    b.handle_message(1, dcall(5, "RemoveMatch", "s", s_body("member='X'")));
    let sent = drain(&mut b);
    assert!(sent
        .iter()
        .all(|s| s.msg.msg_type() == message::METHOD_RETURN));
}

#[test]
fn wrong_signature_and_unknown_methods() {
    let mut b = bus();
    join(&mut b, 1);
    b.handle_message(1, dcall(2, "GetNameOwner", "", vec![]));
    let e = drain(&mut b);
    assert_eq!(
        e[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.InvalidArgs")
    );
    assert_eq!(
        e[0].msg.body_reader().string().unwrap(),
        "Call to GetNameOwner has wrong args (, expected s)\n"
    );
    b.handle_message(1, dcall(3, "Nope", "", vec![]));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.UnknownMethod")
    );
    b.handle_message(
        1,
        call(4, DBUS_NAME, "org.example.Nope", "Nope", "", vec![]),
    );
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.UnknownInterface")
    );
}

/// `peer` asks to become a monitor of everything.
fn become_monitor(b: &mut Bus, peer: PeerId) {
    let mut w = Writer::new(Endian::Little);
    w.string_array([]);
    w.u32(0);
    b.handle_message(
        peer,
        call(
            2,
            DBUS_NAME,
            "org.freedesktop.DBus.Monitoring",
            "BecomeMonitor",
            "asu",
            w.into_vec(),
        ),
    );
}

#[test]
fn monitors_see_traffic_and_may_not_send() {
    let mut b = bus();
    join(&mut b, 1);
    let mon = join(&mut b, 2);
    become_monitor(&mut b, 2);
    let sent = drain(&mut b);
    assert_eq!(describe(&sent[0]), "2:return");
    assert!(b.peers.by_unique(&mon).is_none());
    b.handle_message(1, dcall(3, "ListNames", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!(
        sent.iter().map(describe).collect::<Vec<_>>(),
        vec!["2:ListNames", "2:return", "1:return"]
    );
    b.handle_message(2, dcall(4, "ListNames", "", vec![]));
    assert!(matches!(
        b.take_effects().next(),
        Some(Effect::Disconnect(2))
    ));
}

fn add_match(b: &mut Bus, peer: PeerId, rule: &str) {
    b.handle_message(peer, dcall(90, "AddMatch", "s", s_body(rule)));
    drain(b);
}

#[test]
fn eavesdropping_needs_a_receive_rule_with_eavesdrop_true() {
    let strict = r#"<policy context="default"><allow send_destination="*"/>
        <allow receive_sender="*"/><allow own="*"/></policy>"#;
    for (policy, sees) in [(SESSION_POLICY, true), (strict, false)] {
        let mut b = bus_with(policy, busd_policy::Limits::default());
        join(&mut b, 1);
        let callee = join(&mut b, 2);
        join(&mut b, 3);
        add_match(&mut b, 3, "eavesdrop=true,type='method_call'");
        b.handle_message(1, call(5, &callee, "org.x", "M", "", vec![]));
        let to: Vec<PeerId> = drain(&mut b).iter().map(|s| s.to).collect();
        assert_eq!(to.contains(&3), sees, "{policy}: {to:?}");
        assert!(to.contains(&2), "the addressed recipient always gets it");
    }
}

fn service(name: &str) -> activation::ServiceEntry {
    activation::ServiceEntry {
        name: name.into(),
        exec: format!("/usr/bin/{name} --flag"),
        user: None,
        systemd_service: None,
        assumed_apparmor_label: None,
    }
}

fn spawns(effects: &[Effect]) -> Vec<(u64, String, Vec<String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Spawn {
                child,
                service,
                argv,
                ..
            } => Some((*child, service.clone(), argv.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn auto_start_spawns_once_and_delivers_in_order_when_the_name_appears() {
    let mut b = bus();
    b.set_activatable(vec![service("org.example.Svc")], false);
    join(&mut b, 1);
    b.handle_message(1, call(5, "org.example.Svc", "org.x", "First", "", vec![]));
    b.handle_message(1, call(6, "org.example.Svc", "org.x", "Second", "", vec![]));
    let effects: Vec<Effect> = b.take_effects().collect();
    let started = spawns(&effects);
    assert_eq!(started.len(), 1, "one process for both messages");
    assert_eq!(started[0].1, "org.example.Svc");
    assert_eq!(started[0].2, vec!["/usr/bin/org.example.Svc", "--flag"]);
    // The service connects and takes its name: both calls arrive, in order, before the
    // RequestName reply.
    join(&mut b, 2);
    b.handle_message(
        2,
        dcall(2, "RequestName", "su", su_body("org.example.Svc", 0)),
    );
    let to_service: Vec<String> = drain(&mut b)
        .iter()
        .filter(|s| s.to == 2)
        .map(describe)
        .collect();
    assert_eq!(
        to_service,
        vec!["2:NameAcquired", "2:First", "2:Second", "2:return"]
    );
}

#[test]
fn start_service_by_name_answers_when_running_and_failures_reach_every_waiter() {
    let mut b = bus();
    b.set_activatable(vec![service("org.example.Svc")], false);
    join(&mut b, 1);
    join(&mut b, 3);
    b.handle_message(
        1,
        dcall(7, "StartServiceByName", "su", su_body("org.example.Svc", 0)),
    );
    b.handle_message(3, call(8, "org.example.Svc", "org.x", "M", "", vec![]));
    let effects: Vec<Effect> = b.take_effects().collect();
    let (child, _, _) = spawns(&effects)[0].clone();
    b.child_exited(child, activation::ChildExit::Exited(3));
    let sent = drain(&mut b);
    assert_eq!(
        sent.len(),
        2,
        "both waiters hear it: {:?}",
        sent.iter().map(describe).collect::<Vec<_>>()
    );
    for s in &sent {
        assert_eq!(
            s.msg.error_name(),
            Some("org.freedesktop.DBus.Error.Spawn.ChildExited")
        );
        assert_eq!(
            s.msg.body_reader().string().unwrap(),
            "Process org.example.Svc exited with status 3"
        );
    }
    // Running services answer StartServiceByName with ALREADY_RUNNING (2).
    join(&mut b, 2);
    b.handle_message(
        2,
        dcall(2, "RequestName", "su", su_body("org.example.Svc", 0)),
    );
    drain(&mut b);
    b.handle_message(
        1,
        dcall(9, "StartServiceByName", "su", su_body("org.example.Svc", 0)),
    );
    let sent = drain(&mut b);
    assert_eq!(sent[0].msg.body_reader().u32().unwrap(), 2);
}

#[test]
fn a_process_that_exits_cleanly_is_not_a_failure() {
    let mut b = bus();
    b.set_activatable(vec![service("org.example.Svc")], false);
    join(&mut b, 1);
    b.handle_message(1, call(8, "org.example.Svc", "org.x", "M", "", vec![]));
    let effects: Vec<Effect> = b.take_effects().collect();
    let (child, _, _) = spawns(&effects)[0].clone();
    // It may have forked into the background: the name can still appear.
    b.child_exited(child, activation::ChildExit::Exited(0));
    assert!(drain(&mut b).is_empty());
}

#[test]
fn starts_time_out_and_are_bounded() {
    let limits = busd_policy::Limits {
        service_start_timeout: 100,
        max_pending_service_starts: 1,
        ..Default::default()
    };
    let mut b = bus_with(SESSION_POLICY, limits);
    b.set_activatable(
        vec![service("org.example.A"), service("org.example.B")],
        false,
    );
    let t0 = Instant::now();
    b.set_now(t0);
    join(&mut b, 1);
    b.handle_message(1, call(5, "org.example.A", "org.x", "M", "", vec![]));
    b.take_effects().for_each(drop);
    b.handle_message(1, call(6, "org.example.B", "org.x", "M", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!(
        sent[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.LimitsExceeded")
    );
    assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(100)));
    b.expire(t0 + Duration::from_millis(100));
    let effects: Vec<Effect> = b.take_effects().collect();
    assert!(effects.iter().any(|e| matches!(e, Effect::Kill { .. })));
    let errors: Vec<Message> = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Send(_, out) => Message::parse(out.bytes.to_vec(), Vec::new()).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors[0].error_name(),
        Some("org.freedesktop.DBus.Error.TimedOut")
    );
    assert_eq!(
        errors[0].body_reader().string().unwrap(),
        "Failed to activate service 'org.example.A': timed out (service_start_timeout=100ms)"
    );
}

mod fastpath;
mod stats;

/// Found by the `bus` fuzz target: whatever flags two owners used and in whichever order
/// they leave, the name goes with the last of them.
#[test]
fn a_name_goes_when_its_owners_and_queue_leave() {
    for first in 0..8u32 {
        for second in 0..8u32 {
            for order in [[1, 2], [2, 1]] {
                let mut b = bus();
                join(&mut b, 1);
                join(&mut b, 2);
                join(&mut b, 3);
                b.handle_message(
                    1,
                    dcall(2, "RequestName", "su", su_body("org.example.A", first)),
                );
                b.handle_message(
                    2,
                    dcall(2, "RequestName", "su", su_body("org.example.A", second)),
                );
                drain(&mut b);
                for p in order {
                    b.disconnected(p);
                    drain(&mut b);
                }
                b.handle_message(3, dcall(3, "NameHasOwner", "s", s_body("org.example.A")));
                let sent = drain(&mut b);
                assert!(
                    !sent[0].msg.body_reader().bool().unwrap(),
                    "flags {first} then {second}, leaving {order:?}: the name outlived them"
                );
            }
        }
    }
}

/// What systemd says of a failed start goes into the log quoted: on a session bus without
/// systemd, whoever owns org.freedesktop.systemd1 says it, and a newline in it must not
/// make a log line of its own.
#[test]
fn systemd_failure_reasons_are_escaped_in_the_log() {
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let mut b = bus();
    tracing::subscriber::with_default(subscriber, || {
        b.systemd_activation_failed("x\ny.service", "org.example.E", "bad\nbusd: forged");
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("unit 'x\\x0ay.service': bad\\x0abusd: forged"),
        "{text}"
    );
}
