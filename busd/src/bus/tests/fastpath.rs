//! The fast path in the core: who may join, what members and the daemon's filter and table
//! say, and how the daemon routes what members send it.

use super::stats::connection_stats;
use super::*;
use crate::bus::fastpath::Joined;

fn fast_bus() -> Bus {
    let mut b = bus();
    b.set_fastpath(true);
    b
}

/// A call of busd's fast-path interface (`Join`, `Ready`).
fn fast_call(serial: u32, method: &str) -> Message {
    call(
        serial,
        DBUS_NAME,
        busd_match::protocol::INTERFACE,
        method,
        "",
        vec![],
    )
}

fn join_call(serial: u32) -> Message {
    fast_call(serial, busd_match::protocol::JOIN)
}

fn dummy_fd() -> std::os::fd::OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// What the shell answers a FastJoin with (every descriptor /dev/null here).
fn joined(shown: Rc<Vec<std::os::fd::OwnedFd>>) -> Joined {
    Joined {
        directory: "/run/user/1000/busd-fastpath-x".into(),
        socket: dummy_fd(),
        inbox: dummy_fd(),
        table: dummy_fd(),
        progress: dummy_fd(),
        slot: 4,
        shown,
    }
}

fn stand_ins() -> Rc<Vec<std::os::fd::OwnedFd>> {
    Rc::new((0..4).map(|_| dummy_fd()).collect())
}

fn ready_call(serial: u32) -> Message {
    fast_call(serial, busd_match::protocol::READY)
}

/// Hello, Join (with the shell's part played here), then Ready; returns the member id.
fn join_fast(b: &mut Bus, id: PeerId) -> u32 {
    let member = join_unready(b, id);
    b.handle_message(id, ready_call(3));
    b.take_effects().for_each(drop);
    member
}

/// Hello, then Join, with the shell's part played here (the member is not ready: its
/// set-up could still fail); returns the member id.
fn join_unready(b: &mut Bus, id: PeerId) -> u32 {
    join(b, id);
    b.handle_message(id, join_call(2));
    let effects: Vec<Effect> = b.take_effects().collect();
    let [Effect::FastJoin {
        peer,
        serial,
        member,
        ..
    }] = effects.as_slice()
    else {
        panic!("expected one FastJoin, got {effects:?}");
    };
    assert_eq!((*peer, *serial), (id, 2));
    let member = *member;
    b.fast_joined(id, 2, member, Ok(joined(stand_ins())));
    let reply: Vec<(PeerId, Message)> = b
        .take_effects()
        .filter_map(|e| match e {
            Effect::Send(to, out) => Some((
                to,
                Message::parse(
                    out.bytes.to_vec(),
                    out.fds.iter().map(|f| f.try_clone().unwrap()).collect(),
                )
                .unwrap(),
            )),
            _ => None,
        })
        .collect();
    let (to, m) = &reply[0];
    assert_eq!((*to, m.signature(), m.unix_fds()), (id, "ushhhhu", 4));
    let mut r = m.body_reader();
    assert_eq!(r.u32().unwrap(), member);
    assert_eq!(r.string().unwrap(), "/run/user/1000/busd-fastpath-x");
    let handles: Vec<u32> = (0..4).map(|_| r.u32().unwrap()).collect();
    assert_eq!(handles, [0, 1, 2, 3]);
    assert_eq!(r.u32().unwrap(), 4, "its progress slot");
    member
}

fn signal_from(sender: &str, member: &str) -> Message {
    let f = HeaderFields {
        path: Some("/org/x"),
        interface: Some("org.x"),
        member: Some(member),
        sender: Some(sender),
        ..Default::default()
    };
    Message::parse(
        encode(Endian::Little, message::SIGNAL, 0, 9, &f, &[]),
        Vec::new(),
    )
    .unwrap()
}

fn become_monitor(b: &mut Bus, id: PeerId) {
    let mut w = Writer::new(Endian::Little);
    w.string_array([]);
    w.u32(0);
    let m = call(
        3,
        DBUS_NAME,
        "org.freedesktop.DBus.Monitoring",
        "BecomeMonitor",
        "asu",
        w.into_vec(),
    );
    b.handle_message(id, m);
    drain(b);
}

