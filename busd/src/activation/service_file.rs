//! `.service` files: the desktop-entry syntax dbus-daemon reads (bus/desktop-file.c), and
//! the `[D-BUS Service]` keys it uses. Written by hand to accept exactly what dbus-daemon
//! accepts: `[Section]` headers, `Key=Value` (spaces around `=`), `Key[locale]=` ignored,
//! `#` comments, the escapes `\s \n \t \r \\` in values.

use crate::bus::activation::ServiceEntry;

/// dbus-daemon refuses larger files.
const MAX_SIZE: usize = 128 * 1024;

/// A service file's bytes: a regular file (a FIFO would block the bus, a device could be
/// endless), read up to one byte past the largest the parser takes, which then refuses it.
pub fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = Vec::new();
    file.take(MAX_SIZE as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}
const SECTION: &str = "D-BUS Service";

/// One parsed file: sections in order, each with its keys in order.
#[derive(Debug, Default)]
struct DesktopFile {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl DesktopFile {
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        let (_, lines) = self.sections.iter().find(|(s, _)| s == section)?;
        lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn unescape(value: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\0' {
            return Err("Text to be unescaped contains embedded nul");
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => return Err("Text to be unescaped ended in \\"),
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(_) => return Err("Text to be unescaped contains invalid escape sequence"),
        }
    }
    Ok(out)
}

fn parse(text: &str) -> Result<DesktopFile, String> {
    let mut file = DesktopFile::default();
    let err = |line: usize, section: Option<&str>, msg: &str| match section {
        Some(s) => format!(
            "Error in section {} at line {line}: {msg}",
            crate::logging::escape_for_log(s)
        ),
        None => format!("Error at line {line}: {msg}"),
    };
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let current = file.sections.last().map(|(s, _)| s.as_str());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']').filter(|n| !n.is_empty()) else {
                return Err(err(n, current, "Invalid syntax for section header"));
            };
            if name
                .bytes()
                .any(|c| c <= 0x1f || c >= 0x7f || c == b'[' || c == b']')
            {
                return Err(err(n, current, "Invalid characters in section name"));
            }
            file.sections.push((name.to_string(), Vec::new()));
            continue;
        }
        let key_len = line
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        if key_len == 0 {
            return Err(err(n, current, "Empty key name"));
        }
        let (key, rest) = line.split_at(key_len);
        if rest.starts_with('[') {
            // A localised key: dbus-daemon ignores locales.
            continue;
        }
        let rest = rest.trim_start_matches(' ');
        let Some(value) = rest.strip_prefix('=') else {
            return Err(err(
                n,
                current,
                if rest.is_empty() {
                    "No '=' in key/value pair"
                } else {
                    "Invalid characters in key name"
                },
            ));
        };
        let value = unescape(value.trim_start_matches(' ')).map_err(|m| err(n, current, m))?;
        let Some((_, lines)) = file.sections.last_mut() else {
            return Err("invalid service file: key=value before [Section]".into());
        };
        lines.push((key.to_string(), value));
    }
    Ok(file)
}

