//! Node.js bindings of kwaai: one file per core concept (`node.rs`, `dht.rs`, `error.rs`, and
//! `value.rs` for JavaScript values as msgpack values).
//!
//! Blocking core calls run on libuv's thread pool as `AsyncTask`s, so JavaScript gets Promises
//! and the event loop never blocks.

mod dht;
mod error;
mod node;
mod value;

pub use error::error_kinds;
pub use node::{Node, NodeConfig};
