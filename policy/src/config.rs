//! The `<busconfig>` document: loading, includes, and the typed result.
//!
//! Follows dbus-daemon's rules: relative paths resolve against the including file's
//! directory; `<includedir>` reads every `*.conf` in name order and ignores a missing
//! directory; `<include ignore_missing="yes">` skips a missing file; included files merge into
//! the including one at the point of inclusion (lists append, single values are overridden).

use std::fs;
use std::path::{Path, PathBuf};

use quick_xml::events::{BytesStart, Event};

use crate::limits::Limits;
use crate::rule::Rule;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A problem in a file, with its location.
    #[error("{file}:{line}: {reason}")]
    Parse {
        file: PathBuf,
        line: u32,
        reason: String,
    },
    /// A file that could not be read, with the system's reason (dbus-daemon's wording).
    #[error("Failed to open \"{}\": {reason}", file.display())]
    Io { file: PathBuf, reason: String },
}

/// The system's words for an I/O error, without Rust's " (os error N)".
pub fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(i)) => text[..i].to_string(),
        _ => text,
    }
}

/// A `<servicedir>` or one of the standard sets, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceDir {
    Path(PathBuf),
    StandardSession,
    StandardSystem,
}

/// Which connections a `<policy>` element applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKind {
    Default,
    Mandatory,
    User(String),
    Group(String),
    AtConsole(bool),
}

/// One `<allow>` or `<deny>`, typed, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub rule: Rule,
    pub file: PathBuf,
    pub line: u32,
}

/// One `<policy>` element and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyContext {
    pub kind: PolicyKind,
    pub rules: Vec<PolicyRule>,
    pub file: PathBuf,
    pub line: u32,
}

/// The whole configuration, merged over includes.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub bus_type: Option<String>,
    pub user: Option<String>,
    pub fork: bool,
    pub keep_umask: bool,
    pub syslog: bool,
    pub allow_anonymous: bool,
    pub listen: Vec<String>,
    pub pidfile: Option<PathBuf>,
    pub servicehelper: Option<PathBuf>,
    /// `<auth>` mechanisms; empty means every mechanism the bus implements.
    pub auth: Vec<String>,
    pub servicedirs: Vec<ServiceDir>,
    pub limits: Limits,
    pub policies: Vec<PolicyContext>,
    pub apparmor_mode: Option<String>,
    /// `<selinux><associate own= context=/></selinux>` pairs.
    pub selinux_associations: Vec<(String, String)>,
    /// Every file read, in order.
    pub files: Vec<PathBuf>,
    /// Every `<includedir>` (existing or not), in order.
    pub include_dirs: Vec<PathBuf>,
    /// Files of an `<includedir>` that could not be used: dbus-daemon reports and skips them.
    pub warnings: Vec<String>,
}

const NEEDS_CONTENT: &[&str] = &[
    "type",
    "user",
    "listen",
    "pidfile",
    "servicehelper",
    "auth",
    "servicedir",
    "include",
    "includedir",
    "limit",
];

fn line_of(text: &str, pos: usize) -> u32 {
    1 + text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u32
}

/// An element being read: its name, attributes and where it starts.
type OpenElement = (String, Vec<(String, String)>, usize);

struct Loader<'c> {
    config: &'c mut Config,
    file: PathBuf,
    dir: PathBuf,
    text: String,
    /// The files being included, outermost first (to detect circular inclusion).
    stack: Vec<PathBuf>,
}

impl Config {
    /// Loads a configuration file and everything it includes.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let mut config = Config::default();
        config.load_file(path, &[])?;
        Ok(config)
    }

    /// Parses a configuration from a string, as if read from `path` (for tests and tools).
    pub fn from_str_at(text: &str, path: &Path) -> Result<Config, Error> {
        let mut config = Config::default();
        config.parse_text(text.to_string(), path, &[])?;
        Ok(config)
    }

    fn load_file(&mut self, path: &Path, stack: &[PathBuf]) -> Result<(), Error> {
        let text = fs::read_to_string(path).map_err(|e| Error::Io {
            file: path.to_path_buf(),
            reason: os_reason(&e),
        })?;
        self.parse_text(text, path, stack)
    }

    fn parse_text(&mut self, text: String, path: &Path, stack: &[PathBuf]) -> Result<(), Error> {
        self.files.push(path.to_path_buf());
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Loader {
            config: self,
            file: path.to_path_buf(),
            dir,
            text,
            stack: stack
                .iter()
                .cloned()
                .chain(std::iter::once(path.to_path_buf()))
                .collect(),
        }
        .run()
    }
}

