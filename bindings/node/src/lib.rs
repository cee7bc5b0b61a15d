//! Node.js bindings of kwaai: one file per core concept (`node.rs`, `error.rs`).
//!
//! Blocking core calls run on libuv's thread pool as `AsyncTask`s, so JavaScript gets Promises
//! and the event loop never blocks.

mod error;
mod node;

pub use error::error_kinds;
pub use node::{Node, NodeConfig};
