//! Forward and backward passes through the chain for fine-tuning, as Petals'
//! `_RemoteSequentialAutogradFunction` runs them (petals/client/sequential_autograd.py,
//! remote_forward_backward.py): the batch is cut into chunks that run concurrently, each through a
//! `max_throughput` route; a failed hop is re-routed from its first block; backward walks the
//! forward route in reverse and re-runs the forward pass of a part whose server failed.

use std::collections::VecDeque;
use std::sync::Arc;

use candle_core::Tensor as CandleTensor;
use futures::future::try_join_all;
use futures::StreamExt;
use prost::Message;
use rmpv::Value;

use super::config::ClientEvent;
use super::inference_wire::{args_structure, encode_candle, no_prompts};
use super::routing::{RemoteSpan, RouteMode};
use super::sequence::SequenceManager;
use crate::error::{Error, ErrorKind, Result};
use crate::server::{block_uid, RPC_FORWARD, RPC_FORWARD_STREAM};
use crate::tensor::stream::{join, split, PETALS_CHUNK_SIZE};
use crate::tensor::{encode, DecodeLimits};
use crate::wire::msgpack;
use crate::wire::runtime::{self, ExpertRequest, ExpertResponse};

/// The handle name of unary `rpc_backward`.
pub const RPC_BACKWARD: &str = "TransformerConnectionHandler.rpc_backward";
/// The handle name of streaming `rpc_backward_stream`.
pub const RPC_BACKWARD_STREAM: &str = "TransformerConnectionHandler.rpc_backward_stream";
/// Tokens per chunk of the batch (rows are grouped up to this many tokens).
const MAX_TOKENS_IN_BATCH: usize = 1024;
/// Inputs larger than this go through the streaming RPCs (hivemind's unary limit, halved).
const MAX_UNARY_INPUT_BYTES: usize = 1 << 20;

/// The hops of one chunk's forward pass, each with the inputs it received.
type Hops = Vec<(RemoteSpan, CandleTensor)>;

/// A forward pass through the chain, kept for its backward pass.
pub struct ForwardPass {
    output: CandleTensor,
    prompts: Option<CandleTensor>,
    /// Per chunk of rows: each hop with the inputs it received.
    chunks: Vec<(std::ops::Range<usize>, Hops)>,
}

impl ForwardPass {
    /// The last block's hidden states, `[batch, tokens, hidden]`.
    pub fn output(&self) -> &CandleTensor {
        &self.output
    }
}

#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

/// Calls one server's `rpc_forward` or `rpc_backward` (or their streaming forms for large
/// inputs) with `tensors`, and returns the tensors of its reply.
async fn call_span(
    manager: &SequenceManager,
    span: &RemoteSpan,
    pass: Pass,
    tensors: &[CandleTensor],
) -> Result<Vec<CandleTensor>> {
    let config = &manager.config;
    let compression = manager.rpc_info().await?.forward_compression;
    let uid = (span.start..span.end).map(|b| block_uid(&config.dht_prefix, b)).collect::<Vec<_>>().join(" ");
    let metadata = Value::Map(vec![
        (Value::from("points"), Value::F64(0.0)),
        (Value::from("active_adapter"), config.active_adapter.as_deref().map_or(Value::Nil, Value::from)),
        (Value::from("args_structure"), args_structure(tensors.len())),
    ]);
    let metadata = msgpack::pack(&metadata);
    let mut encoded = Vec::with_capacity(tensors.len());
    let mut bytes = 0usize;
    for t in tensors {
        bytes += t.elem_count() * t.dtype().size_in_bytes();
        encoded.push(if t.elem_count() == 0 {
            encode(&no_prompts().view(), compression)?
        } else {
            encode_candle(t, compression)?
        });
    }
    let (unary, stream) = match pass {
        Pass::Forward => (RPC_FORWARD, RPC_FORWARD_STREAM),
        Pass::Backward => (RPC_BACKWARD, RPC_BACKWARD_STREAM),
    };
    let replies: Vec<runtime::Tensor> = if bytes > MAX_UNARY_INPUT_BYTES {
        let parts: Vec<Vec<u8>> = encoded
            .iter()
            .flat_map(|t| split(t, PETALS_CHUNK_SIZE))
            .map(|part| {
                ExpertRequest { uid: uid.clone(), tensors: vec![part], metadata: metadata.clone() }.encode_to_vec()
            })
            .collect();
        let opening = manager.rpc.call_stream(span.peer, stream, futures::stream::iter(parts), config.request_timeout);
        let mut replies = tokio::time::timeout(config.connect_timeout, opening)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, format!("opening {stream} on {} timed out", span.peer)))??;
        let mut parts = Vec::new();
        while let Some(reply) = replies.next().await {
            parts.extend(decode_response(&reply?)?.tensors);
        }
        parts
    } else {
        let request = ExpertRequest { uid, tensors: encoded, metadata }.encode_to_vec();
        let reply = manager.rpc.call_unary(span.peer, unary, request, config.request_timeout).await?;
        decode_response(&reply)?.tensors
    };
    join(replies, &DecodeLimits::default())?
        .into_iter()
        .map(|t| Ok(t.into_candle(&candle_core::Device::Cpu)?.to_dtype(candle_core::DType::F32)?))
        .collect()
}

