//! `TransformerConnectionHandler.rpc_inference`: one bidirectional stream per client session, one
//! reply per step, with the attention caches kept between steps (petals/server/handler.py
//! `rpc_inference`, `_iterate_inference_steps`; petals/server/block_functions.py
//! `iterate_rpc_inference`).
//!
//! The first message fixes the chain of blocks, `max_length`, the session id and the layout of the
//! tensors (`args_structure`); the caches are then leased from the server's [`CacheBudget`]. Each
//! message with tensors is a step: hidden states `[B, n, H]`, deep prompts (empty or
//! `[blocks, B|1, P, H]`) and int64 `hypo_ids` (empty, or the beams to keep). Steps may also arrive
//! pushed by the previous server of the chain; a `step_id` is computed once, by whichever copy
//! comes first. A message without tensors, the client going away, a step timeout or the server
//! stopping ends the session and frees its caches. Errors reach the client with the text Petals
//! uses.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use futures::stream::BoxStream;
use futures::StreamExt;
use libp2p::PeerId;
use prost::Message;
use rmpv::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::forward::candle_dtype;
use super::metadata::{py_repr, sequence, Metadata};
use super::push::{check_uids, Pusher};
use super::schema::BlockSchema;
use super::sessions::{CacheBudget, CacheLease, SessionInbox, SessionRegistry};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{BlockSpan, ModelConfig, SessionCache};
use crate::node::Node;
use crate::p2p::RequestStream;
use crate::tensor::{decode, encode, CompressionType, DType, Data, DecodeLimits, Tensor};
use crate::wire::runtime::{ExpertRequest, ExpertResponse};

/// The handle name of `rpc_inference`.
pub const RPC_INFERENCE: &str = "TransformerConnectionHandler.rpc_inference";
/// How long a session that the client ended waits for the client to close its side.
const END_GRACE: Duration = Duration::from_secs(2);

/// Limits and timeouts of inference sessions (Petals' server options of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferenceSettings {
    /// The longest session a client may ask for, in tokens (`--inference_max_length`).
    pub max_length: usize,
    /// How long a session waits for its next step (`--step_timeout`, 300 s).
    pub step_timeout: Duration,
    /// How long a session may last (`--session_timeout`, 1800 s).
    pub session_timeout: Duration,
    /// How long a push to the next server may take (`--request_timeout`, 180 s).
    pub request_timeout: Duration,
    /// The largest serialized step accepted, in bytes.
    pub max_message_size: usize,
}

impl InferenceSettings {
    /// Petals' defaults for `config`: sessions up to 8192 tokens with grouped-query attention,
    /// else 2048.
    pub fn petals_defaults(config: &ModelConfig) -> Self {
        let grouped = config.num_kv_heads < config.num_heads;
        InferenceSettings { max_length: if grouped { 8192 } else { 2048 }, ..Self::default() }
    }
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings {
            max_length: 2048,
            step_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            request_timeout: Duration::from_secs(180),
            max_message_size: 16 << 20,
        }
    }
}

/// Bytes of attention cache one token takes in one block (its keys and values), as Petals
/// counts them (`TransformerBackend.cache_bytes_per_token`).
pub fn cache_bytes_per_token(config: &ModelConfig, dtype: DType) -> u64 {
    (2 * config.num_kv_heads * config.head_dim() * dtype.size()) as u64
}

/// Serves inference sessions through loaded blocks.
pub struct InferenceService {
    blocks: Arc<Vec<BlockSpan>>,
    served: HashSet<String>,
    uids: Vec<String>,
    schema: BlockSchema,
    limits: DecodeLimits,
    settings: InferenceSettings,
    budget: CacheBudget,
    sessions: SessionRegistry,
    bytes_per_token: u64,
    pusher: Option<Pusher>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for InferenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceService").field("uids", &self.uids).field("settings", &self.settings).finish()
    }
}

