//! Forming groups through the DHT (hivemind 1.1.10.post2: hivemind/averaging/matchmaking.py).
//!
//! A peer looking for a group declares itself under its group key with an expiration time. It
//! asks every declared peer that expires before it (ties broken by peer ID bytes) to be its
//! leader; meanwhile it accepts followers itself. A leader starts all-reduce when its group is
//! full or when its expiration comes with at least `min_group_size` members, sending every
//! follower BEGIN_ALLREDUCE with the group id, the shuffled member order and their gather blobs;
//! otherwise it sends GROUP_DISBANDED (pointing to its own leader, if it found one).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use indexmap::IndexMap;
use libp2p::PeerId;
use prost::Message;
use rand::seq::SliceRandom;
use rmpv::Value;
use tokio::sync::{watch, Mutex};

use super::keys::{group_key, next_group_bits};
use super::GroupInfo;
use crate::dht::{dht_time, Dht, DhtId, DhtTime, DhtValue};
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::{RequestStream, Rpc};
use crate::wire::averaging::{JoinRequest, MessageCode, MessageFromLeader};

/// How often a peer looking for a leader re-reads the DHT while nothing else happens.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How many GROUP_DISBANDED redirections a follower follows in a row.
const MAX_REDIRECTS: usize = 4;

/// Matchmaking settings.
#[derive(Clone, Debug)]
pub(crate) struct MatchmakingSettings {
    pub prefix: String,
    pub initial_group_bits: String,
    pub target_group_size: Option<usize>,
    pub min_group_size: usize,
    pub min_matchmaking_time: Duration,
    pub request_timeout: Duration,
}

#[derive(Default)]
struct State {
    looking: bool,
    gather: Vec<u8>,
    declared_key: Option<String>,
    declared_expiration: DhtTime,
    current_leader: Option<PeerId>,
    followers: IndexMap<PeerId, JoinRequest>,
    assembled: Option<GroupInfo>,
}

