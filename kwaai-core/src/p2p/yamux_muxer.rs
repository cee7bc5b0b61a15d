//! yamux (`/yamux/1.0.0`, the spec go-yamux and p2pd speak), written for RPC traffic.
//!
//! Every stream writes its frames straight into the connection's output buffer, and whichever
//! task flushes (a stream's `poll_flush` or `poll_close`, or the connection task) encrypts and
//! sends them: a call's request leaves from the caller's own task, with no hand-off to the
//! connection task, and a reply and its FIN leave in one write. Only the connection task reads
//! the socket ([`StreamMuxer::poll`] and [`StreamMuxer::poll_inbound`]); it hands each frame's
//! payload to its stream's buffer and wakes that stream's reader.
//!
//! Frames that only keep the books wait for a write that carries data, so that a unary call costs
//! each end one packet: an inbound stream's ACK goes out with its owner's first flush (or when the
//! owner waits to read, or at once when the peer has sent half the spec's window), and a FIN sent
//! after the peer closed its side, with the connection's next write.
//!
//! Windows: each stream grants its peer [`LARGE_WINDOW`] bytes at once (the spec's 256 KiB plus a
//! window update sent with the stream's SYN or ACK), so a 1 MiB message never waits for an update,
//! and tops the window up whenever half of it was read. Only the first [`LARGE_WINDOW_STREAMS`]
//! streams open at a time get that; the others keep the spec's window, which bounds what a peer can
//! make a connection buffer (about 160 MiB at [`MAX_STREAMS`] streams). Outgoing data frames just
//! fill one Noise message.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::iter;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures::future;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// Bytes of a frame header: version, type, flags (u16), stream ID (u32), length (u32), big-endian.
const HEADER_LEN: usize = 12;
const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_PING: u8 = 2;
const TYPE_GO_AWAY: u8 = 3;
const SYN: u16 = 1;
const ACK: u16 = 2;
const FIN: u16 = 4;
const RST: u16 = 8;
/// The window every stream starts with in both directions (the spec's).
const DEFAULT_WINDOW: u32 = 256 * 1024;
/// The receive window we grant a stream when few are open.
const LARGE_WINDOW: u32 = 2 << 20;
/// How many streams at a time get [`LARGE_WINDOW`].
const LARGE_WINDOW_STREAMS: usize = 16;
/// Largest data frame payload we send: a frame that starts a Noise message fills it.
const MAX_DATA_FRAME: usize = super::noise::MAX_PLAINTEXT - HEADER_LEN;
/// Open streams per connection, both directions; an inbound stream beyond them is reset.
const MAX_STREAMS: usize = 512;
/// Inbound streams held while the swarm has not taken them yet; more are reset.
const MAX_BUFFERED_INBOUND: usize = 256;
/// The largest receive buffer a connection keeps for its next stream.
const MAX_SPARE_RECV: usize = 1 << 20;
/// Unsent bytes a writer may queue before it waits for the socket.
const MAX_QUEUED: usize = 128 << 10;
/// Unsent bytes after which a peer that sends but does not read (pings, say) loses the connection.
const MAX_UNSENT: usize = 4 << 20;
/// Socket reads per poll of the connection task before it lets other tasks run.
const READS_PER_POLL: usize = 16;
/// Size of the connection's read buffer.
const READ_BUFFER: usize = 256 * 1024;
/// Unread bytes in a stream's buffer after which the connection task lets its reader run before
/// reading on (a reader woken on the same worker runs only once the connection task yields).
const RECV_BACKLOG: usize = 256 * 1024;

/// The yamux upgrade for our transport.
#[derive(Debug, Clone)]
pub(crate) struct YamuxUpgrade;

impl UpgradeInfo for YamuxUpgrade {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for YamuxUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = YamuxMuxer<C>;
    type Error = io::Error;
    type Future = future::Ready<io::Result<Self::Output>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(YamuxMuxer::new(io, false)))
    }
}

impl<C> OutboundConnectionUpgrade<C> for YamuxUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = YamuxMuxer<C>;
    type Error = io::Error;
    type Future = future::Ready<io::Result<Self::Output>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(YamuxMuxer::new(io, true)))
    }
}

/// One yamux connection as a [`StreamMuxer`].
pub(crate) struct YamuxMuxer<C> {
    shared: Arc<Mutex<Inner<C>>>,
    /// Bytes read from the socket and not yet parsed: `read_buf[start..end]`.
    read_buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The payload of the data frame being read: its stream, the bytes still to come and the
    /// frame's FIN or RST, which take effect after the payload.
    body: Option<(u32, usize, u16)>,
    /// The wakers of [`Inner::woken`], while they are woken (kept for its allocation).
    woken: Vec<Waker>,
    /// A stream's unread bytes passed [`RECV_BACKLOG`] in the last read.
    backlog: bool,
}

/// The waker every socket write is polled with: when the socket can take more it wakes the
/// connection task and every stream waiting to flush, so that no queued byte depends on one
/// task coming back.
#[derive(Default)]
struct FlushWaker {
    waiting: Mutex<Vec<Waker>>,
}

impl FlushWaker {
    fn wait(&self, waker: &Waker) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.iter().any(|w| w.will_wake(waker)) {
            waiting.push(waker.clone());
        }
    }
}

impl Wake for FlushWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in waiting {
            waker.wake();
        }
    }
}

