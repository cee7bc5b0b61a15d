//! [`Server`]: a span of a model's blocks served from a [`Node`] as a Petals 2.2 server serves
//! it (petals/server/server.py `Server`, `ModuleContainer`): announced JOINING while it loads,
//! answering `rpc_info`, `rpc_forward(_stream)`, `rpc_backward(_stream)`, `rpc_inference` and
//! `rpc_push` (and other servers' reachability checks), announced ONLINE
//! (with its free cache and its round trips to the next servers refreshed every update period),
//! then OFFLINE when shut down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::announce::Span;
use super::announcer::{Announcement, Announcer};
use super::backward::{serve_backward, BackwardService, RPC_BACKWARD, RPC_BACKWARD_STREAM};
use super::forward::{serve_forward, ForwardService, RPC_FORWARD, RPC_FORWARD_STREAM};
use super::handler::{serve_info, InfoService};
use super::inference::{cache_bytes_per_token, serve_inference, InferenceService, InferenceSettings, RPC_INFERENCE};
use super::info::RPC_INFO;
use super::info::{ServerInfo, ServerState};
use super::pings::NextPings;
use super::prefix::block_uid;
use super::prefix::dht_prefix_for_repo;
use super::push::{serve_push, PushCounters, PushService, Pusher, RPC_PUSH};
use super::reachability::{serve_reachability, Reachability};
use super::schema::{BlockSchema, ServerRpcInfo};
use super::selection::choose_blocks_from_dht;
use super::sessions::{CacheBudget, SessionRegistry};
use super::throughput::{server_throughput, ServerThroughput, ThroughputConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{BlockSpan, LoadOptions, ModelConfig};
use crate::node::Node;
use crate::p2p::Rpc;
use crate::tensor::{CompressionType, DType, DecodeLimits};

/// What to serve and how; the defaults are Petals' where it has one.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A Hugging Face model directory (config.json and safetensors).
    pub model_dir: PathBuf,
    /// The blocks to serve (`--block_indices a:b`); give this or `num_blocks`.
    pub block_indices: Option<Span>,
    /// How many blocks to serve (`--num_blocks`): the blocks are chosen as Petals chooses them,
    /// where the swarm's throughput is lowest.
    pub num_blocks: Option<u32>,
    /// The model's DHT prefix; `None`: derived from `repository` as Petals derives it.
    pub dht_prefix: Option<String>,
    /// The Hugging Face repository the directory holds (e.g. `meta-llama/Llama-2-7b-hf`), used
    /// only to derive the DHT prefix.
    pub repository: Option<String>,
    /// Requests per second announced (`--throughput`), positive; `None`: measured on the first
    /// served block and combined with the network estimate as Petals does, cached across runs.
    pub throughput: Option<f64>,
    /// A name for swarm monitors (`--public_name`).
    pub public_name: Option<String>,
    /// Inference steps per second through one block, announced for clients' routing (Petals
    /// measures it; `None` leaves it out, and clients assume 300).
    pub inference_rps: Option<f64>,
    /// The dtype served; `None`: Petals' `auto` (the checkpoint's, float32 becoming bfloat16).
    pub torch_dtype: Option<DType>,
    /// The codec of replies and the one clients are asked to use (`--compression`, NONE).
    pub compression: CompressionType,
    /// Attention-cache tokens per block (`--attn_cache_tokens`); `None`: 16384 with grouped-query
    /// attention, else 4096.
    pub attn_cache_tokens: Option<u64>,
    /// The most inference sessions open at once.
    pub max_sessions: usize,
    /// The longest session, in tokens (`--inference_max_length`); `None`: 8192 with grouped-query
    /// attention, else 2048.
    pub inference_max_length: Option<usize>,
    /// The largest serialized inference step or push accepted, in bytes (the node's RPC frame
    /// limit applies too).
    pub max_message_size: usize,
    /// The longest a session waits for cache memory (`--max_alloc_timeout`, 600 s).
    pub max_alloc_timeout: Duration,
    /// `--request_timeout` (180 s): pushes to the next server.
    pub request_timeout: Duration,
    /// `--session_timeout` (1800 s).
    pub session_timeout: Duration,
    /// `--step_timeout` (300 s).
    pub step_timeout: Duration,
    /// How often the span is re-announced (`--update_period`; the Petals `Server` class: 60 s).
    pub update_period: Duration,
    /// How long each announcement lives; `None`: twice the update period, at least 3 s.
    pub expiration: Option<Duration>,
    /// Told `(blocks loaded, blocks to load)` as the span loads, for progress displays.
    pub on_load_progress: Option<LoadProgressCallback>,
}

