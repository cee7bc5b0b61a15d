//! The Petals client: runs a model whose transformer blocks are served by the swarm.
//!
//! [`Client`] reads which servers hold each block from the DHT, pings them, and routes through
//! them as Petals 2.2 does ([`routing`]: least expected latency for inference, long random spans
//! for forward passes; failing servers are banned for a while). [`InferenceSession`] keeps one
//! `rpc_inference` stream per server of the chain; when a server fails it rebuilds that part of
//! the chain and replays the session's inputs to the new servers, so the output is unchanged.
//! [`Client::forward`] and [`Client::backward`] run training passes through routes chosen for
//! throughput. [`Client::generate`] streams tokens ([`TokenStream`]); dropping or cancelling the stream closes
//! every server session. [`ClientEvent`]s report routes, per-hop latencies and retries.
//!
//! [`routing`] and [`ClientConfig`] are pure; everything that calls servers needs the `native` feature.

mod config;
#[cfg(feature = "native")]
mod distributed;
#[cfg(feature = "native")]
mod facade;
#[cfg(feature = "native")]
mod forward;
#[cfg(feature = "native")]
mod generate;
pub mod inference_wire;
pub mod routing;
#[cfg(feature = "native")]
mod sequence;
#[cfg(feature = "native")]
mod session;
pub mod swarm;

pub use config::{ClientConfig, ClientEvent, EventCallback, Hop};
pub use inference_wire::RPC_INFERENCE;
pub use routing::{RemoteSpan, RouteMode};
pub use swarm::RpcInfo;
#[cfg(feature = "native")]
pub use {
    distributed::{dht_prefix_for_dir, DistributedModel},
    facade::{Client, InferenceSession},
    forward::{ForwardPass, RPC_BACKWARD, RPC_BACKWARD_STREAM},
    generate::{GeneratedToken, TokenStream},
    sequence::SequenceManager,
    session::AsyncInferenceSession,
};
