//! hivemind's Kademlia routing table: LRU k-buckets with replacement lists, split when full if
//! the bucket covers our own ID or its depth is not a multiple of `depth_modulo`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use indexmap::IndexMap;
use libp2p::PeerId;
use web_time::Instant;

use super::id::DhtId;

/// One k-bucket: the IDs sharing the first `depth` bits of `prefix`.
#[derive(Debug, Clone)]
struct KBucket {
    prefix: DhtId,
    depth: usize,
    /// Least recently seen first.
    nodes: IndexMap<DhtId, PeerId>,
    /// Candidates for when a node leaves, most recent last.
    replacements: IndexMap<DhtId, PeerId>,
    /// Nodes we were asked to ping and have not heard from since.
    pinging: HashSet<DhtId>,
    /// When a node was last added or refreshed here (or the bucket was made).
    last_updated: Instant,
}

impl KBucket {
    fn covers(&self, id: &DhtId) -> bool {
        (0..self.depth).all(|bit| id.bit(bit) == self.prefix.bit(bit))
    }

    /// Adds or refreshes a node; `false` if the bucket is full (the node became a replacement).
    fn add_or_update(&mut self, node: DhtId, peer: PeerId, size: usize) -> bool {
        self.pinging.remove(&node);
        self.last_updated = Instant::now();
        if self.nodes.shift_remove(&node).is_some() || self.nodes.len() < size {
            self.nodes.insert(node, peer);
            return true;
        }
        self.replacements.shift_remove(&node);
        self.replacements.insert(node, peer);
        false
    }

    /// The least recently seen node not already being pinged.
    fn node_to_ping(&mut self) -> Option<(DhtId, PeerId)> {
        let (&node, &peer) = self.nodes.iter().find(|(node, _)| !self.pinging.contains(node))?;
        self.pinging.insert(node);
        Some((node, peer))
    }

    fn split(self, size: usize) -> (KBucket, KBucket) {
        let mut right_prefix = *self.prefix.as_bytes();
        right_prefix[self.depth / 8] |= 0x80 >> (self.depth % 8);
        let empty = |prefix| KBucket {
            prefix,
            depth: self.depth + 1,
            nodes: IndexMap::new(),
            replacements: IndexMap::new(),
            pinging: HashSet::new(),
            last_updated: Instant::now(),
        };
        let (mut left, mut right) = (empty(self.prefix), empty(DhtId::from_slice(&right_prefix).expect("20 bytes")));
        for (node, peer) in self.nodes.into_iter().chain(self.replacements) {
            let half = if left.covers(&node) { &mut left } else { &mut right };
            half.add_or_update(node, peer, size);
        }
        (left, right)
    }
}

/// The routing table of one DHT node.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    node_id: DhtId,
    bucket_size: usize,
    depth_modulo: usize,
    /// Sorted by prefix; together they cover the whole ID space.
    buckets: Vec<KBucket>,
    peer_of: HashMap<DhtId, PeerId>,
    node_of: HashMap<PeerId, DhtId>,
}

impl RoutingTable {
    /// An empty table for `node_id` (hivemind's defaults: bucket size 20, depth modulo 5).
    pub fn new(node_id: DhtId, bucket_size: usize, depth_modulo: usize) -> Self {
        let root = KBucket {
            prefix: DhtId::MIN,
            depth: 0,
            nodes: IndexMap::new(),
            replacements: IndexMap::new(),
            pinging: HashSet::new(),
            last_updated: Instant::now(),
        };
        RoutingTable {
            node_id,
            bucket_size: bucket_size.max(1),
            depth_modulo: depth_modulo.max(1),
            buckets: vec![root],
            peer_of: HashMap::new(),
            node_of: HashMap::new(),
        }
    }

    /// Our own node ID.
    pub fn node_id(&self) -> DhtId {
        self.node_id
    }

