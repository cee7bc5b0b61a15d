//! Calling an expert on another peer as hivemind's `RemoteExpert` does
//! (hivemind/moe/client/expert.py): `rpc_info` for its schema, then `rpc_forward` /
//! `rpc_backward`, streamed in 4 MiB parts once the raw inputs exceed 2 MiB.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::{Device, Tensor as CTensor};
use futures::StreamExt;
use prost::Message;

use super::schema::{ExpertSchema, TensorDescriptor};
use super::server::{RPC_BACKWARD, RPC_BACKWARD_STREAM, RPC_FORWARD, RPC_FORWARD_STREAM, RPC_INFO};
use super::uid::ExpertInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;
use crate::p2p::Rpc;
use crate::tensor::stream::{split, StreamJoiner, PETALS_CHUNK_SIZE};
use crate::tensor::{decode, encode, DecodeLimits, Tensor};
use crate::wire::msgpack;
use crate::wire::runtime::{self, ExpertInfo as ExpertInfoMessage, ExpertRequest, ExpertResponse, ExpertUid};

/// Raw input bytes above which calls are streamed (hivemind's `MAX_UNARY_PAYLOAD_SIZE`).
pub const MAX_UNARY_PAYLOAD_SIZE: usize = 2 << 20;

/// The default limit on one call to a remote expert.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// An expert on another peer. Its schema is fetched once, on first use.
#[derive(Clone)]
pub struct RemoteExpert {
    info: ExpertInfo,
    rpc: Rpc,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    limits: DecodeLimits,
    schema: Arc<OnceLock<ExpertSchema>>,
}

impl std::fmt::Debug for RemoteExpert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteExpert").field("uid", &self.info.uid).field("peer_id", &self.info.peer_id).finish()
    }
}

impl RemoteExpert {
    /// The expert `info` names, called through `node`, each call bounded by `timeout`.
    pub fn new(node: &Node, info: ExpertInfo, timeout: Duration) -> Result<RemoteExpert> {
        Ok(RemoteExpert {
            info,
            rpc: node.rpc()?,
            runtime: node.runtime_handle()?,
            timeout,
            limits: DecodeLimits::default(),
            schema: Arc::new(OnceLock::new()),
        })
    }

    /// The expert `info` names, called through `rpc` on `runtime`.
    pub(super) fn from_parts(
        info: ExpertInfo,
        rpc: Rpc,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    ) -> RemoteExpert {
        RemoteExpert { info, rpc, runtime, timeout, limits: DecodeLimits::default(), schema: Arc::new(OnceLock::new()) }
    }

    /// Its uid.
    pub fn uid(&self) -> &str {
        &self.info.uid
    }

    /// Its uid and peer.
    pub fn expert_info(&self) -> &ExpertInfo {
        &self.info
    }

    /// Its schema, from `rpc_info` (blocking).
    pub fn info(&self) -> Result<ExpertSchema> {
        self.runtime.block_on(self.info_async())
    }

    /// Its schema, from `rpc_info`.
    pub async fn info_async(&self) -> Result<ExpertSchema> {
        if let Some(schema) = self.schema.get() {
            return Ok(schema.clone());
        }
        let request = ExpertUid { uid: self.info.uid.clone() }.encode_to_vec();
        let reply = self.rpc.call_unary(self.info.peer_id, RPC_INFO, request, self.timeout).await?;
        let reply = ExpertInfoMessage::decode(reply.as_slice())
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an ExpertInfo", e))?;
        let schema = ExpertSchema::from_info_value(&msgpack::unpack(&reply.serialized_info)?)?;
        Ok(self.schema.get_or_init(|| schema).clone())
    }

    /// Its outputs for flat `inputs` (positional, then keywords by name), blocking.
    pub fn forward(&self, inputs: &[CTensor]) -> Result<Vec<CTensor>> {
        self.runtime.block_on(self.forward_async(inputs))
    }

