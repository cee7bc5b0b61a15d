//! A stream muxer wrapper that gives hivemind's slash-less protocol names to our RPC layer.
//!
//! rust-libp2p's multistream-select refuses protocol names without a leading `/`, and hivemind
//! names its handlers `DHTProtocol.rpc_ping` and the like. Rather than patching it, every yamux
//! connection is wrapped in [`RpcMuxer`]:
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
//! Streams handed to the RPC layer count as open in [`Connections`], which the keep-alive
//! behaviour reads so that the swarm never closes a connection in the middle of a call, and
//! counts its idle time from the end of the last call.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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

/// The RPC streams of one connection: how many are open, and how often one opened or closed.
struct Activity {
    open: AtomicUsize,
    changes: AtomicU64,
    /// The connection task's waker: the keep-alive handler only sees a stream close when it is
    /// polled.
    connection_task: Arc<AtomicWaker>,
}

/// Counts one RPC stream as open on its connection while it lives.
struct ActiveGuard(Arc<Activity>);

impl ActiveGuard {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.changes.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(activity.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changes.fetch_add(1, Ordering::Relaxed);
        self.0.connection_task.wake();
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

/// What the RPC layer did on a peer's connections, as [`Connections::activity`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerActivity {
    /// Whether any RPC stream with the peer is open.
    pub open: bool,
    /// How many times one opened or closed, summed over the peer's live connections.
    pub changes: u64,
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
        let activity = Arc::new(Activity {
            open: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
            connection_task: Arc::default(),
        });
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

    /// The RPC streams on every live connection with `peer`.
    pub fn activity(&self, peer: &PeerId) -> PeerActivity {
        let slots = self.lock();
        let list = slots.get(peer).map(Vec::as_slice).unwrap_or_default();
        PeerActivity {
            open: list.iter().any(|slot| slot.activity.open.load(Ordering::Relaxed) > 0),
            changes: list.iter().map(|slot| slot.activity.changes.load(Ordering::Relaxed)).sum(),
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
    replay_tx: mpsc::UnboundedSender<RpcStream>,
    replays: mpsc::UnboundedReceiver<RpcStream>,
}

impl RpcMuxer {
    /// Wraps the muxer of a fresh connection with `peer`.
    pub fn new(inner: StreamMuxerBox, peer: PeerId, rpc: Arc<RpcShared>) -> Self {
        let inner = Arc::new(Mutex::new(inner));
        let (slot, activity) = rpc.connections.register(peer, inner.clone());
        let (replay_tx, replays) = mpsc::unbounded_channel();
        RpcMuxer { inner, peer, slot, rpc, activity, replay_tx, replays }
    }
}

impl Drop for RpcMuxer {
    fn drop(&mut self) {
        self.rpc.connections.unregister(&self.peer, self.slot);
    }
}

impl StreamMuxer for RpcMuxer {
    type Substream = RpcStream;
    type Error = io::Error;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<RpcStream, io::Error>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(Some(stream)) = this.replays.poll_recv(cx) {
                return Poll::Ready(Ok(stream));
            }
            let stream = match lock(&this.inner).poll_inbound_unpin(cx) {
                Poll::Ready(Ok(stream)) => stream,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let (rpc, peer, replay) = (this.rpc.clone(), this.peer, this.replay_tx.clone());
            let guard = ActiveGuard::new(&this.activity);
            this.rpc.runtime.spawn(async move {
                let listened = tokio::time::timeout(INBOUND_NEGOTIATION_TIMEOUT, listen(stream, &rpc)).await;
                match listened {
                    Ok(Ok(Listened::Handler { name, stream })) if name == KAD_PROTOCOL => {
                        // Kad streams stay open between requests: they do not hold the connection.
                        drop(guard);
                        kad_responder::serve(peer, stream, rpc.commands()).await;
                    }
                    Ok(Ok(Listened::Handler { name, stream })) => {
                        let stream = RpcStream { _active: Some(guard), ..stream };
                        rpc.serve(peer, name, stream).await;
                    }
                    Ok(Ok(Listened::Swarm(stream))) => {
                        drop(guard);
                        let _ = replay.send(stream);
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "inbound stream negotiation failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "inbound stream negotiation timed out"),
                }
            });
        }
    }

    fn poll_outbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<RpcStream, io::Error>> {
        lock(&self.inner).poll_outbound_unpin(cx).map_ok(RpcStream::plain)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        lock(&self.inner).poll_close_unpin(cx)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, io::Error>> {
        self.activity.connection_task.register(cx.waker());
        lock(&self.inner).poll_unpin(cx)
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
