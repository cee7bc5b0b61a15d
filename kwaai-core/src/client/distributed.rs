//! [`DistributedModel`]: a model directory's local ends (embeddings, LM head, tokenizer) joined to a
//! [`Client`] for its blocks, the one object hosts and bindings generate with.

use std::path::Path;
use std::sync::Arc;

use super::{Client, ClientConfig, InferenceSession, TokenStream};
use crate::error::{Error, Result};
use crate::model::{ClientModel, GenerationConfig, TextTokenizer};
use crate::node::Node;

/// A model whose blocks run on the swarm: what Petals' `AutoDistributedModelForCausalLM` is.
#[derive(Clone)]
pub struct DistributedModel {
    client: Client,
    model: Arc<ClientModel>,
    tokenizer: Option<Arc<TextTokenizer>>,
}

impl std::fmt::Debug for DistributedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedModel").field("client", &self.client).finish()
    }
}

/// The DHT prefix a swarm uses for a local model directory when none is given: the directory's
/// name with `.` and ` ` replaced by `-` (what `kwaainet` and the reference swarm script announce).
pub fn dht_prefix_for_dir(dir: &Path) -> Result<String> {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::invalid_argument(format!("{} has no directory name to derive a DHT prefix", dir.display()))
        })?;
    Ok(name.replace(['.', ' '], "-"))
}

impl DistributedModel {
    /// Loads the local ends of the model in `dir` (config.json, safetensors, and tokenizer.json
    /// when present) and a client for its blocks under `dht_prefix` (default:
    /// [`dht_prefix_for_dir`]). `configure` may adjust the client's settings.
    pub fn load(
        node: &Node,
        dir: &Path,
        dht_prefix: Option<&str>,
        configure: impl FnOnce(&mut ClientConfig),
    ) -> Result<DistributedModel> {
        let model = ClientModel::load(dir)?;
        let tokenizer =
            if dir.join("tokenizer.json").is_file() { Some(Arc::new(TextTokenizer::from_dir(dir)?)) } else { None };
        let prefix = match dht_prefix {
            Some(prefix) => prefix.to_owned(),
            None => dht_prefix_for_dir(dir)?,
        };
        let num_blocks =
            u32::try_from(model.config().num_layers).map_err(|_| Error::invalid_argument("too many blocks"))?;
        let mut config = ClientConfig::new(prefix, num_blocks);
        configure(&mut config);
        let client = Client::new(node, config)?;
        Ok(DistributedModel { client, model: Arc::new(model), tokenizer })
    }

    /// The client that routes through the swarm.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The local ends of the model.
    pub fn model(&self) -> &Arc<ClientModel> {
        &self.model
    }

    /// The tokenizer, when the directory has one.
    pub fn tokenizer(&self) -> Option<&Arc<TextTokenizer>> {
        self.tokenizer.as_ref()
    }

    /// Generates after token ids `prompt`; tokens carry their text when there is a tokenizer.
    pub fn generate(&self, prompt: &[u32], config: GenerationConfig) -> Result<TokenStream> {
        self.client.generate(Arc::clone(&self.model), self.tokenizer.clone(), prompt, config)
    }

    /// Generates after `prompt` text, encoded as transformers encodes it (special tokens added).
    pub fn generate_text(&self, prompt: &str, config: GenerationConfig) -> Result<TokenStream> {
        let ids = self.encode(prompt)?;
        self.generate(&ids, config)
    }

    /// Token ids of `text` (special tokens added, as transformers' tokenizer call does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer()
            .ok_or_else(|| Error::invalid_argument("this model directory has no tokenizer.json"))?
            .encode(text, true)
    }

    /// The ids of a stop string, encoded alone without special tokens, for
    /// [`GenerationConfig::stop_sequences`].
    pub fn stop_sequence(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self
            .tokenizer()
            .ok_or_else(|| Error::invalid_argument("this model directory has no tokenizer.json"))?
            .encode(text, false)?;
        if ids.is_empty() {
            return Err(Error::invalid_argument(format!("the stop string {text:?} has no tokens")));
        }
        Ok(ids)
    }

    /// Text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    /// Text of token ids, with special tokens (`<s>`, `</s>`, ...) left out or kept.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer()
            .ok_or_else(|| Error::invalid_argument("this model directory has no tokenizer.json"))?
            .decode(ids, skip_special_tokens)
    }

    /// A step-by-step session over hidden states, for hosts that drive their own loop (embed
    /// with [`ClientModel::embed`], read logits with [`ClientModel::logits`]).
    pub fn inference_session(&self, max_length: usize) -> Result<InferenceSession> {
        self.client.inference_session(max_length)
    }
}
