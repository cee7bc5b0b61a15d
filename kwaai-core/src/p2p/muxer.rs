//! A stream muxer wrapper that gives hivemind's slash-less protocol names to our RPC layer.
//!
//! rust-libp2p's multistream-select refuses protocol names without a leading `/`, and hivemind
//! names its handlers `DHTProtocol.rpc_ping` and the like. Rather than patching it, every
//! connection's muxer is wrapped in [`RpcMuxer`], whose driver task reads the connection (see
//! [`Driver`]; the swarm's own connection task sees only its streams and the end):
//!
//! * **Inbound**: each new substream is read by our own listener (a few lines of
//!   multistream-select 1.0, [`super::multistream`]) until the dialer's first proposal arrives.
//!   A slash-less name with a registered handler is accepted (header + echo) and the stream goes
//!   straight to [`super::rpc`]; a slash-less name without one is refused with `na` and the next
//!   proposal is read. `/ipfs/kad/1.0.0` is accepted the same way and answered by
//!   [`super::kad_responder`]. Anything else (`/ipfs/id/1.0.0`, `/ipfs/ping/1.0.0`, ...) is handed
//!   to the swarm untouched: the bytes read so far are replayed before the rest of the stream, so
//!   identify, ping and kad negotiate as usual. If we already sent our header (after an `na`), the
//!   swarm's own header is swallowed so that the dialer sees exactly one.
//! * **Outbound**: [`Connections::open`] opens a raw substream on the connection's muxer, which
//!   [`RpcMuxer`] shares (behind a mutex) for that purpose, so a call needs no round trip through
//!   the connection task; the RPC layer then proposes the name itself.
//!
//! Streams handed to the RPC layer count as open in [`Connections`], and every stream records
//! when it closed: the keep-alive behaviour reads both, so that the swarm never closes a
//! connection in the middle of a call and counts its idle time from the end of the last stream.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, StreamMuxerExt, SubstreamBox};
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::kad_responder::{self, KAD_PROTOCOL};
use super::multistream::{decode_message, encode_message, HEADER, MAX_MESSAGE_LEN, NOT_AVAILABLE};
use super::rpc::RpcShared;
use crate::error::{Error, ErrorKind, Result};

/// How long a dialer may take to send its header and proposal.
const INBOUND_NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How many unknown names one inbound stream may propose before we give up on it.
const MAX_REFUSALS: usize = 8;
/// Bytes of the multistream header message (`0x13 /multistream/1.0.0 \n`).
const HEADER_MESSAGE_LEN: usize = 20;

/// A substream: bytes to replay first, then the muxer's stream.
pub(crate) struct RpcStream {
    inner: SubstreamBox,
    prefix: Vec<u8>,
    read: usize,
    skip_write: usize,
    /// Our multistream answer, when it was deferred to go out with the first reply.
    answer: Vec<u8>,
    _active: Option<ActiveGuard>,
}

impl RpcStream {
    fn plain(inner: SubstreamBox) -> Self {
        RpcStream { inner, prefix: Vec::new(), read: 0, skip_write: 0, answer: Vec::new(), _active: None }
    }

    /// The multistream answer the handler must send before anything else (empty if already sent).
    pub fn take_answer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.answer)
    }
}

