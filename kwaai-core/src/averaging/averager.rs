//! [`DecentralizedAverager`]: hivemind's averager on a kwaai [`Node`] (hivemind 1.1.10.post2:
//! hivemind/averaging/averager.py).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use libp2p::PeerId;
use prost::Message;
use rmpv::Value;
use tokio::sync::watch;

use super::allreduce::{AllReduceRunner, AllReduceSettings};
use super::keys::{schema_hash, validate_prefix_and_bits, AveragingMode, GatherInfo, TensorSchema};
use super::matchmaking::{Matchmaker, MatchmakingSettings};
use super::partition::DEFAULT_PART_SIZE_BYTES;
use super::GroupInfo;
use crate::dht::dht_time;
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::{RequestStream, Rpc};
use crate::tensor::{CompressionType, DType, Data, Tensor};
use crate::wire::averaging::{AveragingData, MessageCode};
use crate::wire::msgpack;
use crate::Node;

/// hivemind's averager class, whose name is part of the handler names
/// (`{prefix}::DecentralizedAverager.rpc_join_group`); the default [`AveragerConfig::class_name`].
pub const AVERAGER_CLASS: &str = "DecentralizedAverager";

/// How long an `rpc_aggregate_part` call waits for its group to be registered here (the leader's
/// BEGIN_ALLREDUCE may reach other members before us).
const REGISTRATION_WAIT: Duration = Duration::from_secs(15);

/// Averager settings; the defaults are hivemind's.
#[derive(Clone, Debug)]
pub struct AveragerConfig {
    /// The shared prefix of group keys and handler names (no `.`).
    pub prefix: String,
    /// The Python class name in the handler names: peers running a subclass of hivemind's
    /// averager (e.g. `TrainingAverager`) serve under their own class name.
    pub class_name: String,
    /// Start all-reduce as soon as a group has this many peers.
    pub target_group_size: Option<usize>,
    /// The smallest group a leader starts all-reduce with.
    pub min_group_size: usize,
    /// The bits of the initial group key (`prefix.0b<bits>`); after each round every member moves
    /// to the bits its group assigns it, as hivemind does.
    pub initial_group_bits: String,
    /// How long each declaration waits for followers before its leader decides.
    pub min_matchmaking_time: Duration,
    /// How long to wait for a potential leader's answer.
    pub request_timeout: Duration,
    /// The codec of the parts sent to reducers.
    pub compression: CompressionType,
    /// Parts are at most this many bytes after compression.
    pub part_size_bytes: usize,
    /// This peer's bandwidth; `None` lets it take the mean of the group's share.
    pub bandwidth: Option<f64>,
    /// Peers whose share would be under this many elements reduce nothing.
    pub min_vector_size: usize,
    /// A sender silent for this long (before its first part or between parts) is left out.
    pub sender_timeout: Option<Duration>,
    /// A reducer silent for this long is given up (its parts keep their local values).
    pub reducer_timeout: Option<Duration>,
    /// The most time one all-reduce may take once the group is formed.
    pub allreduce_timeout: Option<Duration>,
    /// Local tensors move this fraction of the way to the average (1.0: to the average).
    pub averaging_alpha: f32,
    /// Whether peers may download this averager's state (declared in the DHT under
    /// `{prefix}.all_averagers`).
    pub allow_state_sharing: bool,
    /// Downloaders try peers with a higher priority first.
    pub state_sharing_priority: f64,
    /// How often the state-sharing declaration is renewed (it expires after this long).
    pub declare_state_period: Duration,
    /// The codec of the shared state's tensors.
    pub state_compression: CompressionType,
}

impl Default for AveragerConfig {
    fn default() -> Self {
        AveragerConfig {
            prefix: "averaging".into(),
            class_name: AVERAGER_CLASS.into(),
            target_group_size: None,
            min_group_size: 2,
            initial_group_bits: String::new(),
            min_matchmaking_time: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            compression: CompressionType::None,
            part_size_bytes: DEFAULT_PART_SIZE_BYTES,
            bandwidth: None,
            min_vector_size: 0,
            sender_timeout: None,
            reducer_timeout: None,
            allreduce_timeout: None,
            averaging_alpha: 1.0,
            allow_state_sharing: true,
            state_sharing_priority: 0.0,
            declare_state_period: Duration::from_secs(30),
            state_compression: CompressionType::None,
        }
    }
}

