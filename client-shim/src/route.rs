//! The routing decision (DESIGN 5.3, 5.7): where a message goes, from the message and the
//! routing table alone.

use busd_match::header::{self, TO_DAEMON};
use busd_match::protocol;
use busd_match::table::Table;
use busd_wire::message::{Message, METHOD_CALL, SIGNAL};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To these members directly, with this destination word (0 for a broadcast), and a
    /// copy to the daemon when asked.
    Direct {
        members: Vec<u32>,
        destination: u32,
        copy_to_daemon: bool,
        /// Direct members a broadcast does not go to: their summary rules it out.
        skipped: u64,
    },
    /// To the daemon only, with this destination word ([`TO_DAEMON`]: the daemon routes
    /// it).
    Daemon(u32),
}

impl Route {
    /// The routing header's destination word.
    pub fn destination(&self) -> u32 {
        match self {
            Route::Direct { destination, .. } => *destination,
            Route::Daemon(d) => *d,
        }
    }
}

/// Where member `me` sends `msg`, by the table as it is now. `reply_via_daemon`: a reply to
/// a call that came through the daemon, which goes back that way (the daemon's reply
/// accounting stays exact).
/// What SENDER can add to a message: the field's code, signature and length, a bus name of
/// at most 255 bytes, its nul, and padding.
const SENDER_ROOM: usize = 8 + 4 + 256 + 7;

pub fn plan(msg: &Message, table: &Table, me: u32, reply_via_daemon: bool) -> Route {
    let me_direct = table.member(me).is_some_and(|m| m.direct);
    let timed_call = msg.msg_type() == METHOD_CALL && !msg.no_reply_expected();
    if reply_via_daemon || !me_direct || (timed_call && table.calls_mediated) {
        return Route::Daemon(TO_DAEMON);
    }
    // Receivers drop a message past the bus's limits: the daemon answers it as
    // dbus-daemon would. (Near the size limit too: SENDER, added on the way, may pass it.)
    if msg.bytes().len() + SENDER_ROOM > crate::receive::max_message(table)
        || msg.unix_fds() > table.max_fds
    {
        return Route::Daemon(TO_DAEMON);
    }
    match msg.destination() {
        None if msg.msg_type() == SIGNAL => broadcast(msg, table),
        // A message without destination that is not a signal: the daemon answers it.
        None => Route::Daemon(TO_DAEMON),
        Some(d) => {
            let owner = if busd_wire::names::is_unique_name(d) {
                protocol::member_of_unique(d)
            } else if msg.unix_fds() > 0 {
                // A receiver that no longer owns the name gives a message back, and its
                // descriptors could not be checked then (crate::returns): the daemon
                // routes it.
                None
            } else {
                table.owner(d)
            };
            match owner.and_then(|id| table.member(id)) {
                Some(m) if m.reachable() => Route::Direct {
                    members: vec![m.id],
                    destination: m.id,
                    copy_to_daemon: table.observed,
                    skipped: 0,
                },
                // The bus itself, a member the policy mediates, a client off the fast
                // path, a name nobody owns: the daemon routes it.
                _ => Route::Daemon(TO_DAEMON),
            }
        }
    }
}

