//! Whether a message matches a rule (specification "Match Rules", dbus-daemon's
//! `match_rule_matches`).

use crate::rule::{ArgMatchKind, MatchRule};

pub use busd_wire::message::Arg;

/// What the matcher needs to know about a message and its routing.
pub trait MessageInfo {
    /// Message type code (1 = method call ... 4 = signal).
    fn msg_type(&self) -> u8;
    fn interface(&self) -> Option<&str>;
    fn member(&self) -> Option<&str>;
    fn path(&self) -> Option<&str>;
    /// The DESTINATION header field.
    fn destination(&self) -> Option<&str>;
    /// Whether `name` designates the sender: its unique name, a well-known name it is the
    /// primary owner of, or `org.freedesktop.DBus` for the bus itself.
    fn sender_is(&self, name: &str) -> bool;
    /// Whether `name` designates the addressed recipient (the primary owner of the destination);
    /// for a message to the bus or to a name nobody owns yet, whether it equals the destination.
    fn destination_is(&self, name: &str) -> bool;
    /// Argument `index` of the body.
    fn arg(&self, index: u8) -> Arg<'_>;
}

/// `argNpath`: equal, or one is a prefix of the other that ends with `/`.
fn path_arg_matches(expected: &str, actual: &str) -> bool {
    let (e, a) = (expected.as_bytes(), actual.as_bytes());
    if a.len() < e.len() && a.last() != Some(&b'/') {
        return false;
    }
    if e.len() < a.len() && e.last() != Some(&b'/') {
        return false;
    }
    let n = e.len().min(a.len());
    e[..n] == a[..n]
}

/// `arg0namespace`: equal, or `expected` followed by a `.`.
fn namespace_arg_matches(expected: &str, actual: &str) -> bool {
    actual.len() >= expected.len()
        && actual.starts_with(expected)
        && (actual.len() == expected.len() || actual.as_bytes()[expected.len()] == b'.')
}

/// `path_namespace`: the path itself or below it; `/` matches everything.
pub fn path_in_namespace(namespace: &str, path: &str) -> bool {
    path.starts_with(namespace)
        && (namespace.len() == 1
            || path.len() == namespace.len()
            || path.as_bytes()[namespace.len()] == b'/')
}

