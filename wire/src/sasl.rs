//! The server side of D-Bus SASL authentication (specification, "Authentication Protocol"),
//! with dbus-daemon's replies to every out-of-place command.
//!
//! A parser with no I/O: [`SaslServer::feed`] takes bytes and appends replies to a buffer.
//! `DBUS_COOKIE_SHA1` reads its keyring and randomness through [`Cookies`], which the
//! daemon implements.

/// Longest command line accepted (dbus-daemon uses the same bound).
pub const MAX_LINE: usize = 16 * 1024;
/// Rejections after which the connection is dropped.
pub const MAX_REJECTIONS: u32 = 6;

/// What a client sends first to authenticate as `uid` with EXTERNAL: the nul byte, then
/// `AUTH EXTERNAL` with the uid's decimal digits in hex (for raw test clients and tools).
pub fn auth_external(uid: u32) -> String {
    let hex: String = uid
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\0AUTH EXTERNAL {hex}\r\n")
}

/// An authentication mechanism busd implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    External,
    CookieSha1,
    Anonymous,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::External => "EXTERNAL",
            Mechanism::CookieSha1 => "DBUS_COOKIE_SHA1",
            Mechanism::Anonymous => "ANONYMOUS",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "EXTERNAL" => Some(Mechanism::External),
            "DBUS_COOKIE_SHA1" => Some(Mechanism::CookieSha1),
            "ANONYMOUS" => Some(Mechanism::Anonymous),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Expecting the credentials nul byte.
    Start,
    WaitingForAuth,
    /// EXTERNAL without an initial response: its identity comes in DATA.
    WaitingForData,
    /// DBUS_COOKIE_SHA1 sent its challenge: the client's answer comes in DATA.
    WaitingForCookieAnswer(Challenge),
    WaitingForBegin,
    Done,
}

/// A DBUS_COOKIE_SHA1 challenge sent and what its answer must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    uid: u32,
    /// The server's challenge (hex) and the cookie's secret (hex, as the keyring has it).
    server: String,
    cookie: String,
}

/// What `DBUS_COOKIE_SHA1` needs from outside (specification, "DBUS_COOKIE_SHA1"): the
/// keyring in the home directory of the server's own user (it can read no other user's,
/// so no other user can authenticate this way) and random bytes.
pub trait Cookies {
    /// The uid `user` (a decimal uid or a user name, as the client sent it) designates, if
    /// it is the server's own user.
    fn own_user(&self, user: &str) -> Option<u32>;
    /// A current cookie of the keyring, made (and stored) if none is recent enough:
    /// (context, id, secret in hex); Err says why there is none.
    fn cookie(&mut self) -> Result<(String, u32, String), String>;
    /// 16 random bytes, hex-encoded: the server's challenge (Err: none can be made).
    fn challenge(&mut self) -> Result<String, String>;
}

/// Why the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("first byte was not nul")]
    NoNulByte,
    #[error("authentication line too long")]
    LineTooLong,
    #[error("too many failed authentication attempts")]
    TooManyRejections,
    #[error("BEGIN before authentication completed")]
    EarlyBegin,
}

/// Who the client authenticated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Uid(u32),
    Anonymous,
}

/// Result of feeding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that were used.
    pub consumed: usize,
    /// Whether BEGIN was received: the bytes after `consumed` are D-Bus messages.
    pub done: bool,
}

#[derive(Debug)]
pub struct SaslServer {
    state: State,
    mechanisms: Vec<Mechanism>,
    peer_uid: Option<u32>,
    guid: String,
    can_pass_fds: bool,
    unix_fd_negotiated: bool,
    rejections: u32,
    identity: Option<Identity>,
    cookies: Option<Box<dyn Cookies + Send>>,
}

impl std::fmt::Debug for dyn Cookies + Send {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookies")
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the client's answer (`<client challenge> <sha1 hex>`) proves it read the cookie:
/// the hash is SHA-1 of `<server challenge>:<client challenge>:<cookie>`.
fn cookie_answer_proves(c: &Challenge, answer: &[u8]) -> bool {
    let Ok(answer) = std::str::from_utf8(answer) else {
        return false;
    };
    let Some((client, hash)) = answer.split_once(' ') else {
        return false;
    };
    if client.is_empty() || hash.is_empty() {
        return false;
    }
    let expected = sha1_smol::Sha1::from(format!("{}:{client}:{}", c.server, c.cookie))
        .digest()
        .to_string();
    // (Compared in full whatever differs first: the time says nothing of the cookie.)
    expected.len() == hash.len()
        && expected
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
            == 0
}

impl SaslServer {
    /// `mechanisms` are the ones offered, in order (already filtered by `<auth>` and
    /// `<allow_anonymous/>`); `peer_uid` comes from `SO_PEERCRED`.
    pub fn new(
        mechanisms: Vec<Mechanism>,
        peer_uid: Option<u32>,
        guid: &str,
        can_pass_fds: bool,
    ) -> Self {
        SaslServer {
            state: State::Start,
            mechanisms,
            peer_uid,
            guid: guid.to_string(),
            can_pass_fds,
            unix_fd_negotiated: false,
            rejections: 0,
            identity: None,
            cookies: None,
        }
    }

