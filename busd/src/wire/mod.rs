//! The D-Bus wire protocol, knowing nothing of buses: messages, marshalling, SASL, addresses.

pub mod address;
pub mod marshal;
pub mod message;
pub mod sasl;