impl Config {
    /// Service directories are listed once, at their first mention.
    fn add_servicedir(&mut self, d: ServiceDir) {
        if !self.servicedirs.contains(&d) {
            self.servicedirs.push(d);
        }
    }

    /// dbus-daemon's merge of an included file: single values it sets override, flags it
    /// sets stick, lists append (service directories without repeats), limits carry over.
    fn merge(&mut self, child: Config) {
        let Config {
            bus_type,
            user,
            fork,
            keep_umask,
            syslog,
            allow_anonymous,
            listen,
            pidfile,
            servicehelper,
            auth,
            servicedirs,
            limits,
            policies,
            apparmor_mode,
            selinux_associations,
            files,
            include_dirs,
            warnings,
        } = child;
        macro_rules! override_with {
            ($($field:ident),*) => {$(
                if $field.is_some() {
                    self.$field = $field;
                }
            )*};
        }
        override_with!(bus_type, user, pidfile, servicehelper, apparmor_mode);
        self.fork |= fork;
        self.keep_umask |= keep_umask;
        self.syslog |= syslog;
        self.allow_anonymous |= allow_anonymous;
        self.listen.extend(listen);
        self.auth.extend(auth);
        for d in servicedirs {
            self.add_servicedir(d);
        }
        self.limits = limits;
        self.policies.extend(policies);
        self.selinux_associations.extend(selinux_associations);
        self.files.extend(files);
        self.include_dirs.extend(include_dirs);
        self.warnings.extend(warnings);
    }
}

