//! The fast-path frame decoder, on whatever a member writes to its inbox: the checks the
//! daemon and every member apply to the routing header, then the message parser. Member 1
//! (`:1.0`) is the sender.
#![no_main]
use busd_match::header::Header;
use busd_match::protocol::check_frame;
use busd_wire::message::Message;
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 128 << 20;

fuzz_target!(|frame: &[u8]| {
    let Ok(checked) = check_frame(frame, &[], 1, MAX_MESSAGE) else {
        return;
    };
    assert_eq!(
        Header::decode(frame).map(|h| h.sender),
        Ok(checked.header.sender)
    );
    assert!(!checked.memfd, "a memfd frame passed without its memfd");
    if let Ok(m) = Message::parse(checked.message, Vec::new()) {
        // What the receiver compares with the member's unique name.
        let _ = m.sender();
        let _ = m.args();
    }
});
