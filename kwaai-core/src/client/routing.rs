//! Route choice over the servers of a model, as Petals 2.2's `RemoteSequenceManager` makes it
//! (petals/client/routing/sequence_manager.py, sequence_info.py; petals/utils/dht.py
//! `compute_spans`): pure functions over a snapshot of the swarm, no I/O.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use libp2p::PeerId;
use rand::Rng;
use web_time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::server::{ServerInfo, ServerState};

/// Serialization overhead added to every network edge (Petals' measured 18 ms).
const OVERHEAD_DELAY: f64 = 0.018;
/// Seconds per block when a server does not announce its inference speed (1 / 300 rps).
const DEFAULT_INFERENCE_RPS: f64 = 300.0;
/// Penalty of an edge into a server without enough attention cache left.
const ALLOC_DELAY: f64 = 10.0;
/// One-way delay assumed when the round-trip time is unknown.
const DEFAULT_DELAY: f64 = 0.15;
/// Largest one-way delay: an unreachable server stays usable as a last resort.
const MAX_DELAY: f64 = 5.0;

/// A run of consecutive blocks `start..end` served by one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpan {
    /// The server.
    pub peer: PeerId,
    /// First block of the run.
    pub start: u32,
    /// One past its last block.
    pub end: u32,
    /// What the server announced.
    pub info: ServerInfo,
}

impl RemoteSpan {
    /// Number of blocks.
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Whether it holds no block.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// How a route is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Shortest expected time per inference step (Dijkstra over network and compute delays).
    MinLatency,
    /// Long spans picked at random, to spread forward/backward load.
    MaxThroughput,
}

/// The servers of every block of a model, as last read from the DHT.
#[derive(Debug, Clone, Default)]
pub struct SwarmView {
    /// `blocks[i]`: the servers announcing block `i`, with their records.
    pub blocks: Vec<Vec<(PeerId, ServerInfo)>>,
}

impl SwarmView {
    /// The ONLINE spans, longest first, trusting each record's `start_block`/`end_block` (clamped
    /// to the model), as Petals' `compute_spans` builds them.
    pub fn spans(&self, skip: impl Fn(&PeerId) -> bool) -> Vec<RemoteSpan> {
        let num_blocks = self.blocks.len() as u32;
        let mut spans: Vec<RemoteSpan> = Vec::new();
        let mut index: HashMap<PeerId, usize> = HashMap::new();
        for (block, servers) in self.blocks.iter().enumerate() {
            let block = block as u32;
            let mut servers: Vec<&(PeerId, ServerInfo)> = servers.iter().collect();
            servers.sort_by_key(|(peer, _)| peer.to_bytes());
            for (peer, info) in servers {
                if info.state != ServerState::Online || skip(peer) {
                    continue;
                }
                match index.get(peer) {
                    None => {
                        let (start, end) = match (info.start_block, info.end_block) {
                            (Some(s), Some(e)) => (s, e.min(num_blocks)),
                            _ => (block, block + 1),
                        };
                        index.insert(*peer, spans.len());
                        spans.push(RemoteSpan { peer: *peer, start, end, info: info.clone() });
                    }
                    Some(&i) => spans[i].end = spans[i].end.max(block + 1),
                }
            }
        }
        spans.retain(|s| !s.is_empty());
        spans.sort_by_key(|s| std::cmp::Reverse(s.len()));
        spans
    }

    /// The ONLINE spans without `banned` peers, except where dropping them would leave a block
    /// with no server (then the client may be at fault, so the bans are ignored there, as Petals
    /// does per block).
    pub fn usable_spans(&self, banned: impl Fn(&PeerId) -> bool) -> Vec<RemoteSpan> {
        let all = self.spans(|_| false);
        let filtered = self.spans(&banned);
        let covered = |spans: &[RemoteSpan], block: u32| spans.iter().any(|s| s.start <= block && block < s.end);
        let needs_banned = (0..self.blocks.len() as u32).any(|b| covered(&all, b) && !covered(&filtered, b));
        if needs_banned {
            all
        } else {
            filtered
        }
    }
}