struct Inner<C> {
    socket: C,
    /// Encoded frames not yet handed to the socket: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes handed to the socket since its last completed flush.
    unflushed: bool,
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    /// Inbound streams the swarm has not taken yet, and who waits for one.
    inbound: VecDeque<u32>,
    inbound_waker: Option<Waker>,
    /// The connection task, woken when a stream needs it (an inbound stream, a flush to finish).
    driver: Option<Waker>,
    /// Why the connection is unusable, once it is.
    failed: Option<(io::ErrorKind, String)>,
    /// The peer sent GoAway: no new streams.
    go_away: bool,
    /// The waker every socket write is polled with.
    flush_waker: Arc<FlushWaker>,
    /// Tasks to wake once the connection task lets go of the lock (so that they do not wait for it).
    woken: Vec<Waker>,
    /// The receive buffer of a stream that ended, for the next stream to start warm: a fresh one
    /// grows by reallocating into memory the system has yet to fault in.
    spare_recv: Option<Vec<u8>>,
}

#[derive(Default)]
struct StreamState {
    recv: BytesMut,
    /// The window we grant: what the peer may have sent and we have not read.
    window: u32,
    /// Bytes the peer may still send before our next window update.
    recv_window: u32,
    /// Bytes read by the stream's owner and not granted back yet.
    consumed: u32,
    send_window: u32,
    remote_closed: bool,
    local_closed: bool,
    /// An inbound stream whose ACK waits for its owner's first read, write or close.
    ack_due: bool,
    /// The owner wrote since its last completed flush.
    dirty: bool,
    reset: bool,
    /// The owner dropped its handle after closing its side.
    dropped: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl StreamState {
    fn new(window: u32) -> Self {
        StreamState { window, recv_window: window, send_window: DEFAULT_WINDOW, ..StreamState::default() }
    }

    fn wake(&mut self) {
        for w in self.reader.take().into_iter().chain(self.writer.take()) {
            w.wake();
        }
    }

    /// Moves the stream's waiting reader and writer to `woken`, to be woken later.
    fn defer_wake(&mut self, woken: &mut Vec<Waker>) {
        woken.extend(self.reader.take().into_iter().chain(self.writer.take()));
    }
}

fn lock<C>(shared: &Mutex<Inner<C>>) -> MutexGuard<'_, Inner<C>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn protocol_error(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("yamux: {}", message.into()))
}

