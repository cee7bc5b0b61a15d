//! hivemind's remote experts (hivemind/moe): expert UIDs and their DHT declarations, and serving
//! experts over `ConnectionHandler.rpc_*`.

mod declare;
mod expert;
mod schema;
mod server;
mod uid;

pub use declare::{
    declaration_items, declare_experts, default_expiration, get_experts, ExpertDeclarer, DEFAULT_UPDATE_PERIOD,
};
pub use expert::{autograd_backward, ExpertModule, FeedForwardExpert, FFN_PARAMETERS};
pub use schema::{ExpertSchema, TensorDescriptor};
pub use server::{ExpertServer, RPC_BACKWARD, RPC_BACKWARD_STREAM, RPC_FORWARD, RPC_FORWARD_STREAM, RPC_INFO};
pub use uid::{coordinates, is_valid_prefix, is_valid_uid, split_uid, ExpertInfo, FLAT_EXPERT, UID_DELIMITER};