impl MatchRule {
    /// Whether `msg` matches this rule, for a connection that is not the message's addressed
    /// recipient. Without `eavesdrop=true` a rule only matches broadcasts (messages without a
    /// destination); whether eavesdropping is *allowed* is the caller's policy decision.
    pub fn matches(&self, msg: &impl MessageInfo) -> bool {
        if let Some(t) = self.msg_type {
            if t as u8 != msg.msg_type() {
                return false;
            }
        }
        if let Some(i) = &self.interface {
            if msg.interface() != Some(i.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.member {
            if msg.member() != Some(m.as_str()) {
                return false;
            }
        }
        if let Some(s) = &self.sender {
            if !msg.sender_is(s) {
                return false;
            }
        }
        match &self.destination {
            Some(d) => {
                if msg.destination().is_none() || !self.eavesdrop || !msg.destination_is(d) {
                    return false;
                }
            }
            None => {
                if !self.eavesdrop && msg.destination().is_some() {
                    return false;
                }
            }
        }
        if let Some(p) = &self.path {
            if msg.path() != Some(p.as_str()) {
                return false;
            }
        }
        if let Some(ns) = &self.path_namespace {
            match msg.path() {
                Some(p) if path_in_namespace(ns, p) => {}
                _ => return false,
            }
        }
        self.args.iter().all(|a| {
            let arg = msg.arg(a.index);
            match (a.kind, arg) {
                (ArgMatchKind::String, Arg::Str(s)) => s == a.value,
                (ArgMatchKind::Path, Arg::Str(s) | Arg::Path(s)) => path_arg_matches(&a.value, s),
                (ArgMatchKind::Namespace, Arg::Str(s)) => namespace_arg_matches(&a.value, s),
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Msg {
        ty: u8,
        interface: Option<&'static str>,
        member: Option<&'static str>,
        path: Option<&'static str>,
        destination: Option<&'static str>,
        sender_names: Vec<&'static str>,
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
            self.destination
        }
        fn sender_is(&self, name: &str) -> bool {
            self.sender_names.contains(&name)
        }
        fn destination_is(&self, name: &str) -> bool {
            self.destination == Some(name)
        }
        fn arg(&self, index: u8) -> Arg<'_> {
            self.args
                .get(index as usize)
                .copied()
                .unwrap_or(Arg::Missing)
        }
    }

    fn signal() -> Msg {
        Msg {
            ty: 4,
            interface: Some("org.example.I"),
            member: Some("Changed"),
            path: Some("/a/b"),
            sender_names: vec![":1.5", "org.example.Svc"],
            ..Default::default()
        }
    }

    fn rule(s: &str) -> MatchRule {
        MatchRule::parse(s).unwrap()
    }

    #[test]
    fn empty_rule_matches_every_broadcast() {
        assert!(rule("").matches(&signal()));
    }

    #[test]
    fn header_keys() {
        let m = signal();
        assert!(
            rule("type='signal',interface='org.example.I',member='Changed',path='/a/b'")
                .matches(&m)
        );
        assert!(!rule("type='method_call'").matches(&m));
        assert!(!rule("interface='org.example.J'").matches(&m));
        assert!(!rule("member='Other'").matches(&m));
        assert!(!rule("path='/a'").matches(&m));
    }

    #[test]
    fn sender_matches_unique_and_owned_names() {
        let m = signal();
        assert!(rule("sender=':1.5'").matches(&m));
        assert!(rule("sender='org.example.Svc'").matches(&m));
        assert!(!rule("sender=':1.6'").matches(&m));
    }

    #[test]
    fn path_namespace_matches_whole_elements_only() {
        let mut m = signal();
        for (path, expected) in [
            ("/a/b", true),
            ("/a/b/c", true),
            ("/a/bc", false),
            ("/a", false),
        ] {
            m.path = Some(path);
            assert_eq!(
                rule("path_namespace='/a/b'").matches(&m),
                expected,
                "{path}"
            );
        }
        m.path = Some("/anything/at/all");
        assert!(rule("path_namespace='/'").matches(&m));
    }

    #[test]
    fn unicast_needs_eavesdrop() {
        let mut m = signal();
        m.destination = Some(":1.9");
        assert!(!rule("").matches(&m));
        assert!(rule("eavesdrop=true").matches(&m));
        assert!(!rule("destination=':1.9'").matches(&m));
        assert!(rule("destination=':1.9',eavesdrop=true").matches(&m));
        assert!(!rule("destination=':1.8',eavesdrop=true").matches(&m));
        // A rule with a destination never matches a broadcast.
        assert!(!rule("destination=':1.9',eavesdrop=true").matches(&signal()));
    }

    #[test]
    fn string_args_need_string_type() {
        let mut m = signal();
        m.args = vec![Arg::Str("foo"), Arg::Other, Arg::Path("/x")];
        assert!(rule("arg0='foo'").matches(&m));
        assert!(!rule("arg0='fo'").matches(&m));
        assert!(!rule("arg1='foo'").matches(&m));
        assert!(
            !rule("arg2='/x'").matches(&m),
            "argN does not match object paths"
        );
        assert!(rule("arg2path='/x'").matches(&m), "argNpath does");
        assert!(!rule("arg3=''").matches(&m), "missing argument");
    }

    #[test]
    fn arg_path_prefix_rule_works_both_ways() {
        let mut m = signal();
        let cases = [
            ("/aa/bb/", "/aa/bb/", true),
            ("/aa/bb/", "/aa/bb/cc", true),
            ("/aa/bb/", "/aa/b", false),
            ("/aa/bb/", "/aa/", true),
            ("/aa/bb/", "/", true),
            ("/aa/bb", "/aa/bb/cc", false),
            ("/aa/bb", "/aa/", true),
            ("/aa/bb", "/aa", false),
            ("/aa/bb", "/aa/bbb", false),
            ("/", "/anything", true),
            ("/aa", "", false),
        ];
        for (expected, actual, ok) in cases {
            m.args = vec![Arg::Str(actual)];
            let r = MatchRule::parse(&format!("arg0path='{expected}'")).unwrap();
            assert_eq!(r.matches(&m), ok, "arg0path='{expected}' vs {actual:?}");
        }
    }

    #[test]
    fn arg0namespace() {
        let mut m = signal();
        for (actual, ok) in [
            ("org.example", true),
            ("org.example.Foo", true),
            ("org.examplefoo", false),
            ("org.exampl", false),
            ("org", false),
        ] {
            m.args = vec![Arg::Str(actual)];
            assert_eq!(
                rule("arg0namespace='org.example'").matches(&m),
                ok,
                "{actual}"
            );
        }
    }
}
