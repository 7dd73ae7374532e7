//! Where busd's log goes: stderr, the system log, or both, as dbus-daemon decides it
//! (`<syslog/>`, `--syslog`, `--nosyslog`, `--syslog-only`). A `tracing` writer that
//! routes each event by its level; the destination can be set after the configuration was
//! read, while logging already runs.

use std::ffi::CString;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Once;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The target of the info messages dbus-daemon writes to stderr as well as to the system
/// log (activation: "Activating service name=...", "Successfully activated service ...",
/// "Activated service ... failed: ..."): `info!(target: JOURNAL, ...)`.
pub const JOURNAL: &str = "busd::journal";

/// `text`, which a client chose (its command line, a reason it gives), made safe to quote
/// in a log line or an error message: control characters (a newline would start a forged
/// log line, an escape sequence would rewrite a terminal), the characters that reorder or
/// hide text on display, and the quotes and backslash around it are written as escapes.
/// Other text is unchanged, so that what dbus-daemon shows for an ordinary command is what
/// busd shows.
pub fn escape_for_log(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '"' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || invisible_or_reordering(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that are not control characters but change how a line reads: Unicode's
/// format characters (bidi marks, embeddings, overrides and isolates reorder the text shown
/// after them; zero-width, joiner, tag and other format characters are invisible), the line
/// and paragraph separators (a new line to some log readers), and characters that show as
/// nothing or as a blank (the combining grapheme joiner, variation selectors, Hangul
/// fillers).
fn invisible_or_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061c}'
            | '\u{06dd}'
            | '\u{070f}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08e2}'
            | '\u{115f}'..='\u{1160}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stderr = 0,
    Both = 1,
    Syslog = 2,
}

static SINK: AtomicU8 = AtomicU8::new(Sink::Stderr as u8);
/// RUST_LOG asked for more than warnings: stderr shows everything the filter lets through.
static VERBOSE: AtomicBool = AtomicBool::new(false);
static OPENLOG: Once = Once::new();

pub fn set_sink(sink: Sink) {
    if sink != Sink::Stderr {
        OPENLOG.call_once(|| {
            // SAFETY: openlog keeps the ident pointer; a static C string outlives the
            // process's use of it.
            unsafe { libc::openlog(c"busd".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        });
    }
    SINK.store(sink as u8, Ordering::Relaxed);
}

pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// The writer for `tracing_subscriber::fmt().with_writer(...)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Writer;

/// One formatted event, sent where it belongs when dropped.
pub struct Line {
    level: Level,
    /// An info message that stderr shows too ([`JOURNAL`]).
    journal: bool,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            level: Level::INFO,
            journal: false,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            level: *meta.level(),
            journal: meta.target() == JOURNAL,
            buf: Vec::new(),
        }
    }
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn priority(level: Level) -> libc::c_int {
    match level {
        Level::ERROR => libc::LOG_ERR,
        Level::WARN => libc::LOG_WARNING,
        Level::INFO => libc::LOG_INFO,
        _ => libc::LOG_DEBUG,
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let sink = SINK.load(Ordering::Relaxed);
        // The system log takes the lifecycle and activation messages (info) as well;
        // stderr stays quiet below warnings, but for what dbus-daemon also writes there
        // (activation), unless RUST_LOG asked for more.
        let to_stderr = sink != Sink::Syslog as u8
            && (self.level <= Level::WARN || self.journal || VERBOSE.load(Ordering::Relaxed));
        if to_stderr {
            let _ = io::stderr().write_all(&self.buf);
        }
        if sink != Sink::Stderr as u8 && self.level <= Level::INFO {
            let text = String::from_utf8_lossy(&self.buf);
            let line = text.trim_end().replace('\0', " ");
            if let Ok(c) = CString::new(line) {
                // SAFETY: a constant "%s" format with one NUL-terminated string argument.
                unsafe { libc::syslog(priority(self.level), c"%s".as_ptr(), c.as_ptr()) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing a client puts in the text breaks the line, hides in it or reorders it.
    #[test]
    fn quoted_text_stays_one_visible_line() {
        for c in [
            '\n',
            '\r',
            '\x0b',
            '\x0c',
            '\u{85}',
            '\u{2028}',
            '\u{2029}',
            '\x1b',
            '\u{202e}',
            '\u{2067}',
            '\u{061c}',
            '\u{200b}',
            '\u{feff}',
            '\u{00ad}',
            '\u{e0041}',
            '\u{fe0f}',
            '\u{3164}',
            '\u{1d173}',
        ] {
            let quoted = escape_for_log(&format!("a{c}b"));
            assert!(
                quoted.starts_with("a\\") && quoted.ends_with('b') && quoted.is_ascii(),
                "{c:?} -> {quoted}"
            );
        }
        assert_eq!(escape_for_log("it's \"x\" \\"), "it\\'s \\\"x\\\" \\\\");
        assert_eq!(
            escape_for_log("/usr/bin/gnome-terminal --tab é"),
            "/usr/bin/gnome-terminal --tab é"
        );
    }
}
