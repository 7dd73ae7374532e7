//! Listening sockets for the configured addresses.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener as StdListener};
use std::path::{Path, PathBuf};

use crate::wire::address::{BoundAddress, ListenAddress};

pub struct Listener {
    pub socket: mio::net::UnixListener,
    pub address: BoundAddress,
    /// A socket file busd created and removes on exit.
    pub path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 10];
    crate::cli::random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

fn listen_path(path: &Path) -> io::Result<Listener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // Like dbus-daemon: a socket left behind by a crashed bus is replaced (anything else at
    // that path is an error from bind), and the socket is open to every user, the policy
    // deciding who may connect.
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    let std = StdListener::bind(path)?;
    std.set_nonblocking(true)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)) {
        tracing::warn!("Could not set mode 0777 on socket {}: {e}", path.display());
    }
    Ok(Listener {
        socket: mio::net::UnixListener::from_std(std),
        address: BoundAddress::Path(path.to_string_lossy().into_owned()),
        path: Some(path.to_path_buf()),
    })
}

/// Binds one configured address.
pub fn bind(addr: &ListenAddress) -> io::Result<Listener> {
    match addr {
        ListenAddress::Path(p) => listen_path(Path::new(p)),
        ListenAddress::Abstract(name) => {
            let sa = SocketAddr::from_abstract_name(name.as_bytes())?;
            let std = StdListener::bind_addr(&sa)?;
            std.set_nonblocking(true)?;
            Ok(Listener {
                socket: mio::net::UnixListener::from_std(std),
                address: BoundAddress::Abstract(name.clone()),
                path: None,
            })
        }
        ListenAddress::Dir(dir) => {
            // A fresh name, as dbus-daemon does for tmpdir= and dir=; retry on collision.
            let mut last = None;
            for _ in 0..16 {
                let p = Path::new(dir).join(format!("dbus-{}", random_suffix()));
                match listen_path(&p) {
                    Ok(l) => return Ok(l),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no free socket name")))
        }
        ListenAddress::Runtime => {
            let dir = std::env::var_os("XDG_RUNTIME_DIR")
                .ok_or_else(|| io::Error::other("unix:runtime=yes needs XDG_RUNTIME_DIR"))?;
            listen_path(&Path::new(&dir).join("bus"))
        }
    }
}
