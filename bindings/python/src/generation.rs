//! `GenerationConfig` and `TokenStream`: one generation's settings and its tokens as they come.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kwaai_core::client::GeneratedToken;
use kwaai_core::model::SamplingConfig;
use pyo3::prelude::*;

use crate::error::{to_py, ClosedError, InternalError};

/// How often a waiting iterator looks at pending signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// What to generate: transformers' names, and `stop_tokens` (generation ends after one).
#[pyclass(module = "kwaai", frozen, get_all)]
#[derive(Clone)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Stop tokens are suppressed until this many tokens were generated.
    pub min_new_tokens: usize,
    /// Sample (True) or take the most likely token (False).
    pub do_sample: bool,
    /// Logits are divided by this before sampling.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probability reaches p.
    pub top_p: f32,
    /// Penalty for tokens already seen (1.0: off).
    pub repetition_penalty: f32,
    /// The sampling seed.
    pub seed: u64,
    /// Generation ends after any of these (included in the output).
    pub stop_tokens: Vec<u32>,
    /// Generation ends once the ids end with any of these sequences (included in the output).
    pub stop_sequences: Vec<Vec<u32>>,
}

#[pymethods]
impl GenerationConfig {
    #[new]
    #[pyo3(signature = (max_new_tokens = 32, min_new_tokens = 0, do_sample = false, temperature = 1.0, top_k = 0,
        top_p = 1.0, repetition_penalty = 1.0, seed = 0, stop_tokens = Vec::new(), stop_sequences = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_new_tokens: usize,
        min_new_tokens: usize,
        do_sample: bool,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stop_tokens: Vec<u32>,
        stop_sequences: Vec<Vec<u32>>,
    ) -> Self {
        GenerationConfig {
            max_new_tokens,
            min_new_tokens,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            stop_tokens,
            stop_sequences,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "GenerationConfig(max_new_tokens={}, min_new_tokens={}, do_sample={}, temperature={}, top_k={}, \
             top_p={}, repetition_penalty={}, seed={}, stop_tokens={:?}, stop_sequences={:?})",
            self.max_new_tokens,
            self.min_new_tokens,
            if self.do_sample { "True" } else { "False" },
            self.temperature,
            self.top_k,
            self.top_p,
            self.repetition_penalty,
            self.seed,
            self.stop_tokens,
            self.stop_sequences
        )
    }
}

impl GenerationConfig {
    /// The core's form.
    pub(crate) fn to_core(&self) -> kwaai_core::model::GenerationConfig {
        kwaai_core::model::GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            sampling: SamplingConfig {
                do_sample: self.do_sample,
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop_tokens: self.stop_tokens.clone(),
            stop_sequences: self.stop_sequences.clone(),
        }
    }
}

/// A small runtime for the binding's own waits (timed token waits, block selection).
pub(crate) fn waiter() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("kwaai-wait")
                .enable_time()
                .build()
        })
        .as_ref()
        .map_err(|e| InternalError::new_err(format!("starting the wait runtime: {e}")))
}

/// The tokens of one generation: iterate for `(id, text)` pairs. `cancel()` (or Ctrl-C while
/// waiting) stops the generation and closes every server session.
#[pyclass(module = "kwaai", frozen)]
pub struct TokenStream {
    inner: Mutex<Option<kwaai_core::client::TokenStream>>,
}

impl TokenStream {
    pub(crate) fn new(inner: kwaai_core::client::TokenStream) -> Self {
        TokenStream { inner: Mutex::new(Some(inner)) }
    }

    fn lock(&self) -> PyResult<MutexGuard<'_, Option<kwaai_core::client::TokenStream>>> {
        self.inner.lock().map_err(|_| InternalError::new_err("a token stream lock was poisoned"))
    }
}

#[pymethods]
impl TokenStream {
    /// A stream that yields the given `(id, text)` tokens as a generation would, then ends: to test
    /// or benchmark token handling without a swarm.
    #[staticmethod]
    fn replay(tokens: Vec<(u32, String)>) -> PyResult<TokenStream> {
        let tokens = tokens.into_iter().map(|(id, text)| GeneratedToken { id, text }).collect();
        Ok(TokenStream::new(kwaai_core::client::TokenStream::replay(tokens).map_err(to_py)?))
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next `(id, text)`, waiting with the GIL released; pending signals are handled while
    /// waiting, and an exception from a handler (KeyboardInterrupt) cancels the generation.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<(u32, String)>> {
        let runtime = waiter()?;
        loop {
            let waited = py.allow_threads(|| -> PyResult<Option<Option<kwaai_core::Result<_>>>> {
                let mut guard = self.lock()?;
                let Some(stream) = guard.as_mut() else { return Ok(Some(None)) };
                Ok(runtime.block_on(async { tokio::time::timeout(SIGNAL_POLL, StreamExt::next(stream)).await }).ok())
            })?;
            match waited {
                Some(Some(Ok(token))) => return Ok(Some((token.id, token.text))),
                Some(Some(Err(e))) => return Err(to_py(e)),
                Some(None) => return Ok(None),
                None => {
                    if let Err(interrupt) = py.check_signals() {
                        self.cancel(py)?;
                        return Err(interrupt);
                    }
                }
            }
        }
    }

    /// Stops the generation and waits until the server sessions are closed; iteration then ends.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let stream = self.lock()?.take();
        if let Some(mut stream) = stream {
            py.allow_threads(|| stream.cancel());
        }
        Ok(())
    }

    /// Whether the stream was cancelled.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self.lock()?.is_none())
    }
}

/// The error a closed object raises.
pub(crate) fn closed(what: &str) -> PyErr {
    ClosedError::new_err(format!("the {what} is closed"))
}
