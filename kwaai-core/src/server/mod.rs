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
mod forward;
mod handler;
mod inference;
mod info;
mod metadata;
mod pings;
mod prefix;
mod push;
mod schema;
mod serve;
mod sessions;

pub use announce::{announce, announcement_expiration, block_records, block_uid, model_record, Span, MODELS_KEY};
pub use announcer::{Announcement, Announcer};
pub use forward::{serve_forward, ForwardService, RPC_FORWARD, RPC_FORWARD_STREAM};
pub use handler::{serve_info, InfoService, RPC_INFO};
pub use inference::{cache_bytes_per_token, serve_inference, InferenceService, InferenceSettings, RPC_INFERENCE};
pub use info::{ServerInfo, ServerState, PETALS_VERSION};
pub use prefix::dht_prefix_for_repo;
pub use push::{serve_push, PushCounters, PushService, RPC_PUSH};
pub use schema::{batch_tensor_descriptor, rpc_info_value, BlockSchema, ServerRpcInfo};
pub use serve::{Server, ServerConfig};
pub use sessions::{CacheBudget, CacheLease, SessionInbox, SessionRegistry};
