//! A unary call envelope from a peer: `uvarint(len) ‖ PersistentConnectionRequest`.
#![no_main]

use kwaai_core::wire::p2pd::{decode_unary_envelope, encode_unary_envelope};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((message, used))) = decode_unary_envelope(data, MAX) {
        assert!(used <= data.len());
        // Whatever decodes re-encodes to something that decodes to the same message.
        let again = encode_unary_envelope(&message);
        let (decoded, again_used) = decode_unary_envelope(&again, usize::MAX).unwrap().unwrap();
        assert_eq!(decoded, message);
        assert_eq!(again_used, again.len());
    }
});