/// A Join's answer carries what lets its holder take the member's datagrams and send the
/// daemon frames as the member: a monitor sees the answer, with stand-ins for those.
#[test]
fn monitors_see_a_join_answer_without_its_descriptors() {
    use std::os::fd::{AsRawFd, RawFd};
    let mut b = fast_bus();
    join(&mut b, 1);
    join(&mut b, 9);
    become_monitor(&mut b, 9);
    b.handle_message(1, join_call(2));
    let member = b
        .take_effects()
        .find_map(|e| match e {
            Effect::FastJoin { member, .. } => Some(member),
            _ => None,
        })
        .expect("a FastJoin");
    let shown = stand_ins();
    let shown_raw: Vec<RawFd> = shown.iter().map(AsRawFd::as_raw_fd).collect();
    let j = joined(shown);
    let real_raw: Vec<RawFd> = [&j.socket, &j.inbox, &j.table, &j.progress]
        .iter()
        .map(|f| f.as_raw_fd())
        .collect();
    b.fast_joined(1, 2, member, Ok(j));
    let mut sent: Vec<(PeerId, Vec<RawFd>, Vec<u8>)> = b
        .take_effects()
        .filter_map(|e| match e {
            Effect::Send(to, out) => Some((
                to,
                out.fds.iter().map(AsRawFd::as_raw_fd).collect(),
                out.bytes.to_vec(),
            )),
            _ => None,
        })
        .collect();
    sent.sort();
    let [(1, to_member, answer), (9, to_monitor, shown_answer)] = sent.as_slice() else {
        panic!("expected the answer to the member and a copy to the monitor: {sent:?}");
    };
    assert_eq!(to_member, &real_raw, "the member gets its descriptors");
    assert_eq!(to_monitor, &shown_raw, "the monitor gets the stand-ins");
    assert_eq!(answer, shown_answer, "the same message");
}

#[test]
fn join_is_for_the_bus_user_with_fds_and_not_when_off() {
    let mut off = bus();
    join(&mut off, 1);
    off.handle_message(1, join_call(2));
    assert_eq!(
        drain(&mut off)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.NotSupported")
    );

    let mut b = fast_bus();
    b.connect(2, creds(1000, 2), false, Meters::default());
    b.handle_message(2, dcall(1, "Hello", "", vec![]));
    drain(&mut b);
    b.handle_message(2, join_call(2));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.NotSupported"),
        "no fd passing"
    );

    b.connect(3, creds(1001, 3), true, Meters::default());
    b.handle_message(3, dcall(1, "Hello", "", vec![]));
    drain(&mut b);
    b.handle_message(3, join_call(2));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.AccessDenied"),
        "another user"
    );

    assert_eq!(join_fast(&mut b, 4), 3, ":1.2 is member 3");
    b.handle_message(4, join_call(5));
    assert_eq!(
        drain(&mut b)[0].msg.error_name(),
        Some("org.freedesktop.DBus.Error.Failed"),
        "twice"
    );
}

