//! The server side of D-Bus SASL authentication (specification, "Authentication Protocol"),
//! with dbus-daemon's replies to every out-of-place command.
//!
//! A parser with no I/O: [`SaslServer::feed`] takes bytes and appends replies to a buffer.

/// Longest command line accepted (dbus-daemon uses the same bound).
pub const MAX_LINE: usize = 16 * 1024;
/// Rejections after which the connection is dropped.
pub const MAX_REJECTIONS: u32 = 6;

/// An authentication mechanism busd implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    External,
    Anonymous,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::External => "EXTERNAL",
            Mechanism::Anonymous => "ANONYMOUS",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "EXTERNAL" => Some(Mechanism::External),
            "ANONYMOUS" => Some(Mechanism::Anonymous),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the credentials nul byte.
    Start,
    WaitingForAuth,
    WaitingForData,
    WaitingForBegin,
    Done,
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
        }
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

    fn command(&mut self, line: &str, out: &mut Vec<u8>) -> Result<(), Error> {
        let (cmd, arg) = match line.split_once(' ') {
            Some((c, a)) => (c, a),
            None => (line, ""),
        };
        match (self.state, cmd) {
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
                }
            }
            (State::WaitingForAuth, "BEGIN") | (State::WaitingForData, "BEGIN") => {
                Err(Error::EarlyBegin)
            }
            (State::WaitingForAuth, "DATA" | "CANCEL") => {
                Self::error(out, "Not currently in an auth conversation");
                Ok(())
            }
            (State::WaitingForAuth, "NEGOTIATE_UNIX_FD") => {
                Self::error(out, "Need to authenticate first");
                Ok(())
            }
            (_, "ERROR") | (State::WaitingForData | State::WaitingForBegin, "CANCEL") => {
                self.reject(out)
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
            (State::WaitingForData, "AUTH" | "NEGOTIATE_UNIX_FD") => {
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
}
