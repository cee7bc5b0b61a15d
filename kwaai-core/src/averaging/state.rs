//! Sharing the averaged state with peers that join late (hivemind 1.1.10.post2:
//! hivemind/averaging/averager.py, `rpc_download_state`, `load_state_from_peers`,
//! `_declare_for_download_periodically`).
//!
//! A sharing peer declares itself under `{prefix}.all_averagers` (subkey: its PeerID bytes,
//! value: its priority) and streams `DownloadData`: msgpack metadata in the first message, then
//! every tensor cut into 64 KiB parts (a part with a dtype starts a new tensor).

use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use prost::Message;
use rmpv::Value;

use crate::dht::{Dht, DhtValue};
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::Rpc;
use crate::tensor::stream::{self, DEFAULT_CHUNK_SIZE};
use crate::tensor::{self as wire_tensor, CompressionType, DType, DecodeLimits, Tensor, TensorView};
use crate::wire::averaging::{DownloadData, DownloadRequest};

/// The `DownloadData` messages that carry `metadata` and `tensors` (float32, flattened with their
/// shapes) encoded with `compression`.
pub(crate) fn download_messages(
    metadata: &[u8],
    tensors: &[(Vec<usize>, Vec<f32>)],
    compression: CompressionType,
) -> Result<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    let mut metadata = Some(metadata.to_vec());
    for (shape, values) in tensors {
        let view = TensorView::new(DType::F32, shape, bytemuck::cast_slice(values))?;
        let encoded = wire_tensor::encode(&view, compression)?;
        for part in stream::split(&encoded, DEFAULT_CHUNK_SIZE) {
            let message = DownloadData { metadata: metadata.take().unwrap_or_default(), tensor_part: Some(part) };
            messages.push(message.encode_to_vec());
        }
    }
    Ok(messages)
}

/// Peers declared under `key` as sharing their state, highest priority first (ties in random order).
pub(crate) async fn state_donors(dht: &Dht, key: &str, me: PeerId) -> Vec<PeerId> {
    let entries = match dht.get(Value::String(key.into()), true).await {
        Ok(Some(DhtValue::Dictionary { entries, .. })) => entries,
        _ => return Vec::new(),
    };
    let mut donors: Vec<(f64, f64, PeerId)> = entries
        .into_iter()
        .filter_map(|entry| {
            let priority = match entry.value {
                Value::F64(v) => v,
                Value::F32(v) => f64::from(v),
                Value::Integer(n) => n.as_f64()?,
                _ => return None,
            };
            let Value::Binary(bytes) = entry.subkey else { return None };
            let peer = PeerId::from_bytes(&bytes).ok()?;
            (peer != me).then(|| (priority, rand::random::<f64>(), peer))
        })
        .collect();
    donors.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    donors.into_iter().map(|(_, _, peer)| peer).collect()
}

/// Downloads `peer`'s state: its metadata (msgpack) and tensors. `None` if it sent no metadata
/// (it does not share its state).
pub(crate) async fn download_state(
    rpc: &Rpc,
    peer: PeerId,
    handle_name: &str,
    timeout: Duration,
) -> Result<Option<(Value, Vec<Tensor>)>> {
    let request = DownloadRequest {}.encode_to_vec();
    let mut replies = rpc.call_stream(peer, handle_name, futures::stream::iter([request]), timeout).await?;
    let mut metadata = None;
    let mut parts = Vec::new();
    while let Some(reply) = replies.next().await {
        let message = DownloadData::decode(&reply?[..])
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad DownloadData from {peer}: {e}")))?;
        if !message.metadata.is_empty() {
            metadata = Some(crate::wire::msgpack::unpack(&message.metadata)?);
        }
        if let Some(part) = message.tensor_part {
            parts.push(part);
        }
    }
    let Some(metadata) = metadata else { return Ok(None) };
    let tensors = stream::join(parts, &DecodeLimits::default())?;
    Ok(Some((metadata, tensors)))
}
