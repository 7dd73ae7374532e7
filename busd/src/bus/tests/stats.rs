//! Debug.Stats in the core: busd's own keys for what each connection sent and was sent,
//! and for monitors.

use super::*;

const STATS: &str = "org.freedesktop.DBus.Debug.Stats";

/// The unsigned figures (`u` and `t`) and the string lists (`as`) of an `a{sv}` answer.
#[derive(Debug, Default)]
pub(super) struct Figures {
    pub numbers: HashMap<String, u64>,
    pub lists: HashMap<String, Vec<String>>,
}

impl Figures {
    fn of(reply: &Message) -> Figures {
        assert_eq!(reply.signature(), "a{sv}", "{:?}", reply.error_name());
        let mut r = reply.body_reader();
        let end = r.array_start(8).unwrap();
        let mut out = Figures::default();
        while r.pos() < end {
            r.align(8).unwrap();
            let key = r.string().unwrap().to_string();
            match r.signature().unwrap() {
                b"u" => drop(out.numbers.insert(key, r.u32().unwrap().into())),
                b"t" => drop(out.numbers.insert(key, r.u64().unwrap())),
                b"as" => {
                    let list = r.string_array().unwrap();
                    out.lists
                        .insert(key, list.into_iter().map(str::to_string).collect());
                }
                sig => {
                    let sig = sig.to_vec();
                    r.skip_value(&sig, 0).unwrap();
                }
            }
        }
        out
    }

    fn get(&self, key: &str) -> u64 {
        *self
            .numbers
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }
}

/// `asker`'s call of a Debug.Stats or driver method; the answer it gets.
fn ask(b: &mut Bus, asker: PeerId, iface: &str, member: &str, arg: Option<&str>) -> Message {
    let (sig, body) = match arg {
        Some(a) => ("s", s_body(a)),
        None => ("", vec![]),
    };
    b.handle_message(asker, call(7, DBUS_NAME, iface, member, sig, body));
    drain(b).into_iter().find(|s| s.to == asker).unwrap().msg
}

pub(super) fn connection_stats(b: &mut Bus, asker: PeerId, of: &str) -> Figures {
    Figures::of(&ask(b, asker, STATS, "GetConnectionStats", Some(of)))
}

/// What a connection sent through the bus and what the bus queued for it, counted by the
/// meters the shell shares with the bus: `busd.Sent*` and `busd.Received*`, which only grow.
#[test]
fn connection_stats_count_every_message_sent_and_received() {
    let mut b = bus();
    let (caller, callee) = (Meters::default(), Meters::default());
    let caller_name = join_with(&mut b, 1, caller.clone());
    let callee_name = join_with(&mut b, 2, callee.clone());
    join(&mut b, 3);
    let before = (
        connection_stats(&mut b, 3, &caller_name),
        connection_stats(&mut b, 3, &callee_name),
    );
    let mut bytes = 0;
    for serial in 10..13 {
        b.handle_message(
            1,
            call(serial, &callee_name, "org.x", "M", "s", s_body("hi")),
        );
        for effect in b.take_effects() {
            let Effect::Send(to, out) = effect else {
                continue;
            };
            assert_eq!(to, 2);
            // The shell's part (server::conn's queue), written at once.
            callee.outgoing.add(out.bytes.len() as u64, 0);
            callee.outgoing.sub(out.bytes.len() as u64, 0);
            bytes += out.bytes.len() as u64;
        }
    }
    let after = (
        connection_stats(&mut b, 3, &caller_name),
        connection_stats(&mut b, 3, &callee_name),
    );
    let grew = |f: fn(&(Figures, Figures)) -> &Figures, key: &str| {
        f(&after).get(key) - f(&before).get(key)
    };
    assert_eq!(grew(|s| &s.0, "busd.SentMessages"), 3);
    assert_eq!(grew(|s| &s.0, "busd.SentBytes"), bytes);
    assert_eq!(grew(|s| &s.0, "busd.ReceivedMessages"), 0);
    assert_eq!(grew(|s| &s.1, "busd.ReceivedMessages"), 3);
    assert_eq!(grew(|s| &s.1, "busd.ReceivedBytes"), bytes);
    assert_eq!(grew(|s| &s.1, "busd.SentMessages"), 0);
    // Nothing waits anywhere, yet the totals stay.
    assert_eq!(after.1.get("OutgoingMessages"), 0);
    assert_eq!(after.0.get("IncomingMessages"), 0);
    assert!(bytes > 3 * 32);
    assert_eq!(after.0.get("busd.ProcessID"), 1);
    assert_eq!(after.0.get("busd.UnixUserID"), 1000);
    assert_eq!(after.0.get("busd.Monitor"), 0);
}

/// No name designates a monitor (ListNames, GetConnectionCredentials: as in dbus-daemon),
/// so GetStats lists monitors by the names they had, and GetConnectionStats answers for
/// them by that name, with whose process it is.
#[test]
fn monitors_are_listed_and_answer_for_their_stats() {
    let mut b = bus();
    join(&mut b, 1);
    let mon = join(&mut b, 2);
    let none = Figures::of(&ask(&mut b, 1, STATS, "GetStats", None));
    assert_eq!(none.lists["busd.Monitors"], Vec::<String>::new());
    become_monitor(&mut b, 2);
    drain(&mut b);
    let stats = Figures::of(&ask(&mut b, 1, STATS, "GetStats", None));
    assert_eq!(stats.lists["busd.Monitors"], vec![mon.clone()]);
    let of_monitor = connection_stats(&mut b, 1, &mon);
    assert_eq!(of_monitor.get("busd.Monitor"), 1);
    assert_eq!(of_monitor.get("busd.ProcessID"), 2);
    assert_eq!(of_monitor.get("MatchRules"), 1);
    let creds = ask(
        &mut b,
        1,
        DBUS_INTERFACE,
        "GetConnectionCredentials",
        Some(&mon),
    );
    assert_eq!(
        creds.error_name(),
        Some("org.freedesktop.DBus.Error.NameHasNoOwner")
    );
    let unknown = ask(&mut b, 1, STATS, "GetConnectionStats", Some(":1.99"));
    assert_eq!(
        unknown.error_name(),
        Some("org.freedesktop.DBus.Error.NameHasNoOwner")
    );
}
