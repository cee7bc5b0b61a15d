//! `TransformerConnectionHandler.rpc_backward` and `rpc_backward_stream`: gradients through a
//! chain of served blocks, as petals/server/block_functions.py `run_rpc_backward` computes them.
//!
//! A request carries `[inputs, grad_outputs, prompts]` (prompts empty when none). The server runs
//! the chain forward to recover every block's input (prompts added), then back through each block
//! in reverse order. It replies with the gradient of the chain's inputs and, when prompts were
//! given, the gradient of the prompts `(blocks, batch, prefix, hidden)`, both in the block schema's
//! dtype and codec (or the codecs `output_compression` names). Failures carry the text a Petals
//! server sends for the same request: `repr(exception)` for unary calls, `str(exception)` for
//! streams.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor as CTensor};
use futures::StreamExt;
use prost::Message;
use rmpv::Value;

use super::forward::candle_dtype;
use super::schema::BlockSchema;
use super::stream_parts::{blocking, collect_parts, reply_parts};
use crate::error::{Error, ErrorKind, Result};
use crate::model::BlockSpan;
use crate::node::Node;
use crate::tensor::stream::{split, StreamJoiner, PETALS_CHUNK_SIZE};
use crate::tensor::{decode, encode, CompressionType, DecodeLimits, Tensor};
use crate::wire::msgpack;
use crate::wire::runtime::{self, ExpertRequest, ExpertResponse};

/// The handle name of unary `rpc_backward`.
pub const RPC_BACKWARD: &str = "TransformerConnectionHandler.rpc_backward";
/// The handle name of streaming `rpc_backward_stream`.
pub const RPC_BACKWARD_STREAM: &str = "TransformerConnectionHandler.rpc_backward_stream";
/// How long one backward request may take (Petals' default `request_timeout`).
pub const BACKWARD_TIMEOUT: Duration = Duration::from_secs(180);

/// How Petals names its backend class in shape assertions.
const BACKEND_CLASS: &str = "<class 'petals.server.backend.TransformerBackend'>";

/// Serves backward passes through loaded blocks: any chain of the served uids, as Petals does.
#[derive(Debug, Clone)]
pub struct BackwardService {
    blocks: Arc<Vec<BlockSpan>>,
    uids: Vec<String>,
    schema: BlockSchema,
    limits: DecodeLimits,
}

/// A failure as a Python Petals server would raise it: the exception class and its message.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    class: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: ErrorKind, class: &'static str, message: impl Into<String>) -> Self {
        Failure { kind, class, message: message.into() }
    }

    fn assertion(message: impl Into<String>) -> Self {
        Failure::new(ErrorKind::InvalidArgument, "AssertionError", message)
    }

    fn runtime(message: impl Into<String>) -> Self {
        Failure::new(ErrorKind::InvalidArgument, "RuntimeError", message)
    }

    /// `str(exception)`, what hivemind sends when a stream handler raises.
    fn into_stream_error(self) -> Error {
        let text = if self.class == "KeyError" { python_repr(&self.message) } else { self.message };
        Error::new(self.kind, text)
    }

    /// `repr(exception)`, what hivemind sends when a unary handler raises.
    fn into_unary_error(self) -> Error {
        let args = if self.message.is_empty() { String::new() } else { python_repr(&self.message) };
        Error::new(self.kind, format!("{}({args})", self.class))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(e.kind(), "RuntimeError", e.message())
    }
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Self {
        Failure::new(ErrorKind::InvalidArgument, "RuntimeError", e.to_string())
    }
}

/// Python's `repr` of a string: single quotes unless the text holds one and no double quote.
fn python_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// The parts of one backward request that matter once its tensors are decoded.
struct BackwardRequest {
    uid: String,
    chain: Vec<usize>,
    metadata: Value,
    tensors: Vec<Tensor>,
}

