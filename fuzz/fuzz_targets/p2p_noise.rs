//! A peer on an established Noise connection that writes messages of any size, flushed or not,
//! tampers with or cuts the bytes in flight, while our side reads through buffers of any size and
//! writes back. Our side must read exactly what was sent, or a prefix of it once bytes were
//! tampered with, and never more.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kwaai_core::p2p::fuzz_noise(data);
});