/// A broadcast: to every direct member whose summary may select it, and to the daemon when
/// its own summary (the rules of everyone off the fast path, monitors) may.
fn broadcast(msg: &Message, table: &Table) -> Route {
    let (member, interface, path) = (
        msg.member().map_or(0, header::hash32),
        msg.interface().map_or(0, header::hash32),
        msg.path().map_or(0, header::hash32),
    );
    let mut direct = 0u64;
    let members: Vec<u32> = table
        .members
        .iter()
        .filter(|m| m.id != 0 && m.reachable())
        .inspect(|_| direct += 1)
        .filter(|m| m.summary.selects(member, interface, path))
        .map(|m| m.id)
        .collect();
    let copy_to_daemon = table
        .member(0)
        .is_some_and(|m| m.summary.selects(member, interface, path));
    Route::Direct {
        skipped: direct - members.len() as u64,
        members,
        destination: 0,
        copy_to_daemon,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use busd_match::progress::NO_SLOT;
    use busd_match::summary::Summary;
    use busd_match::table::Member;
    use busd_match::MatchRule;
    use busd_wire::marshal::{Endian, Writer};
    use busd_wire::message::{encode, HeaderFields, FLAG_NO_REPLY_EXPECTED};

    /// A member of a hand-built table, interested in what `rules` select.
    pub fn member(id: u32, direct: bool, rules: &[&str]) -> Member {
        let rules: Vec<MatchRule> = rules.iter().map(|r| MatchRule::parse(r).unwrap()).collect();
        Member {
            id,
            direct,
            slot: NO_SLOT,
            summary: Summary::of(&rules),
            pid: 1000 + id,
            ready: true,
            departed: false,
            left: 0,
        }
    }

    /// The daemon (0, wanting nothing), members 2 (direct, wants Ping), 3 (direct, wants
    /// everything), 4 (direct, wants Pong), 5 (mediated by the policy), 6 (left; it wanted
    /// Ping); 2 owns org.example.Two and 5 org.example.Five. Member N's process is 1000+N,
    /// in pid namespace 7.
    pub fn table() -> Table {
        Table {
            observed: false,
            calls_mediated: false,
            members: vec![
                member(0, true, &[]),
                member(2, true, &["member='Ping'"]),
                member(3, true, &["type='signal'"]),
                member(4, true, &["member='Pong'"]),
                member(5, false, &["member='Ping'"]),
                Member {
                    departed: true,
                    left: 0,
                    ..member(6, true, &["member='Ping'"])
                },
            ],
            names: vec![
                ("org.example.Five".into(), 5),
                ("org.example.Two".into(), 2),
            ],
            max_message: 0,
            max_fds: 16,
            pid_namespace: 7,
        }
    }

    /// A message as zbus would send it (no SENDER), with one string argument.
    pub fn message(kind: u8, flags: u8, destination: Option<&str>, member: &str) -> Message {
        let mut body = Writer::new(Endian::Little);
        body.string("hello");
        let bytes = encode(
            Endian::Little,
            kind,
            flags,
            7,
            &HeaderFields {
                path: Some("/org/example"),
                interface: Some("org.example.I"),
                member: Some(member),
                destination,
                signature: Some("s"),
                ..Default::default()
            },
            &body.into_vec(),
        );
        Message::parse(bytes, Vec::new()).unwrap()
    }

    fn direct(members: &[u32], destination: u32, copy: bool, skipped: u64) -> Route {
        Route::Direct {
            members: members.to_vec(),
            destination,
            copy_to_daemon: copy,
            skipped,
        }
    }

    #[test]
    fn calls_go_straight_to_the_direct_member_that_owns_the_destination() {
        let t = table();
        let call = |d| message(METHOD_CALL, 0, Some(d), "Do");
        assert_eq!(plan(&call(":1.1"), &t, 3, false), direct(&[2], 2, false, 0));
        assert_eq!(
            plan(&call("org.example.Two"), &t, 3, false),
            direct(&[2], 2, false, 0)
        );
        // Watched by a monitor: a copy for the daemon.
        let observed = Table {
            observed: true,
            ..table()
        };
        assert_eq!(
            plan(&call(":1.1"), &observed, 3, false),
            direct(&[2], 2, true, 0)
        );
    }

    /// Receivers drop what passes the bus's limits (the table tells them): such a message
    /// goes through the daemon, which answers it as dbus-daemon would.
    #[test]
    fn messages_past_the_bus_limits_go_through_the_daemon() {
        let call = message(METHOD_CALL, 0, Some(":1.1"), "Do");
        let len = call.bytes().len();
        let limited = |max_message: usize, max_fds| Table {
            max_message: max_message as u32,
            max_fds,
            ..table()
        };
        let t = limited(len + SENDER_ROOM, 16);
        assert_eq!(plan(&call, &t, 3, false), direct(&[2], 2, false, 0));
        let t = limited(len + SENDER_ROOM - 1, 16);
        assert_eq!(plan(&call, &t, 3, false), Route::Daemon(TO_DAEMON));
        let with_fds = |n| {
            let f = HeaderFields {
                path: Some("/p"),
                member: Some("Do"),
                destination: Some(":1.1"),
                unix_fds: n,
                ..Default::default()
            };
            Message::parse(
                encode(Endian::Little, METHOD_CALL, 0, 7, &f, &[]),
                Vec::new(),
            )
            .unwrap()
        };
        let t = limited(1 << 20, 2);
        assert_eq!(plan(&with_fds(2), &t, 3, false), direct(&[2], 2, false, 0));
        assert_eq!(plan(&with_fds(3), &t, 3, false), Route::Daemon(TO_DAEMON));
    }

    /// A message with descriptors goes straight to a unique name, but to a well-known one
    /// only through the daemon: its receiver could not give it back checked.
    #[test]
    fn messages_with_descriptors_reach_well_known_names_through_the_daemon() {
        let t = table();
        let with_fd = |d| {
            let bytes = encode(
                Endian::Little,
                METHOD_CALL,
                0,
                7,
                &HeaderFields {
                    path: Some("/org/example"),
                    member: Some("Take"),
                    destination: Some(d),
                    signature: Some("h"),
                    unix_fds: 1,
                    ..Default::default()
                },
                &0u32.to_le_bytes(),
            );
            Message::parse(bytes, Vec::new()).unwrap()
        };
        assert_eq!(
            plan(&with_fd(":1.1"), &t, 3, false),
            direct(&[2], 2, false, 0)
        );
        assert_eq!(
            plan(&with_fd("org.example.Two"), &t, 3, false),
            Route::Daemon(TO_DAEMON)
        );
    }

    #[test]
    fn the_daemon_routes_what_cannot_go_direct() {
        let t = table();
        let call = |d| message(METHOD_CALL, 0, Some(d), "Do");
        for to in [
            "org.freedesktop.DBus",
            "org.example.Nobody",
            // Mediated by the policy.
            "org.example.Five",
            ":1.4",
            // Not a member, or not in the table (yet, or any more).
            ":1.99",
            ":2.1",
        ] {
            assert_eq!(
                plan(&call(to), &t, 3, false),
                Route::Daemon(TO_DAEMON),
                "{to}"
            );
        }
        // A reply to a call that came through the daemon goes back through it.
        let reply = Message::parse(
            encode(
                Endian::Little,
                busd_wire::message::METHOD_RETURN,
                0,
                8,
                &HeaderFields {
                    reply_serial: Some(3),
                    destination: Some(":1.1"),
                    ..Default::default()
                },
                &[],
            ),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(plan(&reply, &t, 3, true), Route::Daemon(TO_DAEMON));
        assert_eq!(plan(&reply, &t, 3, false), direct(&[2], 2, false, 0));
        // A member that left gets nothing directly (the daemon answers for it).
        assert_eq!(plan(&call(":1.5"), &t, 3, false), Route::Daemon(TO_DAEMON));
        // Nor one that has not said it is ready (its set-up may fail).
        let mut unready = table();
        unready.members[1].ready = false;
        assert_eq!(
            plan(&call(":1.1"), &unready, 3, false),
            Route::Daemon(TO_DAEMON)
        );
        assert_eq!(
            plan(&message(SIGNAL, 0, None, "Ping"), &unready, 3, false),
            direct(&[3], 0, false, 1)
        );
        // A sender the policy mediates sends everything through the daemon.
        assert_eq!(plan(&call(":1.1"), &t, 5, false), Route::Daemon(TO_DAEMON));
        assert_eq!(plan(&call(":1.1"), &t, 9, false), Route::Daemon(TO_DAEMON));
        // A call without destination is the daemon's to answer.
        assert_eq!(
            plan(&message(METHOD_CALL, 0, None, "Do"), &t, 3, false),
            Route::Daemon(TO_DAEMON)
        );
    }

    #[test]
    fn with_reply_timeouts_only_calls_that_wait_for_a_reply_go_through_the_daemon() {
        let t = Table {
            calls_mediated: true,
            ..table()
        };
        let to = Some("org.example.Two");
        assert_eq!(
            plan(&message(METHOD_CALL, 0, to, "Do"), &t, 3, false),
            Route::Daemon(TO_DAEMON)
        );
        assert_eq!(
            plan(
                &message(METHOD_CALL, FLAG_NO_REPLY_EXPECTED, to, "Do"),
                &t,
                3,
                false
            ),
            direct(&[2], 2, false, 0)
        );
        assert_eq!(
            plan(&message(SIGNAL, 0, to, "Ping"), &t, 3, false),
            direct(&[2], 2, false, 0)
        );
    }

    #[test]
    fn broadcasts_go_to_the_members_whose_summary_selects_them() {
        let mut t = table();
        let ping = message(SIGNAL, 0, None, "Ping");
        // 2 wants Ping, 3 every signal; 4 is skipped, 5 is not direct, the sender counts
        // like any other member (its own rules may want its broadcast).
        assert_eq!(plan(&ping, &t, 4, false), direct(&[2, 3], 0, false, 1));
        assert_eq!(
            plan(&message(SIGNAL, 0, None, "Other"), &t, 4, false),
            direct(&[3], 0, false, 2)
        );
        // Someone off the fast path wants it: the daemon's summary selects it.
        t.members[0] = member(0, true, &["member='Ping'"]);
        assert_eq!(plan(&ping, &t, 4, false), direct(&[2, 3], 0, true, 1));
    }
}
