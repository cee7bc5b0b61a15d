//! Pushed tensors for `Node`: `pushTensor` (a typed array and a shape, compression chosen per
//! call) and `setTensorHandler`, whose callback gets `(peerId, name, data, shape, dtype)`.
//!
//! Typed arrays and wire dtypes: `Float32Array` float32, `Float64Array` float64,
//! `BigInt64Array` int64, `Int32Array` int32, `Int16Array` int16, `Int8Array` int8, `Uint8Array`
//! uint8 (or bool), `Uint16Array` the raw bits of float16 or bfloat16 (the `dtype` option says
//! which). Received float16 and bfloat16 tensors arrive as `Float32Array`s, bool as `Uint8Array`.

use std::sync::Arc;
use std::time::Duration;

use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, Error, PeerId, ReceivedTensor};
use napi::bindgen_prelude::AsyncTask;
use napi::threadsafe_function::{ErrorStrategy, ThreadSafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsFunction, JsTypedArray, JsTypedArrayValue, JsUnknown, Task, TypedArrayType};
use napi_derive::napi;

use crate::error::to_js;
use crate::node::Node;

/// How a pushed tensor is compressed.
#[napi(object)]
#[derive(Default)]
pub struct PushOptions {
    /// "none" (default), "float16", "meanstd_16bit", "quantile_8bit", "uniform_8bit",
    /// "blockwise_8bit", or with error feedback per (peer, name) "blockwise_8bit_feedback" and
    /// "topk" (sends the `k` largest entries).
    pub compression: Option<String>,
    /// Entries per "topk" push.
    pub k: Option<u32>,
    /// How long to wait for the receiver, in milliseconds (default 60000).
    pub timeout_ms: Option<u32>,
    /// The wire dtype where the typed array allows more than one: "float16" or "bfloat16" for a
    /// `Uint16Array` (required), "uint8" (default) or "bool" for a `Uint8Array`.
    pub dtype: Option<String>,
}

#[napi]
impl Node {
    /// Pushes the tensor `data` of `shape` under `name` to the peer `peerId`; resolves once its
    /// handler took it. The typed array sets the dtype: `Float32Array` float32, `Float64Array`
    /// float64, `BigInt64Array` int64, `Int32Array` int32, `Int16Array` int16, `Int8Array` int8,
    /// `Uint8Array` uint8 (or bool), `Uint16Array` the bits of float16 or bfloat16 (`options.dtype`).
    #[napi(
        ts_args_type = "peerId: string, name: string, data: Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array | Uint16Array, shape: Array<number>, options?: PushOptions | undefined | null",
        ts_return_type = "Promise<void>"
    )]
    pub fn push_tensor(
        &self,
        peer_id: String,
        name: String,
        data: JsTypedArray,
        shape: Vec<u32>,
        options: Option<PushOptions>,
    ) -> napi::Result<AsyncTask<PushTask>> {
        let options = options.unwrap_or_default();
        let wire = wire_bytes(data.into_value()?, options.dtype.as_deref());
        let shape: Vec<usize> = shape.into_iter().map(|d| d as usize).collect();
        let codec = options.compression.as_deref().unwrap_or("none");
        let request = Compression::from_name(codec, options.k.map(|k| k as usize)).and_then(|c| {
            let peer: PeerId =
                peer_id.parse().map_err(|e| Error::invalid_argument(format!("bad peer id {peer_id:?}: {e}")))?;
            let (dtype, bytes) = wire?;
            Ok((peer, Tensor::from_bytes(dtype, shape, &bytes)?, c))
        });
        let timeout = Duration::from_millis(u64::from(options.timeout_ms.unwrap_or(60_000)));
        Ok(AsyncTask::new(PushTask { node: self.core(), name, request: Some(request), timeout }))
    }

    /// Calls `handler(peerId, name, data, shape, dtype)` on the event loop for each tensor pushed
    /// to this node: `data` in the typed array of its dtype as `pushTensor` takes them, except
    /// float16 and bfloat16 as `Float32Array` and bool as `Uint8Array`. The push succeeds once the
    /// tensor is queued for the handler. Replaces an earlier handler.
    #[napi(
        ts_args_type = "handler: (peerId: string, name: string, data: Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array, shape: number[], dtype: string) => void"
    )]
    pub fn set_tensor_handler(&self, env: Env, handler: JsFunction) -> napi::Result<()> {
        let mut callback: ThreadsafeFunction<ReceivedTensor, ErrorStrategy::Fatal> =
            handler.create_threadsafe_function(0, to_arguments)?;
        callback.unref(&env)?;
        let callback = Arc::new(callback);
        self.core()
            .set_tensor_handler(DecodeLimits::default(), move |received| {
                callback.call(received, ThreadsafeFunctionCallMode::NonBlocking);
                Ok(())
            })
            .map_err(|e| to_js(&env, &e))
    }

    /// Stops receiving pushed tensors; true if a handler was set.
    #[napi]
    pub fn clear_tensor_handler(&self, env: Env) -> napi::Result<bool> {
        self.core().clear_tensor_handler().map_err(|e| to_js(&env, &e))
    }
}

