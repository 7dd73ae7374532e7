//! systemd's readiness protocol (sd_notify): datagrams like `READY=1` to `$NOTIFY_SOCKET`,
//! written here rather than linking libsystemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to report, if systemd asked (taken out of the environment so that started
/// services do not report as busd).
#[derive(Debug, Default)]
pub struct Notifier {
    address: Option<SocketAddr>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = path.as_encoded_bytes();
        let address = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).ok(),
            Some(b'/') => SocketAddr::from_pathname(&path).ok(),
            _ => None,
        };
        Notifier { address }
    }

    /// Sends one state update (e.g. `READY=1`); failures are logged and otherwise ignored,
    /// as with sd_notify.
    pub fn notify(&self, state: &str) {
        let Some(addr) = &self.address else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), addr));
        if let Err(e) = sent {
            tracing::warn!("cannot notify systemd ({state}): {e}");
        }
    }
}