/// One averager's matchmaking: its search for a leader and its `rpc_join_group` handler.
pub(crate) struct Matchmaker {
    rpc: Rpc,
    dht: Dht,
    me: PeerId,
    schema_hash: Vec<u8>,
    join_name: String,
    settings: MatchmakingSettings,
    group_bits: std::sync::Mutex<String>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Matchmaker {
    pub fn new(
        rpc: Rpc,
        dht: Dht,
        me: PeerId,
        schema_hash: Vec<u8>,
        join_name: String,
        settings: MatchmakingSettings,
    ) -> Matchmaker {
        let state = State { declared_expiration: f64::INFINITY, ..State::default() };
        let (changed, _) = watch::channel(0);
        let group_bits = std::sync::Mutex::new(settings.initial_group_bits.clone());
        Matchmaker { rpc, dht, me, schema_hash, join_name, settings, group_bits, state: Mutex::new(state), changed }
    }

    fn lock_bits(&self) -> std::sync::MutexGuard<'_, String> {
        self.group_bits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current_key(&self) -> String {
        group_key(&self.settings.prefix, &self.lock_bits())
    }

    /// The current group bits (`prefix.0b<bits>` is the group key).
    pub fn group_bits(&self) -> String {
        self.lock_bits().clone()
    }

    /// Moves to the bucket that `group` assigns us, as every hivemind member does.
    fn update_bits(&self, group: &GroupInfo) {
        let Some(index) = group.peer_ids.iter().position(|p| *p == self.me) else { return };
        let mut bits = self.lock_bits();
        match next_group_bits(&bits, &group.group_id, group.size(), index, self.settings.target_group_size) {
            Ok(next) => *bits = next,
            Err(e) => tracing::warn!("keeping group bits {bits:?}: {e}"),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Looks for a group until `deadline` (DHT time); `None` if none formed in time.
    pub async fn look_for_group(self: &Arc<Self>, gather: Vec<u8>, deadline: DhtTime) -> Result<Option<GroupInfo>> {
        {
            let mut state = self.state.lock().await;
            state.looking = true;
            state.gather = gather;
            state.assembled = None;
            state.current_leader = None;
        }
        let outcome = self.search(deadline).await;
        let leave = {
            let mut state = self.state.lock().await;
            state.looking = false;
            if state.assembled.is_none() {
                state.followers.clear();
            }
            let leave = state.declared_key.take().map(|key| (key, state.declared_expiration));
            state.declared_expiration = f64::INFINITY;
            leave
        };
        self.bump();
        if let Some((key, expiration)) = leave {
            // Mark ourselves as no longer looking, as hivemind does, without waiting for it.
            let dht = self.dht.clone();
            let subkey = Value::Binary(self.me.to_bytes());
            tokio::spawn(async move {
                let later = f64::from_bits(expiration.to_bits() + 1);
                if let Err(e) = dht.store(Value::String(key.into()), Some(subkey), Value::Boolean(false), later).await {
                    tracing::debug!("could not withdraw the averager declaration: {e}");
                }
            });
        }
        // Let every follower get its answer before the next round reuses the state.
        let mut changes = self.changed.subscribe();
        let wait = async {
            while !self.state.lock().await.followers.is_empty() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(self.settings.request_timeout * 2, wait).await;
        self.state.lock().await.assembled = None;
        outcome
    }

    async fn search(self: &Arc<Self>, deadline: DhtTime) -> Result<Option<GroupInfo>> {
        let mut tried: HashSet<(PeerId, u64)> = HashSet::new();
        let mut changes = self.changed.subscribe();
        loop {
            let now = dht_time();
            if now >= deadline {
                return Ok(None);
            }
            let expiration = (now + self.settings.min_matchmaking_time.as_secs_f64()).min(deadline);
            let key = self.current_key();
            {
                let mut state = self.state.lock().await;
                if let Some(group) = &state.assembled {
                    return Ok(Some(group.clone()));
                }
                state.declared_key = Some(key.clone());
                state.declared_expiration = expiration;
            }
            self.bump();
            let subkey = Some(Value::Binary(self.me.to_bytes()));
            match self.dht.store(Value::String(key.clone().into()), subkey, Value::Boolean(true), expiration).await {
                Ok(true) => tracing::debug!(key, expiration, "declared as looking for a group"),
                Ok(false) => tracing::warn!(key, "no DHT peer accepted the averager declaration"),
                Err(e) => tracing::warn!(key, "declaring the averager failed: {e}"),
            }
            while dht_time() < expiration {
                if let Some(group) = self.state.lock().await.assembled.clone() {
                    return Ok(Some(group));
                }
                let leaders = self.potential_leaders(&key, expiration, &tried).await;
                if let Some(&(leader, leader_expiration)) = leaders.first() {
                    tried.insert((leader, leader_expiration.to_bits()));
                    if let Some(group) = self.request_join(leader, expiration).await {
                        return Ok(Some(group));
                    }
                    continue;
                }
                let left = Duration::from_secs_f64((expiration - dht_time()).max(0.0));
                let _ = tokio::time::timeout(left.min(POLL_INTERVAL), changes.changed()).await;
            }
            let mut state = self.state.lock().await;
            if let Some(group) = &state.assembled {
                return Ok(Some(group.clone()));
            }
            if state.followers.len() + 1 >= self.settings.min_group_size {
                let group = self.assemble(&mut state);
                drop(state);
                self.bump();
                return Ok(Some(group));
            }
            if !state.followers.is_empty() {
                state.followers.clear();
                drop(state);
                self.bump();
            }
        }
    }

    /// Peers declared under `key` that may lead us: earlier expiration (then smaller peer ID
    /// bytes) than ours, not tried yet, soonest first.
    async fn potential_leaders(
        &self,
        key: &str,
        expiration: DhtTime,
        tried: &HashSet<(PeerId, u64)>,
    ) -> Vec<(PeerId, f64)> {
        let found = match self.dht.get(Value::String(key.into()), true).await {
            Ok(Some(DhtValue::Dictionary { entries, .. })) => entries,
            Ok(_) => return Vec::new(),
            Err(e) => {
                tracing::debug!(key, "reading averagers failed: {e}");
                return Vec::new();
            }
        };
        let me = (expiration, self.me.to_bytes());
        let mut leaders: Vec<(PeerId, f64)> = found
            .into_iter()
            .filter(|entry| entry.value == Value::Boolean(true))
            .filter_map(|entry| match entry.subkey {
                Value::Binary(bytes) => PeerId::from_bytes(&bytes).ok().map(|peer| (peer, entry.expiration)),
                _ => None,
            })
            .filter(|(peer, exp)| *peer != self.me && !tried.contains(&(*peer, exp.to_bits())))
            .filter(|(peer, exp)| (*exp, peer.to_bytes()) < me)
            .collect();
        leaders.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.to_bytes().cmp(&b.0.to_bytes())));
        leaders
    }

    /// Asks `leader` to take us in; the group if it began all-reduce with us.
    async fn request_join(&self, mut leader: PeerId, expiration: DhtTime) -> Option<GroupInfo> {
        for _ in 0..MAX_REDIRECTS {
            let outcome = self.try_leader(leader, expiration).await;
            {
                let mut state = self.state.lock().await;
                state.current_leader = None;
            }
            self.bump();
            match outcome {
                Ok(Joined::Group(group)) => return Some(group),
                Ok(Joined::Redirect(next)) if next != self.me => leader = next,
                Ok(_) => return None,
                Err(e) => {
                    tracing::debug!(%leader, "joining failed: {e}");
                    return None;
                }
            }
        }
        None
    }

    async fn try_leader(&self, leader: PeerId, expiration: DhtTime) -> Result<Joined> {
        let timeout = self.settings.request_timeout;
        let mut state = self.state.lock().await;
        let request = JoinRequest {
            schema_hash: self.schema_hash.clone(),
            expiration,
            gather: state.gather.clone(),
            client_mode: false,
            group_key: self.current_key(),
        };
        let patience = Duration::from_secs_f64((expiration - dht_time()).max(0.0)) + timeout * 2;
        let call =
            self.rpc.call_stream(leader, &self.join_name, futures::stream::iter([request.encode_to_vec()]), patience);
        let mut replies = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, "leader did not answer"))??;
        let first = next_message(&mut replies, timeout).await?;
        if first.code != MessageCode::Accepted as i32 {
            tracing::debug!(%leader, code = MessageCode::name_of(first.code), "leader refused us");
            return Ok(Joined::Refused);
        }
        tracing::debug!(%leader, "accepted as a follower");
        state.current_leader = Some(leader);
        let had_followers = !state.followers.is_empty();
        state.followers.clear();
        drop(state);
        if had_followers {
            self.bump();
        }
        let wait = Duration::from_secs_f64((expiration - dht_time()).max(0.0)) + timeout;
        let message = next_message(&mut replies, wait).await?;
        let code = MessageCode::try_from(message.code).unwrap_or(MessageCode::NoCode);
        match code {
            MessageCode::BeginAllreduce => {
                let group = GroupInfo::from_leader(&message)?;
                if !group.peer_ids.contains(&self.me) {
                    return Err(Error::new(ErrorKind::Protocol, "the leader's group does not contain us"));
                }
                let mut state = self.state.lock().await;
                self.update_bits(&group);
                state.assembled = Some(group.clone());
                Ok(Joined::Group(group))
            }
            MessageCode::GroupDisbanded | MessageCode::Cancelled if !message.suggested_leader.is_empty() => {
                let next = PeerId::from_bytes(&message.suggested_leader)
                    .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad suggested leader: {e}")))?;
                Ok(Joined::Redirect(next))
            }
            _ => {
                tracing::debug!(%leader, code = MessageCode::name_of(message.code), "leader let us go");
                Ok(Joined::Refused)
            }
        }
    }