/// The wire dtype and little-endian bytes of a typed array; `dtype` chooses where the array's
/// element type carries more than one dtype.
fn wire_bytes(array: JsTypedArrayValue, dtype: Option<&str>) -> Result<(DType, Vec<u8>), Error> {
    fn le<T: Copy, const N: usize>(values: &[T], to_le: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| to_le(v)).collect()
    }
    let (natural, bytes) = match array.typedarray_type {
        TypedArrayType::Float32 => (Some(DType::F32), le(array.as_ref(), f32::to_le_bytes)),
        TypedArrayType::Float64 => (Some(DType::F64), le(array.as_ref(), f64::to_le_bytes)),
        TypedArrayType::BigInt64 => (Some(DType::I64), le(array.as_ref(), i64::to_le_bytes)),
        TypedArrayType::Int32 => (Some(DType::I32), le(array.as_ref(), i32::to_le_bytes)),
        TypedArrayType::Int16 => (Some(DType::I16), le(array.as_ref(), i16::to_le_bytes)),
        TypedArrayType::Int8 => (Some(DType::I8), le(array.as_ref(), i8::to_le_bytes)),
        TypedArrayType::Uint8 => (Some(DType::U8), AsRef::<[u8]>::as_ref(&array).to_vec()),
        TypedArrayType::Uint16 => (None, le(array.as_ref(), u16::to_le_bytes)),
        other => return Err(Error::invalid_argument(format!("a {other:?} typed array has no wire dtype"))),
    };
    let chosen = dtype.map(DType::from_name).transpose()?;
    match (natural, chosen) {
        (Some(natural), None) => Ok((natural, bytes)),
        (Some(DType::U8), Some(DType::Bool)) => {
            Ok((DType::Bool, bytes.into_iter().map(|b| u8::from(b != 0)).collect()))
        }
        (Some(natural), Some(chosen)) if natural == chosen => Ok((natural, bytes)),
        (None, Some(chosen @ (DType::F16 | DType::BF16))) => Ok((chosen, bytes)),
        (None, _) => Err(Error::invalid_argument("a Uint16Array needs the dtype option \"float16\" or \"bfloat16\"")),
        (Some(natural), Some(chosen)) => Err(Error::invalid_argument(format!(
            "a {:?} typed array carries {}, not {}",
            array.typedarray_type,
            natural.name(),
            chosen.name()
        ))),
    }
}

fn to_arguments(ctx: ThreadSafeCallContext<ReceivedTensor>) -> napi::Result<Vec<JsUnknown>> {
    let tensor = &ctx.value.tensor;
    let dtype = tensor.dtype();
    let (kind, bytes) = match dtype {
        DType::F64 => (TypedArrayType::Float64, tensor.as_bytes().to_vec()),
        DType::I64 => (TypedArrayType::BigInt64, tensor.as_bytes().to_vec()),
        DType::I32 => (TypedArrayType::Int32, tensor.as_bytes().to_vec()),
        DType::I16 => (TypedArrayType::Int16, tensor.as_bytes().to_vec()),
        DType::I8 => (TypedArrayType::Int8, tensor.as_bytes().to_vec()),
        DType::U8 | DType::Bool => (TypedArrayType::Uint8, tensor.as_bytes().to_vec()),
        DType::F32 | DType::F16 | DType::BF16 => {
            (TypedArrayType::Float32, tensor.view().to_f32().iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    };
    let length = tensor.numel();
    let data = ctx.env.create_arraybuffer_with_data(bytes)?.into_raw().into_typedarray(kind, length, 0)?;
    let mut shape = ctx.env.create_array_with_length(tensor.shape().len())?;
    for (i, &d) in tensor.shape().iter().enumerate() {
        shape.set_element(i as u32, ctx.env.create_uint32(d as u32)?)?;
    }
    Ok(vec![
        ctx.env.create_string(&ctx.value.peer.to_base58())?.into_unknown(),
        ctx.env.create_string(&ctx.value.name)?.into_unknown(),
        data.into_unknown(),
        shape.into_unknown(),
        ctx.env.create_string(dtype.name())?.into_unknown(),
    ])
}

/// A push on the thread pool.
pub struct PushTask {
    node: Arc<kwaai_core::Node>,
    name: String,
    request: Option<Result<(PeerId, Tensor, Compression), Error>>,
    timeout: Duration,
}

impl Task for PushTask {
    type Output = Result<(), Error>;
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let request = self.request.take().unwrap_or_else(|| Err(Error::invalid_argument("push already ran")));
        Ok(request.and_then(|(peer, tensor, c)| self.node.push_tensor(peer, &self.name, &tensor, c, self.timeout)))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<()> {
        output.map_err(|e| to_js(&env, &e))
    }
}
