//! The compiler from a member's match rules to a classic BPF socket filter over the routing
//! header ([`crate::header`]). Written by hand: the program must be a superset of exact
//! matching (it may accept a message no rule matches, never reject one a rule matches) and
//! must fit the kernel's limits.
//!
//! Shape of a program: check the magic; accept what is addressed to the member; load every
//! header word the rules use into scratch memory once (packet loads are what makes programs
//! expensive in socket-option memory); then one block per rule alternative, each a chain of
//! "load a register, mask, compare" that falls through to the next block on the first
//! mismatch and accepts at its end; reject at the end.

use std::collections::{HashMap, HashSet};

use crate::header::{
    self, bloom_positions, hash32, E_PATH_PREFIX, MAX_ARGS, OFF_ARG0, OFF_BLOOM, OFF_DESTINATION,
    OFF_INTERFACE, OFF_KIND, OFF_MAGIC, OFF_MEMBER, OFF_PATH, OFF_SENDER,
};
use crate::rule::{ArgMatchKind, MatchRule};

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Instruction classes and modes (linux/filter.h, linux/bpf_common.h).
pub const BPF_LD: u16 = 0x00;
pub const BPF_LDX: u16 = 0x01;
pub const BPF_ST: u16 = 0x02;
pub const BPF_STX: u16 = 0x03;
pub const BPF_ALU: u16 = 0x04;
pub const BPF_JMP: u16 = 0x05;
pub const BPF_RET: u16 = 0x06;
pub const BPF_MISC: u16 = 0x07;
pub const BPF_W: u16 = 0x00;
pub const BPF_H: u16 = 0x08;
pub const BPF_B: u16 = 0x10;
pub const BPF_IMM: u16 = 0x00;
pub const BPF_ABS: u16 = 0x20;
pub const BPF_IND: u16 = 0x40;
pub const BPF_MEM: u16 = 0x60;
pub const BPF_LEN: u16 = 0x80;
pub const BPF_AND: u16 = 0x50;
pub const BPF_JA: u16 = 0x00;
pub const BPF_JEQ: u16 = 0x10;
pub const BPF_JGT: u16 = 0x20;
pub const BPF_JGE: u16 = 0x30;
pub const BPF_JSET: u16 = 0x40;
pub const BPF_K: u16 = 0x00;
pub const BPF_X: u16 = 0x08;
pub const BPF_A: u16 = 0x10;

/// The kernel's limit on instructions (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;
/// Scratch memory words (BPF_MEMWORDS).
pub const MEM_WORDS: usize = 16;
/// What an accepting program returns: keep the whole datagram.
pub const ACCEPT: u32 = u32::MAX;

/// A test on one header word: `(word & mask) == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Test {
    offset: u32,
    mask: u32,
    value: u32,
    /// For bloom tests, which entry they belong to (its first bit position + 1); 0 for
    /// whole-word tests. Lets widening keep one word per entry.
    entry: u32,
}

/// What the compiler needs besides the rules: the member, and the member ids that names
/// designate now (the daemon recompiles when owners change).
pub trait Resolver {
    fn member_of(&self, name: &str) -> Option<u32>;
}

impl<F: Fn(&str) -> Option<u32>> Resolver for F {
    fn member_of(&self, name: &str) -> Option<u32> {
        self(name)
    }
}

