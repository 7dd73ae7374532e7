//! The keyring `DBUS_COOKIE_SHA1` authenticates with (specification, "DBUS_COOKIE_SHA1"),
//! kept as libdbus and GDBus keep it, so that their clients and busd agree: the file
//! `~/.dbus-keyrings/org_freedesktop_general` of the bus's own user, one cookie per line
//! (`<id> <creation time> <secret in hex>`), in a directory only that user may enter.
//!
//! A cookie is used for five minutes after it was made and kept two more (clients may
//! still answer with it); a new one is made, under the lock file `<keyring>.lock`, when
//! none is recent enough. The file is replaced whole (written beside it, then renamed).

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use busd_wire::sasl::Cookies;

/// The keyring context every D-Bus implementation uses for bus authentication.
pub const CONTEXT: &str = "org_freedesktop_general";
/// A cookie is handed out for this long after it was made...
const USE_FOR: u64 = 5 * 60;
/// ...and kept this long (clients that fetched it may still answer with it).
const KEEP_FOR: u64 = USE_FOR + 2 * 60;
/// Cookies dated further in the future than this are dropped (a clock that jumped).
const MAX_TIME_TRAVEL: u64 = 5 * 60;
/// At most this many cookies in the file (the oldest go first).
const MAX_COOKIES: usize = 256;
/// Bytes of secret per cookie.
const COOKIE_BYTES: usize = 24;
/// The largest keyring file read (libdbus's bound too).
const MAX_KEYRING_BYTES: u64 = 1 << 20;
/// A lock file older than this many tries (250 ms each) is taken as left behind by a
/// process that died holding it, and removed (what libdbus does).
const LOCK_TRIES: u32 = 32;
const LOCK_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    pub id: u32,
    pub created: u64,
    pub secret: String,
}

/// The cookies of a keyring file's text still valid at `now` (seconds since the epoch):
/// lines that do not parse, expired cookies and cookies from the future are left out.
pub fn parse(text: &str, now: u64) -> Vec<Cookie> {
    let mut out: Vec<Cookie> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(id), Some(created), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(id), Ok(created)) = (id.parse::<u32>(), created.parse::<u64>()) else {
            continue;
        };
        let hex = !secret.is_empty()
            && secret.len() % 2 == 0
            && secret.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex
            || created.saturating_add(KEEP_FOR) < now
            || created > now.saturating_add(MAX_TIME_TRAVEL)
            || out.iter().any(|c| c.id == id)
        {
            continue;
        }
        out.push(Cookie {
            id,
            created,
            secret: secret.to_ascii_lowercase(),
        });
    }
    out
}

/// The newest cookie still handed out at `now`.
pub fn recent(cookies: &[Cookie], now: u64) -> Option<&Cookie> {
    cookies
        .iter()
        .filter(|c| c.created.saturating_add(USE_FOR) >= now)
        .max_by_key(|c| c.created)
}

/// The file's text for these cookies.
pub fn render(cookies: &[Cookie]) -> String {
    cookies
        .iter()
        .map(|c| format!("{} {} {}\n", c.id, c.created, c.secret))
        .collect()
}

/// `n` bytes from the kernel's random source. An error (a sandbox that forbids getrandom)
/// only withdraws this mechanism: a client's way to authenticate must never end the bus.
fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: getrandom writes at most `n - filled` bytes into the rest of `buf`.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r > 0 {
            filled += r as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(format!("getrandom failed: {}", io::Error::last_os_error()));
        }
    }
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The keyring of the user the bus runs as.
#[derive(Debug, Clone)]
pub struct Keyring {
    uid: u32,
    /// The user's name, which a client may send instead of its uid.
    name: Option<String>,
    /// `<home>/.dbus-keyrings`, or None when the user has no home directory.
    dir: Option<PathBuf>,
}

