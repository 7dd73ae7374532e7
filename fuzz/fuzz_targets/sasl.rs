//! The SASL server, on whatever a client types before BEGIN. Fed the input in one piece or in
//! arbitrary pieces (as the socket delivers it), it must give the same replies and outcome;
//! it never authenticates anyone as a uid other than the peer's.
#![no_main]
use busd_wire::sasl::{Cookies, Identity, Mechanism, SaslServer};
use libfuzzer_sys::fuzz_target;

const PEER_UID: u32 = 1000;
const GUID: &str = "0123456789abcdef0123456789abcdef";

/// The bus's keyring for DBUS_COOKIE_SHA1: one cookie, one challenge, so that a run is
/// repeatable (and the fuzzer can find the proof: it is SHA-1 of `5e:<anything>:c0ffee`).
struct FixedKeyring;

impl Cookies for FixedKeyring {
    fn own_user(&self, user: &str) -> Option<u32> {
        (user == "1000").then_some(PEER_UID)
    }
    fn cookie(&mut self) -> Result<(String, u32, String), String> {
        Ok(("org_freedesktop_general".into(), 1, "c0ffee".into()))
    }
    fn challenge(&mut self) -> Result<String, String> {
        Ok("5e".into())
    }
}

/// The first byte says what the server offers (bit 0: ANONYMOUS, bit 1: fd passing, bit 2:
/// DBUS_COOKIE_SHA1) and
/// the second how the client's bytes are cut into reads (every 1 to 16 bytes); the rest is
/// what the client writes.
struct Input<'a> {
    anonymous: bool,
    cookies: bool,
    can_pass_fds: bool,
    stride: usize,
    bytes: &'a [u8],
}

#[derive(Debug, PartialEq)]
struct Outcome {
    replies: Vec<u8>,
    result: Result<(bool, usize), String>,
    identity: Option<Identity>,
    unix_fds: bool,
}

fn server(input: &Input) -> SaslServer {
    let mut mechanisms = vec![Mechanism::External];
    if input.cookies {
        mechanisms.push(Mechanism::CookieSha1);
    }
    if input.anonymous {
        mechanisms.push(Mechanism::Anonymous);
    }
    SaslServer::new(mechanisms, Some(PEER_UID), GUID, input.can_pass_fds)
        .with_cookies(Box::new(FixedKeyring))
}

/// Feeds `bytes` in reads ending at `cuts`, keeping unconsumed bytes as the connection does.
/// The result is (done, bytes left after BEGIN) or the error.
fn run(input: &Input, cuts: &[usize]) -> Outcome {
    let mut sasl = server(input);
    let mut replies = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut result = Ok((false, 0));
    for end in cuts.iter().copied().chain([input.bytes.len()]) {
        pending.extend_from_slice(&input.bytes[start..end]);
        start = end;
        match sasl.feed(&pending, &mut replies) {
            Ok(p) => {
                pending.drain(..p.consumed);
                if p.done {
                    let rest = pending.len() + input.bytes.len() - start;
                    result = Ok((true, rest));
                    break;
                }
            }
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    Outcome {
        replies,
        result,
        identity: sasl.identity(),
        unix_fds: sasl.unix_fd_negotiated(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [offer, cut, bytes @ ..] = data else {
        return;
    };
    let input = Input {
        anonymous: offer & 1 != 0,
        cookies: offer & 4 != 0,
        can_pass_fds: offer & 2 != 0,
        stride: usize::from(cut % 16) + 1,
        bytes,
    };
    let cuts: Vec<usize> = (input.stride..input.bytes.len())
        .step_by(input.stride)
        .collect();
    let whole = run(&input, &[]);
    let pieces = run(&input, &cuts);
    assert_eq!(
        whole, pieces,
        "the same bytes read in pieces gave another outcome"
    );
    if let Some(Identity::Uid(uid)) = whole.identity {
        assert_eq!(
            uid, PEER_UID,
            "authenticated as a uid other than the peer's"
        );
    }
    if whole.identity == Some(Identity::Anonymous) {
        assert!(input.anonymous, "ANONYMOUS accepted without being offered");
    }
    if whole.unix_fds {
        assert!(
            input.can_pass_fds,
            "fd passing negotiated on a transport without it"
        );
    }
    for line in whole.replies.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.ends_with(b"\r\n"),
            "a reply line without CRLF: {line:?}"
        );
    }
});