    fn bucket_index(&self, id: &DhtId) -> usize {
        self.buckets.partition_point(|b| b.prefix <= *id) - 1
    }

    /// Records that `node` (at `peer`) is alive. Returns a node to ping when the bucket is full and
    /// cannot split: if that node does not answer, remove it and the newcomer takes its place.
    pub fn add_or_update(&mut self, node: DhtId, peer: PeerId) -> Option<(DhtId, PeerId)> {
        if node == self.node_id {
            return None;
        }
        loop {
            let index = self.bucket_index(&node);
            let bucket = &mut self.buckets[index];
            let added = bucket.add_or_update(node, peer, self.bucket_size);
            if let Some(old_peer) = self.peer_of.insert(node, peer) {
                if old_peer != peer && self.node_of.get(&old_peer) == Some(&node) {
                    self.node_of.remove(&old_peer);
                }
            }
            self.node_of.insert(peer, node);
            if added {
                return None;
            }
            let can_split = bucket.depth < DhtId::LEN * 8
                && (bucket.covers(&self.node_id) || !bucket.depth.is_multiple_of(self.depth_modulo));
            if !can_split {
                return bucket.node_to_ping();
            }
            let (left, right) = self.buckets.remove(index).split(self.bucket_size);
            self.buckets.insert(index, right);
            self.buckets.insert(index, left);
        }
    }

    /// Forgets a node (it stopped answering); a replacement, if any, takes its place.
    pub fn remove(&mut self, node: &DhtId) {
        let index = self.bucket_index(node);
        let bucket = &mut self.buckets[index];
        bucket.pinging.remove(node);
        bucket.replacements.shift_remove(node);
        if bucket.nodes.shift_remove(node).is_some() {
            if let Some((new_node, new_peer)) = bucket.replacements.pop() {
                bucket.nodes.insert(new_node, new_peer);
            }
        }
        if let Some(peer) = self.peer_of.remove(node) {
            if self.node_of.get(&peer) == Some(node) {
                self.node_of.remove(&peer);
            }
        }
    }

    /// The peer ID of a node we know (in a bucket or as a replacement).
    pub fn peer_of(&self, node: &DhtId) -> Option<PeerId> {
        self.peer_of.get(node).copied()
    }

    /// The node ID of a peer we know.
    pub fn node_of(&self, peer: &PeerId) -> Option<DhtId> {
        self.node_of.get(peer).copied()
    }

    /// Nodes in buckets (not counting replacements).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether no node is in a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A random ID inside each bucket not updated for `staleness` (hivemind looks these up to
    /// refresh its table).
    pub fn stale_bucket_targets(&self, staleness: Duration) -> Vec<DhtId> {
        self.buckets
            .iter()
            .filter(|b| b.last_updated.elapsed() >= staleness)
            .map(|b| {
                // Keep the bucket's first `depth` bits, draw the rest.
                let random = DhtId::random();
                let bytes: Vec<u8> = (0..DhtId::LEN)
                    .map(|i| {
                        let fixed_bits = b.depth.saturating_sub(i * 8).min(8);
                        let mask = if fixed_bits == 0 { 0 } else { 0xffu8 << (8 - fixed_bits) };
                        (b.prefix.as_bytes()[i] & mask) | (random.as_bytes()[i] & !mask)
                    })
                    .collect();
                DhtId::from_slice(&bytes).expect("20 bytes")
            })
            .collect()
    }