impl BackwardService {
    /// A service for `blocks` (one-block spans), where `blocks[i]` is named `uids[i]`; gradients
    /// use `schema`'s dtype and codec.
    pub fn new(blocks: Vec<BlockSpan>, uids: Vec<String>, schema: BlockSchema, limits: DecodeLimits) -> Result<Self> {
        if uids.len() != blocks.len() || blocks.iter().any(|b| b.blocks().len() != 1) {
            return Err(Error::invalid_argument("one uid per one-block span is needed"));
        }
        candle_dtype(schema.dtype)?;
        CompressionType::try_from(schema.compression)
            .map_err(|_| Error::invalid_argument(format!("unknown compression {}", schema.compression)))?;
        Ok(BackwardService { blocks: Arc::new(blocks), uids, schema, limits })
    }

    /// Answers one serialized unary `ExpertRequest` with a serialized `ExpertResponse` holding
    /// the gradients; an error's message is what Petals sends (`repr` of its exception).
    pub fn reply(&self, request: &[u8]) -> Result<Vec<u8>> {
        let grads = self.reply_unary(request).map_err(Failure::into_unary_error)?;
        Ok(ExpertResponse { tensors: grads, metadata: Vec::new() }.encode_to_vec())
    }

    fn reply_unary(&self, request: &[u8]) -> Result<Vec<runtime::Tensor>, Failure> {
        let request = decode_request(request)?;
        let tensors = request.tensors.iter().map(|t| decode(t, &self.limits)).collect::<Result<Vec<_>>>()?;
        let chain = self.chain(&request.uid)?;
        let metadata = parse_metadata(&request.metadata)?;
        self.run(BackwardRequest { uid: request.uid, chain, metadata, tensors }, "rpc_backward")
    }

    /// Answers the serialized `ExpertRequest` parts of one `rpc_backward_stream` call (tensors
    /// split as hivemind streams them, every part naming the same uid; metadata is read from the
    /// first) with the response parts, one tensor part each; an error's message is what Petals
    /// sends (`str` of its exception).
    pub fn reply_stream(&self, requests: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let grads = self.gather_and_run(requests).map_err(Failure::into_stream_error)?;
        Ok(grads
            .iter()
            .flat_map(|grad| split(grad, PETALS_CHUNK_SIZE))
            .map(|part| ExpertResponse { tensors: vec![part], metadata: Vec::new() }.encode_to_vec())
            .collect())
    }

    fn gather_and_run(&self, requests: &[Vec<u8>]) -> Result<Vec<runtime::Tensor>, Failure> {
        let mut first: Option<(String, Value)> = None;
        let mut joiner = StreamJoiner::new(self.limits);
        let mut tensors = Vec::new();
        for request in requests {
            let request = decode_request(request)?;
            match &first {
                None => first = Some((request.uid.clone(), parse_metadata(&request.metadata)?)),
                Some((uid, _)) if *uid != request.uid => {
                    return Err(Failure::new(
                        ErrorKind::InvalidArgument,
                        "ValueError",
                        "Block uids differ in one request",
                    ))
                }
                Some(_) => {}
            }
            for part in request.tensors {
                tensors.extend(joiner.push(part)?);
            }
        }
        tensors.extend(joiner.finish()?);
        let (uid, metadata) = first.ok_or_else(|| Failure::new(ErrorKind::Protocol, "AssertionError", ""))?;
        let chain = self.chain(&uid)?;
        self.run(BackwardRequest { uid, chain, metadata, tensors }, "rpc_backward_stream")
    }

    /// Checks the request as Petals' handler does, then computes and serializes the gradients.
    fn run(&self, request: BackwardRequest, handler: &str) -> Result<Vec<runtime::Tensor>, Failure> {
        tracing::debug!(handler, blocks = %request.uid, "backward request");
        check_adapter(&request.metadata)?;
        check_points(&request.metadata, handler)?;
        let args = unpack_args(request.tensors, &request.metadata)?;
        let output_compression = self.output_compression(&request.metadata, args.prompts.is_some())?;
        let grads = self.backward(&request.chain, args)?;
        let dtype = candle_dtype(self.schema.dtype)?;
        grads
            .iter()
            .zip(output_compression)
            .map(|(grad, compression)| -> Result<runtime::Tensor, Failure> {
                let grad = grad.to_dtype(dtype)?;
                Ok(Tensor::with_candle_view(&grad, |view| encode(&view, compression))??)
            })
            .collect()
    }

