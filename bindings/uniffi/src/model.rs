//! Serving and generation: `Server`, `DistributedModel`, and token streams through a callback
//! interface.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kwaai_core::client::{DistributedModel as CoreModel, GeneratedToken as CoreToken, TokenStream};
use kwaai_core::model::{GenerationConfig, SamplingConfig};
use kwaai_core::server::{Server as CoreServer, ServerConfig, Span};
use kwaai_core::tensor::DType;

use crate::error::KwaaiError;
use crate::node::Node;

/// What to serve (Petals' `run_server` options).
#[derive(uniffi::Record)]
pub struct ServeOptions {
    /// A model directory (config.json and safetensors).
    pub model_path: String,
    /// First block to serve.
    pub start_block: u32,
    /// One past the last block to serve.
    pub end_block: u32,
    /// The model's DHT prefix; none: the directory's name.
    #[uniffi(default = None)]
    pub dht_prefix: Option<String>,
    /// Requests per second to announce.
    #[uniffi(default = 1.0)]
    pub throughput: f64,
    /// `"float32"` or `"bfloat16"`; none: the checkpoint's, float32 becoming bfloat16.
    #[uniffi(default = None)]
    pub torch_dtype: Option<String>,
}

/// A running server; `shutdown()` announces it OFFLINE and frees its sessions.
#[derive(uniffi::Object)]
pub struct Server {
    inner: Mutex<CoreServer>,
}

#[uniffi::export]
impl Server {
    /// Loads the blocks, serves them from `node` and announces them; returns once ONLINE.
    #[uniffi::constructor]
    pub fn start(node: &Arc<Node>, options: ServeOptions) -> Result<Arc<Self>, KwaaiError> {
        let model_dir = PathBuf::from(&options.model_path);
        let dht_prefix = match options.dht_prefix {
            Some(prefix) => prefix,
            None => kwaai_core::client::dht_prefix_for_dir(&model_dir)?,
        };
        let config = ServerConfig {
            model_dir,
            block_indices: Some(Span::new(options.start_block, options.end_block)?),
            dht_prefix: Some(dht_prefix),
            throughput: Some(options.throughput),
            torch_dtype: options.torch_dtype.as_deref().map(DType::from_name).transpose()?,
            ..ServerConfig::default()
        };
        Ok(Arc::new(Server { inner: Mutex::new(CoreServer::start(node.core(), config)?) }))
    }

    /// Inference sessions holding a cache now.
    pub fn active_sessions(&self) -> u32 {
        self.lock().active_sessions() as u32
    }

