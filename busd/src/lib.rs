//! busd: a D-Bus message bus daemon, drop-in for dbus-daemon.
//!
//! The protocol itself is the `busd-wire` crate, shared with the client shim.
//!
//! Layout:
//! - [`queue`]: queue accounting (charges against a sender, output-queue load).
//! - [`bus`]: the bus state machine (peers, names, match rules, routing, driver); no I/O.
//! - [`server`]: the I/O shell: listeners, connections, the event loop.
//! - [`activation`]: the shell's side of activation (service directories and files).
//! - [`cli`]: dbus-daemon's command line.
//! - [`logging`]: stderr and/or the system log, as dbus-daemon chooses.

pub mod activation;
pub mod bus;
pub mod cli;
pub mod logging;
pub mod queue;
pub mod server;
