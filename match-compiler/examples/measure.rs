//! Costs of the fast path's userspace parts, for docs/benchmarks.md:
//! `cargo run --release -p busd-match --example measure`. Figures to read, not tests.

use std::hint::black_box;
use std::time::Instant;

use busd_match::bpf::compile;
use busd_match::header::{encode, Fields, HEADER_LEN};
use busd_match::{interp, Arg, MatchRule, MessageInfo};

struct Msg;

impl MessageInfo for Msg {
    fn msg_type(&self) -> u8 {
        4
    }
    fn interface(&self) -> Option<&str> {
        Some("org.freedesktop.DBus.Properties")
    }
    fn member(&self) -> Option<&str> {
        Some("PropertiesChanged")
    }
    fn path(&self) -> Option<&str> {
        Some("/org/freedesktop/NetworkManager/Devices/3")
    }
    fn destination(&self) -> Option<&str> {
        None
    }
    fn sender_is(&self, name: &str) -> bool {
        name == ":1.7"
    }
    fn destination_is(&self, _: &str) -> bool {
        false
    }
    fn arg(&self, i: u8) -> Arg<'_> {
        match i {
            0 => Arg::Str("org.freedesktop.NetworkManager.Device"),
            _ => Arg::Other,
        }
    }
}

fn rules(n: usize) -> Vec<MatchRule> {
    (0..n)
        .map(|i| {
            let text = match i % 4 {
                0 => format!("type='signal',interface='org.example.I{i}',member='Changed'"),
                1 => format!("type='signal',sender=':1.{}',path_namespace='/org/example/{i}'", i % 50),
                2 => format!("type='signal',interface='org.freedesktop.DBus.Properties',arg0='org.example.I{i}'"),
                _ => format!("type='signal',member='M{i}',arg1path='/x/{i}/'"),
            };
            MatchRule::parse(&text).unwrap()
        })
        .collect()
}

fn per_iteration(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let resolver = |name: &str| name.strip_prefix(":1.")?.parse::<u32>().ok();
    println!(
        "| rules | compile time | instructions | per rule | widened | filter run (interpreter) |"
    );
    println!("|---|---|---|---|---|---|");
    let fields = Fields {
        msg_type: 4,
        flags: 0,
        sender: 7,
        destination: 0,
        interface: Some("org.freedesktop.DBus.Properties"),
        member: Some("PropertiesChanged"),
        path: Some("/org/freedesktop/NetworkManager/Devices/3"),
    };
    let args = [
        Arg::Str("org.freedesktop.NetworkManager.Device"),
        Arg::Other,
    ];
    let mut frame = [0u8; HEADER_LEN];
    encode(&fields, &args, &mut frame);
    for n in [1usize, 100, 1000] {
        let rs = rules(n);
        let reps = if n == 1000 { 20 } else { 200 };
        let mut prog = compile(1, &rs, &resolver);
        let t = per_iteration(reps, || prog = compile(1, black_box(&rs), &resolver));
        let run = per_iteration(10_000, || {
            black_box(interp::run(&prog.insns, black_box(&frame)));
        });
        println!(
            "| {n} | {:.1} us | {} | {:.1} | {} | {:.0} ns |",
            t / 1000.0,
            prog.insns.len(),
            prog.insns.len() as f64 / n as f64,
            prog.widened,
            run
        );
    }
    false_positives(&resolver);
    let enc = per_iteration(200_000, || {
        encode(black_box(&fields), black_box(&args), &mut frame);
        black_box(&frame);
    });
    let rs = rules(100);
    let exact = per_iteration(20_000, || {
        black_box(rs.iter().filter(|r| r.matches(&Msg)).count());
    });
    println!();
    println!("header encoding: {enc:.0} ns per message (interface, member, a 5-level path, 1 string argument)");
    println!(
        "exact matching in userspace: {:.1} ns per rule ({exact:.0} ns for 100 rules)",
        exact / 100.0
    );
}

/// A message of the kind the rules above talk about, varied by `i`.
struct Varied {
    i: usize,
}

impl MessageInfo for Varied {
    fn msg_type(&self) -> u8 {
        4
    }
    fn interface(&self) -> Option<&str> {
        Some(
            [
                "org.freedesktop.DBus.Properties",
                "org.example.I0",
                "org.example.I4",
            ][self.i % 3],
        )
    }
    fn member(&self) -> Option<&str> {
        Some(["Changed", "PropertiesChanged", "M3", "M7"][self.i % 4])
    }
    fn path(&self) -> Option<&str> {
        Some(["/org/example/1", "/org/example/5/x", "/other"][self.i % 3])
    }
    fn destination(&self) -> Option<&str> {
        None
    }
    fn sender_is(&self, name: &str) -> bool {
        name == format!(":1.{}", self.i % 60)
    }
    fn destination_is(&self, _: &str) -> bool {
        false
    }
    fn arg(&self, i: u8) -> Arg<'_> {
        match i {
            0 => Arg::Str(["org.example.I2", "org.example.I6", "x"][self.i % 3]),
            1 => Arg::Path(["/x/3/a", "/x/7/", "/y"][self.i % 3]),
            _ => Arg::Missing,
        }
    }
}

/// Share of messages no rule matches that the filter still accepts, for one member's rules.
fn false_positives(resolver: &dyn busd_match::bpf::Resolver) {
    println!();
    println!("| rules per member | messages no rule matches | accepted anyway by the filter |");
    println!("|---|---|---|");
    for n in [1usize, 10, 100, 1000] {
        let rs = rules(n);
        let prog = compile(1, &rs, resolver);
        let (mut unwanted, mut accepted) = (0u32, 0u32);
        for i in 0..2000 {
            let m = Varied { i };
            if rs.iter().any(|r| r.matches(&m)) {
                continue;
            }
            unwanted += 1;
            let fields = Fields {
                msg_type: 4,
                flags: 0,
                sender: (i % 60) as u32,
                destination: 0,
                interface: m.interface(),
                member: m.member(),
                path: m.path(),
            };
            let args = [m.arg(0), m.arg(1)];
            let mut frame = [0u8; HEADER_LEN];
            encode(&fields, &args, &mut frame);
            if interp::run(&prog.insns, &frame).unwrap_or(0) != 0 {
                accepted += 1;
            }
        }
        println!(
            "| {n}{} | {unwanted} | {accepted} ({:.2}%) |",
            if prog.widened { " (widened)" } else { "" },
            100.0 * f64::from(accepted) / f64::from(unwanted.max(1))
        );
    }
}
