//! A dialer's multistream-select messages, as our listener parses them before any handler runs.
#![no_main]

use kwaai_core::p2p::multistream::{decode_message, decode_uvarint, encode_message, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_uvarint(data);
    let mut rest = data;
    while let Ok(Some((line, used))) = decode_message(rest) {
        assert!(used <= rest.len() && line.len() < MAX_MESSAGE_LEN);
        let mut again = Vec::new();
        encode_message(line, &mut again);
        assert_eq!(decode_message(&again).unwrap(), Some((line, again.len())));
        rest = &rest[used..];
    }
});
