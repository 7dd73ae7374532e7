//! The match-rule grammar (D-Bus specification, "Match Rules"), parsed as dbus-daemon parses it.
//!
//! A rule is `key=value` pairs separated by commas. A value may be quoted with `'`; inside quotes
//! everything is literal; outside quotes, `\'` is a literal quote and any other backslash is
//! literal. Whitespace around keys is skipped; it is significant inside values.

use std::fmt;

use busd_wire::names;

/// Longest rule text accepted, in bytes (`DBUS_MAXIMUM_MATCH_RULE_LENGTH`).
pub const MAX_RULE_LENGTH: usize = 1024;
/// Highest `argN` index.
pub use busd_wire::message::MAX_ARG_INDEX;
/// Most `key=value` pairs in one rule. dbus-daemon stops reading after 16 and ignores the
/// rest; busd refuses such a rule instead of silently widening it (see docs/compat.md).
pub const MAX_RULE_KEYS: usize = 16;

/// Why a rule was refused. [`Error::TooLong`] is `LimitsExceeded` on the bus, every other
/// variant `MatchRuleInvalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("Match rule text is {0} bytes, maximum is {MAX_RULE_LENGTH}")]
    TooLong(usize),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// The four message types a `type=` key can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    MethodCall = 1,
    MethodReturn = 2,
    Error = 3,
    Signal = 4,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::MethodCall,
            2 => Self::MethodReturn,
            3 => Self::Error,
            4 => Self::Signal,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MethodCall => "method_call",
            Self::MethodReturn => "method_return",
            Self::Error => "error",
            Self::Signal => "signal",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "method_call" => Self::MethodCall,
            "method_return" => Self::MethodReturn,
            "error" => Self::Error,
            "signal" => Self::Signal,
            _ => return None,
        })
    }
}

/// How an `argN...` key compares the argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgMatchKind {
    /// `argN='v'`: the argument is a STRING equal to v.
    String,
    /// `argNpath='v'`: STRING or OBJECT_PATH, equal, or one a `/`-terminated prefix of the other.
    Path,
    /// `arg0namespace='v'`: STRING equal to v or starting with `v.`.
    Namespace,
}

/// One argument condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArgMatch {
    pub index: u8,
    pub kind: ArgMatchKind,
    pub value: String,
}

/// A parsed match rule. Two rules are equal when dbus-daemon's `RemoveMatch` would consider them
/// the same rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MatchRule {
    pub msg_type: Option<MessageType>,
    pub sender: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    /// `path=`; at most one of `path` and `path_namespace` is set.
    pub path: Option<String>,
    pub path_namespace: Option<String>,
    pub destination: Option<String>,
    /// Sorted by index, one entry per index.
    pub args: Vec<ArgMatch>,
    pub eavesdrop: bool,
}

