//! The configuration's `<policy>` contexts, with user and group names resolved, ready to
//! build a [`ClientPolicy`] per connection and to decide who may connect.

use std::collections::HashMap;

use crate::config::{Config, Error, PolicyKind};
use crate::eval::{ClientPolicy, ClientRule};
use crate::rule::RuleKind;

/// Looks up accounts (NSS in the daemon, a table in tests).
pub trait Accounts {
    fn user_id(&self, name: &str) -> Option<u32>;
    fn group_id(&self, name: &str) -> Option<u32>;
}

/// What a connection is, for choosing the contexts that apply to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ClientIdentity {
    /// None for an anonymous connection.
    pub uid: Option<u32>,
    /// The connection's groups (SO_PEERGROUPS plus its primary group), sorted.
    pub groups: Vec<u32>,
    /// Whether the user is logged in at a local seat (only asked when some context needs it).
    pub at_console: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anyone,
    Id(u32),
}

#[derive(Debug, Clone, Default)]
struct Context {
    client: Vec<ClientRule>,
    /// `<allow|deny user=|group=>`: (allow, is_group, who).
    connect: Vec<(bool, bool, Who)>,
}

/// The policy part of a configuration, compiled once per (re)load.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    default: Context,
    mandatory: Context,
    by_uid: HashMap<u32, Context>,
    by_gid: HashMap<u32, Context>,
    console: [Context; 2],
    /// Names that did not resolve, with where they were written (dbus-daemon warns and
    /// ignores them).
    pub warnings: Vec<String>,
}

/// A user or group as dbus-daemon reads it from a configuration: a number, or a name.
fn resolve(name: &str, lookup: impl Fn(&str) -> Option<u32>) -> Option<u32> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        lookup(name)
    }
}

fn location(file: &std::path::Path, line: u32) -> String {
    format!("{}:{line}", file.display())
}