/// The spans containing each block of `start..end` (indexed from `start`); fails with the
/// blocks no server holds.
fn spans_by_block(spans: &[RemoteSpan], start: u32, end: u32) -> Result<Vec<Vec<&RemoteSpan>>> {
    let by_block: Vec<Vec<&RemoteSpan>> =
        (start..end).map(|b| spans.iter().filter(|s| s.start <= b && b < s.end).collect()).collect();
    let missing: Vec<u32> = (start..end).filter(|b| by_block[(b - start) as usize].is_empty()).collect();
    if !missing.is_empty() {
        return Err(Error::new(ErrorKind::Network, format!("no ONLINE server holds blocks {missing:?}")));
    }
    Ok(by_block)
}

/// One-way delay from a round-trip time (Petals `_rtt_to_delay`).
fn rtt_to_delay(rtt: Option<f64>) -> f64 {
    rtt.map_or(DEFAULT_DELAY, |rtt| (rtt / 2.0).min(MAX_DELAY))
}

/// Whether `span`'s server can hold `cache_tokens` more tokens for every one of its blocks.
fn has_cache_for(span: &RemoteSpan, cache_tokens: Option<u64>) -> bool {
    match (cache_tokens, span.info.cache_tokens_left) {
        (Some(needed), Some(left)) => needed.saturating_mul(2).saturating_mul(u64::from(span.len())) <= left,
        _ => true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    Start,
    End,
    At(usize, u32),
}

#[derive(PartialEq)]
struct Queued(f64, usize);
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then_with(|| other.1.cmp(&self.1))
    }
}

/// The chain of spans covering `start..end` with the least expected time per inference step:
/// Dijkstra over `(server, block)` nodes whose edges are half round-trip times (client pings
/// `client_rtts`, server-to-server `next_pings`) plus overhead, a penalty where the cache is too
/// small for `cache_tokens`, and `1 / inference_rps` per block (Petals `_build_inference_graph`).
/// A server is entered only where the previous one's span ends.
pub fn min_latency_route(
    spans: &[RemoteSpan],
    start: u32,
    end: u32,
    client_rtts: &HashMap<PeerId, f64>,
    cache_tokens: Option<u64>,
) -> Result<Vec<RemoteSpan>> {
    if start >= end {
        return Ok(Vec::new());
    }
    let by_block = spans_by_block(spans, start, end)?;
    let span_index = |s: &RemoteSpan| spans.iter().position(|x| std::ptr::eq(x, s)).expect("span from the list");
    let mut edges: HashMap<Node, Vec<(Node, f64)>> = HashMap::new();
    let mut add = |from: Node, to: Node, cost: f64| edges.entry(from).or_default().push((to, cost));
    for s in &by_block[0] {
        let mut delay = rtt_to_delay(client_rtts.get(&s.peer).copied()) + OVERHEAD_DELAY;
        if !has_cache_for(s, cache_tokens) {
            delay += ALLOC_DELAY;
        }
        add(Node::Start, Node::At(span_index(s), start), delay);
    }
    for s in &by_block[(end - 1 - start) as usize] {
        add(Node::At(span_index(s), end), Node::End, rtt_to_delay(client_rtts.get(&s.peer).copied()));
    }
    for block in start + 1..end {
        for cur in &by_block[(block - 1 - start) as usize] {
            if cur.end != block {
                continue;
            }
            for next in &by_block[(block - start) as usize] {
                let rtt = cur.info.next_pings.as_ref().and_then(|pings| {
                    let key = next.peer.to_base58();
                    pings.iter().find(|(peer, _)| *peer == key).map(|(_, rtt)| *rtt)
                });
                let mut delay = rtt_to_delay(rtt) + OVERHEAD_DELAY;
                if !has_cache_for(next, cache_tokens) {
                    delay += ALLOC_DELAY;
                }
                add(Node::At(span_index(cur), block), Node::At(span_index(next), block), delay);
            }
        }
    }
    for (i, s) in spans.iter().enumerate() {
        let rps = s.info.inference_rps.filter(|r| *r > 0.0).unwrap_or(DEFAULT_INFERENCE_RPS);
        for block in s.start.max(start)..s.end.min(end) {
            add(Node::At(i, block), Node::At(i, block + 1), 1.0 / rps);
        }
    }
    let path = shortest_path(&edges, Node::Start, Node::End)
        .ok_or_else(|| Error::new(ErrorKind::Network, format!("no chain of servers covers blocks {start}..{end}")))?;
    let mut route: Vec<RemoteSpan> = Vec::new();
    let mut last: Option<usize> = None;
    for node in &path[1..path.len() - 1] {
        let Node::At(i, block) = *node else { continue };
        if last == Some(i) {
            if let Some(span) = route.last_mut() {
                span.end = block;
            }
        } else {
            route.push(RemoteSpan { start: block, end: block, ..spans[i].clone() });
            last = Some(i);
        }
    }
    route.retain(|s| !s.is_empty());
    Ok(route)
}