/// Receives `(blocks loaded, blocks to load)` while a server loads its span.
#[derive(Clone)]
pub struct LoadProgressCallback(pub Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for LoadProgressCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgressCallback")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let inference = InferenceSettings::default();
        ServerConfig {
            model_dir: PathBuf::new(),
            block_indices: None,
            num_blocks: None,
            dht_prefix: None,
            repository: None,
            throughput: None,
            public_name: None,
            inference_rps: None,
            torch_dtype: None,
            compression: CompressionType::None,
            attn_cache_tokens: None,
            max_sessions: 128,
            inference_max_length: None,
            max_message_size: inference.max_message_size,
            max_alloc_timeout: Duration::from_secs(600),
            request_timeout: inference.request_timeout,
            session_timeout: inference.session_timeout,
            step_timeout: inference.step_timeout,
            update_period: Duration::from_secs(60),
            expiration: None,
            on_load_progress: None,
        }
    }
}

/// A running Petals server. [`Server::shutdown`] (or dropping it) announces OFFLINE, removes its
/// handlers and ends its sessions.
pub struct Server {
    rpc: Rpc,
    span: Span,
    dht_prefix: String,
    uids: Vec<String>,
    budget: CacheBudget,
    /// Bytes of one key (or value) row of one token in one block: `cache_tokens_left`'s unit.
    row_bytes: u64,
    inference: Arc<InferenceService>,
    pushes: PushCounters,
    announcer: Option<Announcer>,
    /// Answers other servers' reachability checks while serving.
    reachability: Option<Reachability>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("dht_prefix", &self.dht_prefix).field("span", &self.span).finish()
    }
}

