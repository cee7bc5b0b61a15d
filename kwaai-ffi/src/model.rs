//! `kwaai_model`: a model whose blocks run on the swarm, with its local ends (embeddings, LM head,
//! tokenizer) loaded from a model directory.

use std::os::raw::{c_char, c_void};
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use kwaai_core::client::DistributedModel;
use kwaai_core::tensor::Tensor;
use kwaai_core::{Error, ErrorKind};

use crate::error::{ffi_call, kwaai_status};
use crate::generation::{generation_config_of, kwaai_generation, kwaai_generation_config, kwaai_token_callback};
use crate::handles::Registry;
use crate::node::{kwaai_node, node_of};
use crate::strings::{out_arg, owned_c_string, str_arg};
use crate::tensor::{kwaai_tensor, slice_arg, TENSORS};

static MODELS: Registry = Registry::new("model");

/// A model whose transformer blocks are served by the swarm (Petals'
/// `AutoDistributedModelForCausalLM`). Calls on it may come from any thread.
pub struct kwaai_model {
    inner: Arc<DistributedModel>,
}

pub(crate) fn model_of(model: *mut kwaai_model) -> Result<Arc<DistributedModel>, Error> {
    MODELS.with(model, |m| Arc::clone(&m.inner))
}

/// Loads the local ends of the model in directory `dir` (config.json, safetensors, and
/// tokenizer.json when present) and a client for its blocks, announced under `dht_prefix`; NULL
/// derives the prefix from the directory's name (`.` and ` ` becoming `-`). Free the model before
/// its node.
///
/// # Safety
/// `dir` must be NULL or a NUL-terminated string; `dht_prefix` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_load(
    node: *mut kwaai_node,
    dir: *const c_char,
    dht_prefix: *const c_char,
    out: *mut *mut kwaai_model,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let dir = Path::new(str_arg(dir, "dir")?);
        let prefix = if dht_prefix.is_null() { None } else { Some(str_arg(dht_prefix, "dht_prefix")?) };
        let node = node_of(node)?;
        if !node.is_running() {
            return Err(Error::new(ErrorKind::Closed, "the node is shut down"));
        }
        let model = DistributedModel::load(&node, dir, prefix, |_| {})?;
        *out = MODELS.insert(kwaai_model { inner: Arc::new(model) });
        Ok(())
    })
}

/// Writes the model's hidden size (the last dimension of hidden states) to `out`.
#[no_mangle]
pub extern "C" fn kwaai_model_hidden_size(model: *mut kwaai_model, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = model_of(model)?.model().config().hidden_size;
        Ok(())
    })
}

/// Writes the model's vocabulary size (the last dimension of logits) to `out`.
#[no_mangle]
pub extern "C" fn kwaai_model_vocab_size(model: *mut kwaai_model, out: *mut usize) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        *out = model_of(model)?.model().config().vocab_size;
        Ok(())
    })
}

/// Generates after the `count` token ids at `ids`, streaming each token to `callback` (see
/// `kwaai_token_callback` for the thread it runs on). `config` may be NULL for the defaults and
/// stays owned by the caller. The generation runs until it ends, `kwaai_generation_cancel` or
/// `kwaai_generation_free`; `user_data` must stay valid until then.
///
/// # Safety
/// `ids` must point to `count` token ids.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_generate(
    model: *mut kwaai_model,
    ids: *const u32,
    count: usize,
    config: *mut kwaai_generation_config,
    callback: kwaai_token_callback,
    user_data: *mut c_void,
    out: *mut *mut kwaai_generation,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        if callback.is_none() {
            return Err(Error::invalid_argument("`callback` is NULL"));
        }
        let ids = slice_arg(ids, count, "ids")?;
        let config = generation_config_of(config)?;
        let stream = model_of(model)?.generate(ids, config)?;
        *out = crate::generation::start_generation(stream, callback, user_data)?;
        Ok(())
    })
}

/// Like `kwaai_model_generate`, after `prompt` text encoded by the model's tokenizer (special
/// tokens added, as transformers does). A model directory without tokenizer.json is
/// KWAAI_STATUS_INVALID_ARGUMENT.
///
/// # Safety
/// `prompt` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_generate_text(
    model: *mut kwaai_model,
    prompt: *const c_char,
    config: *mut kwaai_generation_config,
    callback: kwaai_token_callback,
    user_data: *mut c_void,
    out: *mut *mut kwaai_generation,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        if callback.is_none() {
            return Err(Error::invalid_argument("`callback` is NULL"));
        }
        let prompt = str_arg(prompt, "prompt")?;
        let config = generation_config_of(config)?;
        let stream = model_of(model)?.generate_text(prompt, config)?;
        *out = crate::generation::start_generation(stream, callback, user_data)?;
        Ok(())
    })
}