impl<C> Inner<C> {
    fn push_frame(&mut self, kind: u8, flags: u16, id: u32, length: u32) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.push(0);
        self.out.push(kind);
        self.out.extend_from_slice(&flags.to_be_bytes());
        self.out.extend_from_slice(&id.to_be_bytes());
        self.out.extend_from_slice(&length.to_be_bytes());
    }

    /// Adds stream `id` with the window it gets, reusing a spare receive buffer.
    fn add_stream(&mut self, id: u32, ack_due: bool) -> u32 {
        let window = self.grant();
        // (Through `Bytes`, which takes over the `Vec`'s memory: `BytesMut` has no such `From`.)
        let recv = self.spare_recv.take().map(|spare| BytesMut::from(Bytes::from(spare))).unwrap_or_default();
        self.streams.insert(id, StreamState { recv, ack_due, ..StreamState::new(window) });
        window
    }

    /// Forgets stream `id`, keeping its receive buffer as the spare if that is the larger.
    fn remove_stream(&mut self, id: u32) -> Option<StreamState> {
        let mut stream = self.streams.remove(&id)?;
        // Emptied first (so nothing unread is moved), then as a `Vec`, whose capacity counts the
        // bytes already read too.
        stream.recv.clear();
        let recv = Vec::from(std::mem::take(&mut stream.recv));
        let spare = self.spare_recv.as_ref().map_or(0, Vec::capacity);
        if recv.capacity() > spare && recv.capacity() <= MAX_SPARE_RECV {
            self.spare_recv = Some(recv);
        }
        Some(stream)
    }

    /// The window to grant a new stream.
    fn grant(&self) -> u32 {
        if self.streams.len() < LARGE_WINDOW_STREAMS {
            LARGE_WINDOW
        } else {
            DEFAULT_WINDOW
        }
    }

    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, why)) => Err(io::Error::new(*kind, why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the connection failed and wakes everyone waiting on it.
    fn fail(&mut self, kind: io::ErrorKind, why: String) {
        if self.failed.is_none() {
            tracing::debug!("yamux connection ends: {why}");
            self.failed = Some((kind, why));
        }
        for stream in self.streams.values_mut() {
            stream.wake();
        }
        if let Some(w) = self.driver.take() {
            w.wake();
        }
        if let Some(w) = self.inbound_waker.take() {
            w.wake();
        }
        Wake::wake_by_ref(&self.flush_waker);
    }

    /// Queues stream `id`'s ACK (with the rest of our window grant) if it is due: it goes out with
    /// the stream's first flush (a handler's reply, say) rather than in a packet of its own, and
    /// at the latest when the owner waits for more to read.
    fn acknowledge(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if std::mem::take(&mut stream.ack_due) {
            let grant = stream.window - DEFAULT_WINDOW;
            self.push_frame(TYPE_WINDOW_UPDATE, ACK, id, grant);
        }
    }

    /// Resets stream `id` towards the peer and forgets it.
    fn reset(&mut self, id: u32) {
        self.push_frame(TYPE_WINDOW_UPDATE, RST, id, 0);
        if let Some(mut stream) = self.remove_stream(id) {
            stream.defer_wake(&mut self.woken);
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> Inner<C> {
    /// Hands every queued frame to the socket and flushes it. `Pending` leaves the socket
    /// registered with the connection's [`FlushWaker`].
    fn poll_flush_out(&mut self) -> Poll<io::Result<()>> {
        self.check()?;
        let waker = Waker::from(self.flush_waker.clone());
        let mut cx = Context::from_waker(&waker);
        while self.out_pos < self.out.len() {
            match Pin::new(&mut self.socket).poll_write(&mut cx, &self.out[self.out_pos..]) {
                Poll::Ready(Ok(0)) => {
                    self.fail(io::ErrorKind::WriteZero, "yamux: the connection takes no more bytes".into());
                    return Poll::Ready(self.check());
                }
                Poll::Ready(Ok(n)) => {
                    self.out_pos += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => {
                    self.fail(e.kind(), format!("yamux: writing: {e}"));
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.unflushed {
            match Pin::new(&mut self.socket).poll_flush(&mut cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => {
                    self.fail(e.kind(), format!("yamux: flushing: {e}"));
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// [`Inner::poll_flush_out`] for a task that waits: `Pending` means `waker` is woken when the
    /// socket takes more.
    fn poll_flush_for(&mut self, waker: &Waker) -> Poll<io::Result<()>> {
        if let Poll::Ready(result) = self.poll_flush_out() {
            return Poll::Ready(result);
        }
        // Listed only now that the socket is full (a list that only grows would hold every task
        // that ever flushed), then the socket is asked again: room made in between is not missed.
        self.flush_waker.wait(waker);
        self.poll_flush_out()
    }

    /// Flushes for a caller that does not wait: whatever cannot go now goes when the connection
    /// task is woken.
    fn flush_soon(&mut self) {
        if self.queued() > 0 || self.unflushed {
            match self.driver.clone() {
                Some(driver) => _ = self.poll_flush_for(&driver),
                None => _ = self.poll_flush_out(),
            }
        }
    }
}

impl<C> YamuxMuxer<C> {
    fn new(socket: C, dialer: bool) -> Self {
        let inner = Inner {
            socket,
            out: Vec::new(),
            out_pos: 0,
            unflushed: false,
            streams: HashMap::new(),
            next_id: if dialer { 1 } else { 2 },
            inbound: VecDeque::new(),
            inbound_waker: None,
            driver: None,
            failed: None,
            go_away: false,
            flush_waker: Arc::default(),
            woken: Vec::new(),
            spare_recv: None,
        };
        YamuxMuxer {
            shared: Arc::new(Mutex::new(inner)),
            read_buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            body: None,
            woken: Vec::new(),
            backlog: false,
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> YamuxMuxer<C> {
    /// Reads and handles frames until the socket has no more for now.
    fn drive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let shared = self.shared.clone();
        {
            let mut inner = lock(&shared);
            inner.check()?;
            if !inner.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                inner.driver = Some(cx.waker().clone());
            }
        }
        // The lock is held for one read and the frames it completes. The streams that got bytes
        // are woken once it is let go, so they take them without waiting for the lock, and can do
        // so while the next message is read and decrypted.
        for reads in 0.. {
            let mut inner = lock(&shared);
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                inner.flush_soon();
                return Ok(());
            }
            if self.start > 0 {
                self.read_buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match Pin::new(&mut inner.socket).poll_read(cx, &mut self.read_buf[self.end..]) {
                Poll::Ready(Ok(0)) => {
                    inner.fail(io::ErrorKind::ConnectionReset, "connection lost".into());
                    return inner.check();
                }
                Poll::Ready(Ok(n)) => self.end += n,
                Poll::Ready(Err(e)) => {
                    inner.fail(e.kind(), format!("connection lost: {e}"));
                    return Err(e);
                }
                Poll::Pending => {
                    inner.flush_soon();
                    return Ok(());
                }
            }
            if let Err(e) = self.handle_frames(&mut inner) {
                inner.fail(e.kind(), e.to_string());
                return Err(e);
            }
            if inner.queued() > MAX_UNSENT {
                let e = protocol_error(format!("the peer left {} bytes of ours unread", inner.queued()));
                inner.fail(e.kind(), e.to_string());
                return Err(e);
            }
            std::mem::swap(&mut self.woken, &mut inner.woken);
            drop(inner);
            for waker in self.woken.drain(..) {
                // Not this task: it takes what it was woken for (a new stream) once this returns.
                if !waker.will_wake(cx.waker()) {
                    waker.wake();
                }
            }
            if std::mem::take(&mut self.backlog) {
                cx.waker().wake_by_ref();
                lock(&shared).flush_soon();
                return Ok(());
            }
        }
        Ok(())
    }

    /// Handles every whole frame header (and as much payload as has come) in the read buffer.
    fn handle_frames(&mut self, inner: &mut Inner<C>) -> io::Result<()> {
        loop {
            if let Some((id, remaining, end)) = self.body {
                let n = remaining.min(self.end - self.start);
                if n == 0 {
                    return Ok(());
                }
                let bytes = &self.read_buf[self.start..self.start + n];
                if let Some(stream) = inner.streams.get_mut(&id) {
                    if stream.dropped {
                        inner.reset(id);
                    } else if !stream.reset {
                        stream.recv.extend_from_slice(bytes);
                        self.backlog |= stream.recv.len() >= RECV_BACKLOG;
                        inner.woken.extend(stream.reader.take());
                    }
                }
                self.start += n;
                if remaining > n {
                    self.body = Some((id, remaining - n, end));
                } else {
                    self.body = None;
                    if end != 0 {
                        self.on_end(inner, id, end & RST != 0);
                    }
                }
                continue;
            }
            if self.end - self.start < HEADER_LEN {
                return Ok(());
            }
            let h = &self.read_buf[self.start..self.start + HEADER_LEN];
            let (version, kind) = (h[0], h[1]);
            let flags = u16::from_be_bytes([h[2], h[3]]);
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            self.start += HEADER_LEN;
            if version != 0 {
                return Err(protocol_error(format!("unknown version {version}")));
            }
            match kind {
                TYPE_DATA | TYPE_WINDOW_UPDATE => {
                    let data = kind == TYPE_DATA;
                    self.on_stream_frame(inner, flags, id, if data { 0 } else { length })?;
                    if data && length > 0 {
                        if let Some(stream) = inner.streams.get_mut(&id) {
                            if length > stream.recv_window {
                                return Err(protocol_error(format!(
                                    "{length} bytes on stream {id} exceed its window of {}",
                                    stream.recv_window
                                )));
                            }
                            stream.recv_window -= length;
                            if stream.ack_due && stream.window - stream.recv_window >= DEFAULT_WINDOW / 2 {
                                // The peer is using up the spec's window: it needs our grant now.
                                inner.acknowledge(id);
                            }
                        } else if length > LARGE_WINDOW {
                            return Err(protocol_error(format!("a data frame of {length} bytes")));
                        }
                        self.body = Some((id, length as usize, flags & (FIN | RST)));
                    } else if flags & (FIN | RST) != 0 {
                        self.on_end(inner, id, flags & RST != 0);
                    }
                }
                TYPE_PING => {
                    if flags & SYN != 0 {
                        inner.push_frame(TYPE_PING, ACK, 0, length);
                    }
                }
                TYPE_GO_AWAY => inner.go_away = true,
                other => return Err(protocol_error(format!("unknown frame type {other}"))),
            }
        }
    }

    /// A data or window update frame's flags and window `delta`, before its payload.
    fn on_stream_frame(&self, inner: &mut Inner<C>, flags: u16, id: u32, delta: u32) -> io::Result<()> {
        if flags & SYN != 0 {
            if inner.streams.contains_key(&id) {
                return Err(protocol_error(format!("stream {id} opened twice")));
            }
            if id == 0 || (id % 2 == 1) == (inner.next_id % 2 == 1) {
                return Err(protocol_error(format!("the peer opened stream {id}, an ID of ours")));
            }
            if inner.streams.len() >= MAX_STREAMS || inner.inbound.len() >= MAX_BUFFERED_INBOUND {
                tracing::warn!("resetting inbound yamux stream {id}: too many streams");
                inner.push_frame(TYPE_WINDOW_UPDATE, RST, id, 0);
                return Ok(());
            }
            inner.add_stream(id, true);
            inner.inbound.push_back(id);
            inner.woken.extend(inner.inbound_waker.take());
        }
        if delta > 0 {
            if let Some(stream) = inner.streams.get_mut(&id) {
                stream.send_window = stream
                    .send_window
                    .checked_add(delta)
                    .ok_or_else(|| protocol_error(format!("stream {id}'s window overflows")))?;
                inner.woken.extend(stream.writer.take());
            }
        }
        Ok(())
    }

    /// The peer closed (FIN) or reset (RST) its side of stream `id`.
    fn on_end(&self, inner: &mut Inner<C>, id: u32, reset: bool) {
        let Some(stream) = inner.streams.get_mut(&id) else { return };
        if reset {
            stream.reset = true;
        } else {
            stream.remote_closed = true;
        }
        stream.defer_wake(&mut inner.woken);
        if stream.dropped && (reset || stream.local_closed) {
            inner.remove_stream(id);
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> StreamMuxer for YamuxMuxer<C> {
    type Substream = YamuxStream<C>;
    type Error = io::Error;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<YamuxStream<C>>> {
        let this = self.get_mut();
        this.drive(cx)?;
        let mut inner = lock(&this.shared);
        match inner.inbound.pop_front() {
            Some(id) => Poll::Ready(Ok(YamuxStream { id, shared: this.shared.clone() })),
            None => {
                inner.inbound_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn poll_outbound(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<YamuxStream<C>>> {
        let this = self.get_mut();
        let mut inner = lock(&this.shared);
        inner.check()?;
        if inner.go_away {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer is closing the connection",
            )));
        }
        if inner.streams.len() >= MAX_STREAMS {
            return Poll::Ready(Err(io::Error::other(format!("{MAX_STREAMS} yamux streams are open already"))));
        }
        let id = inner.next_id;
        inner.next_id = id.checked_add(2).ok_or_else(|| io::Error::other("yamux stream IDs are used up"))?;
        let window = inner.add_stream(id, false);
        // The SYN goes out with the stream's first flush.
        inner.push_frame(TYPE_WINDOW_UPDATE, SYN, id, window - DEFAULT_WINDOW);
        Poll::Ready(Ok(YamuxStream { id, shared: this.shared.clone() }))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = lock(&this.shared);
        if inner.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        if !inner.go_away {
            inner.go_away = true;
            inner.push_frame(TYPE_GO_AWAY, 0, 0, 0);
        }
        futures::ready!(inner.poll_flush_out())?;
        let waker = Waker::from(inner.flush_waker.clone());
        futures::ready!(Pin::new(&mut inner.socket).poll_close(&mut Context::from_waker(&waker)))?;
        inner.fail(io::ErrorKind::NotConnected, "the connection is closed".into());
        Poll::Ready(Ok(()))
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<StreamMuxerEvent>> {
        let this = self.get_mut();
        this.drive(cx)?;
        Poll::Pending
    }
}

/// One yamux stream.
pub(crate) struct YamuxStream<C> {
    id: u32,
    shared: Arc<Mutex<Inner<C>>>,
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for YamuxStream<C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut inner = lock(&this.shared);
        let failed = inner.check();
        inner.acknowledge(this.id);
        let Some(stream) = inner.streams.get_mut(&this.id) else {
            failed?;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset")));
        };
        if !stream.recv.is_empty() {
            let n = buf.len().min(stream.recv.len());
            buf[..n].copy_from_slice(&stream.recv[..n]);
            stream.recv.advance(n);
            stream.consumed += n as u32;
            if stream.consumed >= stream.window / 2 && !stream.remote_closed && !stream.reset {
                let delta = std::mem::take(&mut stream.consumed);
                stream.recv_window += delta;
                inner.push_frame(TYPE_WINDOW_UPDATE, 0, this.id, delta);
                inner.flush_soon();
            }
            return Poll::Ready(Ok(n));
        }
        if stream.reset {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset by the peer")));
        }
        if stream.remote_closed {
            return Poll::Ready(Ok(0));
        }
        failed?;
        stream.reader = Some(cx.waker().clone());
        // Whatever is queued (this stream's ACK, say) goes out before the owner waits.
        inner.flush_soon();
        Poll::Pending
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncWrite for YamuxStream<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut inner = lock(&this.shared);
        inner.check()?;
        if inner.queued() >= MAX_QUEUED && inner.poll_flush_for(cx.waker())?.is_pending() {
            return Poll::Pending;
        }
        inner.acknowledge(this.id);
        let Some(stream) = inner.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset")));
        };
        if stream.reset {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset by the peer")));
        }
        if stream.local_closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed for writing")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if stream.send_window == 0 {
            stream.writer = Some(cx.waker().clone());
            // The peer grants more only for data it got: send what is queued.
            inner.flush_soon();
            return Poll::Pending;
        }
        let n = buf.len().min(stream.send_window as usize).min(MAX_DATA_FRAME);
        stream.send_window -= n as u32;
        stream.dirty = true;
        inner.push_frame(TYPE_DATA, 0, this.id, n as u32);
        inner.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = lock(&this.shared);
        if inner.queued() > 0 || inner.unflushed {
            futures::ready!(inner.poll_flush_for(cx.waker()))?;
        }
        inner.check()?;
        if let Some(stream) = inner.streams.get_mut(&this.id) {
            stream.dirty = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Closes our side. When the peer closed its side already and everything this stream wrote
    /// has been flushed, the FIN only lets the peer forget the stream: it is queued, to leave with
    /// the connection's next write (the next call's request, say), instead of costing both ends a
    /// packet of its own.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        {
            let mut inner = lock(&this.shared);
            inner.check()?;
            inner.acknowledge(this.id);
            let Some(stream) = inner.streams.get_mut(&this.id) else { return Poll::Ready(Ok(())) };
            let finished = stream.remote_closed && !stream.dirty;
            if !stream.local_closed && !stream.reset {
                stream.local_closed = true;
                inner.push_frame(TYPE_WINDOW_UPDATE, FIN, this.id, 0);
            }
            if finished {
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(this).poll_flush(cx)
    }
}

impl<C> Drop for YamuxStream<C> {
    fn drop(&mut self) {
        let mut inner = lock(&self.shared);
        let Some(stream) = inner.streams.get_mut(&self.id) else { return };
        if stream.reset || (stream.local_closed && stream.remote_closed) {
            inner.remove_stream(self.id);
        } else if !stream.local_closed {
            // Abandoned mid-way: tell the peer (a hivemind call is cancelled this way).
            inner.reset(self.id);
            if let Some(driver) = &inner.driver {
                driver.wake_by_ref();
            }
        } else {
            stream.dropped = true;
        }
    }
}

/// A socket whose peer sent `input` (then nothing more, without closing) and whose writes are
/// kept in `output`: for the fuzz target and the tests.
struct MemorySocket {
    input: Vec<u8>,
    read: usize,
    /// Bytes each read returns at most.
    chunk: usize,
    output: Arc<Mutex<Vec<u8>>>,
    /// Writes wait (forever) while this is set: a peer that does not read.
    stalled: bool,
}

impl AsyncRead for MemorySocket {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = buf.len().min(this.chunk).min(this.input.len() - this.read);
        if n == 0 {
            return Poll::Pending;
        }
        buf[..n].copy_from_slice(&this.input[this.read..this.read + n]);
        this.read += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for MemorySocket {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.stalled {
            return Poll::Pending;
        }
        self.output.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Feeds `input` to a listener's connection as what its peer sent, `chunk` bytes per socket
/// read, and uses every stream the peer opens: reads it, echoes a little, closes or drops it.
/// Returns the bytes the connection sent back, or the error that ended it. For the fuzz target.
#[doc(hidden)]
pub fn serve_peer_bytes(input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
    let output = Arc::new(Mutex::new(Vec::new()));
    let socket =
        MemorySocket { input: input.to_vec(), read: 0, chunk: chunk.max(1), output: output.clone(), stalled: false };
    let mut muxer = YamuxMuxer::new(socket, false);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut streams = Vec::new();
    let mut buf = [0u8; 4096];
    let mut result = Ok(());
    for round in 0..input.len() / 12 + 2 {
        if let Poll::Ready(Err(e)) = Pin::new(&mut muxer).poll(&mut cx) {
            result = Err(e);
            break;
        }
        while let Poll::Ready(polled) = Pin::new(&mut muxer).poll_inbound(&mut cx) {
            match polled {
                Ok(stream) => streams.push(stream),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            break;
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            let mut stream = Pin::new(stream);
            while let Poll::Ready(Ok(n @ 1..)) = stream.as_mut().poll_read(&mut cx, &mut buf) {
                let _ = stream.as_mut().poll_write(&mut cx, &buf[..n.min(16)]);
            }
            if (i + round) % 3 == 0 {
                let _ = stream.as_mut().poll_close(&mut cx);
            }
        }
        if round % 2 == 1 && !streams.is_empty() {
            streams.remove(0);
        }
    }
    drop(streams);
    let sent = std::mem::take(&mut *output.lock().unwrap_or_else(|p| p.into_inner()));
    result.map(|()| sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u16, id: u32, length: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0, kind];
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn data(flags: u16, id: u32, payload: &[u8]) -> Vec<u8> {
        frame(TYPE_DATA, flags, id, payload.len() as u32, payload)
    }

    /// The peer opening `n` streams (1, 3, 5, ...) with empty data frames.
    fn opened(n: usize) -> Vec<u8> {
        (0..n as u32).flat_map(|i| data(SYN, 2 * i + 1, b"")).collect()
    }

    /// The frames in `bytes`, as (type, flags, stream, length, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u16, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (kind, flags) = (bytes[1], u16::from_be_bytes([bytes[2], bytes[3]]));
            let id = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
            let length = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
            let body = if kind == TYPE_DATA { length as usize } else { 0 };
            out.push((kind, flags, id, length, bytes[12..12 + body].to_vec()));
            bytes = &bytes[12 + body..];
        }
        out
    }

    struct Harness {
        muxer: YamuxMuxer<MemorySocket>,
        output: Arc<Mutex<Vec<u8>>>,
    }

    impl Harness {
        fn new(input: Vec<u8>, dialer: bool) -> Self {
            let output = Arc::new(Mutex::new(Vec::new()));
            let socket = MemorySocket { input, read: 0, chunk: 7, output: output.clone(), stalled: false };
            Harness { muxer: YamuxMuxer::new(socket, dialer), output }
        }

        /// Polls the connection until it has read all the peer's bytes (or failed).
        fn poll(&mut self) -> io::Result<()> {
            loop {
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.muxer).poll(&mut noop()) {
                    return Err(e);
                }
                let inner = lock(&self.muxer.shared);
                if inner.socket.read == inner.socket.input.len() {
                    return Ok(());
                }
            }
        }

        fn inbound(&mut self) -> Option<YamuxStream<MemorySocket>> {
            match Pin::new(&mut self.muxer).poll_inbound(&mut noop()) {
                Poll::Ready(stream) => Some(stream.unwrap()),
                Poll::Pending => None,
            }
        }

        fn sent(&self) -> Vec<(u8, u16, u32, u32, Vec<u8>)> {
            frames(&std::mem::take(&mut *self.output.lock().unwrap()))
        }

        /// Makes the peer's next bytes `more`.
        fn feed(&mut self, more: &[u8]) {
            lock(&self.muxer.shared).socket.input.extend_from_slice(more);
        }
    }

    fn noop() -> Context<'static> {
        Context::from_waker(futures::task::noop_waker_ref())
    }

    fn read(stream: &mut YamuxStream<MemorySocket>) -> Poll<io::Result<Vec<u8>>> {
        let mut buf = [0u8; 1 << 16];
        Pin::new(stream).poll_read(&mut noop(), &mut buf).map_ok(|n| buf[..n].to_vec())
    }

    /// Everything readable now, up to the peer's FIN (or until a read would wait or fails).
    fn read_all(stream: &mut YamuxStream<MemorySocket>) -> Vec<u8> {
        let mut got = Vec::new();
        while let Poll::Ready(Ok(bytes)) = read(stream) {
            if bytes.is_empty() {
                break;
            }
            got.extend(bytes);
        }
        got
    }

    #[test]
    fn an_inbound_stream_reads_to_its_fin_and_is_acknowledged_with_the_reply() {
        let mut input = data(SYN, 1, b"hello");
        input.extend(data(FIN, 1, b" world"));
        let mut h = Harness::new(input, false);
        h.poll().unwrap();
        let mut stream = h.inbound().expect("the peer's stream");
        assert!(h.sent().is_empty(), "the ACK waits for the stream's owner");
        assert_eq!(read_all(&mut stream), b"hello world", "the FIN takes effect after the payload it came with");
        // Our reply and FIN leave in one flush.
        let mut s = Pin::new(&mut stream);
        assert!(matches!(s.as_mut().poll_write(&mut noop(), b"bye"), Poll::Ready(Ok(3))));
        assert!(h.sent().is_empty(), "a write is queued until a flush");
        assert!(matches!(s.as_mut().poll_close(&mut noop()), Poll::Ready(Ok(()))));
        let ack = (TYPE_WINDOW_UPDATE, ACK, 1, LARGE_WINDOW - DEFAULT_WINDOW, vec![]);
        assert_eq!(h.sent(), vec![ack, (TYPE_DATA, 0, 1, 3, b"bye".to_vec()), (TYPE_WINDOW_UPDATE, FIN, 1, 0, vec![])]);
        drop(stream);
        assert!(lock(&h.muxer.shared).streams.is_empty(), "closed both ways and dropped: forgotten");
    }

    #[test]
    fn a_stream_that_ended_leaves_its_receive_buffer_to_the_next() {
        let payload = vec![3u8; 100_000];
        let mut input = data(SYN, 1, &payload);
        input.extend(data(FIN, 1, b""));
        let mut h = Harness::new(input, false);
        h.poll().unwrap();
        let mut first = h.inbound().unwrap();
        assert_eq!(read_all(&mut first), payload);
        assert!(matches!(Pin::new(&mut first).poll_close(&mut noop()), Poll::Ready(Ok(()))));
        drop(first);
        let grown = lock(&h.muxer.shared).spare_recv.as_ref().map_or(0, Vec::capacity);
        assert!(grown >= payload.len(), "{grown}");
        // The next stream starts with it, empty.
        h.feed(&data(SYN, 3, b"next"));
        h.poll().unwrap();
        let mut second = h.inbound().unwrap();
        let inner = lock(&h.muxer.shared);
        assert!(inner.spare_recv.is_none());
        assert!(inner.streams[&3].recv.capacity() >= grown);
        drop(inner);
        assert!(matches!(read(&mut second), Poll::Ready(Ok(bytes)) if bytes == b"next"));
    }

    #[test]
    fn a_reader_that_waits_sends_its_ack_first() {
        let mut h = Harness::new(data(SYN, 1, b"part"), false);
        h.poll().unwrap();
        let mut stream = h.inbound().unwrap();
        assert!(matches!(read(&mut stream), Poll::Ready(Ok(bytes)) if bytes == b"part"));
        assert!(h.sent().is_empty(), "queued while there is data to read");
        assert!(read(&mut stream).is_pending());
        assert_eq!(h.sent(), vec![(TYPE_WINDOW_UPDATE, ACK, 1, LARGE_WINDOW - DEFAULT_WINDOW, vec![])]);
    }

    #[test]
    fn a_peer_that_used_half_the_spec_window_gets_our_grant_at_once() {
        let half = vec![1u8; DEFAULT_WINDOW as usize / 2];
        let mut h = Harness::new(data(SYN, 1, &half[..half.len() - 1]), false);
        h.poll().unwrap();
        assert!(h.sent().is_empty(), "a small request waits for its reply");
        h.feed(&data(0, 1, b"x"));
        h.poll().unwrap();
        assert_eq!(h.sent(), vec![(TYPE_WINDOW_UPDATE, ACK, 1, LARGE_WINDOW - DEFAULT_WINDOW, vec![])]);
    }

    #[test]
    fn closing_after_the_peer_finished_leaves_the_fin_for_the_next_flush() {
        let mut h = Harness::new(data(SYN | FIN, 1, b"done"), false);
        h.poll().unwrap();
        let mut stream = h.inbound().unwrap();
        assert_eq!(read_all(&mut stream), b"done");
        assert!(matches!(Pin::new(&mut stream).poll_close(&mut noop()), Poll::Ready(Ok(()))));
        drop(stream);
        assert!(h.sent().is_empty(), "the FIN waits for the connection's next write");
        h.feed(&frame(TYPE_PING, SYN, 0, 9, &[]));
        h.poll().unwrap();
        let ack = (TYPE_WINDOW_UPDATE, ACK, 1, LARGE_WINDOW - DEFAULT_WINDOW, vec![]);
        let fin = (TYPE_WINDOW_UPDATE, FIN, 1, 0, vec![]);
        assert_eq!(h.sent(), vec![ack, fin, (TYPE_PING, ACK, 0, 9, vec![])]);
        assert!(lock(&h.muxer.shared).streams.is_empty());
    }

    #[test]
    fn an_outbound_stream_sends_its_syn_with_the_first_flush_and_waits_for_window() {
        let mut h = Harness::new(Vec::new(), true);
        h.poll().unwrap();
        let mut stream = match Pin::new(&mut h.muxer).poll_outbound(&mut noop()) {
            Poll::Ready(Ok(stream)) => stream,
            _ => panic!("an outbound stream"),
        };
        assert_eq!(stream.id, 1, "a dialer's streams are odd");
        let payload = vec![7u8; DEFAULT_WINDOW as usize + 10];
        let mut written = 0;
        while let Poll::Ready(Ok(n)) = Pin::new(&mut stream).poll_write(&mut noop(), &payload[written..]) {
            written += n;
        }
        assert_eq!(written, DEFAULT_WINDOW as usize, "the peer granted only the default window so far");
        // Waiting on the window flushed what was queued: the peer must see it to grant more.
        let sent = h.sent();
        assert_eq!(sent[0], (TYPE_WINDOW_UPDATE, SYN, 1, LARGE_WINDOW - DEFAULT_WINDOW, vec![]));
        assert!(sent[1..].iter().all(|f| f.0 == TYPE_DATA && f.2 == 1 && f.3 as usize <= MAX_DATA_FRAME));
        assert_eq!(sent[1..].iter().map(|f| f.3 as usize).sum::<usize>(), DEFAULT_WINDOW as usize);
        h.feed(&frame(TYPE_WINDOW_UPDATE, ACK, 1, 10, &[]));
        h.poll().unwrap();
        assert!(matches!(Pin::new(&mut stream).poll_write(&mut noop(), &payload[written..]), Poll::Ready(Ok(10))));
    }

    #[test]
    fn pings_are_answered_and_an_abandoned_stream_is_reset() {
        let mut input = frame(TYPE_PING, SYN, 0, 0xdead_beef, &[]);
        input.extend(data(SYN, 3, b"x"));
        let mut h = Harness::new(input, false);
        h.poll().unwrap();
        let stream = h.inbound().unwrap();
        let sent = h.sent();
        assert!(sent.contains(&(TYPE_PING, ACK, 0, 0xdead_beef, vec![])), "{sent:?}");
        drop(stream);
        h.poll().unwrap();
        assert_eq!(h.sent(), vec![(TYPE_WINDOW_UPDATE, RST, 3, 0, vec![])]);
        assert!(lock(&h.muxer.shared).streams.is_empty());
    }

    #[test]
    fn a_reset_stream_fails_its_reads_and_writes() {
        let mut input = data(SYN, 5, b"");
        input.extend(frame(TYPE_WINDOW_UPDATE, RST, 5, 0, &[]));
        let mut h = Harness::new(input, false);
        h.poll().unwrap();
        let mut stream = h.inbound().unwrap();
        let err = match read(&mut stream) {
            Poll::Ready(Err(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(Pin::new(&mut stream).poll_write(&mut noop(), b"x"), Poll::Ready(Err(_))));
    }

    #[test]
    fn a_peer_that_breaks_the_protocol_loses_the_connection() {
        let over_window = {
            let mut input = data(SYN, 1, b"");
            input.extend(frame(TYPE_DATA, 0, 1, LARGE_WINDOW + 1, &[]));
            input
        };
        let cases: [(&str, Vec<u8>); 4] = [
            ("version", vec![1; 12]),
            ("an ID of ours", data(SYN, 2, b"x")),
            ("exceed its window", over_window),
            ("opened twice", [data(SYN, 1, b""), data(SYN, 1, b"")].concat()),
        ];
        for (why, input) in cases {
            let mut h = Harness::new(input, false);
            let err = h.poll().expect_err(why);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{why}");
            assert!(err.to_string().contains(why), "{why}: {err}");
            assert!(matches!(Pin::new(&mut h.muxer).poll_outbound(&mut noop()), Poll::Ready(Err(_))), "{why}");
        }
    }

    #[test]
    fn only_the_first_streams_get_the_large_window() {
        let mut h = Harness::new(opened(LARGE_WINDOW_STREAMS + 2), false);
        h.poll().unwrap();
        let mut streams: Vec<_> = std::iter::from_fn(|| h.inbound()).collect();
        for stream in &mut streams {
            assert!(read(stream).is_pending());
        }
        let grants: Vec<u32> = h.sent().into_iter().filter(|f| f.1 == ACK).map(|f| f.3).collect();
        let mut expected = vec![LARGE_WINDOW - DEFAULT_WINDOW; LARGE_WINDOW_STREAMS];
        expected.extend([0, 0]);
        assert_eq!(grants, expected);
        // The peer may send a small-window stream its window and no more.
        let last = 2 * (LARGE_WINDOW_STREAMS as u32 + 1) + 1;
        h.feed(&frame(TYPE_DATA, 0, last, DEFAULT_WINDOW + 1, &[]));
        assert!(h.poll().unwrap_err().to_string().contains("exceed its window"));
    }

    #[test]
    fn a_peer_that_sends_pings_and_reads_nothing_loses_the_connection() {
        let pings = MAX_UNSENT / HEADER_LEN + 1;
        let mut h = Harness::new(frame(TYPE_PING, SYN, 0, 1, &[]).repeat(pings), false);
        lock(&h.muxer.shared).socket.stalled = true;
        let err = h.poll().expect_err("the peer reads nothing");
        assert!(err.to_string().contains("unread"), "{err}");
    }

    #[test]
    fn inbound_streams_beyond_the_limit_are_reset() {
        let mut h = Harness::new(opened(MAX_BUFFERED_INBOUND + 2), false);
        h.poll().unwrap();
        let resets: Vec<u32> = h.sent().into_iter().filter(|f| f.1 == RST).map(|f| f.2).collect();
        let first_refused = 2 * MAX_BUFFERED_INBOUND as u32 + 1;
        assert_eq!(resets, vec![first_refused, first_refused + 2]);
        assert_eq!(lock(&h.muxer.shared).inbound.len(), MAX_BUFFERED_INBOUND);
    }

    #[test]
    fn the_fuzz_entry_point_serves_well_formed_and_broken_input() {
        let mut input = data(SYN, 1, b"hi");
        input.extend(frame(TYPE_PING, SYN, 0, 9, &[]));
        input.extend(data(FIN, 1, b"!"));
        let sent = frames(&serve_peer_bytes(&input, 5).unwrap());
        let echoed: Vec<u8> = sent.iter().filter(|f| f.0 == TYPE_DATA && f.2 == 1).flat_map(|f| f.4.clone()).collect();
        assert_eq!(echoed, b"hi!", "{sent:?}");
        assert!(sent.contains(&(TYPE_WINDOW_UPDATE, FIN, 1, 0, vec![])), "{sent:?}");
        assert!(sent.contains(&(TYPE_PING, ACK, 0, 9, vec![])), "{sent:?}");
        assert!(serve_peer_bytes(&[1; 40], 3).is_err());
    }
}