impl Keyring {
    /// The keyring of the bus's own user, in its home directory as libdbus finds it:
    /// `$HOME` when the process runs as itself (real and effective uid the same), else the
    /// user database's (GDBus follows `$HOME` too). Looked up once per process: the user
    /// database may be a network service, and connections must not wait for it.
    pub fn of_this_user() -> Keyring {
        static THIS: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
        THIS.get_or_init(|| {
            let uid = nix::unistd::geteuid();
            let user = nix::unistd::User::from_uid(uid).ok().flatten();
            let env_home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty() && nix::unistd::getuid() == uid)
                .map(PathBuf::from);
            Keyring {
                uid: uid.as_raw(),
                name: user.as_ref().map(|u| u.name.clone()),
                dir: env_home
                    .or(user.map(|u| u.dir))
                    .map(|home| home.join(".dbus-keyrings")),
            }
        })
        .clone()
    }

    /// A keyring in `dir`, for tests.
    #[cfg(test)]
    fn at(dir: PathBuf) -> Keyring {
        Keyring {
            uid: nix::unistd::geteuid().as_raw(),
            name: None,
            dir: Some(dir),
        }
    }

    /// The keyring directory, made if missing; refused unless it is this user's and
    /// closed to everyone else (the cookies are the user's password for the bus).
    fn directory(&self) -> Result<&Path, String> {
        let dir = self
            .dir
            .as_deref()
            .ok_or("the user has no home directory")?;
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(format!("cannot create {}: {e}", dir.display()));
            }
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !meta.is_dir() || meta.uid() != self.uid || meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{} must be a directory of uid {} that nobody else may enter",
                dir.display(),
                self.uid
            ));
        }
        Ok(dir)
    }

    fn read(path: &Path, now: u64) -> Result<Vec<Cookie>, String> {
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        // At most 256 cookies of a line each: a keyring larger than libdbus's bound (1 MiB)
        // is not one.
        let mut text = String::new();
        file.take(MAX_KEYRING_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_KEYRING_BYTES {
            return Err(format!(
                "{}: larger than {MAX_KEYRING_BYTES} bytes",
                path.display()
            ));
        }
        Ok(parse(&text, now))
    }

    /// Takes the keyring's lock file (waiting for another holder, and removing a lock
    /// that outlived every wait).
    fn lock(path: &Path) -> Result<LockFile, String> {
        let lock = path.with_extension("lock");
        for attempt in 0..=LOCK_TRIES {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lock)
            {
                Ok(_) => return Ok(LockFile(lock)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if attempt + 1 == LOCK_TRIES {
                        let _ = std::fs::remove_file(&lock);
                    } else {
                        std::thread::sleep(LOCK_WAIT);
                    }
                }
                Err(e) => return Err(format!("{}: {e}", lock.display())),
            }
        }
        Err(format!("{} stays locked", path.display()))
    }

    /// The cookie to challenge with at `now`, made and stored if none is recent.
    fn current(&mut self, now: u64) -> Result<Cookie, String> {
        let path = self.directory()?.join(CONTEXT);
        if let Some(c) = recent(&Self::read(&path, now)?, now) {
            return Ok(c.clone());
        }
        let _lock = Self::lock(&path)?;
        // (Read again: another process may have added one meanwhile.)
        let mut cookies = Self::read(&path, now)?;
        if let Some(c) = recent(&cookies, now) {
            return Ok(c.clone());
        }
        let id = loop {
            let b = random_bytes(4)?;
            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
            if id != 0 && cookies.iter().all(|c| c.id != id) {
                break id;
            }
        };
        let cookie = Cookie {
            id,
            created: now,
            secret: hex(&random_bytes(COOKIE_BYTES)?),
        };
        cookies.push(cookie.clone());
        if cookies.len() > MAX_COOKIES {
            cookies.sort_by_key(|c| c.created);
            cookies.drain(..cookies.len() - MAX_COOKIES);
        }
        let tmp = path.with_extension(format!("{}.tmp", hex(&random_bytes(4)?)));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(render(&cookies).as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        Ok(cookie)
    }
}

