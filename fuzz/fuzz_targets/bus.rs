//! The bus state machine, driven by a script the fuzzer writes: peers connect, say Hello,
//! call every driver method with well- and ill-typed arguments, send calls, replies, errors
//! and signals to names that exist or not, join the fast path and send frames, reload, start
//! services, let time pass and leave. After every step:
//! - every message the bus sends is a valid D-Bus message, and goes to a connected peer;
//! - the bus answers each method call it is asked to reply to at most once (monitors
//!   excepted: they also get a copy of what the bus sends them, as with dbus-daemon).
//!
//! At the end everyone leaves, and a newcomer finds only the bus and itself on it: nothing
//! the others had (names, queued owners, rules, pending replies) outlives them.
#![no_main]
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::rc::Rc;
use std::time::{Duration, Instant};

use busd::bus::activation::{ChildExit, ServiceEntry};
use busd::bus::fastpath::Joined;
use busd::bus::{Bus, BusSettings, Credentials, Effect, Meters, PeerId};
use busd_match::header::TO_DAEMON;
use busd_policy::{Accounts, CompiledPolicy, Config};
use busd_wire::marshal::{Endian, Reader, Writer};
use busd_wire::message::{
    encode, HeaderFields, Message, ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL,
};
use libfuzzer_sys::fuzz_target;

const MAX_PEERS: usize = 6;
const MAX_STEPS: usize = 96;

const NAMES: &[&str] = &[
    "org.freedesktop.DBus",
    "org.example.A",
    "org.example.B",
    "org.example.Activatable",
    "org.example.Broken",
    ":1.0",
    ":1.1",
    ":1.2",
    ":1.3",
    ":1.77",
    "org.freedesktop.DBus.Local",
    "org.example.A.Sub",
    "",
    "org..bad",
    "a",
    "org.example.denied.X",
];

const RULES: &[&str] = &[
    "type='signal'",
    "type='signal',sender='org.example.A'",
    "sender=':1.1',member='Tick'",
    "eavesdrop=true",
    "type='method_call',eavesdrop=true",
    "arg0='org.example.A'",
    "arg0namespace='org.example'",
    "path_namespace='/org'",
    "interface='org.example.I',member='Tick',path='/org/example'",
    "destination=':1.2'",
    "type='error'",
    "",
    "bad='x'",
    "type='signal',arg1path='/org/'",
];

const INTERFACES: &[&str] = &["org.example.I", "org.freedesktop.DBus", "org.example.J"];
const MEMBERS: &[&str] = &["Tick", "M", "Hello", "NameOwnerChanged"];
const PATHS: &[&str] = &[
    "/org/example",
    "/",
    "/org/freedesktop/DBus",
    "/org/example/deep",
];

/// One argument of a call the script makes.
#[derive(Debug, Clone)]
enum Arg {
    Str(String),
    U32(u32),
    Strings(Vec<String>),
    Dict(Vec<(String, String)>),
}

