//! A Petals client in the page: [`BrowserClient`] connects to kwaai nodes over libp2p WebSockets,
//! reads the model's servers from the DHT, and generates text with the model's ends (embeddings,
//! LM head, sampling) computed in the page and every block run by the swarm.
//!
//! - `net`: the connection (WebSocket, Noise, yamux) and the `kwaai.forward` protocol.
//! - `rpc`: hivemind unary and streaming calls over it.
//! - `dht`: iterative `rpc_find` as a client.
//! - `session`: routing, inference sessions and failover.
//! - `events`: what the page's `onEvent` receives.

mod dht;
mod events;
mod net;
mod rpc;
mod session;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use futures::StreamExt;
use js_sys::{Array, Function, Object, Promise, Reflect, Symbol, Uint8Array};
use kwaai_core::client::{ClientConfig, Hop};
use kwaai_core::dht::RPC_PING;
use kwaai_core::model::{
    Checkpoint, ClientModel, Generation, GenerationConfig, ModelConfig, SamplingConfig, TextDelta, TextTokenizer,
};
use kwaai_core::wire::dht::{NodeInfo, PingRequest};
use kwaai_core::{Error, ErrorKind, Multiaddr, Result};
use libp2p::identity::Keypair;
use prost::Message;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, spawn_local, JsFuture};

use self::events::{hops_value, object, Events};
use self::net::{sleep, Connection};
use self::session::{Session, Swarm};
use crate::js_error;

/// Where the page keeps the browser's ed25519 key.
const IDENTITY_KEY: &str = "kwaai.identity";
/// How long dialing one node may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the client pings its node, which closes a connection 30 s after its last call (as p2pd
/// does): an idle page stays connected, with room for a slow ping.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Waits between reconnection attempts: doubling from the first to the last.
const RECONNECT_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// A Petals client running in the page. Create it with `BrowserClient.connect(options)`.
#[wasm_bindgen]
pub struct BrowserClient {
    inner: Rc<Inner>,
}

struct Inner {
    key: Keypair,
    bootstrap: Vec<Multiaddr>,
    connection: Rc<RefCell<Option<Connection>>>,
    swarm: Rc<Swarm>,
    model: Rc<ClientModel>,
    tokenizer: Rc<TextTokenizer>,
    route: Rc<RefCell<Vec<Hop>>>,
    closed: Cell<bool>,
    events: Events,
}