/// Reads one `.service` file's entry. `file_name` is its name in its directory; `strict`
/// directories (the transient one) require it to be `<Name>.service`.
pub fn parse_service(text: &[u8], file_name: &str, strict: bool) -> Result<ServiceEntry, String> {
    if text.len() > MAX_SIZE {
        return Err(format!(
            "Desktop file size ({} bytes) is too large",
            text.len()
        ));
    }
    let text = std::str::from_utf8(text).map_err(|_| "invalid UTF-8".to_string())?;
    let file = parse(text)?;
    let key = |k: &str| file.get(SECTION, k).map(str::to_string);
    let missing = |k: &str| format!("No \"{k}\" key in .service file\n");
    let name = key("Name").ok_or_else(|| missing("Name"))?;
    let exec = key("Exec").ok_or_else(|| missing("Exec"))?;
    if !busd_wire::names::is_valid_bus_name(&name) || busd_wire::names::is_unique_name(&name) {
        // (The file's text, unescaped: it may hold a newline, and this goes to the log.)
        return Err(format!(
            "\"{}\" is not a valid well-known bus name",
            crate::logging::escape_for_log(&name)
        ));
    }
    let expected = format!("{name}.service");
    if strict && file_name != expected {
        return Err(format!(
            "Service file \"{}\" should have been named \"{}\": not loading it",
            crate::logging::escape_for_log(file_name),
            crate::logging::escape_for_log(&expected)
        ));
    }
    Ok(ServiceEntry {
        name,
        exec,
        user: key("User"),
        systemd_service: key("SystemdService"),
        assumed_apparmor_label: key("AssumedAppArmorLabel"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO among the service files would block the bus at a scan, and a device could be
    /// endless: only regular files are read, and no more than the parser takes.
    #[test]
    fn only_regular_files_are_read_and_only_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("a.service");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read(&fifo).unwrap_err(), "not a regular file");
        assert_eq!(
            read(std::path::Path::new("/dev/zero")).unwrap_err(),
            "not a regular file"
        );
        let big = dir.path().join("b.service");
        std::fs::write(&big, vec![b'#'; 4 * MAX_SIZE]).unwrap();
        assert_eq!(read(&big).unwrap().len(), MAX_SIZE + 1);
    }

    #[test]
    fn reads_the_keys_dbus_daemon_uses() {
        let text = b"# a comment\n[D-BUS Service]\nName = org.example.Foo\nExec=/usr/bin/foo --x\\sy\nName[fr]=ignored\nUser=nobody\nSystemdService=foo.service\n\n[Other]\nName=org.example.Bar\n";
        let e = parse_service(text, "whatever.service", false).unwrap();
        assert_eq!(e.name, "org.example.Foo");
        assert_eq!(e.exec, "/usr/bin/foo --x y");
        assert_eq!(e.user.as_deref(), Some("nobody"));
        assert_eq!(e.systemd_service.as_deref(), Some("foo.service"));
        assert_eq!(e.assumed_apparmor_label, None);
    }

    #[test]
    fn refuses_what_dbus_daemon_refuses() {
        let cases: &[(&[u8], &str)] = &[
            (b"Name=x\n", "key=value before [Section]"),
            (b"[D-BUS Service]\nExec=/bin/true\n", "No \"Name\" key"),
            (b"[D-BUS Service]\nName=org.x.Y\n", "No \"Exec\" key"),
            (b"[D-BUS Service\n", "Invalid syntax for section header"),
            (b"[D-BUS Service]\n=x\n", "Empty key name"),
            (
                b"[D-BUS Service]\nName x\n",
                "Invalid characters in key name",
            ),
            (b"[D-BUS Service]\nName\n", "No '=' in key/value pair"),
            (b"[D-BUS Service]\nName=a\\q\n", "invalid escape"),
            (
                b"[D-BUS Service]\nName=:1.5\nExec=/bin/true\n",
                "not a valid well-known bus name",
            ),
            (
                b"[D-BUS Service]\nName=org.x.Y\nExec=/bin/true\n\xff",
                "invalid UTF-8",
            ),
        ];
        for (text, want) in cases {
            let e = parse_service(text, "f.service", false).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(text));
        }
        let big = vec![b'#'; MAX_SIZE + 1];
        assert!(parse_service(&big, "f.service", false).is_err());
    }

    #[test]
    fn strict_directories_need_the_canonical_file_name() {
        let text = b"[D-BUS Service]\nName=org.example.Foo\nExec=/bin/true\n";
        assert!(parse_service(text, "org.example.Foo.service", true).is_ok());
        let e = parse_service(text, "foo.service", true).unwrap_err();
        assert!(
            e.contains("should have been named \"org.example.Foo.service\""),
            "{e}"
        );
        assert!(parse_service(text, "foo.service", false).is_ok());
    }

    /// What the file says goes into a warning quoted: a name unescaped to hold a newline,
    /// or a file name with one, does not make a log line of its own.
    #[test]
    fn a_refusal_quotes_the_files_text_on_one_line() {
        let text = b"[D-BUS Service]\nName=org.example\\nbusd: forged\nExec=/bin/true\n";
        let e = parse_service(text, "x.service", false).unwrap_err();
        assert_eq!(
            e,
            "\"org.example\\x0abusd: forged\" is not a valid well-known bus name"
        );
        let text = b"[D-BUS Service]\nName=org.example.Foo\nExec=/bin/true\n";
        let e = parse_service(text, "a\nb.service", true).unwrap_err();
        assert!(
            !e.contains('\n') && e.contains("\"a\\x0ab.service\""),
            "{e}"
        );
    }
}