fn shortest_path(edges: &HashMap<Node, Vec<(Node, f64)>>, from: Node, to: Node) -> Option<Vec<Node>> {
    let mut ids: HashMap<Node, usize> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut id_of = |n: Node, nodes: &mut Vec<Node>| {
        *ids.entry(n).or_insert_with(|| {
            nodes.push(n);
            nodes.len() - 1
        })
    };
    let source = id_of(from, &mut nodes);
    let mut cost: Vec<f64> = vec![0.0];
    let mut prev: Vec<Option<usize>> = vec![None];
    let mut done: Vec<bool> = vec![false];
    let mut heap = BinaryHeap::from([Queued(0.0, source)]);
    while let Some(Queued(c, u)) = heap.pop() {
        if done[u] {
            continue;
        }
        done[u] = true;
        if nodes[u] == to {
            let mut path = vec![nodes[u]];
            let mut at = u;
            while let Some(p) = prev[at] {
                path.push(nodes[p]);
                at = p;
            }
            path.reverse();
            return Some(path);
        }
        for &(next, w) in edges.get(&nodes[u]).map(Vec::as_slice).unwrap_or_default() {
            let v = id_of(next, &mut nodes);
            if v >= cost.len() {
                cost.resize(v + 1, f64::INFINITY);
                prev.resize(v + 1, None);
                done.resize(v + 1, false);
            }
            if c + w < cost[v] {
                cost[v] = c + w;
                prev[v] = Some(u);
                heap.push(Queued(c + w, v));
            }
        }
    }
    None
}

/// A chain covering `start..end` for forward/backward passes: at each uncovered block, one of
/// the spans holding it, picked at random with weight = its length (almost never one whose ping
/// failed), continued from that span's end (Petals `_make_sequence_with_max_throughput`).
pub fn max_throughput_route(
    spans: &[RemoteSpan],
    start: u32,
    end: u32,
    client_rtts: &HashMap<PeerId, f64>,
    rng: &mut impl Rng,
) -> Result<Vec<RemoteSpan>> {
    let mut route = Vec::new();
    let mut block = start;
    while block < end {
        let candidates: Vec<&RemoteSpan> = spans.iter().filter(|s| s.start <= block && block < s.end).collect();
        if candidates.is_empty() {
            return Err(Error::new(ErrorKind::Network, format!("no ONLINE server holds block {block}")));
        }
        let weights: Vec<f64> = candidates
            .iter()
            .map(|s| if client_rtts.get(&s.peer).is_some_and(|r| r.is_infinite()) { 1e-6 } else { f64::from(s.len()) })
            .collect();
        let mut pick = rng.gen::<f64>() * weights.iter().sum::<f64>();
        let mut chosen = candidates[candidates.len() - 1];
        for (s, w) in candidates.iter().zip(&weights) {
            if pick < *w {
                chosen = s;
                break;
            }
            pick -= w;
        }
        route.push(RemoteSpan { start: block, end: chosen.end.min(end), ..chosen.clone() });
        block = chosen.end;
    }
    Ok(route)
}

/// Temporarily banned peers with exponential backoff (hivemind's `Blacklist`): a failure bans a
/// peer for `base · 2^streak`, a success clears its streak.
#[derive(Debug, Clone)]
pub struct Blacklist {
    base: Duration,
    banned: HashMap<PeerId, (Instant, u32)>,
}

