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

/// Serves forward passes through one loaded span whose blocks are named `uids` (in order).
#[derive(Debug, Clone)]
pub struct ForwardService {
    span: Arc<BlockSpan>,
    uids: Vec<String>,
    schema: BlockSchema,
    limits: DecodeLimits,
}

impl ForwardService {
    /// A service for `span`, whose block `i` is named `uids[i]`; outputs use `schema`'s dtype and codec.
    pub fn new(span: Arc<BlockSpan>, uids: Vec<String>, schema: BlockSchema, limits: DecodeLimits) -> Result<Self> {
        if uids.len() != span.blocks().len() {
            return Err(Error::invalid_argument("one uid per block of the span is needed"));
        }
        candle_dtype(schema.dtype)?;
        CompressionType::try_from(schema.compression)
            .map_err(|_| Error::invalid_argument(format!("unknown compression {}", schema.compression)))?;
        Ok(ForwardService { span, uids, schema, limits })
    }

    /// Answers one serialized `ExpertRequest` (`uid` = the space-joined chain, tensors = hidden
    /// states and deep prompts, empty when none) with a serialized `ExpertResponse`.
    pub fn reply(&self, request: &[u8]) -> Result<Vec<u8>> {
        let request = ExpertRequest::decode(request)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an rpc_forward request", e))?;
        self.check_uids(&request.uid)?;
        let mut tensors = request.tensors.iter().map(|t| decode(t, &self.limits));
        let hidden = tensors.next().ok_or_else(|| protocol("rpc_forward needs hidden states"))??;
        let prompts = tensors.next().transpose()?.filter(|p| p.shape().iter().product::<usize>() > 0);
        let dtype = candle_dtype(self.schema.dtype)?;
        let hidden = hidden.into_candle(&Device::Cpu)?.to_dtype(dtype)?;
        let prompts = prompts.map(|p| p.into_candle(&Device::Cpu)).transpose()?;
        let output = self.span.forward(&hidden, prompts.as_ref())?;
        let compression = CompressionType::try_from(self.schema.compression).unwrap_or(CompressionType::None);
        let output = Tensor::with_candle_view(&output, |view| encode(&view, compression))??;
        Ok(ExpertResponse { tensors: vec![output], metadata: Vec::new() }.encode_to_vec())
    }

    fn check_uids(&self, chain: &str) -> Result<()> {
        let requested: Vec<&str> = chain.split(' ').collect();
        if requested.iter().any(|uid| !self.uids.iter().any(|ours| ours == uid)) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("Some of the requested uids are not served: {chain:?}"),
            ));
        }
        if requested != self.uids {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("only the whole served span can be run for now, got {chain:?}"),
            ));
        }
        Ok(())
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
