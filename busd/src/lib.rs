//! busd: a D-Bus message bus daemon, drop-in for dbus-daemon.
//!
//! Layout:
//! - [`wire`]: the protocol, knowing nothing of buses (messages, marshalling, SASL, addresses).
//! - [`bus`]: the bus state machine (peers, names, match rules, routing, driver); no I/O.
//! - [`server`]: the I/O shell: listeners, connections, the event loop.
//! - [`cli`]: dbus-daemon's command line.

pub mod bus;
pub mod cli;
pub mod server;
pub mod wire;
