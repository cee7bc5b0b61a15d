//! Serving experts as hivemind's `ConnectionHandler` does (hivemind/moe/server/connection_handler.py):
//! `rpc_info` (ExpertUID → ExpertInfo), unary `rpc_forward` / `rpc_backward`
//! (ExpertRequest → ExpertResponse) and their `_stream` variants (4 MiB parts, every request part
//! naming the same uid).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor as CTensor};
use futures::StreamExt;
use prost::Message;

use super::expert::{candle, ExpertModule};
use super::schema::TensorDescriptor;
use super::uid::is_valid_uid;
use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;
use crate::server::stream_parts::{blocking, collect_parts, reply_parts};
use crate::tensor::stream::{split, StreamJoiner, PETALS_CHUNK_SIZE};
use crate::tensor::{decode, encode, DType, DecodeLimits, Tensor};
use crate::wire::msgpack;
use crate::wire::runtime::{self, ExpertInfo as ExpertInfoMessage, ExpertRequest, ExpertResponse, ExpertUid};

/// The handle name of `rpc_info`.
pub const RPC_INFO: &str = "ConnectionHandler.rpc_info";
/// The handle name of unary `rpc_forward`.
pub const RPC_FORWARD: &str = "ConnectionHandler.rpc_forward";
/// The handle name of streaming `rpc_forward_stream`.
pub const RPC_FORWARD_STREAM: &str = "ConnectionHandler.rpc_forward_stream";
/// The handle name of unary `rpc_backward`.
pub const RPC_BACKWARD: &str = "ConnectionHandler.rpc_backward";
/// The handle name of streaming `rpc_backward_stream`.
pub const RPC_BACKWARD_STREAM: &str = "ConnectionHandler.rpc_backward_stream";

/// The experts one node serves, by uid.
#[derive(Clone, Default)]
pub struct ExpertServer {
    experts: HashMap<String, Arc<dyn ExpertModule>>,
    limits: DecodeLimits,
}

impl std::fmt::Debug for ExpertServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertServer").field("uids", &self.uids()).finish()
    }
}

impl ExpertServer {
    /// A server with no experts whose decoders obey `limits`.
    pub fn new(limits: DecodeLimits) -> ExpertServer {
        ExpertServer { experts: HashMap::new(), limits }
    }

    /// Adds `module` under `uid` (which must be a valid expert uid).
    pub fn add(&mut self, uid: &str, module: Arc<dyn ExpertModule>) -> Result<()> {
        if !is_valid_uid(uid) {
            return Err(Error::invalid_argument(format!("{uid:?} is not a valid expert uid")));
        }
        if module.schema().args.is_empty() && module.schema().kwargs.is_empty() {
            return Err(Error::invalid_argument("an expert must take at least one input"));
        }
        self.experts.insert(uid.to_owned(), module);
        Ok(())
    }

    /// The uids served, sorted.
    pub fn uids(&self) -> Vec<String> {
        let mut uids: Vec<String> = self.experts.keys().cloned().collect();
        uids.sort();
        uids
    }

    fn expert(&self, uid: &str) -> Result<&Arc<dyn ExpertModule>> {
        self.experts.get(uid).ok_or_else(|| Error::invalid_argument(format!("KeyError('{uid}')")))
    }

    /// Answers a serialized `ExpertUID` with a serialized `ExpertInfo`.
    pub fn info(&self, request: &[u8]) -> Result<Vec<u8>> {
        let request = ExpertUid::decode(request).map_err(|e| bad_request("rpc_info", e))?;
        let info = self.expert(&request.uid)?.schema().info_value();
        Ok(ExpertInfoMessage { serialized_info: msgpack::pack(&info) }.encode_to_vec())
    }

    /// Answers a serialized unary `rpc_forward` (`backward`: `rpc_backward`) request.
    pub fn reply(&self, request: &[u8], backward: bool) -> Result<Vec<u8>> {
        let request = ExpertRequest::decode(request).map_err(|e| bad_request("an expert request", e))?;
        let inputs = request.tensors.iter().map(|t| decode(t, &self.limits)).collect::<Result<Vec<_>>>()?;
        let tensors = self.run(&request.uid, inputs, backward)?;
        Ok(ExpertResponse { tensors, metadata: Vec::new() }.encode_to_vec())
    }