/// Attaches (or replaces) a socket's classic BPF filter (`SO_ATTACH_FILTER`); the change
/// applies at once, to every descriptor of the socket.
pub fn attach(socket: std::os::fd::BorrowedFd<'_>, prog: &Program) -> std::io::Result<()> {
    const _: () = assert!(std::mem::size_of::<Insn>() == std::mem::size_of::<libc::sock_filter>());
    let fprog = libc::sock_fprog {
        len: prog.insns.len() as u16,
        filter: prog.insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `len` instructions laid out as struct sock_filter (checked
    // above), alive for the call; the kernel copies them.
    unsafe { socket_option(socket, libc::SO_ATTACH_FILTER, &fprog) }
}

/// Takes a socket's filter off (`SO_DETACH_FILTER`): from now on it gets every datagram.
/// A socket without a filter is left as it is.
pub fn detach(socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: a plain int, which the kernel ignores.
    match unsafe { socket_option(socket, libc::SO_DETACH_FILTER, &0 as &libc::c_int) } {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Sets a `SOL_SOCKET` option to `value`.
///
/// # Safety
///
/// `value` must be what the kernel expects for `option`: anything it points to must be
/// valid for the kernel to read during the call.
unsafe fn socket_option<T>(
    socket: std::os::fd::BorrowedFd<'_>,
    option: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the kernel reads at most `size_of::<T>()` bytes of `value`, alive for the
    // call; what those bytes point to, the caller answers for (above).
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub insns: Vec<Insn>,
    /// Tests were dropped to fit the limits (the filter accepts more than before).
    pub widened: bool,
}

fn bloom_tests(kind: &str, value: &str, out: &mut Vec<Test>) {
    let mut words: [u32; header::BLOOM_WORDS] = [0; header::BLOOM_WORDS];
    let positions = bloom_positions(kind, value);
    for p in positions {
        words[(p / 32) as usize] |= 1 << (31 - p % 32);
    }
    for (i, mask) in words.iter().enumerate() {
        if *mask != 0 {
            out.push(Test {
                offset: OFF_BLOOM + 4 * i as u32,
                mask: *mask,
                value: *mask,
                entry: positions[0] + 1,
            });
        }
    }
}

fn word(offset: u32, value: u32) -> Test {
    Test {
        offset,
        mask: u32::MAX,
        value,
        entry: 0,
    }
}

/// `/`-terminated prefixes of `s`, `s` included when it ends with `/`.
fn slash_prefixes(s: &str) -> impl Iterator<Item = &str> {
    s.char_indices()
        .filter(|&(_, c)| c == '/')
        .map(move |(i, _)| &s[..=i])
}

/// A rule as alternatives (any one must hold), each a conjunction of tests. None: the rule
/// can never match (e.g. its sender has no owner now). Tests the header cannot express are
/// left out, which only widens the rule.
fn rule_alternatives(rule: &MatchRule, resolver: &dyn Resolver) -> Option<Vec<Vec<Test>>> {
    let mut all = Vec::new();
    if let Some(t) = rule.msg_type {
        all.push(Test {
            offset: OFF_KIND,
            mask: 0x00ff_0000,
            value: (t as u32) << 16,
            entry: 0,
        });
    }
    if let Some(s) = &rule.sender {
        all.push(word(OFF_SENDER, resolver.member_of(s)?));
    }
    match (&rule.destination, rule.eavesdrop) {
        // dbus-daemon: without eavesdrop=true a destination rule never matches for others.
        (Some(_), false) => return None,
        (Some(d), true) => all.push(word(OFF_DESTINATION, resolver.member_of(d)?)),
        (None, false) => all.push(word(OFF_DESTINATION, 0)),
        (None, true) => {}
    }
    if let Some(i) = &rule.interface {
        all.push(word(OFF_INTERFACE, hash32(i)));
    }
    if let Some(m) = &rule.member {
        all.push(word(OFF_MEMBER, hash32(m)));
    }
    if let Some(p) = &rule.path {
        all.push(word(OFF_PATH, hash32(p)));
    }
    if let Some(ns) = &rule.path_namespace {
        bloom_tests(E_PATH_PREFIX, ns, &mut all);
    }
    let mut alternatives = vec![all];
    for a in &rule.args {
        let n = usize::from(a.index);
        if n >= MAX_ARGS {
            continue;
        }
        match a.kind {
            ArgMatchKind::String if n == 0 => {
                for alt in &mut alternatives {
                    alt.push(word(OFF_ARG0, hash32(&a.value)));
                }
            }
            ArgMatchKind::String => {
                for alt in &mut alternatives {
                    bloom_tests(header::e_arg(n).as_str(), &a.value, alt);
                }
            }
            ArgMatchKind::Namespace => {
                for alt in &mut alternatives {
                    bloom_tests(header::e_arg_dot_prefix(n).as_str(), &a.value, alt);
                }
            }
            ArgMatchKind::Path => {
                // argNpath: the argument equals the value or is a `/`-ended prefix of it,
                // or (when the value ends with `/`) the value is a prefix of the argument.
                let mut choices: Vec<Vec<Test>> = Vec::new();
                let path_kind = header::e_arg_path(n);
                let mut candidates: Vec<&str> = slash_prefixes(&a.value).collect();
                if !a.value.ends_with('/') {
                    candidates.push(&a.value);
                }
                for c in candidates {
                    let mut t = Vec::new();
                    bloom_tests(path_kind.as_str(), c, &mut t);
                    choices.push(t);
                }
                if a.value.ends_with('/') {
                    let mut t = Vec::new();
                    bloom_tests(header::e_arg_slash_prefix(n).as_str(), &a.value, &mut t);
                    choices.push(t);
                }
                if choices.len() * alternatives.len() > 16 {
                    // Too many combinations: leave this test out (wider, still safe).
                    continue;
                }
                alternatives = alternatives
                    .iter()
                    .flat_map(|alt| {
                        choices.iter().map(move |c| {
                            let mut v = alt.clone();
                            v.extend(c.iter().copied());
                            v
                        })
                    })
                    .collect();
            }
        }
    }
    Some(alternatives)
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The rules' tests as a trie: rules sharing their first tests share their code, so a
/// test common to many rules runs once and the program grows with what differs.
#[derive(Debug, Default)]
struct Node {
    test: Option<Test>,
    /// A rule ends here: accept.
    accept: bool,
    children: Vec<Node>,
}

impl Node {
    fn insert(&mut self, tests: &[Test]) {
        if self.accept {
            return; // an accepting prefix already covers this rule
        }
        let Some((first, rest)) = tests.split_first() else {
            self.accept = true;
            self.children.clear();
            return;
        };
        let child = match self.children.iter().position(|c| c.test == Some(*first)) {
            Some(i) => &mut self.children[i],
            None => {
                self.children.push(Node {
                    test: Some(*first),
                    ..Node::default()
                });
                self.children.last_mut().expect("just pushed")
            }
        };
        child.insert(rest);
    }
}

/// How a test reads its word: from scratch memory when preloaded, else from the packet.
fn load(slots: &HashMap<u32, u32>, t: &Test) -> Insn {
    match slots.get(&t.offset) {
        Some(slot) => insn(BPF_LD | BPF_MEM, 0, 0, *slot),
        None => insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, t.offset),
    }
}

/// Emits `node`'s children, each "test, then its own children (or accept)"; a failed test
/// skips to the next sibling, the end of the list falls through to whatever follows.
fn emit_children(node: &Node, slots: &HashMap<u32, u32>, out: &mut Vec<Insn>) -> Option<()> {
    for child in &node.children {
        let t = child.test.as_ref()?;
        out.push(load(slots, t));
        if t.mask != u32::MAX {
            out.push(insn(BPF_ALU | BPF_AND | BPF_K, 0, 0, t.mask));
        }
        let mut body = Vec::new();
        if child.accept {
            body.push(insn(BPF_RET | BPF_K, 0, 0, ACCEPT));
        } else {
            emit_children(child, slots, &mut body)?;
        }
        if out.len() + body.len() > MAX_INSNS {
            return None;
        }
        match u8::try_from(body.len()) {
            Ok(skip) => out.push(insn(BPF_JMP | BPF_JEQ | BPF_K, 0, skip, t.value)),
            Err(_) => {
                // Too far for a conditional jump: hop over an unconditional one.
                out.push(insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, t.value));
                out.push(insn(BPF_JMP | BPF_JA, 0, 0, body.len() as u32));
            }
        }
        out.extend(body);
    }
    Some(())
}

/// Emits the program for `blocks` (alternatives, each a conjunction), or None if it would
/// not fit.
fn emit(member: u32, blocks: &[Vec<Test>]) -> Option<Vec<Insn>> {
    // Every block takes at least one instruction: more cannot fit (and are not looked at).
    if blocks.len() > MAX_INSNS {
        return None;
    }
    let mut p = vec![
        // Frames that are not busd frames are dropped.
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, OFF_MAGIC),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, header::MAGIC),
        insn(BPF_RET | BPF_K, 0, 0, 0),
        // Addressed to this member: always taken.
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, OFF_DESTINATION),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, member),
        insn(BPF_RET | BPF_K, 0, 0, ACCEPT),
    ];
    // The most used words go to scratch memory, loaded once.
    let mut uses: HashMap<u32, usize> = HashMap::new();
    for t in blocks.iter().flatten() {
        *uses.entry(t.offset).or_default() += 1;
    }
    let mut by_use: Vec<(u32, usize)> = uses.into_iter().collect();
    by_use.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let slots: HashMap<u32, u32> = by_use
        .iter()
        .filter(|(_, n)| *n > 1)
        .take(MEM_WORDS)
        .enumerate()
        .map(|(slot, (off, _))| (*off, slot as u32))
        .collect();
    let mut preload: Vec<(&u32, &u32)> = slots.iter().collect();
    preload.sort();
    for (off, slot) in preload {
        p.push(insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, *off));
        p.push(insn(BPF_ST, 0, 0, *slot));
    }
    // Tests in header order, so that rules share their leading tests.
    let mut root = Node::default();
    for block in blocks {
        let mut tests = block.clone();
        tests.sort_by_key(|t| (t.offset, t.mask, t.value));
        tests.dedup();
        root.insert(&tests);
    }
    if root.accept {
        p.push(insn(BPF_RET | BPF_K, 0, 0, ACCEPT));
        return Some(p);
    }
    emit_children(&root, &slots, &mut p)?;
    p.push(insn(BPF_RET | BPF_K, 0, 0, 0));
    (p.len() <= MAX_INSNS).then_some(p)
}

