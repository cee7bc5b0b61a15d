//! Swift and Kotlin bindings of kwaai through UniFFI (proc-macro interface, no UDL).
//!
//! One file per core concept: `node.rs` for `kwaai_core::Node`, `dht.rs` for its DHT calls, `model.rs`
//! for serving and generation, `error.rs` for its errors. The
//! generated sources live in `generated/` and are checked for staleness by `make test`.

mod dht;
mod error;
mod model;
mod node;

pub use dht::DhtRecord;
pub use error::KwaaiError;
pub use model::{DistributedModel, GenerateOptions, Generation, ServeOptions, Server, TokenListener};
pub use node::{Node, NodeConfig};

uniffi::setup_scaffolding!("kwaai");
