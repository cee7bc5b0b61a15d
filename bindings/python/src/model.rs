//! `DistributedModel`: a model directory's local ends (embeddings, LM head, tokenizer) joined to
//! a client for its blocks on the swarm, and `InferenceSession`, a step-by-step session through
//! them.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kwaai_core::{Error, ErrorKind};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{to_py, InternalError, InvalidArgumentError};
use crate::generation::{closed, GenerationConfig, TokenStream};
use crate::node::Node;
use crate::tensor::{from_bytes, to_bytes};

/// A model whose blocks run on the swarm `node` belongs to.
#[pyclass(module = "kwaai", frozen)]
pub struct DistributedModel {
    inner: kwaai_core::client::DistributedModel,
    node: Py<Node>,
}

#[pymethods]
impl DistributedModel {
    /// Loads the local ends of the model in `path` and a client for its blocks announced under
    /// `dht_prefix` (default: the directory's name with `.` and ` ` as `-`). `max_retries` bounds
    /// the attempts per request (default: retry forever, as Petals does); `request_timeout` is in
    /// seconds.
    #[staticmethod]
    #[pyo3(signature = (node, path, dht_prefix = None, max_retries = None, request_timeout = None))]
    fn load(
        py: Python<'_>,
        node: Py<Node>,
        path: PathBuf,
        dht_prefix: Option<String>,
        max_retries: Option<usize>,
        request_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let timeout = request_timeout
            .map(|s| {
                Duration::try_from_secs_f64(s)
                    .map_err(|_| InvalidArgumentError::new_err("request_timeout must be a non-negative number"))
            })
            .transpose()?;
        if !path.is_dir() {
            return Err(InvalidArgumentError::new_err(format!(
                "{} is not a model directory (models load from a local directory with config.json and safetensors)",
                path.display()
            )));
        }
        let core_node = &node.get().inner;
        let inner = py
            .allow_threads(|| {
                kwaai_core::client::DistributedModel::load(core_node, &path, dht_prefix.as_deref(), |config| {
                    config.max_retries = max_retries;
                    if let Some(timeout) = timeout {
                        config.request_timeout = timeout;
                    }
                })
            })
            .map_err(to_py)?;
        Ok(DistributedModel { inner, node })
    }

    /// The node the model routes through.
    #[getter]
    fn node(&self, py: Python<'_>) -> Py<Node> {
        self.node.clone_ref(py)
    }

    /// The DHT prefix the blocks are announced under.
    #[getter]
    fn dht_prefix(&self) -> String {
        self.inner.client().config().dht_prefix.clone()
    }

    /// How many transformer blocks the model has.
    #[getter]
    fn num_blocks(&self) -> usize {
        self.inner.model().config().num_layers
    }

    /// The width of hidden states.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.model().config().hidden_size
    }

    /// The vocabulary size.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.model().config().vocab_size
    }

    /// The end-of-sequence token from config.json, if any.
    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.inner.model().config().eos_token_id
    }

    /// The beginning-of-sequence token from config.json, if any.
    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.inner.model().config().bos_token_id
    }

    /// Whether the directory has a tokenizer.json.
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.inner.tokenizer().is_some()
    }

    /// Token ids of `text`, special tokens added (as a transformers tokenizer call does).
    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.encode(text).map_err(to_py)
    }

    /// Text of `ids`; special tokens are left out unless `skip_special_tokens` is false.
    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.inner.decode_with(&ids, skip_special_tokens).map_err(to_py)
    }

    /// The ids of a stop string, encoded alone without special tokens.
    fn stop_sequence(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.stop_sequence(text).map_err(to_py)
    }

    /// Starts generating after `prompt` on a worker thread; returns the token stream.
    fn generate(&self, py: Python<'_>, prompt: Vec<u32>, config: &GenerationConfig) -> PyResult<TokenStream> {
        let config = config.to_core();
        let stream = py.allow_threads(|| self.inner.generate(&prompt, config)).map_err(to_py)?;
        Ok(TokenStream::new(stream))
    }

    /// Hidden states (float32 bytes, shape `[batch, tokens, hidden]`) of token ids `[batch][tokens]`.
    fn embed<'py>(&self, py: Python<'py>, ids: Vec<Vec<u32>>) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
        let batch = ids.len();
        let tokens = ids.first().map_or(0, Vec::len);
        if tokens == 0 || ids.iter().any(|row| row.len() != tokens) {
            return Err(InvalidArgumentError::new_err("token ids must be non-empty rows of one length"));
        }
        let flat: Vec<u32> = ids.into_iter().flatten().collect();
        let ids = candle_core::Tensor::from_vec(flat, (batch, tokens), &candle_core::Device::Cpu)
            .map_err(|e| to_py(e.into()))?;
        let hidden = self.inner.model().embed(&ids).map_err(to_py)?;
        to_bytes(py, &hidden)
    }

    /// Logits (float32 bytes, shape `[batch, tokens, vocab]`) of hidden states after the last block.
    fn logits<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        shape: Vec<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
        let hidden = hidden_states(data, &shape, self.hidden_size())?;
        let logits = self.inner.model().logits(&hidden).map_err(to_py)?;
        to_bytes(py, &logits)
    }

    /// A session through every block for up to `max_length` tokens.
    fn inference_session(&self, py: Python<'_>, max_length: usize) -> PyResult<InferenceSession> {
        if max_length == 0 {
            return Err(InvalidArgumentError::new_err("max_length must be positive"));
        }
        let session = py.allow_threads(|| self.inner.inference_session(max_length)).map_err(to_py)?;
        Ok(InferenceSession { inner: Mutex::new(Some(session)), max_length, hidden_size: self.hidden_size() })
    }
}