impl InferenceService {
    /// A service for `blocks` (one-block spans, `blocks[i]` named `uids[i]`) whose sessions lease
    /// their caches from `budget` and receive pushes through `sessions`; outputs use `schema`.
    pub fn new(
        blocks: Vec<BlockSpan>,
        uids: Vec<String>,
        schema: BlockSchema,
        limits: DecodeLimits,
        settings: InferenceSettings,
        budget: CacheBudget,
        sessions: SessionRegistry,
    ) -> Result<Self> {
        if uids.len() != blocks.len() || blocks.is_empty() || blocks.iter().any(|b| b.blocks().len() != 1) {
            return Err(Error::invalid_argument("one uid per one-block span is needed"));
        }
        candle_dtype(schema.dtype)?;
        CompressionType::try_from(schema.compression)
            .map_err(|_| Error::invalid_argument(format!("unknown compression {}", schema.compression)))?;
        let bytes_per_token = cache_bytes_per_token(blocks[0].config(), schema.dtype);
        let (stop, _) = watch::channel(false);
        Ok(InferenceService {
            blocks: Arc::new(blocks),
            served: uids.iter().cloned().collect(),
            uids,
            schema,
            limits,
            settings,
            budget,
            sessions,
            bytes_per_token,
            pusher: None,
            stop,
        })
    }

    /// Pushes step outputs to the next server when a client names one.
    pub(crate) fn with_pusher(mut self, pusher: Pusher) -> Self {
        self.pusher = Some(pusher);
        self
    }

    /// The budget sessions lease their caches from.
    pub fn budget(&self) -> &CacheBudget {
        &self.budget
    }

    /// Ends every open session (after its current step) and refuses new ones.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Runs one session over the serialized `ExpertRequest`s of a stream; yields the serialized
    /// replies. Dropping the stream ends the session and frees its caches.
    pub fn session(self: &Arc<Self>, peer: PeerId, requests: RequestStream) -> BoxStream<'static, Result<Vec<u8>>> {
        let session = Session {
            service: Arc::clone(self),
            peer,
            requests,
            stop: self.stop.subscribe(),
            deadline: Instant::now() + self.settings.session_timeout,
            open: None,
        };
        futures::stream::unfold(Some(session), |session| async move {
            let mut session = session?;
            match session.next_reply().await {
                Some(Ok(reply)) => Some((Ok(reply), Some(session))),
                Some(Err(e)) => {
                    tracing::debug!(peer = %session.peer, "rpc_inference failed: {e}");
                    Some((Err(e), None))
                }
                None => None,
            }
        })
        .boxed()
    }
}

/// Registers `rpc_inference` on `node`, answered by `service`; pushes to next servers go out
/// through `node`.
pub fn serve_inference(node: &Node, service: Arc<InferenceService>) -> Result<()> {
    node.add_stream_handler(RPC_INFERENCE, move |peer, requests| service.session(peer, requests))
}

/// What ended the wait for a session's next message.
enum Next {
    Request(ExpertRequest),
    End(&'static str),
    Fail(Error),
}

struct Session {
    service: Arc<InferenceService>,
    peer: PeerId,
    requests: RequestStream,
    stop: watch::Receiver<bool>,
    deadline: Instant,
    open: Option<OpenSession>,
}

/// A session past its first message.
struct OpenSession {
    blocks: String,
    chain: Vec<usize>,
    batch: usize,
    max_length: usize,
    prefix: usize,
    /// Which tensor each of (hidden states, prompts, hypo ids) is, per `args_structure`.
    args: Vec<Option<usize>>,
    processed: HashSet<String>,
    inbox: Option<SessionInbox>,
    cache: Option<CacheState>,
    pending: Option<ExpertRequest>,
    pushes: u64,
    late_pushes: u64,
}

/// The caches of a session with the lease that pays for them (freed together).
struct CacheState {
    caches: Vec<SessionCache>,
    _lease: CacheLease,
}

impl Session {
    async fn next_reply(&mut self) -> Option<Result<Vec<u8>>> {
        if self.open.is_none() {
            let first = match self.next_message().await {
                Next::Request(request) => request,
                Next::End(why) => {
                    tracing::debug!(peer = %self.peer, "rpc_inference.open: {why} before the first step");
                    return None;
                }
                Next::Fail(e) => return Some(Err(e)),
            };
            match self.open(first).await {
                Ok(open) => self.open = Some(open),
                Err(e) => return Some(Err(e)),
            }
        }
        loop {
            let request = match self.open.as_mut().and_then(|o| o.pending.take()) {
                Some(request) => request,
                None => match self.next_message().await {
                    Next::Request(request) => request,
                    Next::End(why) => {
                        if let Some(open) = &self.open {
                            tracing::debug!(peer = %self.peer, blocks = open.blocks, "rpc_inference: {why}");
                        }
                        return None;
                    }
                    Next::Fail(e) => return Some(Err(e)),
                },
            };
            if request.tensors.is_empty() {
                // The client's end of session: free the caches, then let the client finish its
                // side of the stream before ours closes (closing first breaks its last write).
                self.open = None;
                let drain = async { while self.requests.next().await.is_some() {} };
                let _ = tokio::time::timeout(END_GRACE, drain).await;
                return None;
            }
            let metadata = match Metadata::parse(&request.metadata) {
                Ok(metadata) => metadata,
                Err(e) => return Some(Err(e)),
            };
            let step_id = metadata.str("step_id").map(str::to_owned);
            let pushed = metadata.get("pushed").is_some_and(|p| p.as_bool() == Some(true));
            let open = self.open.as_mut()?;
            if pushed {
                open.pushes += 1;
                tracing::debug!(peer = %self.peer, blocks = open.blocks, "rpc_inference.push: session received push");
            }
            if step_id.as_ref().is_some_and(|id| open.processed.contains(id)) {
                if pushed {
                    open.late_pushes += 1;
                    tracing::debug!(
                        blocks = open.blocks,
                        "rpc_inference.push: arrived late {:.1}% of the time",
                        open.late_pushes as f64 * 100.0 / open.pushes as f64
                    );
                }
                continue;
            }
            let reply = self.step(&request, &metadata).await;
            if let (Some(id), Some(open)) = (step_id, self.open.as_mut()) {
                open.processed.insert(id);
            }
            return Some(reply);
        }
    }

