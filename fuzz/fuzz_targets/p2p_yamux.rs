//! A peer's bytes on one yamux connection, as our muxer reads them: frames of any type, flags,
//! stream and length, cut into socket reads of any size, while every stream the peer opens is
//! read, written, closed or dropped.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    if let Ok(sent) = kwaai_core::p2p::fuzz_yamux(input, usize::from(chunk) * 17 + 1) {
        // Whatever we send back stays within what the peer's input can cause: acknowledgements,
        // window updates, pings, resets and echoes of at most 16 bytes per read.
        assert!(sent.len() <= 64 * input.len() + 64, "{} bytes out for {} in", sent.len(), input.len());
    }
});