/// What an averager is doing (hivemind's `AveragingStage`, without the trigger stage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AveragingStage {
    /// Not in a step.
    Idle = 0,
    /// Looking for a group.
    LookingForGroup = 1,
    /// Exchanging tensors with a formed group.
    RunningAllreduce = 2,
}

/// Averages float32 tensors with peers that run the same averager (Rust or Python hivemind) under
/// the same prefix: each [`step`](Self::step) finds a group through the DHT and replaces the local
/// tensors by the group's weighted mean.
pub struct DecentralizedAverager {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
    declare_state: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    rpc: Rpc,
    me: PeerId,
    config: AveragerConfig,
    aggregate_name: String,
    join_name: String,
    download_name: String,
    dht: crate::dht::Dht,
    matchmaker: Arc<Matchmaker>,
    tensors: Mutex<Vec<(Vec<usize>, Vec<f32>)>>,
    running: Mutex<HashMap<Vec<u8>, Arc<AllReduceRunner>>>,
    registered: watch::Sender<u64>,
    one_step: tokio::sync::Mutex<()>,
    stage: AtomicU8,
}

impl DecentralizedAverager {
    /// Starts an averager of `tensors` (float32) on `node` and registers its handlers
    /// (`{prefix}::DecentralizedAverager.rpc_join_group` and `.rpc_aggregate_part`).
    pub fn new(node: &Node, tensors: Vec<Tensor>, config: AveragerConfig) -> Result<DecentralizedAverager> {
        validate_prefix_and_bits(&config.prefix, &config.initial_group_bits)?;
        if config.min_group_size == 0 || config.target_group_size == Some(0) {
            return Err(Error::invalid_argument("group sizes must be at least 1"));
        }
        if config.bandwidth.is_some_and(|b| !b.is_finite() || b < 0.0) {
            return Err(Error::invalid_argument("bandwidth must be finite and non-negative"));
        }
        if let (Some(sender), Some(reducer)) = (config.sender_timeout, config.reducer_timeout) {
            if reducer <= sender {
                return Err(Error::invalid_argument("reducer_timeout must be longer than sender_timeout"));
            }
        }
        let mut stored = Vec::with_capacity(tensors.len());
        let mut schema = Vec::with_capacity(tensors.len());
        for tensor in tensors {
            let (shape, data) = tensor.into_parts();
            let Data::F32(values) = data else {
                return Err(Error::invalid_argument(format!(
                    "averaged tensors must be float32, got {}",
                    data.dtype().name()
                )));
            };
            schema.push(TensorSchema { shape: shape.clone(), dtype: DType::F32, requires_grad: false });
            stored.push((shape, values));
        }
        let rpc = node.rpc()?;
        let dht = node.dht()?;
        let runtime = node.runtime_handle()?;
        let me = node.peer_id();
        if config.class_name.is_empty() || !config.class_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid_argument(format!("bad averager class name {:?}", config.class_name)));
        }
        let handle = |method: &str| format!("{}::{}.{method}", config.prefix, config.class_name);
        let (join_name, aggregate_name) = (handle("rpc_join_group"), handle("rpc_aggregate_part"));
        let download_name = handle("rpc_download_state");
        let matchmaker = Arc::new(Matchmaker::new(
            rpc.clone(),
            dht.clone(),
            me,
            schema_hash(&schema),
            join_name.clone(),
            MatchmakingSettings {
                prefix: config.prefix.clone(),
                initial_group_bits: config.initial_group_bits.clone(),
                target_group_size: config.target_group_size,
                min_group_size: config.min_group_size,
                min_matchmaking_time: config.min_matchmaking_time,
                request_timeout: config.request_timeout,
            },
        ));
        let (registered, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            rpc: rpc.clone(),
            me,
            config,
            aggregate_name,
            join_name,
            download_name,
            dht,
            matchmaker,
            tensors: Mutex::new(stored),
            running: Mutex::new(HashMap::new()),
            registered,
            one_step: tokio::sync::Mutex::new(()),
            stage: AtomicU8::new(AveragingStage::Idle as u8),
        });
        let matchmaker = inner.matchmaker.clone();
        rpc.add_stream_handler(&inner.join_name, move |peer, requests| matchmaker.clone().serve_join(peer, requests))?;
        let weak = Arc::downgrade(&inner);
        rpc.add_stream_handler(&inner.aggregate_name, move |peer, requests| {
            serve_aggregate(weak.clone(), peer, requests)
        })?;
        let weak = Arc::downgrade(&inner);
        rpc.add_stream_handler(&inner.download_name, move |_peer, requests| serve_download(weak.clone(), requests))?;
        let declare_state = if inner.config.allow_state_sharing {
            // The first declaration is done when `new` returns, so that peers can find us at once.
            if tokio::runtime::Handle::try_current().is_err() {
                runtime.block_on(declare_state_once(&inner));
            } else {
                runtime.spawn(declare_state_once_owned(inner.clone()));
            }
            Some(runtime.spawn(declare_state(inner.clone())))
        } else {
            None
        };
        tracing::info!(prefix = inner.config.prefix, peer = %me, "averager started");
        Ok(DecentralizedAverager { inner, runtime, declare_state })
    }

    /// The hash of the averaged tensors' descriptors; peers group only with equal hashes.
    pub fn schema_hash(&self) -> Vec<u8> {
        let tensors = self.inner.lock_tensors();
        let schema: Vec<TensorSchema> = tensors
            .iter()
            .map(|(shape, _)| TensorSchema { shape: shape.clone(), dtype: DType::F32, requires_grad: false })
            .collect();
        schema_hash(&schema)
    }

    /// Downloads the state of the peer with the highest priority that shares it: its metadata
    /// (hivemind sends `{"group_key": bits}`) and its tensors. `None` if no peer shares its state.
    /// `timeout` bounds each wait for a peer.
    pub fn load_state_from_peers(&self, timeout: Duration) -> Result<Option<(Value, Vec<Tensor>)>> {
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move { inner.load_state(timeout).await });
        self.runtime
            .block_on(task)
            .map_err(|e| Error::new(ErrorKind::Closed, format!("state download stopped: {e}")))?
    }

    /// The current group bits (the group key is `{prefix}.0b{bits}`).
    pub fn group_bits(&self) -> String {
        self.inner.matchmaker.group_bits()
    }

    /// What the averager is doing now.
    pub fn stage(&self) -> AveragingStage {
        match self.inner.stage.load(Ordering::Relaxed) {
            1 => AveragingStage::LookingForGroup,
            2 => AveragingStage::RunningAllreduce,
            _ => AveragingStage::Idle,
        }
    }

    /// A copy of the averaged tensors.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.inner
            .lock_tensors()
            .iter()
            .map(|(shape, values)| Tensor::new(shape.clone(), Data::F32(values.clone())).expect("shapes were checked"))
            .collect()
    }

    /// Replaces the averaged tensors by tensors of the same shapes.
    pub fn set_tensors(&self, tensors: Vec<Tensor>) -> Result<()> {
        let mut stored = self.inner.lock_tensors();
        if tensors.len() != stored.len() {
            return Err(Error::invalid_argument(format!("expected {} tensors, got {}", stored.len(), tensors.len())));
        }
        let mut next = Vec::with_capacity(tensors.len());
        for (tensor, (shape, _)) in tensors.into_iter().zip(stored.iter()) {
            let (new_shape, data) = tensor.into_parts();
            match data {
                Data::F32(values) if new_shape == *shape => next.push((new_shape, values)),
                _ => return Err(Error::invalid_argument(format!("expected a float32 tensor of shape {shape:?}"))),
            }
        }
        *stored = next;
        Ok(())
    }

    /// Finds a group and averages with it once, blocking the calling thread; returns the group.
    /// `gather` reaches every member (see [`GroupInfo::user_data`]); `weight` (≥ 0) scales this
    /// peer's tensors in the mean; `timeout` bounds the search (retries included).
    pub fn step(&self, gather: Value, weight: f64, timeout: Duration) -> Result<GroupInfo> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::invalid_argument("step blocks: call step_async inside an async runtime"));
        }
        let inner = self.inner.clone();
        // Spawned, so that a node shut down meanwhile ends the step with an error.
        let task = self.runtime.spawn(async move { inner.step(gather, weight, timeout).await });
        self.runtime
            .block_on(task)
            .map_err(|e| Error::new(ErrorKind::Closed, format!("the averaging step was stopped: {e}")))?
    }

    /// [`step`](Self::step) for async callers (it runs on the caller's runtime).
    pub async fn step_async(&self, gather: Value, weight: f64, timeout: Duration) -> Result<GroupInfo> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.step(gather, weight, timeout).await })
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("averaging step task: {e}")))?
    }
}

