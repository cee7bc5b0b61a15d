//! `TransformerConnectionHandler.rpc_forward` (unary): a whole sequence through the served span,
//! as petals/server/block_functions.py `run_rpc_forward` computes it.

use std::sync::Arc;

use candle_core::Device;
use futures::StreamExt;
use prost::Message;

use super::schema::BlockSchema;
use super::stream_parts::{blocking, collect_parts, reply_parts};
use crate::error::{Error, ErrorKind, Result};
use crate::model::BlockSpan;
use crate::node::Node;
use crate::tensor::stream::{split, StreamJoiner, PETALS_CHUNK_SIZE};
use crate::tensor::{decode, encode, CompressionType, DType, DecodeLimits, Tensor};
use crate::wire::runtime::{self, ExpertRequest, ExpertResponse};

/// The handle name of unary `rpc_forward`.
pub const RPC_FORWARD: &str = "TransformerConnectionHandler.rpc_forward";
/// The handle name of streaming `rpc_forward_stream`.
pub const RPC_FORWARD_STREAM: &str = "TransformerConnectionHandler.rpc_forward_stream";

/// Serves forward passes through loaded blocks: any chain of the served uids, as Petals does.
#[derive(Debug, Clone)]
pub struct ForwardService {
    blocks: Arc<Vec<BlockSpan>>,
    uids: Vec<String>,
    schema: BlockSchema,
    limits: DecodeLimits,
}

impl ForwardService {
    /// A service for `blocks` (one-block spans), where `blocks[i]` is named `uids[i]`; outputs
    /// use `schema`'s dtype and codec.
    pub fn new(blocks: Vec<BlockSpan>, uids: Vec<String>, schema: BlockSchema, limits: DecodeLimits) -> Result<Self> {
        if uids.len() != blocks.len() || blocks.iter().any(|b| b.blocks().len() != 1) {
            return Err(Error::invalid_argument("one uid per one-block span is needed"));
        }
        let blocks = Arc::new(blocks);
        candle_dtype(schema.dtype)?;
        CompressionType::try_from(schema.compression)
            .map_err(|_| Error::invalid_argument(format!("unknown compression {}", schema.compression)))?;
        Ok(ForwardService { blocks, uids, schema, limits })
    }

    /// Answers one serialized `ExpertRequest` (`uid` = the space-joined chain, tensors = hidden
    /// states and deep prompts, empty when none) with a serialized `ExpertResponse`.
    pub fn reply(&self, request: &[u8]) -> Result<Vec<u8>> {
        let request = decode_request(request)?;
        let inputs = request.tensors.iter().map(|t| decode(t, &self.limits)).collect::<Result<Vec<_>>>()?;
        let output = self.run(&request.uid, inputs)?;
        Ok(ExpertResponse { tensors: vec![output], metadata: Vec::new() }.encode_to_vec())
    }

    /// Answers the serialized `ExpertRequest` parts of one `rpc_forward_stream` call (tensors split
    /// as hivemind streams them, every part naming the same uid) with the response parts.
    pub fn reply_stream(&self, requests: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let mut uid: Option<String> = None;
        let mut joiner = StreamJoiner::new(self.limits);
        let mut inputs = Vec::new();
        for request in requests {
            let request = decode_request(request)?;
            match &uid {
                None => uid = Some(request.uid),
                Some(first) if *first != request.uid => {
                    return Err(Error::invalid_argument("Block uids differ in one request"))
                }
                Some(_) => {}
            }
            for part in request.tensors {
                inputs.extend(joiner.push(part)?);
            }
        }
        inputs.extend(joiner.finish()?);
        let uid = uid.ok_or_else(|| protocol("rpc_forward_stream got no request"))?;
        let output = self.run(&uid, inputs)?;
        Ok(split(&output, PETALS_CHUNK_SIZE)
            .into_iter()
            .map(|part| ExpertResponse { tensors: vec![part], metadata: Vec::new() }.encode_to_vec())
            .collect())
    }

    /// Runs the chain `uid` over `inputs` (hidden states, then deep prompts or an empty tensor).
    fn run(&self, uid: &str, inputs: Vec<Tensor>) -> Result<runtime::Tensor> {
        let chain = self.chain(uid)?;
        let mut inputs = inputs.into_iter();
        let hidden = inputs.next().ok_or_else(|| protocol("rpc_forward needs hidden states"))?;
        let prompts = inputs.next().filter(|p| p.shape().iter().product::<usize>() > 0);
        let dtype = candle_dtype(self.schema.dtype)?;
        let hidden = hidden.into_candle(&Device::Cpu)?.to_dtype(dtype)?;
        let prompts = prompts.map(|p| p.into_candle(&Device::Cpu)).transpose()?;
        if let Some(p) = &prompts {
            if p.dims().first() != Some(&chain.len()) {
                return Err(Error::invalid_argument(format!(
                    "prompts must have one row per requested block ({}), got {:?}",
                    chain.len(),
                    p.dims()
                )));
            }
        }
        let mut output = hidden;
        for (row, &block) in chain.iter().enumerate() {
            let prompt = prompts.as_ref().map(|p| p.narrow(0, row, 1)).transpose()?;
            output = self.blocks[block].forward(&output, prompt.as_ref())?;
        }
        let compression = CompressionType::try_from(self.schema.compression).unwrap_or(CompressionType::None);
        Tensor::with_candle_view(&output, |view| encode(&view, compression))?
    }

    /// The indices of the blocks a space-joined uid chain names, in its order; every one must be
    /// served (petals/server/handler.py `_check_uids`).
    fn chain(&self, chain: &str) -> Result<Vec<usize>> {
        chain
            .split(' ')
            .map(|uid| {
                self.uids
                    .iter()
                    .position(|ours| ours == uid)
                    .ok_or_else(|| Error::invalid_argument(format!("Remote peer does not serve {uid}")))
            })
            .collect()
    }
}

fn decode_request(bytes: &[u8]) -> Result<ExpertRequest> {
    ExpertRequest::decode(bytes)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an rpc_forward request", e))
}

fn protocol(message: &str) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

/// The candle dtype blocks compute in for a served `dtype`; other dtypes cannot be served.
pub(super) fn candle_dtype(dtype: DType) -> Result<candle_core::DType> {
    match dtype {
        DType::F32 => Ok(candle_core::DType::F32),
        DType::BF16 => Ok(candle_core::DType::BF16),
        DType::F16 => Ok(candle_core::DType::F16),
        other => Err(Error::invalid_argument(format!("blocks cannot compute in {}", other.name()))),
    }
}

/// Registers `rpc_forward` and `rpc_forward_stream` on `node`, answered by `service` on
/// blocking threads.
pub fn serve_forward(node: &Node, service: ForwardService) -> Result<()> {
    let service = Arc::new(service);
    let unary = Arc::clone(&service);
    node.add_unary_handler(RPC_FORWARD, move |_peer, request| {
        let service = Arc::clone(&unary);
        async move { blocking("forward", move || service.reply(&request)).await }
    })?;
    node.add_stream_handler(RPC_FORWARD_STREAM, move |_peer, requests| {
        let service = Arc::clone(&service);
        futures::stream::once(async move {
            // Hidden states and prompts, at most `max_elements` each of at most 8 bytes.
            let max_bytes = service.limits.max_elements.saturating_mul(16);
            let parts = collect_parts(requests, max_bytes, "rpc_forward_stream").await?;
            blocking("forward", move || service.reply_stream(&parts)).await
        })
        .flat_map(reply_parts)
    })
}