/// The keyring's lock file, removed when dropped.
struct LockFile(PathBuf);

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Cookies for Keyring {
    fn own_user(&self, user: &str) -> Option<u32> {
        let ours = user.parse::<u32>().ok() == Some(self.uid)
            || (!user.is_empty() && self.name.as_deref() == Some(user));
        ours.then_some(self.uid)
    }

    fn cookie(&mut self) -> Result<(String, u32, String), String> {
        let c = self.current(now()).inspect_err(|e| {
            tracing::warn!("DBUS_COOKIE_SHA1 cannot be offered: {e}");
        })?;
        Ok((CONTEXT.to_string(), c.id, c.secret))
    }

    fn challenge(&mut self) -> Result<String, String> {
        Ok(hex(&random_bytes(16)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_time_at_the_end_of_time_is_only_a_cookie_from_the_future() {
        assert_eq!(parse(&format!("1 {} 00ff\n", u64::MAX), 1_000), []);
    }

    #[test]
    fn cookies_expire_and_bad_lines_are_skipped() {
        let now = 1_000_000;
        let text = format!(
            "1 {fresh} c0ffee\n2 {old} abcd\n3 {future} abcd\nnot a line\n4 {fresh} xyz\n5 {aging} 00ff\n1 {fresh} dup0\n",
            fresh = now - 10,
            old = now - KEEP_FOR - 1,
            future = now + MAX_TIME_TRAVEL + 1,
            aging = now - USE_FOR - 30,
        );
        let cookies = parse(&text, now);
        assert_eq!(
            cookies.iter().map(|c| c.id).collect::<Vec<_>>(),
            [1, 5],
            "{cookies:?}"
        );
        // The aging one is kept for answers, not handed out.
        assert_eq!(recent(&cookies, now).map(|c| c.id), Some(1));
        assert_eq!(recent(&cookies[1..], now), None);
        assert_eq!(parse(&render(&cookies), now), cookies);
    }

    #[test]
    fn a_cookie_is_made_once_and_reused_while_recent() {
        let home = tempfile::tempdir().unwrap();
        let mut k = Keyring::at(home.path().join(".dbus-keyrings"));
        let now = 2_000_000;
        let first = k.current(now).unwrap();
        assert_eq!(first.secret.len(), 2 * COOKIE_BYTES);
        assert_eq!(k.current(now + 60).unwrap(), first);
        let second = k.current(now + USE_FOR + 1).unwrap();
        assert_ne!(second.id, first.id);
        let text =
            std::fs::read_to_string(home.path().join(".dbus-keyrings").join(CONTEXT)).unwrap();
        assert_eq!(parse(&text, now + USE_FOR + 1), [first, second]);
        let dir = std::fs::metadata(home.path().join(".dbus-keyrings")).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o700);
        assert!(!home
            .path()
            .join(".dbus-keyrings")
            .join(format!("{CONTEXT}.lock"))
            .exists());
    }

    /// A keyring file larger than any real one (libdbus stops at 1 MiB too) is refused
    /// rather than read whole by the bus's only thread.
    #[test]
    fn a_keyring_larger_than_a_mebibyte_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let mut k = Keyring::at(home.path().join(".dbus-keyrings"));
        let now = 2_000_000;
        k.current(now).unwrap();
        let file = home.path().join(".dbus-keyrings").join(CONTEXT);
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&"#".repeat(MAX_KEYRING_BYTES as usize));
        std::fs::write(&file, text).unwrap();
        let err = k.current(now + USE_FOR + 1).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn a_keyring_directory_others_may_enter_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".dbus-keyrings");
        std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut k = Keyring::at(dir.clone());
        let err = k.current(3_000_000).unwrap_err();
        assert!(err.contains("nobody else may enter"), "{err}");
        assert!(!dir.join(CONTEXT).exists());
    }

    #[test]
    fn only_the_buss_own_user_is_recognised() {
        let k = Keyring {
            uid: 1000,
            name: Some("alice".into()),
            dir: None,
        };
        assert_eq!(k.own_user("1000"), Some(1000));
        assert_eq!(k.own_user("alice"), Some(1000));
        assert_eq!(k.own_user("0"), None);
        assert_eq!(k.own_user("bob"), None);
        assert_eq!(k.own_user(""), None);
    }
}
