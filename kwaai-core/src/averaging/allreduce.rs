//! Butterfly all-reduce over a formed group (hivemind 1.1.10.post2:
//! hivemind/averaging/allreduce.py, AllReduceRunner).
//!
//! Every peer sends each reducer the parts it reduces over one `rpc_aggregate_part` stream and
//! gets back, per part, the group's weighted mean minus what it sent. A reducer that fails
//! leaves its parts unchanged (a zero delta); a sender that fails or stalls past
//! `sender_timeout` is left out of the parts it has not sent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use libp2p::PeerId;
use prost::Message;

use super::keys::{AveragingMode, GatherInfo};
use super::load_balancing::load_balance_peers;
use super::partition::{part_size_values, reduce_error, PartPlan, PartReducer, ReduceError};
use super::GroupInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::{RequestStream, Rpc};
use crate::tensor::{self, CompressionType, DType, DecodeLimits, TensorView};
use crate::wire::averaging::{AveragingData, MessageCode};

/// How long a reducer waits for a sender's end of stream after its last part.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Waits longer than this for a peer only when a timeout says so.
const NO_TIMEOUT: Duration = Duration::from_secs(3600);

/// Settings of one all-reduce.
#[derive(Clone, Debug)]
pub(crate) struct AllReduceSettings {
    pub compression: CompressionType,
    pub part_size_bytes: usize,
    pub min_vector_size: usize,
    pub sender_timeout: Option<Duration>,
    pub reducer_timeout: Option<Duration>,
}

/// One all-reduce round of this peer in a formed group.
pub(crate) struct AllReduceRunner {
    rpc: Rpc,
    handle_name: String,
    group: GroupInfo,
    my_index: usize,
    plan: PartPlan,
    shares: Vec<usize>,
    weight: f64,
    settings: AllReduceSettings,
    local: Arc<Vec<Vec<f32>>>,
    reducer: PartReducer,
    started: Mutex<HashSet<PeerId>>,
    all_started: tokio::sync::Notify,
}

