//! The compiled filter, run by the interpreter, against the exact matcher.

use proptest::prelude::*;

use super::*;
use crate::header::{encode, Fields, HEADER_LEN};
use crate::interp;
use crate::matcher::{Arg, MessageInfo};

/// A message between members 1..=4 (member N's unique name is `:1.N`).
#[derive(Debug, Clone)]
struct Msg {
    ty: u8,
    sender: u32,
    destination: u32,
    interface: Option<&'static str>,
    member: Option<&'static str>,
    path: Option<&'static str>,
    args: Vec<Arg<'static>>,
}

impl MessageInfo for Msg {
    fn msg_type(&self) -> u8 {
        self.ty
    }
    fn interface(&self) -> Option<&str> {
        self.interface
    }
    fn member(&self) -> Option<&str> {
        self.member
    }
    fn path(&self) -> Option<&str> {
        self.path
    }
    fn destination(&self) -> Option<&str> {
        (self.destination != 0).then_some("dest")
    }
    fn sender_is(&self, name: &str) -> bool {
        name == format!(":1.{}", self.sender)
    }
    fn destination_is(&self, name: &str) -> bool {
        self.destination != 0 && name == format!(":1.{}", self.destination)
    }
    fn arg(&self, index: u8) -> Arg<'_> {
        self.args
            .get(usize::from(index))
            .copied()
            .unwrap_or(Arg::Missing)
    }
}

fn frame(m: &Msg) -> [u8; HEADER_LEN] {
    let mut buf = [0u8; HEADER_LEN];
    let fields = Fields {
        msg_type: m.ty,
        flags: 0,
        sender: m.sender,
        destination: m.destination,
        interface: m.interface,
        member: m.member,
        path: m.path,
    };
    encode(&fields, &m.args, &mut buf);
    buf
}

fn resolver(name: &str) -> Option<u32> {
    name.strip_prefix(":1.")?.parse().ok()
}

fn accepts(p: &Program, m: &Msg) -> bool {
    interp::run(&p.insns, &frame(m)).expect("valid program") != 0
}

fn rules(texts: &[&str]) -> Vec<MatchRule> {
    texts.iter().map(|t| MatchRule::parse(t).unwrap()).collect()
}

fn signal(interface: &'static str, member: &'static str, path: &'static str) -> Msg {
    Msg {
        ty: 4,
        sender: 1,
        destination: 0,
        interface: Some(interface),
        member: Some(member),
        path: Some(path),
        args: vec![],
    }
}

#[test]
fn accepts_what_is_addressed_to_the_member_and_what_its_rules_want() {
    let p = compile(
        3,
        &rules(&["type='signal',interface='org.example.A',member='Changed'"]),
        &resolver,
    );
    assert!(!p.widened);
    assert!(accepts(&p, &signal("org.example.A", "Changed", "/x")));
    assert!(!accepts(&p, &signal("org.example.A", "Other", "/x")));
    assert!(!accepts(&p, &signal("org.example.B", "Changed", "/x")));
    let mut to_me = signal("org.example.B", "Other", "/x");
    to_me.destination = 3;
    assert!(accepts(&p, &to_me));
    // Addressed to someone else: only eavesdropping rules take it.
    let mut to_other = signal("org.example.A", "Changed", "/x");
    to_other.destination = 2;
    assert!(!accepts(&p, &to_other));
    let e = compile(
        3,
        &rules(&["eavesdrop=true,interface='org.example.A'"]),
        &resolver,
    );
    assert!(accepts(&e, &to_other));
}

#[test]
fn namespaces_senders_and_arguments() {
    let p = compile(
        9,
        &rules(&[
            "path_namespace='/org/example'",
            "sender=':1.2',member='Ping'",
            "arg0namespace='com.example',member='NameOwnerChanged'",
            "arg1path='/a/',member='Moved'",
        ]),
        &resolver,
    );
    assert!(accepts(&p, &signal("i.x", "M", "/org/example/obj")));
    assert!(accepts(&p, &signal("i.x", "M", "/org/example")));
    assert!(!accepts(&p, &signal("i.x", "M", "/org/examples")));
    let mut ping = signal("i.x", "Ping", "/");
    assert!(!accepts(&p, &ping), "wrong sender");
    ping.sender = 2;
    assert!(accepts(&p, &ping));
    let mut noc = signal("i.x", "NameOwnerChanged", "/");
    noc.args = vec![Arg::Str("com.example.Foo")];
    assert!(accepts(&p, &noc));
    noc.args = vec![Arg::Str("com.examples")];
    assert!(!accepts(&p, &noc));
    let mut moved = signal("i.x", "Moved", "/");
    for (arg, want) in [("/a/b", true), ("/", true), ("/a/", true), ("/b", false)] {
        moved.args = vec![Arg::Other, Arg::Path(arg)];
        assert_eq!(accepts(&p, &moved), want, "arg1path='/a/' vs {arg}");
    }
}

