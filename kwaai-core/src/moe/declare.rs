//! Making experts visible in the DHT as hivemind's `declare_experts` does
//! (hivemind/moe/server/dht_handler.py), reading them back (`get_experts`), and re-declaring
//! them periodically while they are served (`DHTHandlerThread`).
//!
//! For each UID: the key `uid` holds the serving peer's base58 ID; the prefix before its last
//! coordinate is a dictionary whose subkey is that coordinate and whose value is the tuple
//! `(uid, peer_b58)` (a 1-D UID `e.5` uses key `e.5.` and subkey −1). Beam search walks these
//! dictionaries.

use std::time::Duration;

use indexmap::IndexMap;
use libp2p::PeerId;
use rmpv::Value;

use super::uid::{is_valid_uid, split_uid, ExpertInfo, FLAT_EXPERT, UID_DELIMITER};
use crate::dht::{dht_time, Dht, DhtTime, DhtValue, StoreItem};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::wire::msgpack;

/// How often hivemind servers re-declare their experts (seconds).
pub const DEFAULT_UPDATE_PERIOD: Duration = Duration::from_secs(30);

/// hivemind's `MAX_DHT_TIME_DISCREPANCY_SECONDS`: the shortest expiration a declaration gets.
const MIN_EXPIRATION: f64 = 3.0;

/// How long each declaration lives for a given re-declaration period: twice the period
/// (hivemind's default).
pub fn default_expiration(update_period: Duration) -> f64 {
    (2.0 * update_period.as_secs_f64()).max(MIN_EXPIRATION)
}

/// The DHT items that declare `uids` as served by `peer` until `expiration`, in hivemind's order
/// (a later UID overwrites an equal prefix entry in place).
pub fn declaration_items(uids: &[String], peer: &PeerId, expiration: DhtTime) -> Result<Vec<StoreItem>> {
    let peer_b58 = peer.to_base58();
    let mut items: IndexMap<(String, Option<i64>), Value> = IndexMap::new();
    for uid in uids {
        if !is_valid_uid(uid) {
            return Err(Error::invalid_argument(format!("{uid:?} is not a valid expert uid")));
        }
        items.insert((uid.clone(), None), Value::from(peer_b58.as_str()));
        let mut prefix = if uid.matches(UID_DELIMITER).count() > 1 {
            uid.clone()
        } else {
            format!("{uid}{UID_DELIMITER}{FLAT_EXPERT}")
        };
        for _ in 0..prefix.matches(UID_DELIMITER).count() - 1 {
            let (parent, coordinate) = split_uid(&prefix)?;
            let entry = msgpack::tuple(vec![Value::from(uid.as_str()), Value::from(peer_b58.as_str())]);
            items.insert((parent.clone(), Some(coordinate)), entry);
            prefix = parent;
        }
    }
    Ok(items
        .into_iter()
        .map(|((key, subkey), value)| StoreItem {
            key: Value::from(key),
            subkey: subkey.map(Value::from),
            value,
            expiration,
        })
        .collect())
}

/// Declares `uids` as served by `node` until `expiration` (blocking); one flag per stored item
/// (see [`declaration_items`]), `true` where a replica accepted it.
pub fn declare_experts(node: &Node, uids: &[String], expiration: DhtTime) -> Result<Vec<bool>> {
    let dht = node.dht()?;
    node.runtime_handle()?.block_on(declare_experts_async(&dht, &node.peer_id(), uids, expiration))
}

/// [`declare_experts`] on a node's DHT, for async callers (`peer`: the node's peer ID).
pub async fn declare_experts_async(
    dht: &Dht,
    peer: &PeerId,
    uids: &[String],
    expiration: DhtTime,
) -> Result<Vec<bool>> {
    let items = declaration_items(uids, peer, expiration)?;
    dht.store_many(items).await
}

/// Finds who serves each of `uids` through `node`'s DHT (blocking): `None` where the DHT has no
/// live declaration.
pub fn get_experts(node: &Node, uids: &[String]) -> Result<Vec<Option<ExpertInfo>>> {
    let dht = node.dht()?;
    node.runtime_handle()?.block_on(get_experts_async(&dht, uids))
}

