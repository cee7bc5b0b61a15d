//! Node.js bindings of kwaai: one file per core concept (`node.rs`, `dht.rs`, `server.rs`,
//! `model.rs` for generation, `exchange.rs` for pushed tensors, `error.rs`, and `value.rs` for JavaScript values as msgpack values).
//!
//! Blocking core calls run on libuv's thread pool as `AsyncTask`s, so JavaScript gets Promises
//! and the event loop never blocks.

mod dht;
mod error;
mod exchange;
mod model;
mod node;
mod server;
mod value;

pub use error::error_kinds;
pub use exchange::{PushOptions, PushTask};
pub use model::{DistributedModel, TokenStream};
pub use node::{Node, NodeConfig};
pub use server::Server;
