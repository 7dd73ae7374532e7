//! busd-match: D-Bus match rules, exact to the specification and to dbus-daemon.
//!
//! Layout:
//! - [`names`]: validation of bus names, interfaces, members, error names, object paths and
//!   signatures (the specification's "valid names" rules), shared by the whole workspace.
//! - [`rule`]: the match-rule grammar (`type='signal',arg0='x'`), parsed as dbus-daemon does.
//! - [`matcher`]: deciding whether a message matches a rule, given a [`matcher::MessageInfo`].
//! - [`header`]: the fast path's routing header (fixed layout, hashes, bloom filter).
//! - [`bpf`]: the compiler from a member's rules to a classic BPF socket filter.
//! - [`interp`]: a classic BPF interpreter with the kernel's semantics, for tests.
//! - [`summary`]: per-member interest summaries and the index senders pick candidates with.
//! - [`table`]: the routing table the daemon publishes in shared memory for members.
//! - [`sealed`]: large messages in sealed memfds.
//! - [`progress`]: the counters members publish for causal order.
//!
//! Written by hand because it must be exact: zbus's `MatchRule` differs from dbus-daemon on
//! quoting, escapes and argument matching.

pub mod bpf;
pub mod header;
pub mod interp;
pub mod matcher;
pub mod names;
pub mod progress;
pub mod rule;
pub mod sealed;
pub mod summary;
pub mod table;

pub use matcher::{Arg, MessageInfo};
pub use rule::{ArgMatch, ArgMatchKind, Error, MatchRule, MessageType};