impl Server {
    /// Announces the span JOINING, loads it, registers the handlers on `node` and announces it
    /// ONLINE. A load failure is announced OFFLINE and returned.
    pub fn start(node: &Node, config: ServerConfig) -> Result<Server> {
        let model = ModelConfig::from_dir(&config.model_dir)?;
        let num_layers = u32::try_from(model.num_layers).map_err(|_| Error::invalid_argument("too many blocks"))?;
        let dht_prefix = match (&config.dht_prefix, &config.repository) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(repo)) => dht_prefix_for_repo(model.family, repo),
            (None, None) => {
                return Err(Error::invalid_argument(
                    "a local model directory needs a dht_prefix (or the repository it holds)",
                ))
            }
        };
        if config.throughput.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err(Error::invalid_argument("throughput must be a positive number of requests per second"));
        }
        if config.inference_rps.is_some_and(|rps| !(rps.is_finite() && rps > 0.0)) {
            return Err(Error::invalid_argument("inference_rps must be a positive number"));
        }
        let span = block_span(node, &config, &dht_prefix, num_layers)?;
        let dtype = resolve_dtype(config.torch_dtype, model.torch_dtype.as_deref())?;
        let grouped = model.num_kv_heads < model.num_heads;
        let bytes_per_token = cache_bytes_per_token(&model, dtype);
        let cache_tokens = config.attn_cache_tokens.unwrap_or(if grouped { 16384 } else { 4096 });
        let blocks_served = u64::from(span.end - span.start);
        let budget = CacheBudget::new(
            cache_budget_bytes(cache_tokens, bytes_per_token, blocks_served, dtype),
            config.max_sessions,
            config.max_alloc_timeout,
        );
        let row_bytes = (bytes_per_token / 2).max(1);
        let uids: Vec<String> = (span.start..span.end).map(|i| block_uid(&dht_prefix, i)).collect();
        let (throughput, measured) = match config.throughput {
            Some(throughput) => (throughput, None),
            None => {
                let measured = measure_throughput(&config, span, dtype)?;
                (measured.throughput, Some(measured.info))
            }
        };

        let mut info = ServerInfo {
            public_name: config.public_name.clone(),
            inference_rps: config.inference_rps,
            torch_dtype: Some(dtype.name().to_owned()),
            quant_type: Some("none".into()),
            using_relay: Some(false),
            cache_tokens_left: Some(budget.bytes_left() / row_bytes),
            ..ServerInfo::new(ServerState::Joining, throughput)
        };
        if let Some(measured) = measured {
            measured.apply_to(&mut info, throughput);
            info.inference_rps = config.inference_rps.or(info.inference_rps);
        }
        let announcement = Announcement {
            dht_prefix: dht_prefix.clone(),
            span,
            num_blocks: num_layers,
            info,
            update_period: config.update_period,
            lifetime: config.expiration,
        };
        let announced_budget = budget.clone();
        let mut next_pings =
            NextPings::new(node.rpc()?, node.dht()?, node.peer_id(), dht_prefix.clone(), span, num_layers);
        let ping_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::with_source(ErrorKind::Io, "starting the ping runtime", e))?;
        let announcer = Announcer::start_with(node.dht()?, node.peer_id(), announcement, move |info| {
            info.cache_tokens_left = Some(announced_budget.bytes_left() / row_bytes);
            if info.state != ServerState::Offline {
                info.next_pings = Some(ping_runtime.block_on(next_pings.refresh()));
            }
        })?;
        tracing::info!(dht_prefix, "announced blocks {}:{} as joining", span.start, span.end);

        let rpc = node.rpc()?;
        let started = Self::load_and_register(node, &config, &model, span, &dht_prefix, &uids, dtype, &budget);
        let (inference, pushes) = match started {
            Ok(started) => started,
            Err(e) => {
                remove_handlers(&rpc);
                if let Err(offline) = announcer.shutdown() {
                    tracing::warn!("announcing OFFLINE after a failed start: {offline}");
                }
                return Err(e);
            }
        };
        let reachability =
            serve_reachability(node).map_err(|e| tracing::warn!("not answering reachability checks: {e}")).ok();
        let server = Server {
            rpc,
            span,
            dht_prefix,
            uids,
            budget,
            row_bytes,
            inference,
            pushes,
            announcer: Some(announcer),
            reachability,
        };
        if let Some(announcer) = &server.announcer {
            announcer.set_state(ServerState::Online)?;
        }
        tracing::info!(dht_prefix = server.dht_prefix, "serving blocks {}:{}", span.start, span.end);
        Ok(server)
    }

    #[allow(clippy::too_many_arguments)]
    fn load_and_register(
        node: &Node,
        config: &ServerConfig,
        model: &ModelConfig,
        span: Span,
        dht_prefix: &str,
        uids: &[String],
        dtype: DType,
        budget: &CacheBudget,
    ) -> Result<(Arc<InferenceService>, PushCounters)> {
        let total = (span.end - span.start) as usize;
        let blocks = (span.start..span.end)
            .enumerate()
            .map(|(n, i)| {
                let block = BlockSpan::load(&config.model_dir, i as usize, i as usize + 1, LoadOptions::default())?;
                if let Some(progress) = &config.on_load_progress {
                    (progress.0)(n + 1, total);
                }
                Ok(block)
            })
            .collect::<Result<Vec<_>>>()?;
        let schema =
            BlockSchema { hidden_size: model.hidden_size as u64, dtype, compression: config.compression as i32 };
        let limits = DecodeLimits::default();
        let settings = InferenceSettings {
            max_length: config.inference_max_length.unwrap_or(InferenceSettings::petals_defaults(model).max_length),
            step_timeout: config.step_timeout,
            session_timeout: config.session_timeout,
            request_timeout: config.request_timeout,
            max_message_size: config.max_message_size,
        };
        let sessions = SessionRegistry::default();
        let pushes = PushCounters::default();
        let pusher = Pusher::new(node.rpc()?, dht_prefix.to_owned(), config.request_timeout, pushes.clone());
        let inference = Arc::new(
            InferenceService::new(
                blocks.clone(),
                uids.to_vec(),
                schema,
                limits,
                settings,
                budget.clone(),
                sessions.clone(),
            )?
            .with_pusher(pusher),
        );
        let server_info = ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 0 };
        let bytes_per_token = cache_bytes_per_token(model, dtype);
        serve_info(
            node,
            InfoService::new(uids.to_vec(), schema, server_info).with_cache(budget.clone(), bytes_per_token),
        )?;
        serve_forward(node, ForwardService::new(blocks.clone(), uids.to_vec(), schema, limits)?)?;
        serve_backward(node, BackwardService::new(blocks, uids.to_vec(), schema, limits)?)?;
        serve_inference(node, Arc::clone(&inference))?;
        serve_push(node, PushService::new(uids.to_vec(), sessions, pushes.clone(), config.max_message_size))?;
        Ok((inference, pushes))
    }

    /// The served blocks.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The model's DHT prefix.
    pub fn dht_prefix(&self) -> &str {
        &self.dht_prefix
    }

    /// The served block uids, in order.
    pub fn uids(&self) -> &[String] {
        &self.uids
    }

    /// Inference sessions holding a cache now.
    pub fn active_sessions(&self) -> usize {
        self.budget.active_sessions()
    }

    /// Attention-cache tokens still free, counted as Petals announces `cache_tokens_left` (key and
    /// value rows of one block each count once).
    pub fn cache_tokens_left(&self) -> u64 {
        self.budget.bytes_left() / self.row_bytes
    }

    /// How many pushes this server sent to next servers and received from previous ones.
    pub fn pushes(&self) -> &PushCounters {
        &self.pushes
    }

    /// Announces OFFLINE, removes the handlers and ends open sessions. Idempotent.
    pub fn shutdown(&mut self) {
        drop(self.reachability.take());
        let Some(announcer) = self.announcer.take() else { return };
        match announcer.shutdown() {
            Ok(_) => tracing::info!("announced blocks {}:{} as offline", self.span.start, self.span.end),
            Err(e) => tracing::warn!("announcing OFFLINE failed: {e}"),
        }
        remove_handlers(&self.rpc);
        self.inference.stop();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn remove_handlers(rpc: &Rpc) {
    for name in [RPC_INFO, RPC_FORWARD, RPC_FORWARD_STREAM, RPC_BACKWARD, RPC_BACKWARD_STREAM, RPC_INFERENCE, RPC_PUSH]
    {
        rpc.remove_handler(name);
    }
}

/// The cache budget in the bytes sessions lease: Petals' `tokens * bytes_per_token * blocks`
/// (counted in the served dtype), scaled down for dtypes narrower than the float32 the caches are
/// held in, so that the memory really used stays what Petals would use.
fn cache_budget_bytes(tokens: u64, bytes_per_token: u64, blocks: u64, dtype: DType) -> u64 {
    let held_per_counted = (DType::F32.size() / dtype.size()).max(1) as u64;
    tokens.saturating_mul(bytes_per_token).saturating_mul(blocks) / held_per_counted
}

/// The blocks to serve: `block_indices`, or `num_blocks` chosen from the swarm's announcements
/// as Petals' block selection chooses them.
fn block_span(node: &Node, config: &ServerConfig, dht_prefix: &str, num_layers: u32) -> Result<Span> {
    match (config.block_indices, config.num_blocks) {
        (Some(span), None) if span.end <= num_layers => Ok(span),
        (Some(span), None) => Err(Error::invalid_argument(format!(
            "blocks {}:{} are past the model's {num_layers} blocks",
            span.start, span.end
        ))),
        (None, Some(n)) if n == 0 || n > num_layers => {
            Err(Error::invalid_argument(format!("num_blocks must be 1 to {num_layers}, not {n}")))
        }
        (None, Some(n)) => {
            let dht = node.dht()?;
            let span = node.runtime_handle()?.block_on(choose_blocks_from_dht(&dht, dht_prefix, num_layers, n))?;
            tracing::info!(dht_prefix, "chose blocks {}:{} where the swarm needs them", span.start, span.end);
            Ok(span)
        }
        (Some(_), Some(_)) => Err(Error::invalid_argument("Please specify num_blocks or block_indices, not both")),
        (None, None) => Err(Error::invalid_argument("give the blocks to serve (block_indices or num_blocks)")),
    }
}

/// Petals' throughput for a server of `span`: measured on its first block (or read from the cache
/// of earlier measurements of this model and dtype).
fn measure_throughput(config: &ServerConfig, span: Span, dtype: DType) -> Result<ServerThroughput> {
    let first = span.start as usize;
    let probe = BlockSpan::load(&config.model_dir, first, first + 1, LoadOptions::default())?;
    let model_name = config.repository.clone().unwrap_or_else(|| config.model_dir.display().to_string());
    let throughput_config = ThroughputConfig::new(model_name, dtype.name(), (span.end - span.start) as usize);
    tracing::info!("measuring throughput (cached for later starts)");
    let measured = server_throughput(&probe, &throughput_config)?;
    tracing::info!(throughput = measured.throughput, "throughput measured");
    Ok(measured)
}

/// Petals' `--torch_dtype auto` on a CPU: the checkpoint's dtype, float32 (or none) becoming
/// bfloat16; float16 is refused.
fn resolve_dtype(requested: Option<DType>, checkpoint: Option<&str>) -> Result<DType> {
    let dtype = match requested {
        Some(dtype) => dtype,
        None => match checkpoint {
            Some("bfloat16") => DType::BF16,
            Some("float16") => DType::F16,
            _ => DType::BF16,
        },
    };
    match dtype {
        DType::F16 => Err(Error::invalid_argument(
            "Type float16 is not supported on CPU. Please use --torch_dtype float32 or --torch_dtype bfloat16",
        )),
        DType::F32 | DType::BF16 => Ok(dtype),
        other => Err(Error::invalid_argument(format!("cannot serve blocks in {}", other.name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_follows_petals_auto_rule() {
        assert_eq!(resolve_dtype(None, Some("float32")).unwrap(), DType::BF16);
        assert_eq!(resolve_dtype(None, None).unwrap(), DType::BF16);
        assert_eq!(resolve_dtype(None, Some("bfloat16")).unwrap(), DType::BF16);
        assert_eq!(resolve_dtype(Some(DType::F32), Some("bfloat16")).unwrap(), DType::F32);
        assert!(resolve_dtype(None, Some("float16")).unwrap_err().message().contains("not supported on CPU"));
    }

    #[test]
    fn the_cache_budget_bounds_the_float32_memory_caches_really_use() {
        assert_eq!(cache_budget_bytes(4096, 1024, 2, DType::F32), 4096 * 1024 * 2);
        assert_eq!(cache_budget_bytes(4096, 512, 2, DType::BF16), 4096 * 512 * 2 / 2);
    }

    #[test]
    fn blocks_are_given_exactly_once() {
        let span = Span::new(1, 3).unwrap();
        let node = Node::start(crate::NodeConfig::default()).unwrap();
        let config = ServerConfig { block_indices: Some(span), ..ServerConfig::default() };
        assert_eq!(block_span(&node, &config, "m", 4).unwrap(), span);
        assert!(block_span(&node, &config, "m", 2).is_err());
        assert!(block_span(&node, &ServerConfig::default(), "m", 4).is_err());
        let both = ServerConfig { num_blocks: Some(2), ..config };
        assert!(block_span(&node, &both, "m", 4).is_err());
        let too_many = ServerConfig { num_blocks: Some(5), ..ServerConfig::default() };
        assert!(block_span(&node, &too_many, "m", 4).unwrap_err().message().contains("1 to 4"));
        // Alone in its swarm, a server of two blocks takes the first two.
        let two = ServerConfig { num_blocks: Some(2), ..ServerConfig::default() };
        assert_eq!(block_span(&node, &two, "m", 4).unwrap(), Span::new(0, 2).unwrap());
    }
}