impl CompiledPolicy {
    /// Compiles the configuration's policy. Unknown users and groups are warnings, as in
    /// dbus-daemon; a `user=`/`group=` rule inside a per-user or per-group context is an error.
    pub fn compile(config: &Config, accounts: &dyn Accounts) -> Result<CompiledPolicy, Error> {
        let mut out = CompiledPolicy::default();
        for ctx in &config.policies {
            let target: &mut Context = match &ctx.kind {
                PolicyKind::Default => &mut out.default,
                PolicyKind::Mandatory => &mut out.mandatory,
                PolicyKind::User(u) => match resolve(u, |n| accounts.user_id(n)) {
                    Some(uid) => out.by_uid.entry(uid).or_default(),
                    None => {
                        out.warnings.push(format!(
                            "{}: Unknown username \"{u}\" in message bus configuration file",
                            location(&ctx.file, ctx.line)
                        ));
                        continue;
                    }
                },
                PolicyKind::Group(g) => match resolve(g, |n| accounts.group_id(n)) {
                    Some(gid) => out.by_gid.entry(gid).or_default(),
                    None => {
                        out.warnings.push(format!(
                            "{}: Unknown group \"{g}\" in message bus configuration file",
                            location(&ctx.file, ctx.line)
                        ));
                        continue;
                    }
                },
                PolicyKind::AtConsole(t) => &mut out.console[usize::from(*t)],
            };
            let per_id = matches!(ctx.kind, PolicyKind::User(_) | PolicyKind::Group(_));
            for pr in &ctx.rules {
                let allow = pr.rule.allow;
                if per_id && !pr.rule.kind.is_per_client() {
                    let element = if allow { "allow" } else { "deny" };
                    let what = if matches!(ctx.kind, PolicyKind::User(_)) {
                        "per-user"
                    } else {
                        "per-group"
                    };
                    return Err(Error::Parse {
                        file: pr.file.clone(),
                        line: pr.line,
                        reason: format!(
                            "<{element}> rule cannot be {what} because it has bus-global semantics"
                        ),
                    });
                }
                match &pr.rule.kind {
                    RuleKind::Send(r) => target.client.push(ClientRule::Send(allow, r.clone())),
                    RuleKind::Receive(r) => {
                        target.client.push(ClientRule::Receive(allow, r.clone()))
                    }
                    RuleKind::Own { name, prefix } => {
                        target
                            .client
                            .push(ClientRule::Own(allow, name.clone(), *prefix))
                    }
                    RuleKind::User(u) | RuleKind::Group(u) => {
                        let is_group = matches!(pr.rule.kind, RuleKind::Group(_));
                        let who = match u {
                            None => Some(Who::Anyone),
                            Some(name) if is_group => {
                                resolve(name, |n| accounts.group_id(n)).map(Who::Id)
                            }
                            Some(name) => resolve(name, |n| accounts.user_id(n)).map(Who::Id),
                        };
                        match who {
                            Some(who) => target.connect.push((allow, is_group, who)),
                            None => out.warnings.push(format!(
                                "{}: Unknown {} \"{}\" on element <{}>",
                                location(&pr.file, pr.line),
                                if is_group { "group" } else { "username" },
                                u.as_deref().unwrap_or(""),
                                if allow { "allow" } else { "deny" }
                            )),
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether building a client policy needs the connection's groups.
    pub fn uses_groups(&self) -> bool {
        !self.by_gid.is_empty()
    }

    /// Whether building a client policy needs to know if the user is at the console.
    pub fn uses_console(&self) -> bool {
        self.console.iter().any(|c| !c.client.is_empty())
    }

    /// Whether deciding who may connect needs the user's groups.
    pub fn connect_uses_groups(&self) -> bool {
        [&self.default, &self.mandatory]
            .iter()
            .any(|c| c.connect.iter().any(|&(_, is_group, _)| is_group))
    }

    /// The rules that apply to a connection, in dbus-daemon's order: default, each of its
    /// groups, its user, console, mandatory.
    pub fn client_policy(&self, who: &ClientIdentity) -> ClientPolicy {
        let mut rules: Vec<ClientRule> = self.default.client.clone();
        for gid in &who.groups {
            if let Some(ctx) = self.by_gid.get(gid) {
                rules.extend(ctx.client.iter().cloned());
            }
        }
        if let Some(uid) = who.uid {
            if let Some(ctx) = self.by_uid.get(&uid) {
                rules.extend(ctx.client.iter().cloned());
            }
            rules.extend(
                self.console[usize::from(who.at_console)]
                    .client
                    .iter()
                    .cloned(),
            );
        }
        rules.extend(self.mandatory.client.iter().cloned());
        ClientPolicy::from_rules(rules)
    }

    /// May a user authenticated as `uid` connect? By default only the bus's own user may;
    /// `<allow|deny user=|group=>` in the default and mandatory contexts change that.
    /// `groups` are the user's groups from the account database.
    pub fn may_connect(&self, uid: u32, groups: &[u32], bus_uid: u32) -> bool {
        let mut allowed = uid == bus_uid;
        for ctx in [&self.default, &self.mandatory] {
            for &(allow, is_group, who) in &ctx.connect {
                let applies = match (who, is_group) {
                    (Who::Anyone, _) => true,
                    (Who::Id(id), false) => id == uid,
                    (Who::Id(id), true) => groups.contains(&id),
                };
                if applies {
                    allowed = allow;
                }
            }
        }
        allowed
    }

    /// Every file the policy came from is in the configuration; this names the contexts
    /// for `--check-config`.
    pub fn describe(&self) -> Vec<(String, ClientPolicyView)> {
        let mut out = vec![("default".to_string(), ClientPolicyView::of(&self.default))];
        let mut gids: Vec<_> = self.by_gid.keys().copied().collect();
        gids.sort_unstable();
        for g in gids {
            out.push((format!("group {g}"), ClientPolicyView::of(&self.by_gid[&g])));
        }
        let mut uids: Vec<_> = self.by_uid.keys().copied().collect();
        uids.sort_unstable();
        for u in uids {
            out.push((format!("user {u}"), ClientPolicyView::of(&self.by_uid[&u])));
        }
        out.push((
            "at_console=false".into(),
            ClientPolicyView::of(&self.console[0]),
        ));
        out.push((
            "at_console=true".into(),
            ClientPolicyView::of(&self.console[1]),
        ));
        out.push(("mandatory".into(), ClientPolicyView::of(&self.mandatory)));
        out
    }
}

/// Counts of the rules in one context, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPolicyView {
    pub send: usize,
    pub receive: usize,
    pub own: usize,
    pub connect: usize,
}

impl ClientPolicyView {
    fn of(c: &Context) -> Self {
        let mut v = ClientPolicyView {
            send: 0,
            receive: 0,
            own: 0,
            connect: c.connect.len(),
        };
        for r in &c.client {
            match r {
                ClientRule::Send(..) => v.send += 1,
                ClientRule::Receive(..) => v.receive += 1,
                ClientRule::Own(..) => v.own += 1,
            }
        }
        v
    }
}
