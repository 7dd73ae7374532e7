//! The match-rule grammar, then the BPF compiler on every rule it accepts. A rule that
//! parses prints as text that parses back to the same rule; compiling it never panics, and
//! the kernel takes the program it gives (attached to a real socket: the kernel's checker is
//! the one that counts).
#![no_main]
use busd_match::bpf::compile;
use busd_match::MatchRule;
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // One rule per line: a member's whole rule set is compiled at once.
    let rules: Vec<MatchRule> = text
        .lines()
        .filter_map(|l| MatchRule::parse(l).ok())
        .collect();
    for r in &rules {
        let printed = r.to_string();
        let again = MatchRule::parse(&printed)
            .unwrap_or_else(|e| panic!("{r:?} prints as {printed:?}, which does not parse: {e}"));
        assert_eq!(&again, r, "{printed:?} parses back to another rule");
    }
    let resolver = |name: &str| {
        name.len()
            .is_multiple_of(3)
            .then_some(name.len() as u32 + 1)
    };
    let prog = compile(7, &rules, &resolver);
    SOCKET.with(|s| {
        if let Err(e) = busd_match::bpf::attach(s.as_fd(), &prog) {
            panic!("the kernel refused the program for {rules:?}: {e}");
        }
    });
});

thread_local! {
    static SOCKET: UnixDatagram = UnixDatagram::unbound().expect("a datagram socket");
}