fn decode_response(bytes: &[u8]) -> Result<ExpertResponse> {
    ExpertResponse::decode(bytes)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding a forward/backward reply", e))
}

/// The deep prompts of blocks `span.start..span.end`, or an empty tensor.
fn prompts_for(prompts: Option<&CandleTensor>, span: &RemoteSpan) -> Result<CandleTensor> {
    match prompts {
        Some(p) => Ok(p.narrow(0, span.start as usize, span.len() as usize)?),
        None => Ok(CandleTensor::zeros(0, candle_core::DType::F32, &candle_core::Device::Cpu)?),
    }
}

/// Waits before retry `attempt` after `error` (reporting it), or returns the error when the
/// retries are used up.
async fn backoff(
    manager: &SequenceManager,
    span: Option<&RemoteSpan>,
    block: u32,
    attempt: usize,
    error: Error,
) -> Result<()> {
    let peer = span.map(|s| s.peer);
    manager.on_failure(peer);
    let Some(delay) = manager.retry_delay(attempt) else { return Err(error) };
    tracing::warn!(?peer, block, attempt, "forward/backward failed, retrying in {delay:?}: {error}");
    manager.config.emit(ClientEvent::Retry { peer, block, attempt: attempt + 1, delay, error: error.to_string() });
    tokio::time::sleep(delay).await;
    Ok(())
}

/// Runs `inputs` through blocks `start..end`; returns the output and every hop with its inputs.
async fn sequential_forward(
    manager: &SequenceManager,
    mut inputs: CandleTensor,
    prompts: Option<&CandleTensor>,
    start: u32,
    end: u32,
) -> Result<(CandleTensor, Hops)> {
    let mut hops = Vec::new();
    let mut route: VecDeque<RemoteSpan> = VecDeque::new();
    let mut block = start;
    while block < end {
        let mut attempt = 0;
        loop {
            let mut span = None;
            let outcome = async {
                if route.is_empty() || attempt > 0 {
                    route = manager.make_route(block, end, RouteMode::MaxThroughput, None).await?.into();
                    if let Some(last) = route.back_mut() {
                        last.end = last.end.min(end);
                    }
                }
                let hop = route.pop_front().ok_or_else(|| Error::new(ErrorKind::Internal, "empty route"))?;
                span = Some(hop.clone());
                let out =
                    call_span(manager, &hop, Pass::Forward, &[inputs.clone(), prompts_for(prompts, &hop)?]).await?;
                let out = out
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::new(ErrorKind::Protocol, "rpc_forward returned nothing"))?;
                if out.dims() != inputs.dims() {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("rpc_forward returned {:?} for {:?}", out.dims(), inputs.dims()),
                    ));
                }
                Ok((hop, out))
            }
            .await;
            match outcome {
                Ok((hop, out)) => {
                    manager.on_success(&hop.peer);
                    block = hop.end;
                    hops.push((hop, std::mem::replace(&mut inputs, out)));
                    break;
                }
                Err(e) => backoff(manager, span.as_ref(), block, attempt, e).await?,
            }
            attempt += 1;
        }
    }
    Ok((inputs, hops))
}

