//! Inference through the swarm from the page: the servers of every block read from the DHT, routes
//! chosen by kwaai_core's routing (min latency), one `rpc_inference` stream per hop, every step
//! through every hop in order, and failover that bans a failing server, rebuilds that part of the
//! chain and replays its inputs, as the native client does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use candle_core::Tensor as CandleTensor;
use kwaai_core::client::inference_wire::{
    close_request, decode_hidden, next_server, span_uid, step_request, uuid4, StepOpening, RPC_INFERENCE,
};
use kwaai_core::client::routing::{min_latency_route, retry_delay, Blacklist, SwarmView};
use kwaai_core::client::swarm::{servers_of, RpcInfo};
use kwaai_core::client::{ClientConfig, Hop, RemoteSpan};
use kwaai_core::server::{block_uid, ServerState, RPC_INFO};
use kwaai_core::tensor::CompressionType;
use kwaai_core::wire::msgpack;
use kwaai_core::wire::runtime::{ExpertInfo, ExpertUid};
use kwaai_core::{Error, ErrorKind, PeerId, Result};
use prost::Message;
use rmpv::Value;
use web_time::Instant;

use super::events::Events;
use super::net::{sleep, Connection};
use super::rpc::{call_unary, StreamCall};

/// How long closing a server stream waits for the server to end it.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the client knows of the swarm of one model, shared by its sessions.
pub struct Swarm {
    /// The model and the client's tunables.
    pub config: ClientConfig,
    connection: Rc<RefCell<Option<Connection>>>,
    view: RefCell<Option<(SwarmView, Instant)>>,
    banned: RefCell<Blacklist>,
    rpc_info: Cell<Option<RpcInfo>>,
    events: Events,
}

impl Swarm {
    /// A swarm reached through whatever connection `connection` holds at the time of each call.
    pub fn new(config: ClientConfig, connection: Rc<RefCell<Option<Connection>>>, events: Events) -> Self {
        let banned = RefCell::new(Blacklist::new(config.ban_timeout));
        Swarm { config, connection, view: RefCell::new(None), banned, rpc_info: Cell::new(None), events }
    }

    /// The current connection to a kwaai node.
    pub fn connection(&self) -> Result<Connection> {
        self.connection
            .borrow()
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Network, "not connected to any kwaai node (reconnecting)"))
    }

    /// Re-reads every block's servers from the DHT.
    pub async fn update(&self) -> Result<()> {
        let keys: Vec<Value> =
            (0..self.config.num_blocks).map(|i| Value::from(block_uid(&self.config.dht_prefix, i))).collect();
        let found = super::dht::get_many(&self.connection()?, &keys, self.config.connect_timeout * 2).await?;
        let blocks = found.iter().map(|value| servers_of(&self.config, value)).collect();
        *self.view.borrow_mut() = Some((SwarmView { blocks }, Instant::now()));
        Ok(())
    }

    async fn ensure_fresh(&self) -> Result<()> {
        let stale = self.view.borrow().as_ref().is_none_or(|(_, at)| at.elapsed() >= self.config.update_period);
        if stale {
            self.update().await?;
        }
        Ok(())
    }

    fn route_now(&self, start: u32, end: u32, cache_tokens: u64) -> Result<Vec<RemoteSpan>> {
        let now = Instant::now();
        let banned = self.banned.borrow();
        let view = self.view.borrow();
        let spans = view.as_ref().map(|(v, _)| v.usable_spans(|peer| banned.is_banned(peer, now))).unwrap_or_default();
        min_latency_route(&spans, start, end, &HashMap::new(), Some(cache_tokens))
    }

    /// A chain of servers for blocks `start..end` with room for `cache_tokens` tokens; the view is
    /// re-read once if some block has no usable server.
    pub async fn make_route(&self, start: u32, end: u32, cache_tokens: u64) -> Result<Vec<RemoteSpan>> {
        self.ensure_fresh().await?;
        match self.route_now(start, end, cache_tokens) {
            Ok(route) => Ok(route),
            Err(_) => {
                self.update().await?;
                self.route_now(start, end, cache_tokens)
            }
        }
    }

    /// The codecs servers ask for, read once from an ONLINE server of block 0.
    pub async fn rpc_info(&self) -> Result<RpcInfo> {
        if let Some(info) = self.rpc_info.get() {
            return Ok(info);
        }
        self.ensure_fresh().await?;
        let peer = {
            let view = self.view.borrow();
            let now = Instant::now();
            let banned = self.banned.borrow();
            let first = view.as_ref().and_then(|(v, _)| v.blocks.first().cloned()).unwrap_or_default();
            let online: Vec<PeerId> =
                first.iter().filter(|(_, info)| info.state == ServerState::Online).map(|(peer, _)| *peer).collect();
            online.iter().find(|p| !banned.is_banned(p, now)).or(online.first()).copied()
        };
        let Some(peer) = peer else {
            *self.view.borrow_mut() = None;
            return Err(Error::new(ErrorKind::Network, "no ONLINE server holds block 0"));
        };
        let request = ExpertUid { uid: block_uid(&self.config.dht_prefix, 0) }.encode_to_vec();
        let reply = call_unary(&self.connection()?, peer, RPC_INFO, request, self.config.request_timeout)
            .await
            .inspect_err(|_| self.on_failure(Some(peer)))?;
        let info = ExpertInfo::decode(reply.as_slice())
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding rpc_info", e))?;
        let info = RpcInfo::from_value(&msgpack::unpack(&info.serialized_info)?)?;
        self.rpc_info.set(Some(info));
        Ok(info)
    }

    /// Bans `peer` for a while after a failure.
    pub fn on_failure(&self, peer: Option<PeerId>) {
        if let Some(peer) = peer {
            self.banned.borrow_mut().register_failure(peer, Instant::now());
        }
    }

    /// Clears `peer`'s ban streak.
    pub fn on_success(&self, peer: &PeerId) {
        self.banned.borrow_mut().register_success(peer);
    }

    /// The wait before retry `attempt`, or `None` once the retries are used up.
    pub fn retry_delay(&self, attempt: usize) -> Option<std::time::Duration> {
        if self.config.max_retries.is_some_and(|max| attempt + 1 >= max) {
            return None;
        }
        Some(retry_delay(attempt, self.config.min_backoff, self.config.max_backoff))
    }

    /// Tells the page.
    pub fn events(&self) -> &Events {
        &self.events
    }
}

