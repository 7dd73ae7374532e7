//! The decisions dbus-daemon 1.14 makes, per attribute and per combination that matters.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::compile::{Accounts, ClientIdentity, CompiledPolicy};
use crate::config::Config;
use crate::rule::{ERROR, METHOD_CALL, METHOD_RETURN};

struct TestAccounts;

impl Accounts for TestAccounts {
    fn user_id(&self, name: &str) -> Option<u32> {
        match name {
            "alice" => Some(1000),
            "bob" => Some(1001),
            _ => None,
        }
    }
    fn group_id(&self, name: &str) -> Option<u32> {
        match name {
            "staff" => Some(50),
            "audio" => Some(29),
            _ => None,
        }
    }
}

struct TestNames<'a>(&'a [&'a str]);

impl Names for TestNames<'_> {
    fn in_queue(&self, name: &str) -> bool {
        self.0.contains(&name)
    }
    fn in_queue_below(&self, prefix: &str) -> bool {
        self.0.iter().any(|n| has_word_prefix(n, prefix))
    }
    fn for_each_name(&self, f: &mut dyn FnMut(&str)) {
        self.0.iter().for_each(|n| f(n));
    }
}

fn compiled(policies: &str) -> CompiledPolicy {
    let text = format!("<busconfig>{policies}</busconfig>");
    let config = Config::from_str_at(&text, Path::new("/test.conf")).unwrap();
    CompiledPolicy::compile(&config, &TestAccounts).unwrap()
}

fn policy_for(policies: &str, who: &ClientIdentity) -> ClientPolicy {
    compiled(policies).client_policy(who)
}

fn policy(default_rules: &str) -> ClientPolicy {
    policy_for(
        &format!("<policy context=\"default\">{default_rules}</policy>"),
        &alice(),
    )
}

fn alice() -> ClientIdentity {
    ClientIdentity {
        uid: Some(1000),
        groups: vec![1000],
        at_console: false,
    }
}

fn call<'a>(dest: &'a str, iface: Option<&'a str>, member: &'a str) -> MessageFacts<'a> {
    MessageFacts {
        msg_type: METHOD_CALL,
        path: Some("/org/example"),
        interface: iface,
        member: Some(member),
        destination: Some(dest),
        sender: Some(":1.1"),
        ..Default::default()
    }
}

fn reply(dest: &str) -> MessageFacts<'_> {
    MessageFacts {
        msg_type: METHOD_RETURN,
        destination: Some(dest),
        sender: Some(":1.1"),
        is_reply: true,
        ..Default::default()
    }
}

fn broadcast<'a>(iface: &'a str, member: &'a str) -> MessageFacts<'a> {
    MessageFacts {
        msg_type: SIGNAL,
        path: Some("/org/example"),
        interface: Some(iface),
        member: Some(member),
        sender: Some(":1.1"),
        ..Default::default()
    }
}

const SERVICE: TestNames<'static> = TestNames(&[":1.2", "org.example.Service"]);

fn to_service(p: &ClientPolicy, m: &MessageFacts<'_>) -> bool {
    p.may_send(m, false, Peer::Connection(&SERVICE)).allowed
}

const SESSION: &str = r#"<allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/><allow own="*"/>"#;

#[test]
fn the_session_default_allows_everything_without_looking() {
    let p = policy(SESSION);
    assert!(p.allows_all_messages());
    let m = reply(":1.2");
    // Even unrequested replies: the eavesdrop="true" send rule lets them through.
    assert!(p.may_send(&m, false, Peer::Connection(&SERVICE)).allowed);
    assert!(p.may_receive(&m, false, true, Peer::Bus).allowed);
    assert!(p.may_own("any.name"));
}

#[test]
fn no_rules_deny_everything() {
    let p = policy("");
    assert!(!to_service(&p, &call("org.example.Service", None, "M")));
    assert!(
        !p.may_receive(&broadcast("a.b", "C"), false, false, Peer::Bus)
            .allowed
    );
    assert!(!p.may_own("org.example"));
}

