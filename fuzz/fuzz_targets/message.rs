//! The message parser and validator, on whatever bytes a peer may send: it must answer Ok or
//! Err, never panic, and every message it accepts must survive the bus's re-encoding (the
//! SENDER it sets, the unknown fields it removes) with the same header and body.
#![no_main]
use busd_wire::message::{total_length, Message, FIXED_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(fixed) = data.get(..FIXED_HEADER_SIZE) {
        // The stream reader's question: how long is the message these bytes start?
        let _ = total_length(fixed);
    }
    let Ok(m) = Message::parse(data.to_vec(), Vec::new()) else {
        return;
    };
    let _ = m.args();
    let f = Message::parse(m.forwarded(":1.42"), Vec::new())
        .unwrap_or_else(|e| panic!("the bus re-encoded a valid message into an invalid one: {e}"));
    assert_eq!(f.sender(), Some(":1.42"));
    assert_eq!(
        (
            f.msg_type(),
            f.flags(),
            f.serial(),
            f.reply_serial(),
            f.unix_fds()
        ),
        (
            m.msg_type(),
            m.flags(),
            m.serial(),
            m.reply_serial(),
            m.unix_fds()
        )
    );
    assert_eq!(
        (
            f.path(),
            f.interface(),
            f.member(),
            f.error_name(),
            f.destination()
        ),
        (
            m.path(),
            m.interface(),
            m.member(),
            m.error_name(),
            m.destination()
        )
    );
    assert_eq!(f.signature(), m.signature());
    assert_eq!(f.body(), m.body());
});
