//! A streaming call's bytes from a peer: frames of `marker ‖ u64 BE len ‖ payload`.
#![no_main]

use kwaai_core::wire::p2pd::{decode_frame_header, decode_rpc_error, FRAME_ERROR, FRAME_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= FRAME_HEADER_LEN {
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&rest[..FRAME_HEADER_LEN]);
        let Ok(frame) = decode_frame_header(&header, MAX) else { return };
        assert!(frame.len <= MAX);
        let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + frame.len) else { return };
        if frame.marker == FRAME_ERROR {
            let _ = decode_rpc_error(payload);
        }
        rest = &rest[FRAME_HEADER_LEN + frame.len..];
    }
});
