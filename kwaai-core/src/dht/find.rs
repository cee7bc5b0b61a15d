//! The pure half of hivemind's `rpc_find` as a caller: the request, the parsing and validation of
//! answers, the merging of answers from several peers ([`SearchState`]) and the decoding of what
//! was found. The native DHT and the browser client both build on it.

use libp2p::PeerId;
use prost::Message;
use rmpv::Value;

use super::id::DhtId;
use super::storage::{DhtTime, DictionaryValue, StoredValue};
use super::validation::{DhtRecord, Validators};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::dht::{FindRequest, FindResponse, FindResult, NodeInfo, ResultType};
use crate::wire::msgpack;

/// Handler names, as hivemind registers them.
pub const RPC_PING: &str = "DHTProtocol.rpc_ping";
/// See [`RPC_PING`].
pub const RPC_STORE: &str = "DHTProtocol.rpc_store";
/// See [`RPC_PING`].
pub const RPC_FIND: &str = "DHTProtocol.rpc_find";

/// The subkey tag of a regular value: msgpack `None`.
pub const IS_REGULAR_VALUE: &[u8] = &[0xc0];
/// The subkey tag of a whole dictionary value.
pub const IS_DICTIONARY: &[u8] = b"";

/// A value found at a peer, before it is merged with other answers.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundValue {
    /// The regular value or the dictionary.
    pub value: StoredValue,
    /// Its expiration (the dictionary's latest one for dictionaries).
    pub expiration: DhtTime,
}

/// What one peer answered for one key of `rpc_find`.
#[derive(Debug, Clone, Default)]
pub struct FindAnswer {
    /// The value it holds, if any.
    pub value: Option<FoundValue>,
    /// The peers it knows nearest to the key, nearest first.
    pub nearest: Vec<(DhtId, PeerId)>,
}

/// One subkey of a dictionary value.
#[derive(Debug, Clone, PartialEq)]
pub struct DictionaryEntry {
    /// The subkey.
    pub subkey: Value,
    /// Its value.
    pub value: Value,
    /// Its expiration.
    pub expiration: DhtTime,
}

/// A value read from the DHT.
#[derive(Debug, Clone, PartialEq)]
pub enum DhtValue {
    /// A plain value.
    Regular {
        /// The value.
        value: Value,
        /// Its expiration.
        expiration: DhtTime,
    },
    /// A dictionary: the live subkeys from every replica, merged.
    Dictionary {
        /// The subkeys, each with its own value and expiration.
        entries: Vec<DictionaryEntry>,
        /// The latest expiration among them.
        expiration: DhtTime,
    },
}

/// The best value seen so far for a key, merged the way hivemind merges answers: dictionaries
/// from different peers are merged per subkey; otherwise the later expiration wins. The source is
/// the node whose answer last raised the expiration (hivemind's `source_node_id`).
#[derive(Debug, Default, Clone)]
pub struct SearchState {
    best: Option<FoundValue>,
    source: Option<DhtId>,
    /// The search may stop once a value expiring at or after this time is found.
    sufficient_expiration: DhtTime,
}

impl SearchState {
    /// A search that may stop at a value expiring at or after `sufficient_expiration`.
    pub fn new(sufficient_expiration: DhtTime) -> Self {
        SearchState { best: None, source: None, sufficient_expiration }
    }

    /// Adds `source`'s answer.
    pub fn add(&mut self, candidate: Option<FoundValue>, source: DhtId, now: DhtTime) {
        let Some(candidate) = candidate else { return };
        if self.finished() {
            return;
        }
        let raises = self.best.as_ref().is_none_or(|best| candidate.expiration > best.expiration);
        match (&mut self.best, candidate) {
            (
                Some(FoundValue { value: StoredValue::Dictionary(mine), expiration }),
                FoundValue { value: StoredValue::Dictionary(theirs), expiration: their_expiration },
            ) => {
                for entry in theirs.entries(now) {
                    mine.store(entry.subkey.clone(), entry.value.clone(), entry.expiration, now);
                }
                *expiration = expiration.max(their_expiration);
            }
            (Some(best), candidate) if raises => *best = candidate,
            (Some(_), _) => {}
            (None, candidate) => self.best = Some(candidate),
        }
        if raises {
            self.source = Some(source);
        }
    }

