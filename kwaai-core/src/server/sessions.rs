//! What inference sessions share: the attention-cache budget they allocate from (Petals'
//! `MemoryCache`, petals/server/memory_cache.py) and the registry that routes `rpc_push` requests
//! to open sessions (petals/server/handler.py `_managed_session`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::error::{Error, ErrorKind, Result};
use crate::wire::runtime::ExpertRequest;

/// Pushes a session holds before later ones are dropped.
const PUSH_QUEUE: usize = 32;

#[derive(Debug, Default)]
struct Usage {
    used: u64,
    enqueued: u64,
    sessions: usize,
}

#[derive(Debug)]
struct Budget {
    max_bytes: u64,
    max_sessions: usize,
    max_alloc_timeout: Duration,
    usage: Mutex<Usage>,
    freed: Notify,
    /// Waiters take turns, first come first served, as Petals' allocation lock makes them.
    turn: tokio::sync::Mutex<()>,
}

/// The attention-cache memory (in bytes) and the number of sessions a server grants; cloning
/// gives another handle to the same budget.
#[derive(Debug, Clone)]
pub struct CacheBudget {
    inner: Arc<Budget>,
}

/// One session's share of a [`CacheBudget`], returned when dropped.
#[derive(Debug)]
pub struct CacheLease {
    budget: Arc<Budget>,
    bytes: u64,
}

impl CacheBudget {
    /// A budget of `max_bytes` shared by at most `max_sessions` sessions; a caller waits for
    /// memory at most `max_alloc_timeout` whatever it asks for (Petals' `--max_alloc_timeout`).
    pub fn new(max_bytes: u64, max_sessions: usize, max_alloc_timeout: Duration) -> Self {
        let inner = Budget {
            max_bytes,
            max_sessions,
            max_alloc_timeout,
            usage: Mutex::default(),
            freed: Notify::new(),
            turn: tokio::sync::Mutex::new(()),
        };
        CacheBudget { inner: Arc::new(inner) }
    }

    /// The whole budget in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Bytes not leased.
    pub fn bytes_left(&self) -> u64 {
        let usage = self.inner.usage();
        self.inner.max_bytes.saturating_sub(usage.used)
    }

    /// Sessions holding a lease.
    pub fn active_sessions(&self) -> usize {
        self.inner.usage().sessions
    }

    /// Leases `bytes` for one session, waiting up to `timeout` (capped by the budget's maximum)
    /// for other sessions to end, as Petals' `MemoryCache.allocate_cache` does: with a zero
    /// timeout it fails at once when the memory is not free now, queued requests included.
    pub async fn allocate(&self, bytes: u64, timeout: Duration) -> Result<CacheLease> {
        let budget = &self.inner;
        let timeout = timeout.min(budget.max_alloc_timeout);
        budget.usage().enqueued += bytes;
        let result = if timeout.is_zero() {
            self.allocate_now(bytes).await
        } else {
            tokio::time::timeout(timeout, self.allocate_waiting(bytes)).await.unwrap_or_else(|_| {
                Err(allocation_failed(format!("Could not allocate {bytes} within {} seconds", py_float(timeout))))
            })
        };
        budget.usage().enqueued -= bytes;
        let lease = result?;
        tracing::debug!(bytes, left = self.bytes_left(), "attention cache allocated");
        Ok(lease)
    }

    async fn allocate_now(&self, bytes: u64) -> Result<CacheLease> {
        let budget = &self.inner;
        let out_of_memory =
            || allocation_failed(format!("Could not allocate {bytes} bytes immediately: out of memory"));
        {
            let usage = budget.usage();
            if usage.used + usage.enqueued > budget.max_bytes {
                return Err(out_of_memory());
            }
            // Checked before queueing too, so as not to wait behind a request waiting for a slot.
            if usage.sessions >= budget.max_sessions {
                return Err(too_many_sessions(budget.max_sessions));
            }
        }
        let _turn = budget.turn.lock().await;
        let mut usage = budget.usage();
        if usage.used + bytes > budget.max_bytes {
            return Err(out_of_memory());
        }
        if usage.sessions >= budget.max_sessions {
            return Err(too_many_sessions(budget.max_sessions));
        }
        Ok(budget.grant(&mut usage, bytes))
    }