    /// Forms the group from our followers and us, in random order, with a random id.
    fn assemble(&self, state: &mut State) -> GroupInfo {
        let mut members: Vec<(PeerId, Vec<u8>)> =
            state.followers.iter().map(|(peer, request)| (*peer, request.gather.clone())).collect();
        members.push((self.me, state.gather.clone()));
        members.shuffle(&mut rand::thread_rng());
        let group = GroupInfo {
            group_id: DhtId::random().as_bytes().to_vec(),
            peer_ids: members.iter().map(|(p, _)| *p).collect(),
            gathered: members.into_iter().map(|(_, g)| g).collect(),
        };
        tracing::debug!(size = group.peer_ids.len(), "assembled a group as its leader");
        self.update_bits(&group);
        state.assembled = Some(group.clone());
        group
    }

    fn reason_to_reject(&self, state: &State, request: &JoinRequest, remote: PeerId) -> Option<MessageFromLeader> {
        let code = |code: MessageCode| Some(MessageFromLeader { code: code as i32, ..Default::default() });
        if !state.looking || state.assembled.is_some() {
            return code(MessageCode::NotLookingForGroup);
        }
        if request.schema_hash.is_empty() || !request.expiration.is_finite() {
            return code(MessageCode::ProtocolViolation);
        }
        if request.schema_hash != self.schema_hash {
            return code(MessageCode::BadSchemaHash);
        }
        if request.group_key != self.current_key() {
            return code(MessageCode::BadGroupKey);
        }
        if state.declared_key.is_none() {
            return code(MessageCode::NotDeclared);
        }
        if state.declared_expiration > request.expiration {
            return code(MessageCode::BadExpirationTime);
        }
        if let Some(leader) = state.current_leader {
            return Some(MessageFromLeader {
                code: MessageCode::NotALeader as i32,
                suggested_leader: leader.to_bytes(),
                ..Default::default()
            });
        }
        if remote == self.me || state.followers.contains_key(&remote) {
            return code(MessageCode::DuplicatePeerId);
        }
        if self.settings.target_group_size.is_some_and(|target| state.followers.len() + 1 >= target) {
            return code(MessageCode::GroupIsFull);
        }
        None
    }