    /// Announces OFFLINE and stops serving; calling it again does nothing.
    pub fn shutdown(&self) {
        self.lock().shutdown();
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, CoreServer> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How to generate (transformers' names).
#[derive(uniffi::Record)]
pub struct GenerateOptions {
    #[uniffi(default = 32)]
    pub max_new_tokens: u32,
    #[uniffi(default = 0)]
    pub min_new_tokens: u32,
    #[uniffi(default = false)]
    pub do_sample: bool,
    #[uniffi(default = 1.0)]
    pub temperature: f32,
    #[uniffi(default = 0)]
    pub top_k: u32,
    #[uniffi(default = 1.0)]
    pub top_p: f32,
    #[uniffi(default = 1.0)]
    pub repetition_penalty: f32,
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Generation ends after any of these; none: the model's end-of-sequence token.
    #[uniffi(default = None)]
    pub stop_tokens: Option<Vec<u32>>,
    /// Generation ends once the text ends with any of these (as the tokenizer encodes each alone).
    #[uniffi(default = [])]
    pub stop_strings: Vec<String>,
}

/// Receives a generation's tokens, on a library thread.
#[uniffi::export(with_foreign)]
pub trait TokenListener: Send + Sync {
    /// One token and the text it adds; return false to stop the generation.
    fn on_token(&self, id: u32, text: String) -> bool;
}

/// A model whose blocks run on the swarm (Petals' `AutoDistributedModelForCausalLM`).
#[derive(uniffi::Object)]
pub struct DistributedModel {
    inner: CoreModel,
}

#[uniffi::export]
impl DistributedModel {
    /// Loads the local ends of the model in `path` and finds its blocks on `node`'s swarm under
    /// `dht_prefix` (none: the directory's name).
    #[uniffi::constructor(default(dht_prefix = None))]
    pub fn load(node: &Arc<Node>, path: String, dht_prefix: Option<String>) -> Result<Arc<Self>, KwaaiError> {
        let inner = CoreModel::load(node.core(), &PathBuf::from(path), dht_prefix.as_deref(), |_| {})?;
        Ok(Arc::new(DistributedModel { inner }))
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: String) -> Result<Vec<u32>, KwaaiError> {
        Ok(self.inner.encode(&text)?)
    }

    /// Text of token ids; special tokens are left out unless `skip_special_tokens` is false.
    #[uniffi::method(default(skip_special_tokens = true))]
    pub fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> Result<String, KwaaiError> {
        Ok(self.inner.decode_with(&ids, skip_special_tokens)?)
    }

    /// Starts generating after `prompt` on a library thread; `listener` gets each token.
    pub fn generate(
        &self,
        prompt: String,
        options: GenerateOptions,
        listener: Arc<dyn TokenListener>,
    ) -> Result<Arc<Generation>, KwaaiError> {
        let config = GenerationConfig {
            max_new_tokens: options.max_new_tokens as usize,
            min_new_tokens: options.min_new_tokens as usize,
            sampling: SamplingConfig {
                do_sample: options.do_sample,
                temperature: options.temperature,
                top_k: options.top_k as usize,
                top_p: options.top_p,
                repetition_penalty: options.repetition_penalty,
                seed: options.seed,
            },
            stop_tokens: options
                .stop_tokens
                .unwrap_or_else(|| self.inner.model().config().eos_token_id.into_iter().collect()),
            stop_sequences: options
                .stop_strings
                .iter()
                .map(|s| self.inner.stop_sequence(s))
                .collect::<Result<_, _>>()?,
        };
        Generation::start(self.inner.generate_text(&prompt, config)?, listener)
    }
}

/// One token of a generation: its id and the text it adds.
#[derive(uniffi::Record)]
pub struct GeneratedToken {
    pub id: u32,
    pub text: String,
}

/// Delivers the given tokens to `listener` as a generation would: to test or benchmark token
/// handling without a swarm.
#[uniffi::export]
pub fn replay_tokens(
    tokens: Vec<GeneratedToken>,
    listener: Arc<dyn TokenListener>,
) -> Result<Arc<Generation>, KwaaiError> {
    let tokens = tokens.into_iter().map(|t| CoreToken { id: t.id, text: t.text }).collect();
    Generation::start(TokenStream::replay(tokens)?, listener)
}

/// A generation in progress.
#[derive(uniffi::Object)]
pub struct Generation {
    cancelled: Arc<AtomicBool>,
    worker: Mutex<Option<Worker>>,
}

/// The thread that runs a generation; it returns the generated ids.
type Worker = JoinHandle<Result<Vec<u32>, KwaaiError>>;

impl Generation {
    /// Delivers `stream` to `listener` on a thread of its own.
    fn start(mut stream: TokenStream, listener: Arc<dyn TokenListener>) -> Result<Arc<Generation>, KwaaiError> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancelled);
        let worker = std::thread::Builder::new()
            .name("kwaai-uniffi-generate".into())
            .spawn(move || {
                let mut ids = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match stream.next_token() {
                        Some(Ok(token)) => {
                            ids.push(token.id);
                            if !listener.on_token(token.id, token.text) {
                                break;
                            }
                        }
                        Some(Err(e)) => return Err(KwaaiError::from(e)),
                        None => break,
                    }
                }
                stream.cancel();
                Ok(ids)
            })
            .map_err(|e| KwaaiError::Internal { message: format!("starting the generation thread: {e}") })?;
        Ok(Arc::new(Generation { cancelled, worker: Mutex::new(Some(worker)) }))
    }
}

#[uniffi::export]
impl Generation {
    /// Stops after the token being generated; the servers' sessions are closed.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Waits for the end and returns every generated token id (an error if it failed).
    pub fn wait(&self) -> Result<Vec<u32>, KwaaiError> {
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        match worker {
            Some(worker) => worker
                .join()
                .unwrap_or_else(|_| Err(KwaaiError::Internal { message: "the generation thread panicked".into() })),
            None => Err(KwaaiError::Closed { message: "wait() was already called".into() }),
        }
    }
}
