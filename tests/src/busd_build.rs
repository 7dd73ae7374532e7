//! The programs of the busd and busd-top packages built from the current sources, for the
//! end-to-end tests.
//!
//! `cargo test -p busd-tests` builds busd's library for the tests, not its programs, so a
//! `target/debug/busd` left by an earlier build could be tested instead of the sources at
//! hand. Each test process therefore runs `cargo build -p busd -p busd-top --bins` once (a
//! no-op when that build is up to date) and takes the programs' paths from cargo's own report of what
//! it built, so that `CARGO_TARGET_DIR` or a configured target directory is followed rather
//! than guessed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The path of the program `name` (of the busd or busd-top package), built from the
/// current sources.
pub(crate) fn program(name: &str) -> PathBuf {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(build);
    match built.get(name) {
        Some(path) => path.clone(),
        None => panic!(
            "building busd and busd-top made no program {name} (it made {:?})",
            built.keys().collect::<Vec<_>>()
        ),
    }
}

/// Runs `cargo build -p busd -p busd-top --bins` on this workspace; cargo's progress and errors go to
/// the test's stderr. Returns each program's path, from the `compiler-artifact` messages of
/// `--message-format=json`.
fn build() -> HashMap<String, PathBuf> {
    // Set by cargo when it runs the tests: the same cargo and toolchain as the test build.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "busd", "-p", "busd-top", "--bins"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest);
    // Tests built with optimizations (`cargo test --release`) test a release busd.
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("building busd from the current sources: {cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {cargo:?} to build busd ({e}): set BUSD to the busd to test")
        });
    assert!(
        out.status.success(),
        "building busd failed ({}); cargo's errors are above",
        out.status
    );
    let mut programs = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let message = parse(line)
            .unwrap_or_else(|| panic!("cargo printed a line that is not JSON: {line:?}"));
        if message.get("reason").and_then(Json::as_str) != Some("compiler-artifact") {
            continue;
        }
        let Some(target) = message.get("target") else {
            continue;
        };
        let is_bin = match target.get("kind") {
            Some(Json::Array(kinds)) => kinds.iter().any(|k| k.as_str() == Some("bin")),
            _ => false,
        };
        let name = target.get("name").and_then(Json::as_str);
        let executable = message.get("executable").and_then(Json::as_str);
        if let (true, Some(name), Some(executable)) = (is_bin, name, executable) {
            programs.insert(name.to_string(), PathBuf::from(executable));
        }
    }
    programs
}

/// A JSON value, as much of it as cargo's messages need (numbers are not kept).
enum Json {
    Null,
    Bool,
    Number,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one JSON document; None if `text` is not one.
fn parse(text: &str) -> Option<Json> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value()?;
    p.space();
    (p.i == p.s.len()).then_some(value)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn space(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    /// Skips `token` (after white space) if it comes next.
    fn eat(&mut self, token: &[u8]) -> bool {
        self.space();
        let found = self.s[self.i..].starts_with(token);
        if found {
            self.i += token.len();
        }
        found
    }

    fn value(&mut self) -> Option<Json> {
        self.space();
        match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                if !self.eat(b"}") {
                    loop {
                        self.space();
                        let key = self.string()?;
                        if !self.eat(b":") {
                            return None;
                        }
                        fields.push((key, self.value()?));
                        if self.eat(b"}") {
                            break;
                        }
                        if !self.eat(b",") {
                            return None;
                        }
                    }
                }
                Some(Json::Object(fields))
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if !self.eat(b"]") {
                    loop {
                        items.push(self.value()?);
                        if self.eat(b"]") {
                            break;
                        }
                        if !self.eat(b",") {
                            return None;
                        }
                    }
                }
                Some(Json::Array(items))
            }
            b'"' => self.string().map(Json::Str),
            _ if self.eat(b"true") || self.eat(b"false") => Some(Json::Bool),
            _ if self.eat(b"null") => Some(Json::Null),
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                {
                    self.i += 1;
                }
                (self.i > start).then_some(Json::Number)
            }
        }
    }

    /// A string, at the current position.
    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let b = *self.s.get(self.i)?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let escaped = *self.s.get(self.i)?;
                    self.i += 1;
                    let c = match escaped {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&high) {
                                // A surrogate pair: the low half follows as another \u.
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return None;
                                }
                                self.i += 2;
                                let low = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return None;
                                }
                                0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                            } else {
                                high
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(b),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cargo_artifact_message() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"busd","n":-1.5e3,"x":[true,false,null,{}]},"executable":"/t\u00e9st\ud83d\ude00/a \"b\"\\c","fresh":true}"#;
        let m = parse(line).unwrap();
        assert_eq!(
            m.get("reason").and_then(Json::as_str),
            Some("compiler-artifact")
        );
        let target = m.get("target").unwrap();
        assert_eq!(target.get("name").and_then(Json::as_str), Some("busd"));
        assert!(matches!(target.get("kind"), Some(Json::Array(k)) if k[0].as_str() == Some("bin")));
        assert_eq!(
            m.get("executable").and_then(Json::as_str),
            Some("/tést\u{1f600}/a \"b\"\\c")
        );
        assert!(parse(r#"{"a":1"#).is_none());
        assert!(parse(r#"{"a":1} x"#).is_none());
        assert!(parse(r#""\ud83d""#).is_none());
    }
}
