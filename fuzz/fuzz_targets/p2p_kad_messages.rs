//! Kademlia requests as p2pd's kad sends them: any bytes decode or fail cleanly, and what decodes
//! re-encodes to a message that decodes the same.
#![no_main]

use kwaai_core::wire::kad::KadMessage;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = KadMessage::decode(data) {
        assert_eq!(KadMessage::decode(message.encode_to_vec().as_slice()).ok(), Some(message));
    }
});