    /// Up to `k` bucket nodes nearest to `target` by XOR distance, nearest first, without `exclude`.
    pub fn nearest(&self, target: &DhtId, k: usize, exclude: Option<&DhtId>) -> Vec<(DhtId, PeerId)> {
        let mut all: Vec<(DhtId, DhtId, PeerId)> = self
            .buckets
            .iter()
            .flat_map(|b| b.nodes.iter())
            .filter(|(node, _)| Some(*node) != exclude)
            .map(|(node, peer)| (node.distance(target), *node, *peer))
            .collect();
        if all.len() > k {
            all.select_nth_unstable(k);
            all.truncate(k);
        }
        all.sort_unstable();
        all.into_iter().map(|(_, node, peer)| (node, peer)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn nearest_is_exact_xor_order_over_many_nodes() {
        let mut table = RoutingTable::new(DhtId::random(), 20, 5);
        let mut all = Vec::new();
        for _ in 0..1000 {
            let (node, p) = (DhtId::random(), peer());
            if table.add_or_update(node, p).is_none() && table.peer_of(&node).is_some() {
                all.push(node);
            }
        }
        let target = DhtId::random();
        let got = table.nearest(&target, 10, None);
        assert_eq!(got.len(), 10);
        let in_buckets: Vec<DhtId> = table.buckets.iter().flat_map(|b| b.nodes.keys().copied()).collect();
        let mut expected = in_buckets.clone();
        expected.sort_by_key(|n| n.distance(&target));
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), expected[..10]);
        // Buckets near our own ID split, so the table holds far more than one bucket's worth.
        assert!(table.len() > 20, "{}", table.len());
        // Every bucket node is covered by exactly its bucket.
        for bucket in &table.buckets {
            assert!(bucket.nodes.len() <= 20);
            assert!(bucket.nodes.keys().all(|n| bucket.covers(n)));
        }
    }

    #[test]
    fn a_full_far_bucket_asks_to_ping_its_oldest_node_and_keeps_replacements() {
        // Own ID starts with bit 1; nodes starting with bit 0 land in a depth-1 bucket, and
        // 1 % 5 != 0 lets it split once more, then depth 2 splits again ... until depth 5.
        let mut own = [0u8; 20];
        own[0] = 0x80;
        let mut table = RoutingTable::new(DhtId::from_slice(&own).unwrap(), 2, 5);
        let far = |n: u8| DhtId::from_slice(&[&[0u8][..], &[n; 19][..]].concat()).unwrap();
        let (a, b, c) = (far(1), far(2), far(3));
        assert!(table.add_or_update(a, peer()).is_none());
        assert!(table.add_or_update(b, peer()).is_none());
        let ping = table.add_or_update(c, peer()).expect("full bucket at depth 5 asks for a ping");
        assert_eq!(ping.0, a, "least recently seen first");
        assert_eq!(table.len(), 2);
        table.remove(&a);
        assert_eq!(table.len(), 2, "the replacement took its place");
        assert!(table.nearest(&c, 5, None).iter().any(|(n, _)| *n == c));
    }

    #[test]
    fn stale_buckets_give_random_targets_inside_them() {
        let mut own = [0u8; 20];
        own[0] = 0x80;
        let mut table = RoutingTable::new(DhtId::from_slice(&own).unwrap(), 2, 5);
        for n in 1..=6u8 {
            table.add_or_update(DhtId::from_slice(&[n * 37; 20]).unwrap(), peer());
        }
        assert!(table.buckets.len() > 1);
        assert!(table.stale_bucket_targets(Duration::from_secs(60)).is_empty(), "all fresh");
        let targets = table.stale_bucket_targets(Duration::ZERO);
        assert_eq!(targets.len(), table.buckets.len());
        for (target, bucket) in targets.iter().zip(&table.buckets) {
            assert!(bucket.covers(target), "{target} in the bucket at depth {}", bucket.depth);
        }
    }

    #[test]
    fn exclude_and_self_are_never_returned() {
        let own = DhtId::random();
        let mut table = RoutingTable::new(own, 20, 5);
        assert!(table.add_or_update(own, peer()).is_none());
        assert!(table.is_empty());
        let other = DhtId::random();
        let p = peer();
        table.add_or_update(other, p);
        assert_eq!(table.node_of(&p), Some(other));
        assert!(table.nearest(&other, 5, Some(&other)).is_empty());
        assert_eq!(table.nearest(&other, 5, None), vec![(other, p)]);
    }
}