/// Driver methods: (interface, member, the arguments it takes).
const METHODS: &[(&str, &str, &str)] = &[
    ("org.freedesktop.DBus", "Hello", ""),
    ("org.freedesktop.DBus", "RequestName", "su"),
    ("org.freedesktop.DBus", "ReleaseName", "s"),
    ("org.freedesktop.DBus", "ListNames", ""),
    ("org.freedesktop.DBus", "ListActivatableNames", ""),
    ("org.freedesktop.DBus", "NameHasOwner", "s"),
    ("org.freedesktop.DBus", "GetNameOwner", "s"),
    ("org.freedesktop.DBus", "ListQueuedOwners", "s"),
    ("org.freedesktop.DBus", "AddMatch", "r"),
    ("org.freedesktop.DBus", "RemoveMatch", "r"),
    ("org.freedesktop.DBus", "StartServiceByName", "su"),
    ("org.freedesktop.DBus", "UpdateActivationEnvironment", "e"),
    ("org.freedesktop.DBus", "GetConnectionUnixUser", "s"),
    ("org.freedesktop.DBus", "GetConnectionUnixProcessID", "s"),
    ("org.freedesktop.DBus", "GetConnectionCredentials", "s"),
    ("org.freedesktop.DBus", "GetAdtAuditSessionData", "s"),
    (
        "org.freedesktop.DBus",
        "GetConnectionSELinuxSecurityContext",
        "s",
    ),
    ("org.freedesktop.DBus", "GetId", ""),
    ("org.freedesktop.DBus", "ReloadConfig", ""),
    ("org.freedesktop.DBus.Monitoring", "BecomeMonitor", "Ru"),
    ("org.freedesktop.DBus.Debug.Stats", "GetStats", ""),
    (
        "org.freedesktop.DBus.Debug.Stats",
        "GetConnectionStats",
        "s",
    ),
    ("org.freedesktop.DBus.Debug.Stats", "GetAllMatchRules", ""),
    ("org.freedesktop.DBus.Properties", "GetAll", "s"),
    ("org.freedesktop.DBus.Properties", "Get", "ss"),
    ("org.freedesktop.DBus.Introspectable", "Introspect", ""),
    ("org.freedesktop.DBus.Peer", "Ping", ""),
    ("org.freedesktop.DBus.Peer", "GetMachineId", ""),
    ("org.freedesktop.busd.FastPath1", "Join", ""),
];

/// Reads the script: every decision takes bytes from the front; an empty script decides 0.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    /// True one time in `n`.
    fn one_in(&mut self, n: u8) -> bool {
        self.byte().is_multiple_of(n)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    /// Mostly a name from the pool, sometimes bytes of the script.
    fn string(&mut self, pool: &[&str]) -> String {
        if !self.one_in(8) {
            return self.pick(pool).to_string();
        }
        let n = self.below(24).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).replace('\0', "")
    }
    fn arg(&mut self, kind: char) -> Arg {
        match kind {
            's' => Arg::Str(self.string(NAMES)),
            'r' => Arg::Str(self.string(RULES)),
            'u' => Arg::U32(if self.one_in(2) {
                u32::from(self.byte() % 8)
            } else {
                self.u32()
            }),
            'R' => Arg::Strings((0..self.below(3)).map(|_| self.string(RULES)).collect()),
            'e' => Arg::Dict(
                (0..self.below(3))
                    .map(|_| (self.string(&["PATH", "DBUS_X", "LANG"]), self.string(NAMES)))
                    .collect(),
            ),
            _ => unreachable!("argument kind {kind}"),
        }
    }
}

fn marshal(args: &[Arg]) -> (String, Vec<u8>) {
    let mut sig = String::new();
    let mut w = Writer::new(Endian::Little);
    for a in args {
        match a {
            Arg::Str(s) => {
                sig.push('s');
                w.string(s);
            }
            Arg::U32(v) => {
                sig.push('u');
                w.u32(*v);
            }
            Arg::Strings(v) => {
                sig.push_str("as");
                let arr = w.begin_array(4);
                for s in v {
                    w.string(s);
                }
                w.end_array(arr);
            }
            Arg::Dict(v) => {
                sig.push_str("a{ss}");
                let arr = w.begin_array(8);
                for (k, s) in v {
                    w.align(8);
                    w.string(k);
                    w.string(s);
                }
                w.end_array(arr);
            }
        }
    }
    (sig, w.into_vec())
}

struct NoNss;

impl Accounts for NoNss {
    fn user_id(&self, name: &str) -> Option<u32> {
        (name == "alice").then_some(1000)
    }
    fn group_id(&self, _: &str) -> Option<u32> {
        None
    }
}

/// A session bus's policy, with one denial so that refusals are exercised too.
const CONFIG: &str = r#"<busconfig>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
    <deny own_prefix="org.example.denied"/>
    <deny send_destination="org.example.B" send_interface="org.example.I" send_member="Secret"/>
  </policy>
  <policy user="alice"><allow own="org.example.denied.X"/></policy>
