//! kwaai-core: a node of the Petals / hivemind swarm.
//!
//! [`Node`] is the entry point: it owns a tokio runtime and a libp2p host that speaks the same
//! wire as Python hivemind peers. Every fallible call returns [`Error`], whose [`ErrorKind`] is the
//! stable, coarse classification shared by the C ABI and every language binding.
//!
//! The default feature `native` brings everything that needs the operating system (the libp2p host,
//! [`Node`], the server, the client's network calls, memory-mapped checkpoints). Without it the crate is
//! its pure layers, which compile for `wasm32-unknown-unknown`: [`wire`], [`tensor`], the DHT's ids,
//! records, routing table and storage ([`dht`]), the client's routing ([`client::routing`]), the
//! client's ends of the model ([`model`]), the Petals server records ([`server::ServerInfo`]) and the
//! remote experts' UIDs and schemas ([`moe`]).

#[cfg(feature = "native")]
pub mod averaging;
pub mod client;
#[cfg(feature = "native")]
mod config;
pub mod dht;
mod error;
#[cfg(feature = "native")]
mod exchange;
#[cfg(feature = "native")]
mod identity;
pub mod model;
pub mod moe;
#[cfg(feature = "native")]
mod node;
pub mod p2p;
pub mod server;
pub mod tensor;
pub mod wire;

pub use client::ClientConfig;
pub use error::{Error, ErrorKind, Result};
#[cfg(feature = "native")]
pub use native_api::*;
pub use tensor::training::Compression;
pub use tensor::Tensor;

/// Peer IDs and multiaddrs as libp2p defines them.
pub use libp2p::{Multiaddr, PeerId};

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The node and what it owns or speaks: only with the `native` feature.
#[cfg(feature = "native")]
mod native_api {
    pub use crate::client::Client;
    pub use crate::config::NodeConfig;
    pub use crate::exchange::{
        ReceivedTensor, MAX_TENSOR_NAME, PUSH_CHUNK_SIZE, STREAM_THRESHOLD, TENSOR_PUSH, TENSOR_PUSH_STREAM,
    };
    pub use crate::identity::Identity;
    pub use crate::node::Node;
    pub use crate::p2p::{PeerInfo, Security};
}
