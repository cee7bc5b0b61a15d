//! [`Client`] and [`InferenceSession`]: the blocking client API on a node's runtime.

use std::sync::Arc;

use super::{
    forward, AsyncInferenceSession, ClientConfig, ForwardPass, Hop, RemoteSpan, RouteMode, SequenceManager, TokenStream,
};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{ClientModel, GenerationConfig, TextTokenizer};
use crate::node::Node;

/// A client for one model served by the swarm a [`Node`] belongs to. Cheap to clone.
///
/// Its blocking methods must not be called from inside an async runtime; async hosts use
/// [`Client::async_inference_session`] and poll [`TokenStream`] as a `Stream`.
#[derive(Clone)]
pub struct Client {
    manager: Arc<SequenceManager>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("config", &self.manager.config).finish()
    }
}

impl Client {
    /// A client for the model `config` describes, using `node`'s DHT and connections.
    pub fn new(node: &Node, config: ClientConfig) -> Result<Client> {
        let manager = SequenceManager::new(config, node.dht()?, node.rpc()?)?;
        Ok(Client { manager: Arc::new(manager), runtime: node.runtime_handle()? })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.manager.config
    }

    /// Re-reads the servers of every block from the DHT and pings them now.
    pub fn refresh(&self) -> Result<()> {
        self.runtime.block_on(self.manager.update())
    }

    /// The chain the client would use now for blocks `start..end`.
    pub fn route(&self, start: u32, end: u32, mode: RouteMode) -> Result<Vec<RemoteSpan>> {
        self.runtime.block_on(self.manager.make_route(start, end, mode, None))
    }

    /// An inference session over every block that may hold up to `max_length` tokens (servers
    /// reserve their attention caches for that many).
    pub fn inference_session(&self, max_length: usize) -> Result<InferenceSession> {
        let inner = AsyncInferenceSession::new(Arc::clone(&self.manager), max_length)?;
        Ok(InferenceSession { inner, runtime: self.runtime.clone() })
    }

    /// The same session for async hosts: `step` and `close` are futures (run them on any tokio
    /// runtime).
    pub fn async_inference_session(&self, max_length: usize) -> Result<AsyncInferenceSession> {
        AsyncInferenceSession::new(Arc::clone(&self.manager), max_length)
    }

    /// Runs hidden states `[batch, tokens, hidden]` through every block without a session (for
    /// training), with optional deep prompts `[blocks, batch or 1, prefix, hidden]` added to the
    /// first `prefix` positions before each block. Large batches run in concurrent chunks.
    pub fn forward(&self, hidden: &candle_core::Tensor, prompts: Option<&candle_core::Tensor>) -> Result<ForwardPass> {
        self.runtime.block_on(forward::forward(Arc::clone(&self.manager), hidden, prompts))
    }

    /// The gradients of `sum(pass.output() * grad_output)` with respect to the pass's hidden
    /// states and, if it had deep prompts, the prompts (through the same servers where they are
    /// still up; a part whose server failed is run forward again through another route).
    pub fn backward(
        &self,
        pass: &ForwardPass,
        grad_output: &candle_core::Tensor,
    ) -> Result<(candle_core::Tensor, Option<candle_core::Tensor>)> {
        self.runtime.block_on(forward::backward(Arc::clone(&self.manager), pass, grad_output))
    }

    /// Generates up to `config.max_new_tokens` tokens after `prompt`, running the embeddings and
    /// the LM head of `model` locally and every block remotely. Tokens come as they are chosen,
    /// with their text when a `tokenizer` is given.
    pub fn generate(
        &self,
        model: Arc<ClientModel>,
        tokenizer: Option<Arc<TextTokenizer>>,
        prompt: &[u32],
        config: GenerationConfig,
    ) -> Result<TokenStream> {
        if prompt.is_empty() {
            return Err(Error::invalid_argument("the prompt is empty"));
        }
        if model.config().num_layers != self.manager.config.num_blocks as usize {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the model has {} blocks, the client was configured for {}",
                    model.config().num_layers,
                    self.manager.config.num_blocks
                ),
            ));
        }
        let session = self.async_inference_session(prompt.len() + config.max_new_tokens)?;
        TokenStream::start(self.runtime.clone(), session, model, tokenizer, prompt.to_vec(), config)
    }
}

/// A blocking [`AsyncInferenceSession`]: step by step through the chain of servers. Dropping it
/// closes every server stream.
pub struct InferenceSession {
    inner: AsyncInferenceSession,
    runtime: tokio::runtime::Handle,
}

impl InferenceSession {
    /// Runs hidden states `[batch, tokens, hidden]` through every block; returns the output of
    /// the last block for them. The servers remember the tokens for the following steps.
    pub fn step(&mut self, hidden: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        self.runtime.block_on(self.inner.step(hidden))
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.inner.position()
    }

    /// The servers of the chain now.
    pub fn route(&self) -> Vec<Hop> {
        self.inner.route()
    }

    /// Closes every server stream and waits until the servers ended them.
    pub fn close(&mut self) {
        self.runtime.block_on(self.inner.close())
    }
}
