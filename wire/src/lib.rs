//! busd-wire: the D-Bus wire protocol, knowing nothing of buses. The daemon and the client
//! shim both speak it; neither links the other.
//!
//! Layout:
//! - [`names`]: validation of bus names, interfaces, members, error names, object paths and
//!   signatures (the specification's "Valid Names").
//! - [`marshal`]: a bounds-checked reader and a writer of the marshalling format.
//! - [`message`]: framing, header parsing and validation, the bus's header rewrite, encoding.
//! - [`sasl`]: the server side of SASL authentication.
//! - [`address`]: server addresses of the unix transport.
//! - [`fds`]: sending and receiving unix fds with a message (SCM_RIGHTS).
//! - [`errors`]: the standard error names, each spelled once.
//!
//! Its [`message::Message`] is `Send`: the shim hands messages between threads.

pub mod address;
pub mod errors;
pub mod fds;
pub mod marshal;
pub mod message;
pub mod names;
pub mod sasl;

pub use message::{Arg, Message};

#[cfg(test)]
mod tests {
    /// The shim moves messages between threads; the daemon's queues share their bytes.
    #[test]
    fn a_message_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Message>();
    }
}