#[test]
fn the_table_lists_members_names_and_the_daemons_interest() {
    let mut b = fast_bus();
    let a = join_fast(&mut b, 1);
    let standard = join(&mut b, 2);
    add_match(&mut b, 2, "type='signal',member='Ping'");
    b.handle_message(
        1,
        dcall(3, "RequestName", "su", su_body("org.example.A", 0)),
    );
    drain(&mut b);
    let u = b.take_fast_updates().unwrap();
    let t = u.table.unwrap();
    assert_eq!(t.members.iter().map(|m| m.id).collect::<Vec<_>>(), [0, a]);
    assert!(t.members.iter().all(|m| m.direct));
    assert_eq!(t.owner("org.example.A"), Some(a));
    assert!(!t.observed);
    let ping = busd_match::header::hash32("Ping");
    let pong = busd_match::header::hash32("Pong");
    let daemon = &t.member(0).unwrap().summary;
    assert!(daemon.selects(ping, 0, 0), "{standard} wants Ping");
    assert!(!daemon.selects(pong, 0, 0));
    assert!(u.daemon_filter.is_some());
    assert!(b.take_fast_updates().is_none(), "nothing changed since");

    // A member's own rule recompiles its filter only; the daemon's stays.
    add_match(&mut b, 1, "type='signal',member='Pong'");
    let u = b.take_fast_updates().unwrap();
    assert_eq!(u.filters.len(), 1);
    assert!(u.daemon_filter.is_none());
    assert!(u
        .table
        .unwrap()
        .member(a)
        .unwrap()
        .summary
        .selects(pong, 0, 0));

    // A monitor makes the daemon want everything, and direct unicasts get copied to it.
    join(&mut b, 3);
    become_monitor(&mut b, 3);
    let t = b.take_fast_updates().unwrap().table.unwrap();
    assert!(t.observed);
    assert!(t.member(0).unwrap().summary.everything);

    // A member that leaves is listed as departed (with the process that joined, so that
    // what it sent before still counts as its own), owns nothing, and its sockets close.
    let pid = t.member(a).unwrap().pid;
    assert_ne!(pid, 0);
    b.disconnected(1);
    let effects: Vec<Effect> = b.take_effects().collect();
    assert!(effects.iter().any(|e| matches!(e, Effect::FastLeave(1))));
    // (Published with the next urgent change, or TABLE_COALESCE later: a session ending
    // does not republish the table once per member.)
    assert!(b.take_fast_updates().is_none_or(|u| u.table.is_none()));
    let due = b.next_deadline().expect("the departure's publication");
    assert!(due <= b.now + crate::bus::fastpath::TABLE_COALESCE);
    b.expire(due);
    let t = b.take_fast_updates().unwrap().table.unwrap();
    let gone = t.member(a).unwrap();
    assert!(gone.departed && !gone.reachable());
    assert_eq!(gone.pid, pid);
    assert_eq!(t.owner("org.example.A"), None);
}

/// A member gets a kernel filter only once it has a rule: most join before adding any
/// (zbus adds its rules after Hello), and a filter costs the kernel a verification and a
/// compilation.
#[test]
fn a_join_compiles_a_filter_only_for_rules() {
    let mut b = fast_bus();
    let filter_at_join = |b: &mut Bus, id: PeerId| {
        b.handle_message(id, join_call(9));
        b.take_effects()
            .find_map(|e| match e {
                Effect::FastJoin { filter, .. } => Some(filter),
                _ => None,
            })
            .expect("a FastJoin")
    };
    join(&mut b, 3);
    assert_eq!(filter_at_join(&mut b, 3), None, "no rules: no filter yet");
    join(&mut b, 4);
    add_match(&mut b, 4, "type='signal',member='Ping'");
    assert!(filter_at_join(&mut b, 4).is_some());
}

/// The table lists only the last departures: what it keeps does not grow with the
/// connections a long session saw. It lists at least the last 256 and forgets them 256 at
/// a time.
#[test]
fn the_table_forgets_departures_past_its_bound() {
    let mut b = fast_bus();
    let kept = crate::bus::fastpath::DEPARTED_KEPT as u64;
    let first = join_fast(&mut b, 1);
    b.disconnected(1);
    let departures = |b: &mut Bus, peers: std::ops::Range<u64>| {
        for peer in peers {
            join_fast(b, peer);
            b.disconnected(peer);
        }
        b.take_effects().for_each(drop);
        b.take_fast_updates().unwrap().table.unwrap()
    };
    let t = departures(&mut b, 2..2 * kept + 1);
    assert_eq!(
        t.members.len(),
        1 + 2 * kept as usize,
        "twice the bound: all listed"
    );
    assert!(t.member(first).is_some());
    let t = departures(&mut b, 2 * kept + 1..2 * kept + 2);
    assert_eq!(t.members.len(), 1 + kept as usize);
    assert!(t.member(first).is_none());
    assert!(
        t.member(kept as u32 + 2).is_some(),
        "the last {kept} are listed"
    );
    assert!(t.members.iter().skip(1).all(|m| m.departed));
}