impl AsyncRead for RpcStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.read < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.read);
            buf[..n].copy_from_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RpcStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.skip_write > 0 && !buf.is_empty() {
            let n = buf.len().min(this.skip_write);
            this.skip_write -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// The streams of one connection: how many RPC streams are open, and when a stream last closed.
struct Activity {
    open: AtomicUsize,
    /// When a stream last closed (or the connection opened), in [`clock_ms`] milliseconds.
    last_active: AtomicU64,
}

/// Milliseconds since this process first asked.
fn clock_ms() -> u64 {
    clock_origin().elapsed().as_millis() as u64
}

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Records a stream's end as the connection's last activity; an RPC stream's guard also counts
/// the stream as open while it lives.
struct ActiveGuard {
    activity: Arc<Activity>,
    counted: bool,
}

impl ActiveGuard {
    /// Counts an RPC stream as open until the guard drops.
    fn new(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        ActiveGuard { activity: activity.clone(), counted: true }
    }

    /// Only records when the (swarm's) stream ends.
    fn touch_on_drop(activity: &Arc<Activity>) -> Self {
        ActiveGuard { activity: activity.clone(), counted: false }
    }

    /// Stops counting the stream as open; its end is still recorded.
    fn uncounted(mut self) -> Self {
        if std::mem::take(&mut self.counted) {
            self.activity.open.fetch_sub(1, Ordering::AcqRel);
        }
        self
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // Stored before the count drops: whoever sees no open stream sees this end.
        self.activity.last_active.fetch_max(clock_ms(), Ordering::AcqRel);
        if self.counted {
            self.activity.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A connection's muxer, shared by the swarm's connection task and the RPC layer.
type SharedMuxer = Arc<Mutex<StreamMuxerBox>>;

fn lock(muxer: &SharedMuxer) -> std::sync::MutexGuard<'_, StreamMuxerBox> {
    muxer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Slot {
    id: u64,
    muxer: SharedMuxer,
    activity: Arc<Activity>,
}

/// The streams on a peer's connections, as [`Connections::activity`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerActivity {
    /// Whether any RPC stream with the peer is open.
    pub open: bool,
    /// When the last stream with the peer closed, or its newest connection opened.
    pub last_active: Instant,
}

/// Every live connection, by peer: how to open RPC streams on it and how many are open.
#[derive(Default)]
pub(crate) struct Connections {
    slots: Mutex<HashMap<PeerId, Vec<Slot>>>,
    next_id: AtomicU64,
}

impl Connections {
    fn register(&self, peer: PeerId, muxer: SharedMuxer) -> (u64, Arc<Activity>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity { open: AtomicUsize::new(0), last_active: AtomicU64::new(clock_ms()) });
        self.lock().entry(peer).or_default().push(Slot { id, muxer, activity: activity.clone() });
        (id, activity)
    }

    fn unregister(&self, peer: &PeerId, id: u64) {
        let mut slots = self.lock();
        if let Some(list) = slots.get_mut(peer) {
            list.retain(|slot| slot.id != id);
            if list.is_empty() {
                slots.remove(peer);
            }
        }
    }

    /// Opens a raw substream on the newest connection to `peer`; `None` if there is none.
    pub fn open(&self, peer: &PeerId) -> Option<impl std::future::Future<Output = Result<RpcStream>>> {
        let (muxer, activity) = {
            let slots = self.lock();
            let slot = slots.get(peer)?.last()?;
            (slot.muxer.clone(), slot.activity.clone())
        };
        Some(async move {
            let inner = futures::future::poll_fn(|cx| lock(&muxer).poll_outbound_unpin(cx))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Network, "opening a stream", e))?;
            Ok(RpcStream { _active: Some(ActiveGuard::new(&activity)), ..RpcStream::plain(inner) })
        })
    }

    /// The streams on every live connection with `peer`.
    pub fn activity(&self, peer: &PeerId) -> PeerActivity {
        let slots = self.lock();
        let list = slots.get(peer).map(Vec::as_slice).unwrap_or_default();
        let last_active = list.iter().map(|slot| slot.activity.last_active.load(Ordering::Acquire)).max();
        PeerActivity {
            open: list.iter().any(|slot| slot.activity.open.load(Ordering::Acquire) > 0),
            last_active: clock_origin() + Duration::from_millis(last_active.unwrap_or_else(clock_ms)),
        }
    }

    /// Whether any connection with `peer` is live.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.lock().contains_key(peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Vec<Slot>>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The muxer of one connection; see the module doc.
pub(crate) struct RpcMuxer {
    inner: SharedMuxer,
    peer: PeerId,
    slot: u64,
    rpc: Arc<RpcShared>,
    activity: Arc<Activity>,
    driven: Arc<Driven>,
    replays: mpsc::UnboundedReceiver<RpcStream>,
}

impl RpcMuxer {
    /// Wraps the muxer of a fresh connection with `peer` and starts its driver task.
    pub fn new(inner: StreamMuxerBox, peer: PeerId, rpc: Arc<RpcShared>) -> Self {
        let inner = Arc::new(Mutex::new(inner));
        let (slot, activity) = rpc.connections.register(peer, inner.clone());
        let (replay_tx, replays) = mpsc::unbounded_channel();
        let driven = Arc::new(Driven::default());
        let driver = Driver {
            inner: inner.clone(),
            peer,
            rpc: rpc.clone(),
            activity: activity.clone(),
            replay_tx,
            driven: driven.clone(),
        };
        rpc.runtime.spawn(driver);
        RpcMuxer { inner, peer, slot, rpc, activity, driven, replays }
    }
}

impl Drop for RpcMuxer {
    fn drop(&mut self) {
        self.rpc.connections.unregister(&self.peer, self.slot);
        self.driven.released.store(true, Ordering::Release);
        self.driven.driver_task.wake();
    }
}

impl StreamMuxer for RpcMuxer {
    type Substream = RpcStream;
    type Error = io::Error;

    /// The peer's streams that the swarm negotiates (identify, ping, ...), from the driver task.
    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<RpcStream, io::Error>> {
        match self.replays.poll_recv(cx) {
            Poll::Ready(Some(stream)) => Poll::Ready(Ok(stream)),
            // The driver ended: `poll` reports why.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_outbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<RpcStream, io::Error>> {
        let stream = futures::ready!(lock(&self.inner).poll_outbound_unpin(cx))?;
        Poll::Ready(Ok(RpcStream {
            _active: Some(ActiveGuard::touch_on_drop(&self.activity)),
            ..RpcStream::plain(stream)
        }))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        lock(&self.inner).poll_close_unpin(cx)
    }

    /// The inner muxer's events and the error that ended it, from the driver task.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, io::Error>> {
        self.driven.connection_task.register(cx.waker());
        let mut outcome = self.driven.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(event) = outcome.events.pop_front() {
            return Poll::Ready(Ok(event));
        }
        match (outcome.error.take(), outcome.ended) {
            (Some(e), _) => Poll::Ready(Err(e)),
            (None, true) => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the connection ended"))),
            (None, false) => Poll::Pending,
        }
    }
}

/// What a connection's driver task and the swarm's side of the connection share.
#[derive(Default)]
struct Driven {
    outcome: Mutex<Outcome>,
    /// The swarm's connection task, woken for an event or the end.
    connection_task: AtomicWaker,
    /// Set when the swarm let go of the connection: the driver task ends.
    released: AtomicBool,
    driver_task: AtomicWaker,
}

/// The inner muxer's events for the swarm, and how it ended.
#[derive(Default)]
struct Outcome {
    events: VecDeque<StreamMuxerEvent>,
    error: Option<io::Error>,
    ended: bool,
}

impl Driven {
    fn report(&self, event: Option<StreamMuxerEvent>, error: Option<io::Error>) {
        {
            let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
            outcome.events.extend(event);
            if error.is_some() {
                outcome.error = error;
                outcome.ended = true;
            }
        }
        self.connection_task.wake();
    }
}

/// Drives one connection's muxer on a task of its own: it reads the socket, serves the streams
/// the peer opens for RPC and hands the others to the swarm. A call thus neither waits for nor
/// wakes the swarm's connection task, which polls every protocol handler of the connection.
struct Driver {
    inner: SharedMuxer,
    peer: PeerId,
    rpc: Arc<RpcShared>,
    activity: Arc<Activity>,
    replay_tx: mpsc::UnboundedSender<RpcStream>,
    driven: Arc<Driven>,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.driven.driver_task.register(cx.waker());
        if this.driven.released.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let inner = this.inner.clone();
        let mut muxer = lock(&inner);
        loop {
            let error = match muxer.poll_unpin(cx) {
                Poll::Ready(Ok(event)) => {
                    this.driven.report(Some(event), None);
                    continue;
                }
                Poll::Ready(Err(e)) => e,
                Poll::Pending => match muxer.poll_inbound_unpin(cx) {
                    Poll::Ready(Ok(stream)) => {
                        this.accept(stream);
                        continue;
                    }
                    Poll::Ready(Err(e)) => e,
                    Poll::Pending => return Poll::Pending,
                },
            };
            this.driven.report(None, Some(error));
            return Poll::Ready(());
        }
    }
}

