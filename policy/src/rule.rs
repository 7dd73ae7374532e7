//! One `<allow>`/`<deny>` element, typed, with dbus-daemon's attribute rules
//! (bus/config-parser.c: which attributes combine, defaults, wildcards).

/// The largest number of fds a message can carry (the spec's maximum message length / 4):
/// `max_fds` defaults to it, so a rule without fd bounds matches every message.
pub const MAX_MESSAGE_UNIX_FDS: u32 = 128 * 1024 * 1024 / 4;

/// D-Bus message types, as the header encodes them.
pub const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

/// A send or receive rule. `None` fields are wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRule {
    pub msg_type: Option<u8>,
    pub path: Option<Box<str>>,
    pub interface: Option<Box<str>>,
    pub member: Option<Box<str>>,
    pub error: Option<Box<str>>,
    /// `send_destination` / `send_destination_prefix`, or `receive_sender`.
    pub peer: Option<Box<str>>,
    /// `peer` came from `send_destination_prefix`.
    pub peer_is_prefix: bool,
    /// For allow rules: applies to replies only when they were requested (default true).
    /// For deny rules: applies to requested replies too (default false).
    pub requested_reply: bool,
    pub eavesdrop: bool,
    /// `send_broadcast`: `Some(true)` only broadcasts, `Some(false)` only non-broadcasts.
    pub broadcast: Option<bool>,
    pub min_fds: u32,
    pub max_fds: u32,
    /// `log="true"` on a send rule: log the message when this rule decides.
    pub log: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    Send(MessageRule),
    Receive(MessageRule),
    /// `own` (`prefix` false; `None` is `own="*"`) or `own_prefix` (`prefix` true).
    Own {
        name: Option<Box<str>>,
        prefix: bool,
    },
    /// Who may connect: a user or group name (or number); `None` is `"*"`.
    User(Option<String>),
    Group(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: RuleKind,
}

impl RuleKind {
    /// Whether the rule is about a connection's messages or names (as opposed to who may
    /// connect, which is bus-global).
    pub fn is_per_client(&self) -> bool {
        !matches!(self, RuleKind::User(_) | RuleKind::Group(_))
    }
}

fn wildcard(v: Option<&str>) -> Option<Box<str>> {
    v.filter(|s| *s != "*").map(Box::from)
}

fn boolean(name: &str, v: Option<&str>) -> Result<Option<bool>, String> {
    match v {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(format!(
            "Bad value \"{other}\" for {name} attribute, must be true or false"
        )),
    }
}

fn fds(name: &str, v: Option<&str>, default: u32) -> Result<u32, String> {
    let Some(v) = v else { return Ok(default) };
    parse_c_long(v)
        .filter(|n| (0..=i64::from(MAX_MESSAGE_UNIX_FDS)).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            format!(
                "Bad value \"{v}\" for {name} attribute, must be an integer in range 0 to \
                 {MAX_MESSAGE_UNIX_FDS} inclusive"
            )
        })
}

/// An integer as dbus-daemon's `_dbus_string_parse_int` reads it: optional sign, decimal
/// digits, nothing after.
fn parse_c_long(s: &str) -> Option<i64> {
    let t = s.trim_start();
    if t.is_empty() || t.ends_with(char::is_whitespace) {
        return None;
    }
    t.parse().ok()
}

fn message_type(v: Option<&str>) -> Result<Option<u8>, String> {
    match v {
        None | Some("*") => Ok(None),
        Some("method_call") => Ok(Some(METHOD_CALL)),
        Some("method_return") => Ok(Some(METHOD_RETURN)),
        Some("error") => Ok(Some(ERROR)),
        Some("signal") => Ok(Some(SIGNAL)),
        Some(other) => Err(format!("Bad message type \"{other}\"")),
    }
}

impl Rule {
    /// Builds a rule from the attributes of an `<allow>` (`allow`) or `<deny>` element.
    /// Errors are dbus-daemon's texts; the caller adds the file and line.
    pub fn from_attributes(allow: bool, attrs: &[(String, String)]) -> Result<Rule, String> {
        let element = if allow { "allow" } else { "deny" };
        const KNOWN: &[&str] = &[
            "send_interface",
            "send_member",
            "send_error",
            "send_destination",
            "send_destination_prefix",
            "send_path",
            "send_type",
            "send_broadcast",
            "receive_interface",
            "receive_member",
            "receive_error",
            "receive_sender",
            "receive_path",
            "receive_type",
            "eavesdrop",
            "max_fds",
            "min_fds",
            "send_requested_reply",
            "receive_requested_reply",
            "own",
            "own_prefix",
            "user",
            "group",
            "log",
        ];
        for (i, (k, _)) in attrs.iter().enumerate() {
            if !KNOWN.contains(&k.as_str()) {
                return Err(format!(
                    "Attribute \"{k}\" is invalid on <{element}> element in this context"
                ));
            }
            if attrs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(format!(
                    "Attribute \"{k}\" repeated twice on the same <{element}> element"
                ));
            }
        }
        let get = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        let any = |keys: &[&str]| keys.iter().any(|k| get(k).is_some());