/// Generates after the `count` token ids at `ids` and blocks until done, writing the new tokens to
/// `out_ids` (room for `capacity` ids, at least the configured `max_new_tokens`) and their number
/// to `out_len`.
///
/// # Safety
/// `ids` must point to `count` ids and `out_ids` to `capacity` writable ids.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_generate_ids(
    model: *mut kwaai_model,
    ids: *const u32,
    count: usize,
    config: *mut kwaai_generation_config,
    out_ids: *mut u32,
    capacity: usize,
    out_len: *mut usize,
) -> kwaai_status {
    ffi_call(|| {
        let out_len = out_arg(out_len, "out_len")?;
        let ids = slice_arg(ids, count, "ids")?;
        let config = generation_config_of(config)?;
        if out_ids.is_null() || capacity < config.max_new_tokens {
            return Err(Error::invalid_argument(format!(
                "`out_ids` has room for {capacity} ids, fewer than max_new_tokens ({})",
                config.max_new_tokens
            )));
        }
        let tokens = model_of(model)?.generate(ids, config)?.map(|t| t.map(|t| t.id)).collect::<Result<Vec<_>, _>>()?;
        if tokens.len() > capacity {
            return Err(Error::new(ErrorKind::Internal, "more tokens than max_new_tokens"));
        }
        std::slice::from_raw_parts_mut(out_ids, tokens.len()).copy_from_slice(&tokens);
        *out_len = tokens.len();
        Ok(())
    })
}

/// Encodes `text` with the model's tokenizer (special tokens added); writes a new array of ids to
/// `out_ids` and its length to `out_len`. Free it with `kwaai_token_ids_free`.
///
/// # Safety
/// `text` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_encode(
    model: *mut kwaai_model,
    text: *const c_char,
    out_ids: *mut *mut u32,
    out_len: *mut usize,
) -> kwaai_status {
    ffi_call(|| {
        let out_ids = out_arg(out_ids, "out_ids")?;
        let out_len = out_arg(out_len, "out_len")?;
        let ids = model_of(model)?.encode(str_arg(text, "text")?)?.into_boxed_slice();
        *out_len = ids.len();
        *out_ids = Box::into_raw(ids).cast::<u32>();
        Ok(())
    })
}

/// Frees ids returned by `kwaai_model_encode` (`len` as it returned). NULL is ignored.
///
/// # Safety
/// `ids` must be NULL or an array from `kwaai_model_encode` of `len` ids, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kwaai_token_ids_free(ids: *mut u32, len: usize) {
    if !ids.is_null() {
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ids, len)));
    }
}

/// Decodes the `count` ids at `ids` to text (special tokens skipped); free it with
/// `kwaai_string_free`. NUL characters are left out.
///
/// # Safety
/// `ids` must point to `count` ids.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_decode(
    model: *mut kwaai_model,
    ids: *const u32,
    count: usize,
    out: *mut *mut c_char,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let text = model_of(model)?.decode(slice_arg(ids, count, "ids")?)?;
        *out = owned_c_string(text.replace('\0', ""))?;
        Ok(())
    })
}

/// Writes the float32 hidden states `[1, count, hidden]` of the `count` token ids at `ids` to
/// `out` (the input of `kwaai_session_step`). Ids outside the vocabulary are
/// KWAAI_STATUS_INVALID_ARGUMENT.
///
/// # Safety
/// `ids` must point to `count` ids.
#[no_mangle]
pub unsafe extern "C" fn kwaai_model_embed(
    model: *mut kwaai_model,
    ids: *const u32,
    count: usize,
    out: *mut *mut kwaai_tensor,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let ids = slice_arg(ids, count, "ids")?;
        if ids.is_empty() {
            return Err(Error::invalid_argument("no token ids to embed"));
        }
        let model = model_of(model)?;
        let input = candle_core::Tensor::new(ids, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| Error::with_source(ErrorKind::Internal, "building the ids tensor", e))?;
        let hidden = model.model().embed(&input)?;
        *out = TENSORS.insert(kwaai_tensor { tensor: Tensor::from_candle(&hidden)? });
        Ok(())
    })
}

/// Checks that `tensor` holds float hidden states `[batch, tokens, hidden_size]` and returns it
/// as a candle tensor.
pub(crate) fn hidden_states_arg(tensor: *mut kwaai_tensor, hidden_size: usize) -> Result<candle_core::Tensor, Error> {
    let tensor = TENSORS.with(tensor, |t| t.tensor.clone())?;
    if !tensor.dtype().is_float() {
        return Err(Error::invalid_argument(format!("hidden states must be floats, not {}", tensor.dtype().name())));
    }
    match *tensor.shape() {
        [batch, tokens, hidden] if batch > 0 && tokens > 0 && hidden == hidden_size => {}
        ref shape => {
            return Err(Error::invalid_argument(format!(
                "hidden states must be [batch, tokens, {hidden_size}], not {shape:?}"
            )))
        }
    }
    tensor.into_candle(&Device::Cpu)
}

/// Writes the float32 logits `[batch, tokens, vocab]` of hidden states `[batch, tokens, hidden]`
/// (the output of the last block, e.g. from `kwaai_session_step`) to `out`.
#[no_mangle]
pub extern "C" fn kwaai_model_logits(
    model: *mut kwaai_model,
    hidden: *mut kwaai_tensor,
    out: *mut *mut kwaai_tensor,
) -> kwaai_status {
    ffi_call(|| {
        let out = out_arg(out, "out")?;
        let model = model_of(model)?;
        let hidden = hidden_states_arg(hidden, model.model().config().hidden_size)?;
        let logits = model.model().logits(&hidden)?;
        *out = TENSORS.insert(kwaai_tensor { tensor: Tensor::from_candle(&logits)? });
        Ok(())
    })
}

/// Frees a model. NULL, or a handle already freed, is ignored. Generations and sessions started
/// from it keep running until they are freed.
#[no_mangle]
pub extern "C" fn kwaai_model_free(model: *mut kwaai_model) {
    ffi_call(|| {
        drop(MODELS.remove(model));
        Ok(())
    });
}