    /// Waits for the client's next message or a push, within the step and session timeouts.
    async fn next_message(&mut self) -> Next {
        let settings = self.service.settings;
        let now = Instant::now();
        if now >= self.deadline {
            return Next::Fail(session_timeout(settings.session_timeout));
        }
        let wait = settings.step_timeout.min(self.deadline - now);
        let session_ends = self.deadline - now <= settings.step_timeout;
        let inbox = self.open.as_mut().and_then(|o| o.inbox.as_mut());
        let pushed = async {
            match inbox {
                Some(inbox) => inbox.recv().await,
                None => futures::future::pending().await,
            }
        };
        let stop = &mut self.stop;
        let stopped = async {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        tokio::select! {
            message = self.requests.next() => match message {
                Some(Ok(bytes)) => self.decode_request(&bytes),
                Some(Err(e)) => Next::Fail(e),
                None => Next::End("the client went away"),
            },
            Some(request) = pushed => Next::Request(request),
            () = stopped => Next::End("the server is stopping"),
            () = tokio::time::sleep(wait) => {
                if session_ends {
                    Next::Fail(session_timeout(settings.session_timeout))
                } else {
                    tracing::warn!(peer = %self.peer, "rpc_inference.step: timed out");
                    Next::End("step timed out")
                }
            }
        }
    }

    fn decode_request(&self, bytes: &[u8]) -> Next {
        let max = self.service.settings.max_message_size;
        if bytes.len() > max {
            return Next::Fail(Error::new(
                ErrorKind::Protocol,
                format!("rpc_inference message of {} bytes exceeds the limit of {max}", bytes.len()),
            ));
        }
        match ExpertRequest::decode(bytes) {
            Ok(request) => Next::Request(request),
            Err(e) => Next::Fail(Error::with_source(ErrorKind::Protocol, "decoding an rpc_inference request", e)),
        }
    }

    /// Checks the first message, leases the caches and registers the session for pushes.
    async fn open(&mut self, first: ExpertRequest) -> Result<OpenSession> {
        let service = Arc::clone(&self.service);
        let uids = check_uids(&service.served, &first.uid)?;
        let blocks = friendly_blocks(&uids);
        tracing::info!("rpc_inference.open(blocks={blocks}, remote_peer={})", short_peer(&self.peer));
        let chain: Vec<usize> =
            uids.iter().filter_map(|uid| service.uids.iter().position(|ours| ours == uid)).collect();
        let metadata = Metadata::parse(&first.metadata)?;
        let max_length = match metadata.get("max_length") {
            Some(Value::Integer(n)) => n.as_i64().unwrap_or(i64::MAX),
            other => {
                return Err(Error::invalid_argument(format!(
                    "rpc_inference metadata must contain int max_length, got {}",
                    py_repr(other)
                )))
            }
        };
        match metadata.get("points") {
            None | Some(Value::Integer(_) | Value::F64(_) | Value::F32(_)) => {}
            other => {
                return Err(Error::invalid_argument(format!(
                    "rpc_inference should have number of points as a number or None, got {}",
                    py_repr(other)
                )))
            }
        }
        let alloc_timeout = match metadata.get("alloc_timeout") {
            None => 0.0,
            Some(value) => value
                .as_f64()
                .or_else(|| value.as_i64().map(|n| n as f64))
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| Error::invalid_argument(format!("bad alloc_timeout {}", py_repr(Some(value)))))?,
        };
        if !(0..=service.settings.max_length as i64).contains(&max_length) {
            return Err(Error::invalid_argument(format!(
                "Cannot allocate KV cache for {max_length} tokens, max = {}",
                service.settings.max_length
            )));
        }
        let max_length = max_length as usize;
        let batch = first.tensors.first().map_or(1, |t| t.size.first().copied().unwrap_or(1) as usize);
        let bytes = (chain.len() as u64)
            .saturating_mul(batch as u64)
            .saturating_mul(max_length as u64)
            .saturating_mul(service.bytes_per_token);
        let lease = service.budget.allocate(bytes, Duration::from_secs_f64(alloc_timeout.min(1e9))).await?;
        if let Some(adapter) = metadata.str("active_adapter").filter(|a| !a.is_empty()) {
            return Err(Error::invalid_argument(format!("'adapter {adapter} not found'")));
        }
        let inbox = metadata.str("session_id").map(|id| service.sessions.open(id)).transpose()?;
        let args = match metadata.get("args_structure") {
            Some(structure) => args_layout(structure)?,
            None => vec![Some(0), Some(1), Some(2)],
        };
        let caches = chain.iter().map(|&i| service.blocks[i].new_cache(max_length)).collect();
        tracing::debug!(blocks, batch, max_length, bytes, "rpc_inference session opened");
        Ok(OpenSession {
            blocks,
            chain,
            batch,
            max_length,
            prefix: 0,
            args,
            processed: HashSet::new(),
            inbox,
            cache: Some(CacheState { caches, _lease: lease }),
            pending: Some(first),
            pushes: 0,
            late_pushes: 0,
        })
    }

