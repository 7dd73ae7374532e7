//! The D-Bus wire protocol, knowing nothing of buses: messages, marshalling, SASL, addresses,
//! queue accounting.

pub mod address;
pub mod marshal;
pub mod message;
pub mod queue;
pub mod sasl;
