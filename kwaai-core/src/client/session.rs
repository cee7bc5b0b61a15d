//! Inference sessions over a chain of servers (Petals' `InferenceSession` and
//! `_ServerInferenceSession`, petals/client/inference_session.py): one `rpc_inference` stream per
//! hop, every step sent to every hop in order, and failover that rebuilds the failed part of the
//! chain and replays its input history so the new servers' caches match the old ones.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use candle_core::Tensor as CandleTensor;
use futures::stream::Fuse;
use futures::{Stream, StreamExt};
use libp2p::PeerId;
use rmpv::Value;
use tokio::sync::mpsc;

use super::config::{ClientEvent, Hop};
use super::inference_wire::{
    close_request, decode_hidden, next_server, span_uid, step_request, uuid4, StepOpening, RPC_INFERENCE,
};
use super::routing::{RemoteSpan, RouteMode};
use super::sequence::SequenceManager;
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::ResponseStream;
use crate::tensor::CompressionType;
/// How long closing a server stream waits for the server to end it.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A `Stream` over a tokio mpsc receiver (the requests of one server stream).
struct Requests(mpsc::UnboundedReceiver<Vec<u8>>);

impl Stream for Requests {
    type Item = Vec<u8>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        self.0.poll_recv(cx)
    }
}

/// A failure attributed to the server that caused it, if any.
struct HopError {
    peer: Option<PeerId>,
    error: Error,
}

impl HopError {
    fn at(peer: PeerId) -> impl FnOnce(Error) -> HopError {
        move |error| HopError { peer: Some(peer), error }
    }
}

/// One open `rpc_inference` stream to one server, for blocks `span.start..span.end`.
struct ServerSession {
    span: RemoteSpan,
    uid: String,
    session_id: String,
    requests: Option<mpsc::UnboundedSender<Vec<u8>>>,
    replies: Option<Fuse<ResponseStream>>,
    stepped: bool,
    position: usize,
    /// Every input this server received, `[B, position, H]`: replayed to a replacement.
    history: Option<CandleTensor>,
    runtime: tokio::runtime::Handle,
}

impl ServerSession {
    async fn open(manager: &SequenceManager, span: RemoteSpan) -> Result<ServerSession> {
        let config = &manager.config;
        let uid = span_uid(&config.dht_prefix, span.start, span.end);
        let (requests, receiver) = mpsc::unbounded_channel();
        let opening = manager.rpc.call_stream(span.peer, RPC_INFERENCE, Requests(receiver), config.request_timeout);
        let replies = tokio::time::timeout(config.connect_timeout, opening).await.map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("opening rpc_inference on {} took over {:?}", span.peer, config.connect_timeout),
            )
        })??;
        Ok(ServerSession {
            span,
            uid,
            session_id: uuid4(),
            requests: Some(requests),
            replies: Some(replies.fuse()),
            stepped: false,
            position: 0,
            history: None,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn hop(&self) -> Hop {
        Hop { peer: self.span.peer, start: self.span.start, end: self.span.end }
    }

    /// Sends one step (`inputs` `[B, n, H]`) and returns the server's output for it.
    async fn step(
        &mut self,
        manager: &SequenceManager,
        inputs: &CandleTensor,
        step_id: &str,
        max_length: usize,
        next_servers: Vec<Value>,
        compression: CompressionType,
    ) -> Result<CandleTensor> {
        let n = inputs.dim(1)?;
        let opening = (!self.stepped)
            .then_some(StepOpening { max_length, active_adapter: manager.config.active_adapter.as_deref() });
        let request = step_request(&self.uid, &self.session_id, step_id, opening, next_servers, inputs, compression)?;
        let sender =
            self.requests.as_ref().ok_or_else(|| Error::new(ErrorKind::Closed, "the server session is closed"))?;
        sender
            .send(request)
            .map_err(|_| Error::new(ErrorKind::Network, format!("the stream to {} is gone", self.span.peer)))?;
        self.stepped = true;
        let replies =
            self.replies.as_mut().ok_or_else(|| Error::new(ErrorKind::Closed, "the server session is closed"))?;
        let reply = tokio::time::timeout(manager.config.request_timeout, replies.next())
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, format!("{} did not answer a step in time", self.span.peer)))?
            .ok_or_else(|| Error::new(ErrorKind::Network, format!("{} ended the session", self.span.peer)))??;
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
        self.position += n;
        Ok(output)
    }

    /// Ends the session as Petals does: an empty request, then the end of the stream; waits a
    /// little for the server to close its side.
    async fn close(&mut self) {
        let Some(requests) = self.requests.take() else { return };
        let replies = self.replies.take();
        if self.stepped {
            let _ = requests.send(close_request());
        }
        drop(requests);
        if let Some(mut replies) = replies {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { while replies.next().await.is_some() {} }).await;
        }
        tracing::debug!(peer = %self.span.peer, session = self.session_id, "server session closed");
    }
}