</busconfig>"#;

fn new_bus() -> Bus {
    let config = Config::from_str_at(CONFIG, std::path::Path::new("/fuzz/bus.conf"))
        .expect("the fuzz configuration");
    let limits = busd_policy::Limits {
        max_match_rules_per_connection: 8,
        max_names_per_connection: 4,
        max_replies_per_connection: 4,
        ..Default::default()
    };
    let mut bus = Bus::new(BusSettings {
        guid: "0123456789abcdef0123456789abcdef".into(),
        machine_id: "fedcba9876543210fedcba9876543210".into(),
        uid: 1000,
        pid: 1,
        limits,
        policy: Rc::new(CompiledPolicy::compile(&config, &NoNss).expect("policy")),
        servicehelper: None,
        systemd_activation: false,
    });
    bus.set_fastpath(true);
    bus.set_activatable(services(), false);
    bus
}

/// What the harness's service directories hold (on every rescan too).
fn services() -> Vec<ServiceEntry> {
    let entry = |name: &str| ServiceEntry {
        name: name.into(),
        exec: "/nonexistent/service --flag".into(),
        user: None,
        systemd_service: None,
        assumed_apparmor_label: None,
    };
    vec![
        entry("org.example.Activatable"),
        entry("org.example.Broken"),
    ]
}

struct Harness {
    bus: Bus,
    now: Instant,
    /// Connected peers, and whether each joined the fast path.
    peers: BTreeMap<PeerId, bool>,
    next_peer: PeerId,
    serial: u32,
    /// Calls a peer sent that the bus itself answers, by (peer, serial).
    asked_bus: BTreeSet<(PeerId, u32)>,
    answered: BTreeSet<(PeerId, u32)>,
    /// Every service start the bus asked for, not yet reported.
    children: Vec<u64>,
    /// Replies the newcomer of `finish` got.
    replies: Vec<Message>,
    /// Peers that became monitors.
    monitors: BTreeSet<PeerId>,
    /// BecomeMonitor calls.
    monitor_calls: BTreeSet<(PeerId, u32)>,
    /// Hello calls, and the unique names their replies gave.
    hellos: BTreeSet<(PeerId, u32)>,
    uniques: BTreeMap<PeerId, String>,
}

impl Harness {
    fn connect(&mut self, uid: u32, unix_fds: bool) -> PeerId {
        let id = self.next_peer;
        self.next_peer += 1;
        let creds = Credentials {
            uid: Some(uid),
            pid: Some(100 + id as u32),
            gid: Some(uid),
            groups: vec![uid],
            ..Default::default()
        };
        self.bus.connect(id, creds, unix_fds, Meters::default());
        self.peers.insert(id, false);
        self.settle();
        id
    }

    fn send(&mut self, from: PeerId, bytes: Vec<u8>) {
        let msg = Message::parse(bytes, Vec::new()).expect("the script builds valid messages");
        trace(format_args!(
            "peer {from} sends {} {:?}.{:?} to {:?}: {:?}",
            msg.msg_type(),
            msg.interface(),
            msg.member(),
            msg.destination(),
            msg.args()
        ));
        if msg.msg_type() == METHOD_CALL
            && msg.destination() == Some("org.freedesktop.DBus")
            && !msg.no_reply_expected()
        {
            self.asked_bus.insert((from, msg.serial()));
            if msg.member() == Some("Hello") {
                self.hellos.insert((from, msg.serial()));
            }
            if msg.member() == Some("BecomeMonitor") {
                self.monitor_calls.insert((from, msg.serial()));
            }
        }
        self.bus.handle_message(from, msg);
        self.settle();
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        msg_type: u8,
        flags: u8,
        destination: Option<&str>,
        path: &str,
        interface: Option<&str>,
        member: &str,
        reply_serial: Option<u32>,
        args: &[Arg],
    ) -> Vec<u8> {
        self.serial += 1;
        let (sig, body) = marshal(args);
        let f = HeaderFields {
            path: (msg_type == METHOD_CALL || msg_type == SIGNAL).then_some(path),
            interface,
            member: (msg_type == METHOD_CALL || msg_type == SIGNAL).then_some(member),
            error_name: (msg_type == ERROR).then_some("org.example.Error.Failed"),
            reply_serial: if msg_type == METHOD_RETURN || msg_type == ERROR {
                Some(reply_serial.unwrap_or(1).max(1))
            } else {
                None
            },
            destination,
            signature: Some(&sig),
            ..Default::default()
        };
        encode(Endian::Little, msg_type, flags, self.serial, &f, &body)
    }

