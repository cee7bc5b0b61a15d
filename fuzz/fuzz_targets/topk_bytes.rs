//! The top-k sparse gradient layout.
#![no_main]

#[path = "structured.rs"]
mod structured;

use kwaai_core::tensor::gradient::TopK;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sparse) = TopK::from_bytes(data, &structured::LIMITS) {
        assert_eq!(sparse.to_bytes(), data);
        assert_eq!(sparse.to_dense().len(), sparse.numel);
    }
});