/// The table tells when the shell shut a departed member's socket down, once it says so:
/// a receiver then takes from that member's path only what was queued before.
#[test]
fn the_table_tells_when_a_members_socket_was_shut_down() {
    let mut b = fast_bus();
    let first = join_fast(&mut b, 1);
    let other = join_fast(&mut b, 2);
    b.disconnected(1);
    b.fast_left_at(first, 1_000);
    // (Not a departed member: nothing changes.)
    b.fast_left_at(other, 2_000);
    join_fast(&mut b, 3);
    b.take_effects().for_each(drop);
    let t = b.take_fast_updates().unwrap().table.unwrap();
    let gone = t.member(first).unwrap();
    assert!(gone.departed);
    assert_eq!(gone.left, 1_000);
    assert!(t
        .members
        .iter()
        .filter(|m| !m.departed)
        .all(|m| m.left == 0));
}

#[test]
fn broadcasts_from_members_reach_only_those_off_the_fast_path() {
    let mut b = fast_bus();
    join_fast(&mut b, 1);
    let a = b.unique_of(1).to_string();
    join_fast(&mut b, 2);
    join(&mut b, 3);
    join(&mut b, 4);
    for peer in [2, 3] {
        add_match(&mut b, peer, "type='signal',member='Ping'");
    }
    become_monitor(&mut b, 4);
    b.handle_fast_frame(1, 0, signal_from(&a, "Ping"));
    let to: Vec<PeerId> = drain(&mut b).iter().map(|s| s.to).collect();
    assert_eq!(
        to,
        [4, 3],
        "the monitor, then the standard client; member 2 had it directly"
    );

    // The same signal on the member's stream is routed as usual, to everyone.
    b.handle_message(1, signal_from(&a, "Ping"));
    let mut to: Vec<PeerId> = drain(&mut b).iter().map(|s| s.to).collect();
    to.sort_unstable();
    assert_eq!(to, [2, 3, 4]);
}

#[test]
fn copies_of_direct_messages_go_to_monitors_only() {
    let mut b = fast_bus();
    join_fast(&mut b, 1);
    let a = b.unique_of(1).to_string();
    let member_b = join_fast(&mut b, 2);
    let peer_b = b.unique_of(2).to_string();
    join(&mut b, 3);
    become_monitor(&mut b, 3);
    let f = HeaderFields {
        path: Some("/org/x"),
        interface: Some("org.x"),
        member: Some("Call"),
        sender: Some(&a),
        destination: Some(&peer_b),
        ..Default::default()
    };
    let m = Message::parse(
        encode(Endian::Little, message::METHOD_CALL, 0, 9, &f, &[]),
        Vec::new(),
    )
    .unwrap();
    b.handle_fast_frame(1, member_b, m);
    let sent = drain(&mut b);
    assert_eq!(sent.iter().map(|s| s.to).collect::<Vec<_>>(), [3]);
    assert_eq!(sent[0].msg.member(), Some("Call"));
}

#[test]
fn a_member_that_lies_about_its_name_is_disconnected() {
    let mut b = fast_bus();
    join_fast(&mut b, 1);
    let other = join(&mut b, 2);
    b.handle_fast_frame(1, 0, signal_from(&other, "Ping"));
    let effects: Vec<Effect> = b.take_effects().collect();
    assert!(
        matches!(effects.as_slice(), [Effect::Disconnect(1)]),
        "{effects:?}"
    );
}

