//! Wire message types: protobuf (prost) and msgpack, byte-compatible with hivemind, p2pd and Petals.
//!
//! Pure data and codecs: no I/O, no tokio, so every decoder can be fuzzed and compiled to wasm32.
//! Protobuf messages are hand-written `prost::Message` structs whose tags and labels follow the
//! reference `.proto` file named in each module's doc (proto2 `required` fields keep `required`).

pub mod averaging;
pub mod dht;
pub mod forward;
pub mod kad;
pub mod msgpack;
pub mod p2pd;
pub mod runtime;