impl Drop for ServerSession {
    fn drop(&mut self) {
        if self.requests.is_some() {
            let mut rest = ServerSession {
                span: self.span.clone(),
                uid: String::new(),
                session_id: std::mem::take(&mut self.session_id),
                requests: self.requests.take(),
                replies: self.replies.take(),
                stepped: self.stepped,
                position: 0,
                history: None,
                runtime: self.runtime.clone(),
            };
            self.runtime.spawn(async move { rest.close().await });
        }
    }
}

/// A multi-step inference session through the whole chain of blocks: each step's hidden states
/// go through every server in order; each server keeps its attention cache between steps.
pub struct AsyncInferenceSession {
    manager: Arc<SequenceManager>,
    max_length: usize,
    sessions: Vec<ServerSession>,
    position: usize,
    closed: bool,
}

impl AsyncInferenceSession {
    /// A session that may hold up to `max_length` tokens; servers are chosen at the first step.
    pub(crate) fn new(manager: Arc<SequenceManager>, max_length: usize) -> Result<Self> {
        if max_length == 0 {
            return Err(Error::invalid_argument("max_length must be positive"));
        }
        Ok(AsyncInferenceSession { manager, max_length, sessions: Vec::new(), position: 0, closed: false })
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The session's capacity in tokens.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The servers currently in the chain.
    pub fn route(&self) -> Vec<Hop> {
        self.sessions.iter().map(ServerSession::hop).collect()
    }

    /// Runs hidden states `[B, n, H]` (n new tokens) through every block and returns the last
    /// block's output for them. A failing server is banned, the chain is rebuilt around it and
    /// its history replayed, then the step goes on (up to the configured retries).
    pub async fn step(&mut self, inputs: &CandleTensor) -> Result<CandleTensor> {
        if self.closed {
            return Err(Error::new(ErrorKind::Closed, "the inference session is closed"));
        }
        let (_, n, _) =
            inputs.dims3().map_err(|_| Error::invalid_argument("inputs must be [batch, tokens, hidden]"))?;
        if self.position + n > self.max_length {
            return Err(Error::invalid_argument(format!(
                "maximum length exceeded: {} + {n} tokens > {}",
                self.position, self.max_length
            )));
        }
        let inputs = inputs.to_dtype(candle_core::DType::F32)?;
        let compression = self.manager.rpc_info().await?.inference_compression;
        let step_id = uuid4();
        let num_blocks = self.manager.config.num_blocks;
        let mut hidden = inputs;
        let (mut index, mut block) = (0usize, 0u32);
        while block < num_blocks {
            let mut attempt = 0;
            loop {
                match self.step_hop(index, block, attempt, &hidden, &step_id, compression).await {
                    Ok(out) => {
                        let session = &self.sessions[index];
                        self.manager.on_success(&session.span.peer);
                        hidden = out;
                        block = session.span.end;
                        index += 1;
                        break;
                    }
                    Err(HopError { peer, error }) => {
                        self.manager.on_failure(peer);
                        let Some(delay) = self.manager.retry_delay(attempt) else { return Err(error) };
                        tracing::warn!(?peer, block, attempt, "inference step failed, retrying in {delay:?}: {error}");
                        let event =
                            ClientEvent::Retry { peer, block, attempt: attempt + 1, delay, error: error.to_string() };
                        self.manager.config.emit(event);
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
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
        compression: CompressionType,
    ) -> std::result::Result<CandleTensor, HopError> {
        if self.sessions.is_empty() || attempt > 0 {
            self.rebuild(index, block, compression).await?;
        }
        let next_servers = self.next_servers(index);
        let manager = Arc::clone(&self.manager);
        let max_length = self.max_length;
        let session = &mut self.sessions[index];
        let started = Instant::now();
        let out = session
            .step(&manager, hidden, step_id, max_length, next_servers, compression)
            .await
            .map_err(HopError::at(session.span.peer))?;
        let event = ClientEvent::HopLatency {
            hop: session.hop(),
            tokens: hidden.dim(1).unwrap_or(0),
            seconds: started.elapsed().as_secs_f64(),
        };
        manager.config.emit(event);
        Ok(out)
    }

    /// Downstream sessions that have already stepped, for server-to-server pushes.
    fn next_servers(&self, index: usize) -> Vec<Value> {
        if !self.manager.config.use_server_to_server {
            return Vec::new();
        }
        self.sessions[index + 1..]
            .iter()
            .take_while(|s| s.stepped && s.requests.is_some())
            .map(|s| next_server(&s.span, &s.session_id))
            .collect()
    }

    /// Routes blocks from `block` to the end of the session at `index` (or of the model, if there
    /// is none yet), opens the new servers' sessions, replays the old session's input history
    /// through them so that their caches hold the same prefix, and puts them in its place.
    async fn rebuild(
        &mut self,
        index: usize,
        block: u32,
        compression: CompressionType,
    ) -> std::result::Result<(), HopError> {
        let no_peer = |error| HopError { peer: None, error };
        let (end, history) = match self.sessions.get_mut(index) {
            Some(old) => {
                old.close().await;
                (old.span.end, old.history.clone())
            }
            None => (self.manager.config.num_blocks, None),
        };
        let mut route = self
            .manager
            .make_route(block, end, RouteMode::MinLatency, Some(self.max_length as u64))
            .await
            .map_err(no_peer)?;
        if let Some(last) = route.last_mut() {
            last.end = last.end.min(end);
        }
        let hops: Vec<Hop> = route.iter().map(|s| Hop { peer: s.peer, start: s.start, end: s.end }).collect();
        tracing::info!(
            "route for blocks {block}..{end}: {}",
            hops.iter().map(|h| format!("{}:{} via {}", h.start, h.end, h.peer)).collect::<Vec<_>>().join(" => ")
        );
        self.manager.config.emit(ClientEvent::RouteChosen { hops });
        let mut fresh = Vec::with_capacity(route.len());
        for span in route {
            let peer = span.peer;
            fresh.push(ServerSession::open(&self.manager, span).await.map_err(HopError::at(peer))?);
        }
        if let Some(history) = history {
            let step_id = uuid4();
            let mut replayed = history;
            for session in &mut fresh {
                let peer = session.span.peer;
                let tokens = replayed.dim(1).unwrap_or(0);
                replayed = session
                    .step(&self.manager, &replayed, &step_id, self.max_length, Vec::new(), compression)
                    .await
                    .map_err(HopError::at(peer))?;
                self.manager.config.emit(ClientEvent::HistoryReplayed { hop: session.hop(), tokens });
            }
        }
        let replaced = usize::from(index < self.sessions.len());
        self.sessions.splice(index..index + replaced, fresh);
        Ok(())
    }

    /// Closes every server stream (each server frees its cache). Idempotent.
    pub async fn close(&mut self) {
        self.closed = true;
        for session in self.sessions.iter_mut().rev() {
            session.close().await;
        }
        self.sessions.clear();
    }
}