    /// Applies the bus's effects as the shell would, checking what it sends.
    fn settle(&mut self) {
        loop {
            let effects: Vec<Effect> = self.bus.take_effects().collect();
            if effects.is_empty() {
                break;
            }
            for e in effects {
                match e {
                    Effect::Send(to, out) => {
                        assert!(
                            self.peers.contains_key(&to),
                            "sent to peer {to}, not connected"
                        );
                        let m = Message::parse(out.bytes.to_vec(), Vec::new())
                            .unwrap_or_else(|e| panic!("the bus sent an invalid message: {e}"));
                        trace(format_args!(
                            "  -> peer {to}: {} {:?}.{:?} {:?} {:?}",
                            m.msg_type(),
                            m.interface(),
                            m.member(),
                            m.error_name(),
                            m.args()
                        ));
                        if matches!(m.msg_type(), METHOD_RETURN | ERROR)
                            && m.sender() == Some("org.freedesktop.DBus")
                        {
                            let key = (to, m.reply_serial().expect("a reply has a serial"));
                            if self.monitor_calls.contains(&key) && m.msg_type() == METHOD_RETURN {
                                self.monitors.insert(to);
                            }
                            if self.asked_bus.contains(&key) && !self.monitors.contains(&to) {
                                assert!(
                                    self.answered.insert(key),
                                    "the bus answered {key:?} twice"
                                );
                            }
                            if self.hellos.contains(&key) && m.msg_type() == METHOD_RETURN {
                                let name = m.body_reader().string().expect("Hello's answer");
                                let earlier = self.uniques.insert(to, name.to_string());
                                assert!(earlier.is_none(), "a second unique name for {to}");
                            }
                        }
                        if to == self.next_peer - 1 {
                            self.replies.push(m);
                        }
                    }
                    Effect::Disconnect(p) => {
                        trace(format_args!("the bus disconnects peer {p}"));
                        self.uniques.remove(&p);
                        if self.peers.remove(&p).is_some() {
                            self.bus.disconnected(p);
                        }
                    }
                    Effect::ReloadConfig { peer, serial } => {
                        let result = if serial.is_multiple_of(2) {
                            Ok(())
                        } else {
                            Err("bus.conf:3: a reason".into())
                        };
                        self.bus.reload_finished(peer, serial, result);
                    }
                    Effect::Spawn { child, .. } => self.children.push(child),
                    Effect::Kill { child } => {
                        self.children.retain(|&c| c != child);
                        self.bus.child_exited(child, ChildExit::Signaled(9));
                    }
                    Effect::FastJoin {
                        peer,
                        serial,
                        member,
                        ..
                    } => {
                        let null = || File::open("/dev/null").expect("/dev/null").into();
                        let joined = Joined {
                            directory: "/nonexistent/busd-fastpath".into(),
                            socket: null(),
                            inbox: null(),
                            table: null(),
                            progress: null(),
                            slot: member,
                            shown: std::rc::Rc::new(vec![null(), null(), null(), null()]),
                        };
                        if let Some(fast) = self.peers.get_mut(&peer) {
                            *fast = true;
                        }
                        self.bus.fast_joined(peer, serial, member, Ok(joined));
                    }
                    Effect::FastLeave(p) => {
                        if let Some(fast) = self.peers.get_mut(&p) {
                            *fast = false;
                        }
                    }
                    Effect::RescanServices => self.bus.services_rescanned(services()),
                }
            }
        }
        let _ = self.bus.take_fast_updates();
    }