/// Nobody sends to a member directly until it said it is ready (its set-up may fail):
/// until then the daemon delivers everything for it, and its rules stay in the daemon's
/// filter. It may send directly at once.
#[test]
fn a_member_receives_directly_only_once_ready() {
    let mut b = fast_bus();
    let a = join_unready(&mut b, 1);
    add_match(&mut b, 1, "type='signal',member='Pong'");
    let pong = busd_match::header::hash32("Pong");
    let t = b.take_fast_updates().unwrap().table.unwrap();
    let m = t.member(a).unwrap();
    assert!(m.direct && !m.ready && !m.reachable());
    assert!(t.member(0).unwrap().summary.selects(pong, 0, 0));
    // A broadcast from a direct member reaches it through the daemon.
    join_fast(&mut b, 2);
    let b_name = b.unique_of(2).to_string();
    b.take_fast_updates();
    b.handle_fast_frame(2, 0, signal_from(&b_name, "Pong"));
    assert!(drain(&mut b).iter().any(|s| s.to == 1));
    b.handle_message(1, ready_call(3));
    drain(&mut b);
    let t = b.take_fast_updates().unwrap().table.unwrap();
    assert!(t.member(a).unwrap().reachable());
    assert!(!t.member(0).unwrap().summary.selects(pong, 0, 0));
    b.handle_fast_frame(2, 0, signal_from(&b_name, "Pong"));
    assert!(
        !drain(&mut b).iter().any(|s| s.to == 1),
        "it had it directly"
    );
}

#[test]
fn a_member_the_policy_mediates_is_not_direct() {
    let strict = r#"<policy context="default"><allow send_destination="*"/>
        <deny send_interface="org.secret"/><allow receive_sender="*"/><allow own="*"/></policy>"#;
    let mut b = bus_with(strict, busd_policy::Limits::default());
    b.set_fastpath(true);
    let a = join_fast(&mut b, 1);
    let t = b.take_fast_updates().unwrap().table.unwrap();
    assert!(!t.member(a).unwrap().direct);
    assert!(
        t.member(0).unwrap().summary.everything,
        "the daemon relays all its traffic"
    );
}

/// What a member passes the daemon is routed as that member's only: a frame carrying
/// another member's message (as the old "forwarded" frames did) is a lie, whoever the
/// other is, and its sender is disconnected; the name's owner gets nothing.
#[test]
fn a_member_cannot_pass_on_another_members_message() {
    let mut b = fast_bus();
    join_fast(&mut b, 1);
    let a = b.unique_of(1).to_string();
    join_fast(&mut b, 2);
    let standard = join(&mut b, 3);
    join_fast(&mut b, 4);
    b.handle_message(
        3,
        dcall(3, "RequestName", "su", su_body("org.example.N", 0)),
    );
    drain(&mut b);
    for (attacker, victim) in [(2, a.as_str()), (4, standard.as_str())] {
        let f = HeaderFields {
            path: Some("/"),
            interface: Some("org.x"),
            member: Some("Call"),
            sender: Some(victim),
            destination: Some("org.example.N"),
            ..Default::default()
        };
        let m = Message::parse(
            encode(Endian::Little, message::METHOD_CALL, 0, 9, &f, &[]),
            Vec::new(),
        )
        .unwrap();
        b.handle_fast_frame(attacker, busd_match::header::TO_DAEMON, m);
        let effects: Vec<Effect> = b.take_effects().collect();
        assert!(
            matches!(effects.as_slice(), [Effect::Disconnect(p)] if *p == attacker),
            "{victim}: {effects:?}"
        );
    }
}

/// A name changing owner recompiles the filters of the members with a `sender=` rule on
/// that name, and no others (every zbus client has `sender='org.freedesktop.DBus'` rules:
/// recompiling all of them on every name change made joining quadratic).
#[test]
fn a_name_change_recompiles_only_the_filters_that_name_it() {
    let mut b = fast_bus();
    join_fast(&mut b, 1);
    join_fast(&mut b, 2);
    let add = |b: &mut Bus, id: PeerId, rule: &str| {
        b.handle_message(id, dcall(3, "AddMatch", "s", s_body(rule)));
        drain(b);
    };
    add(
        &mut b,
        1,
        "type='signal',sender='org.freedesktop.DBus',member='NameLost'",
    );
    add(
        &mut b,
        2,
        "type='signal',sender='org.example.Watched',member='Tick'",
    );
    b.take_fast_updates();
    join(&mut b, 3);
    b.handle_message(
        3,
        dcall(2, "RequestName", "su", su_body("org.example.Other", 0)),
    );
    drain(&mut b);
    // A name of a connection off the fast path that no rule names changes nothing at all.
    let u = b.take_fast_updates();
    assert!(
        u.is_none(),
        "recompiled: {:?}",
        u.map(|u| u.filters.iter().map(|f| f.0).collect::<Vec<_>>())
    );
    b.handle_message(
        3,
        dcall(3, "RequestName", "su", su_body("org.example.Watched", 0)),
    );
    drain(&mut b);
    let u = b.take_fast_updates().unwrap();
    let recompiled: Vec<PeerId> = u.filters.iter().map(|f| f.0).collect();
    assert_eq!(recompiled, [2]);
}

