//! Decentralized averaging, compatible with hivemind's `DecentralizedAverager`
//! (hivemind 1.1.10.post2: hivemind/averaging/): peers find groups through the DHT, then
//! average their tensors with butterfly all-reduce, with weights and tensor codecs, and share
//! their state with peers that join late.
//!
//! [`DecentralizedAverager`] is the entry point; it averages float32 tensors and takes part as a
//! full node (it neither runs in client mode nor as an auxiliary peer, but groups with Python
//! peers that do). The other modules are its parts, public where their hivemind-compatible
//! arithmetic is useful on its own.

mod allreduce;
mod averager;
pub mod keys;
pub mod load_balancing;
mod matchmaking;
pub mod partition;
mod python_random;
mod state;

use libp2p::PeerId;

pub use averager::{AveragerConfig, AveragingStage, DecentralizedAverager, AVERAGER_CLASS};
pub use keys::{AveragingMode, GatherInfo, TensorSchema};

use crate::error::{Error, ErrorKind, Result};
use crate::wire::averaging::MessageFromLeader;

/// A group formed by matchmaking (hivemind's `GroupInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's random id, chosen by its leader.
    pub group_id: Vec<u8>,
    /// The members, in all-reduce order.
    pub peer_ids: Vec<PeerId>,
    /// Every member's gather blob, in the same order (see [`GatherInfo`]).
    pub gathered: Vec<Vec<u8>>,
}

impl GroupInfo {
    /// The number of members.
    pub fn size(&self) -> usize {
        self.peer_ids.len()
    }

    /// Each member's gathered user value (the msgpack the member passed to `step`).
    pub fn user_data(&self) -> Result<Vec<(PeerId, rmpv::Value)>> {
        self.peer_ids
            .iter()
            .zip(&self.gathered)
            .map(|(peer, blob)| Ok((*peer, crate::wire::msgpack::unpack(&GatherInfo::decode(blob)?.user_data)?)))
            .collect()
    }

    fn from_leader(message: &MessageFromLeader) -> Result<GroupInfo> {
        let bad = |what: String| Error::new(ErrorKind::Protocol, format!("bad BEGIN_ALLREDUCE: {what}"));
        if message.ordered_peer_ids.len() != message.gathered.len() || message.ordered_peer_ids.is_empty() {
            return Err(bad(format!(
                "{} peers but {} gather blobs",
                message.ordered_peer_ids.len(),
                message.gathered.len()
            )));
        }
        let peer_ids = message
            .ordered_peer_ids
            .iter()
            .map(|bytes| PeerId::from_bytes(bytes).map_err(|e| bad(format!("peer id: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupInfo { group_id: message.group_id.clone(), peer_ids, gathered: message.gathered.clone() })
    }
}