fn is_white(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Splits rule text into (key, value) tokens exactly as dbus-daemon's tokenizer does.
fn tokenize(text: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let mut tokens = Vec::new();
    let mut p = 0;
    while p < text.len() {
        while p < text.len() && is_white(text[p]) {
            p += 1;
        }
        let key_start = p;
        while p < text.len() && text[p] != b'=' && !is_white(text[p]) {
            p += 1;
        }
        let key_end = p;
        while p < text.len() && is_white(text[p]) {
            p += 1;
        }
        if key_start == key_end {
            if p >= text.len() {
                // Empty rules and trailing whitespace are fine.
                break;
            }
            // dbus-daemon skips an empty key without moving on (so "=x" reads as an empty
            // rule after 16 rounds); busd refuses it instead.
            return Err(invalid("Match rule has an empty key"));
        }
        if p >= text.len() || text[p] != b'=' {
            return Err(invalid(
                "Match rule has a key with no subsequent '=' character",
            ));
        }
        p += 1;
        let key = String::from_utf8_lossy(&text[key_start..key_end]).into_owned();
        let mut value = Vec::new();
        let mut quote: Option<u8> = None;
        while p < text.len() {
            let c = text[p];
            p += 1;
            match quote {
                None => match c {
                    b'\'' => quote = Some(b'\''),
                    b',' => break,
                    b'\\' => quote = Some(b'\\'),
                    _ => value.push(c),
                },
                Some(b'\\') => {
                    // A backslash only escapes a quote mark.
                    if c != b'\'' {
                        value.push(b'\\');
                    }
                    value.push(c);
                    quote = None;
                }
                Some(_) => {
                    if c == b'\'' {
                        quote = None;
                    } else {
                        value.push(c);
                    }
                }
            }
        }
        match quote {
            Some(b'\\') => value.push(b'\\'),
            Some(_) => return Err(invalid("Unbalanced quotation marks in match rule")),
            None => {}
        }
        if tokens.len() == MAX_RULE_KEYS {
            return Err(invalid(format!(
                "Match rule has more than {MAX_RULE_KEYS} keys"
            )));
        }
        let value =
            String::from_utf8(value).map_err(|_| invalid("Match rule is not valid UTF-8"))?;
        tokens.push((key, value));
    }
    Ok(tokens)
}

impl MatchRule {
    /// Parses rule text, with dbus-daemon's checks and error messages.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_RULE_LENGTH {
            return Err(Error::TooLong(text.len()));
        }
        let mut rule = MatchRule::default();
        for (key, value) in tokenize(text.as_bytes())? {
            rule.apply(&key, value)?;
        }
        Ok(rule)
    }

    fn apply(&mut self, key: &str, value: String) -> Result<(), Error> {
        fn once(slot: &Option<String>, key: &str) -> Result<(), Error> {
            match slot {
                Some(_) => Err(invalid(format!("Key {key} specified twice in match rule"))),
                None => Ok(()),
            }
        }
        match key {
            "type" => {
                if self.msg_type.is_some() {
                    return Err(invalid(format!("Key {key} specified twice in match rule")));
                }
                self.msg_type = Some(MessageType::parse(&value).ok_or_else(|| {
                    invalid(format!("Invalid message type ({value}) in match rule"))
                })?);
            }
            "sender" => {
                once(&self.sender, key)?;
                if !names::is_valid_bus_name(&value) {
                    return Err(invalid(format!("Sender name '{value}' is invalid")));
                }
                self.sender = Some(value);
            }
            "interface" => {
                once(&self.interface, key)?;
                if !names::is_valid_interface(&value) {
                    return Err(invalid(format!("Interface name '{value}' is invalid")));
                }
                self.interface = Some(value);
            }
            "member" => {
                once(&self.member, key)?;
                if !names::is_valid_member(&value) {
                    return Err(invalid(format!("Member name '{value}' is invalid")));
                }
                self.member = Some(value);
            }
            "path" | "path_namespace" => {
                if self.path.is_some() || self.path_namespace.is_some() {
                    return Err(invalid(
                        "path or path_namespace specified twice in match rule",
                    ));
                }
                if !names::is_valid_object_path(&value) {
                    return Err(invalid(format!("Path '{value}' is invalid")));
                }
                if key == "path" {
                    self.path = Some(value);
                } else {
                    self.path_namespace = Some(value);
                }
            }
            "destination" => {
                once(&self.destination, key)?;
                if !names::is_valid_bus_name(&value) {
                    return Err(invalid(format!("Destination name '{value}' is invalid")));
                }
                self.destination = Some(value);
            }
            "eavesdrop" => {
                // May be given more than once: clients add eavesdrop='false' to undo a default.
                self.eavesdrop = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(invalid(format!(
                            "eavesdrop='{value}' is invalid, it should be 'true' or 'false'"
                        )))
                    }
                };
            }
            k if k.starts_with("arg") => self.apply_arg(k, value)?,
            _ => return Err(invalid(format!("Unknown key \"{key}\" in match rule"))),
        }
        Ok(())
    }

    fn apply_arg(&mut self, key: &str, value: String) -> Result<(), Error> {
        let rest = &key[3..];
        if rest.is_empty() {
            return Err(invalid(format!(
                "Key '{key}' in match rule starts with 'arg' but lacks an arg number. \
                 Should be 'arg0' or 'arg7' for example."
            )));
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid(format!(
                "Key '{key}' in match rule starts with 'arg' but could not parse arg number. \
                 Should be 'arg0' or 'arg7' for example."
            )));
        }
        let number: u64 = rest[..digits].parse().unwrap_or(u64::MAX);
        let kind = match &rest[digits..] {
            "" => ArgMatchKind::String,
            "path" => ArgMatchKind::Path,
            "namespace" if key == "arg0namespace" => {
                if !names::is_valid_bus_namespace(&value) {
                    return Err(invalid(format!(
                        "arg0namespace='{value}' is not a valid prefix of a bus name"
                    )));
                }
                ArgMatchKind::Namespace
            }
            _ => {
                return Err(invalid(format!(
                    "Key '{key}' in match rule contains junk after argument number ({number}). \
                     Only 'arg{number}path' (for example) or 'arg0namespace' are valid"
                )))
            }
        };
        if number > u64::from(MAX_ARG_INDEX) {
            return Err(invalid(format!(
                "Key '{key}' in match rule has arg number {number} but the maximum is {MAX_ARG_INDEX}."
            )));
        }
        let index = number as u8;
        match self.args.binary_search_by_key(&index, |a| a.index) {
            Ok(_) => Err(invalid(format!(
                "Argument {key} matched more than once in match rule"
            ))),
            Err(at) => {
                self.args.insert(at, ArgMatch { index, kind, value });
                Ok(())
            }
        }
    }

    /// Highest argument index the rule looks at, if any.
    pub fn max_arg_index(&self) -> Option<u8> {
        self.args.last().map(|a| a.index)
    }
}