impl Driver {
    /// Negotiates a stream the peer opened on a task of its own, and serves it or replays it to
    /// the swarm.
    fn accept(&self, stream: SubstreamBox) {
        let (rpc, peer, replay) = (self.rpc.clone(), self.peer, self.replay_tx.clone());
        let guard = ActiveGuard::new(&self.activity);
        self.rpc.runtime.spawn(async move {
            let listened = tokio::time::timeout(INBOUND_NEGOTIATION_TIMEOUT, listen(stream, &rpc)).await;
            match listened {
                Ok(Ok(Listened::Handler { name, stream })) if name == KAD_PROTOCOL => {
                    // Kad streams stay open between requests: they do not hold the connection.
                    let stream = RpcStream { _active: Some(guard.uncounted()), ..stream };
                    kad_responder::serve(peer, stream, rpc.commands()).await;
                }
                Ok(Ok(Listened::Handler { name, stream })) => {
                    let stream = RpcStream { _active: Some(guard), ..stream };
                    rpc.serve(peer, name, stream).await;
                }
                Ok(Ok(Listened::Swarm(stream))) => {
                    let _ = replay.send(RpcStream { _active: Some(guard.uncounted()), ..stream });
                }
                Ok(Err(e)) => tracing::debug!(%peer, "inbound stream negotiation failed: {e}"),
                Err(_) => tracing::debug!(%peer, "inbound stream negotiation timed out"),
            }
        });
    }
}

