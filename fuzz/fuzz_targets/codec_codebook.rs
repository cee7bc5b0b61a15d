//! The QUANTILE_8BIT / UNIFORM_8BIT decoder (one shared layout) on arbitrary buffers.
#![no_main]

#[path = "structured.rs"]
mod structured;

use kwaai_core::tensor::CompressionType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for codec in [CompressionType::Quantile8bit, CompressionType::Uniform8bit] {
        if let Some(msg) = structured::message(data, codec) {
            structured::check(&msg);
        }
    }
});