    /// `run_rpc_backward` on decoded tensors: the gradient of the inputs, then of the prompts
    /// when there are any.
    fn backward(&self, chain: &[usize], args: BackwardArgs) -> Result<Vec<CTensor>, Failure> {
        let dtype = candle_dtype(self.schema.dtype)?;
        let mut inputs = args.inputs.into_candle(&Device::Cpu)?.to_dtype(dtype)?;
        let mut grad = args.grad_outputs.into_candle(&Device::Cpu)?.to_dtype(dtype)?;
        let prompts = match args.prompts {
            None => None,
            Some(p) => Some(split_prompts(&p.into_candle(&Device::Cpu)?.to_dtype(dtype)?, chain.len())?),
        };
        let prompt = |i: usize| prompts.as_ref().map(|p| &p[i]);

        // The forward chain, keeping each block's input (with its prompt added).
        let mut block_inputs = Vec::with_capacity(chain.len());
        for (i, &block) in chain.iter().enumerate() {
            if inputs.rank() != 3 {
                return Err(Failure::assertion(format!(
                    "inputs to {BACKEND_CLASS} must be a single 3d tensor of hidden states"
                )));
            }
            if let Some(p) = prompt(i) {
                inputs = add_prompt(&inputs, p)?;
            }
            block_inputs.push(inputs.clone());
            if i + 1 < chain.len() {
                inputs = self.blocks[block].forward(&inputs, None)?;
            }
        }
        if grad.dims() != inputs.dims() {
            return Err(Failure::runtime(format!(
                "Mismatch in shape: grad_output[0] has a shape of torch.Size({:?}) and output[0] has a shape of \
                 torch.Size({:?}).",
                grad.dims(),
                inputs.dims()
            )));
        }

        // Back through the chain, collecting each block's prompt gradient.
        let mut grad_prompts = Vec::new();
        for (i, &block) in chain.iter().enumerate().rev() {
            grad = self.blocks[block].backward(&block_inputs[i], None, &grad)?.0;
            if let Some(p) = prompt(i) {
                grad_prompts.push(grad.narrow(1, 0, p.dim(1)?)?.unsqueeze(0)?);
            }
        }
        if grad_prompts.is_empty() {
            return Ok(vec![grad]);
        }
        grad_prompts.reverse();
        Ok(vec![grad, CTensor::cat(&grad_prompts, 0)?])
    }

    /// The codec of each gradient: `metadata["output_compression"]` when given, else the schema's.
    fn output_compression(&self, metadata: &Value, with_prompts: bool) -> Result<Vec<CompressionType>, Failure> {
        let count = if with_prompts { 2 } else { 1 };
        let default = CompressionType::try_from(self.schema.compression).unwrap_or(CompressionType::None);
        let Some(given) = map_get(metadata, "output_compression").filter(|v| !v.is_nil()) else {
            return Ok(vec![default; count]);
        };
        let items = match given {
            Value::Array(items) => items.clone(),
            other => {
                msgpack::as_tuple(other).ok_or_else(|| Failure::assertion("output_compression must be a tuple/list"))?
            }
        };
        let codes = items
            .iter()
            .map(|c| c.as_i64().ok_or_else(|| Failure::assertion("output_compression must contain integers")))
            .collect::<Result<Vec<_>, _>>()?;
        if codes.len() != count {
            return Err(Failure::assertion(format!("output_compression should have {count} elements")));
        }
        codes
            .into_iter()
            .map(|code| {
                i32::try_from(code).ok().and_then(|c| CompressionType::try_from(c).ok()).ok_or_else(|| {
                    Failure::new(
                        ErrorKind::InvalidArgument,
                        "ValueError",
                        format!("{code} is not a valid CompressionType"),
                    )
                })
            })
            .collect()
    }

