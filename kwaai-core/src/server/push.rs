//! Server-to-server pushes (petals/server/handler.py `rpc_push`, `_push_outputs`): a server sends
//! a step's outputs straight to the session of the next server in the client's chain, which
//! computes the step before the client's own copy of it arrives.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use prost::Message;
use rmpv::Value;

use super::metadata::{sequence, Metadata};
use super::prefix::block_uid;
use super::sessions::SessionRegistry;
use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;
use crate::p2p::Rpc;
use crate::wire::runtime::{self, ExpertRequest, ExpertResponse};

/// The handle name of `rpc_push`.
pub const RPC_PUSH: &str = "TransformerConnectionHandler.rpc_push";

/// How many pushes a server sent and received.
#[derive(Debug, Clone, Default)]
pub struct PushCounters {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl PushCounters {
    /// Pushes delivered to a next server.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Pushes received for one of our open sessions.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Answers `rpc_push`: queues the request into the named open session.
#[derive(Debug, Clone)]
pub struct PushService {
    uids: HashSet<String>,
    sessions: SessionRegistry,
    counters: PushCounters,
    max_message_size: usize,
}

impl PushService {
    /// A service for the blocks `uids`, delivering into `sessions`.
    pub fn new(
        uids: impl IntoIterator<Item = String>,
        sessions: SessionRegistry,
        counters: PushCounters,
        max_message_size: usize,
    ) -> Self {
        PushService { uids: uids.into_iter().collect(), sessions, counters, max_message_size }
    }

    /// Handles one serialized `ExpertRequest`; replies with an empty `ExpertResponse`, also when
    /// the session is unknown (Petals ignores those).
    pub fn reply(&self, request: &[u8]) -> Result<Vec<u8>> {
        if request.len() > self.max_message_size {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("rpc_push request of {} bytes exceeds the limit of {}", request.len(), self.max_message_size),
            ));
        }
        let request = ExpertRequest::decode(request)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an rpc_push request", e))?;
        // A unary handler's error reaches the caller as the exception's repr.
        check_uids(&self.uids, &request.uid)
            .map_err(|e| Error::new(e.kind(), format!("RuntimeError('{}')", e.message())))?;
        let metadata = Metadata::parse(&request.metadata)?;
        let session_id =
            metadata.str("session_id").ok_or_else(|| Error::invalid_argument("KeyError('session_id')"))?.to_owned();
        tracing::debug!(session_id, "rpc_push");
        if self.sessions.push(&session_id, request) {
            self.counters.received.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ExpertResponse::default().encode_to_vec())
    }
}

/// Every block of a space-joined uid chain must be one of `served`
/// (petals/server/handler.py `_check_uids`).
pub(crate) fn check_uids(served: &HashSet<String>, chain: &str) -> Result<Vec<String>> {
    chain
        .split(' ')
        .map(|uid| {
            if served.contains(uid) {
                Ok(uid.to_owned())
            } else {
                Err(Error::invalid_argument(format!("Remote peer does not serve {uid}")))
            }
        })
        .collect()
}

/// Registers `rpc_push` on `node`, answered by `service`.
pub fn serve_push(node: &Node, service: PushService) -> Result<()> {
    let service = Arc::new(service);
    node.add_unary_handler(RPC_PUSH, move |_peer, request| {
        let service = Arc::clone(&service);
        async move { service.reply(&request) }
    })
}

/// Sends step outputs on to the next server of a client's chain.
#[derive(Clone)]
pub(crate) struct Pusher {
    rpc: Rpc,
    dht_prefix: String,
    timeout: Duration,
    counters: PushCounters,
}

impl Pusher {
    pub(crate) fn new(rpc: Rpc, dht_prefix: String, timeout: Duration, counters: PushCounters) -> Self {
        Pusher { rpc, dht_prefix, timeout, counters }
    }

