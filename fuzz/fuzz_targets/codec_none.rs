//! The None decoder on arbitrary buffers and small shapes.
#![no_main]

#[path = "structured.rs"]
mod structured;

use kwaai_core::tensor::CompressionType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(msg) = structured::message(data, CompressionType::None) {
        structured::check(&msg);
    }
});