enum Listened {
    /// A registered handler name (or the kad protocol) was accepted; the stream holds any bytes
    /// read past the proposal.
    Handler { name: String, stream: RpcStream },
    /// Not ours: the swarm negotiates it from the replayed bytes.
    Swarm(RpcStream),
}

/// Our side of multistream-select as listener, up to the dialer's first proposal that is not a
/// slash-less unknown name.
async fn listen(mut inner: SubstreamBox, rpc: &RpcShared) -> Result<Listened> {
    let mut buf: Vec<u8> = Vec::with_capacity(64);
    let mut consumed = 0;
    let mut header_seen = false;
    let mut sent_header = false;
    let mut refusals = 0;
    loop {
        let Some((line, used)) = decode_message(&buf[consumed..])? else {
            if buf.len() - consumed > MAX_MESSAGE_LEN + 10 {
                return Err(Error::new(ErrorKind::Protocol, "oversized multistream message"));
            }
            let mut chunk = [0u8; 512];
            let n = inner.read(&mut chunk).await.map_err(|e| Error::with_source(ErrorKind::Network, "reading", e))?;
            if n == 0 {
                return Err(Error::new(ErrorKind::Network, "stream closed during negotiation"));
            }
            buf.extend_from_slice(&chunk[..n]);
            continue;
        };
        if !header_seen {
            if line != HEADER {
                return Err(Error::new(ErrorKind::Protocol, "stream does not start with the multistream header"));
            }
            header_seen = true;
            consumed += used;
            continue;
        }
        let start = consumed;
        consumed += used;
        let name = match std::str::from_utf8(line) {
            Ok(name) if name == KAD_PROTOCOL || (!name.starts_with('/') && name != "ls") => name.to_owned(),
            _ => {
                // Not a hivemind name: the swarm sees the header and everything from this proposal on.
                let mut prefix = Vec::with_capacity(HEADER_MESSAGE_LEN + buf.len() - start);
                encode_message(HEADER, &mut prefix);
                prefix.extend_from_slice(&buf[start..]);
                let skip_write = if sent_header { HEADER_MESSAGE_LEN } else { 0 };
                return Ok(Listened::Swarm(RpcStream { prefix, skip_write, ..RpcStream::plain(inner) }));
            }
        };
        let mut answer = Vec::with_capacity(HEADER_MESSAGE_LEN + name.len() + 2);
        if !sent_header {
            encode_message(HEADER, &mut answer);
            sent_header = true;
        }
        let accepted = name == KAD_PROTOCOL || rpc.has_handler(&name);
        encode_message(if accepted { name.as_bytes() } else { NOT_AVAILABLE }, &mut answer);
        if accepted && consumed < buf.len() {
            // A lazy dialer already sent its request: answer together with the first reply.
            let leftover = buf.split_off(consumed);
            let stream = RpcStream { prefix: leftover, answer, ..RpcStream::plain(inner) };
            return Ok(Listened::Handler { name, stream });
        }
        inner.write_all(&answer).await.map_err(|e| Error::with_source(ErrorKind::Network, "answering", e))?;
        inner.flush().await.map_err(|e| Error::with_source(ErrorKind::Network, "answering", e))?;
        if accepted {
            return Ok(Listened::Handler { name, stream: RpcStream::plain(inner) });
        }
        refusals += 1;
        if refusals >= MAX_REFUSALS {
            return Err(Error::new(ErrorKind::Protocol, "too many refused proposals"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::multistream::{dialer_proposal, encode_uvarint};
    use crate::p2p::rpc::Rpc;

    /// An in-memory substream: reads come from `input` (`chunk` bytes at most), writes are recorded.
    struct Scripted {
        input: Vec<u8>,
        read: usize,
        chunk: usize,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.input.len() - this.read).min(this.chunk);
            buf[..n].copy_from_slice(&this.input[this.read..this.read + n]);
            this.read += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.written.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Delivers one byte per read, to exercise partial messages.
    fn scripted(input: Vec<u8>) -> (SubstreamBox, Arc<Mutex<Vec<u8>>>) {
        scripted_in_chunks(input, 1)
    }

    fn scripted_in_chunks(input: Vec<u8>, chunk: usize) -> (SubstreamBox, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        (SubstreamBox::new(Scripted { input, read: 0, chunk, written: written.clone() }), written)
    }

    fn rpc_with_handler() -> (Arc<RpcShared>, mpsc::Sender<super::super::host::Command>) {
        let (commands, _) = mpsc::channel(1);
        let shared = Arc::new(RpcShared::new(tokio::runtime::Handle::current(), commands.downgrade()));
        Rpc::new(shared.clone()).add_unary_handler("Test.echo", |_, r| async move { Ok(r) }).unwrap();
        (shared, commands)
    }

    fn message(line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(line, &mut out);
        out
    }

    async fn read_all(mut stream: RpcStream) -> Vec<u8> {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_registered_name_is_accepted_and_keeps_the_bytes_after_it() {
        let (rpc, _keep) = rpc_with_handler();
        let mut input = dialer_proposal("Test.echo");
        input.extend_from_slice(b"payload");
        // The request arrives with the proposal, as a lazy dialer sends it.
        let (stream, written) = scripted_in_chunks(input, 512);
        let Ok(Listened::Handler { name, mut stream }) = listen(stream, &rpc).await else { panic!("not accepted") };
        assert_eq!(name, "Test.echo");
        assert!(written.lock().unwrap().is_empty(), "a lazy dialer's answer waits for the reply");
        assert_eq!(stream.take_answer(), dialer_proposal("Test.echo"), "header then echo");
        assert_eq!(read_all(stream).await, b"payload");
    }

    #[tokio::test]
    async fn a_dialer_waiting_for_the_answer_gets_it_at_once() {
        let (rpc, _keep) = rpc_with_handler();
        let (stream, written) = scripted(dialer_proposal("Test.echo"));
        let Ok(Listened::Handler { mut stream, .. }) = listen(stream, &rpc).await else { panic!("not accepted") };
        assert_eq!(*written.lock().unwrap(), dialer_proposal("Test.echo"));
        assert!(stream.take_answer().is_empty());
    }

    #[tokio::test]
    async fn unknown_names_get_na_and_slash_names_go_to_the_swarm_with_one_header() {
        let (rpc, _keep) = rpc_with_handler();
        let mut input = dialer_proposal("Test.missing");
        input.extend(message(b"/ipfs/ping/1.0.0"));
        input.extend_from_slice(b"rest");
        let (stream, written) = scripted(input);
        let Ok(Listened::Swarm(mut stream)) = listen(stream, &rpc).await else { panic!("not replayed") };
        let mut expected = message(HEADER);
        expected.extend(message(NOT_AVAILABLE));
        assert_eq!(*written.lock().unwrap(), expected);
        // The swarm's own header is swallowed; what it writes next goes through.
        stream.write_all(&message(HEADER)).await.unwrap();
        stream.write_all(&message(b"/ipfs/ping/1.0.0")).await.unwrap();
        expected.extend(message(b"/ipfs/ping/1.0.0"));
        assert_eq!(*written.lock().unwrap(), expected);
        // It reads a fresh header, the proposal and everything after.
        let mut replay = message(HEADER);
        replay.extend(message(b"/ipfs/ping/1.0.0"));
        replay.extend_from_slice(b"rest");
        assert_eq!(read_all(stream).await, replay);
    }

    #[tokio::test]
    async fn slash_names_are_replayed_untouched() {
        let (rpc, _keep) = rpc_with_handler();
        let mut input = dialer_proposal("/ipfs/id/1.0.0");
        input.extend_from_slice(b"lazy data");
        let (stream, written) = scripted(input.clone());
        let Ok(Listened::Swarm(stream)) = listen(stream, &rpc).await else { panic!("not replayed") };
        assert!(written.lock().unwrap().is_empty(), "nothing answered before the swarm");
        assert_eq!(read_all(stream).await, input);
    }

    #[tokio::test]
    async fn garbage_closed_and_endless_streams_are_errors() {
        let (rpc, _keep) = rpc_with_handler();
        let mut refusals = Vec::new();
        for i in 0..MAX_REFUSALS {
            refusals.extend(if i == 0 { dialer_proposal("A.x") } else { message(b"A.x") });
        }
        let mut oversized = message(HEADER);
        encode_uvarint(MAX_MESSAGE_LEN as u64 + 1, &mut oversized);
        oversized.extend(vec![b'a'; MAX_MESSAGE_LEN + 64]);
        for (what, input) in [
            ("not multistream", b"GET / HTTP/1.1\r\n".to_vec()),
            ("closed early", message(HEADER)),
            ("oversized message", oversized),
            ("endless refusals", refusals),
        ] {
            let (stream, _) = scripted(input);
            assert!(listen(stream, &rpc).await.is_err(), "{what}");
        }
    }
}
