//! Bus state machine tests: peers are plain ids, messages are built in memory, and effects are
//! inspected without sockets.

use super::*;
use crate::wire::marshal::{Endian, Writer};
use crate::wire::message::{encode, HeaderFields, Message};

fn bus() -> Bus {
    Bus::new(BusSettings {
        guid: "0123456789abcdef0123456789abcdef".into(),
        machine_id: "fedcba9876543210fedcba9876543210".into(),
        uid: 1000,
        pid: 1,
        limits: busd_policy::Limits::default(),
    })
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
    bus.connect(
        id,
        Credentials {
            uid: Some(1000),
            pid: Some(id as u32),
            gid: Some(1000),
        },
        true,
    );
    bus.handle_message(id, call(1, DBUS_NAME, DBUS_INTERFACE, "Hello", "", vec![]));
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
    b.connect(7, Credentials::default(), false);
    b.handle_message(7, call(1, DBUS_NAME, DBUS_INTERFACE, "Hello", "", vec![]));
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
    b.handle_message(7, call(2, DBUS_NAME, DBUS_INTERFACE, "Hello", "", vec![]));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.Failed")
    );
}

#[test]
fn messages_before_hello_are_refused() {
    let mut b = bus();
    b.connect(1, Credentials::default(), false);
    b.handle_message(
        1,
        call(1, DBUS_NAME, DBUS_INTERFACE, "ListNames", "", vec![]),
    );
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
        call(
            2,
            DBUS_NAME,
            DBUS_INTERFACE,
            "AddMatch",
            "s",
            s_body("member='NameOwnerChanged'"),
        ),
    );
    drain(&mut b);
    b.handle_message(
        1,
        call(
            2,
            DBUS_NAME,
            DBUS_INTERFACE,
            "RequestName",
            "su",
            su_body("org.example.A", 0),
        ),
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

#[test]
fn unknown_destinations_get_dbus_daemons_errors() {
    let mut b = bus();
    join(&mut b, 1);
    b.handle_message(1, call(5, "org.nobody", "org.x", "M", "", vec![]));
    let e = drain(&mut b);
    assert_eq!(
        e[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown")
    );
    assert_eq!(e[0].msg.reply_serial(), Some(5));
    b.handle_message(1, call(6, ":1.99", "org.x", "M", "", vec![]));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.NameHasNoOwner")
    );
}

#[test]
fn replies_reach_only_a_waiting_caller() {
    let mut b = bus();
    join(&mut b, 1);
    let callee = join(&mut b, 2);
    b.handle_message(1, call(10, &callee, "org.x", "M", "", vec![]));
    let sent = drain(&mut b);
    assert_eq!(sent[0].to, 2);
    assert_eq!(sent[0].msg.sender(), Some(":1.0"));
    let reply = |serial: u32, reply_serial: u32| {
        let f = HeaderFields {
            reply_serial: Some(reply_serial),
            destination: Some(":1.0"),
            ..Default::default()
        };
        Message::parse(
            encode(Endian::Little, message::METHOD_RETURN, 0, serial, &f, &[]),
            Vec::new(),
        )
        .unwrap()
    };
    // An unrequested reply is not delivered.
    b.handle_message(2, reply(1, 11));
    assert!(drain(&mut b).is_empty());
    b.handle_message(2, reply(2, 10));
    let sent = drain(&mut b);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].to, sent[0].msg.reply_serial()), (1, Some(10)));
    // Only once.
    b.handle_message(2, reply(3, 10));
    assert!(drain(&mut b).is_empty());
}

#[test]
fn broadcasts_follow_match_rules_and_args() {
    let mut b = bus();
    join(&mut b, 1);
    join(&mut b, 2);
    join(&mut b, 3);
    b.handle_message(
        2,
        call(
            2,
            DBUS_NAME,
            DBUS_INTERFACE,
            "AddMatch",
            "s",
            s_body("type='signal',arg0='yes'"),
        ),
    );
    b.handle_message(
        3,
        call(
            2,
            DBUS_NAME,
            DBUS_INTERFACE,
            "AddMatch",
            "s",
            s_body("type='signal',arg0='no'"),
        ),
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
    b.handle_message(
        1,
        call(
            2,
            DBUS_NAME,
            DBUS_INTERFACE,
            "AddMatch",
            "s",
            s_body("type='bogus'"),
        ),
    );
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.MatchRuleInvalid")
    );
    b.handle_message(
        1,
        call(
            3,
            DBUS_NAME,
            DBUS_INTERFACE,
            "RemoveMatch",
            "s",
            s_body("member='X'"),
        ),
    );
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.MatchRuleNotFound")
    );
    b.handle_message(
        1,
        call(
            4,
            DBUS_NAME,
            DBUS_INTERFACE,
            "AddMatch",
            "s",
            s_body("member='X'"),
        ),
    );
    b.handle_message(
        1,
        call(
            5,
            DBUS_NAME,
            DBUS_INTERFACE,
            "RemoveMatch",
            "s",
            s_body("member='X'"),
        ),
    );
    let sent = drain(&mut b);
    assert!(sent
        .iter()
        .all(|s| s.msg.msg_type() == message::METHOD_RETURN));
}

#[test]
fn wrong_signature_and_unknown_methods() {
    let mut b = bus();
    join(&mut b, 1);
    b.handle_message(
        1,
        call(2, DBUS_NAME, DBUS_INTERFACE, "GetNameOwner", "", vec![]),
    );
    let e = drain(&mut b);
    assert_eq!(
        e[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.InvalidArgs")
    );
    assert_eq!(
        e[0].msg.body_reader().string().unwrap(),
        "Call to GetNameOwner has wrong args (, expected s)\n"
    );
    b.handle_message(1, call(3, DBUS_NAME, DBUS_INTERFACE, "Nope", "", vec![]));
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

#[test]
fn monitors_see_traffic_and_may_not_send() {
    let mut b = bus();
    join(&mut b, 1);
    let mon = join(&mut b, 2);
    let mut w = Writer::new(Endian::Little);
    w.string_array([]);
    w.u32(0);
    b.handle_message(
        2,
        call(
            2,
            DBUS_NAME,
            "org.freedesktop.DBus.Monitoring",
            "BecomeMonitor",
            "asu",
            w.into_vec(),
        ),
    );
    let sent = drain(&mut b);
    assert_eq!(describe(&sent[0]), "2:return");
    assert!(!b.unique_names.contains_key(&mon));
    b.handle_message(
        1,
        call(3, DBUS_NAME, DBUS_INTERFACE, "ListNames", "", vec![]),
    );
    let sent = drain(&mut b);
    assert_eq!(
        sent.iter().map(describe).collect::<Vec<_>>(),
        vec!["2:ListNames", "2:return", "1:return"]
    );
    b.handle_message(
        2,
        call(4, DBUS_NAME, DBUS_INTERFACE, "ListNames", "", vec![]),
    );
    assert!(matches!(
        b.take_effects().next(),
        Some(Effect::Disconnect(2))
    ));
}
