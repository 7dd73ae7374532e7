//! dbus-daemon's command line, parsed by hand to accept exactly its forms
//! (`--print-address`, `--print-address=4`, `--print-address 4`).

use std::path::PathBuf;

pub const USAGE: &str = "busd [--version] [--session] [--system] [--config-file=FILE] \
[--print-address[=DESCRIPTOR]] [--print-pid[=DESCRIPTOR]] [--introspect] [--address=ADDRESS] \
[--nopidfile] [--nosyslog] [--syslog] [--syslog-only] [--nofork] [--fork] [--systemd-activation] \
[--check-config] [--fastpath=on|off]";

pub const SESSION_CONFIG: &str = "/usr/share/dbus-1/session.conf";
pub const SYSTEM_CONFIG: &str = "/usr/share/dbus-1/system.conf";

/// Where to print: a file descriptor (stdout by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrintTo(pub i32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syslog {
    Default,
    On,
    Off,
    Only,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config_file: Option<PathBuf>,
    /// Set by --session/--system (their config file is implied).
    pub bus_type: Option<&'static str>,
    pub address: Option<String>,
    pub print_address: Option<PrintTo>,
    pub print_pid: Option<PrintTo>,
    /// Some(true) --fork, Some(false) --nofork, None: as the configuration says.
    pub fork: Option<bool>,
    pub nopidfile: bool,
    pub introspect: bool,
    /// busd's own: load and check the configuration, print what it means, exit.
    pub check_config: bool,
    pub version: bool,
    pub syslog: Syslog,
    pub systemd_activation: bool,
    /// Offer the fast path (busd's own; on unless --fastpath=off).
    pub fastpath: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn fd_value(v: &str, flag: &str) -> Result<PrintTo, UsageError> {
    v.parse::<i32>()
        .ok()
        .filter(|fd| *fd >= 0)
        .map(PrintTo)
        .ok_or_else(|| UsageError(format!("Invalid file descriptor \"{v}\" for {flag}")))
}

