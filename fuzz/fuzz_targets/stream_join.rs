//! Joining a stream of parts: the bytes are an `ExpertRequest` whose tensors are the parts.
#![no_main]

#[path = "structured.rs"]
mod structured;

use kwaai_core::tensor::stream;
use kwaai_core::wire::runtime;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = runtime::ExpertRequest::decode(data) else { return };
    let headers = req.tensors.iter().filter(|p| !p.dtype.is_empty()).count();
    if let Ok(tensors) = stream::join(req.tensors, &structured::LIMITS) {
        assert_eq!(tensors.len(), headers);
    }
});