    fn any_peer(&mut self, s: &mut Script<'_>) -> Option<PeerId> {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[s.below(ids.len())])
    }

    fn step(&mut self, s: &mut Script<'_>) {
        match s.below(10) {
            0 if self.peers.len() < MAX_PEERS => {
                let uid = s.pick(&[1000, 1000, 1001, 0]);
                let fds = !s.one_in(4);
                let p = self.connect(uid, fds);
                if !s.one_in(4) {
                    let hello = self.message(
                        METHOD_CALL,
                        0,
                        Some("org.freedesktop.DBus"),
                        "/org/freedesktop/DBus",
                        Some("org.freedesktop.DBus"),
                        "Hello",
                        None,
                        &[],
                    );
                    self.send(p, hello);
                }
            }
            1 => {
                if let Some(p) = self.any_peer(s) {
                    trace(format_args!("peer {p} leaves"));
                    self.peers.remove(&p);
                    self.uniques.remove(&p);
                    self.bus.disconnected(p);
                    self.settle();
                }
            }
            2..=4 => {
                let Some(p) = self.any_peer(s) else { return };
                let (iface, member, kinds) = s.pick(METHODS);
                let mut args: Vec<Arg> = kinds.chars().map(|k| s.arg(k)).collect();
                // Now and then the wrong arguments.
                match s.byte() % 16 {
                    0 => args.clear(),
                    1 => args.push(Arg::U32(7)),
                    2 => args.reverse(),
                    _ => {}
                }
                let flags = s.pick(&[0, 0, 1, 2]);
                let iface = (!s.one_in(16)).then_some(iface);
                let path = s.pick(&["/org/freedesktop/DBus", "/", "/other"]);
                let m = self.message(
                    METHOD_CALL,
                    flags,
                    Some("org.freedesktop.DBus"),
                    path,
                    iface,
                    member,
                    None,
                    &args,
                );
                self.send(p, m);
            }
            5 | 6 => {
                let Some(p) = self.any_peer(s) else { return };
                let t = s.pick(&[METHOD_CALL, METHOD_CALL, SIGNAL, METHOD_RETURN, ERROR]);
                let dest = s.string(NAMES);
                let member = s.pick(&["M", "Secret", "Tick"]);
                let args = [Arg::Str(s.string(NAMES))];
                let reply_serial = Some(u32::from(s.byte()));
                let flags = s.pick(&[0, 1, 2, 3]);
                let m = self.message(
                    t,
                    flags,
                    Some(&dest).filter(|d| !d.is_empty()).map(|d| d.as_str()),
                    "/org/example",
                    Some("org.example.I"),
                    member,
                    reply_serial,
                    &args,
                );
                if Message::parse(m.clone(), Vec::new()).is_ok() {
                    self.send(p, m);
                }
            }
            7 => {
                let Some(p) = self.any_peer(s) else { return };
                let args = [Arg::Str(s.string(NAMES))];
                let (path, iface, member) = (s.pick(PATHS), s.pick(INTERFACES), s.pick(MEMBERS));
                let m = self.message(SIGNAL, 0, None, path, Some(iface), member, None, &args);
                self.send(p, m);
            }
            8 => {
                // A fast-path frame, as the shell hands it over.
                let fast: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, &f)| f)
                    .map(|(&p, _)| p)
                    .collect();
                if fast.is_empty() {
                    return;
                }
                let p = fast[s.below(fast.len())];
                let sender = self.unique_of(p, s);
                let dest = s.one_in(2);
                let dest_name = dest.then(|| s.string(NAMES)).filter(|d| !d.is_empty());
                let t = if dest_name.is_some() {
                    METHOD_CALL
                } else {
                    SIGNAL
                };
                let mut bytes = self.message(
                    t,
                    0,
                    dest_name.as_deref(),
                    "/org/example",
                    Some("org.example.I"),
                    "Tick",
                    None,
                    &[],
                );
                let Ok(m) = Message::parse(bytes.clone(), Vec::new()) else {
                    return;
                };
                bytes = m.forwarded(&sender);
                let Ok(m) = Message::parse(bytes, Vec::new()) else {
                    return;
                };
                let destination = s.pick(&[0, TO_DAEMON, 1, 2, 3, 4]);
                self.bus.handle_fast_frame(p, destination, m);
                self.settle();
            }
            _ => {
                // Time passes; started services fail or exit.
                self.now += Duration::from_millis(u64::from(s.byte()) * 500);
                self.bus.expire(self.now);
                self.settle();
                if let Some(child) = self.children.pop() {
                    match s.byte() % 3 {
                        0 => self.bus.spawn_failed(child, "no such file"),
                        1 => self.bus.child_exited(child, ChildExit::Exited(1)),
                        _ => self.children.insert(0, child),
                    }
                    self.settle();
                }
            }
        }
    }

    /// The unique name a frame claims: mostly the member's own, sometimes another's.
    fn unique_of(&mut self, p: PeerId, s: &mut Script<'_>) -> String {
        match self.uniques.get(&p) {
            Some(u) if !s.one_in(8) => u.clone(),
            _ => s.string(NAMES),
        }
    }

    /// Everyone leaves; a newcomer must find only the bus and itself.
    fn finish(mut self) {
        trace(format_args!("everyone leaves"));
        for p in self.peers.keys().copied().collect::<Vec<_>>() {
            self.peers.remove(&p);
            self.uniques.remove(&p);
            self.bus.disconnected(p);
            self.settle();
        }
        for child in std::mem::take(&mut self.children) {
            self.bus.child_exited(child, ChildExit::Exited(0));
            self.settle();
        }
        self.now += Duration::from_secs(3600);
        self.bus.expire(self.now);
        self.settle();
        assert_eq!(self.bus.peer_count(), 0, "peers left behind");
        let p = self.connect(1000, true);
        self.replies.clear();
        for member in ["Hello", "ListNames"] {
            let m = self.message(
                METHOD_CALL,
                0,
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                member,
                None,
                &[],
            );
            self.send(p, m);
        }
        let list = self
            .replies
            .iter()
            .rev()
            .find(|m| m.msg_type() == METHOD_RETURN && m.signature() == "as")
            .expect("ListNames answered");
        let mut r: Reader<'_> = list.body_reader();
        let mut names = r.string_array().expect("an array of names");
        names.sort_unstable();
        let unique = self.uniques.get(&p).expect("the newcomer's unique name");
        let mut expected = [unique.as_str(), "org.freedesktop.DBus"];
        expected.sort_unstable();
        assert_eq!(names, expected, "names outlived their owners");
    }
}

/// With BUSD_FUZZ_TRACE set (when reproducing a failure), prints the script's steps.
fn trace(what: std::fmt::Arguments<'_>) {
    thread_local! {
        static ON: bool = std::env::var_os("BUSD_FUZZ_TRACE").is_some();
    }
    if ON.with(|on| *on) {
        eprintln!("{what}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mut h = Harness {
        bus: new_bus(),
        now: Instant::now(),
        peers: BTreeMap::new(),
        next_peer: 0,
        serial: 0,
        asked_bus: BTreeSet::new(),
        answered: BTreeSet::new(),
        children: Vec::new(),
        replies: Vec::new(),
        hellos: BTreeSet::new(),
        uniques: BTreeMap::new(),
        monitors: BTreeSet::new(),
        monitor_calls: BTreeSet::new(),
    };
    h.bus.set_now(h.now);
    for _ in 0..MAX_STEPS {
        if s.0.is_empty() {
            break;
        }
        h.step(&mut s);
    }
    h.finish();
});