    /// Its input gradients for flat `inputs` and `grad_outputs`, blocking.
    pub fn backward(&self, inputs: &[CTensor], grad_outputs: &[CTensor]) -> Result<Vec<CTensor>> {
        self.runtime.block_on(self.backward_async(inputs, grad_outputs))
    }

    /// Its outputs for flat `inputs`.
    pub async fn forward_async(&self, inputs: &[CTensor]) -> Result<Vec<CTensor>> {
        let schema = self.info_async().await?;
        if inputs.len() != schema.flat_inputs().len() {
            return Err(Error::invalid_argument(format!(
                "{} takes {} inputs, got {}",
                self.info.uid,
                schema.flat_inputs().len(),
                inputs.len()
            )));
        }
        let codecs: Vec<&TensorDescriptor> = schema.flat_inputs();
        self.call(inputs, &codecs, false).await
    }

    /// Its input gradients for flat `inputs` and `grad_outputs`.
    pub async fn backward_async(&self, inputs: &[CTensor], grad_outputs: &[CTensor]) -> Result<Vec<CTensor>> {
        let schema = self.info_async().await?;
        if inputs.len() != schema.flat_inputs().len() || grad_outputs.len() != schema.outputs.len() {
            return Err(Error::invalid_argument(format!(
                "{} takes {} inputs and {} output gradients",
                self.info.uid,
                schema.flat_inputs().len(),
                schema.outputs.len()
            )));
        }
        let codecs: Vec<&TensorDescriptor> = schema.flat_inputs().into_iter().chain(&schema.outputs).collect();
        let tensors: Vec<CTensor> = inputs.iter().chain(grad_outputs).cloned().collect();
        self.call(&tensors, &codecs, true).await
    }

    async fn call(&self, tensors: &[CTensor], codecs: &[&TensorDescriptor], backward: bool) -> Result<Vec<CTensor>> {
        let raw_bytes: usize = tensors.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
        let serialized = tensors
            .iter()
            .zip(codecs)
            .map(|(t, d)| Tensor::with_candle_view(t, |v| encode(&v, d.compression))?)
            .collect::<Result<Vec<_>>>()?;
        let outputs = if raw_bytes > MAX_UNARY_PAYLOAD_SIZE {
            self.call_stream(serialized, backward).await?
        } else {
            let name = if backward { RPC_BACKWARD } else { RPC_FORWARD };
            let request =
                ExpertRequest { uid: self.info.uid.clone(), tensors: serialized, metadata: Vec::new() }.encode_to_vec();
            let reply = self.rpc.call_unary(self.info.peer_id, name, request, self.timeout).await?;
            let reply = decode_response(&reply)?;
            reply.tensors.iter().map(|t| decode(t, &self.limits)).collect::<Result<Vec<_>>>()?
        };
        outputs.into_iter().map(|t| t.into_candle(&Device::Cpu)).collect()
    }

    async fn call_stream(&self, serialized: Vec<runtime::Tensor>, backward: bool) -> Result<Vec<Tensor>> {
        let name = if backward { RPC_BACKWARD_STREAM } else { RPC_FORWARD_STREAM };
        let uid = self.info.uid.clone();
        let requests: Vec<Vec<u8>> = serialized
            .iter()
            .flat_map(|t| split(t, PETALS_CHUNK_SIZE))
            .map(|part| ExpertRequest { uid: uid.clone(), tensors: vec![part], metadata: Vec::new() }.encode_to_vec())
            .collect();
        let mut replies =
            self.rpc.call_stream(self.info.peer_id, name, futures::stream::iter(requests), self.timeout).await?;
        let mut joiner = StreamJoiner::new(self.limits);
        let mut outputs = Vec::new();
        while let Some(reply) = replies.next().await {
            for part in decode_response(&reply?)?.tensors {
                outputs.extend(joiner.push(part)?);
            }
        }
        outputs.extend(joiner.finish()?);
        Ok(outputs)
    }
}

fn decode_response(bytes: &[u8]) -> Result<ExpertResponse> {
    ExpertResponse::decode(bytes).map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an ExpertResponse", e))
}
