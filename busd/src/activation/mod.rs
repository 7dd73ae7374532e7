//! Activation, the shell's side: which directories hold `.service` files, reading them, and
//! splitting `Exec=` lines. The bus core ([`crate::bus::activation`]) decides what to start
//! and when; the server starts and reaps the processes.

pub mod argv;
pub mod service_file;

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use busd_policy::{Config, ServiceDir};

use crate::bus::activation::ServiceEntry;

/// A directory of `.service` files. `strict`: files must be named `<Name>.service` (the
/// transient directory in `$XDG_RUNTIME_DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub path: PathBuf,
    pub strict: bool,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$XDG_RUNTIME_DIR/dbus-1/services`, created (mode 0700) when missing, as dbus-daemon
/// does for `<standard_session_servicedirs/>`; None without a usable runtime directory.
fn transient_dir(warnings: &mut Vec<String>) -> Option<PathBuf> {
    let runtime = env_path("XDG_RUNTIME_DIR")?;
    let uid = nix::unistd::geteuid().as_raw();
    let mut dir = runtime.clone();
    for part in ["", "dbus-1", "services"] {
        if !part.is_empty() {
            dir.push(part);
            if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    warnings.push(format!(
                        "Unable to set up transient service directory: {}: {e}",
                        dir.display()
                    ));
                    return None;
                }
            }
        }
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() && m.uid() == uid => {}
            _ => {
                warnings.push(format!(
                    "Unable to set up transient service directory: {} is not a directory owned by uid {uid}",
                    dir.display()
                ));
                return None;
            }
        }
    }
    Some(dir)
}

/// The service directories a configuration names, in dbus-daemon's order and without
/// repeats: `<servicedir>`s as written; `<standard_session_servicedirs/>` is the transient
/// directory, `$XDG_DATA_HOME` (or `~/.local/share`), `$XDG_DATA_DIRS` (or
/// `/usr/local/share:/usr/share`) and `/usr/share`, each with `dbus-1/services`;
/// `<standard_system_servicedirs/>` is `/usr/local/share`, `/usr/share` and `/lib`, each with
/// `dbus-1/system-services`.
pub fn directories(config: &Config, warnings: &mut Vec<String>) -> Vec<Directory> {
    let mut out: Vec<Directory> = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |path: PathBuf, strict: bool| {
        if seen.insert(path.clone()) {
            out.push(Directory { path, strict });
        }
    };
    for d in &config.servicedirs {
        match d {
            ServiceDir::Path(p) => add(p.clone(), false),
            ServiceDir::StandardSession => {
                if let Some(t) = transient_dir(warnings) {
                    add(t, true);
                }
                let home_data = env_path("XDG_DATA_HOME")
                    .or_else(|| env_path("HOME").map(|h| h.join(".local/share")));
                let data_dirs = std::env::var("XDG_DATA_DIRS")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "/usr/local/share:/usr/share".into());
                let bases = home_data.into_iter().chain(
                    data_dirs
                        .split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from),
                );
                for base in bases.chain([PathBuf::from("/usr/share")]) {
                    add(base.join("dbus-1/services"), false);
                }
            }
            ServiceDir::StandardSystem => {
                for base in ["/usr/local/share", "/usr/share", "/lib"] {
                    add(Path::new(base).join("dbus-1/system-services"), false);
                }
            }
        }
    }
    out
}

/// Reads every `.service` file of the directories, in order; the first file to claim a
/// name keeps it. Files that cannot be used are reported and skipped, as dbus-daemon does.
pub fn scan(dirs: &[Directory], warnings: &mut Vec<String>) -> Vec<ServiceEntry> {
    let mut entries: Vec<ServiceEntry> = Vec::new();
    let mut names = HashSet::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(&dir.path) else {
            continue;
        };
        // dbus-daemon takes files in directory order; busd sorts them so that which file
        // wins a name does not depend on the file system.
        let mut files: Vec<(String, PathBuf)> = read
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.ends_with(".service").then(|| (name, e.path()))
            })
            .collect();
        files.sort();
        for (file_name, path) in files {
            let parsed = service_file::read(&path)
                .and_then(|text| service_file::parse_service(&text, &file_name, dir.strict));
            match parsed {
                Ok(entry) if names.contains(&entry.name) => warnings.push(format!(
                    "{}: Service {} already exists in activation entry list",
                    path.display(),
                    entry.name
                )),
                Ok(entry) => {
                    names.insert(entry.name.clone());
                    entries.push(entry);
                }
                Err(e) => warnings.push(format!(
                    "Unable to load service file {}: {}",
                    crate::logging::escape_for_log(&path.to_string_lossy()),
                    e.trim_end()
                )),
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_file_to_claim_a_name_wins_and_bad_files_are_reported() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let write =
            |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write(
            a.path(),
            "x.service",
            "[D-BUS Service]\nName=org.example.X\nExec=/bin/a\n",
        );
        write(a.path(), "broken.service", "[D-BUS Service]\nExec=/bin/a\n");
        write(
            a.path(),
            "ignored.txt",
            "[D-BUS Service]\nName=org.example.Txt\nExec=/bin/a\n",
        );
        write(
            b.path(),
            "org.example.X.service",
            "[D-BUS Service]\nName=org.example.X\nExec=/bin/b\n",
        );
        write(
            b.path(),
            "y.service",
            "[D-BUS Service]\nName=org.example.Y\nExec=/bin/y\n",
        );
        let dirs = [
            Directory {
                path: a.path().into(),
                strict: false,
            },
            Directory {
                path: b.path().into(),
                strict: true,
            },
            Directory {
                path: "/nonexistent".into(),
                strict: false,
            },
        ];
        let mut warnings = Vec::new();
        let entries = scan(&dirs, &mut warnings);
        let found: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.exec.as_str()))
            .collect();
        assert_eq!(found, vec![("org.example.X", "/bin/a")]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("already exists")));
        assert!(warnings.iter().any(|w| w.contains("broken.service")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("should have been named")));
    }
}
