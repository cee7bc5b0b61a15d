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

mod announce;
mod announcer;
mod backward;
mod forward;
mod handler;
mod inference;
mod info;
mod metadata;
mod pings;
mod prefix;
mod push;
mod reachability;
mod schema;
mod selection;
mod serve;
mod sessions;
pub(crate) mod stream_parts;
mod throughput;

pub use announce::{announce, announcement_expiration, block_records, block_uid, model_record, Span, MODELS_KEY};
pub use announcer::{Announcement, Announcer};
pub use backward::{serve_backward, BackwardService, BACKWARD_TIMEOUT, RPC_BACKWARD, RPC_BACKWARD_STREAM};
pub use forward::{serve_forward, ForwardService, RPC_FORWARD, RPC_FORWARD_STREAM};
pub use handler::{serve_info, InfoService, RPC_INFO};
pub use inference::{cache_bytes_per_token, serve_inference, InferenceService, InferenceSettings, RPC_INFERENCE};
pub use info::{ServerInfo, ServerState, PETALS_VERSION};
pub use prefix::dht_prefix_for_repo;
pub use push::{serve_push, PushCounters, PushService, RPC_PUSH};
pub use reachability::{serve_reachability, Reachability, RPC_CHECK};
pub use schema::{batch_tensor_descriptor, rpc_info_value, BlockSchema, ServerRpcInfo};
pub use selection::{
    choose_best_blocks, choose_best_start, choose_blocks_from_dht, compute_spans, compute_throughputs,
    get_remote_module_infos, RemoteModuleInfo, RemoteSpan,
};
pub use serve::{LoadProgressCallback, Server, ServerConfig};
pub use sessions::{CacheBudget, CacheLease, SessionInbox, SessionRegistry};
pub use throughput::{
    default_cache_dir, measure_compute_rps, measure_throughput_info, network_rps, read_throughput_cache,
    server_throughput, throughput_cache_key, write_throughput_cache, MeasureOptions, ServerThroughput,
    ThroughputConfig, ThroughputInfo, DEFAULT_NETWORK_BITS_PER_SECOND, DEFAULT_RELAY_PENALTY, THROUGHPUT_CACHE_FILE,
};