    /// Where DBUS_COOKIE_SHA1 (when offered) finds its keyring; without it the mechanism
    /// refuses everyone.
    pub fn with_cookies(mut self, cookies: Box<dyn Cookies + Send>) -> Self {
        self.cookies = Some(cookies);
        self
    }

    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    pub fn unix_fd_negotiated(&self) -> bool {
        self.unix_fd_negotiated
    }

    /// Consumes complete lines from `input`, appending replies to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, Error> {
        let mut consumed = 0;
        if self.state == State::Start {
            match input.first() {
                None => {
                    return Ok(Progress {
                        consumed: 0,
                        done: false,
                    })
                }
                Some(0) => {
                    consumed = 1;
                    self.state = State::WaitingForAuth;
                }
                Some(_) => return Err(Error::NoNulByte),
            }
        }
        while self.state != State::Done {
            let rest = &input[consumed..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() > MAX_LINE {
                    return Err(Error::LineTooLong);
                }
                break;
            };
            if eol > MAX_LINE {
                return Err(Error::LineTooLong);
            }
            let line = String::from_utf8_lossy(&rest[..eol]).into_owned();
            consumed += eol + 2;
            self.command(&line, out)?;
        }
        Ok(Progress {
            consumed,
            done: self.state == State::Done,
        })
    }