impl Loader<'_> {
    fn err(&self, pos: usize, reason: impl Into<String>) -> Error {
        Error::Parse {
            file: self.file.clone(),
            line: line_of(&self.text, pos),
            reason: reason.into(),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p.trim());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn attrs(&self, e: &BytesStart<'_>, pos: usize) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|err| self.err(pos, format!("bad attribute: {err}")))?;
            let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let v = a
                .unescape_value()
                .map_err(|err| self.err(pos, format!("bad attribute value: {err}")))?
                .into_owned();
            out.push((k, v));
        }
        Ok(out)
    }

    fn run(mut self) -> Result<(), Error> {
        let text = std::mem::take(&mut self.text);
        self.text = text.clone();
        let mut reader = quick_xml::Reader::from_str(&text);
        reader.config_mut().trim_text(true);
        // Element stack: (name, attributes, start position); text collects for the top.
        let mut stack: Vec<OpenElement> = Vec::new();
        let mut content = String::new();
        let mut seen_root = false;
        loop {
            let before = reader.buffer_position() as usize;
            // With trimmed text the reader stands before the whitespace that precedes a tag:
            // locate the tag itself so errors name its line.
            let pos = text[before..].find('<').map_or(before, |i| before + i);
            let event = reader
                .read_event()
                .map_err(|e| self.err(pos, format!("XML error: {e}")))?;
            match event {
                Event::Start(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let attrs = self.attrs(&e, pos)?;
                    self.open(&stack, &name, &attrs, pos, &mut seen_root)?;
                    stack.push((name, attrs, pos));
                    content.clear();
                }
                Event::Empty(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let attrs = self.attrs(&e, pos)?;
                    self.open(&stack, &name, &attrs, pos, &mut seen_root)?;
                    self.close(&stack, &name, &attrs, "", pos)?;
                }
                Event::Text(t) => {
                    let s = t
                        .unescape()
                        .map_err(|e| self.err(pos, format!("XML error: {e}")))?;
                    content.push_str(&s);
                }
                Event::CData(t) => content.push_str(&String::from_utf8_lossy(&t)),
                Event::End(_) => {
                    let (name, attrs, start) = stack
                        .pop()
                        .ok_or_else(|| self.err(pos, "unbalanced end tag"))?;
                    let c = std::mem::take(&mut content);
                    self.close(&stack, &name, &attrs, c.trim(), start)?;
                }
                Event::Eof => break,
                Event::Decl(_) | Event::DocType(_) | Event::Comment(_) | Event::PI(_) => {}
            }
        }
        if !seen_root {
            return Err(self.err(0, "no <busconfig> element"));
        }
        Ok(())
    }

    fn open(
        &mut self,
        stack: &[OpenElement],
        name: &str,
        attrs: &[(String, String)],
        pos: usize,
        seen_root: &mut bool,
    ) -> Result<(), Error> {
        let parent = stack.last().map(|(n, _, _)| n.as_str());
        let ok = match (parent, name) {
            (None, "busconfig") => {
                *seen_root = true;
                true
            }
            (Some("busconfig"), "policy") => {
                let kind = self.policy_kind(attrs, pos)?;
                self.config.policies.push(PolicyContext {
                    kind,
                    rules: Vec::new(),
                    file: self.file.clone(),
                    line: line_of(&self.text, pos),
                });
                true
            }
            (Some("busconfig"), n) => matches!(
                n,
                "type"
                    | "user"
                    | "fork"
                    | "keep_umask"
                    | "syslog"
                    | "listen"
                    | "pidfile"
                    | "includedir"
                    | "standard_session_servicedirs"
                    | "standard_system_servicedirs"
                    | "servicedir"
                    | "servicehelper"
                    | "auth"
                    | "include"
                    | "limit"
                    | "selinux"
                    | "apparmor"
                    | "allow_anonymous"
            ),
            (Some("policy"), "allow" | "deny") => true,
            (Some("selinux"), "associate") => true,
            _ => false,
        };
        if !ok {
            return Err(match parent {
                None => self.err(
                    pos,
                    format!("Root element must be <busconfig>, not <{name}>"),
                ),
                Some(p) => self.err(
                    pos,
                    format!("Element <{name}> not allowed inside <{p}> in configuration file"),
                ),
            });
        }
        Ok(())
    }

    fn policy_kind(&self, attrs: &[(String, String)], pos: usize) -> Result<PolicyKind, Error> {
        if let Some((k, _)) = attrs
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "context" | "user" | "group" | "at_console"))
        {
            return Err(self.err(
                pos,
                format!("Attribute \"{k}\" is invalid on <policy> element in this context"),
            ));
        }
        if attrs.len() != 1 {
            return Err(self.err(pos, "<policy> element must have exactly one of (context|user|group|at_console) attributes"));
        }
        let (k, v) = &attrs[0];
        Ok(match (k.as_str(), v.as_str()) {
            ("context", "default") => PolicyKind::Default,
            ("context", "mandatory") => PolicyKind::Mandatory,
            ("context", other) => {
                return Err(self.err(pos, format!("context attribute on <policy> must have the value \"default\" or \"mandatory\", not \"{other}\"")))
            }
            ("user", u) => PolicyKind::User(u.to_string()),
            ("group", g) => PolicyKind::Group(g.to_string()),
            ("at_console", "true") => PolicyKind::AtConsole(true),
            ("at_console", "false") => PolicyKind::AtConsole(false),
            ("at_console", other) => {
                return Err(self.err(pos, format!("Unknown value \"{other}\" for at_console in message bus configuration file")))
            }
            (other, _) => {
                return Err(self.err(pos, format!("Attribute \"{other}\" is invalid on <policy> element in this context")))
            }
        })
    }

    fn close(
        &mut self,
        stack: &[OpenElement],
        name: &str,
        attrs: &[(String, String)],
        content: &str,
        pos: usize,
    ) -> Result<(), Error> {
        let attr = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        let yes = |k: &str| attr(k) == Some("yes");
        if content.is_empty() && NEEDS_CONTENT.contains(&name) {
            return Err(self.err(
                pos,
                format!("XML element <{name}> was expected to have content inside it"),
            ));
        }
        let c = &mut *self.config;
        match name {
            "busconfig" | "policy" | "selinux" => {}
            "type" => {
                c.bus_type = Some(content.to_string());
            }
            "user" => {
                c.user = Some(content.to_string());
            }
            "fork" => c.fork = true,
            "keep_umask" => c.keep_umask = true,
            "syslog" => c.syslog = true,
            "allow_anonymous" => c.allow_anonymous = true,
            "listen" => {
                c.listen.push(content.to_string());
            }
            "pidfile" => {
                let p = self.resolve(content);
                self.config.pidfile = Some(p);
            }
            "servicehelper" => {
                let p = self.resolve(content);
                self.config.servicehelper = Some(p);
            }
            "auth" => {
                c.auth.push(content.to_string());
            }
            "servicedir" => {
                let p = self.resolve(content);
                self.config.add_servicedir(ServiceDir::Path(p));
            }
            "standard_session_servicedirs" => c.add_servicedir(ServiceDir::StandardSession),
            "standard_system_servicedirs" => c.add_servicedir(ServiceDir::StandardSystem),
            "apparmor" => match attr("mode") {
                None => {}
                Some(m @ ("required" | "enabled" | "disabled")) => {
                    c.apparmor_mode = Some(m.to_string())
                }
                Some(other) => {
                    return Err(self.err(
                        pos,
                        format!("Mode attribute on <apparmor> must have value \"required\", \"enabled\" or \"disabled\", not \"{other}\""),
                    ))
                }
            },
            "associate" => match (attr("own"), attr("context")) {
                (Some(own), Some(ctx)) => c
                    .selinux_associations
                    .push((own.to_string(), ctx.to_string())),
                _ => {
                    return Err(self.err(
                        pos,
                        "Element <associate> must have attributes own=\"<servicename>\" and context=\"<selinux context>\"",
                    ))
                }
            },
            "limit" => {
                let lname = attr("name").ok_or_else(|| {
                    self.err(pos, "<limit> element must have a \"name\" attribute")
                })?;
                let value: i64 = content.parse().map_err(|_| {
                    self.err(pos, format!("<limit name=\"{lname}\"> element has invalid value (could not parse as integer)"))
                })?;
                if !self.config.limits.set(lname, value) {
                    return Err(self.err(pos, format!("There is no limit called \"{lname}\"")));
                }
            }
            "allow" | "deny" => {
                let rule = Rule::from_attributes(name == "allow", attrs)
                    .map_err(|reason| self.err(pos, reason))?;
                let rule = PolicyRule {
                    rule,
                    file: self.file.clone(),
                    line: line_of(&self.text, pos),
                };
                debug_assert_eq!(stack.last().map(|s| s.0.as_str()), Some("policy"));
                if let Some(ctx) = self.config.policies.last_mut() {
                    ctx.rules.push(rule);
                }
            }
            "include" => {
                if attr("if_selinux_enabled") == Some("yes") {
                    // busd has no SELinux support: dbus-daemon skips these includes when
                    // SELinux is disabled, which is what busd reports.
                    return Ok(());
                }
                let path = self.resolve(content);
                if !path.exists() && yes("ignore_missing") {
                    return Ok(());
                }
                self.include(&path, pos, false)?;
            }
            "includedir" => {
                let dir = self.resolve(content);
                self.config.include_dirs.push(dir.clone());
                let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                files.sort();
                for f in files {
                    self.include(&f, pos, true)?;
                }
            }
            other => return Err(self.err(pos, format!("Unknown element <{other}>"))),
        }
        Ok(())
    }

    /// Reads an included file into a configuration of its own (starting from the current
    /// limits), then merges it in: a file that fails contributes nothing. In an
    /// `<includedir>` (`from_dir`), such a file is reported and skipped, as dbus-daemon does.
    fn include(&mut self, path: &Path, pos: usize, from_dir: bool) -> Result<(), Error> {
        if self.stack.iter().any(|p| p == path) {
            return Err(self.err(
                pos,
                format!("Circular inclusion of file '{}'", path.display()),
            ));
        }
        let mut child = Config {
            limits: self.config.limits.clone(),
            ..Config::default()
        };
        match child.load_file(path, &self.stack) {
            Ok(()) => {
                self.config.merge(child);
                Ok(())
            }
            Err(e) if from_dir => {
                self.config.warnings.push(format!(
                    "Encountered error '{e}' while parsing '{}'",
                    path.display()
                ));
                Ok(())
            }
            // A file that cannot be opened is reported where it was included.
            Err(e @ Error::Io { .. }) => Err(self.err(pos, e.to_string())),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn stock_session_conf_loads() {
        let p = Path::new("/usr/share/dbus-1/session.conf");
        if !p.exists() {
            return;
        }
        let c = Config::load(p).unwrap();
        assert_eq!(c.bus_type.as_deref(), Some("session"));
        assert_eq!(c.listen, vec!["unix:tmpdir=/tmp"]);
        assert_eq!(c.auth, vec!["EXTERNAL"]);
        assert_eq!(c.limits.max_match_rules_per_connection, 50000);
        assert!(c.servicedirs.contains(&ServiceDir::StandardSession));
    }

    #[test]
    fn stock_system_conf_loads() {
        let p = Path::new("/usr/share/dbus-1/system.conf");
        if !p.exists() {
            return;
        }
        let c = Config::load(p).unwrap();
        assert_eq!(c.bus_type.as_deref(), Some("system"));
        assert_eq!(c.user.as_deref(), Some("messagebus"));
        assert!(c.policies.iter().any(|p| p.kind == PolicyKind::Default));
    }

    #[test]
    fn includes_merge_in_place_and_resolve_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("conf.d")).unwrap();
        write(
            &d.path().join("conf.d"),
            "b.conf",
            "<busconfig><listen>unix:path=/b</listen></busconfig>",
        );
        write(
            &d.path().join("conf.d"),
            "a.conf",
            "<busconfig><listen>unix:path=/a</listen><type>system</type></busconfig>",
        );
        write(&d.path().join("conf.d"), "ignored.txt", "not xml");
        let main = write(
            d.path(),
            "main.conf",
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=/first</listen>
  <includedir>conf.d</includedir>
  <includedir>missing.d</includedir>
  <include ignore_missing="yes">nothere.conf</include>
  <include if_selinux_enabled="yes" selinux_root_relative="yes">contexts/dbus_contexts</include>
  <servicedir>services</servicedir>
  <limit name="reply_timeout">-1</limit>
  <limit name="max_names_per_connection">3</limit>
</busconfig>"#,
        );
        let c = Config::load(&main).unwrap();
        assert_eq!(
            c.listen,
            vec!["unix:path=/first", "unix:path=/a", "unix:path=/b"]
        );
        assert_eq!(
            c.bus_type.as_deref(),
            Some("system"),
            "a later include overrides <type>"
        );
        assert_eq!(
            c.servicedirs,
            vec![ServiceDir::Path(d.path().join("services"))]
        );
        assert_eq!(c.limits.reply_timeout, None);
        assert_eq!(c.limits.max_names_per_connection, 3);
        assert_eq!(c.files.len(), 3);
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("<busconfig>\n<bogus/>\n</busconfig>", 2, "Element <bogus> not allowed"),
            ("<busconfig>\n\n<limit name=\"nope\">1</limit></busconfig>", 3, "no limit called \"nope\""),
            ("<busconfig>\n<limit name=\"auth_timeout\">soon</limit></busconfig>", 2, "could not parse"),
            ("<busconfig>\n<include>missing.conf</include></busconfig>", 0, "missing.conf"),
            ("<notbus/>", 1, "Root element must be <busconfig>"),
            ("<busconfig>\n<policy context=\"sometimes\"/></busconfig>", 2, "\"default\" or \"mandatory\""),
            ("<busconfig><policy context=\"default\">\n<allow bogus=\"x\"/></policy></busconfig>", 2, "Attribute \"bogus\""),
            ("<busconfig>\n<listen></listen></busconfig>", 2, "expected to have content"),
        ];
        for (text, line, what) in cases {
            let p = write(d.path(), "bad.conf", text);
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains(what), "{text}: {e}");
            assert!(e.contains("bad.conf") || e.contains("missing.conf"), "{e}");
            if line > 0 {
                assert!(e.contains(&format!("bad.conf:{line}:")), "{text}: {e}");
            }
        }
    }

    #[test]
    fn rule_errors_carry_the_rules_location() {
        let e = Config::from_str_at(
            "<busconfig><policy context=\"default\">\n\n<deny send_member=\"Frob\"/></policy></busconfig>",
            Path::new("/etc/t.conf"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/etc/t.conf:3:"), "{e}");
        assert!(e.contains("if you specify a member"), "{e}");
    }

    #[test]
    fn include_loops_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "loop.conf",
            "<busconfig><include>loop.conf</include></busconfig>",
        );
        assert!(Config::load(&p)
            .unwrap_err()
            .to_string()
            .contains("Circular inclusion of file"));
    }

    #[test]
    fn a_broken_file_in_an_includedir_is_reported_and_contributes_nothing() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("conf.d")).unwrap();
        write(
            &d.path().join("conf.d"),
            "a.conf",
            "<busconfig><listen>unix:path=/half</listen><bogus/></busconfig>",
        );
        write(
            &d.path().join("conf.d"),
            "b.conf",
            "<busconfig><limit name=\"max_names_per_connection\">9</limit></busconfig>",
        );
        let main = write(
            d.path(),
            "main.conf",
            "<busconfig><servicedir>/s</servicedir><servicedir>/s</servicedir><includedir>conf.d</includedir></busconfig>",
        );
        let c = Config::load(&main).unwrap();
        assert!(c.listen.is_empty(), "nothing of the broken file is kept");
        assert_eq!(c.limits.max_names_per_connection, 9);
        assert_eq!(c.servicedirs.len(), 1);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("a.conf"), "{:?}", c.warnings);
        // The same file included twice, not circularly, is fine.
        let twice = write(
            d.path(),
            "twice.conf",
            "<busconfig><include>conf.d/b.conf</include><include>conf.d/b.conf</include></busconfig>",
        );
        assert!(Config::load(&twice).is_ok());
    }
}