    /// Whether a sufficient value was found.
    pub fn finished(&self) -> bool {
        self.best.as_ref().is_some_and(|b| b.expiration >= self.sufficient_expiration)
    }

    /// The node the value came from (ours for a local value).
    pub fn source(&self) -> Option<DhtId> {
        self.source
    }

    /// The merged value found, if any.
    pub fn into_value(self) -> Option<FoundValue> {
        self.best
    }
}

/// The bytes of an `rpc_find` request for `keys` from a node that sends `node_info` (an empty
/// node ID for a client).
pub fn find_request(keys: &[DhtId], node_info: NodeInfo) -> Vec<u8> {
    FindRequest { auth: None, keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(), peer: Some(node_info) }
        .encode_to_vec()
}

/// Decodes an `rpc_find` response to a request for `keys`: the answering node's ID (`None` for a
/// client) and one answer per key.
pub fn parse_find_response(
    validators: &Validators,
    keys: &[DhtId],
    bytes: &[u8],
) -> Result<(Option<DhtId>, Vec<FindAnswer>)> {
    let response =
        FindResponse::decode(bytes).map_err(|e| Error::new(ErrorKind::Protocol, format!("bad DHT message: {e}")))?;
    if response.results.len() != keys.len() {
        return Err(Error::new(ErrorKind::Protocol, "FindResponse is not aligned with the request"));
    }
    let sender = sender_node_id(response.peer.as_ref())?;
    let answers: Result<Vec<FindAnswer>> =
        keys.iter().zip(response.results).map(|(key, result)| parse_find_result(validators, key, result)).collect();
    Ok((sender, answers?))
}

/// The node ID in a `NodeInfo`: `None` when absent or empty (client mode).
pub fn sender_node_id(info: Option<&NodeInfo>) -> Result<Option<DhtId>> {
    match info {
        Some(info) if !info.node_id.is_empty() => DhtId::from_slice(&info.node_id).map(Some),
        _ => Ok(None),
    }
}