    /// Answers the parts of a streamed request with the reply parts.
    pub fn reply_stream(&self, requests: &[Vec<u8>], backward: bool) -> Result<Vec<Vec<u8>>> {
        let mut uid: Option<String> = None;
        let mut joiner = StreamJoiner::new(self.limits);
        let mut inputs = Vec::new();
        for request in requests {
            let request = ExpertRequest::decode(request.as_slice()).map_err(|e| bad_request("an expert request", e))?;
            match &uid {
                None => uid = Some(request.uid),
                Some(first) if *first != request.uid => {
                    return Err(Error::invalid_argument("Expert uids differ in one request"))
                }
                Some(_) => {}
            }
            for part in request.tensors {
                inputs.extend(joiner.push(part)?);
            }
        }
        inputs.extend(joiner.finish()?);
        let uid = uid.ok_or_else(|| Error::new(ErrorKind::Protocol, "a streamed expert call sent no request"))?;
        let outputs = self.run(&uid, inputs, backward)?;
        Ok(outputs
            .iter()
            .flat_map(|t| split(t, PETALS_CHUNK_SIZE))
            .map(|part| ExpertResponse { tensors: vec![part], metadata: Vec::new() }.encode_to_vec())
            .collect())
    }

    /// Runs expert `uid`'s forward (or backward) pass over flat `inputs`; returns the encoded
    /// outputs (or input gradients) in the schema's codecs.
    fn run(&self, uid: &str, inputs: Vec<Tensor>, backward: bool) -> Result<Vec<runtime::Tensor>> {
        let expert = self.expert(uid)?;
        let schema = expert.schema();
        let input_schema = schema.flat_inputs();
        let expected = input_schema.len() + if backward { schema.outputs.len() } else { 0 };
        if inputs.len() != expected {
            return Err(Error::invalid_argument(format!("{uid} expects {expected} tensors, got {}", inputs.len())));
        }
        let descriptors: Vec<&TensorDescriptor> = input_schema
            .iter()
            .copied()
            .chain(if backward { schema.outputs.iter().collect() } else { Vec::new() })
            .collect();
        let tensors = inputs.into_iter().zip(&descriptors).map(|(t, d)| to_candle(t, d)).collect::<Result<Vec<_>>>()?;
        if tensors[0].dims().first().copied().unwrap_or(0) == 0 {
            return Err(Error::invalid_argument("Batch should contain more than 0 samples"));
        }
        let (results, codecs): (Vec<CTensor>, Vec<&TensorDescriptor>) = if backward {
            let (inputs, grads) = tensors.split_at(input_schema.len());
            (expert.backward(inputs, grads)?, input_schema)
        } else {
            (expert.forward(&tensors)?, schema.outputs.iter().collect())
        };
        if results.len() != codecs.len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("{uid} returned {} tensors, its schema has {}", results.len(), codecs.len()),
            ));
        }
        results.iter().zip(codecs).map(|(t, d)| Tensor::with_candle_view(t, |v| encode(&v, d.compression))?).collect()
    }

    /// Registers the five `ConnectionHandler` handlers on `node`; work runs on blocking threads.
    pub fn serve(self, node: &Node) -> Result<()> {
        let server = Arc::new(self);
        let info = Arc::clone(&server);
        node.add_unary_handler(RPC_INFO, move |_peer, request| {
            let server = Arc::clone(&info);
            async move { server.info(&request) }
        })?;
        for (name, backward) in [(RPC_FORWARD, false), (RPC_BACKWARD, true)] {
            let server = Arc::clone(&server);
            node.add_unary_handler(name, move |_peer, request| {
                let server = Arc::clone(&server);
                async move { blocking("expert", move || server.reply(&request, backward)).await }
            })?;
        }
        for (name, backward) in [(RPC_FORWARD_STREAM, false), (RPC_BACKWARD_STREAM, true)] {
            let server = Arc::clone(&server);
            node.add_stream_handler(name, move |_peer, requests| {
                let server = Arc::clone(&server);
                futures::stream::once(async move {
                    let max_bytes = server.limits.max_elements.saturating_mul(16);
                    let parts = collect_parts(requests, max_bytes, name).await?;
                    blocking("expert", move || server.reply_stream(&parts, backward)).await
                })
                .flat_map(reply_parts)
            })?;
        }
        tracing::info!(experts = ?server.uids(), "serving experts");
        Ok(())
    }
}

/// A decoded tensor on the CPU, floats cast to the descriptor's dtype.
fn to_candle(tensor: Tensor, descriptor: &TensorDescriptor) -> Result<CTensor> {
    let is_float = tensor.dtype().is_float();
    let t = tensor.into_candle(&Device::Cpu)?;
    match (is_float, candle_dtype(descriptor.dtype)) {
        (true, Some(dtype)) => t.to_dtype(dtype).map_err(candle),
        _ => Ok(t),
    }
}

fn candle_dtype(dtype: DType) -> Option<candle_core::DType> {
    match dtype {
        DType::F32 => Some(candle_core::DType::F32),
        DType::F16 => Some(candle_core::DType::F16),
        DType::BF16 => Some(candle_core::DType::BF16),
        DType::F64 => Some(candle_core::DType::F64),
        _ => None,
    }
}

fn bad_request(what: &str, e: prost::DecodeError) -> Error {
    Error::with_source(ErrorKind::Protocol, format!("decoding {what}"), e)
}
