//! A unary call envelope from a peer: `uvarint(len) ‖ PersistentConnectionRequest`, and the same
//! bytes as an envelope body read as a head and then its data (`split_unary_envelope`).
#![no_main]

use kwaai_core::wire::p2pd::{
    decode_split_unary_envelope, decode_unary_envelope, encode_unary_envelope, split_unary_envelope, EnvelopeSplit,
    PersistentConnectionRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

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
    // As a body: the splitter asks only for bytes the body has, and a split decodes to what the
    // whole body decodes to.
    let mut head = 0;
    loop {
        match split_unary_envelope(&data[..head], data.len()) {
            EnvelopeSplit::NeedMore(n) => {
                assert!(n > 0 && head + n <= data.len(), "asked for {n} bytes past {head}");
                head += n;
            }
            EnvelopeSplit::Whole => break,
            EnvelopeSplit::Split(at) => {
                assert_eq!((at.head_len, at.head_len + at.data_len), (head, data.len()));
                let rest = bytes::Bytes::copy_from_slice(&data[head..]);
                let split = decode_split_unary_envelope(&data[..head], at, rest).ok();
                assert_eq!(split, PersistentConnectionRequest::decode(data).ok());
                break;
            }
        }
    }
});