/// Walks `hops` backwards from `grad`; returns the gradient of the inputs and, with prompts, of
/// the prompts `[blocks, B, pre, H]`.
async fn sequential_backward(
    manager: &SequenceManager,
    mut grad: CandleTensor,
    mut hops: Hops,
    prompts: Option<&CandleTensor>,
) -> Result<(CandleTensor, Option<CandleTensor>)> {
    let mut grad_prompts_reversed = Vec::new();
    while let Some((mut span, mut inputs)) = hops.pop() {
        let mut attempt = 0;
        loop {
            let outcome = async {
                if attempt > 0 {
                    let (_, redone) =
                        sequential_forward(manager, inputs.clone(), prompts, span.start, span.end).await?;
                    hops.extend(redone);
                    (span, inputs) = hops.pop().ok_or_else(|| Error::new(ErrorKind::Internal, "empty route"))?;
                }
                call_span(manager, &span, Pass::Backward, &[inputs.clone(), grad.clone(), prompts_for(prompts, &span)?])
                    .await
            }
            .await;
            match outcome {
                Ok(mut grads) => {
                    manager.on_success(&span.peer);
                    if grads.is_empty() || (prompts.is_some() && grads.len() < 2) {
                        return Err(Error::new(ErrorKind::Protocol, "rpc_backward returned too few gradients"));
                    }
                    if prompts.is_some() {
                        grad_prompts_reversed.push(grads.remove(1));
                    }
                    grad = grads.swap_remove(0);
                    break;
                }
                Err(e) => backoff(manager, Some(&span), span.start, attempt, e).await?,
            }
            attempt += 1;
        }
    }
    grad_prompts_reversed.reverse();
    let grad_prompts =
        if grad_prompts_reversed.is_empty() { None } else { Some(CandleTensor::cat(&grad_prompts_reversed, 0)?) };
    Ok((grad, grad_prompts))
}

/// Rows per chunk for sequences of `tokens` tokens.
fn rows_per_chunk(tokens: usize) -> usize {
    (MAX_TOKENS_IN_BATCH / tokens.max(1)).max(1)
}

/// Runs hidden states `[B, T, H]` (and deep prompts `[blocks, B, pre, H]`) through every block.
pub(crate) async fn forward(
    manager: Arc<SequenceManager>,
    hidden: &CandleTensor,
    prompts: Option<&CandleTensor>,
) -> Result<ForwardPass> {
    let (b, t, _) =
        hidden.dims3().map_err(|_| Error::invalid_argument("hidden states must be [batch, tokens, hidden]"))?;
    if let Some(p) = prompts {
        let dims = p.dims();
        if dims.len() != 4
            || dims[0] != manager.config.num_blocks as usize
            || (dims[1] != b && dims[1] != 1)
            || dims[2] > t
        {
            return Err(Error::invalid_argument(format!(
                "prompts {dims:?} must be [blocks, batch or 1, prefix <= tokens, hidden]"
            )));
        }
    }
    let hidden = hidden.to_dtype(candle_core::DType::F32)?;
    let prompts = prompts.map(|p| p.to_dtype(candle_core::DType::F32)).transpose()?;
    let step = rows_per_chunk(t);
    let ranges: Vec<std::ops::Range<usize>> = (0..b).step_by(step).map(|r| r..(r + step).min(b)).collect();
    let chunk_prompts = |r: &std::ops::Range<usize>| -> Result<Option<CandleTensor>> {
        Ok(match &prompts {
            Some(p) if p.dim(1)? == b => Some(p.narrow(1, r.start, r.len())?),
            other => other.clone(),
        })
    };
    let runs = ranges.iter().map(|r| {
        let manager = Arc::clone(&manager);
        let rows = hidden.narrow(0, r.start, r.len());
        let p = chunk_prompts(r);
        async move { sequential_forward(&manager, rows?, p?.as_ref(), 0, manager.config.num_blocks).await }
    });
    let results = try_join_all(runs).await?;
    let outputs: Vec<&CandleTensor> = results.iter().map(|(out, _)| out).collect();
    let output = CandleTensor::cat(&outputs, 0)?;
    let chunks = ranges.into_iter().zip(results.into_iter().map(|(_, hops)| hops)).collect();
    Ok(ForwardPass { output, prompts, chunks })
}

