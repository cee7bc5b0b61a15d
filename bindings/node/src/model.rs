//! `DistributedModel` and its token streams: a model whose blocks run on the swarm, generating as
//! an `AsyncIterator` of `{ id, text }`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{select, Either};
use futures::StreamExt;
use kwaai_core::client::{DistributedModel as CoreModel, GeneratedToken, TokenStream as CoreStream};
use kwaai_core::model::{GenerationConfig, SamplingConfig};
use napi::bindgen_prelude::{AsyncTask, Either as JsEither};
use napi::{Env, JsFunction, JsObject, JsSymbol, Task};
use napi_derive::napi;
use tokio::sync::Notify;

use crate::error::to_js;
use crate::node::Node;

/// How to generate (transformers' names); every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct GenerateOptions {
    /// Tokens to generate at most (default 32).
    pub max_new_tokens: Option<u32>,
    /// End-of-sequence tokens are suppressed until this many were generated.
    pub min_new_tokens: Option<u32>,
    /// Sample instead of taking the most likely token.
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    /// Seed of the sampler.
    pub seed: Option<i64>,
    /// Generation ends after any of these tokens (default: the model's end-of-sequence token).
    pub stop_tokens: Option<Vec<u32>>,
    /// Generation ends once the text ends with any of these strings (each encoded alone).
    pub stop_strings: Option<Vec<String>>,
}

/// A model whose blocks run on the swarm (Petals' `AutoDistributedModelForCausalLM`).
#[napi]
pub struct DistributedModel {
    inner: Arc<CoreModel>,
}

#[napi]
impl DistributedModel {
    /// Loads the local ends of the model in `path` (embeddings, LM head, tokenizer) and finds its
    /// blocks on `node`'s swarm under `dhtPrefix` (default: the directory's name).
    #[napi(ts_return_type = "Promise<DistributedModel>")]
    pub fn load(node: &Node, path: String, dht_prefix: Option<String>) -> AsyncTask<LoadTask> {
        AsyncTask::new(LoadTask { node: node.core(), path: PathBuf::from(path), dht_prefix })
    }

    /// Token ids of `text` (special tokens added, as the model's tokenizer does).
    #[napi]
    pub fn encode(&self, env: Env, text: String) -> napi::Result<Vec<u32>> {
        self.inner.encode(&text).map_err(|e| to_js(&env, &e))
    }

    /// Text of token ids; special tokens are left out unless `skipSpecialTokens` is false.
    #[napi]
    pub fn decode(&self, env: Env, ids: Vec<u32>, skip_special_tokens: Option<bool>) -> napi::Result<String> {
        self.inner.decode_with(&ids, skip_special_tokens.unwrap_or(true)).map_err(|e| to_js(&env, &e))
    }

    /// Generates after `prompt` (text, or token ids): an async iterator of `{ id, text }`.
    /// Breaking out of `for await` (or `cancel()`) stops the generation and the servers' sessions.
    #[napi(
        ts_args_type = "prompt: string | number[], options?: GenerateOptions",
        ts_return_type = "TokenStream & AsyncIterable<GeneratedToken>"
    )]
    pub fn generate(
        &self,
        env: Env,
        prompt: JsEither<String, Vec<u32>>,
        options: Option<GenerateOptions>,
    ) -> napi::Result<JsObject> {
        let config = generation_config(&self.inner, options.unwrap_or_default()).map_err(|e| to_js(&env, &e))?;
        let stream = match prompt {
            JsEither::A(text) => self.inner.generate_text(&text, config),
            JsEither::B(ids) => self.inner.generate(&ids, config),
        }
        .map_err(|e| to_js(&env, &e))?;
        TokenStream::into_iterable(env, stream)
    }
}

/// Sets `object[Symbol.asyncIterator]` to a function returning the object itself.
fn make_async_iterable(env: &Env, object: &mut JsObject) -> napi::Result<()> {
    let symbol: JsFunction = env.get_global()?.get_named_property("Symbol")?;
    let key: JsSymbol = symbol.coerce_to_object()?.get_named_property("asyncIterator")?;
    let itself: JsFunction = env.create_function_from_closure("asyncIterator", |ctx| ctx.this::<JsObject>())?;
    object.set_property(key, itself)
}

fn generation_config(model: &CoreModel, o: GenerateOptions) -> kwaai_core::Result<GenerationConfig> {
    let defaults = SamplingConfig::default();
    let stop_sequences =
        o.stop_strings.unwrap_or_default().iter().map(|s| model.stop_sequence(s)).collect::<kwaai_core::Result<_>>()?;
    Ok(GenerationConfig {
        max_new_tokens: o.max_new_tokens.map_or(32, |n| n as usize),
        min_new_tokens: o.min_new_tokens.map_or(0, |n| n as usize),
        sampling: SamplingConfig {
            do_sample: o.do_sample.unwrap_or(defaults.do_sample),
            temperature: o.temperature.map_or(defaults.temperature, |t| t as f32),
            top_k: o.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p: o.top_p.map_or(defaults.top_p, |p| p as f32),
            repetition_penalty: o.repetition_penalty.map_or(defaults.repetition_penalty, |r| r as f32),
            seed: o.seed.map_or(defaults.seed, |s| s as u64),
        },
        stop_tokens: o.stop_tokens.unwrap_or_else(|| model.model().config().eos_token_id.into_iter().collect()),
        stop_sequences,
    })
}

