//! The fast-path frame decoder, on whatever a member writes to its inbox: the daemon's
//! checks of the routing header, then the message parser. Member 1 (`:1.0`) is the sender.
#![no_main]
use busd::server::fastpath::check_frame;
use busd::wire::message::Message;
use busd_match::header::{Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 128 << 20;

fuzz_target!(|frame: &[u8]| {
    let Ok(header) = check_frame(frame, 1, MAX_MESSAGE) else {
        return;
    };
    assert_eq!(Header::decode(frame).map(|h| h.sender), Ok(header.sender));
    if let Ok(m) = Message::parse(frame[HEADER_LEN..].to_vec(), Vec::new()) {
        // What the daemon compares with the member's unique name.
        let _ = m.sender();
        let _ = m.args();
    }
});