    /// The indices of the blocks a space-joined uid chain names, in its order; every one must be
    /// served (petals/server/handler.py `_check_uids`).
    fn chain(&self, chain: &str) -> Result<Vec<usize>, Failure> {
        chain
            .split(' ')
            .map(|uid| {
                self.uids
                    .iter()
                    .position(|ours| ours == uid)
                    .ok_or_else(|| Failure::runtime(format!("Remote peer does not serve {uid}")))
            })
            .collect()
    }
}

/// The positional arguments of a backward request.
struct BackwardArgs {
    inputs: Tensor,
    grad_outputs: Tensor,
    prompts: Option<Tensor>,
}

/// Restores `(inputs, grad_outputs, prompts, ...)` from the flat tensors through
/// `metadata["args_structure"]` (petals/utils/packaging.py `unpack_args_kwargs`), or by position
/// when it is absent. Empty prompts mean none.
fn unpack_args(flat: Vec<Tensor>, metadata: &Value) -> Result<BackwardArgs, Failure> {
    let structure = map_get(metadata, "args_structure").filter(|v| !v.is_nil());
    let mut args: Vec<Option<Tensor>> = match structure {
        None => flat.into_iter().map(Some).collect(),
        Some(structure) => {
            let args = msgpack::as_tuple(structure)
                .and_then(|parts| parts.into_iter().next())
                .and_then(|args| msgpack::as_tuple(&args).or_else(|| args.as_array().cloned()))
                .ok_or_else(|| {
                    Failure::new(ErrorKind::Protocol, "ValueError", "args_structure is not (args, kwargs)")
                })?;
            args.iter()
                .map(|item| match tensor_index(item) {
                    None => Ok(None),
                    Some(i) => flat.get(i).cloned().map(Some).ok_or_else(|| {
                        Failure::new(ErrorKind::InvalidArgument, "IndexError", "tuple index out of range")
                    }),
                })
                .collect::<Result<_, _>>()?
        }
    };
    if args.len() < 3 {
        return Err(Failure::new(
            ErrorKind::InvalidArgument,
            "ValueError",
            format!("not enough values to unpack (expected at least 3, got {})", args.len()),
        ));
    }
    let none = || Failure::new(ErrorKind::InvalidArgument, "AttributeError", "'NoneType' object has no attribute 'to'");
    let prompts = args[2].take().filter(|p| p.numel() > 0);
    let grad_outputs = args[1].take().ok_or_else(none)?;
    let inputs = args[0].take().ok_or_else(none)?;
    Ok(BackwardArgs { inputs, grad_outputs, prompts })
}

/// The index `i` of a masked tensor `b"__T<i>"` in an args structure.
fn tensor_index(item: &Value) -> Option<usize> {
    let bytes = match item {
        Value::Binary(b) => b.as_slice(),
        _ => return None,
    };
    std::str::from_utf8(bytes.strip_prefix(b"__T")?).ok()?.parse().ok()
}

/// Splits prompts `(blocks, batch, prefix, hidden)` into one `(batch, prefix, hidden)` per block.
fn split_prompts(prompts: &CTensor, blocks: usize) -> Result<Vec<CTensor>, Failure> {
    if prompts.rank() != 4 {
        return Err(Failure::runtime(format!(
            "prompts must be (blocks, batch, prefix, hidden), got {:?}",
            prompts.dims()
        )));
    }
    if prompts.dim(0)? != blocks {
        return Err(Failure::assertion("internal shape error during backward"));
    }
    (0..blocks).map(|i| Ok(prompts.get(i)?)).collect()
}