    async fn allocate_waiting(&self, bytes: u64) -> Result<CacheLease> {
        let budget = &self.inner;
        let _turn = budget.turn.lock().await;
        if bytes > budget.max_bytes {
            return Err(allocation_failed(format!(
                "Could not allocate {bytes} bytes, max cache size = {} bytes",
                budget.max_bytes
            )));
        }
        loop {
            let freed = budget.freed.notified();
            futures::pin_mut!(freed);
            freed.as_mut().enable();
            {
                let mut usage = budget.usage();
                if usage.used + bytes <= budget.max_bytes && usage.sessions < budget.max_sessions {
                    return Ok(budget.grant(&mut usage, bytes));
                }
            }
            tracing::debug!(bytes, "waiting for the attention cache to free up");
            // The caller's timeout ends this wait.
            freed.await;
        }
    }
}

impl Budget {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn grant(self: &Arc<Self>, usage: &mut Usage, bytes: u64) -> CacheLease {
        usage.used += bytes;
        usage.sessions += 1;
        CacheLease { budget: Arc::clone(self), bytes }
    }
}

impl CacheLease {
    /// The bytes leased.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for CacheLease {
    fn drop(&mut self) {
        {
            let mut usage = self.budget.usage();
            usage.used -= self.bytes;
            usage.sessions -= 1;
        }
        self.budget.freed.notify_waiters();
        tracing::debug!(bytes = self.bytes, "attention cache freed");
    }
}

fn allocation_failed(message: String) -> Error {
    Error::new(ErrorKind::Timeout, message)
}

fn too_many_sessions(max: usize) -> Error {
    Error::new(ErrorKind::Timeout, format!("Could not open a session: the server already has {max} open"))
}

/// A duration in seconds as Python prints a float (`0.5`, `600.0`).
pub(crate) fn py_float(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.1}")
    } else {
        format!("{secs}")
    }
}

/// The open sessions that accept pushes, by session id.
#[derive(Debug, Clone, Default)]
pub struct SessionRegistry {
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<ExpertRequest>>>>,
}

/// A registered session's queue of pushed requests; dropping it unregisters the session.
#[derive(Debug)]
pub struct SessionInbox {
    id: String,
    registry: SessionRegistry,
    receiver: mpsc::Receiver<ExpertRequest>,
}

impl SessionRegistry {
    /// Registers session `id`; ids must be unique among open sessions.
    pub fn open(&self, id: &str) -> Result<SessionInbox> {
        let mut queues = self.lock();
        if queues.contains_key(id) {
            return Err(Error::invalid_argument(format!("session id {id} is not unique")));
        }
        let (sender, receiver) = mpsc::channel(PUSH_QUEUE);
        queues.insert(id.to_owned(), sender);
        Ok(SessionInbox { id: id.to_owned(), registry: self.clone(), receiver })
    }

