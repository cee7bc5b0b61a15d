//! The Petals server: what a node that serves a span of transformer blocks announces to the swarm.
//!
//! [`ServerInfo`] is the record Petals 2.2 servers write under every block they serve, and
//! [`announce`] writes it (and the `_petals.models` registry entry) to the DHT exactly as a
//! Petals server does, so Petals clients route through this node.

mod announce;
mod info;

pub use announce::{announce, announcement_expiration, block_records, block_uid, model_record, Span, MODELS_KEY};
pub use info::{ServerInfo, ServerState, PETALS_VERSION};