/// The gradients of `sum(pass.output * grad_output)` with respect to the pass's hidden states
/// and (if it had them) deep prompts.
pub(crate) async fn backward(
    manager: Arc<SequenceManager>,
    pass: &ForwardPass,
    grad_output: &CandleTensor,
) -> Result<(CandleTensor, Option<CandleTensor>)> {
    if grad_output.dims() != pass.output.dims() {
        return Err(Error::invalid_argument(format!(
            "grad_output {:?} must match the output {:?}",
            grad_output.dims(),
            pass.output.dims()
        )));
    }
    let grad_output = grad_output.to_dtype(candle_core::DType::F32)?;
    let b = grad_output.dim(0)?;
    let runs = pass.chunks.iter().map(|(rows, hops)| {
        let manager = Arc::clone(&manager);
        let grad = grad_output.narrow(0, rows.start, rows.len());
        let prompts = match &pass.prompts {
            Some(p) if p.dim(1).ok() == Some(b) => p.narrow(1, rows.start, rows.len()).map(Some),
            other => Ok(other.clone()),
        };
        async move { sequential_backward(&manager, grad?, hops.clone(), prompts?.as_ref()).await }
    });
    let results = try_join_all(runs).await?;
    let grads: Vec<&CandleTensor> = results.iter().map(|(g, _)| g).collect();
    let grad_inputs = CandleTensor::cat(&grads, 0)?;
    let grad_prompts: Option<Vec<&CandleTensor>> = results.iter().map(|(_, p)| p.as_ref()).collect();
    let grad_prompts = match (grad_prompts, &pass.prompts) {
        (Some(parts), Some(p)) if p.dim(1)? == b => Some(CandleTensor::cat(&parts, 1)?),
        // Prompts shared by every row: their gradient is the sum over the chunks.
        (Some(parts), Some(_)) => {
            let mut sum = parts[0].clone();
            for g in &parts[1..] {
                sum = sum.add(g)?;
            }
            Some(sum)
        }
        _ => None,
    };
    Ok((grad_inputs, grad_prompts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_chunks_of_about_1024_tokens() {
        assert_eq!(rows_per_chunk(1), 1024);
        assert_eq!(rows_per_chunk(100), 10);
        assert_eq!(rows_per_chunk(4096), 1);
    }

    #[test]
    fn absent_prompts_are_an_empty_tensor_and_present_ones_are_sliced_per_span() {
        let span = RemoteSpan {
            peer: libp2p::PeerId::random(),
            start: 1,
            end: 3,
            info: crate::server::ServerInfo::new(crate::server::ServerState::Online, 1.0),
        };
        assert_eq!(prompts_for(None, &span).unwrap().elem_count(), 0);
        let p = CandleTensor::zeros((4, 2, 3, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(prompts_for(Some(&p), &span).unwrap().dims(), &[2, 2, 3, 8]);
    }
}