fn field(options: &JsValue, name: &str) -> JsValue {
    Reflect::get(options, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

fn bad(message: impl Into<String>) -> Error {
    Error::invalid_argument(message)
}

fn js_message(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// The browser's key from the page's storage, made and stored on first use.
fn identity() -> Result<Keypair> {
    let storage = web_sys::window().and_then(|w| w.local_storage().ok().flatten());
    let engine = base64::engine::general_purpose::STANDARD;
    if let Some(stored) = storage.as_ref().and_then(|s| s.get_item(IDENTITY_KEY).ok().flatten()) {
        match engine.decode(stored).ok().and_then(|bytes| Keypair::from_protobuf_encoding(&bytes).ok()) {
            Some(key) => return Ok(key),
            None => tracing::warn!("the stored identity is unreadable, making a new one"),
        }
    }
    let key = Keypair::generate_ed25519();
    if let Some(storage) = storage {
        let bytes =
            key.to_protobuf_encoding().map_err(|e| Error::with_source(ErrorKind::Internal, "encoding a key", e))?;
        let _ = storage.set_item(IDENTITY_KEY, &engine.encode(bytes));
    }
    Ok(key)
}

/// Fetches `url` (relative to the page) and returns its body.
async fn fetch_bytes(url: &str) -> Result<Vec<u8>> {
    let window = web_sys::window().ok_or_else(|| Error::new(ErrorKind::Internal, "no window"))?;
    let failed = |e: JsValue| Error::new(ErrorKind::Network, format!("fetching {url}: {}", js_message(&e)));
    let response: web_sys::Response =
        JsFuture::from(window.fetch_with_str(url)).await.map_err(failed)?.unchecked_into();
    if !response.ok() {
        return Err(Error::new(ErrorKind::Network, format!("fetching {url}: HTTP {}", response.status())));
    }
    let body = JsFuture::from(response.array_buffer().map_err(failed)?).await.map_err(failed)?;
    Ok(Uint8Array::new(&body).to_vec())
}

fn text(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// Dials the first of `bootstrap` that answers.
async fn dial_any(key: &Keypair, bootstrap: &[Multiaddr]) -> Result<(Connection, oneshot::Receiver<String>)> {
    let mut errors = Vec::new();
    for addr in bootstrap {
        match Connection::dial(key, addr, DIAL_TIMEOUT).await {
            Ok(connected) => return Ok(connected),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(Error::new(ErrorKind::Network, format!("no bootstrap node answered: {}", errors.join("; "))))
}

/// Watches the connection: when it ends, tells the page and reconnects with backoff, until the
/// client is closed.
async fn supervise(inner: std::rc::Weak<Inner>, mut ended: oneshot::Receiver<String>, mut peer: String) {
    loop {
        let reason = (&mut ended).await.unwrap_or_else(|_| "connection dropped".to_owned());
        let Some(client) = inner.upgrade() else { return };
        if client.closed.get() {
            return;
        }
        client.connection.borrow_mut().take();
        client.events.disconnected(&peer, &reason);
        let mut delay = RECONNECT_BACKOFF.0;
        let (key, bootstrap) = (client.key.clone(), client.bootstrap.clone());
        drop(client);
        loop {
            sleep(delay).await;
            let Some(client) = inner.upgrade().filter(|c| !c.closed.get()) else { return };
            match dial_any(&key, &bootstrap).await {
                Ok((connection, next)) => {
                    peer = connection.peer().to_base58();
                    *client.connection.borrow_mut() = Some(connection);
                    client.events.connected(&peer);
                    ended = next;
                    break;
                }
                Err(e) => {
                    client.events.error(&format!("{}: {e}", e.kind()));
                    delay = (delay * 2).min(RECONNECT_BACKOFF.1);
                }
            }
        }
    }
}

/// Pings the connected node (hivemind's `rpc_ping`) every [`KEEPALIVE`] while the client lives,
/// so that the node does not close the connection as idle between generations.
async fn keep_alive(inner: std::rc::Weak<Inner>) {
    let request = PingRequest { auth: None, peer: Some(NodeInfo { node_id: Vec::new() }), validate: false };
    loop {
        sleep(KEEPALIVE).await;
        let Some(client) = inner.upgrade().filter(|c| !c.closed.get()) else { return };
        let connection = client.connection.borrow().clone();
        drop(client);
        if let Some(connection) = connection {
            let peer = connection.peer();
            let outcome = rpc::call_unary(&connection, peer, RPC_PING, request.encode_to_vec(), KEEPALIVE / 2).await;
            if let Err(e) = outcome {
                tracing::debug!(%peer, "keep-alive ping failed: {e}");
            }
        }
    }
}

fn number(options: &JsValue, name: &str) -> Result<Option<f64>> {
    let value = field(options, name);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    value.as_f64().map(Some).ok_or_else(|| bad(format!("{name} must be a number")))
}

fn count(options: &JsValue, name: &str) -> Result<Option<usize>> {
    match number(options, name)? {
        Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(Some(n as usize)),
        Some(n) => Err(bad(format!("{name} must be a non-negative integer, not {n}"))),
        None => Ok(None),
    }
}

/// `GenerateOptions` (as the Node binding has them) as a generation config.
fn generation_config(options: &JsValue, model: &ClientModel, tokenizer: &TextTokenizer) -> Result<GenerationConfig> {
    let defaults = SamplingConfig::default();
    let do_sample = field(options, "doSample");
    let ids = |name: &str| -> Result<Option<Vec<u32>>> {
        let value = field(options, name);
        if value.is_undefined() || value.is_null() {
            return Ok(None);
        }
        let array = value.dyn_into::<Array>().map_err(|_| bad(format!("{name} must be an array of token ids")))?;
        array
            .iter()
            .map(|v| v.as_f64().map(|n| n as u32).ok_or_else(|| bad(format!("{name} holds a non-number"))))
            .collect::<Result<_>>()
            .map(Some)
    };
    let stop_strings = field(options, "stopStrings");
    let stop_sequences = if stop_strings.is_undefined() || stop_strings.is_null() {
        Vec::new()
    } else {
        let array = stop_strings.dyn_into::<Array>().map_err(|_| bad("stopStrings must be an array of strings"))?;
        array
            .iter()
            .map(|s| {
                let s = s.as_string().ok_or_else(|| bad("stopStrings holds a non-string"))?;
                let ids = tokenizer.encode(&s, false)?;
                if ids.is_empty() {
                    return Err(bad(format!("the stop string {s:?} has no tokens")));
                }
                Ok(ids)
            })
            .collect::<Result<_>>()?
    };
    Ok(GenerationConfig {
        max_new_tokens: count(options, "maxNewTokens")?.unwrap_or(32),
        min_new_tokens: count(options, "minNewTokens")?.unwrap_or(0),
        sampling: SamplingConfig {
            do_sample: do_sample.as_bool().unwrap_or(defaults.do_sample),
            temperature: number(options, "temperature")?.map_or(defaults.temperature, |t| t as f32),
            top_k: count(options, "topK")?.unwrap_or(defaults.top_k),
            top_p: number(options, "topP")?.map_or(defaults.top_p, |p| p as f32),
            repetition_penalty: number(options, "repetitionPenalty")?.map_or(defaults.repetition_penalty, |r| r as f32),
            seed: number(options, "seed")?.map_or(defaults.seed, |s| s as u64),
        },
        stop_tokens: ids("stopTokens")?.unwrap_or_else(|| model.config().eos_token_id.into_iter().collect()),
        stop_sequences,
    })
}

#[wasm_bindgen]
impl BrowserClient {
    /// Connects to the first answering node of `options.bootstrap` (`/ws` or
    /// `/webrtc-direct/certhash/...` multiaddrs ending with `/p2p/<id>`), fetches the model's `config.json`, `tokenizer.json` and `model.safetensors`
    /// from `options.modelUrl`, and reads the swarm under `options.dhtPrefix` (default: the last
    /// path segment of the model URL). `options.onEvent` receives the client's events.
    pub async fn connect(options: JsValue) -> std::result::Result<BrowserClient, JsError> {
        Self::start(options).await.map_err(js_error)
    }

    async fn start(options: JsValue) -> Result<BrowserClient> {
        let bootstrap = field(&options, "bootstrap")
            .dyn_into::<Array>()
            .map_err(|_| bad("options.bootstrap must be an array of multiaddrs"))?
            .iter()
            .map(|a| {
                let text = a.as_string().ok_or_else(|| bad("options.bootstrap holds a non-string"))?;
                text.parse::<Multiaddr>().map_err(|e| bad(format!("bad bootstrap address {text:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if bootstrap.is_empty() {
            return Err(bad("options.bootstrap needs at least one address"));
        }
        for addr in &bootstrap {
            net::split_peer(addr)?;
        }
        let mut model_url =
            field(&options, "modelUrl").as_string().ok_or_else(|| bad("options.modelUrl is required"))?;
        if !model_url.ends_with('/') {
            model_url.push('/');
        }
        let dht_prefix = match field(&options, "dhtPrefix").as_string() {
            Some(prefix) => prefix,
            None => model_url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("give options.dhtPrefix: the model URL has no last segment"))?
                .to_owned(),
        };
        let events = Events::new(field(&options, "onEvent"));
        let key = identity()?;
        let urls = ["config.json", "tokenizer.json", "model.safetensors"].map(|name| format!("{model_url}{name}"));
        let (config_json, tokenizer_json, weights) =
            futures::try_join!(fetch_bytes(&urls[0]), fetch_bytes(&urls[1]), fetch_bytes(&urls[2]))?;
        let model_config = ModelConfig::from_json(&text(config_json, "config.json")?)?;
        let num_blocks = model_config.num_layers as u32;
        let model = ClientModel::from_checkpoint(model_config, &Checkpoint::from_bytes(weights)?)?;
        let tokenizer = TextTokenizer::from_json(&text(tokenizer_json, "tokenizer.json")?)?;
        let (connection, ended) = dial_any(&key, &bootstrap).await?;
        let peer = connection.peer().to_base58();
        events.connected(&peer);
        let connection = Rc::new(RefCell::new(Some(connection)));
        let mut config = ClientConfig::new(dht_prefix, num_blocks);
        config.request_timeout = Duration::from_secs(60);
        config.connect_timeout = Duration::from_secs(10);
        config.max_retries = Some(6);
        config.max_backoff = Duration::from_secs(10);
        let swarm = Rc::new(Swarm::new(config, Rc::clone(&connection), events.clone()));
        let inner = Rc::new(Inner {
            key,
            bootstrap,
            connection,
            swarm,
            model: Rc::new(model),
            tokenizer: Rc::new(tokenizer),
            route: Rc::new(RefCell::new(Vec::new())),
            closed: Cell::new(false),
            events,
        });
        spawn_local(supervise(Rc::downgrade(&inner), ended, peer));
        spawn_local(keep_alive(Rc::downgrade(&inner)));
        Ok(BrowserClient { inner })
    }

    /// Generates text after `prompt` (a string, or an array of token ids) with `options`
    /// (`GenerateOptions` as in the Node binding). Returns a token stream: `next()` resolves to
    /// `{ done, value: { id, text } }`, `cancel()` / `return()` stop it; it is async-iterable.
    pub fn generate(&self, prompt: JsValue, options: JsValue) -> std::result::Result<JsValue, JsError> {
        let inner = &self.inner;
        if inner.closed.get() {
            return Err(js_error(Error::new(ErrorKind::Closed, "the client is closed")));
        }
        let ids = if let Some(text) = prompt.as_string() {
            inner.tokenizer.encode(&text, true).map_err(js_error)?
        } else if let Some(array) = prompt.dyn_ref::<Array>() {
            array
                .iter()
                .map(|v| v.as_f64().map(|n| n as u32).ok_or_else(|| bad("the prompt holds a non-number")))
                .collect::<Result<_>>()
                .map_err(js_error)?
        } else {
            return Err(js_error(bad("the prompt must be a string or an array of token ids")));
        };
        let options = if options.is_undefined() || options.is_null() { Object::new().into() } else { options };
        let config = generation_config(&options, &inner.model, &inner.tokenizer).map_err(js_error)?;
        let generation = Generation::new(&ids, config).map_err(js_error)?;
        let (tokens, receiver) = mpsc::unbounded();
        let (cancel, cancelled) = oneshot::channel();
        spawn_local(run_generation(Rc::clone(inner), generation, tokens, cancelled));
        let stream = TokenStream { tokens: Rc::new(RefCell::new(Some(receiver))), cancel: RefCell::new(Some(cancel)) };
        let value = JsValue::from(stream);
        let itself = Function::new_no_args("return this");
        Reflect::set(&value, &Symbol::async_iterator(), &itself).map_err(|e| JsError::new(&js_message(&e)))?;
        Ok(value)
    }

    /// The route of the last generation: `[{ peer, start, end }, ...]`.
    #[wasm_bindgen(getter)]
    pub fn route(&self) -> JsValue {
        hops_value(&self.inner.route.borrow())
    }

    /// The browser's own peer ID.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.inner.key.public().to_peer_id().to_base58()
    }

    /// The peer ID of the node the client is connected to now (`undefined` while reconnecting).
    #[wasm_bindgen(getter, js_name = connectedPeer)]
    pub fn connected_peer(&self) -> Option<String> {
        self.inner.connection.borrow().as_ref().map(|c| c.peer().to_base58())
    }

    /// Closes the connection; the client cannot be used afterwards.
    pub fn close(&self) {
        self.inner.closed.set(true);
        if let Some(connection) = self.inner.connection.borrow_mut().take() {
            connection.close();
        }
    }
}

/// Runs one generation: each step's embeddings through the swarm, the next token chosen in the
/// page, until done, failed or cancelled; then the servers' sessions are closed.
async fn run_generation(
    inner: Rc<Inner>,
    mut generation: Generation,
    tokens: mpsc::UnboundedSender<Result<(u32, String)>>,
    mut cancelled: oneshot::Receiver<()>,
) {
    let max_length = generation.max_length();
    let mut session = Session::new(Rc::clone(&inner.swarm), max_length);
    let mut text = TextDelta::default();
    let outcome: Result<()> = async {
        while let Some(embedded) = generation.next_input(&inner.model)? {
            let step = session.step(&embedded);
            let hidden = match future::select(std::pin::pin!(step), &mut cancelled).await {
                Either::Left((hidden, _)) => hidden?,
                Either::Right(_) => return Ok(()),
            };
            *inner.route.borrow_mut() = session.route();
            let id = generation.accept(&inner.model, &hidden)?;
            let delta = text.push(&inner.tokenizer, id);
            if tokens.unbounded_send(Ok((id, delta))).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
    .await;
    session.close().await;
    if let Err(e) = outcome {
        inner.events.error(&format!("{}: {e}", e.kind()));
        let _ = tokens.unbounded_send(Err(e));
    }
}

/// The receiving end of a generation: each token's id and text, or the error that ended it.
type Tokens = mpsc::UnboundedReceiver<Result<(u32, String)>>;

/// The tokens of one generation (see [`BrowserClient::generate`]).
#[wasm_bindgen]
pub struct TokenStream {
    tokens: Rc<RefCell<Option<Tokens>>>,
    cancel: RefCell<Option<oneshot::Sender<()>>>,
}

fn step_result(token: Option<(u32, String)>) -> JsValue {
    match token {
        Some((id, text)) => {
            object(&[("done", false.into()), ("value", object(&[("id", id.into()), ("text", text.into())]))])
        }
        None => object(&[("done", true.into()), ("value", JsValue::UNDEFINED)]),
    }
}

#[wasm_bindgen]
impl TokenStream {
    /// The next token: resolves to `{ done: false, value: { id, text } }`, or `{ done: true }`
    /// once the generation is over or cancelled; rejects with the generation's error.
    pub fn next(&self) -> Promise {
        let tokens = Rc::clone(&self.tokens);
        future_to_promise(async move {
            let Some(mut receiver) = tokens.borrow_mut().take() else { return Ok(step_result(None)) };
            let item = receiver.next().await;
            let done = item.is_none();
            if !done {
                *tokens.borrow_mut() = Some(receiver);
            }
            match item {
                Some(Ok(token)) => Ok(step_result(Some(token))),
                Some(Err(e)) => Err(js_error(e).into()),
                None => Ok(step_result(None)),
            }
        })
    }

    /// Stops the generation; the servers' sessions are closed.
    pub fn cancel(&self) {
        if let Some(cancel) = self.cancel.borrow_mut().take() {
            let _ = cancel.send(());
        }
        if let Some(mut receiver) = self.tokens.borrow_mut().take() {
            receiver.close();
        }
    }

    /// What `for await` calls when the loop ends early: cancels.
    #[wasm_bindgen(js_name = "return")]
    pub fn finish(&self) -> Promise {
        self.cancel();
        Promise::resolve(&step_result(None))
    }
}
