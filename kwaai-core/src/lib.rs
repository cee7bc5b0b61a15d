//! kwaai-core: a node of the Petals / hivemind swarm.
//!
//! [`Node`] is the entry point: it owns a tokio runtime and a libp2p host that speaks the same
//! wire as Python hivemind peers. Every fallible call returns [`Error`], whose [`ErrorKind`] is the
//! stable, coarse classification shared by the C ABI and every language binding.

pub mod averaging;
pub mod client;
mod config;
pub mod dht;
mod error;
mod exchange;
mod identity;
pub mod model;
pub mod moe;
mod node;
pub mod p2p;
pub mod server;
pub mod tensor;
pub mod wire;

pub use client::{Client, ClientConfig};
pub use config::NodeConfig;
pub use error::{Error, ErrorKind, Result};
pub use exchange::{
    ReceivedTensor, MAX_TENSOR_NAME, PUSH_CHUNK_SIZE, STREAM_THRESHOLD, TENSOR_PUSH, TENSOR_PUSH_STREAM,
};
pub use identity::Identity;
pub use node::Node;
pub use p2p::PeerInfo;
pub use tensor::training::Compression;
pub use tensor::Tensor;

/// Peer IDs and multiaddrs as libp2p defines them.
pub use libp2p::{Multiaddr, PeerId};

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
