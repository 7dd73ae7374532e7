//! Who a peer is, from the kernel and the account database: groups (SO_PEERGROUPS, NSS),
//! console presence, command line for log messages. Blocking look-ups happen here, in the
//! shell, once per connection; the bus only sees the results.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

/// dbus-daemon shortens command lines in log messages to this many bytes.
const MAX_LOG_COMMAND_LEN: usize = 50;

/// The peer process's groups (SO_PEERGROUPS) plus its primary group, sorted, without
/// duplicates; like dbus-daemon, only the primary group when the kernel cannot tell.
pub fn peer_groups(fd: BorrowedFd<'_>, primary: u32) -> Vec<u32> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes of gid_t, and the kernel writes at most `len`
        // bytes and reports the size it needs in `len`.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && n > groups.len()
        {
            groups.resize(n, 0);
            continue;
        }
        groups.clear();
        break;
    }
    groups.push(primary);
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// The groups the account database gives a user (for deciding who may connect).
pub fn user_groups(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = CString::new(user.name) else {
        return vec![user.gid.as_raw()];
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|g| g.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()])
}

/// Whether a user is logged in at a local seat: systemd-logind's record when logind runs
/// (its seats directory exists), else pam_console's `/var/run/console/USER`, as
/// dbus-daemon checks.
pub fn at_console(uid: u32) -> bool {
    if let Some(at) = logind_at_console(Path::new("/run/systemd"), uid) {
        return at;
    }
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => Path::new("/var/run/console").join(user.name).exists(),
        _ => false,
    }
}

/// logind's answer under `run` (`/run/systemd`), None when logind does not run: whether
/// the user has a session on a seat that is online, what dbus-daemon asks
/// (`sd_uid_get_seats(uid, 0)`, the user record's `ONLINE_SEATS=`). `SEATS=` also lists the
/// seats of sessions that are closing: a user who logged out at the seat and left a
/// process behind is not at the console.
fn logind_at_console(run: &Path, uid: u32) -> Option<bool> {
    if !run.join("seats").is_dir() {
        return None;
    }
    let Ok(text) = std::fs::read_to_string(run.join("users").join(uid.to_string())) else {
        return Some(false);
    };
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("ONLINE_SEATS="))
            .any(|seats| !seats.trim().is_empty()),
    )
}

/// The command line of a process, arguments separated by spaces, shortened for logs.
pub fn command_for_pid(pid: u32) -> Option<String> {
    use std::io::Read;
    // One read of what the log can show (plus room to cut at a character's boundary):
    // this runs for every connection, and reading the whole file cost a statx and a
    // second read.
    let mut raw = [0u8; 4 * MAX_LOG_COMMAND_LEN];
    let mut file = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
    let n = loop {
        match file.read(&mut raw) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.ok()?,
        }
    };
    let mut text: String = String::from_utf8_lossy(&raw[..n])
        .trim_end_matches('\0')
        .replace('\0', " ");
    if text.len() > MAX_LOG_COMMAND_LEN {
        let mut end = MAX_LOG_COMMAND_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        // Cut between two arguments: no trailing space (dbus-daemon shows none).
        text.truncate(text.trim_end().len());
    }
    Some(crate::logging::escape_for_log(&text))
}

/// The account database (NSS), for resolving names in the configuration.
pub struct NssAccounts;

impl busd_policy::Accounts for NssAccounts {
    fn user_id(&self, name: &str) -> Option<u32> {
        User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_reports_our_own_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let gid = nix::unistd::getegid().as_raw();
        let groups = peer_groups(std::os::fd::AsFd::as_fd(&a), gid);
        assert!(groups.contains(&gid));
        assert!(groups.windows(2).all(|w| w[0] < w[1]));
    }

    /// A user whose only session at the seat is closing (logged out, a process left
    /// behind) is listed in `SEATS=` but not `ONLINE_SEATS=`: not at the console.
    #[test]
    fn at_console_asks_logind_for_online_seats() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(logind_at_console(run.path(), 1000), None, "no logind");
        std::fs::create_dir_all(run.path().join("seats")).unwrap();
        std::fs::create_dir_all(run.path().join("users")).unwrap();
        assert_eq!(
            logind_at_console(run.path(), 1000),
            Some(false),
            "no record"
        );
        let user = |text: &str| std::fs::write(run.path().join("users/1000"), text).unwrap();
        user("NAME=u\nSTATE=closing\nSEATS=seat0\nONLINE_SEATS=\nACTIVE_SEATS=\n");
        assert_eq!(logind_at_console(run.path(), 1000), Some(false));
        user("NAME=u\nSTATE=active\nSEATS=seat0\nONLINE_SEATS=seat0\nACTIVE_SEATS=seat0\n");
        assert_eq!(logind_at_console(run.path(), 1000), Some(true));
    }

    /// A process names itself: nothing it chooses can break the line it is quoted in.
    #[test]
    fn a_command_line_is_quoted_with_its_control_characters_escaped() {
        use std::os::unix::process::CommandExt;
        let name = "evil\nbusd: forged line \"\x1b[31m\u{202e}x\u{2028}\u{200b}\\";
        let mut child = std::process::Command::new("sleep")
            .arg0(name)
            .arg("5")
            .spawn()
            .unwrap();
        let mut seen = None;
        // (Until the child has exec'd: before, its command line is the test's.)
        for _ in 0..500 {
            seen = command_for_pid(child.id());
            if seen.as_deref().is_some_and(|c| c.starts_with("evil")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        let seen = seen.unwrap();
        assert_eq!(
            seen,
            "evil\\x0abusd: forged line \\\"\\x1b[31m\\u{202e}x\\u{2028}\\u{200b}\\\\ 5"
        );
        assert!(!seen.chars().any(|c| c.is_control()));
        assert_eq!(
            crate::logging::escape_for_log("/usr/bin/gnome-shell --x"),
            "/usr/bin/gnome-shell --x"
        );
    }

    #[test]
    fn our_command_line_is_readable_and_short() {
        let c = command_for_pid(std::process::id()).unwrap();
        assert!(!c.is_empty() && c.len() <= MAX_LOG_COMMAND_LEN);
    }
}