/// A way to make a rule's tests wider (fewer tests).
type Widening = fn(&[Test]) -> Vec<Test>;

/// Keeps, of each bloom entry's word tests, the one with the most bits.
fn densest_bloom_word(block: &[Test]) -> Vec<Test> {
    let mut out: Vec<Test> = Vec::new();
    for t in block {
        if t.entry == 0 {
            out.push(*t);
            continue;
        }
        match out.iter_mut().find(|o| o.entry == t.entry) {
            Some(o) if o.mask.count_ones() < t.mask.count_ones() => *o = *t,
            Some(_) => {}
            None => out.push(*t),
        }
    }
    out
}

fn whole_words(block: &[Test]) -> Vec<Test> {
    block.iter().copied().filter(|t| t.entry == 0).collect()
}

/// Compiles the rules of `member` into a filter that accepts whatever is addressed to it and
/// whatever one of its rules may match. When the rules do not fit, tests are dropped (bloom
/// tests first, then everything: the filter then accepts all broadcasts) and `widened` says so.
pub fn compile<'a>(
    member: u32,
    rules: impl IntoIterator<Item = &'a MatchRule>,
    resolver: &dyn Resolver,
) -> Program {
    // (Distinct blocks kept in order, found again by hash: the daemon compiles the rules of
    // a whole session, and a linear search per rule made that quadratic.)
    let mut blocks: Vec<Vec<Test>> = Vec::new();
    let mut seen: HashSet<Vec<Test>> = HashSet::new();
    let mut eavesdrops = false;
    for r in rules {
        eavesdrops |= r.eavesdrop;
        if let Some(alts) = rule_alternatives(r, resolver) {
            for mut a in alts {
                a.dedup();
                if seen.insert(a.clone()) {
                    blocks.push(a);
                }
            }
        }
    }
    if let Some(insns) = emit(member, &blocks) {
        return Program {
            insns,
            widened: false,
        };
    }
    // Widen in steps until it fits: first test each bloom entry by its densest word only,
    // then keep only the whole-word tests (type, sender, destination, interface, member,
    // path, arg0). Each rule becomes wider, the program much shorter.
    let steps: [Widening; 2] = [densest_bloom_word, whole_words];
    for widen in steps {
        let mut narrow: Vec<Vec<Test>> = Vec::new();
        let mut seen: HashSet<Vec<Test>> = HashSet::new();
        for b in &blocks {
            let kept = widen(b);
            if seen.insert(kept.clone()) {
                narrow.push(kept);
            }
        }
        if let Some(insns) = emit(member, &narrow) {
            return Program {
                insns,
                widened: true,
            };
        }
    }
    // Last resort: accept every broadcast, and everything when a rule eavesdrops.
    let all = if eavesdrops {
        vec![Vec::new()]
    } else {
        vec![vec![word(OFF_DESTINATION, 0)]]
    };
    Program {
        insns: emit(member, &all).unwrap_or_default(),
        widened: true,
    }
}

#[cfg(test)]
mod tests;