    /// If the step's metadata names `next_servers`, sends `output` (with the step's other
    /// tensors) to the first of them in the background; failures are only logged, as in Petals.
    pub(crate) fn push(&self, step: &ExpertRequest, output: &runtime::Tensor, metadata: &Metadata) {
        let Some(next) = metadata.get("next_servers").and_then(sequence) else { return };
        let Some(first) = next.first() else { return };
        let target = match parse_next_server(first) {
            Ok(target) => target,
            Err(e) => {
                tracing::debug!("not pushing: {e}");
                return;
            }
        };
        let (peer, session_id, start, end) = target;
        let uid = (start..end).map(|i| block_uid(&self.dht_prefix, i)).collect::<Vec<_>>().join(" ");
        let mut next_metadata = metadata.clone();
        next_metadata.set("session_id", Value::from(session_id.clone()));
        next_metadata.set("next_servers", Value::Array(next[1..].to_vec()));
        next_metadata.set("pushed", Value::Boolean(true));
        let mut tensors = vec![output.clone()];
        tensors.extend(step.tensors.iter().skip(1).cloned());
        let request = ExpertRequest { uid, tensors, metadata: next_metadata.to_bytes() }.encode_to_vec();
        let this = self.clone();
        tokio::spawn(async move {
            match this.rpc.call_unary(peer, RPC_PUSH, request, this.timeout).await {
                Ok(_) => {
                    this.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(%peer, session_id, "failed to push outputs to blocks {start}:{end}: {e}"),
            }
        });
    }
}

/// One `next_servers` entry: `(peer_b58, session_id, start, end)`.
fn parse_next_server(entry: &Value) -> Result<(PeerId, String, u32, u32)> {
    let bad = || Error::new(ErrorKind::Protocol, "a next_servers entry is not (peer, session_id, start, end)");
    let items = sequence(entry).ok_or_else(bad)?;
    let [peer, session, start, end] = items.as_slice() else { return Err(bad()) };
    let peer: PeerId = peer.as_str().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let session = session.as_str().ok_or_else(bad)?.to_owned();
    let index = |v: &Value| v.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(bad);
    Ok((peer, session, index(start)?, index(end)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msgpack;

    fn request(uid: &str, metadata: Value) -> Vec<u8> {
        ExpertRequest { uid: uid.into(), tensors: Vec::new(), metadata: msgpack::pack(&metadata) }.encode_to_vec()
    }

    #[test]
    fn pushes_go_to_open_sessions_of_served_blocks() {
        let sessions = SessionRegistry::default();
        let counters = PushCounters::default();
        let service = PushService::new(["m.0".into(), "m.1".into()], sessions.clone(), counters.clone(), 1 << 20);
        let _inbox = sessions.open("s").unwrap();
        let meta = Value::Map(vec![(Value::from("session_id"), Value::from("s"))]);
        assert!(service.reply(&request("m.0 m.1", meta.clone())).unwrap().is_empty());
        assert_eq!(counters.received(), 1);
        let other = Value::Map(vec![(Value::from("session_id"), Value::from("unknown"))]);
        service.reply(&request("m.0", other)).unwrap();
        assert_eq!(counters.received(), 1);
        let err = service.reply(&request("m.2", meta)).unwrap_err();
        assert_eq!(err.message(), "RuntimeError('Remote peer does not serve m.2')");
        let err = service.reply(&request("m.0", Value::Map(Vec::new()))).unwrap_err();
        assert_eq!(err.message(), "KeyError('session_id')");
    }

    #[test]
    fn next_server_entries_are_petals_tuples() {
        let peer = PeerId::random();
        let entry = msgpack::tuple(vec![Value::from(peer.to_base58()), Value::from("sid"), 2.into(), 4.into()]);
        assert_eq!(parse_next_server(&entry).unwrap(), (peer, "sid".to_owned(), 2, 4));
        assert!(parse_next_server(&msgpack::tuple(vec![Value::from("x")])).is_err());
    }
}