/// `inputs[:, :prefix] += prompt` for a prompt `(batch or 1, prefix, hidden)`.
fn add_prompt(inputs: &CTensor, prompt: &CTensor) -> Result<CTensor, Failure> {
    let (batch, seq, hidden) = inputs.dims3()?;
    let (prompt_batch, prefix, prompt_hidden) = prompt.dims3()?;
    if prefix == 0 {
        return Ok(inputs.clone());
    }
    if prefix > seq || prompt_hidden != hidden || (prompt_batch != batch && prompt_batch != 1) {
        return Err(Failure::runtime(format!(
            "The size of prompts {:?} does not match hidden states {:?}",
            prompt.dims(),
            inputs.dims()
        )));
    }
    let head = (inputs.narrow(1, 0, prefix)? + prompt.broadcast_as((batch, prefix, hidden))?)?;
    if prefix == seq {
        return Ok(head);
    }
    Ok(CTensor::cat(&[&head, &inputs.narrow(1, prefix, seq - prefix)?], 1)?)
}

fn map_get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

/// Petals' `_get_active_adapter`: this server loads no adapters, so any named one is unknown.
fn check_adapter(metadata: &Value) -> Result<(), Failure> {
    let adapter = match map_get(metadata, "active_adapter") {
        None | Some(Value::Nil) => return Ok(()),
        Some(Value::String(s)) if s.as_str() == Some("") => return Ok(()),
        Some(Value::String(s)) => s.as_str().unwrap_or_default().to_owned(),
        Some(other) => other.to_string(),
    };
    Err(Failure::new(ErrorKind::InvalidArgument, "KeyError", format!("adapter {adapter} not found")))
}

/// `points` must be a number when present.
fn check_points(metadata: &Value, handler: &str) -> Result<(), Failure> {
    match map_get(metadata, "points") {
        None | Some(Value::Integer(_) | Value::F32(_) | Value::F64(_) | Value::Boolean(_)) => Ok(()),
        Some(other) => Err(Failure::assertion(format!(
            "{handler} should have number of points as number or None, got {}",
            match other {
                Value::Nil => "None".to_owned(),
                Value::String(s) => s.as_str().unwrap_or_default().to_owned(),
                other => other.to_string(),
            }
        ))),
    }
}

fn parse_metadata(bytes: &[u8]) -> Result<Value, Failure> {
    if bytes.is_empty() {
        return Ok(Value::Map(Vec::new()));
    }
    let value = msgpack::unpack(bytes)?;
    if !value.is_map() {
        return Err(Failure::new(ErrorKind::Protocol, "AttributeError", "metadata is not a dict"));
    }
    Ok(value)
}

fn decode_request(bytes: &[u8]) -> Result<ExpertRequest, Failure> {
    ExpertRequest::decode(bytes).map_err(|e| Failure::new(ErrorKind::Protocol, "DecodeError", e.to_string()))
}

/// Registers `rpc_backward` and `rpc_backward_stream` on `node`, answered by `service` on
/// blocking threads; each call (a stream's upload included) must finish within
/// [`BACKWARD_TIMEOUT`].
pub fn serve_backward(node: &Node, service: BackwardService) -> Result<()> {
    let service = Arc::new(service);
    let unary = Arc::clone(&service);
    node.add_unary_handler(RPC_BACKWARD, move |_peer, request| {
        let service = Arc::clone(&unary);
        within_timeout(true, blocking("backward", move || service.reply(&request)))
    })?;
    node.add_stream_handler(RPC_BACKWARD_STREAM, move |_peer, requests| {
        let service = Arc::clone(&service);
        futures::stream::once(within_timeout(false, async move {
            // Inputs, gradients and prompts, at most `max_elements` each of at most 8 bytes.
            let max_bytes = service.limits.max_elements.saturating_mul(24);
            let parts = collect_parts(requests, max_bytes, "rpc_backward_stream").await?;
            blocking("backward", move || service.reply_stream(&parts)).await
        }))
        .flat_map(reply_parts)
    })
}