impl Drop for DecentralizedAverager {
    fn drop(&mut self) {
        if let Some(task) = self.declare_state.take() {
            task.abort();
        }
        self.inner.rpc.remove_handler(&self.inner.download_name);
        self.inner.rpc.remove_handler(&self.inner.join_name);
        self.inner.rpc.remove_handler(&self.inner.aggregate_name);
    }
}

impl std::fmt::Debug for DecentralizedAverager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecentralizedAverager").field("prefix", &self.inner.config.prefix).finish()
    }
}

impl Inner {
    fn lock_tensors(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<usize>, Vec<f32>)>> {
        self.tensors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<AllReduceRunner>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn step(self: Arc<Self>, gather: Value, weight: f64, timeout: Duration) -> Result<GroupInfo> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::invalid_argument(format!("weight must be finite and non-negative, got {weight}")));
        }
        let _one = self.one_step.lock().await;
        let outcome = self.clone().step_once(gather, weight, timeout).await;
        self.stage.store(AveragingStage::Idle as u8, Ordering::Relaxed);
        outcome
    }

    async fn step_once(self: Arc<Self>, gather: Value, weight: f64, timeout: Duration) -> Result<GroupInfo> {
        let deadline = dht_time() + timeout.as_secs_f64();
        let blob = GatherInfo {
            bandwidth: self.config.bandwidth,
            mode: AveragingMode::Node,
            user_data: msgpack::pack(&gather),
        }
        .encode();
        loop {
            self.stage.store(AveragingStage::LookingForGroup as u8, Ordering::Relaxed);
            let Some(group) = self.matchmaker.look_for_group(blob.clone(), deadline).await? else {
                return Err(Error::new(ErrorKind::Timeout, format!("no averaging group formed within {timeout:?}")));
            };
            tracing::info!(size = group.size(), "averaging group formed");
            self.stage.store(AveragingStage::RunningAllreduce as u8, Ordering::Relaxed);
            match self.clone().average_with(group.clone(), weight).await {
                Ok(()) => return Ok(group),
                Err(e) if dht_time() < deadline => tracing::warn!("all-reduce failed, looking for a new group: {e}"),
                Err(e) => return Err(e),
            }
        }
    }

    async fn average_with(self: Arc<Self>, group: GroupInfo, weight: f64) -> Result<()> {
        let local: Arc<Vec<Vec<f32>>> = Arc::new(self.lock_tensors().iter().map(|(_, v)| v.clone()).collect());
        let settings = AllReduceSettings {
            compression: self.config.compression,
            part_size_bytes: self.config.part_size_bytes,
            min_vector_size: self.config.min_vector_size,
            sender_timeout: self.config.sender_timeout,
            reducer_timeout: self.config.reducer_timeout,
        };
        let runner = Arc::new(AllReduceRunner::new(
            self.rpc.clone(),
            self.aggregate_name.clone(),
            group.clone(),
            self.me,
            local,
            weight,
            settings,
        )?);
        self.lock_running().insert(group.group_id.clone(), runner.clone());
        self.registered.send_modify(|n| *n = n.wrapping_add(1));
        let outcome = match self.config.allreduce_timeout {
            Some(limit) => tokio::time::timeout(limit, runner.clone().run())
                .await
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, format!("all-reduce took over {limit:?}")))),
            None => runner.clone().run().await,
        };
        runner.finish();
        self.lock_running().remove(&group.group_id);
        let deltas = outcome?;
        let alpha = self.config.averaging_alpha;
        let mut tensors = self.lock_tensors();
        for ((_, values), delta) in tensors.iter_mut().zip(deltas) {
            for (v, d) in values.iter_mut().zip(delta) {
                *v += alpha * d;
            }
        }
        Ok(())
    }

    fn state_messages(&self) -> Result<Vec<Vec<u8>>> {
        let metadata = msgpack::pack(&Value::Map(vec![(
            Value::String("group_key".into()),
            Value::String(self.matchmaker.group_bits().into()),
        )]));
        let tensors = self.lock_tensors().clone();
        super::state::download_messages(&metadata, &tensors, self.config.state_compression)
    }

    async fn load_state(&self, timeout: Duration) -> Result<Option<(Value, Vec<Tensor>)>> {
        let key = super::keys::all_averagers_key(&self.config.prefix);
        for peer in super::state::state_donors(&self.dht, &key, self.me).await {
            match super::state::download_state(&self.rpc, peer, &self.download_name, timeout).await {
                Ok(Some(state)) => {
                    tracing::info!(%peer, "downloaded the averaged state");
                    return Ok(Some(state));
                }
                Ok(None) => tracing::debug!(%peer, "peer did not send its state"),
                Err(e) => tracing::warn!(%peer, "downloading state failed: {e}"),
            }
        }
        Ok(None)
    }

    /// The running group with this id, waiting a while for it to be registered.
    async fn running_group(&self, group_id: &[u8]) -> Option<Arc<AllReduceRunner>> {
        let mut changes = self.registered.subscribe();
        let lookup = async {
            loop {
                if let Some(runner) = self.lock_running().get(group_id) {
                    return runner.clone();
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(REGISTRATION_WAIT, lookup).await.ok()
    }
}

/// Serves one `rpc_download_state` call: the state, or nothing when sharing is off.
fn serve_download(
    inner: std::sync::Weak<Inner>,
    requests: RequestStream,
) -> impl Stream<Item = Result<Vec<u8>>> + Send + 'static {
    let served = async move {
        // Read the request and the caller's end of stream first: closing our side while the
        // caller still writes makes hivemind fail with a broken pipe.
        let _ = tokio::time::timeout(REGISTRATION_WAIT, requests.collect::<Vec<_>>()).await;
        let messages = match inner.upgrade() {
            Some(inner) if inner.config.allow_state_sharing => inner.state_messages().unwrap_or_else(|e| {
                tracing::warn!("cannot share the state: {e}");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        futures::stream::iter(messages.into_iter().map(Ok))
    };
    futures::stream::once(served).flatten()
}

/// Declares this averager as a state donor every `declare_state_period`, as hivemind does.
async fn declare_state(inner: Arc<Inner>) {
    let period = inner.config.declare_state_period.max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        declare_state_once(&inner).await;
    }
}

async fn declare_state_once_owned(inner: Arc<Inner>) {
    declare_state_once(&inner).await
}

async fn declare_state_once(inner: &Inner) {
    let key = super::keys::all_averagers_key(&inner.config.prefix);
    let period = inner.config.declare_state_period.max(Duration::from_secs(1));
    let expiration = dht_time() + period.as_secs_f64();
    let subkey = Some(Value::Binary(inner.me.to_bytes()));
    let priority = Value::F64(inner.config.state_sharing_priority);
    if let Err(e) = inner.dht.store(Value::String(key.into()), subkey, priority, expiration).await {
        tracing::debug!("declaring the state donor failed: {e}");
    }
}

/// Serves one `rpc_aggregate_part` call: finds the group of its first message, then reduces.
fn serve_aggregate(
    inner: std::sync::Weak<Inner>,
    peer: PeerId,
    mut requests: RequestStream,
) -> impl Stream<Item = Result<Vec<u8>>> + Send + 'static {
    let reply = |code: MessageCode| Ok(AveragingData { code: code as i32, ..Default::default() }.encode_to_vec());
    let served = async move {
        let Some(inner) = inner.upgrade() else {
            return futures::stream::iter([reply(MessageCode::Cancelled)]).boxed();
        };
        let first = match tokio::time::timeout(REGISTRATION_WAIT, requests.next()).await {
            Ok(Some(Ok(bytes))) => AveragingData::decode(&bytes[..]).ok(),
            _ => None,
        };
        let Some(first) = first else {
            return futures::stream::iter([reply(MessageCode::ProtocolViolation)]).boxed();
        };
        match inner.running_group(&first.group_id).await {
            Some(runner) => runner.serve(peer, first, requests).boxed(),
            None => futures::stream::iter([reply(MessageCode::BadGroupId)]).boxed(),
        }
    };
    futures::stream::once(served).flatten()
}
