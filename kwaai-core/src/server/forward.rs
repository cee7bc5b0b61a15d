//! `TransformerConnectionHandler.rpc_forward` (unary): a whole sequence through the served span,
//! as petals/server/block_functions.py `run_rpc_forward` computes it.

use std::sync::Arc;

use candle_core::Device;
use prost::Message;

use super::schema::BlockSchema;
use crate::error::{Error, ErrorKind, Result};
use crate::model::BlockSpan;
use crate::node::Node;
use crate::tensor::{decode, encode, CompressionType, DType, DecodeLimits, Tensor};
use crate::wire::runtime::{ExpertRequest, ExpertResponse};

/// The handle name of unary `rpc_forward`.
pub const RPC_FORWARD: &str = "TransformerConnectionHandler.rpc_forward";

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
        let request = ExpertRequest::decode(request)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an rpc_forward request", e))?;
        let chain = self.chain(&request.uid)?;
        let mut tensors = request.tensors.iter().map(|t| decode(t, &self.limits));
        let hidden = tensors.next().ok_or_else(|| protocol("rpc_forward needs hidden states"))??;
        let prompts = tensors.next().transpose()?.filter(|p| p.shape().iter().product::<usize>() > 0);
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
        let output = Tensor::with_candle_view(&output, |view| encode(&view, compression))??;
        Ok(ExpertResponse { tensors: vec![output], metadata: Vec::new() }.encode_to_vec())
    }

    /// The indices of the blocks a space-joined uid chain names, in its order; every one must be
    /// served (petals/server/handler.py `_check_uids`).
    fn chain(&self, chain: &str) -> Result<Vec<usize>> {
        chain
            .split(' ')
            .map(|uid| {
                self.uids.iter().position(|ours| ours == uid).ok_or_else(|| {
                    Error::invalid_argument(format!("Some of the requested uids are not served: {chain:?}"))
                })
            })
            .collect()
    }
}

fn protocol(message: &str) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

fn candle_dtype(dtype: DType) -> Result<candle_core::DType> {
    match dtype {
        DType::F32 => Ok(candle_core::DType::F32),
        DType::BF16 => Ok(candle_core::DType::BF16),
        DType::F16 => Ok(candle_core::DType::F16),
        other => Err(Error::invalid_argument(format!("blocks cannot compute in {}", other.name()))),
    }
}

/// Registers unary `rpc_forward` on `node`, answered by `service` on a blocking thread.
pub fn serve_forward(node: &Node, service: ForwardService) -> Result<()> {
    let service = Arc::new(service);
    node.add_unary_handler(RPC_FORWARD, move |_peer, request| {
        let service = Arc::clone(&service);
        async move {
            tokio::task::spawn_blocking(move || service.reply(&request))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Internal, "the forward task failed", e))?
        }
    })
}