/// One open `rpc_inference` stream to one server.
struct ServerSession {
    span: RemoteSpan,
    uid: String,
    session_id: String,
    call: StreamCall,
    stepped: bool,
    /// Every input this server received: replayed to a replacement.
    history: Option<CandleTensor>,
}

impl ServerSession {
    async fn open(swarm: &Swarm, span: RemoteSpan) -> Result<ServerSession> {
        let call =
            StreamCall::open(&swarm.connection()?, span.peer, RPC_INFERENCE, swarm.config.connect_timeout).await?;
        let uid = span_uid(&swarm.config.dht_prefix, span.start, span.end);
        Ok(ServerSession { span, uid, session_id: uuid4(), call, stepped: false, history: None })
    }

    fn hop(&self) -> Hop {
        Hop { peer: self.span.peer, start: self.span.start, end: self.span.end }
    }

    async fn step(
        &mut self,
        swarm: &Swarm,
        inputs: &CandleTensor,
        step_id: &str,
        max_length: usize,
        next_servers: Vec<Value>,
        compression: CompressionType,
    ) -> Result<CandleTensor> {
        let opening = (!self.stepped)
            .then_some(StepOpening { max_length, active_adapter: swarm.config.active_adapter.as_deref() });
        let request = step_request(&self.uid, &self.session_id, step_id, opening, next_servers, inputs, compression)?;
        self.call.send(&request, swarm.config.request_timeout).await?;
        self.stepped = true;
        let reply = self.call.receive(swarm.config.request_timeout).await?;
        let output = decode_hidden(&reply, "rpc_inference")?;
        if output.dims() != inputs.dims() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{} returned shape {:?} for inputs {:?}", self.span.peer, output.dims(), inputs.dims()),
            ));
        }
        self.history = Some(match self.history.take() {
            None => inputs.clone(),
            Some(h) => CandleTensor::cat(&[&h, inputs], 1)?,
        });
        Ok(output)
    }

    /// Ends the session as Petals does: an empty request, then the end of the stream.
    async fn close(&mut self) {
        if self.stepped {
            let _ = self.call.send(&close_request(), CLOSE_TIMEOUT).await;
        }
        self.call.finish(CLOSE_TIMEOUT).await;
    }
}

/// A failure attributed to the server that caused it, if any.
struct HopError {
    peer: Option<PeerId>,
    error: Error,
}

/// A multi-step inference session through the whole chain of blocks.
pub struct Session {
    swarm: Rc<Swarm>,
    max_length: usize,
    sessions: Vec<ServerSession>,
    position: usize,
}

impl Session {
    /// A session of up to `max_length` tokens; servers are chosen at the first step.
    pub fn new(swarm: Rc<Swarm>, max_length: usize) -> Session {
        Session { swarm, max_length, sessions: Vec::new(), position: 0 }
    }