    /// Serves one `rpc_join_group` call from `remote`.
    pub fn serve_join(
        self: Arc<Self>,
        remote: PeerId,
        mut requests: RequestStream,
    ) -> impl Stream<Item = Result<Vec<u8>>> + Send {
        let (replies, out) = mpsc::unbounded::<Result<Vec<u8>>>();
        tokio::spawn(async move {
            let send = |message: MessageFromLeader| {
                let _ = replies.unbounded_send(Ok(message.encode_to_vec()));
            };
            let request = match tokio::time::timeout(self.settings.request_timeout, requests.next()).await {
                Ok(Some(Ok(bytes))) => match JoinRequest::decode(&bytes[..]) {
                    Ok(request) => request,
                    Err(_) => return send(leader_message(MessageCode::ProtocolViolation)),
                },
                _ => return,
            };
            let expiration = {
                let mut state = self.state.lock().await;
                if let Some(rejection) = self.reason_to_reject(&state, &request, remote) {
                    return send(rejection);
                }
                state.followers.insert(remote, request);
                send(leader_message(MessageCode::Accepted));
                tracing::debug!(%remote, followers = state.followers.len(), "accepted a follower");
                if self.settings.target_group_size.is_some_and(|target| state.followers.len() + 1 >= target) {
                    self.assemble(&mut state);
                }
                state.declared_expiration
            };
            self.bump();
            let reply = self.await_outcome(remote, expiration).await;
            send(reply);
            self.state.lock().await.followers.shift_remove(&remote);
            self.bump();
        });
        out
    }

    /// Waits until the group is formed, disbanded or the declaration expires, and says so.
    async fn await_outcome(&self, remote: PeerId, expiration: DhtTime) -> MessageFromLeader {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let state = self.state.lock().await;
                if state.assembled.is_some() || state.current_leader.is_some() || !state.followers.contains_key(&remote)
                {
                    break;
                }
            }
            let left = expiration - dht_time();
            if left <= 0.0 {
                let mut state = self.state.lock().await;
                if state.assembled.is_none() && state.current_leader.is_none() {
                    if state.looking && state.followers.len() + 1 >= self.settings.min_group_size {
                        self.assemble(&mut state);
                    } else {
                        state.followers.clear();
                    }
                }
                drop(state);
                self.bump();
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs_f64(left), changes.changed()).await;
        }
        let state = self.state.lock().await;
        match (&state.assembled, state.current_leader) {
            (Some(group), None) if group.peer_ids.contains(&remote) => MessageFromLeader {
                code: MessageCode::BeginAllreduce as i32,
                group_id: group.group_id.clone(),
                ordered_peer_ids: group.peer_ids.iter().map(|p| p.to_bytes()).collect(),
                gathered: group.gathered.clone(),
                ..Default::default()
            },
            (_, Some(leader)) => MessageFromLeader {
                code: MessageCode::GroupDisbanded as i32,
                suggested_leader: leader.to_bytes(),
                ..Default::default()
            },
            _ => leader_message(MessageCode::GroupDisbanded),
        }
    }
}

enum Joined {
    Group(GroupInfo),
    Redirect(PeerId),
    Refused,
}

fn leader_message(code: MessageCode) -> MessageFromLeader {
    MessageFromLeader { code: code as i32, ..Default::default() }
}

async fn next_message(
    replies: &mut (impl Stream<Item = Result<Vec<u8>>> + Unpin),
    timeout: Duration,
) -> Result<MessageFromLeader> {
    let bytes = tokio::time::timeout(timeout, replies.next())
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, format!("the leader was silent for {timeout:?}")))?
        .ok_or_else(|| Error::new(ErrorKind::Protocol, "the leader closed the stream"))??;
    MessageFromLeader::decode(&bytes[..])
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad MessageFromLeader: {e}")))
}