/// `call`, failing past [`BACKWARD_TIMEOUT`] as Petals' handler does: with `asyncio.TimeoutError`,
/// whose `repr` is `TimeoutError()` and whose `str` is empty.
async fn within_timeout<T>(unary: bool, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(BACKWARD_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, if unary { "TimeoutError()" } else { "" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_quotes_like_python() {
        assert_eq!(python_repr("plain"), "'plain'");
        assert_eq!(python_repr("it's"), "\"it's\"");
        assert_eq!(python_repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(python_repr("a\\b\n"), "'a\\\\b\\n'");
    }

    #[test]
    fn failures_read_as_repr_for_unary_and_str_for_streams() {
        let failure = || Failure::runtime("Remote peer does not serve x.9");
        assert_eq!(failure().into_unary_error().message(), "RuntimeError('Remote peer does not serve x.9')");
        assert_eq!(failure().into_stream_error().message(), "Remote peer does not serve x.9");
        let key = || Failure::new(ErrorKind::InvalidArgument, "KeyError", "adapter a not found");
        assert_eq!(key().into_unary_error().message(), "KeyError('adapter a not found')");
        assert_eq!(key().into_stream_error().message(), "'adapter a not found'");
        assert_eq!(Failure::assertion("").into_unary_error().message(), "AssertionError()");
    }

    #[test]
    fn args_structure_picks_tensors_by_index() {
        let t = |v: f32| Tensor::new(vec![1], crate::tensor::Data::F32(vec![v])).expect("tensor");
        let masked = |i: usize| Value::Binary(format!("__T{i}").into_bytes());
        // Inputs and grad_outputs are sent once and named twice; prompts is absent (None).
        let args = msgpack::tuple(vec![masked(1), masked(0), Value::Nil]);
        let structure = msgpack::tuple(vec![args, Value::Map(Vec::new())]);
        let metadata = Value::Map(vec![(Value::from("args_structure"), structure)]);
        let unpacked = unpack_args(vec![t(1.0), t(2.0)], &metadata).map_err(|f| f.message).expect("unpacks");
        assert_eq!(unpacked.inputs.as_bytes(), 2.0f32.to_le_bytes());
        assert_eq!(unpacked.grad_outputs.as_bytes(), 1.0f32.to_le_bytes());
        assert!(unpacked.prompts.is_none());

        let too_few = unpack_args(vec![t(1.0), t(2.0)], &Value::Map(Vec::new())).err().expect("two tensors");
        assert_eq!(too_few.class, "ValueError");
    }

    #[test]
    fn metadata_checks_follow_petals() {
        let meta = |k: &str, v: Value| Value::Map(vec![(Value::from(k), v)]);
        assert!(check_adapter(&meta("active_adapter", Value::from(""))).is_ok());
        assert_eq!(
            check_adapter(&meta("active_adapter", Value::from("lora"))).err().map(|f| f.class),
            Some("KeyError")
        );
        assert!(check_points(&meta("points", Value::F64(0.0)), "rpc_backward").is_ok());
        let bad = check_points(&meta("points", Value::from("many")), "rpc_backward").expect_err("refused");
        assert!(bad.message.starts_with("rpc_backward should have number of points"), "{}", bad.message);
    }

    #[test]
    fn prompts_are_added_to_the_first_positions_with_batch_broadcast() {
        let inputs = CTensor::zeros((2, 3, 2), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        let prompt = CTensor::ones((1, 2, 2), candle_core::DType::F32, &Device::Cpu).expect("ones");
        let sum = add_prompt(&inputs, &prompt).map_err(|f| f.message).expect("adds");
        let rows: Vec<Vec<Vec<f32>>> = sum.to_vec3().expect("values");
        for row in rows {
            assert_eq!(row, [vec![1.0, 1.0], vec![1.0, 1.0], vec![0.0, 0.0]]);
        }
        let long = CTensor::ones((1, 4, 2), candle_core::DType::F32, &Device::Cpu).expect("ones");
        assert!(add_prompt(&inputs, &long).is_err());
    }
}