/// Loads a model on the thread pool.
pub struct LoadTask {
    node: Arc<kwaai_core::Node>,
    path: PathBuf,
    dht_prefix: Option<String>,
}

impl Task for LoadTask {
    type Output = Result<CoreModel, kwaai_core::Error>;
    type JsValue = DistributedModel;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(CoreModel::load(&self.node, &self.path, self.dht_prefix.as_deref(), |_| {}))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<DistributedModel> {
        output.map(|m| DistributedModel { inner: Arc::new(m) }).map_err(|e| to_js(&env, &e))
    }
}

/// One generated token.
#[napi(object, js_name = "GeneratedToken")]
pub struct GeneratedTokenJs {
    /// Its id.
    pub id: u32,
    /// The text it adds (held back while a character is incomplete).
    pub text: String,
}

/// The result of `next()`, as the async iterator protocol has it.
#[napi(object)]
pub struct TokenStep {
    pub done: bool,
    pub value: Option<GeneratedTokenJs>,
}

struct Cancel {
    flag: AtomicBool,
    wake: Notify,
}

/// The tokens of one generation. `next()` resolves to `{ done, value }`; `cancel()` (or
/// `return()`, which `for await` calls on `break`) stops it and frees the servers' caches.
#[napi]
pub struct TokenStream {
    inner: Arc<Mutex<Option<CoreStream>>>,
    cancel: Arc<Cancel>,
}

impl TokenStream {
    /// A JS object for `stream` that `for await` iterates.
    fn into_iterable(env: Env, stream: CoreStream) -> napi::Result<JsObject> {
        let stream = TokenStream {
            inner: Arc::new(Mutex::new(Some(stream))),
            cancel: Arc::new(Cancel { flag: AtomicBool::new(false), wake: Notify::new() }),
        };
        let mut object = stream.into_instance(env)?.as_object(env);
        make_async_iterable(&env, &mut object)?;
        Ok(object)
    }
}

#[napi]
impl TokenStream {
    /// A stream that yields the given tokens as a generation would, then ends: to test or
    /// benchmark token handling without a swarm.
    #[napi(ts_return_type = "TokenStream & AsyncIterable<GeneratedToken>")]
    pub fn replay(env: Env, tokens: Vec<GeneratedTokenJs>) -> napi::Result<JsObject> {
        let tokens = tokens.into_iter().map(|t| GeneratedToken { id: t.id, text: t.text }).collect();
        let stream = CoreStream::replay(tokens).map_err(|e| to_js(&env, &e))?;
        TokenStream::into_iterable(env, stream)
    }

    /// The next token; `{ done: true }` once the generation is over or cancelled.
    #[napi(ts_return_type = "Promise<{ done: boolean, value?: GeneratedToken }>")]
    pub fn next(&self) -> AsyncTask<NextTask> {
        AsyncTask::new(NextTask { inner: Arc::clone(&self.inner), cancel: Arc::clone(&self.cancel) })
    }

    /// Stops the generation; a pending `next()` resolves to `{ done: true }`.
    #[napi]
    pub fn cancel(&self) {
        self.cancel.flag.store(true, Ordering::SeqCst);
        self.cancel.wake.notify_one();
        // Not busy in `next()`: stop it here. Busy: the pending `next()` sees the flag.
        if let Ok(mut stream) = self.inner.try_lock() {
            if let Some(mut stream) = stream.take() {
                stream.cancel();
            }
        }
    }

    /// Called by `for await` when the loop exits early: cancels.
    #[napi(js_name = "return", ts_return_type = "Promise<{ done: boolean }>")]
    pub fn return_(&self) -> AsyncTask<NextTask> {
        self.cancel();
        self.next()
    }
}

/// Waits for the next token on the thread pool.
pub struct NextTask {
    inner: Arc<Mutex<Option<CoreStream>>>,
    cancel: Arc<Cancel>,
}

impl Task for NextTask {
    type Output = Result<Option<GeneratedToken>, kwaai_core::Error>;
    type JsValue = TokenStep;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let mut slot = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stream) = slot.as_mut() else { return Ok(Ok(None)) };
        let next = if self.cancel.flag.load(Ordering::SeqCst) {
            None
        } else {
            futures::executor::block_on(async {
                match select(StreamExt::next(stream), Box::pin(self.cancel.wake.notified())).await {
                    Either::Left((token, _)) => Some(token),
                    Either::Right(_) => None,
                }
            })
        };
        match next {
            Some(Some(Ok(token))) => Ok(Ok(Some(token))),
            Some(Some(Err(e))) => {
                slot.take();
                Ok(Err(e))
            }
            Some(None) => {
                slot.take();
                Ok(Ok(None))
            }
            None => {
                if let Some(mut stream) = slot.take() {
                    stream.cancel();
                }
                Ok(Ok(None))
            }
        }
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<TokenStep> {
        match output {
            Ok(Some(t)) => Ok(TokenStep { done: false, value: Some(GeneratedTokenJs { id: t.id, text: t.text }) }),
            Ok(None) => Ok(TokenStep { done: true, value: None }),
            Err(e) => Err(to_js(&env, &e)),
        }
    }
}
