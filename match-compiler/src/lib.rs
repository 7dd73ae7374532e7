//! busd-match: D-Bus match rules, exact to the specification and to dbus-daemon.
//!
//! Layout:
//! - [`rule`]: the match-rule grammar (`type='signal',arg0='x'`), parsed as dbus-daemon does.
//! - [`matcher`]: deciding whether a message matches a rule, given a [`matcher::MessageInfo`].
//! - [`header`]: the fast path's routing header (fixed layout, hashes, bloom filter).
//! - [`bpf`]: the compiler from a member's rules to a classic BPF socket filter.
//! - [`interp`]: a classic BPF interpreter with the kernel's semantics, for tests.
//! - [`summary`]: per-member interest summaries and the index senders pick candidates with.
//! - [`table`]: the routing table the daemon publishes in shared memory for members.
//! - [`sealed`]: large messages in sealed memfds.
//! - [`progress`]: the counters members publish for causal order.
//! - [`protocol`]: the Join method and answer, member ids and socket names, frame checks.
//! - [`shm`]: the one mapping of the fast path's shared memory, as atomic words.
//!
//! Written by hand because it must be exact: zbus's `MatchRule` differs from dbus-daemon on
//! quoting, escapes and argument matching.

pub mod bpf;
pub mod header;
pub mod interp;
pub mod matcher;
pub mod progress;
pub mod protocol;
pub mod rule;
pub mod sealed;
pub mod shm;
pub mod summary;
pub mod table;

pub use matcher::{Arg, MessageInfo};
pub use rule::{ArgMatch, ArgMatchKind, Error, MatchRule, MessageType};