/// Decodes one `FindResult`; a value that fails validation counts as not found.
pub fn parse_find_result(validators: &Validators, key: &DhtId, result: FindResult) -> Result<FindAnswer> {
    if result.nearest_node_ids.len() != result.nearest_peer_ids.len() {
        return Err(Error::new(ErrorKind::Protocol, "FindResult nearest lists are not aligned"));
    }
    let nearest = result
        .nearest_node_ids
        .iter()
        .zip(&result.nearest_peer_ids)
        .map(|(node, peer)| {
            let peer =
                PeerId::from_bytes(peer).map_err(|e| Error::with_source(ErrorKind::Protocol, "bad peer ID", e))?;
            Ok((DhtId::from_slice(node)?, peer))
        })
        .collect::<Result<Vec<_>>>()?;
    let expiration = result.expiration_time;
    let value = match ResultType::try_from(result.r#type) {
        Ok(ResultType::NotFound) => None,
        Ok(ResultType::FoundRegular) => {
            let record = DhtRecord {
                key: key.as_bytes().to_vec(),
                subkey: IS_REGULAR_VALUE.to_vec(),
                value: result.value,
                expiration,
            };
            validators.validate(&record).then(|| FoundValue { value: StoredValue::Regular(record.value), expiration })
        }
        Ok(ResultType::FoundDictionary) => {
            let dictionary = DictionaryValue::from_msgpack(&result.value)?;
            valid_dictionary(validators, key.as_bytes(), &dictionary)
                .then(|| FoundValue { value: StoredValue::Dictionary(dictionary), expiration })
        }
        Err(_) => return Err(Error::new(ErrorKind::Protocol, format!("unknown FindResult type {}", result.r#type))),
    };
    Ok(FindAnswer { value, nearest })
}

/// Whether every entry of a dictionary passes the validators.
pub fn valid_dictionary(validators: &Validators, key: &[u8], dictionary: &DictionaryValue) -> bool {
    validators.is_empty()
        || dictionary.entries(f64::NEG_INFINITY).all(|e| {
            let record = DhtRecord {
                key: key.to_vec(),
                subkey: msgpack::pack(&e.subkey),
                value: e.value.clone(),
                expiration: e.expiration,
            };
            validators.validate(&record)
        })
}

/// Strips signatures (through the validators) and decodes the values.
pub fn decode_found(validators: &Validators, key: DhtId, found: FoundValue, now: DhtTime) -> Result<DhtValue> {
    let strip = |subkey: Vec<u8>, value: &[u8], expiration| {
        let record = DhtRecord { key: key.as_bytes().to_vec(), subkey, value: value.to_vec(), expiration };
        msgpack::unpack(&validators.strip_value(&record))
    };
    Ok(match found.value {
        StoredValue::Regular(bytes) => DhtValue::Regular {
            value: strip(IS_REGULAR_VALUE.to_vec(), &bytes, found.expiration)?,
            expiration: found.expiration,
        },
        StoredValue::Dictionary(d) => DhtValue::Dictionary {
            entries: d
                .entries(now)
                .map(|e| {
                    let value = strip(msgpack::pack(&e.subkey), &e.value, e.expiration)?;
                    Ok(DictionaryEntry { subkey: e.subkey.clone(), value, expiration: e.expiration })
                })
                .collect::<Result<_>>()?,
            expiration: found.expiration,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::dht::FindResponse;

    #[test]
    fn a_find_response_parses_and_dictionaries_merge_and_decode() {
        let keys = [DhtId::of_key(&Value::from("model.0")), DhtId::of_key(&Value::from("model.1"))];
        let now = 1000.0;
        let (peer, node) = (PeerId::random(), DhtId::of_key(&Value::from("a node")));
        let mut dictionary = DictionaryValue::default();
        dictionary.store(Value::from("server-a"), msgpack::pack(&Value::from(1)), now + 10.0, now);
        let response = FindResponse {
            auth: None,
            results: vec![
                FindResult {
                    r#type: ResultType::FoundDictionary as i32,
                    value: msgpack::pack(&dictionary.to_msgpack(now)),
                    expiration_time: now + 10.0,
                    nearest_node_ids: vec![node.as_bytes().to_vec()],
                    nearest_peer_ids: vec![peer.to_bytes()],
                },
                FindResult { r#type: ResultType::NotFound as i32, ..FindResult::default() },
            ],
            peer: Some(NodeInfo { node_id: node.as_bytes().to_vec() }),
        };
        let (sender, answers) =
            parse_find_response(&Validators::default(), &keys, &response.encode_to_vec()).expect("a valid response");
        assert_eq!(sender, Some(node));
        assert_eq!(answers[0].nearest, [(node, peer)]);
        assert!(answers[1].value.is_none());

        // A second answer adds a subkey; the merged dictionary decodes to both entries.
        let mut state = SearchState::new(f64::INFINITY);
        state.add(answers[0].value.clone(), node, now);
        let mut other = DictionaryValue::default();
        other.store(Value::from("server-b"), msgpack::pack(&Value::from(2)), now + 20.0, now);
        state.add(Some(FoundValue { value: StoredValue::Dictionary(other), expiration: now + 20.0 }), node, now);
        let found = state.into_value().expect("a value");
        assert_eq!(found.expiration, now + 20.0);
        let Ok(DhtValue::Dictionary { entries, .. }) = decode_found(&Validators::default(), keys[0], found, now) else {
            panic!("a dictionary");
        };
        let subkeys: Vec<&str> = entries.iter().filter_map(|e| e.subkey.as_str()).collect();
        assert_eq!(subkeys.len(), 2);
        assert!(subkeys.contains(&"server-a") && subkeys.contains(&"server-b"));

        let misaligned = parse_find_response(&Validators::default(), &keys[..1], &response.encode_to_vec());
        assert_eq!(misaligned.unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(
            find_request(&keys, NodeInfo::default()),
            FindRequest {
                auth: None,
                keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
                peer: Some(NodeInfo::default()),
            }
            .encode_to_vec()
        );
    }
}