        let any_send = any(&[
            "send_destination",
            "send_destination_prefix",
            "send_broadcast",
            "send_path",
            "send_type",
            "send_interface",
            "send_member",
            "send_error",
            "send_requested_reply",
        ]);
        // `<allow eavesdrop="true"/>` alone is a receive rule.
        let any_receive = any(&[
            "receive_sender",
            "receive_path",
            "receive_type",
            "receive_interface",
            "receive_member",
            "receive_error",
            "receive_requested_reply",
        ]) || (!any_send && get("eavesdrop").is_some());
        let any_message = any_send || any_receive || any(&["eavesdrop", "max_fds", "min_fds"]);
        let (own, own_prefix, user, group) =
            (get("own"), get("own_prefix"), get("user"), get("group"));

        if !(any_send
            || any_receive
            || own.is_some()
            || own_prefix.is_some()
            || user.is_some()
            || group.is_some())
        {
            return Err(format!(
                "Element <{element}> must have one or more attributes"
            ));
        }
        if (get("send_member").is_some()
            && get("send_interface").is_none()
            && get("send_path").is_none())
            || (get("receive_member").is_some()
                && get("receive_interface").is_none()
                && get("receive_path").is_none())
        {
            return Err(format!(
                "On element <{element}>, if you specify a member you must specify an interface \
                 or a path. Keep in mind that not all messages have an interface field."
            ));
        }
        let singles = [own, own_prefix, user, group]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if usize::from(any_message) + singles > 1 {
            return Err(format!(
                "Invalid combination of attributes on element <{element}>: own, own_prefix, \
                 user, group and the message-related attributes cannot be combined"
            ));
        }
        if any_send && any_receive {
            return Err(format!(
                "Invalid combination of attributes on element <{element}>: send and receive \
                 attributes cannot be combined"
            ));
        }
        if any(&["send_member", "send_interface"]) && get("send_error").is_some() {
            return Err(format!(
                "Invalid combination of attributes on element <{element}>: send_error cannot \
                 be combined with send_member or send_interface"
            ));
        }
        if get("send_destination").is_some() && get("send_destination_prefix").is_some() {
            return Err(format!(
                "Invalid combination of attributes on element <{element}>: send_destination \
                 cannot be combined with send_destination_prefix"
            ));
        }
        if any(&["receive_member", "receive_interface"]) && get("receive_error").is_some() {
            return Err(format!(
                "Invalid combination of attributes on element <{element}>: receive_error \
                 cannot be combined with receive_member or receive_interface"
            ));
        }