#[test]
fn the_last_applicable_rule_wins_and_counts_are_reported() {
    let p = policy(
        r#"<allow send_destination="*"/><deny send_interface="org.example.Secret"/>
           <allow send_interface="org.example.Secret" send_member="Open"/>"#,
    );
    assert!(to_service(
        &p,
        &call("org.example.Service", Some("org.example.Other"), "X")
    ));
    let d = p.may_send(
        &call("org.example.Service", Some("org.example.Secret"), "Close"),
        false,
        Peer::Connection(&SERVICE),
    );
    assert_eq!((d.allowed, d.matched_rules), (false, 2));
    assert!(to_service(
        &p,
        &call("org.example.Service", Some("org.example.Secret"), "Open")
    ));
}

#[test]
fn a_message_without_interface_escapes_allow_rules_but_not_deny_rules() {
    let allow = policy(r#"<allow send_interface="org.example.I"/>"#);
    assert!(!to_service(&allow, &call("org.example.Service", None, "M")));
    let deny = policy(r#"<allow send_destination="*"/><deny send_interface="org.example.I"/>"#);
    assert!(!to_service(&deny, &call("org.example.Service", None, "M")));
    assert!(to_service(
        &deny,
        &call("org.example.Service", Some("org.example.J"), "M")
    ));
}

#[test]
fn path_type_and_member_rules() {
    let p = policy(
        r#"<allow send_path="/org/example" send_member="Get"/>
           <allow send_type="signal"/>"#,
    );
    assert!(to_service(
        &p,
        &call("org.example.Service", Some("a.b"), "Get")
    ));
    assert!(!to_service(
        &p,
        &call("org.example.Service", Some("a.b"), "Set")
    ));
    let mut elsewhere = call("org.example.Service", Some("a.b"), "Get");
    elsewhere.path = Some("/other");
    assert!(!to_service(&p, &elsewhere));
    let mut sig = broadcast("a.b", "Changed");
    sig.destination = Some("org.example.Service");
    assert!(to_service(&p, &sig));
}

#[test]
fn send_error_rules_also_match_messages_without_an_error_name() {
    // dbus-daemon only skips the rule when the message has a different error name.
    let p = policy(r#"<allow send_error="org.example.Error.Failed"/>"#);
    assert!(to_service(
        &p,
        &call("org.example.Service", Some("a.b"), "M")
    ));
    let mut err = reply(":1.2");
    err.msg_type = ERROR;
    err.error_name = Some("org.example.Error.Other");
    assert!(!p.may_send(&err, true, Peer::Connection(&SERVICE)).allowed);
    err.error_name = Some("org.example.Error.Failed");
    assert!(p.may_send(&err, true, Peer::Connection(&SERVICE)).allowed);
}

#[test]
fn send_destination_matches_primary_and_queued_owners_or_the_header_for_the_bus() {
    let p = policy(r#"<allow send_destination="org.example.Service"/>"#);
    // Addressed by unique name, but the receiver owns the name: allowed.
    assert!(to_service(&p, &call(":1.2", None, "M")));
    let other = TestNames(&[":1.3"]);
    assert!(
        !p.may_send(&call(":1.3", None, "M"), false, Peer::Connection(&other))
            .allowed
    );
    // The bus itself (or a service being activated): the header is compared.
    assert!(
        p.may_send(&call("org.example.Service", None, "M"), false, Peer::Bus)
            .allowed
    );
    assert!(
        !p.may_send(&call("org.example.Servic", None, "M"), false, Peer::Bus)
            .allowed
    );
}

#[test]
fn send_destination_prefix_matches_whole_name_components() {
    let p = policy(r#"<allow send_destination_prefix="org.example"/>"#);
    let below = TestNames(&[":1.4", "org.example.Foo.Bar"]);
    let beside = TestNames(&[":1.5", "org.examples"]);
    assert!(
        p.may_send(&call(":1.4", None, "M"), false, Peer::Connection(&below))
            .allowed
    );
    assert!(
        !p.may_send(&call(":1.5", None, "M"), false, Peer::Connection(&beside))
            .allowed
    );
    assert!(
        p.may_send(&call("org.example", None, "M"), false, Peer::Bus)
            .allowed
    );
    assert!(
        !p.may_send(&call("org.examplex", None, "M"), false, Peer::Bus)
            .allowed
    );
}

#[test]
fn requested_reply_semantics() {
    let default_allow = policy(r#"<allow send_destination="*"/>"#);
    let m = reply(":1.2");
    assert!(to_service_reply(&default_allow, &m, true));
    assert!(!to_service_reply(&default_allow, &m, false));

    let allow_unrequested = policy(r#"<allow send_destination="*" send_requested_reply="false"/>"#);
    assert!(to_service_reply(&allow_unrequested, &m, false));

    // A deny rule applies only to unrequested replies unless it says otherwise.
    let deny = policy(
        r#"<allow send_destination="*" send_requested_reply="false"/>
           <deny send_destination="org.example.Service"/>"#,
    );
    assert!(to_service_reply(&deny, &m, true));
    assert!(!to_service_reply(&deny, &m, false));
    let deny_all = policy(
        r#"<allow send_destination="*" send_requested_reply="false"/>
           <deny send_destination="org.example.Service" send_requested_reply="true"/>"#,
    );
    assert!(!to_service_reply(&deny_all, &m, true));
    // Not a reply: requested_reply plays no part.
    assert!(!to_service(&deny_all, &call(":1.2", None, "M")));
}

fn to_service_reply(p: &ClientPolicy, m: &MessageFacts<'_>, requested: bool) -> bool {
    p.may_send(m, requested, Peer::Connection(&SERVICE)).allowed
}

#[test]
fn send_broadcast_distinguishes_signals_without_destination() {
    let p = policy(
        r#"<allow send_destination="*"/><deny send_broadcast="true" send_interface="a.b"/>"#,
    );
    assert!(!to_service(&p, &broadcast("a.b", "C")));
    let mut unicast = broadcast("a.b", "C");
    unicast.destination = Some(":1.2");
    assert!(to_service(&p, &unicast));
    let only_unicast = policy(r#"<allow send_broadcast="false"/>"#);
    assert!(!to_service(&only_unicast, &broadcast("a.b", "C")));
    assert!(to_service(&only_unicast, &unicast));
}

#[test]
fn blanket_rules_drop_earlier_rules_of_their_kind_even_with_modifiers() {
    // dbus-daemon's pruning ignores send_broadcast: the allow below is gone, so a unicast
    // to the service is denied although no remaining rule denies it.
    let p =
        policy(r#"<allow send_destination="org.example.Service"/><deny send_broadcast="true"/>"#);
    assert!(!to_service(&p, &call("org.example.Service", None, "M")));
    let d = p.may_send(
        &call("org.example.Service", None, "M"),
        false,
        Peer::Connection(&SERVICE),
    );
    assert_eq!(d.matched_rules, 0);
}

#[test]
fn fd_bounds() {
    let p = policy(r#"<allow send_destination="*"/><deny send_path="/org/example" min_fds="1"/>"#);
    let mut m = call("org.example.Service", None, "M");
    assert!(to_service(&p, &m));
    m.unix_fds = 1;
    assert!(!to_service(&p, &m));
    // Without a message test, the fd rule is a blanket rule and prunes the allow.
    let blanket =
        policy(r#"<allow send_destination="*"/><deny send_destination="*" min_fds="1"/>"#);
    m.unix_fds = 0;
    assert!(!to_service(&blanket, &m));
    let q = policy(r#"<allow send_destination="*" max_fds="2"/>"#);
    m.unix_fds = 2;
    assert!(to_service(&q, &m));
    m.unix_fds = 3;
    assert!(!to_service(&q, &m));
}

#[test]
fn receive_rules_and_eavesdropping() {
    let p = policy(r#"<allow receive_sender="org.example.Service"/>"#);
    let sig = broadcast("a.b", "C");
    assert!(
        p.may_receive(&sig, false, false, Peer::Connection(&SERVICE))
            .allowed
    );
    let stranger = TestNames(&[":1.9"]);
    assert!(
        !p.may_receive(&sig, false, false, Peer::Connection(&stranger))
            .allowed
    );
    // A unicast seen by someone else needs eavesdrop="true".
    let mut unicast = call(":1.7", None, "M");
    unicast.sender = Some(":1.2");
    assert!(
        !p.may_receive(&unicast, false, true, Peer::Connection(&SERVICE))
            .allowed
    );
    let e = policy(
        r#"<allow receive_sender="*" eavesdrop="true"/><deny eavesdrop="true" receive_interface="a.b"/>"#,
    );
    unicast.interface = Some("a.b");
    assert!(
        !e.may_receive(&unicast, false, true, Peer::Connection(&SERVICE))
            .allowed
    );
    // ...and that deny does not touch the addressed recipient.
    assert!(
        e.may_receive(&unicast, false, false, Peer::Connection(&SERVICE))
            .allowed
    );
    // From the bus, the message's sender field is compared.
    let d = policy(r#"<allow receive_sender="org.freedesktop.DBus"/>"#);
    let mut from_bus = broadcast("org.freedesktop.DBus", "NameOwnerChanged");
    from_bus.sender = Some("org.freedesktop.DBus");
    assert!(d.may_receive(&from_bus, false, false, Peer::Bus).allowed);
}

#[test]
fn receive_requested_reply() {
    let p = policy(r#"<allow receive_sender="*"/>"#);
    let m = reply(":1.1");
    assert!(
        p.may_receive(&m, true, false, Peer::Connection(&SERVICE))
            .allowed
    );
    assert!(
        !p.may_receive(&m, false, false, Peer::Connection(&SERVICE))
            .allowed
    );
}

#[test]
fn own_and_own_prefix() {
    let p =
        policy(r#"<allow own="*"/><deny own_prefix="org.example"/><allow own="org.example.Ok"/>"#);
    assert!(p.may_own("com.other"));
    assert!(!p.may_own("org.example"));
    assert!(!p.may_own("org.example.Foo"));
    assert!(p.may_own("org.example.Ok"));
    assert!(p.may_own("org.examples"));
}

#[test]
fn contexts_apply_in_order_default_group_user_console_mandatory() {
    let policies = r#"
        <policy context="default"><deny own="a.b"/></policy>
        <policy context="mandatory"><deny own="m.n"/></policy>
        <policy group="staff"><allow own="a.b"/><allow own="u.v"/><allow own="m.n"/></policy>
        <policy user="alice"><deny own="u.v"/></policy>
        <policy at_console="true"><allow own="c.d"/></policy>
        <policy at_console="false"><deny own="c.d"/><allow own="e.f"/></policy>
        <policy user="nobody-here"><allow own="x.y"/></policy>
    "#;
    let c = compiled(policies);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let mut who = alice();
    who.groups = vec![50, 1000];
    let p = c.client_policy(&who);
    assert!(p.may_own("a.b"), "group beats default");
    assert!(!p.may_own("u.v"), "user beats group");
    assert!(!p.may_own("m.n"), "mandatory beats everything");
    assert!(!p.may_own("c.d") && p.may_own("e.f"));
    who.at_console = true;
    assert!(c.client_policy(&who).may_own("c.d"));
    who.groups = vec![1000];
    assert!(!c.client_policy(&who).may_own("a.b"));
    // Anonymous connections get neither user nor console rules.
    let anon = c.client_policy(&ClientIdentity::default());
    assert!(!anon.may_own("e.f"));
}

#[test]
fn who_may_connect() {
    let c = compiled(r#"<policy context="default"><allow own="*"/></policy>"#);
    assert!(c.may_connect(1000, &[], 1000));
    assert!(!c.may_connect(0, &[0], 1000), "not even root by default");
    let c = compiled(
        r#"<policy context="default"><allow user="*"/><deny group="audio"/></policy>
           <policy context="mandatory"><allow user="1001"/></policy>"#,
    );
    assert!(c.may_connect(5, &[5], 1000));
    assert!(!c.may_connect(5, &[5, 29], 1000));
    assert!(c.may_connect(1001, &[29], 1000));
    assert!(c.connect_uses_groups());
}

#[test]
fn connect_rules_in_user_contexts_are_refused() {
    let config = Config::from_str_at(
        "<busconfig><policy user=\"alice\">\n<allow user=\"bob\"/></policy></busconfig>",
        Path::new("/t.conf"),
    )
    .unwrap();
    let e = CompiledPolicy::compile(&config, &TestAccounts)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/t.conf:2:") && e.contains("per-user"), "{e}");
}

fn opt_name() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("a.b")),
        Just(Some("a.b.c")),
        Just(Some("x.y")),
    ]
}

fn arb_rule() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop_oneof![Just("send"), Just("receive")],
        opt_name(),
        opt_name(),
        prop::option::of(prop_oneof![
            Just("method_call"),
            Just("signal"),
            Just("method_return")
        ]),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        any::<bool>(),
        prop::option::of(prop_oneof![Just("M"), Just("N")]),
    )
        .prop_map(|(allow, dir, peer, iface, ty, rr, eaves, prefix, member)| {
            let mut attrs = Vec::new();
            if let Some(p) = peer {
                let key = match (dir, prefix) {
                    ("send", true) => "send_destination_prefix",
                    ("send", false) => "send_destination",
                    _ => "receive_sender",
                };
                attrs.push(format!("{key}=\"{p}\""));
            }
            if let Some(i) = iface {
                attrs.push(format!("{dir}_interface=\"{i}\""));
            }
            if let Some(m) = member {
                // A member needs an interface or a path beside it.
                if iface.is_none() {
                    attrs.push(format!("{dir}_path=\"/\""));
                }
                attrs.push(format!("{dir}_member=\"{m}\""));
            }
            if let Some(t) = ty {
                attrs.push(format!("{dir}_type=\"{t}\""));
            }
            if let Some(r) = rr {
                attrs.push(format!("{dir}_requested_reply=\"{r}\""));
            }
            if let Some(e) = eaves {
                attrs.push(format!("eavesdrop=\"{e}\""));
            }
            if attrs.is_empty() {
                attrs.push(format!("{dir}_type=\"*\""));
            }
            let el = if allow { "allow" } else { "deny" };
            format!("<{el} {}/>", attrs.join(" "))
        })
}

proptest! {
    /// The indexed evaluation decides exactly what dbus-daemon's linear scan decides.
    #[test]
    fn index_agrees_with_the_linear_scan(
        rules in prop::collection::vec(arb_rule(), 0..12),
        ty in prop_oneof![Just(METHOD_CALL), Just(SIGNAL), Just(METHOD_RETURN)],
        iface in opt_name(),
        member in prop_oneof![Just(None), Just(Some("M")), Just(Some("N"))],
        dest in opt_name(),
        peer_names in prop::collection::vec(prop_oneof![Just("a.b"), Just("a.b.c"), Just("x.y"), Just("q.r")], 0..3),
        requested in any::<bool>(),
        eavesdropping in any::<bool>(),
        to_bus in any::<bool>(),
    ) {
        let p = policy(&rules.concat());
        let m = MessageFacts {
            msg_type: ty,
            path: Some("/"),
            interface: iface,
            member,
            destination: dest,
            sender: dest,
            is_reply: ty == METHOD_RETURN,
            ..Default::default()
        };
        let mut names = vec![":1.9"];
        names.extend(peer_names);
        let n = TestNames(&names);
        let peer = if to_bus { Peer::Bus } else { Peer::Connection(&n) };
        prop_assert_eq!(
            p.may_send(&m, requested, peer).allowed,
            p.may_send_linear(&m, requested, peer)
        );
        prop_assert_eq!(
            p.may_receive(&m, requested, eavesdropping, peer).allowed,
            p.may_receive_linear(&m, requested, eavesdropping, peer)
        );
    }
}

#[test]
fn the_deciding_send_rule_says_whether_to_log() {
    let p = policy(r#"<allow send_destination="*" log="true"/><allow send_interface="a.b"/>"#);
    let d = p.may_send(
        &call("org.example.Service", Some("c.d"), "M"),
        false,
        Peer::Bus,
    );
    assert!(d.allowed && d.log);
    let d = p.may_send(
        &call("org.example.Service", Some("a.b"), "M"),
        false,
        Peer::Bus,
    );
    assert!(d.allowed && !d.log);
}
