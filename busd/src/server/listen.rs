//! Listening sockets for the configured addresses.

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener as StdListener};
use std::path::{Path, PathBuf};

use busd_wire::address::{BoundAddress, ListenAddress};

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

/// dbus-daemon's words for a socket that cannot be bound (the kind kept, for retries).
fn bind_error(socket: &str, e: io::Error) -> io::Error {
    let reason = busd_policy::config::os_reason(&e);
    io::Error::new(
        e.kind(),
        format!("Failed to bind socket \"{socket}\": {reason}"),
    )
}

fn listen_path(path: &Path) -> io::Result<Listener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // Like dbus-daemon: a socket left behind by a crashed bus is replaced (anything else at
    // that path is an error from bind), and the socket is open to every user, the policy
    // deciding who may connect.
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    let std = StdListener::bind(path).map_err(|e| bind_error(&path.display().to_string(), e))?;
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

/// The listening sockets systemd passed (socket activation): fds 3.. per `LISTEN_FDS`,
/// for this process per `LISTEN_PID`. The variables are removed so that started services do
/// not take the sockets for theirs (sd_listen_fds with unset_environment).
fn systemd_listeners() -> io::Result<Vec<Listener>> {
    use std::os::fd::FromRawFd;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if !pid_ok || count <= 0 {
        return Err(io::Error::other(
            "systemd: address given, but no sockets were passed by systemd (LISTEN_FDS)",
        ));
    }
    let mut out = Vec::new();
    for fd in 3..3 + count {
        // SAFETY: systemd passed these descriptors to us, open, for us to own (LISTEN_FDS
        // counts them from 3); nothing else in busd has taken them.
        let std = unsafe { StdListener::from_raw_fd(fd) };
        let accepting = nix::sys::socket::getsockopt(&std, nix::sys::socket::sockopt::AcceptConn)
            .map_err(io::Error::from)?;
        if !accepting {
            return Err(io::Error::other(format!(
                "systemd passed fd {fd}, which is not a listening unix stream socket"
            )));
        }
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(io::Error::from)?;
        std.set_nonblocking(true)?;
        // A socket unit's PassCredentials=yes (or PassPidFD) is inherited by every accepted
        // connection, and with it the kernel ends a read at each change of writer: busd
        // reads a connection only up to a short read (server::Until), which then would
        // not mean the queue is empty. busd never reads credentials from messages.
        nix::sys::socket::setsockopt(&std, nix::sys::socket::sockopt::PassCred, &false)
            .map_err(io::Error::from)?;
        let off: libc::c_int = 0;
        // SAFETY: setsockopt reads an int from a local; a kernel without SO_PASSPIDFD
        // refuses it (ENOPROTOOPT), and then nothing sets it either.
        unsafe {
            libc::setsockopt(
                std.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSPIDFD,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let local = std.local_addr()?;
        let address = match (local.as_pathname(), local.as_abstract_name()) {
            (Some(p), _) => BoundAddress::Path(p.to_string_lossy().into_owned()),
            (None, Some(name)) => {
                BoundAddress::Abstract(String::from_utf8_lossy(name).into_owned())
            }
            _ => {
                return Err(io::Error::other(format!(
                    "systemd passed fd {fd}, an unnamed socket"
                )))
            }
        };
        out.push(Listener {
            socket: mio::net::UnixListener::from_std(std),
            address,
            // systemd owns the socket file.
            path: None,
        });
    }
    Ok(out)
}

/// Binds one configured address (`systemd:` may give several sockets).
pub fn bind(addr: &ListenAddress) -> io::Result<Vec<Listener>> {
    if *addr == ListenAddress::Systemd {
        return systemd_listeners();
    }
    bind_one(addr).map(|l| vec![l])
}

fn bind_one(addr: &ListenAddress) -> io::Result<Listener> {
    match addr {
        ListenAddress::Systemd => Err(io::Error::other("systemd: is bound by bind()")),
        ListenAddress::Path(p) => listen_path(Path::new(p)),
        ListenAddress::Abstract(name) => {
            let sa = SocketAddr::from_abstract_name(name.as_bytes())?;
            let std =
                StdListener::bind_addr(&sa).map_err(|e| bind_error(&format!("@{name}"), e))?;
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