    /// Queues a pushed request for session `id`; returns whether the session exists (unknown
    /// ids are ignored, as Petals ignores them).
    pub fn push(&self, id: &str, request: ExpertRequest) -> bool {
        let Some(sender) = self.lock().get(id).cloned() else {
            tracing::debug!(session_id = id, "ignored rpc_push to an unknown session");
            return false;
        };
        if sender.try_send(request).is_err() {
            tracing::warn!(session_id = id, "dropped an rpc_push: the session's queue is full");
        }
        true
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<ExpertRequest>>> {
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SessionInbox {
    /// The next pushed request (never returns while the session is registered and nothing came).
    pub async fn recv(&mut self) -> Option<ExpertRequest> {
        self.receiver.recv().await
    }
}

impl Drop for SessionInbox {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn zero_timeout_fails_at_once_when_memory_is_short() {
        runtime().block_on(async {
            let budget = CacheBudget::new(100, 8, Duration::from_secs(600));
            let lease = budget.allocate(60, Duration::ZERO).await.unwrap();
            assert_eq!((budget.bytes_left(), budget.active_sessions()), (40, 1));
            let err = budget.allocate(50, Duration::ZERO).await.unwrap_err();
            assert_eq!(err.message(), "Could not allocate 50 bytes immediately: out of memory");
            drop(lease);
            assert_eq!((budget.bytes_left(), budget.active_sessions()), (100, 0));
            budget.allocate(100, Duration::ZERO).await.unwrap();
        });
    }

    #[test]
    fn a_waiting_allocation_gets_memory_another_session_frees() {
        runtime().block_on(async {
            let budget = CacheBudget::new(100, 8, Duration::from_secs(600));
            let first = budget.allocate(80, Duration::ZERO).await.unwrap();
            let waiter = budget.allocate(50, Duration::from_secs(30));
            let release = async move {
                tokio::task::yield_now().await;
                drop(first);
            };
            let (lease, ()) = tokio::join!(waiter, release);
            assert_eq!(lease.unwrap().bytes(), 50);
        });
    }

    #[test]
    fn waits_end_with_petals_messages() {
        runtime().block_on(async {
            let budget = CacheBudget::new(100, 8, Duration::from_millis(50));
            let err = budget.allocate(200, Duration::from_secs(5)).await.unwrap_err();
            assert_eq!(err.message(), "Could not allocate 200 bytes, max cache size = 100 bytes");
            let _held = budget.allocate(100, Duration::ZERO).await.unwrap();
            // The request's 5 s are capped by the budget's 50 ms.
            let err = budget.allocate(10, Duration::from_secs(5)).await.unwrap_err();
            assert_eq!(err.message(), "Could not allocate 10 within 0.05 seconds");
            assert_eq!(err.kind(), ErrorKind::Timeout);
        });
    }

    #[test]
    fn sessions_are_capped() {
        runtime().block_on(async {
            let budget = CacheBudget::new(100, 1, Duration::from_secs(1));
            let _one = budget.allocate(0, Duration::ZERO).await.unwrap();
            let err = budget.allocate(0, Duration::ZERO).await.unwrap_err();
            assert!(err.message().contains("already has 1 open"), "{err}");
        });
    }

    #[test]
    fn zero_timeout_requests_do_not_queue_behind_a_waiter() {
        runtime().block_on(async {
            let budget = CacheBudget::new(100, 1, Duration::from_secs(600));
            let held = budget.allocate(10, Duration::ZERO).await.unwrap();
            let waiter = budget.allocate(10, Duration::from_secs(60));
            let impatient = async {
                tokio::task::yield_now().await;
                let answer = tokio::time::timeout(Duration::from_secs(5), budget.allocate(10, Duration::ZERO)).await;
                drop(held);
                answer
            };
            let (waited, impatient) = tokio::join!(waiter, impatient);
            assert!(impatient.expect("answered at once").is_err());
            assert_eq!(waited.unwrap().bytes(), 10);
        });
    }

    #[test]
    fn pushes_reach_registered_sessions_only() {
        runtime().block_on(async {
            let registry = SessionRegistry::default();
            let mut inbox = registry.open("s1").unwrap();
            assert!(registry.open("s1").unwrap_err().message().contains("is not unique"));
            let request = ExpertRequest { uid: "m.0".into(), ..Default::default() };
            assert!(registry.push("s1", request.clone()));
            assert!(!registry.push("other", request.clone()));
            assert_eq!(inbox.recv().await.unwrap().uid, "m.0");
            drop(inbox);
            assert!(registry.is_empty());
            assert!(!registry.push("s1", request));
        });
    }
}
