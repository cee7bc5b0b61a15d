//! hivemind's remote experts (hivemind/moe): expert UIDs and their DHT declarations, serving
//! experts over `ConnectionHandler.rpc_*`, calling remote experts, beam search over the expert
//! grid, and a mixture-of-experts layer that skips experts that fail or time out.

#[cfg(feature = "native")]
mod beam_search;
#[cfg(feature = "native")]
mod declare;
mod expert;
#[cfg(feature = "native")]
mod mixture;
#[cfg(feature = "native")]
mod remote;
mod schema;
#[cfg(feature = "native")]
mod server;
mod uid;

#[cfg(feature = "native")]
pub use beam_search::{MoeBeamSearcher, DEFAULT_CACHE_EXPIRATION};
#[cfg(feature = "native")]
pub use declare::{
    declaration_items, declare_experts, declare_experts_async, default_expiration, get_experts, get_experts_async,
    ExpertDeclarer, DEFAULT_UPDATE_PERIOD,
};
pub use expert::{autograd_backward, ExpertModule, FeedForwardExpert, FFN_PARAMETERS};
#[cfg(feature = "native")]
pub use mixture::{MixtureConfig, MixtureForward, MixtureGradients, RemoteMixtureOfExperts};
#[cfg(feature = "native")]
pub use remote::{RemoteExpert, DEFAULT_CALL_TIMEOUT, MAX_UNARY_PAYLOAD_SIZE};
pub use schema::{ExpertSchema, TensorDescriptor};
#[cfg(feature = "native")]
pub use server::{ExpertServer, RPC_BACKWARD, RPC_BACKWARD_STREAM, RPC_FORWARD, RPC_FORWARD_STREAM, RPC_INFO};
pub use uid::{coordinates, is_valid_prefix, is_valid_uid, split_uid, ExpertInfo, FLAT_EXPERT, UID_DELIMITER};
