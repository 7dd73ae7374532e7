//! busd-policy: dbus-daemon's XML configuration (`<busconfig>`) and its security policy.
//!
//! Layout:
//! - [`config`]: the typed configuration and its loader (`<include>`, `<includedir>`, merge
//!   rules, file/line errors).
//! - [`rule`]: one `<allow>`/`<deny>` element, typed and validated as dbus-daemon does.
//! - [`compile`]: the `<policy>` contexts with users and groups resolved; builds a
//!   connection's policy and decides who may connect.
//! - [`eval`]: a connection's policy, indexed; send, receive and own decisions.
//! - [`limits`]: `<limit>` names and dbus-daemon's defaults.

pub mod compile;
pub mod config;
pub mod eval;
pub mod limits;
pub mod rule;

pub use compile::{Accounts, ClientIdentity, CompiledPolicy};
pub use config::{Config, Error, PolicyContext, PolicyKind, PolicyRule, ServiceDir};
pub use eval::{ClientPolicy, Decision, MessageFacts, Names, Peer};
pub use limits::Limits;
pub use rule::{MessageRule, Rule, RuleKind};
