//! Pushed tensors for `Node`: `pushTensor` (a `Float32Array` and a shape, compression chosen per
//! call) and `setTensorHandler`, whose callback gets `(peerId, name, data, shape)`.

use std::sync::Arc;
use std::time::Duration;

use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, Error, PeerId, ReceivedTensor};
use napi::bindgen_prelude::{AsyncTask, Float32Array};
use napi::threadsafe_function::{ErrorStrategy, ThreadSafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsFunction, JsUnknown, Task, TypedArrayType};
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
}

#[napi]
impl Node {
    /// Pushes the float32 tensor `data` of `shape` under `name` to the peer `peerId`; resolves
    /// once its handler took it.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn push_tensor(
        &self,
        peer_id: String,
        name: String,
        data: Float32Array,
        shape: Vec<u32>,
        options: Option<PushOptions>,
    ) -> AsyncTask<PushTask> {
        let options = options.unwrap_or_default();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Vec<usize> = shape.into_iter().map(|d| d as usize).collect();
        let codec = options.compression.as_deref().unwrap_or("none");
        let request = Compression::from_name(codec, options.k.map(|k| k as usize)).and_then(|c| {
            let peer: PeerId =
                peer_id.parse().map_err(|e| Error::invalid_argument(format!("bad peer id {peer_id:?}: {e}")))?;
            Ok((peer, Tensor::from_bytes(DType::F32, shape, &bytes)?, c))
        });
        let timeout = Duration::from_millis(u64::from(options.timeout_ms.unwrap_or(60_000)));
        AsyncTask::new(PushTask { node: self.core(), name, request: Some(request), timeout })
    }

    /// Calls `handler(peerId, name, data, shape)` on the event loop for each tensor pushed to this
    /// node (`data` as a `Float32Array`). The push succeeds once the tensor is queued for the
    /// handler. Replaces an earlier handler.
    #[napi(ts_args_type = "handler: (peerId: string, name: string, data: Float32Array, shape: number[]) => void")]
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

fn to_arguments(ctx: ThreadSafeCallContext<ReceivedTensor>) -> napi::Result<Vec<JsUnknown>> {
    let received = ctx.value;
    let values = received.tensor.view().to_f32();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let data = ctx.env.create_arraybuffer_with_data(bytes)?.into_raw().into_typedarray(
        TypedArrayType::Float32,
        values.len(),
        0,
    )?;
    let mut shape = ctx.env.create_array_with_length(received.tensor.shape().len())?;
    for (i, &d) in received.tensor.shape().iter().enumerate() {
        shape.set_element(i as u32, ctx.env.create_uint32(d as u32)?)?;
    }
    Ok(vec![
        ctx.env.create_string(&received.peer.to_base58())?.into_unknown(),
        ctx.env.create_string(&received.name)?.into_unknown(),
        data.into_unknown(),
        shape.into_unknown(),
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
