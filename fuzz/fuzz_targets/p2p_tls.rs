//! A peer on an established TLS connection (our record layer on both sides) that writes records of
//! any size, flushed or not, asks for key updates, tampers with or cuts the bytes in flight, while
//! our side reads through buffers of any size and writes back. Our side must read exactly what was
//! sent, or a prefix of it once bytes were tampered with, and never more.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kwaai_core::p2p::fuzz_tls(data);
});