impl AllReduceRunner {
    /// Prepares the round: splits `local` (flattened tensors) among the group's reducers as
    /// every member computes it from the gathered bandwidths.
    pub fn new(
        rpc: Rpc,
        handle_name: String,
        group: GroupInfo,
        me: PeerId,
        local: Arc<Vec<Vec<f32>>>,
        weight: f64,
        settings: AllReduceSettings,
    ) -> Result<AllReduceRunner> {
        let my_index = group
            .peer_ids
            .iter()
            .position(|p| *p == me)
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "this peer is not in the group"))?;
        if group.gathered.len() != group.peer_ids.len() {
            return Err(Error::new(ErrorKind::Protocol, "the group has one gather blob per peer"));
        }
        let mut bandwidths = Vec::with_capacity(group.gathered.len());
        for blob in &group.gathered {
            let info = GatherInfo::decode(blob)?;
            bandwidths.push(if info.mode == AveragingMode::Client { Some(0.0) } else { info.bandwidth });
        }
        let sizes: Vec<usize> = local.iter().map(Vec::len).collect();
        let total: usize = sizes.iter().sum();
        let shares = load_balance_peers(total, &bandwidths, settings.min_vector_size)?;
        let plan = PartPlan::new(&sizes, &shares, part_size_values(settings.part_size_bytes, settings.compression))?;
        let my_parts: Vec<usize> = plan.parts[plan.by_peer[my_index].clone()].iter().map(|p| p.len).collect();
        let reducer = PartReducer::new(my_parts, group.peer_ids.len());
        let mut started = HashSet::new();
        started.insert(me);
        Ok(AllReduceRunner {
            rpc,
            handle_name,
            group,
            my_index,
            plan,
            shares,
            weight,
            settings,
            local,
            reducer,
            started: Mutex::new(started),
            all_started: tokio::sync::Notify::new(),
        })
    }

    fn part_values(&self, part: usize) -> &[f32] {
        let p = self.plan.parts[part];
        &self.local[p.tensor][p.start..p.start + p.len]
    }

    /// Runs the round; returns, per tensor, the flattened difference between the average and
    /// the local values.
    pub async fn run(self: Arc<Self>) -> Result<Vec<Vec<f32>>> {
        let mut watcher = None;
        if !self.plan.by_peer[self.my_index].is_empty() {
            let this = self.clone();
            watcher = Some(tokio::spawn(async move { this.ban_missing_senders().await }));
        }
        let tasks: Vec<_> = (0..self.group.peer_ids.len())
            .filter(|&peer| !self.plan.by_peer[peer].is_empty())
            .map(|peer| {
                let this = self.clone();
                tokio::spawn(async move { (peer, this.communicate(peer).await) })
            })
            .collect();
        let mut deltas: Vec<Vec<f32>> = self.local.iter().map(|t| vec![0.0; t.len()]).collect();
        let mut failed = 0usize;
        for task in tasks {
            let (peer, outcome) =
                task.await.map_err(|e| Error::new(ErrorKind::Internal, format!("all-reduce task: {e}")))?;
            match outcome {
                Ok(parts) => {
                    for (index, delta) in self.plan.by_peer[peer].clone().zip(parts) {
                        let p = self.plan.parts[index];
                        deltas[p.tensor][p.start..p.start + p.len].copy_from_slice(&delta);
                    }
                }
                Err(e) => {
                    // hivemind keeps the local values of a failed reducer's parts.
                    failed += self.shares[peer];
                    tracing::warn!(peer = %self.group.peer_ids[peer], "reducer failed, keeping local values: {e}");
                }
            }
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        if failed > 0 {
            tracing::warn!(failed_elements = failed, "all-reduce finished with some parts not averaged");
        }
        Ok(deltas)
    }

    /// Stops the round: waiting parts fail.
    pub fn finish(&self) {
        self.reducer.finish();
    }

    async fn ban_missing_senders(&self) {
        let Some(timeout) = self.settings.sender_timeout else { return };
        let group_size = self.group.peer_ids.len();
        let everyone = async {
            loop {
                let notified = self.all_started.notified();
                if self.lock_started().len() == group_size {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, everyone).await.is_err() {
            let started = self.lock_started().clone();
            for (index, peer) in self.group.peer_ids.iter().enumerate() {
                if !started.contains(peer) {
                    tracing::debug!(%peer, "sender did not start within {timeout:?}; leaving it out");
                    self.reducer.on_sender_failed(index);
                }
            }
        }
    }

    fn lock_started(&self) -> std::sync::MutexGuard<'_, HashSet<PeerId>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends our parts for `peer` to it (or to our own reducer) and returns the deltas.
    async fn communicate(self: &Arc<Self>, peer: usize) -> Result<Vec<Vec<f32>>> {
        let range = self.plan.by_peer[peer].clone();
        if peer == self.my_index {
            let mut out = Vec::with_capacity(range.len());
            for (k, index) in range.enumerate() {
                let values = self.part_values(index);
                let average =
                    self.reducer.accumulate(self.my_index, k, values, self.weight).await.map_err(reduce_error)?;
                out.push(average.iter().zip(values).map(|(a, v)| a - v).collect());
            }
            return Ok(out);
        }
        let messages = self.encode_parts(range.clone());
        let timeout = self.settings.reducer_timeout.unwrap_or(NO_TIMEOUT);
        let peer_id = self.group.peer_ids[peer];
        let mut replies = self.rpc.call_stream(peer_id, &self.handle_name, messages, timeout).await?;
        let mut out = Vec::with_capacity(range.len());
        for index in range.clone() {
            let reply = replies.next().await.ok_or_else(|| {
                Error::new(ErrorKind::Protocol, format!("{peer_id} sent {} of {} parts", out.len(), range.len()))
            })??;
            let reply = AveragingData::decode(&reply[..])
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad AveragingData from {peer_id}: {e}")))?;
            if reply.code != MessageCode::AveragedPart as i32 {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{peer_id} sent {}", MessageCode::name_of(reply.code)),
                ));
            }
            let delta = decode_part(reply.tensor_part.as_ref(), self.plan.parts[index].len)?;
            out.push(delta);
        }
        Ok(out)
    }

    /// The messages carrying our parts `range` to their reducer, encoded as they are sent.
    fn encode_parts(self: &Arc<Self>, range: std::ops::Range<usize>) -> impl Stream<Item = Vec<u8>> + Send + 'static {
        let this = self.clone();
        let messages = futures::stream::iter(range.enumerate()).map(move |(k, index)| {
            let part = match encode_part(this.part_values(index), this.settings.compression) {
                Ok(part) => part,
                Err(e) => {
                    // The reducer sees too few parts and leaves us out; the round goes on.
                    tracing::warn!("cannot encode part {index}: {e}");
                    return None;
                }
            };
            let message = if k == 0 {
                AveragingData {
                    code: MessageCode::PartForAveraging as i32,
                    group_id: this.group.group_id.clone(),
                    tensor_part: Some(part),
                    weight: this.weight,
                    ..Default::default()
                }
            } else {
                AveragingData { tensor_part: Some(part), weight: this.weight, ..Default::default() }
            };
            Some(message.encode_to_vec())
        });
        messages.take_while(|m| futures::future::ready(m.is_some())).filter_map(futures::future::ready)
    }

    /// Serves one sender's `rpc_aggregate_part` stream whose first message is `first`.
    pub fn serve(
        self: Arc<Self>,
        sender: PeerId,
        first: AveragingData,
        rest: RequestStream,
    ) -> impl Stream<Item = Result<Vec<u8>>> + Send + 'static {
        let (replies, out) = mpsc::unbounded::<Result<Vec<u8>>>();
        tokio::spawn(async move {
            let reply = |code: MessageCode| AveragingData { code: code as i32, ..Default::default() }.encode_to_vec();
            let Some(index) = self.group.peer_ids.iter().position(|p| *p == sender) else {
                let _ = replies.unbounded_send(Ok(reply(MessageCode::ProtocolViolation)));
                return;
            };
            {
                let mut started = self.lock_started();
                started.insert(sender);
                if started.len() == self.group.peer_ids.len() {
                    self.all_started.notify_waiters();
                }
            }
            if first.code != MessageCode::PartForAveraging as i32 {
                let _ = replies.unbounded_send(Ok(reply(MessageCode::InternalError)));
                self.reducer.on_sender_failed(index);
                return;
            }
            let sender_timeout = self.settings.sender_timeout.unwrap_or(NO_TIMEOUT);
            let first_bytes = first.encode_to_vec();
            let mut incoming = futures::stream::iter([Ok(first_bytes)]).chain(rest);
            let expected = self.reducer.num_parts();
            let mut k = 0usize;
            let outcome: Result<()> = async {
                while k < expected {
                    let Ok(next) = tokio::time::timeout(sender_timeout, incoming.next()).await else {
                        return Err(Error::new(ErrorKind::Timeout, format!("{sender} stalled after {k} parts")));
                    };
                    let Some(bytes) = next else { break };
                    let message = AveragingData::decode(&bytes?[..])
                        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad AveragingData: {e}")))?;
                    let part = message
                        .tensor_part
                        .as_ref()
                        .ok_or_else(|| Error::new(ErrorKind::Protocol, "a part without a tensor"))?;
                    let codec = CompressionType::try_from(part.compression).unwrap_or(CompressionType::None);
                    let values = decode_part(Some(part), usize::MAX)?;
                    let average = match self.reducer.accumulate(index, k, &values, message.weight).await {
                        Ok(average) => average,
                        Err(ReduceError::Banned) => return Ok(()),
                        Err(e) => return Err(reduce_error(e)),
                    };
                    k += 1;
                    let delta: Vec<f32> = average.iter().zip(&values).map(|(a, v)| a - v).collect();
                    let reply = AveragingData {
                        code: MessageCode::AveragedPart as i32,
                        tensor_part: Some(encode_part(&delta, codec)?),
                        ..Default::default()
                    };
                    if replies.unbounded_send(Ok(reply.encode_to_vec())).is_err() {
                        return Err(Error::new(ErrorKind::Closed, "the sender went away"));
                    }
                }
                Ok(())
            }
            .await;
            if outcome.is_ok() {
                // Read the caller's end of stream before our replies end: closing first resets
                // the stream under a caller still writing it (hivemind then sees a broken pipe).
                let drain = async { while incoming.next().await.is_some() {} };
                let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
            }
            if let Err(e) = &outcome {
                tracing::debug!(%sender, "leaving the sender out of this round: {e}");
                let _ = replies.unbounded_send(Ok(reply(MessageCode::InternalError)));
            }
            if k != expected {
                self.reducer.on_sender_failed(index);
            }
        });
        out
    }
}

/// Encodes a 1-D float32 part as hivemind does (`view(-1).split(...)`, then the codec).
fn encode_part(values: &[f32], compression: CompressionType) -> Result<crate::wire::runtime::Tensor> {
    let shape = [values.len()];
    let view = TensorView::new(DType::F32, &shape, bytemuck::cast_slice(values))?;
    tensor::encode(&view, compression)
}

/// Decodes a part into float32 values, checking its length unless `expected` is `usize::MAX`.
fn decode_part(part: Option<&crate::wire::runtime::Tensor>, expected: usize) -> Result<Vec<f32>> {
    let part = part.ok_or_else(|| Error::new(ErrorKind::Protocol, "a message without a tensor part"))?;
    let tensor = tensor::decode_borrowed(part, &DecodeLimits::default())?;
    let values = tensor.view().to_f32().into_owned();
    if expected != usize::MAX && values.len() != expected {
        return Err(Error::new(ErrorKind::Protocol, format!("a part of {} values, expected {expected}", values.len())));
    }
    Ok(values)
}

impl std::fmt::Debug for AllReduceRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllReduceRunner").field("group_size", &self.group.peer_ids.len()).finish()
    }
}