/// Checks a hidden-state shape and builds the tensor.
fn hidden_states(data: &[u8], shape: &[usize], hidden_size: usize) -> PyResult<candle_core::Tensor> {
    if shape.len() != 3 || shape[2] != hidden_size || shape[0] == 0 || shape[1] == 0 {
        return Err(InvalidArgumentError::new_err(format!(
            "hidden states must have shape [batch, tokens, {hidden_size}], not {shape:?}"
        )));
    }
    from_bytes(data, shape)
}

/// An inference session: the servers keep the attention caches of every step for the next ones.
#[pyclass(module = "kwaai", frozen)]
pub struct InferenceSession {
    inner: Mutex<Option<kwaai_core::client::InferenceSession>>,
    max_length: usize,
    hidden_size: usize,
}

impl InferenceSession {
    fn lock(&self) -> PyResult<MutexGuard<'_, Option<kwaai_core::client::InferenceSession>>> {
        self.inner.lock().map_err(|_| InternalError::new_err("an inference session lock was poisoned"))
    }
}

#[pymethods]
impl InferenceSession {
    /// Runs hidden states (float32 bytes, shape `[batch, tokens, hidden]`) through every block
    /// and returns the last block's output in the same form.
    fn step<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        shape: Vec<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
        let hidden = hidden_states(data, &shape, self.hidden_size)?;
        let output = py.allow_threads(|| -> PyResult<candle_core::Tensor> {
            let mut guard = self.lock()?;
            let session = guard.as_mut().ok_or_else(|| closed("inference session"))?;
            session.step(&hidden).map_err(to_py)
        })?;
        to_bytes(py, &output)
    }

    /// Generates after `prompt` through this session, continuing from the tokens it already
    /// holds; returns the new tokens. Ctrl-C between tokens stops it with KeyboardInterrupt.
    fn generate(
        &self,
        py: Python<'_>,
        model: &DistributedModel,
        prompt: Vec<u32>,
        config: &GenerationConfig,
    ) -> PyResult<Vec<u32>> {
        let config = config.to_core();
        let local = model.inner.model().clone();
        let mut interrupt: Option<PyErr> = None;
        let outcome = py.allow_threads(|| -> PyResult<kwaai_core::Result<Vec<u32>>> {
            let mut guard = self.lock()?;
            let session = guard.as_mut().ok_or_else(|| closed("inference session"))?;
            let blocks = |hidden: &candle_core::Tensor| {
                if let Err(e) = Python::with_gil(|py| py.check_signals()) {
                    interrupt = Some(e);
                    return Err(Error::new(ErrorKind::Closed, "generation interrupted"));
                }
                session.step(hidden)
            };
            Ok(kwaai_core::model::generate(&local, &prompt, &config, blocks, |_| {}))
        })?;
        if let Some(interrupt) = interrupt {
            return Err(interrupt);
        }
        outcome.map_err(to_py)
    }

    /// Tokens processed so far.
    #[getter]
    fn position(&self) -> PyResult<usize> {
        Ok(self.lock()?.as_ref().map_or(0, |s| s.position()))
    }

    /// The most tokens the session may hold.
    #[getter]
    fn max_length(&self) -> usize {
        self.max_length
    }

    /// The servers of the chain now, as `(peer id, first block, end block)`.
    fn route(&self) -> PyResult<Vec<(String, u32, u32)>> {
        let guard = self.lock()?;
        let session = guard.as_ref().ok_or_else(|| closed("inference session"))?;
        Ok(session.route().into_iter().map(|hop| (hop.peer.to_base58(), hop.start, hop.end)).collect())
    }

    /// Whether the session is closed.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self.lock()?.is_none())
    }

    /// Closes every server stream; calling it again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let session = self.lock()?.take();
        if let Some(mut session) = session {
            py.allow_threads(|| session.close());
        }
        Ok(())
    }
}
