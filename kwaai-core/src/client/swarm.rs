//! What a client reads about the swarm, without I/O: the servers of a block from its DHT record
//! and the codecs from a server's `rpc_info`. The native sequence manager and the browser client
//! both use it.

use std::str::FromStr;

use libp2p::PeerId;
use rmpv::Value;

use super::config::ClientConfig;
use crate::dht::DhtValue;
use crate::error::{Error, ErrorKind, Result};
use crate::server::ServerInfo;
use crate::tensor::CompressionType;
use crate::wire::msgpack::{self, TENSOR_DESCRIPTOR_EXT};

/// What the client needs from a server's `rpc_info`: the codecs to send tensors with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcInfo {
    /// The codec of hidden states in inference steps (`inference_schema[0][0]`).
    pub inference_compression: CompressionType,
    /// The codec of forward and backward inputs (`forward_schema[0][0]`).
    pub forward_compression: CompressionType,
}

impl RpcInfo {
    /// Reads the codecs from an `rpc_info` map.
    pub fn from_value(value: &Value) -> Result<Self> {
        let map = value.as_map().ok_or_else(|| bad("rpc_info is not a map"))?;
        let field = |name: &str| map.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
        let first_codec = |name: &str| -> Result<CompressionType> {
            let schema = field(name).ok_or_else(|| bad(&format!("rpc_info has no {name}")))?;
            let args = msgpack::as_tuple(schema).and_then(|s| s.first().cloned()).and_then(|a| msgpack::as_tuple(&a));
            let first = args.and_then(|a| a.first().cloned()).ok_or_else(|| bad(&format!("{name} has no args")))?;
            descriptor_compression(&first)
        };
        Ok(RpcInfo {
            inference_compression: first_codec("inference_schema")?,
            forward_compression: first_codec("forward_schema")?,
        })
    }
}

fn descriptor_compression(descriptor: &Value) -> Result<CompressionType> {
    let Value::Ext(TENSOR_DESCRIPTOR_EXT, data) = descriptor else {
        return Err(bad("schema entry is not a tensor descriptor"));
    };
    let map = msgpack::unpack(data)?;
    let code = map
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("compression")))
        .and_then(|(_, v)| v.as_i64())
        .ok_or_else(|| bad("tensor descriptor without compression"))?;
    i32::try_from(code)
        .ok()
        .and_then(|c| CompressionType::try_from(c).ok())
        .ok_or_else(|| bad(&format!("unknown compression {code}")))
}

fn bad(message: &str) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

/// The valid, allowed servers of one block record (bad entries are skipped, as Petals does).
pub fn servers_of(config: &ClientConfig, value: &Option<DhtValue>) -> Vec<(PeerId, ServerInfo)> {
    let Some(DhtValue::Dictionary { entries, .. }) = value else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| {
            let peer = PeerId::from_str(entry.subkey.as_str()?).ok()?;
            let info = match ServerInfo::from_value(&entry.value) {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(%peer, "skipping a bad server record: {e}");
                    return None;
                }
            };
            if let Some(adapter) = &config.active_adapter {
                if !info.adapters.contains(adapter) {
                    return None;
                }
            }
            let allowed = config.allowed_servers.as_ref().is_none_or(|list| list.contains(&peer));
            (allowed && !config.blocked_servers.contains(&peer)).then_some((peer, info))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{rpc_info_value, BlockSchema, ServerRpcInfo};
    use crate::tensor::DType;

    #[test]
    fn codecs_come_from_the_first_schema_entries() {
        let schema = BlockSchema { hidden_size: 8, dtype: DType::BF16, compression: 2 };
        let value = rpc_info_value(ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 1 }, Some(&schema));
        let info = RpcInfo::from_value(&msgpack::unpack(&msgpack::pack(&value)).unwrap()).unwrap();
        assert_eq!(info.inference_compression, CompressionType::Float16);
        assert_eq!(info.forward_compression, CompressionType::Float16);
        let no_schema = rpc_info_value(ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 1 }, None);
        assert_eq!(RpcInfo::from_value(&no_schema).unwrap_err().kind(), ErrorKind::Protocol);
    }
}
