//! A whole runtime.proto `Tensor` message from the network: protobuf parsing, then whichever
//! codec it names. Anything that decodes must re-encode under NONE to the same shape and dtype.
#![no_main]

#[path = "structured.rs"]
mod structured;

use kwaai_core::tensor::{self, CompressionType};
use kwaai_core::wire::runtime;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = runtime::Tensor::decode(data) else { return };
    structured::check(&msg);
    if let Ok(t) = tensor::decode(&msg, &structured::LIMITS) {
        let again = tensor::encode(&t.view(), CompressionType::None).expect("a decoded tensor encodes");
        let back = tensor::decode(&again, &structured::LIMITS).expect("NONE round-trips");
        assert_eq!(back.shape(), t.shape());
        assert_eq!(back.as_bytes(), t.as_bytes());
    }
});
