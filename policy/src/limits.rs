//! `<limit>` values with dbus-daemon 1.14's defaults (bus/config-parser.c).

/// Every limit dbus-daemon knows. Times are in milliseconds; `reply_timeout` of `None` means
/// replies never time out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_incoming_bytes: u64,
    pub max_incoming_unix_fds: u64,
    pub max_outgoing_bytes: u64,
    pub max_outgoing_unix_fds: u64,
    pub max_message_size: u64,
    pub max_message_unix_fds: u64,
    pub service_start_timeout: u64,
    pub auth_timeout: u64,
    pub pending_fd_timeout: u64,
    pub reply_timeout: Option<u64>,
    pub max_completed_connections: u64,
    pub max_incomplete_connections: u64,
    pub max_connections_per_user: u64,
    pub max_pending_service_starts: u64,
    pub max_names_per_connection: u64,
    pub max_match_rules_per_connection: u64,
    pub max_replies_per_connection: u64,
    pub max_containers: u64,
    pub max_containers_per_user: u64,
    pub max_container_metadata_bytes: u64,
    pub max_connections_per_container: u64,
}

const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_incoming_bytes: 127 * MIB,
            max_incoming_unix_fds: 64,
            max_outgoing_bytes: 127 * MIB,
            max_outgoing_unix_fds: 64,
            max_message_size: 32 * MIB,
            max_message_unix_fds: 16,
            service_start_timeout: 25_000,
            auth_timeout: 30_000,
            pending_fd_timeout: 150_000,
            reply_timeout: None,
            max_completed_connections: 2048,
            max_incomplete_connections: 64,
            max_connections_per_user: 256,
            max_pending_service_starts: 512,
            max_names_per_connection: 512,
            max_match_rules_per_connection: 512,
            max_replies_per_connection: 128,
            max_containers: 512,
            max_containers_per_user: 16,
            max_container_metadata_bytes: 4096,
            max_connections_per_container: 8,
        }
    }
}

/// Applies `$m!` to the limits stored as plain numbers (every one but `reply_timeout`).
macro_rules! numeric_limits {
    ($m:ident, $($args:tt)*) => {
        $m!($($args)*;
            max_incoming_bytes, max_incoming_unix_fds, max_outgoing_bytes,
            max_outgoing_unix_fds, max_message_size, max_message_unix_fds,
            service_start_timeout, auth_timeout, pending_fd_timeout,
            max_completed_connections, max_incomplete_connections, max_connections_per_user,
            max_pending_service_starts, max_names_per_connection,
            max_match_rules_per_connection, max_replies_per_connection, max_containers,
            max_containers_per_user, max_container_metadata_bytes,
            max_connections_per_container)
    };
}

macro_rules! set_by_name {
    ($self:ident, $name:ident, $v:ident; $($field:ident),*) => {
        match $name {
            $(stringify!($field) => {
                $self.$field = $v;
                true
            })*
            _ => false,
        }
    };
}

macro_rules! list_entries {
    ($self:ident; $($field:ident),*) => {
        vec![$((stringify!($field), $self.$field.to_string())),*]
    };
}

impl Limits {
    /// Sets a limit by its configuration name. `value` is already parsed; a negative
    /// `reply_timeout` means "never". Returns false for an unknown name.
    pub fn set(&mut self, name: &str, value: i64) -> bool {
        if name == "reply_timeout" {
            self.reply_timeout = (value > 0).then_some(value as u64);
            return true;
        }
        let v = value.max(0) as u64;
        numeric_limits!(set_by_name, self, name, v)
    }

    /// Every limit with its value, by configuration name (for `--check-config`).
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = numeric_limits!(list_entries, self);
        out.push((
            "reply_timeout",
            self.reply_timeout
                .map_or_else(|| "none".to_string(), |t| t.to_string()),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_settable_by_name_and_listed() {
        let mut l = Limits::default();
        for (name, _) in Limits::default().entries() {
            assert!(l.set(name, 7), "{name}");
        }
        assert!(l.entries().iter().all(|(_, v)| v == "7"));
        assert!(!l.set("max_frobs", 1));
        l.set("reply_timeout", -1);
        assert_eq!(l.reply_timeout, None);
    }
}