        let kind = if any_send || any_receive {
            let p = if any_send { "send" } else { "receive" };
            let attr = |suffix: &str| get(&format!("{p}_{suffix}"));
            let msg_type = message_type(attr("type"))?;
            let eavesdrop = boolean("eavesdrop", get("eavesdrop"))?;
            let broadcast = if any_send {
                boolean("send_broadcast", get("send_broadcast"))?
            } else {
                None
            };
            let destination = get("send_destination").filter(|d| *d != "*");
            if let (Some(d), Some(true)) = (destination, broadcast) {
                return Err(format!(
                    "Rule with send_broadcast=\"true\" and send_destination=\"{d}\" cannot \
                     match anything"
                ));
            }
            let requested_reply =
                boolean(&format!("{p}_requested_reply"), attr("requested_reply"))?;
            let max_fds = fds("max_fds", get("max_fds"), MAX_MESSAGE_UNIX_FDS)?;
            let min_fds = fds("min_fds", get("min_fds"), 0)?;
            let (peer, peer_is_prefix) = if any_send {
                match get("send_destination_prefix") {
                    // No wildcard for prefixes: dbus-daemon takes "*" literally there.
                    Some(prefix) => (Some(Box::from(prefix)), true),
                    None => (wildcard(get("send_destination")), false),
                }
            } else {
                (wildcard(get("receive_sender")), false)
            };
            let rule = MessageRule {
                msg_type,
                path: wildcard(attr("path")),
                interface: wildcard(attr("interface")),
                member: wildcard(attr("member")),
                error: wildcard(attr("error")),
                peer,
                peer_is_prefix,
                // Allow rules default to "only requested replies", deny rules to "only
                // unrequested replies".
                requested_reply: requested_reply.unwrap_or(allow),
                eavesdrop: eavesdrop.unwrap_or(false),
                broadcast,
                min_fds,
                max_fds,
                log: any_send && get("log") == Some("true"),
            };
            if any_send {
                RuleKind::Send(rule)
            } else {
                RuleKind::Receive(rule)
            }
        } else if let Some(own) = own {
            RuleKind::Own {
                name: wildcard(Some(own)),
                prefix: false,
            }
        } else if let Some(prefix) = own_prefix {
            RuleKind::Own {
                name: Some(Box::from(prefix)),
                prefix: true,
            }
        } else if let Some(user) = user {
            RuleKind::User((user != "*").then(|| user.to_string()))
        } else if let Some(group) = group {
            RuleKind::Group((group != "*").then(|| group.to_string()))
        } else {
            // Every combination was handled above; keep the parser total anyway.
            return Err(format!(
                "Element <{element}> must have one or more attributes"
            ));
        };
        Ok(Rule { allow, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, attrs: &[(&str, &str)]) -> Result<Rule, String> {
        let attrs: Vec<(String, String)> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rule::from_attributes(allow, &attrs)
    }

    fn send(r: Result<Rule, String>) -> MessageRule {
        match r.unwrap().kind {
            RuleKind::Send(m) => m,
            other => panic!("not a send rule: {other:?}"),
        }
    }

    #[test]
    fn requested_reply_defaults_to_the_rule_polarity() {
        assert!(send(rule(true, &[("send_destination", "a.b")])).requested_reply);
        assert!(!send(rule(false, &[("send_destination", "a.b")])).requested_reply);
        assert!(
            !send(rule(
                true,
                &[
                    ("send_destination", "a.b"),
                    ("send_requested_reply", "false")
                ]
            ))
            .requested_reply
        );
    }

    #[test]
    fn wildcards_become_none_but_a_prefix_star_is_literal() {
        let r = send(rule(
            true,
            &[("send_destination", "*"), ("send_interface", "*")],
        ));
        assert_eq!((r.peer, r.interface), (None, None));
        let r = send(rule(true, &[("send_destination_prefix", "*")]));
        assert_eq!(r.peer.as_deref(), Some("*"));
        assert!(r.peer_is_prefix);
        assert_eq!(
            rule(true, &[("own", "*")]).unwrap().kind,
            RuleKind::Own {
                name: None,
                prefix: false
            }
        );
        assert_eq!(
            rule(false, &[("user", "*")]).unwrap().kind,
            RuleKind::User(None)
        );
    }

    #[test]
    fn eavesdrop_alone_is_a_receive_rule_and_with_send_attributes_a_send_rule() {
        let r = rule(true, &[("eavesdrop", "true")]).unwrap();
        assert!(matches!(r.kind, RuleKind::Receive(ref m) if m.eavesdrop && m.peer.is_none()));
        let r = send(rule(
            true,
            &[("send_destination", "*"), ("eavesdrop", "true")],
        ));
        assert!(r.eavesdrop);
    }

    #[test]
    fn dbus_daemon_refuses_these_combinations() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("log", "true")], "must have one or more attributes"),
            (&[("max_fds", "1")], "must have one or more attributes"),
            (&[("send_member", "Foo")], "if you specify a member"),
            (&[("own", "a.b"), ("user", "root")], "cannot be combined"),
            (&[("own", "a.b"), ("min_fds", "1")], "cannot be combined"),
            (
                &[("send_destination", "a"), ("receive_sender", "b")],
                "send and receive",
            ),
            (
                &[("send_error", "a.E"), ("send_interface", "a.I")],
                "send_error cannot",
            ),
            (
                &[
                    ("receive_error", "a.E"),
                    ("receive_member", "M"),
                    ("receive_path", "/"),
                ],
                "receive_error cannot",
            ),
            (
                &[("send_destination", "a"), ("send_destination_prefix", "b")],
                "send_destination_prefix",
            ),
            (&[("send_type", "bogus")], "Bad message type \"bogus\""),
            (&[("send_broadcast", "maybe")], "must be true or false"),
            (
                &[("send_broadcast", "true"), ("send_destination", "a.b")],
                "cannot match anything",
            ),
            (
                &[("receive_sender", "a"), ("eavesdrop", "yes")],
                "must be true or false",
            ),
            (
                &[("send_destination", "a"), ("max_fds", "-1")],
                "range 0 to",
            ),
            (&[("send_destination", "a"), ("min_fds", "x")], "range 0 to"),
            (
                &[("frobnicate", "a")],
                "Attribute \"frobnicate\" is invalid",
            ),
        ];
        for (attrs, want) in cases {
            let e = rule(true, attrs).unwrap_err();
            assert!(e.contains(want), "{attrs:?}: {e}");
        }
    }

    #[test]
    fn broadcast_true_with_a_wildcard_destination_is_fine() {
        let r = send(rule(
            true,
            &[("send_broadcast", "true"), ("send_destination", "*")],
        ));
        assert_eq!(r.broadcast, Some(true));
    }

    #[test]
    fn fd_bounds_and_types_parse() {
        let r = send(rule(
            false,
            &[("send_type", "signal"), ("min_fds", "1"), ("max_fds", "4")],
        ));
        assert_eq!((r.msg_type, r.min_fds, r.max_fds), (Some(SIGNAL), 1, 4));
        let r = send(rule(true, &[("send_type", "*")]));
        assert_eq!((r.msg_type, r.max_fds), (None, MAX_MESSAGE_UNIX_FDS));
    }
}