/// [`get_experts`] for async callers.
pub async fn get_experts_async(dht: &Dht, uids: &[String]) -> Result<Vec<Option<ExpertInfo>>> {
    let found = dht.get_many(uids.iter().map(|u| Value::from(u.as_str())).collect(), false).await?;
    Ok(uids
        .iter()
        .zip(found)
        .map(|(uid, value)| match value {
            Some(DhtValue::Regular { value: Value::String(peer), .. }) => peer
                .as_str()
                .and_then(|p| p.parse::<PeerId>().ok())
                .map(|peer_id| ExpertInfo { uid: uid.clone(), peer_id }),
            _ => None,
        })
        .collect())
}

/// Keeps experts declared while it lives: declares them at once, then every `update_period`
/// with an expiration of [`default_expiration`]. Dropping it stops the re-declarations (the
/// records then expire on their own).
#[derive(Debug)]
pub struct ExpertDeclarer {
    task: tokio::task::JoinHandle<()>,
}

impl ExpertDeclarer {
    /// Declares `uids` on `node` now (failing if none of the items is stored) and keeps
    /// re-declaring them in the background.
    pub fn start(node: &Node, uids: Vec<String>, update_period: Duration) -> Result<ExpertDeclarer> {
        let dht = node.dht()?;
        let peer = node.peer_id();
        let runtime = node.runtime_handle()?;
        let expiration = default_expiration(update_period);
        let stored = runtime.block_on(declare_experts_async(&dht, &peer, &uids, dht_time() + expiration))?;
        if !stored.iter().any(|ok| *ok) {
            tracing::warn!(experts = uids.len(), "no DHT peer accepted the expert declarations yet");
        }
        let task = runtime.spawn(async move {
            let mut ticks = tokio::time::interval(update_period);
            ticks.tick().await; // the first tick is immediate: we just declared
            loop {
                ticks.tick().await;
                match declare_experts_async(&dht, &peer, &uids, dht_time() + expiration).await {
                    Ok(flags) => tracing::debug!(
                        experts = uids.len(),
                        stored = flags.iter().filter(|ok| **ok).count(),
                        "re-declared experts"
                    ),
                    Err(e) => tracing::warn!(error = %e, "re-declaring experts failed"),
                }
            }
        });
        Ok(ExpertDeclarer { task })
    }
}

impl Drop for ExpertDeclarer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(items: &[StoreItem]) -> Vec<(String, Option<i64>)> {
        items.iter().map(|i| (i.key.as_str().unwrap().to_owned(), i.subkey.as_ref().and_then(Value::as_i64))).collect()
    }

    #[test]
    fn declarations_store_the_uid_and_each_intermediate_prefix() {
        let peer = PeerId::random();
        let uids = vec!["ffn.1.2.3".to_owned(), "ffn.1.2.4".to_owned(), "e.5".to_owned()];
        let items = declaration_items(&uids, &peer, 100.0).unwrap();
        let expected = [
            ("ffn.1.2.3", None),
            ("ffn.1.2.", Some(3)),
            ("ffn.1.", Some(2)),
            ("ffn.1.2.4", None),
            ("ffn.1.2.", Some(4)),
            ("e.5", None),
            ("e.5.", Some(-1)),
        ];
        assert_eq!(keys(&items), expected.map(|(k, s)| (k.to_owned(), s)));
        assert_eq!(items[0].value, Value::from(peer.to_base58()));
        // "ffn.1." subkey 2 was overwritten in place by the later uid.
        let tuple = msgpack::as_tuple(&items[2].value).unwrap();
        assert_eq!(tuple, vec![Value::from("ffn.1.2.4"), Value::from(peer.to_base58())]);
        assert!(items.iter().all(|i| i.expiration == 100.0));
        assert!(declaration_items(&["ffn".to_owned()], &peer, 1.0).is_err());
    }
}
