//! hivemind's `Blacklist`: peers that failed to answer a find are skipped for a while, the
//! while doubling (`backoff_rate` 2) with each failure after a ban ran out; one answer forgets it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Temporarily banned peers; time is passed in so the rules are testable without waiting.
#[derive(Debug)]
pub(crate) struct Blacklist {
    base: Duration,
    /// Per peer: banned until, and how many bans it had.
    peers: HashMap<PeerId, (Instant, u32)>,
}

impl Blacklist {
    /// A blacklist whose first ban lasts `base` (zero disables it).
    pub fn new(base: Duration) -> Self {
        Blacklist { base, peers: HashMap::new() }
    }

    /// Whether `peer` is banned at `now`.
    pub fn contains(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers.get(peer).is_some_and(|(until, _)| now < *until)
    }

    /// `peer` failed to answer: ban it for `base · 2^bans`, unless it is banned already.
    pub fn register_failure(&mut self, peer: PeerId, now: Instant) {
        if self.base.is_zero() || self.contains(&peer, now) {
            return;
        }
        let bans = self.peers.get(&peer).map_or(0, |(_, n)| *n);
        let ban = self.base.saturating_mul(1 << bans.min(20));
        self.peers.insert(peer, (now + ban, bans + 1));
    }

    /// `peer` answered: forget its bans.
    pub fn register_success(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_double_after_each_expired_ban_and_an_answer_resets_them() {
        let mut blacklist = Blacklist::new(Duration::from_secs(5));
        let (peer, start) = (PeerId::random(), Instant::now());
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(!blacklist.contains(&peer, start));
        blacklist.register_failure(peer, start);
        assert!(blacklist.contains(&peer, at(4)) && !blacklist.contains(&peer, at(5)), "5 s first");
        blacklist.register_failure(peer, at(1));
        assert!(!blacklist.contains(&peer, at(5)), "a failure while banned does not extend the ban");
        blacklist.register_failure(peer, at(5));
        assert!(blacklist.contains(&peer, at(14)) && !blacklist.contains(&peer, at(15)), "then 10 s");
        blacklist.register_failure(peer, at(15));
        assert!(blacklist.contains(&peer, at(34)) && !blacklist.contains(&peer, at(35)), "then 20 s");
        blacklist.register_success(&peer);
        assert!(!blacklist.contains(&peer, at(16)));
        blacklist.register_failure(peer, at(40));
        assert!(!blacklist.contains(&peer, at(45)), "back to 5 s");
        let mut off = Blacklist::new(Duration::ZERO);
        off.register_failure(peer, start);
        assert!(!off.contains(&peer, start), "a zero blacklist time disables it");
    }
}
