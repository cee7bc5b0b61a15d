//! What a [`super::Client`] needs to know, and the events it reports.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;

/// How a client finds and uses the servers of one model (Petals' `ClientConfig`).
#[derive(Clone)]
pub struct ClientConfig {
    /// The model's DHT prefix: block `i` is announced under `"{dht_prefix}.{i}"`.
    pub dht_prefix: String,
    /// How many transformer blocks the model has.
    pub num_blocks: u32,
    /// Route only through these servers (if set).
    pub allowed_servers: Option<Vec<PeerId>>,
    /// Never route through these servers.
    pub blocked_servers: Vec<PeerId>,
    /// Let each server push its outputs straight to the next one (`next_servers`).
    pub use_server_to_server: bool,
    /// How long opening a server stream may take.
    pub connect_timeout: Duration,
    /// How long one request (an inference step, a forward pass) may take.
    pub request_timeout: Duration,
    /// How often the swarm view is re-read from the DHT.
    pub update_period: Duration,
    /// Attempts per request before the error is returned; `None`: retry forever (Petals' default).
    pub max_retries: Option<usize>,
    /// First retry delay after the immediate retry; it doubles with every attempt.
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// How long a failing server is first avoided; it doubles with every further failure.
    pub ban_timeout: Duration,
    /// The adapter servers must have loaded (servers without it are skipped).
    pub active_adapter: Option<String>,
    /// Servers pinged per side of the model (first, middle, last blocks) at each refresh.
    pub max_pinged: usize,
    /// How long a ping may take.
    pub ping_timeout: Duration,
    /// Where structured events go (see [`ClientEvent`]); `None` drops them.
    pub events: Option<EventCallback>,
}

impl ClientConfig {
    /// Petals' defaults for a model with `num_blocks` blocks under `dht_prefix`.
    pub fn new(dht_prefix: impl Into<String>, num_blocks: u32) -> Self {
        ClientConfig {
            dht_prefix: dht_prefix.into(),
            num_blocks,
            allowed_servers: None,
            blocked_servers: Vec::new(),
            use_server_to_server: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(180),
            update_period: Duration::from_secs(60),
            max_retries: None,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ban_timeout: Duration::from_secs(15),
            active_adapter: None,
            max_pinged: 3,
            ping_timeout: Duration::from_secs(2),
            events: None,
        }
    }

    /// Logs `event` and hands it to the configured callback, if any.
    pub fn emit(&self, event: ClientEvent) {
        tracing::debug!(?event, "client event");
        if let Some(callback) = &self.events {
            callback(&event);
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("dht_prefix", &self.dht_prefix)
            .field("num_blocks", &self.num_blocks)
            .field("use_server_to_server", &self.use_server_to_server)
            .field("max_retries", &self.max_retries)
            .field("events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

/// Receives [`ClientEvent`]s; called on the thread that does the work, so it must return fast.
pub type EventCallback = Arc<dyn Fn(&ClientEvent) + Send + Sync>;

/// One hop of a route: `peer` runs blocks `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The server.
    pub peer: PeerId,
    /// First block.
    pub start: u32,
    /// One past the last block.
    pub end: u32,
}

/// What a client reports while it works.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A chain of servers was chosen for blocks `start..end` of an inference session.
    RouteChosen {
        /// The hops, in order.
        hops: Vec<Hop>,
    },
    /// One server answered one inference step.
    HopLatency {
        /// The hop.
        hop: Hop,
        /// Tokens in the step.
        tokens: usize,
        /// Seconds from sending the step to reading the reply.
        seconds: f64,
    },
    /// A request failed and will be retried.
    Retry {
        /// The server that failed, if one did (routing itself can fail).
        peer: Option<PeerId>,
        /// The first block of the failed part of the chain.
        block: u32,
        /// Attempts made so far.
        attempt: usize,
        /// The wait before the next attempt.
        delay: Duration,
        /// What went wrong.
        error: String,
    },
    /// A replacement server received the session's earlier inputs to rebuild its cache.
    HistoryReplayed {
        /// The replacement hop.
        hop: Hop,
        /// Tokens replayed.
        tokens: usize,
    },
}
