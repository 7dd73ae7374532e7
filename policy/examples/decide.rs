//! How long one policy decision takes with the stock session and system configurations:
//! `cargo run --release -p busd-policy --example decide`. A measurement to read, not a test.

use std::path::Path;
use std::time::Instant;

use busd_policy::eval::has_word_prefix;
use busd_policy::rule::METHOD_CALL;
use busd_policy::{Accounts, ClientIdentity, CompiledPolicy, Config, MessageFacts, Names, Peer};

struct NoAccounts;

impl Accounts for NoAccounts {
    fn user_id(&self, name: &str) -> Option<u32> {
        (name == "root").then_some(0)
    }
    fn group_id(&self, _: &str) -> Option<u32> {
        None
    }
}

struct Service(&'static [&'static str]);

impl Names for Service {
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

fn main() {
    for file in [
        "/usr/share/dbus-1/session.conf",
        "/usr/share/dbus-1/system.conf",
    ] {
        let path = Path::new(file);
        if !path.exists() {
            println!("{file}: not installed");
            continue;
        }
        let config = Config::load(path).expect("stock configuration loads");
        let compiled = CompiledPolicy::compile(&config, &NoAccounts).expect("compiles");
        let who = ClientIdentity {
            uid: Some(1000),
            groups: vec![1000],
            at_console: false,
        };
        let policy = compiled.client_policy(&who);
        let service = Service(&[":1.42", "org.freedesktop.login1"]);
        let m = MessageFacts {
            msg_type: METHOD_CALL,
            path: Some("/org/freedesktop/login1"),
            interface: Some("org.freedesktop.login1.Manager"),
            member: Some("ListSessions"),
            destination: Some("org.freedesktop.login1"),
            sender: Some(":1.7"),
            ..Default::default()
        };
        let n = 1_000_000;
        let start = Instant::now();
        let mut allowed = 0u32;
        for _ in 0..n {
            let d = policy.may_send(std::hint::black_box(&m), false, Peer::Connection(&service));
            let r = policy.may_receive(&m, false, false, Peer::Connection(&service));
            allowed += u32::from(d.allowed && r.allowed);
        }
        let per = start.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "{file}: {} send / {} receive rules for uid 1000; send+receive decision {per:.0} ns (allowed: {})",
            policy.send_rules().len(),
            policy.receive_rules().len(),
            allowed == n
        );
    }
}
