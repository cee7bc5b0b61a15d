//! The Petals server: what a node that serves a span of transformer blocks announces to the swarm
//! and the RPCs it answers.
//!
//! [`ServerInfo`] is the record Petals 2.2 servers write under every block they serve, and
//! [`announce`] writes it (and the `_petals.models` registry entry) to the DHT exactly as a
//! Petals server does, so Petals clients route through this node; [`Announcer`] keeps doing so
//! from a background thread through the JOINING, ONLINE and OFFLINE states. [`serve_info`] answers
//! `TransformerConnectionHandler.rpc_info` with the schemas Petals clients read,
//! [`serve_forward`] runs `rpc_forward(_stream)` through a loaded [`crate::model::BlockSpan`],
//! [`serve_inference`] runs inference sessions with caches leased from a [`CacheBudget`], and
//! [`serve_push`] takes the steps other servers push. [`Server`] does all of it from a
//! [`ServerConfig`].
//!
//! The records and schemas ([`ServerInfo`], [`BlockSchema`], [`dht_prefix_for_repo`]) are pure; serving needs
//! the `native` feature.

#[cfg(feature = "native")]
mod announce;
#[cfg(feature = "native")]
mod announcer;
#[cfg(feature = "native")]
mod backward;
#[cfg(feature = "native")]
mod forward;
#[cfg(feature = "native")]
mod handler;
#[cfg(feature = "native")]
mod inference;
mod info;
#[cfg(feature = "native")]
mod metadata;
#[cfg(feature = "native")]
mod pings;
mod prefix;
#[cfg(feature = "native")]
mod push;
#[cfg(feature = "native")]
mod reachability;
mod schema;
#[cfg(feature = "native")]
mod selection;
#[cfg(feature = "native")]
mod serve;
#[cfg(feature = "native")]
mod sessions;
#[cfg(feature = "native")]
pub(crate) mod stream_parts;
#[cfg(feature = "native")]
mod throughput;

#[cfg(feature = "native")]
pub use announce::{announce, announcement_expiration, block_records, model_record, Span, MODELS_KEY};
#[cfg(feature = "native")]
pub use announcer::{Announcement, Announcer};
#[cfg(feature = "native")]
pub use backward::{serve_backward, BackwardService, BACKWARD_TIMEOUT, RPC_BACKWARD, RPC_BACKWARD_STREAM};
#[cfg(feature = "native")]
pub use forward::{serve_forward, ForwardService, RPC_FORWARD, RPC_FORWARD_STREAM};
#[cfg(feature = "native")]
pub use handler::{serve_info, InfoService};
#[cfg(feature = "native")]
pub use inference::{cache_bytes_per_token, serve_inference, InferenceService, InferenceSettings, RPC_INFERENCE};
pub use info::{ServerInfo, ServerState, PETALS_VERSION, RPC_INFO};
pub use prefix::{block_uid, dht_prefix_for_repo};
#[cfg(feature = "native")]
pub use push::{serve_push, PushCounters, PushService, RPC_PUSH};
#[cfg(feature = "native")]
pub use reachability::{serve_reachability, Reachability, RPC_CHECK};
pub use schema::{batch_tensor_descriptor, rpc_info_value, BlockSchema, ServerRpcInfo};
#[cfg(feature = "native")]
pub use selection::{
    choose_best_blocks, choose_best_start, choose_blocks_from_dht, compute_spans, compute_throughputs,
    get_remote_module_infos, RemoteModuleInfo, RemoteSpan,
};
#[cfg(feature = "native")]
pub use serve::{LoadProgressCallback, Server, ServerConfig};
#[cfg(feature = "native")]
pub use sessions::{CacheBudget, CacheLease, SessionInbox, SessionRegistry};
#[cfg(feature = "native")]
pub use throughput::{
    default_cache_dir, measure_compute_rps, measure_throughput_info, network_rps, read_throughput_cache,
    server_throughput, throughput_cache_key, write_throughput_cache, MeasureOptions, ServerThroughput,
    ThroughputConfig, ThroughputInfo, DEFAULT_NETWORK_BITS_PER_SECOND, DEFAULT_RELAY_PENALTY, THROUGHPUT_CACHE_FILE,
};
