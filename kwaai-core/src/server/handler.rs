//! Petals' `TransformerConnectionHandler` RPCs served from a node.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;

use super::info::RPC_INFO;
use super::schema::{rpc_info_value, BlockSchema, ServerRpcInfo};
use super::sessions::CacheBudget;
use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;
use crate::wire::msgpack;
use crate::wire::runtime::{ExpertInfo, ExpertUid};

/// The largest `rpc_info` request accepted (it carries one block uid).
const MAX_INFO_REQUEST: usize = 64 * 1024;

/// What `rpc_info` answers about: the served block uids and their schema.
#[derive(Debug, Clone)]
pub struct InfoService {
    uids: HashSet<String>,
    schema: BlockSchema,
    server: ServerRpcInfo,
    /// When set, `cache_tokens_available` is read from this budget: bytes left divided by the
    /// bytes one token takes in one block.
    cache: Option<(CacheBudget, u64)>,
}

impl InfoService {
    /// A service for blocks `uids`, all with `schema`.
    pub fn new(uids: impl IntoIterator<Item = String>, schema: BlockSchema, server: ServerRpcInfo) -> Self {
        InfoService { uids: uids.into_iter().collect(), schema, server, cache: None }
    }

    /// Reports the tokens `budget` can still hold (at `bytes_per_token` per block) instead of a
    /// fixed figure, as Petals does.
    pub fn with_cache(mut self, budget: CacheBudget, bytes_per_token: u64) -> Self {
        self.cache = Some((budget, bytes_per_token.max(1)));
        self
    }

    /// Answers one serialized `ExpertUID` request with a serialized `ExpertInfo`; an unknown uid
    /// is an error, as in Petals.
    pub fn reply(&self, request: &[u8]) -> Result<Vec<u8>> {
        if request.len() > MAX_INFO_REQUEST {
            return Err(Error::new(ErrorKind::Protocol, "rpc_info request too large"));
        }
        let request = ExpertUid::decode(request)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an rpc_info request", e))?;
        let block = if request.uid.is_empty() {
            None
        } else if self.uids.contains(&request.uid) {
            Some(&self.schema)
        } else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("KeyError: {:?} is not served here", request.uid),
            ));
        };
        let mut server = self.server;
        if let Some((budget, bytes_per_token)) = &self.cache {
            server.cache_tokens_available = budget.bytes_left() / bytes_per_token;
        }
        let info = msgpack::pack(&rpc_info_value(server, block));
        Ok(ExpertInfo { serialized_info: info }.encode_to_vec())
    }
}

/// Registers `rpc_info` on `node`, answered by `service`.
pub fn serve_info(node: &Node, service: InfoService) -> Result<()> {
    let service = Arc::new(service);
    node.add_unary_handler(RPC_INFO, move |_peer, request| {
        let service = Arc::clone(&service);
        async move { service.reply(&request) }
    })
}