#[test]
fn too_many_rules_widen_instead_of_failing() {
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("interface='org.example.I{i}',arg3='v{i}'"))
        .collect();
    let rs: Vec<MatchRule> = texts.iter().map(|t| MatchRule::parse(t).unwrap()).collect();
    let p = compile(1, &rs, &resolver);
    assert!(p.widened);
    assert!(p.insns.len() <= MAX_INSNS);
    let mut m = signal("org.example.I1999", "M", "/");
    m.args = vec![Arg::Other, Arg::Other, Arg::Other, Arg::Str("v1999")];
    assert!(accepts(&p, &m));
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    let strs: &'static [&'static str] = &["a", "a.b", "a.b.c", "/a/", "/a/b", "/", "x"];
    let args = prop::collection::vec(
        prop_oneof![
            pick(strs).prop_map(Arg::Str),
            pick(&["/", "/a", "/a/", "/a/b", "/a/b/"][..]).prop_map(Arg::Path),
            Just(Arg::Other),
        ],
        0..4,
    );
    (
        1u8..=4,
        1u32..=4,
        prop_oneof![Just(0u32), 1u32..=4],
        prop::option::of(pick(&["a.b", "a.c"][..])),
        prop::option::of(pick(&["M", "N"][..])),
        prop::option::of(pick(&["/", "/a", "/a/b", "/ab"][..])),
        args,
    )
        .prop_map(
            |(ty, sender, destination, interface, member, path, args)| Msg {
                ty,
                sender,
                destination,
                interface,
                member,
                path,
                args,
            },
        )
}

fn arb_rule() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        pick(&["signal", "method_call", "error"][..]).prop_map(|v| format!("type='{v}'")),
        (1u32..=4).prop_map(|n| format!("sender=':1.{n}'")),
        pick(&["a.b", "a.c"][..]).prop_map(|v| format!("interface='{v}'")),
        pick(&["M", "N"][..]).prop_map(|v| format!("member='{v}'")),
        pick(&["/", "/a", "/a/b"][..]).prop_map(|v| format!("path='{v}'")),
        pick(&["/", "/a", "/a/b"][..]).prop_map(|v| format!("path_namespace='{v}'")),
        (1u32..=4).prop_map(|n| format!("destination=':1.{n}'")),
        (0u8..3, pick(&["a", "a.b", "/a/", "x"][..])).prop_map(|(i, v)| format!("arg{i}='{v}'")),
        (0u8..3, pick(&["/", "/a", "/a/", "/a/b", "/a/b/"][..]))
            .prop_map(|(i, v)| format!("arg{i}path='{v}'")),
        pick(&["a", "a.b"][..]).prop_map(|v| format!("arg0namespace='{v}'")),
        Just("eavesdrop=true".to_string()),
    ];
    prop::collection::vec(key, 0..5).prop_map(|keys| keys.join(","))
}

proptest! {
    /// The filter is a superset of exact matching: whatever a rule matches, or whatever is
    /// addressed to the member, the filter accepts.
    #[test]
    fn exact_match_implies_the_filter_accepts(
        rule_texts in prop::collection::vec(arb_rule(), 1..6),
        msgs in prop::collection::vec(arb_msg(), 1..8),
        member in 1u32..=5,
    ) {
        let rs: Vec<MatchRule> = rule_texts
            .iter()
            .filter_map(|t| MatchRule::parse(t).ok())
            .collect();
        let p = compile(member, &rs, &resolver);
        for m in &msgs {
            let wanted = m.destination == member || rs.iter().any(|r| r.matches(m));
            if wanted {
                prop_assert!(accepts(&p, m), "rules {:?} message {:?}", rule_texts, m);
            }
        }
    }
}

/// The daemon compiles the rules of a whole session: 50,000 distinct rules (far more than
/// a program holds) widen to accepting every broadcast, and the compile is linear (it used
/// to compare each rule with every earlier one, and did not finish at this size).
#[test]
fn a_session_of_rules_widens_to_every_broadcast_in_linear_time() {
    let texts: Vec<String> = (0..50_000)
        .map(|i| format!("type='signal',interface='org.x',member='M{i}'"))
        .collect();
    let rules: Vec<MatchRule> = texts.iter().map(|t| MatchRule::parse(t).unwrap()).collect();
    let p = compile(7, &rules, &resolver);
    assert!(p.widened);
    assert!(accepts(&p, &signal("org.y", "Other", "/")));
}