impl Blacklist {
    /// A blacklist whose first ban lasts `base` (zero disables banning).
    pub fn new(base: Duration) -> Self {
        Blacklist { base, banned: HashMap::new() }
    }

    /// Records a failure of `peer` at `now`: bans it unless it is banned already.
    pub fn register_failure(&mut self, peer: PeerId, now: Instant) {
        if self.base.is_zero() {
            return;
        }
        let streak = self.banned.get(&peer).map_or(0, |&(_, streak)| streak);
        if self.is_banned(&peer, now) {
            return;
        }
        let factor = 2u32.saturating_pow(streak.min(16));
        self.banned.insert(peer, (now + self.base * factor, streak + 1));
    }

    /// Records a success of `peer`: lifts its ban and resets its streak.
    pub fn register_success(&mut self, peer: &PeerId) {
        self.banned.remove(peer);
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|&(until, _)| now < until)
    }
}

/// The wait before retry number `attempt` (0-based): none, then `min_backoff · 2^(attempt−1)`
/// capped at `max_backoff` (Petals `get_retry_delay`).
pub fn retry_delay(attempt: usize, min_backoff: Duration, max_backoff: Duration) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow((attempt - 1).min(30) as u32);
    min_backoff.saturating_mul(factor).min(max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn info(start: u32, end: u32) -> ServerInfo {
        ServerInfo { start_block: Some(start), end_block: Some(end), ..ServerInfo::new(ServerState::Online, 1.0) }
    }

    fn view(servers: &[(PeerId, ServerInfo)], num_blocks: u32) -> SwarmView {
        let mut blocks = vec![Vec::new(); num_blocks as usize];
        for (peer, info) in servers {
            for b in info.start_block.unwrap_or(0)..info.end_block.unwrap_or(0) {
                blocks[b as usize].push((*peer, info.clone()));
            }
        }
        SwarmView { blocks }
    }

    fn hops(route: &[RemoteSpan]) -> Vec<(PeerId, u32, u32)> {
        route.iter().map(|s| (s.peer, s.start, s.end)).collect()
    }

    #[test]
    fn spans_come_from_online_records_longest_first() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let joining = ServerInfo { state: ServerState::Joining, ..info(0, 4) };
        let v = view(&[(a, info(0, 2)), (b, info(0, 4)), (c, joining)], 4);
        let spans = v.spans(|_| false);
        assert_eq!(spans.iter().map(|s| (s.peer, s.start, s.end)).collect::<Vec<_>>(), [(b, 0, 4), (a, 0, 2)]);
    }

    #[test]
    fn one_long_span_beats_two_hops_and_rtts_decide_between_equals() {
        let (a, b, c, d) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        let v = view(&[(a, info(0, 2)), (b, info(2, 4)), (c, info(0, 4))], 4);
        let spans = v.spans(|_| false);
        let route = min_latency_route(&spans, 0, 4, &HashMap::new(), None).unwrap();
        assert_eq!(hops(&route), [(c, 0, 4)], "one hop saves a network delay");

        // c is far away: 2 s round trip; the two-hop chain is faster.
        let rtts = HashMap::from([(c, 2.0), (a, 0.01), (b, 0.01)]);
        let route = min_latency_route(&spans, 0, 4, &rtts, None).unwrap();
        assert_eq!(hops(&route), [(a, 0, 2), (b, 2, 4)]);

        // Two servers for blocks 2..4: the one the first server reaches fastest wins.
        let near = ServerInfo { next_pings: Some(vec![(d.to_base58(), 0.002), (b.to_base58(), 0.4)]), ..info(0, 2) };
        let v = view(&[(a, near), (b, info(2, 4)), (d, info(2, 4))], 4);
        let route = min_latency_route(&v.spans(|_| false), 0, 4, &HashMap::new(), None).unwrap();
        assert_eq!(hops(&route), [(a, 0, 2), (d, 2, 4)]);
    }

    #[test]
    fn slow_servers_and_full_caches_are_avoided() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let slow = ServerInfo { inference_rps: Some(1.0), ..info(0, 4) };
        let v = view(&[(a, slow), (b, info(0, 4))], 4);
        assert_eq!(hops(&min_latency_route(&v.spans(|_| false), 0, 4, &HashMap::new(), None).unwrap()), [(b, 0, 4)]);

        let full = ServerInfo { cache_tokens_left: Some(100), ..info(0, 4) };
        let roomy = ServerInfo { cache_tokens_left: Some(100_000), inference_rps: Some(50.0), ..info(0, 4) };
        let v = view(&[(a, full), (b, roomy)], 4);
        let spans = v.spans(|_| false);
        let route = min_latency_route(&spans, 0, 4, &HashMap::new(), Some(64)).unwrap();
        assert_eq!(hops(&route), [(b, 0, 4)], "64 tokens x 2 x 4 blocks do not fit in 100");
        let route = min_latency_route(&spans, 0, 4, &HashMap::new(), Some(8)).unwrap();
        assert_eq!(route.len(), 1);
    }

    #[test]
    fn sub_ranges_are_clipped_and_missing_blocks_are_errors() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let v = view(&[(a, info(0, 3)), (b, info(3, 4))], 5);
        let spans = v.spans(|_| false);
        let route = min_latency_route(&spans, 1, 4, &HashMap::new(), None).unwrap();
        assert_eq!(hops(&route), [(a, 1, 3), (b, 3, 4)]);
        let err = min_latency_route(&spans, 0, 5, &HashMap::new(), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network);
        assert!(err.message().contains("[4]"), "{err}");
        assert!(min_latency_route(&spans, 2, 2, &HashMap::new(), None).unwrap().is_empty());
    }

    #[test]
    fn banned_servers_are_skipped_unless_nothing_else_holds_their_blocks() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let v = view(&[(a, info(0, 2)), (b, info(2, 4)), (c, info(2, 4))], 4);
        let spans = v.usable_spans(|p| *p == b);
        assert!(spans.iter().all(|s| s.peer != b));
        let spans = v.usable_spans(|p| *p == a);
        assert!(spans.iter().any(|s| s.peer == a), "a alone holds blocks 0..2");
    }

    #[test]
    fn max_throughput_covers_the_range_and_prefers_long_reachable_spans() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let v = view(&[(a, info(0, 1)), (b, info(0, 4)), (c, info(1, 4))], 4);
        let spans = v.spans(|_| false);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut long = 0;
        for _ in 0..200 {
            let route = max_throughput_route(&spans, 0, 4, &HashMap::new(), &mut rng).unwrap();
            assert_eq!(route.first().unwrap().start, 0);
            assert_eq!(route.last().unwrap().end, 4);
            assert!(route.windows(2).all(|w| w[0].end == w[1].start));
            long += usize::from(route[0].peer == b);
        }
        assert!(long > 120, "b (4 blocks) should win about 4/5 of the draws, won {long}/200");
        let rtts = HashMap::from([(b, f64::INFINITY)]);
        for _ in 0..50 {
            let route = max_throughput_route(&spans, 0, 4, &rtts, &mut rng).unwrap();
            assert_eq!(hops(&route), [(a, 0, 1), (c, 1, 4)]);
        }
    }

    #[test]
    fn bans_grow_exponentially_and_success_resets_them() {
        let peer = PeerId::random();
        let mut list = Blacklist::new(Duration::from_secs(15));
        let t0 = Instant::now();
        list.register_failure(peer, t0);
        assert!(list.is_banned(&peer, t0 + Duration::from_secs(14)));
        assert!(!list.is_banned(&peer, t0 + Duration::from_secs(16)));
        list.register_failure(peer, t0 + Duration::from_secs(5)); // still banned: no change
        let t1 = t0 + Duration::from_secs(16);
        list.register_failure(peer, t1);
        assert!(list.is_banned(&peer, t1 + Duration::from_secs(29)), "second ban lasts 30 s");
        list.register_success(&peer);
        assert!(!list.is_banned(&peer, t1));
        list.register_failure(peer, t1);
        assert!(!list.is_banned(&peer, t1 + Duration::from_secs(16)), "the streak was reset");
    }

    #[test]
    fn retry_delays_back_off_exponentially_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (0..9).map(|k| retry_delay(k, min, max).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