    fn reject(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(b"REJECTED");
        for m in &self.mechanisms {
            out.push(b' ');
            out.extend_from_slice(m.name().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        self.state = State::WaitingForAuth;
        self.rejections += 1;
        if self.rejections >= MAX_REJECTIONS {
            return Err(Error::TooManyRejections);
        }
        Ok(())
    }

    fn error(out: &mut Vec<u8>, msg: &str) {
        out.extend_from_slice(format!("ERROR \"{msg}\"\r\n").as_bytes());
    }

    fn ok(&mut self, identity: Identity, out: &mut Vec<u8>) {
        self.identity = Some(identity);
        out.extend_from_slice(format!("OK {}\r\n", self.guid).as_bytes());
        self.state = State::WaitingForBegin;
    }

    /// EXTERNAL with the (hex-decoded) authorization identity, empty meaning "whoever I am".
    fn external(&mut self, response: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(peer) = self.peer_uid else {
            return self.reject(out);
        };
        if response.is_empty() {
            self.ok(Identity::Uid(peer), out);
            return Ok(());
        }
        let claimed = std::str::from_utf8(response)
            .ok()
            .and_then(|s| s.parse::<u32>().ok());
        if claimed == Some(peer) {
            self.ok(Identity::Uid(peer), out);
            Ok(())
        } else {
            self.reject(out)
        }
    }

    /// DBUS_COOKIE_SHA1's first step: `user` (hex-decoded) claims an identity; the answer
    /// is `DATA` with the keyring's context, a cookie's id and a challenge.
    fn cookie_challenge(&mut self, user: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(cookies) = self.cookies.as_mut() else {
            return self.reject(out);
        };
        let Some(uid) = std::str::from_utf8(user)
            .ok()
            .and_then(|u| cookies.own_user(u))
        else {
            return self.reject(out);
        };
        let (context, id, cookie) = match cookies.cookie() {
            Ok(c) => c,
            Err(_) => return self.reject(out),
        };
        let Ok(server) = cookies.challenge() else {
            return self.reject(out);
        };
        let data = format!("{context} {id} {server}");
        out.extend_from_slice(format!("DATA {}\r\n", hex_encode(data.as_bytes())).as_bytes());
        self.state = State::WaitingForCookieAnswer(Challenge {
            uid,
            server,
            cookie,
        });
        Ok(())
    }

    fn command(&mut self, line: &str, out: &mut Vec<u8>) -> Result<(), Error> {
        let (cmd, arg) = match line.split_once(' ') {
            Some((c, a)) => (c, a),
            None => (line, ""),
        };
        match (&self.state, cmd) {
            (State::WaitingForAuth, "AUTH") => {
                if arg.is_empty() {
                    return self.reject(out);
                }
                let (mech, initial) = match arg.split_once(' ') {
                    Some((m, i)) => (m, Some(i)),
                    None => (arg, None),
                };
                let offered = Mechanism::from_name(mech).filter(|m| self.mechanisms.contains(m));
                let Some(mech) = offered else {
                    return self.reject(out);
                };
                let response = match initial.map(hex_decode) {
                    Some(None) => {
                        Self::error(out, "Invalid hex encoding");
                        return Ok(());
                    }
                    Some(Some(r)) => Some(r),
                    None => None,
                };
                match (mech, response) {
                    (Mechanism::External, Some(r)) => self.external(&r, out),
                    (Mechanism::External, None) => {
                        out.extend_from_slice(b"DATA\r\n");
                        self.state = State::WaitingForData;
                        Ok(())
                    }
                    (Mechanism::Anonymous, _) => {
                        self.ok(Identity::Anonymous, out);
                        Ok(())
                    }
                    // (dbus-daemon rejects it without the user in the initial response.)
                    (Mechanism::CookieSha1, None) => self.reject(out),
                    (Mechanism::CookieSha1, Some(user)) => self.cookie_challenge(&user, out),
                }
            }
            (
                State::WaitingForAuth | State::WaitingForData | State::WaitingForCookieAnswer(_),
                "BEGIN",
            ) => Err(Error::EarlyBegin),
            (State::WaitingForAuth, "DATA" | "CANCEL") => {
                Self::error(out, "Not currently in an auth conversation");
                Ok(())
            }
            (State::WaitingForAuth, "NEGOTIATE_UNIX_FD") => {
                Self::error(out, "Need to authenticate first");
                Ok(())
            }
            (_, "ERROR")
            | (
                State::WaitingForData | State::WaitingForCookieAnswer(_) | State::WaitingForBegin,
                "CANCEL",
            ) => self.reject(out),
            (State::WaitingForCookieAnswer(_), "DATA") => {
                let State::WaitingForCookieAnswer(c) =
                    std::mem::replace(&mut self.state, State::WaitingForAuth)
                else {
                    unreachable!("matched just above");
                };
                match hex_decode(arg) {
                    Some(answer) if cookie_answer_proves(&c, &answer) => {
                        self.ok(Identity::Uid(c.uid), out);
                        Ok(())
                    }
                    Some(_) => self.reject(out),
                    None => {
                        self.state = State::WaitingForCookieAnswer(c);
                        Self::error(out, "Invalid hex encoding");
                        Ok(())
                    }
                }
            }
            (State::WaitingForData, "DATA") => match hex_decode(arg) {
                Some(r) => self.external(&r, out),
                None => {
                    Self::error(out, "Invalid hex encoding");
                    Ok(())
                }
            },
            (State::WaitingForBegin, "BEGIN") => {
                self.state = State::Done;
                Ok(())
            }
            (State::WaitingForBegin, "NEGOTIATE_UNIX_FD") => {
                if self.can_pass_fds {
                    self.unix_fd_negotiated = true;
                    out.extend_from_slice(b"AGREE_UNIX_FD\r\n");
                } else {
                    Self::error(out, "Unix FD passing not supported on this transport");
                }
                Ok(())
            }
            (State::WaitingForBegin, "DATA" | "AUTH") => {
                Self::error(out, &format!("Sent {cmd} while expecting BEGIN"));
                Ok(())
            }
            (
                State::WaitingForData | State::WaitingForCookieAnswer(_),
                "AUTH" | "NEGOTIATE_UNIX_FD",
            ) => {
                Self::error(out, &format!("Sent {cmd} while expecting DATA"));
                Ok(())
            }
            _ => {
                Self::error(out, "Unknown command");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_external_line_spells_the_uid_in_hex_digits() {
        assert_eq!(auth_external(1000), "\0AUTH EXTERNAL 31303030\r\n");
        assert_eq!(auth_external(0), "\0AUTH EXTERNAL 30\r\n");
    }

    fn server(mechs: Vec<Mechanism>) -> SaslServer {
        SaslServer::new(mechs, Some(1000), "0123456789abcdef0123456789abcdef", true)
    }

    fn talk(s: &mut SaslServer, input: &str) -> (Result<Progress, Error>, String) {
        let mut out = Vec::new();
        let r = s.feed(input.as_bytes(), &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    const OK: &str = "OK 0123456789abcdef0123456789abcdef\r\n";

    #[test]
    fn external_with_initial_response() {
        let mut s = server(vec![Mechanism::External]);
        // "1000" hex-encoded.
        let (r, out) = talk(
            &mut s,
            "\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nrest",
        );
        assert_eq!(out, format!("{OK}AGREE_UNIX_FD\r\n"));
        let p = r.unwrap();
        assert!(p.done);
        assert_eq!(
            p.consumed,
            "\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n".len()
        );
        assert_eq!(s.identity(), Some(Identity::Uid(1000)));
        assert!(s.unix_fd_negotiated());
    }

    #[test]
    fn external_with_data_exchange_as_sd_bus_pipelines_it() {
        let mut s = server(vec![Mechanism::External]);
        let (r, out) = talk(&mut s, "\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n");
        assert_eq!(out, format!("DATA\r\n{OK}"));
        assert!(r.unwrap().done);
    }

    #[test]
    fn wrong_uid_is_rejected() {
        let mut s = server(vec![Mechanism::External]);
        let (_, out) = talk(&mut s, "\0AUTH EXTERNAL 30\r\n");
        assert_eq!(out, "REJECTED EXTERNAL\r\n");
    }

    #[test]
    fn out_of_place_commands_get_dbus_daemons_answers() {
        let mut s = server(vec![Mechanism::External]);
        let (_, out) = talk(&mut s, "\0DATA\r\nFOO\r\nNEGOTIATE_UNIX_FD\r\nCANCEL\r\nERROR\r\nAUTH\r\nAUTH FOO\r\nAUTH EXTERNAL zz\r\n");
        assert_eq!(
            out,
            "ERROR \"Not currently in an auth conversation\"\r\nERROR \"Unknown command\"\r\n\
             ERROR \"Need to authenticate first\"\r\nERROR \"Not currently in an auth conversation\"\r\n\
             REJECTED EXTERNAL\r\nREJECTED EXTERNAL\r\nREJECTED EXTERNAL\r\nERROR \"Invalid hex encoding\"\r\n"
        );
        let mut s = server(vec![Mechanism::External]);
        let (_, out) = talk(
            &mut s,
            "\0AUTH EXTERNAL 31303030\r\nFOO\r\nDATA\r\nAUTH EXTERNAL\r\nCANCEL\r\n",
        );
        assert_eq!(
            out,
            format!("{OK}ERROR \"Unknown command\"\r\nERROR \"Sent DATA while expecting BEGIN\"\r\nERROR \"Sent AUTH while expecting BEGIN\"\r\nREJECTED EXTERNAL\r\n")
        );
    }

    #[test]
    fn begin_before_auth_disconnects() {
        let mut s = server(vec![Mechanism::External]);
        assert_eq!(talk(&mut s, "\0BEGIN\r\n").0, Err(Error::EarlyBegin));
        let mut s = server(vec![Mechanism::External]);
        assert_eq!(
            talk(&mut s, "\0AUTH EXTERNAL\r\nBEGIN\r\n").0,
            Err(Error::EarlyBegin)
        );
    }

    #[test]
    fn too_many_rejections_disconnect() {
        let mut s = server(vec![Mechanism::External]);
        let (r, out) = talk(&mut s, &format!("\0{}", "AUTH\r\n".repeat(8)));
        assert_eq!(r, Err(Error::TooManyRejections));
        assert_eq!(out.matches("REJECTED").count(), 6);
    }

    #[test]
    fn anonymous_only_when_offered() {
        let mut s = server(vec![Mechanism::External]);
        assert_eq!(
            talk(&mut s, "\0AUTH ANONYMOUS\r\n").1,
            "REJECTED EXTERNAL\r\n"
        );
        let mut s = server(vec![Mechanism::External, Mechanism::Anonymous]);
        assert_eq!(talk(&mut s, "\0AUTH ANONYMOUS 7472616365\r\n").1, OK);
        assert_eq!(s.identity(), Some(Identity::Anonymous));
        let mut s = server(vec![Mechanism::External, Mechanism::Anonymous]);
        assert_eq!(
            talk(&mut s, "\0AUTH\r\n").1,
            "REJECTED EXTERNAL ANONYMOUS\r\n"
        );
    }

    #[test]
    fn partial_lines_wait_for_more() {
        let mut s = server(vec![Mechanism::External]);
        let (r, out) = talk(&mut s, "\0AUTH EXTER");
        assert_eq!(
            r.unwrap(),
            Progress {
                consumed: 1,
                done: false
            }
        );
        assert!(out.is_empty());
        let (r, out) = talk(&mut s, "AUTH EXTERNAL\r\n");
        assert_eq!(r.unwrap().consumed, 15);
        assert_eq!(out, "DATA\r\n");
    }

    #[test]
    fn first_byte_must_be_nul() {
        let mut s = server(vec![Mechanism::External]);
        assert_eq!(talk(&mut s, "AUTH\r\n").0, Err(Error::NoNulByte));
    }

    /// A keyring of one cookie, for the protocol's tests (the daemon's real one is tested
    /// with its files in busd).
    struct OneCookie;

    impl Cookies for OneCookie {
        fn own_user(&self, user: &str) -> Option<u32> {
            (user == "1000" || user == "alice").then_some(1000)
        }
        fn cookie(&mut self) -> Result<(String, u32, String), String> {
            Ok(("org_freedesktop_general".into(), 7, "c0ffee".into()))
        }
        fn challenge(&mut self) -> Result<String, String> {
            Ok("5e4e5e4e".into())
        }
    }

    fn hex(s: &str) -> String {
        hex_encode(s.as_bytes())
    }

    fn cookie_server() -> SaslServer {
        server(vec![Mechanism::External, Mechanism::CookieSha1]).with_cookies(Box::new(OneCookie))
    }

    #[test]
    fn cookie_sha1_challenges_and_accepts_the_proof_of_the_cookie() {
        for user in ["1000", "alice"] {
            let mut s = cookie_server();
            let (_, out) = talk(
                &mut s,
                &format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex(user)),
            );
            assert_eq!(
                out,
                format!("DATA {}\r\n", hex("org_freedesktop_general 7 5e4e5e4e"))
            );
            let proof = sha1_smol::Sha1::from("5e4e5e4e:cl13nt:c0ffee")
                .digest()
                .to_string();
            let (r, out) = talk(
                &mut s,
                &format!("DATA {}\r\nBEGIN\r\n", hex(&format!("cl13nt {proof}"))),
            );
            assert_eq!(out, OK);
            assert!(r.unwrap().done);
            assert_eq!(s.identity(), Some(Identity::Uid(1000)));
        }
    }

    #[test]
    fn cookie_sha1_rejects_wrong_proofs_other_users_and_a_missing_user() {
        let rejected = "REJECTED EXTERNAL DBUS_COOKIE_SHA1\r\n";
        let wrong = [
            // Another cookie.
            format!(
                "cl13nt {}",
                sha1_smol::Sha1::from("5e4e5e4e:cl13nt:bad").digest()
            ),
            // No client challenge, or no hash.
            format!(" {}", sha1_smol::Sha1::from("5e4e5e4e::c0ffee").digest()),
            "cl13nt".to_string(),
            "cl13nt ".to_string(),
        ];
        for answer in wrong {
            let mut s = cookie_server();
            assert!(talk(
                &mut s,
                &format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex("1000"))
            )
            .1
            .starts_with("DATA "));
            let (_, out) = talk(&mut s, &format!("DATA {}\r\n", hex(&answer)));
            assert_eq!(out, rejected, "{answer:?}");
            assert_eq!(s.identity(), None);
        }
        let mut s = cookie_server();
        assert_eq!(
            talk(
                &mut s,
                &format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex("1001"))
            )
            .1,
            rejected
        );
        assert_eq!(talk(&mut s, "AUTH DBUS_COOKIE_SHA1\r\n").1, rejected);
        // Not offered, or offered without a keyring: refused.
        let mut s = server(vec![Mechanism::External]).with_cookies(Box::new(OneCookie));
        assert_eq!(
            talk(
                &mut s,
                &format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex("1000"))
            )
            .1,
            "REJECTED EXTERNAL\r\n"
        );
        let mut s = server(vec![Mechanism::CookieSha1]);
        assert_eq!(
            talk(
                &mut s,
                &format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex("1000"))
            )
            .1,
            "REJECTED DBUS_COOKIE_SHA1\r\n"
        );
    }

    #[test]
    fn cookie_sha1_answers_out_of_place_commands_as_dbus_daemon() {
        let mut s = cookie_server();
        assert!(talk(
            &mut s,
            &format!("\0AUTH DBUS_COOKIE_SHA1 {}\r\n", hex("1000"))
        )
        .1
        .starts_with("DATA "));
        let (_, out) = talk(&mut s, "DATA zz\r\nAUTH EXTERNAL\r\nCANCEL\r\n");
        assert_eq!(
            out,
            "ERROR \"Invalid hex encoding\"\r\nERROR \"Sent AUTH while expecting DATA\"\r\nREJECTED EXTERNAL DBUS_COOKIE_SHA1\r\n"
        );
        assert!(talk(
            &mut s,
            &format!("AUTH DBUS_COOKIE_SHA1 {}\r\n", hex("1000"))
        )
        .1
        .starts_with("DATA "));
        assert_eq!(talk(&mut s, "BEGIN\r\n").0, Err(Error::EarlyBegin));
    }
}