    /// Runs one step and returns the serialized reply.
    async fn step(&mut self, request: &ExpertRequest, metadata: &Metadata) -> Result<Vec<u8>> {
        let service = Arc::clone(&self.service);
        let open = self.open.as_mut().ok_or_else(|| Error::new(ErrorKind::Internal, "no open session"))?;
        if open.args.len() < 3 {
            return Err(Error::invalid_argument(format!(
                "not enough values to unpack (expected at least 3, got {})",
                open.args.len()
            )));
        }
        let take = |position: usize| -> Result<Option<Tensor>> {
            let Some(i) = open.args[position] else { return Ok(None) };
            let msg = request.tensors.get(i).ok_or_else(|| Error::invalid_argument("tuple index out of range"))?;
            decode(msg, &service.limits).map(Some)
        };
        let hidden = take(0)?.ok_or_else(|| Error::invalid_argument("rpc_inference needs hidden states"))?;
        let prompts = take(1)?.filter(|p| p.numel() > 0);
        let hypo_ids = match take(2)? {
            None => Vec::new(),
            Some(ids) => hypo_ids(ids)?,
        };
        let [batch, length, _] = hidden.shape() else {
            return Err(Error::invalid_argument(format!(
                "not enough values to unpack (expected 3, got {})",
                hidden.shape().len()
            )));
        };
        let (batch, length) = (*batch, *length);
        let dtype = candle_dtype(service.schema.dtype)?;
        let hidden = hidden.into_candle(&Device::Cpu)?.to_dtype(dtype)?;
        let prompts = prompts.map(|p| p.into_candle(&Device::Cpu)?.to_dtype(dtype).map_err(Error::from)).transpose()?;
        let has_prompts = prompts.is_some();
        if let Some(p) = &prompts {
            if p.dims().first() != Some(&open.chain.len()) {
                return Err(Error::invalid_argument(format!(
                    "Received {} prompts for {} backends",
                    p.dims().first().copied().unwrap_or(0),
                    open.chain.len()
                )));
            }
        }
        if open.prefix + length > open.max_length {
            return Err(Error::invalid_argument(format!(
                "Maximum length exceeded: prefix {} + current {length} exceeds pre-allocated maximum {}",
                open.prefix, open.max_length
            )));
        }
        let output = if batch * length > 0 {
            if batch != open.batch {
                return Err(Error::invalid_argument(format!(
                    "the session's cache holds a batch of {}, got hidden states for {batch}",
                    open.batch
                )));
            }
            if !hypo_ids.is_empty() && hypo_ids.len() != batch {
                return Err(Error::invalid_argument(format!("{} hypo ids for a batch of {batch}", hypo_ids.len())));
            }
            let mut cache = open.cache.take().ok_or_else(|| Error::new(ErrorKind::Internal, "cache in use"))?;
            let blocks = Arc::clone(&service.blocks);
            let chain = open.chain.clone();
            let (cache, output) = tokio::task::spawn_blocking(move || {
                let output = run_chain(&blocks, &chain, hidden, prompts, &hypo_ids, &mut cache.caches);
                (cache, output)
            })
            .await
            .map_err(|e| Error::with_source(ErrorKind::Internal, "the inference task failed", e))?;
            open.cache = Some(cache);
            output?
        } else {
            hidden
        };
        let compression = CompressionType::try_from(service.schema.compression).unwrap_or(CompressionType::None);
        let output = Tensor::with_candle_view(&output, |view| encode(&view, compression))??;
        if !has_prompts {
            if let Some(pusher) = &service.pusher {
                pusher.push(request, &output, metadata);
            }
        }
        open.prefix += length;
        Ok(ExpertResponse { tensors: vec![output], metadata: Vec::new() }.encode_to_vec())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        tracing::info!("rpc_inference.close(blocks={}, tokens={})", self.blocks, self.prefix);
    }
}

/// Runs the blocks `chain` over one step, reordering the caches by `hypo_ids` first.
fn run_chain(
    blocks: &[BlockSpan],
    chain: &[usize],
    hidden: candle_core::Tensor,
    prompts: Option<candle_core::Tensor>,
    hypo_ids: &[u32],
    caches: &mut [SessionCache],
) -> Result<candle_core::Tensor> {
    let mut x = hidden;
    for (row, (&block, cache)) in chain.iter().zip(caches.iter_mut()).enumerate() {
        if !hypo_ids.is_empty() && !cache.is_empty() {
            cache.reorder(hypo_ids)?;
        }
        let prompt = prompts.as_ref().map(|p| p.narrow(0, row, 1)).transpose()?;
        x = blocks[block].forward_with_cache(&x, prompt.as_ref(), cache)?;
    }
    Ok(x)
}

/// The beams to keep: an int64 tensor (Petals asserts the dtype), empty for none.
fn hypo_ids(ids: Tensor) -> Result<Vec<u32>> {
    let dtype = ids.dtype();
    let Data::I64(values) = ids.data() else {
        return Err(Error::invalid_argument(format!("hypo ids must be int64, got torch.{}", dtype.name())));
    };
    values
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| Error::invalid_argument(format!("hypo id {i} is out of range"))))
        .collect()
}