/// A member's own figures (what its shim published in its progress slot) appear in
/// GetConnectionStats as `busd.FastPath.<figure>`; a connection off the fast path has none.
#[test]
fn connection_stats_carry_what_a_member_published() {
    let mut b = fast_bus();
    let member = join_fast(&mut b, 1);
    let plain = join(&mut b, 2);
    b.set_fast_figures(Box::new(move |slot, id| {
        (slot == 4 && id == member).then(|| {
            let mut v = [0u64; busd_match::progress::FIGURES.len()];
            v[0] = 12;
            v[15] = 3;
            v[17] = u64::MAX;
            v
        })
    }));
    let stats = connection_stats(&mut b, 2, ":1.0");
    let get = |k: &str| stats.numbers.get(k).copied();
    assert_eq!(get("busd.FastPathMember"), Some(u64::from(member)));
    assert_eq!(get("busd.FastPath.SentDirect"), Some(12));
    assert_eq!(get("busd.FastPath.BacklogDepth"), Some(3));
    assert_eq!(
        get("busd.FastPath.CausalTimeouts"),
        Some(u64::from(u32::MAX)),
        "clamped"
    );
    assert_eq!(get("busd.FastPath.Received"), Some(0));
    let stats = connection_stats(&mut b, 1, &plain);
    assert!(stats
        .numbers
        .keys()
        .all(|k| !k.starts_with("busd.FastPath.")));
}

/// On a bus with many rules, an AddMatch does not compile the daemon's filter from every
/// rule again (that made a login storm quadratic, DESIGN 5.6): the filter and the daemon's
/// summary widen to everything at once, which is correct (the daemon routes exactly), and
/// the exact program comes once, after the changes settle.
#[test]
fn a_large_bus_widens_the_daemons_filter_and_compiles_it_once_later() {
    use crate::bus::fastpath::{DAEMON_COALESCE, DAEMON_EXACT_UP_TO};
    let mut b = fast_bus();
    join_fast(&mut b, 1);
    // (Standard connections, each within max_match_rules_per_connection.)
    for peer in 2..12 {
        join(&mut b, peer);
    }
    b.take_fast_updates();
    let t0 = std::time::Instant::now();
    b.set_now(t0);
    for i in 0..DAEMON_EXACT_UP_TO {
        let peer = 2 + (i % 10) as PeerId;
        add_match(&mut b, peer, &format!("type='signal',member='M{i}'"));
    }
    let u = b.take_fast_updates().unwrap();
    assert!(u.daemon_filter.is_some());
    let exact = u.table.unwrap().member(0).unwrap().summary.clone();
    assert!(!exact.everything);
    // Past the bound: wide at once, and the table says so.
    add_match(&mut b, 2, "type='signal',member='Late'");
    let u = b.take_fast_updates().unwrap();
    assert!(u.daemon_filter.is_some());
    assert!(u.table.unwrap().member(0).unwrap().summary.everything);
    assert_eq!(b.next_deadline(), Some(t0 + DAEMON_COALESCE));
    // More changes meanwhile cost nothing.
    for i in 0..100 {
        add_match(&mut b, 3, &format!("type='signal',member='More{i}'"));
        assert!(b.take_fast_updates().is_none());
    }
    // Then one exact compile, which knows every rule.
    b.expire(t0 + DAEMON_COALESCE);
    let u = b.take_fast_updates().unwrap();
    assert!(u.daemon_filter.is_some());
    let s = u.table.unwrap().member(0).unwrap().summary.clone();
    assert!(!s.everything);
    assert!(s.selects(0, busd_match::header::hash32("Late"), 0));
    assert_eq!(b.next_deadline(), None);
}

