//! What the bus answers a caller that it will not serve: an error name and dbus-daemon's
//! text. Every driver handler, the security check, activation and reply tracking return
//! this type; [`DriverError::dbus_name`] is the one place a name is produced.

pub use busd_wire::errors::ErrorName;

/// An error the bus sends in reply to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    pub name: ErrorName,
    /// The error's message, as dbus-daemon words it.
    pub text: String,
}

impl DriverError {
    pub fn new(name: ErrorName, text: String) -> Self {
        DriverError { name, text }
    }

    /// The D-Bus error name it is sent under.
    pub fn dbus_name(&self) -> &'static str {
        self.name.as_str()
    }
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.text)
    }
}