/// Which flat tensor each positional argument is, from `args_structure` (`((b"__T0", ...), {})`).
fn args_layout(structure: &Value) -> Result<Vec<Option<usize>>> {
    let bad = || Error::new(ErrorKind::Protocol, "args_structure is not (args, kwargs)");
    let parts = sequence(structure).ok_or_else(bad)?;
    let args = parts.first().and_then(sequence).ok_or_else(bad)?;
    Ok(args
        .iter()
        .map(|arg| match arg {
            Value::Binary(name) => name.strip_prefix(b"__T").and_then(|i| std::str::from_utf8(i).ok()?.parse().ok()),
            _ => None,
        })
        .collect())
}

/// `start:end` for uids `prefix.start` .. `prefix.(end-1)`, as Petals logs them.
fn friendly_blocks(uids: &[String]) -> String {
    let indices: Vec<u64> = uids.iter().filter_map(|u| u.rsplit('.').next()?.parse().ok()).collect();
    match (indices.iter().min(), indices.iter().max()) {
        (Some(lo), Some(hi)) => format!("{lo}:{}", hi + 1),
        _ => uids.join(" "),
    }
}

fn short_peer(peer: &PeerId) -> String {
    let text = peer.to_base58();
    format!("...{}", &text[text.len().saturating_sub(6)..])
}

fn session_timeout(limit: Duration) -> Error {
    Error::new(ErrorKind::Timeout, format!("rpc_inference session exceeded {} s", limit.as_secs()))
}
