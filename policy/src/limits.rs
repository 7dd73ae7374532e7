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

impl Limits {
    /// Sets a limit by its configuration name. `value` is already parsed; a negative
    /// `reply_timeout` means "never". Returns false for an unknown name.
    pub fn set(&mut self, name: &str, value: i64) -> bool {
        let v = value.max(0) as u64;
        let slot = match name {
            "max_incoming_bytes" => &mut self.max_incoming_bytes,
            "max_incoming_unix_fds" => &mut self.max_incoming_unix_fds,
            "max_outgoing_bytes" => &mut self.max_outgoing_bytes,
            "max_outgoing_unix_fds" => &mut self.max_outgoing_unix_fds,
            "max_message_size" => &mut self.max_message_size,
            "max_message_unix_fds" => &mut self.max_message_unix_fds,
            "service_start_timeout" => &mut self.service_start_timeout,
            "auth_timeout" => &mut self.auth_timeout,
            "pending_fd_timeout" => &mut self.pending_fd_timeout,
            "reply_timeout" => {
                self.reply_timeout = (value > 0).then_some(v);
                return true;
            }
            "max_completed_connections" => &mut self.max_completed_connections,
            "max_incomplete_connections" => &mut self.max_incomplete_connections,
            "max_connections_per_user" => &mut self.max_connections_per_user,
            "max_pending_service_starts" => &mut self.max_pending_service_starts,
            "max_names_per_connection" => &mut self.max_names_per_connection,
            "max_match_rules_per_connection" => &mut self.max_match_rules_per_connection,
            "max_replies_per_connection" => &mut self.max_replies_per_connection,
            "max_containers" => &mut self.max_containers,
            "max_containers_per_user" => &mut self.max_containers_per_user,
            "max_container_metadata_bytes" => &mut self.max_container_metadata_bytes,
            "max_connections_per_container" => &mut self.max_connections_per_container,
            _ => return false,
        };
        *slot = v;
        true
    }
}