fn write_value(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    // Quote the value; a literal quote is closed, escaped and reopened: 'it'\''s'.
    f.write_str("'")?;
    for (i, part) in value.split('\'').enumerate() {
        if i > 0 {
            f.write_str("'\\''")?;
        }
        f.write_str(part)?;
    }
    f.write_str("'")
}

impl fmt::Display for MatchRule {
    /// The canonical text of the rule (dbus-daemon's key order); parsing it gives the same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut key = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| -> fmt::Result {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}=")?;
            write_value(f, v)
        };
        if let Some(t) = self.msg_type {
            key(f, "type", t.as_str())?;
        }
        if let Some(v) = &self.interface {
            key(f, "interface", v)?;
        }
        if let Some(v) = &self.member {
            key(f, "member", v)?;
        }
        if let Some(v) = &self.path {
            key(f, "path", v)?;
        }
        if let Some(v) = &self.path_namespace {
            key(f, "path_namespace", v)?;
        }
        if let Some(v) = &self.sender {
            key(f, "sender", v)?;
        }
        if let Some(v) = &self.destination {
            key(f, "destination", v)?;
        }
        if self.eavesdrop {
            key(f, "eavesdrop", "true")?;
        }
        for a in &self.args {
            let name = match a.kind {
                ArgMatchKind::String => format!("arg{}", a.index),
                ArgMatchKind::Path => format!("arg{}path", a.index),
                ArgMatchKind::Namespace => "arg0namespace".to_string(),
            };
            key(f, &name, &a.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> MatchRule {
        MatchRule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn specification_example_parses() {
        let r = parse("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='Foo',path='/bar/foo',destination=':452345.34',arg2='bar'");
        assert_eq!(r.msg_type, Some(MessageType::Signal));
        assert_eq!(r.sender.as_deref(), Some("org.freedesktop.DBus"));
        assert_eq!(r.interface.as_deref(), Some("org.freedesktop.DBus"));
        assert_eq!(r.member.as_deref(), Some("Foo"));
        assert_eq!(r.path.as_deref(), Some("/bar/foo"));
        assert_eq!(r.destination.as_deref(), Some(":452345.34"));
        assert_eq!(
            r.args,
            vec![ArgMatch {
                index: 2,
                kind: ArgMatchKind::String,
                value: "bar".into()
            }]
        );
    }

    #[test]
    fn empty_rule_and_whitespace_are_fine() {
        assert_eq!(parse(""), MatchRule::default());
        assert_eq!(parse("   "), MatchRule::default());
        assert_eq!(
            parse(" type ='signal', member='M'").msg_type,
            Some(MessageType::Signal)
        );
        // Whitespace after '=' belongs to the value, as in dbus-daemon.
        assert!(MatchRule::parse("type= 'signal'").is_err());
        assert!(MatchRule::parse("=x").is_err());
    }

    #[test]
    fn quoting_and_escapes_behave_like_dbus_daemon() {
        // Unquoted values, values with spaces inside quotes, and the '\'' idiom.
        assert_eq!(parse("arg0=foo").args[0].value, "foo");
        assert_eq!(parse("arg0='a b,c'").args[0].value, "a b,c");
        assert_eq!(parse(r"arg0='it'\''s'").args[0].value, "it's");
        // Outside quotes, a backslash escapes only a quote.
        assert_eq!(parse(r"arg0=a\'b").args[0].value, "a'b");
        assert_eq!(parse(r"arg0=a\b").args[0].value, r"a\b");
        // Inside quotes, backslash is literal.
        assert_eq!(parse(r"arg0='a\b'").args[0].value, r"a\b");
        // A trailing backslash is kept.
        assert_eq!(parse(r"arg0=ab\").args[0].value, r"ab\");
        // Zero-length values are allowed.
        assert_eq!(parse("arg0=''").args[0].value, "");
        assert_eq!(parse("arg0=").args[0].value, "");
    }

    #[test]
    fn invalid_rules_are_rejected() {
        for bad in [
            "type='signal'x,foo",
            "type",
            "type='bogus'",
            "type='signal',type='signal'",
            "sender='not valid'",
            "interface='org'",
            "member='a.b'",
            "path='no/slash'",
            "path='/a',path_namespace='/b'",
            "destination=':'",
            "eavesdrop='maybe'",
            "arg='x'",
            "argx='x'",
            "arg64='x'",
            "arg0='a',arg0='b'",
            "arg1namespace='org'",
            "arg0namespace='org..x'",
            "arg0junk='x'",
            "unknown='x'",
            "arg0='unbalanced",
        ] {
            assert!(
                matches!(MatchRule::parse(bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn length_limit_is_limits_exceeded() {
        let long = format!("arg0='{}'", "x".repeat(MAX_RULE_LENGTH));
        assert_eq!(MatchRule::parse(&long), Err(Error::TooLong(long.len())));
        let just = format!("arg0='{}'", "x".repeat(MAX_RULE_LENGTH - 7));
        assert_eq!(just.len(), MAX_RULE_LENGTH);
        assert!(MatchRule::parse(&just).is_ok());
    }

    #[test]
    fn arg_keys() {
        let r = parse("arg63='x',arg3path='/a/',arg0namespace='org.example'");
        assert_eq!(
            r.args.iter().map(|a| a.index).collect::<Vec<_>>(),
            vec![0, 3, 63]
        );
        assert_eq!(r.args[0].kind, ArgMatchKind::Namespace);
        assert_eq!(r.args[1].kind, ArgMatchKind::Path);
        assert_eq!(r.max_arg_index(), Some(63));
    }

    #[test]
    fn eavesdrop_can_be_repeated_and_last_wins() {
        assert!(parse("eavesdrop=true").eavesdrop);
        assert!(!parse("eavesdrop=true,eavesdrop=false").eavesdrop);
    }

    #[test]
    fn too_many_keys_is_refused_not_truncated() {
        let many: Vec<String> = (0..17).map(|i| format!("arg{i}='x'")).collect();
        assert!(MatchRule::parse(&many.join(",")).is_err());
        assert!(MatchRule::parse(&many[..16].join(",")).is_ok());
    }

    #[test]
    fn display_round_trips() {
        let r =
            parse(r"type='signal',member='M',arg0='it'\''s',path_namespace='/a',eavesdrop=true");
        assert_eq!(parse(&r.to_string()), r);
        assert_eq!(
            r.to_string(),
            r"type='signal',member='M',path_namespace='/a',eavesdrop='true',arg0='it'\''s'"
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = MatchRule::parse(&s);
        }

        #[test]
        fn display_then_parse_is_identity(
            member in proptest::option::of("[A-Za-z_][A-Za-z0-9_]{0,10}"),
            arg0 in proptest::option::of("[ -~]{0,20}"),
            arg2 in proptest::option::of("[ -~]{0,20}"),
            eavesdrop in any::<bool>(),
        ) {
            let mut rule = MatchRule { member, eavesdrop, ..Default::default() };
            if let Some(v) = arg0 { rule.args.push(ArgMatch { index: 0, kind: ArgMatchKind::String, value: v }); }
            if let Some(v) = arg2 { rule.args.push(ArgMatch { index: 2, kind: ArgMatchKind::Path, value: v }); }
            prop_assert_eq!(MatchRule::parse(&rule.to_string()).unwrap(), rule);
        }
    }
}