/// While nobody is on the fast path, the daemon's filter is not compiled at all (a login
/// storm of standard clients paid for compiles nobody used); the first member to join gets
/// it, knowing every rule added before.
#[test]
fn the_daemons_filter_waits_for_the_first_member() {
    let mut b = fast_bus();
    b.take_fast_updates();
    for peer in 1..4 {
        join(&mut b, peer);
        add_match(
            &mut b,
            peer,
            &format!("type='signal',member='Before{peer}'"),
        );
        assert!(
            b.take_fast_updates()
                .is_none_or(|u| u.daemon_filter.is_none()),
            "compiled with no member"
        );
    }
    let a = join_fast(&mut b, 9);
    let u = b.take_fast_updates().unwrap();
    assert!(u.daemon_filter.is_some());
    let t = u.table.unwrap();
    assert_eq!(t.member(a).map(|m| m.ready), Some(true));
    let daemon = &t.member(0).unwrap().summary;
    for peer in 1..4 {
        let member = busd_match::header::hash32(&format!("Before{peer}"));
        assert!(daemon.selects(member, 0, 0), "the rule of {peer}");
    }
}

/// A member the policy mediated at Join, which then added rules, gets a filter compiled
/// from them when a reload lets it go direct: senders follow its summary from then on,
/// and a filter still as it was at Join would drop what its later rules match.
#[test]
fn a_reload_that_lets_a_member_go_direct_recompiles_its_filter() {
    let mediated = r#"<policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
    <deny send_interface="org.example.Secret"/>
</policy>"#;
    let mut b = bus_with(mediated, busd_policy::Limits::default());
    b.set_fastpath(true);
    let a = join_fast(&mut b, 1);
    add_match(&mut b, 1, "type='signal',member='Later'");
    b.take_fast_updates();
    b.reconfigure(
        busd_policy::Limits::default(),
        compile(SESSION_POLICY),
        None,
    );
    let u = b.take_fast_updates().unwrap();
    assert!(u.table.unwrap().member(a).unwrap().direct);
    assert_eq!(u.filters.iter().map(|f| f.0).collect::<Vec<_>>(), [1]);
}

/// What busd does to the fast path's state in one step of [`the_kept_table_is_the_table_rebuilt_from_scratch`].
#[derive(Debug, Clone)]
enum Step {
    /// A connection joins the fast path (and says Ready, or not yet).
    Join {
        ready: bool,
    },
    /// A connection stays on the standard path.
    Connect,
    Ready(usize),
    AddMatch(usize, usize),
    RemoveMatch(usize, usize),
    RequestName(usize, usize, u32),
    ReleaseName(usize, usize),
    Disconnect(usize),
}

const STEP_RULES: [&str; 5] = [
    "type='signal',member='A'",
    "type='signal',interface='org.example.I'",
    "type='signal',sender='org.example.N0'",
    "type='signal'",
    "path='/p'",
];

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        any::<bool>().prop_map(|ready| Step::Join { ready }),
        Just(Step::Connect),
        (0..8usize).prop_map(Step::Ready),
        (0..8usize, 0..STEP_RULES.len()).prop_map(|(c, r)| Step::AddMatch(c, r)),
        (0..8usize, 0..STEP_RULES.len()).prop_map(|(c, r)| Step::RemoveMatch(c, r)),
        (
            0..8usize,
            0..3usize,
            prop_oneof![Just(0u32), Just(3), Just(4)]
        )
            .prop_map(|(c, n, f)| Step::RequestName(c, n, f)),
        (0..8usize, 0..3usize).prop_map(|(c, n)| Step::ReleaseName(c, n)),
        (0..8usize).prop_map(Step::Disconnect),
    ]
}