    /// The servers of the chain now.
    pub fn route(&self) -> Vec<Hop> {
        self.sessions.iter().map(ServerSession::hop).collect()
    }

    /// Runs hidden states `[1, n, H]` through every block; a failing server is banned, the chain
    /// rebuilt around it and its history replayed (up to the configured retries).
    pub async fn step(&mut self, inputs: &CandleTensor) -> Result<CandleTensor> {
        let n = inputs.dim(1)?;
        if self.position + n > self.max_length {
            return Err(Error::invalid_argument(format!(
                "maximum length exceeded: {} + {n} tokens > {}",
                self.position, self.max_length
            )));
        }
        let swarm = Rc::clone(&self.swarm);
        let step_id = uuid4();
        let mut hidden = inputs.to_dtype(candle_core::DType::F32)?;
        let (mut index, mut block) = (0usize, 0u32);
        let mut attempt = 0;
        while block < swarm.config.num_blocks {
            match self.step_hop(index, block, attempt, &hidden, &step_id).await {
                Ok(out) => {
                    let session = &self.sessions[index];
                    swarm.on_success(&session.span.peer);
                    hidden = out;
                    block = session.span.end;
                    index += 1;
                    attempt = 0;
                }
                Err(HopError { peer, error }) => {
                    swarm.on_failure(peer);
                    let Some(delay) = swarm.retry_delay(attempt) else { return Err(error) };
                    tracing::warn!(?peer, block, attempt, "inference step failed, retrying in {delay:?}: {error}");
                    let who = peer.map_or_else(|| "routing".to_owned(), |p| p.to_base58());
                    swarm.events().retry(&format!("{who} failed at block {block}: {error}"));
                    sleep(delay).await;
                    attempt += 1;
                }
            }
        }
        self.position += n;
        Ok(hidden)
    }

    async fn step_hop(
        &mut self,
        index: usize,
        block: u32,
        attempt: usize,
        hidden: &CandleTensor,
        step_id: &str,
    ) -> std::result::Result<CandleTensor, HopError> {
        let swarm = Rc::clone(&self.swarm);
        let no_peer = |error| HopError { peer: None, error };
        let compression = swarm.rpc_info().await.map_err(no_peer)?.inference_compression;
        if self.sessions.is_empty() || attempt > 0 {
            self.rebuild(index, block, compression).await?;
        }
        let next_servers = if swarm.config.use_server_to_server {
            self.sessions[index + 1..]
                .iter()
                .take_while(|s| s.stepped)
                .map(|s| next_server(&s.span, &s.session_id))
                .collect()
        } else {
            Vec::new()
        };
        let session = &mut self.sessions[index];
        let peer = session.span.peer;
        session
            .step(&swarm, hidden, step_id, self.max_length, next_servers, compression)
            .await
            .map_err(|error| HopError { peer: Some(peer), error })
    }

    /// Routes blocks from `block` to the end of the session at `index` (or of the model), opens
    /// the new servers' sessions, replays the old session's inputs through them, and puts them in
    /// its place.
    async fn rebuild(
        &mut self,
        index: usize,
        block: u32,
        compression: CompressionType,
    ) -> std::result::Result<(), HopError> {
        let swarm = Rc::clone(&self.swarm);
        let no_peer = |error| HopError { peer: None, error };
        let (end, history) = match self.sessions.get_mut(index) {
            Some(old) => {
                old.close().await;
                (old.span.end, old.history.clone())
            }
            None => (swarm.config.num_blocks, None),
        };
        let mut route = swarm.make_route(block, end, self.max_length as u64).await.map_err(no_peer)?;
        if let Some(last) = route.last_mut() {
            last.end = last.end.min(end);
        }
        let mut fresh = Vec::with_capacity(route.len());
        for span in route {
            let peer = span.peer;
            fresh.push(ServerSession::open(&swarm, span).await.map_err(|error| HopError { peer: Some(peer), error })?);
        }
        if let Some(history) = history {
            let step_id = uuid4();
            let mut replayed = history;
            for session in &mut fresh {
                let peer = session.span.peer;
                replayed = session
                    .step(&swarm, &replayed, &step_id, self.max_length, Vec::new(), compression)
                    .await
                    .map_err(|error| HopError { peer: Some(peer), error })?;
            }
        }
        let replaced = usize::from(index < self.sessions.len());
        self.sessions.splice(index..index + replaced, fresh);
        swarm.events().route(&self.route());
        Ok(())
    }

    /// Closes every server stream (each server frees its cache).
    pub async fn close(&mut self) {
        for session in self.sessions.iter_mut().rev() {
            session.close().await;
        }
        self.sessions.clear();
    }
}
