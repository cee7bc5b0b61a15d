//! The announcement loop of a Petals server (petals/server/server.py `ModuleAnnouncerThread`):
//! re-announce every update period, immediately on a state change, and once OFFLINE on shutdown.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use libp2p::PeerId;

use super::announce::{announce, announcement_expiration, Span};
use super::info::{ServerInfo, ServerState};
use crate::dht::Dht;
use crate::error::{Error, ErrorKind, Result};

/// What one announcement cycle reported: whether each block record was accepted.
type Accepted = Result<Vec<bool>>;

enum Command {
    SetState(ServerState, SyncSender<Accepted>),
    Stop(SyncSender<Accepted>),
}

/// Keeps a span announced in the DHT from a background thread until shut down.
pub struct Announcer {
    commands: SyncSender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// Where and what an [`Announcer`] announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The model's DHT prefix.
    pub dht_prefix: String,
    /// The served blocks.
    pub span: Span,
    /// The model's number of blocks.
    pub num_blocks: u32,
    /// The record to announce (its span fields are set from `span`).
    pub info: ServerInfo,
    /// How often to re-announce.
    pub update_period: Duration,
    /// How long each announcement lives (Petals' `--expiration`); `None`: twice the update
    /// period, at least 3 s.
    pub lifetime: Option<Duration>,
}

impl Announcer {
    /// Announces `announcement` once (returning an error if that fails) and keeps announcing it.
    pub fn start(dht: Dht, peer: PeerId, announcement: Announcement) -> Result<Announcer> {
        Announcer::start_with(dht, peer, announcement, |_| {})
    }

    /// Like [`Announcer::start`], with `refresh` updating the record (e.g. its free cache) before
    /// each announcement.
    pub fn start_with(
        dht: Dht,
        peer: PeerId,
        announcement: Announcement,
        mut refresh: impl FnMut(&mut ServerInfo) + Send + 'static,
    ) -> Result<Announcer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::with_source(ErrorKind::Io, "starting the announcer runtime", e))?;
        let (commands, receiver) = mpsc::sync_channel::<Command>(4);
        let (first_tx, first_rx) = mpsc::sync_channel::<Accepted>(1);
        let thread = std::thread::Builder::new()
            .name("kwaai-announcer".into())
            .spawn(move || {
                let Announcement { dht_prefix, span, num_blocks, mut info, update_period, lifetime } = announcement;
                let lifetime =
                    lifetime.map_or_else(|| announcement_expiration(update_period.as_secs_f64()), |l| l.as_secs_f64());
                let mut once = |info: &mut ServerInfo| {
                    refresh(info);
                    runtime.block_on(announce(&dht, &peer, &dht_prefix, span, num_blocks, info, lifetime))
                };
                let _ = first_tx.send(once(&mut info));
                loop {
                    match receiver.recv_timeout(update_period) {
                        Ok(Command::SetState(state, reply)) => {
                            info.state = state;
                            let _ = reply.send(once(&mut info));
                        }
                        Ok(Command::Stop(reply)) => {
                            info = ServerInfo { state: ServerState::Offline, next_pings: None, ..info };
                            let _ = reply.send(once(&mut info));
                            return;
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(e) = once(&mut info) {
                                tracing::warn!("re-announcing blocks failed: {e}");
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| Error::with_source(ErrorKind::Io, "starting the announcer thread", e))?;
        let mut announcer = Announcer { commands, thread: Some(thread) };
        let first = first_rx.recv().map_err(|_| Error::new(ErrorKind::Internal, "the announcer thread died"));
        if let Err(e) = first.and_then(|accepted| accepted) {
            announcer.join();
            return Err(e);
        }
        Ok(announcer)
    }

    /// Changes the announced state and announces it now; returns once the DHT stored it.
    pub fn set_state(&self, state: ServerState) -> Result<Vec<bool>> {
        self.request(|reply| Command::SetState(state, reply))
    }

    /// Announces OFFLINE (without pings) and stops the loop.
    pub fn shutdown(mut self) -> Result<Vec<bool>> {
        let result = self.request(Command::Stop);
        self.join();
        result
    }

    fn request(&self, command: impl FnOnce(SyncSender<Accepted>) -> Command) -> Result<Vec<bool>> {
        let (reply, result) = mpsc::sync_channel(1);
        let closed = || Error::new(ErrorKind::Closed, "the announcer has stopped");
        self.commands.send(command(reply)).map_err(|_| closed())?;
        result.recv().map_err(|_| closed())?
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Dropping the sender side ends the loop if it is still running.
            let (dummy, _) = mpsc::sync_channel(0);
            drop(std::mem::replace(&mut self.commands, dummy));
            let _ = thread.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.request(Command::Stop);
            self.join();
        }
    }
}