impl Options {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, UsageError> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = Options {
            config_file: None,
            bus_type: None,
            address: None,
            print_address: None,
            print_pid: None,
            fork: None,
            nopidfile: false,
            introspect: false,
            check_config: false,
            version: false,
            syslog: Syslog::Default,
            systemd_activation: false,
            fastpath: true,
        };
        let mut i = 0;
        let mut config_sources = 0;
        while i < args.len() {
            let arg = args[i].as_str();
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (arg, None),
            };
            // A following argument that is not an option (for --print-address 4).
            let next_value = args.get(i + 1).filter(|n| !n.starts_with("--")).cloned();
            let mut take_next = || {
                i += 1;
                args.get(i).cloned()
            };
            match flag {
                "--version" => o.version = true,
                "--introspect" => o.introspect = true,
                "--check-config" => o.check_config = true,
                "--session" | "--system" => {
                    config_sources += 1;
                    o.bus_type = Some(if flag == "--session" {
                        "session"
                    } else {
                        "system"
                    });
                }
                "--config-file" => {
                    config_sources += 1;
                    let v = match inline {
                        Some(v) => v.to_string(),
                        None => take_next()
                            .ok_or_else(|| UsageError("--config-file needs a file name".into()))?,
                    };
                    o.config_file = Some(PathBuf::from(v));
                }
                "--address" => {
                    let v = match inline {
                        Some(v) => v.to_string(),
                        None => take_next()
                            .ok_or_else(|| UsageError("--address needs an address".into()))?,
                    };
                    o.address = Some(v);
                }
                "--print-address" | "--print-pid" => {
                    let to = match inline {
                        Some(v) => fd_value(v, flag)?,
                        None => match next_value.as_deref().map(|v| fd_value(v, flag)) {
                            Some(Ok(fd)) => {
                                i += 1;
                                fd
                            }
                            _ => PrintTo(1),
                        },
                    };
                    if flag == "--print-address" {
                        o.print_address = Some(to);
                    } else {
                        o.print_pid = Some(to);
                    }
                }
                "--fork" => o.fork = Some(true),
                "--nofork" => o.fork = Some(false),
                "--nopidfile" => o.nopidfile = true,
                "--syslog" => o.syslog = Syslog::On,
                "--nosyslog" => o.syslog = Syslog::Off,
                "--syslog-only" => o.syslog = Syslog::Only,
                "--systemd-activation" => o.systemd_activation = true,
                "--fastpath" => {
                    o.fastpath = match inline {
                        Some("on") => true,
                        Some("off") => false,
                        _ => return Err(UsageError("--fastpath takes =on or =off".into())),
                    }
                }
                _ => return Err(UsageError(format!("Unknown option \"{arg}\""))),
            }
            i += 1;
        }
        if config_sources > 1 {
            return Err(UsageError(
                "Only one of --system, --session and --config-file may be given".into(),
            ));
        }
        Ok(o)
    }

    /// The configuration file to load, if the options name one.
    pub fn config_path(&self) -> Option<PathBuf> {
        match (&self.config_file, self.bus_type) {
            (Some(p), _) => Some(p.clone()),
            (None, Some("session")) => Some(PathBuf::from(SESSION_CONFIG)),
            (None, Some(_)) => Some(PathBuf::from(SYSTEM_CONFIG)),
            (None, None) => None,
        }
    }
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`, which stays
        // borrowed mutably for the call.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
}

/// A new GUID: 32 lowercase hex digits.
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, UsageError> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn fastpath_switch() {
        assert!(parse(&["--session"]).unwrap().fastpath);
        assert!(!parse(&["--fastpath=off"]).unwrap().fastpath);
        assert!(parse(&["--fastpath=on"]).unwrap().fastpath);
        assert!(parse(&["--fastpath"]).is_err());
        assert!(parse(&["--fastpath=maybe"]).is_err());
    }

    #[test]
    fn dbus_run_session_style_arguments() {
        let o = parse(&["--nofork", "--print-address", "4", "--session"]).unwrap();
        assert_eq!(o.print_address, Some(PrintTo(4)));
        assert_eq!(o.fork, Some(false));
        assert_eq!(o.config_path(), Some(PathBuf::from(SESSION_CONFIG)));
    }

    #[test]
    fn print_flags_default_to_stdout_and_accept_equals() {
        let o = parse(&[
            "--print-address",
            "--print-pid=9",
            "--config-file",
            "/x.conf",
        ])
        .unwrap();
        assert_eq!(o.print_address, Some(PrintTo(1)));
        assert_eq!(o.print_pid, Some(PrintTo(9)));
        assert_eq!(o.config_path(), Some(PathBuf::from("/x.conf")));
        let o = parse(&[
            "--fork",
            "--print-address=8",
            "--print-pid=8",
            "--config-file=/y.conf",
        ])
        .unwrap();
        assert_eq!(o.print_address, Some(PrintTo(8)));
        assert_eq!(o.fork, Some(true));
    }

    #[test]
    fn bad_options_are_usage_errors() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--print-address=x"]).is_err());
        assert!(parse(&["--session", "--system"]).is_err());
        assert!(parse(&["--config-file"]).is_err());
    }

    #[test]
    fn guids_are_32_hex_digits() {
        let g = new_guid();
        assert_eq!(g.len(), 32);
        assert!(g.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(g, new_guid());
    }
}

#[cfg(test)]
mod man_page {
    /// The manual page documents every option the command line takes.
    #[test]
    fn documents_every_option() {
        let man = include_str!("../../docs/busd.1").replace("\\-", "-");
        for option in super::USAGE
            .split(['[', ']', ' ', '='])
            .filter(|w| w.starts_with("--"))
        {
            assert!(
                man.contains(option),
                "docs/busd.1 does not mention {option}"
            );
        }
    }
}
