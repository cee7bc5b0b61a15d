//! The bytes of Petals' `rpc_inference` as a client sends and reads them
//! (petals/client/inference_session.py `_ServerInferenceSession.step`): the request of one step
//! with its metadata, the closing request, and the decoding of a reply. Pure: the native session
//! and the browser client both use it.

use candle_core::{Device, Tensor as CandleTensor};
use prost::Message;
use rmpv::Value;

use super::routing::RemoteSpan;
use crate::error::{Error, ErrorKind, Result};
use crate::server::block_uid;
use crate::tensor::{decode, encode, CompressionType, Data, DecodeLimits, Tensor};
use crate::wire::msgpack;
use crate::wire::runtime::{ExpertRequest, ExpertResponse};

/// The handle name of Petals' `rpc_inference`.
pub const RPC_INFERENCE: &str = "TransformerConnectionHandler.rpc_inference";

/// A fresh random UUID (version 4) in its text form, as Python's `str(uuid.uuid4())`.
pub fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// `((b"__T0", b"__T1", ...), {})`: where Petals' `pack_args_kwargs` put `count` positional tensors.
pub fn args_structure(count: usize) -> Value {
    let args = (0..count).map(|i| Value::Binary(format!("__T{i}").into_bytes())).collect();
    msgpack::tuple(vec![msgpack::tuple(args), Value::Map(Vec::new())])
}

/// Serializes a candle tensor with `compression` (integer tensors always go uncompressed).
pub fn encode_candle(t: &CandleTensor, compression: CompressionType) -> Result<crate::wire::runtime::Tensor> {
    Tensor::with_candle_view(t, |view| {
        let codec = if view.dtype().is_float() { compression } else { CompressionType::None };
        encode(&view, codec)
    })?
}

/// An empty float32 tensor: "no deep prompts".
pub fn no_prompts() -> Tensor {
    Tensor::new(vec![0], Data::F32(Vec::new())).expect("an empty tensor")
}

/// Decodes a reply's first tensor into a float32 candle tensor.
pub fn decode_hidden(response: &[u8], what: &str) -> Result<CandleTensor> {
    let response = ExpertResponse::decode(response)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, format!("decoding the {what} reply"), e))?;
    let first = response
        .tensors
        .first()
        .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("{what} reply has no tensor")))?;
    let tensor = decode(first, &DecodeLimits::default())?;
    Ok(tensor.into_candle(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?)
}

/// The space-separated block UIDs of blocks `start..end`, as a request's `uid`.
pub fn span_uid(dht_prefix: &str, start: u32, end: u32) -> String {
    (start..end).map(|b| block_uid(dht_prefix, b)).collect::<Vec<_>>().join(" ")
}

/// What the first step of a server session adds to its metadata.
#[derive(Debug, Clone, Copy)]
pub struct StepOpening<'a> {
    /// The session's capacity in tokens.
    pub max_length: usize,
    /// The adapter the server should apply, if any.
    pub active_adapter: Option<&'a str>,
}

/// The bytes of one `rpc_inference` step request: hidden states `inputs` `[B, n, H]`, no deep
/// prompts, no hypothesis reordering; `opening` on the session's first step, `next_servers`
/// (see [`next_server`]) on later ones.
pub fn step_request(
    uid: &str,
    session_id: &str,
    step_id: &str,
    opening: Option<StepOpening<'_>>,
    next_servers: Vec<Value>,
    inputs: &CandleTensor,
    compression: CompressionType,
) -> Result<Vec<u8>> {
    let mut metadata = vec![("session_id", Value::from(session_id)), ("step_id", Value::from(step_id))];
    if let Some(opening) = opening {
        metadata.extend([
            ("max_length", Value::from(opening.max_length as u64)),
            ("points", Value::F64(0.0)),
            ("active_adapter", opening.active_adapter.map_or(Value::Nil, Value::from)),
        ]);
    } else if !next_servers.is_empty() {
        metadata.push(("next_servers", Value::Array(next_servers)));
    }
    metadata.push(("args_structure", args_structure(3)));
    let metadata = Value::Map(metadata.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
    let hypo_ids = Tensor::new(vec![0], Data::I64(Vec::new()))?;
    let request = ExpertRequest {
        uid: uid.to_owned(),
        tensors: vec![
            encode_candle(inputs, compression)?,
            encode(&no_prompts().view(), compression)?,
            encode(&hypo_ids.view(), CompressionType::None)?,
        ],
        metadata: msgpack::pack(&metadata),
    };
    Ok(request.encode_to_vec())
}

/// The request that ends a session (an empty `ExpertRequest`), sent before the end of the stream.
pub fn close_request() -> Vec<u8> {
    ExpertRequest::default().encode_to_vec()
}

/// One entry of a step's `next_servers`: `(peer, session_id, start, end)` of a downstream session.
pub fn next_server(span: &RemoteSpan, session_id: &str) -> Value {
    msgpack::tuple(vec![
        Value::from(span.peer.to_base58()),
        Value::from(session_id),
        Value::from(span.start),
        Value::from(span.end),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_structure_packs_as_petals_pack_args_kwargs() {
        // ((b"__T0", b"__T1", b"__T2"), {}) as hivemind's MSGPackSerializer writes it.
        let expected = [
            0xc7, 0x18, 0x40, 0x92, 0xc7, 0x13, 0x40, 0x93, 0xc4, 0x04, b'_', b'_', b'T', b'0', 0xc4, 0x04, b'_', b'_',
            b'T', b'1', 0xc4, 0x04, b'_', b'_', b'T', b'2', 0x80,
        ];
        assert_eq!(msgpack::pack(&args_structure(3)), expected);
    }

    #[test]
    fn session_ids_are_uuid4_strings() {
        let id = uuid4();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]), "{id}");
        assert_ne!(uuid4(), id);
    }
}