/// The bus-wide fields change the published body too (a monitor makes the bus observed,
/// the pid namespace is told late): the body changed where the bus says is the whole.
#[test]
fn bus_wide_changes_reach_the_published_body() {
    let mut b = fast_bus();
    let mut encoded = busd_match::table::Encoded::default();
    let mut publish = |b: &mut Bus| {
        b.take_effects().for_each(drop);
        let u = b.take_fast_updates().expect("the table changed");
        let t = u.table.expect("the table changed");
        encoded.update(&t, &u.table_changes);
        let mut whole = Vec::new();
        t.encode(&mut whole);
        assert_eq!(encoded.body(), whole);
        t
    };
    join_fast(&mut b, 1);
    join_fast(&mut b, 2);
    assert!(!publish(&mut b).observed);
    become_monitor(&mut b, 2);
    assert!(publish(&mut b).observed);
    b.set_fast_pid_namespace(77);
    assert_eq!(publish(&mut b).pid_namespace, 77);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// The routing table is kept up to date change by change (DESIGN 8): after any sequence
    /// of joins, Ready, rules, names and departures it says exactly what a table built from
    /// scratch from every member would, and lists the last departures as departed.
    #[test]
    fn the_kept_table_is_the_table_rebuilt_from_scratch(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let mut b = fast_bus();
        let mut encoded = busd_match::table::Encoded::default();
        let mut live: Vec<PeerId> = Vec::new();
        let mut next: PeerId = 1;
        let pick = |live: &[PeerId], i: usize| (!live.is_empty()).then(|| live[i % live.len()]);
        let name = |n: usize| format!("org.example.N{n}");
        for step in steps {
            match step {
                Step::Join { ready } => {
                    if ready {
                        join_fast(&mut b, next);
                    } else {
                        join_unready(&mut b, next);
                    }
                    live.push(next);
                    next += 1;
                }
                Step::Connect => {
                    join(&mut b, next);
                    live.push(next);
                    next += 1;
                }
                Step::Ready(c) => {
                    if let Some(p) = pick(&live, c) {
                        b.handle_message(p, ready_call(9));
                    }
                }
                Step::AddMatch(c, r) => {
                    if let Some(p) = pick(&live, c) {
                        b.handle_message(p, dcall(9, "AddMatch", "s", s_body(STEP_RULES[r])));
                    }
                }
                Step::RemoveMatch(c, r) => {
                    if let Some(p) = pick(&live, c) {
                        b.handle_message(p, dcall(9, "RemoveMatch", "s", s_body(STEP_RULES[r])));
                    }
                }
                Step::RequestName(c, n, flags) => {
                    if let Some(p) = pick(&live, c) {
                        b.handle_message(p, dcall(9, "RequestName", "su", su_body(&name(n), flags)));
                    }
                }
                Step::ReleaseName(c, n) => {
                    if let Some(p) = pick(&live, c) {
                        b.handle_message(p, dcall(9, "ReleaseName", "s", s_body(&name(n))));
                    }
                }
                Step::Disconnect(c) => {
                    if let Some(p) = pick(&live, c) {
                        b.disconnected(p);
                        live.retain(|&l| l != p);
                    }
                }
            }
            b.take_effects().for_each(drop);
            // What the shell publishes, changed only where the bus says the table changed,
            // is the table encoded whole.
            if let Some(u) = b.take_fast_updates() {
                if let Some(t) = &u.table {
                    encoded.update(t, &u.table_changes);
                    let mut whole = Vec::new();
                    t.encode(&mut whole);
                    proptest::prop_assert_eq!(encoded.body(), &whole[..]);
                }
            }
            let (members, names, departed) = b.fast_table_rebuilt();
            let kept = b.fast_table_kept();
            proptest::prop_assert_eq!(kept.members.first().map(|m| m.id), Some(0));
            let present: Vec<_> = kept.members[1..].iter().filter(|m| !m.departed).cloned().collect();
            let gone: Vec<u32> = kept.members.iter().filter(|m| m.departed).map(|m| m.id).collect();
            proptest::prop_assert_eq!(present, members);
            proptest::prop_assert_eq!(&kept.names, &names);
            proptest::prop_assert_eq!(gone, departed);
        }
    }
}
