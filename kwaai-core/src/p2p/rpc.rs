//! Hivemind RPC over libp2p streams, as two p2pd daemons speak it, both as caller and handler.
//!
//! Each call opens a new stream whose protocol is the handler name (e.g. `DHTProtocol.rpc_ping`,
//! no leading slash; see [`super::muxer`] for how such names are negotiated).
//!
//! * **Unary**: the caller sends one `uvarint(len) ‖ PersistentConnectionRequest{callId (16 B),
//!   callUnary}`; the handler answers one `PersistentConnectionRequest{callId, unaryResponse}`
//!   holding the reply or the handler's error text. Envelopes are capped (4 MiB like p2pd).
//! * **Streaming**: frames `marker ‖ u64 BE len ‖ payload`; `0x00` carries a message, `0x01` an
//!   `RPCError`. The caller ends its input with an empty error frame; the handler ends its output
//!   by closing the stream, or fails it with one error frame.
//!
//! Nobody half-closes before the reply has been read: p2pd takes that as a cancellation. A call is
//! cancelled by dropping it (the stream is dropped); a handler is cancelled when its caller goes
//! away. Every read has a size limit and every call a timeout.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::io::{BufReader, ReadHalf, WriteHalf};
use futures::stream::BoxStream;
use futures::{AsyncReadExt, AsyncWriteExt, Stream, StreamExt};
use libp2p::PeerId;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::forward;
use super::framing::{
    append_forward_request, append_unary_envelope, append_unary_envelope_head, check_name, into_vec, io_error,
    read_forward_answer, read_frame, read_negotiation_answer, read_unary_envelope, remote_error, unary_call,
    unary_reply, write_all, write_error_frame, write_frame, Frame, CALL_ID_LEN,
};
use super::host::Command;
use super::multistream::dialer_proposal;
use super::muxer::{Connections, RpcStream};
use super::spare_buffers;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::forward::FORWARD_PROTOCOL;
use crate::wire::p2pd::{
    call_unary_response, persistent_connection_request as request, CallUnaryRequest, CallUnaryResponse,
    PersistentConnectionRequest, END_OF_STREAM, FRAME_MESSAGE,
};

/// How many requests a streaming handler's input holds before the reader waits (hivemind: 5).
const STREAM_PREFETCH: usize = 5;
/// Most bytes of unread input a streaming handler swallows after refusing a frame.
const MAX_DRAIN: usize = 64 << 20;
/// How long a finished streaming handler waits for its caller's remaining input.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Size limits and timeouts of the RPC layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcLimits {
    /// Largest unary envelope sent or accepted, in bytes (p2pd: 4 MiB).
    pub max_unary_len: usize,
    /// Largest streaming frame payload sent or accepted, in bytes.
    pub max_frame_len: usize,
    /// How long an inbound unary handler may run before the call fails.
    pub handler_timeout: Duration,
    /// How long a handler waits for the rest of a request or frame once its first byte arrived
    /// (a peer that stalls mid-message, or lies about a length, is dropped after this).
    pub read_timeout: Duration,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            max_unary_len: 4 << 20,
            max_frame_len: 16 << 20,
            handler_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// The requests a streaming handler receives, in order; it ends at the caller's end of stream.
pub type RequestStream = BoxStream<'static, Result<Vec<u8>>>;
/// The replies of a streaming call, in order; it ends when the handler closes the stream.
pub type ResponseStream = BoxStream<'static, Result<Vec<u8>>>;
type UnaryFn = dyn Fn(PeerId, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> + Send + Sync;
type StreamFn = dyn Fn(PeerId, RequestStream) -> BoxStream<'static, Result<Vec<u8>>> + Send + Sync;

#[derive(Clone)]
enum Handler {
    Unary(Arc<UnaryFn>),
    Stream(Arc<StreamFn>),
}

/// State shared by the RPC handle, the muxers and the swarm task.
pub(crate) struct RpcShared {
    handlers: RwLock<HashMap<String, Handler>>,
    pub(crate) connections: Connections,
    pub(crate) runtime: Handle,
    limits: RwLock<RpcLimits>,
    commands: mpsc::WeakSender<Command>,
    /// Our peer ID, once this node forwards streams for others ([`FORWARD_PROTOCOL`]).
    forwarding: OnceLock<PeerId>,
}

impl RpcShared {
    pub(crate) fn new(runtime: Handle, commands: mpsc::WeakSender<Command>) -> Self {
        RpcShared {
            handlers: RwLock::default(),
            connections: Connections::default(),
            runtime,
            limits: RwLock::new(RpcLimits::default()),
            commands,
            forwarding: OnceLock::new(),
        }
    }

    /// The swarm task's command queue (weak: it does not keep the task alive).
    pub(crate) fn commands(&self) -> mpsc::WeakSender<Command> {
        self.commands.clone()
    }

    pub(crate) fn has_handler(&self, name: &str) -> bool {
        (name == FORWARD_PROTOCOL && self.forwarding.get().is_some())
            || self.handlers.read().is_ok_and(|h| h.contains_key(name))
    }

    /// From now on, forward streams for peers that ask ([`FORWARD_PROTOCOL`]); `local` is our peer ID.
    pub(crate) fn enable_forwarding(&self, local: PeerId) {
        let _ = self.forwarding.set(local);
    }

    fn handler(&self, name: &str) -> Option<Handler> {
        self.handlers.read().ok()?.get(name).cloned()
    }

    fn limits(&self) -> RpcLimits {
        self.limits.read().map(|l| *l).unwrap_or_default()
    }

    /// Serves one inbound stream whose protocol `name` we accepted.
    pub(crate) async fn serve(self: &Arc<Self>, peer: PeerId, name: String, stream: RpcStream) {
        let limits = self.limits();
        if let (FORWARD_PROTOCOL, Some(local)) = (name.as_str(), self.forwarding.get()) {
            forward::serve(Rpc::new(self.clone()), *local, peer, stream, limits).await;
            return;
        }
        let Some(handler) = self.handler(&name) else { return };
        let outcome = match handler {
            Handler::Unary(f) => serve_unary(peer, &name, stream, f, limits).await,
            Handler::Stream(f) => serve_stream(peer, stream, f, limits).await,
        };
        if let Err(e) = outcome {
            tracing::debug!(%peer, name, "inbound call failed: {e}");
        }
    }
}

/// A cloneable handle to the node's RPC layer: register handlers, call peers.
///
/// Its async methods run in any tokio runtime with timers enabled (the connections themselves run
/// on the node's runtime). Handlers run on the node's runtime.
#[derive(Clone)]
pub struct Rpc {
    shared: Arc<RpcShared>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc").finish_non_exhaustive()
    }
}

impl Rpc {
    pub(crate) fn new(shared: Arc<RpcShared>) -> Self {
        Rpc { shared }
    }

    /// Registers a unary handler under `name` (e.g. `DHTProtocol.rpc_ping`). An `Err` it returns
    /// reaches the caller as an error holding the message. Replaces a handler of the same name.
    pub fn add_unary_handler<F, Fut>(&self, name: &str, handler: F) -> Result<()>
    where
        F: Fn(PeerId, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<u8>>> + Send + 'static,
    {
        let f: Arc<UnaryFn> = Arc::new(move |peer, request| Box::pin(handler(peer, request)));
        self.insert(name, Handler::Unary(f))
    }

    /// Registers a streaming handler under `name`: it gets the caller's requests as a stream and
    /// returns its replies as a stream; an `Err` item ends the call with that error's message.
    pub fn add_stream_handler<F, S>(&self, name: &str, handler: F) -> Result<()>
    where
        F: Fn(PeerId, RequestStream) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<Vec<u8>>> + Send + 'static,
    {
        let f: Arc<StreamFn> = Arc::new(move |peer, requests| handler(peer, requests).boxed());
        self.insert(name, Handler::Stream(f))
    }

    /// Removes the handler `name`; returns whether there was one. New calls are refused with `na`.
    pub fn remove_handler(&self, name: &str) -> bool {
        self.shared.handlers.write().is_ok_and(|mut h| h.remove(name).is_some())
    }

    /// Whether a connection with `peer` is open. A node closes a connection once it has carried
    /// no call for [`crate::NodeConfig::idle_connection_timeout`]; the next call dials again.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.shared.connections.is_connected(peer)
    }

    /// Sets the size limits and handler timeout for calls made and served from now on.
    pub fn set_limits(&self, limits: RpcLimits) {
        if let Ok(mut current) = self.shared.limits.write() {
            *current = limits;
        }
    }

    fn insert(&self, name: &str, handler: Handler) -> Result<()> {
        check_name(name)?;
        let mut handlers =
            self.shared.handlers.write().map_err(|_| Error::new(ErrorKind::Internal, "handler table poisoned"))?;
        handlers.insert(name.to_owned(), handler);
        Ok(())
    }

    /// Calls `peer`'s unary handler `name` with `request` and returns its reply. The handler's
    /// error arrives as an [`ErrorKind::Protocol`] error holding its message.
    pub async fn call_unary(&self, peer: PeerId, name: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
        self.unary_on(Route { peer, via: None }, name, request, timeout).await
    }

    /// [`Rpc::call_unary`] through the node `via`, which forwards the call's stream to `peer`
    /// ([`FORWARD_PROTOCOL`]): for peers we cannot dial ourselves.
    pub async fn call_unary_via(
        &self,
        via: PeerId,
        peer: PeerId,
        name: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.unary_on(Route { peer, via: Some(via) }, name, request, timeout).await
    }

    async fn unary_on(&self, route: Route, name: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
        let work = self.unary_exchange(route, name, request);
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, format!("{name} on {} took over {timeout:?}", route.peer)))?
    }

    async fn unary_exchange(&self, route: Route, name: &str, request: Vec<u8>) -> Result<Vec<u8>> {
        check_name(name)?;
        let peer = route.peer;
        let limits = self.shared.limits();
        let (call, call_id) = unary_call(&peer, name, request);
        // The proposal and the envelope go out in one flush.
        let mut out = route.preamble(name);
        let (envelope_len, data) = append_unary_envelope_head(call, &mut out);
        if envelope_len > limits.max_unary_len {
            return Err(Error::invalid_argument(format!(
                "unary request of {envelope_len} bytes exceeds the limit of {} bytes",
                limits.max_unary_len
            )));
        }
        let stream = self.open(route.first_hop()).await?;
        let mut stream = BufReader::new(stream);
        stream.write_all(&out).await.map_err(io_error)?;
        write_all(&mut stream, &data).await?;
        // The reply, usually about as large, is read into the request's memory.
        spare_buffers::recycle_bytes(data);
        route.read_answer(&mut stream, name).await?;
        let reply = read_unary_envelope(&mut stream, limits.max_unary_len).await?;
        let _ = stream.close().await;
        unary_reply(reply, &call_id)
    }

    /// Calls `peer`'s streaming handler `name`: sends `requests` then the end of stream, and
    /// returns the replies as they come. `timeout` bounds opening the call and each wait for a
    /// reply. Dropping the returned stream cancels the call.
    pub async fn call_stream(
        &self,
        peer: PeerId,
        name: &str,
        requests: impl Stream<Item = Vec<u8>> + Send + 'static,
        timeout: Duration,
    ) -> Result<ResponseStream> {
        self.stream_on(Route { peer, via: None }, name, requests, timeout).await
    }

    /// [`Rpc::call_stream`] through the node `via`, which forwards the call's stream to `peer`
    /// ([`FORWARD_PROTOCOL`]).
    pub async fn call_stream_via(
        &self,
        via: PeerId,
        peer: PeerId,
        name: &str,
        requests: impl Stream<Item = Vec<u8>> + Send + 'static,
        timeout: Duration,
    ) -> Result<ResponseStream> {
        self.stream_on(Route { peer, via: Some(via) }, name, requests, timeout).await
    }

    async fn stream_on(
        &self,
        route: Route,
        name: &str,
        requests: impl Stream<Item = Vec<u8>> + Send + 'static,
        timeout: Duration,
    ) -> Result<ResponseStream> {
        check_name(name)?;
        let peer = route.peer;
        let limits = self.shared.limits();
        let timed_out = || Error::new(ErrorKind::Timeout, format!("{name} on {peer}: no reply within {timeout:?}"));
        let stream = tokio::time::timeout(timeout, self.open(route.first_hop())).await.map_err(|_| timed_out())??;
        let (reader, mut writer) = stream.split();
        let proposal = route.preamble(name);
        let sender = self.shared.runtime.spawn(async move {
            write_all(&mut writer, &proposal).await?;
            let mut requests = std::pin::pin!(requests);
            while let Some(request) = requests.next().await {
                if request.len() > limits.max_frame_len {
                    return Err(Error::invalid_argument(format!(
                        "stream request of {} bytes exceeds the limit of {} bytes",
                        request.len(),
                        limits.max_frame_len
                    )));
                }
                write_frame(&mut writer, FRAME_MESSAGE, &request).await?;
                spare_buffers::recycle(request);
            }
            write_all(&mut writer, &END_OF_STREAM).await?;
            // Keep the write side open (a half-close cancels the call) until the call is dropped.
            Ok::<_, Error>(writer)
        });
        let mut reader = BufReader::new(reader);
        tokio::time::timeout(timeout, route.read_answer(&mut reader, name)).await.map_err(|_| timed_out())??;
        let state = CallState { reader: Some(reader), sender: Some(sender), limits, timeout };
        let replies = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_reply().await?;
            Some((item, state))
        });
        Ok(replies.boxed())
    }

    /// Opens a stream to `peer` and negotiates the handler `name` on it.
    pub(crate) async fn open_handler(&self, peer: PeerId, name: &str) -> Result<RpcStream> {
        let mut stream = self.open(peer).await?;
        write_all(&mut stream, &dialer_proposal(name)).await?;
        read_negotiation_answer(&mut stream, name).await?;
        Ok(stream)
    }

    async fn open(&self, peer: PeerId) -> Result<RpcStream> {
        if let Some(opening) = self.shared.connections.open(&peer) {
            if let Ok(stream) = opening.await {
                return Ok(stream);
            }
        }
        let commands = self.shared.commands.upgrade().ok_or_else(closed)?;
        let (reply, connected) = oneshot::channel();
        commands.send(Command::Dial { peer, reply }).await.map_err(|_| closed())?;
        connected.await.map_err(|_| closed())??;
        let opening = self
            .shared
            .connections
            .open(&peer)
            .ok_or_else(|| Error::new(ErrorKind::Network, format!("connection to {peer} closed")))?;
        opening.await
    }
}

/// Where a call's stream goes: to `peer` directly, or through the node `via` that forwards it.
#[derive(Debug, Clone, Copy)]
struct Route {
    peer: PeerId,
    via: Option<PeerId>,
}

impl Route {
    /// The peer the stream is opened to.
    fn first_hop(&self) -> PeerId {
        self.via.unwrap_or(self.peer)
    }

    /// What goes out before the call's own bytes: the proposal of `name`, or that of the forwarding
    /// protocol and the forward request.
    fn preamble(&self, name: &str) -> Vec<u8> {
        if self.via.is_none() {
            return dialer_proposal(name);
        }
        let mut out = dialer_proposal(FORWARD_PROTOCOL);
        append_forward_request(&self.peer, name, &mut out);
        out
    }

    /// Reads the answer to [`Route::preamble`].
    async fn read_answer<R: futures::AsyncRead + Unpin>(&self, reader: &mut R, name: &str) -> Result<()> {
        if self.via.is_none() {
            return read_negotiation_answer(reader, name).await;
        }
        read_negotiation_answer(reader, FORWARD_PROTOCOL).await?;
        read_forward_answer(reader, &self.peer, name).await
    }
}

/// The reading side of a streaming call in progress.
struct CallState {
    reader: Option<BufReader<ReadHalf<RpcStream>>>,
    sender: Option<tokio::task::JoinHandle<Result<WriteHalf<RpcStream>>>>,
    limits: RpcLimits,
    timeout: Duration,
}

impl CallState {
    async fn next_reply(&mut self) -> Option<Result<Vec<u8>>> {
        let reader = self.reader.as_mut()?;
        let frame =
            tokio::time::timeout(self.timeout, read_frame(reader, self.limits.max_frame_len, self.timeout)).await;
        let item = match frame {
            Err(_) => Some(Err(Error::new(ErrorKind::Timeout, format!("no reply within {:?}", self.timeout)))),
            Ok(Ok(Some(Frame::Message(bytes)))) => return Some(Ok(bytes)),
            Ok(Ok(Some(Frame::Error(text)))) => Some(Err(remote_error(&text))),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some(Err(e)),
        };
        if item.is_none() {
            // A clean end: report a request that could not be sent, if any.
            if let Some(sender) = self.sender.take() {
                if sender.is_finished() {
                    if let Ok(Err(e)) = sender.await {
                        self.reader = None;
                        return Some(Err(e));
                    }
                } else {
                    sender.abort();
                }
            }
        }
        self.reader = None;
        self.stop_sender();
        item
    }

    fn stop_sender(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
    }
}

impl Drop for CallState {
    fn drop(&mut self) {
        self.stop_sender();
    }
}

async fn serve_unary(
    peer: PeerId,
    name: &str,
    stream: RpcStream,
    handler: Arc<UnaryFn>,
    limits: RpcLimits,
) -> Result<()> {
    let mut stream = stream;
    let answer = stream.take_answer();
    let mut stream = BufReader::new(stream);
    let call = tokio::time::timeout(limits.read_timeout, read_unary_envelope(&mut stream, limits.max_unary_len))
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "the caller stalled while sending its request"))??;
    let Some(request::Message::CallUnary(CallUnaryRequest { data, .. })) = call.message else {
        return Err(Error::new(ErrorKind::Protocol, "unary call without callUnary"));
    };
    if call.call_id.len() != CALL_ID_LEN {
        return Err(Error::new(ErrorKind::Protocol, "call ID is not 16 bytes"));
    }
    let work = tokio::time::timeout(limits.handler_timeout, handler(peer, into_vec(data)));
    // p2pd cancels a call when its caller closes or resets the stream: watch for that meanwhile.
    let mut probe = [0u8; 1];
    let result = {
        let cancelled = stream.read(&mut probe);
        futures::pin_mut!(work, cancelled);
        match futures::future::select(work, cancelled).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => {
                tracing::debug!(%peer, name, "caller cancelled the call");
                return Ok(());
            }
        }
    };
    let result = match result {
        Ok(Ok(reply)) => call_unary_response::Result::Response(reply.into()),
        Ok(Err(e)) => call_unary_response::Result::Error(e.message().as_bytes().to_vec()),
        Err(_) => call_unary_response::Result::Error(
            format!("handler {name} took over {:?}", limits.handler_timeout).into_bytes(),
        ),
    };
    // A deferred multistream answer and the reply go out in one write.
    let mut out = answer;
    let answer_len = out.len();
    let call_id = call.call_id;
    let reply = PersistentConnectionRequest {
        call_id: call_id.clone(),
        message: Some(request::Message::UnaryResponse(CallUnaryResponse { result: Some(result) })),
    };
    let (reply_len, mut data) = append_unary_envelope_head(reply, &mut out);
    if reply_len > limits.max_unary_len {
        out.truncate(answer_len);
        data = Default::default();
        let text = format!("reply of {reply_len} bytes exceeds the limit of {} bytes", limits.max_unary_len);
        let refusal = PersistentConnectionRequest {
            call_id,
            message: Some(request::Message::UnaryResponse(CallUnaryResponse {
                result: Some(call_unary_response::Result::Error(text.into_bytes())),
            })),
        };
        append_unary_envelope(&refusal, &mut out);
    }
    // No flush before the close: the reply and the end of the stream leave in one write.
    stream.write_all(&out).await.map_err(io_error)?;
    stream.write_all(&data).await.map_err(io_error)?;
    spare_buffers::recycle_bytes(data);
    let _ = stream.close().await;
    Ok(())
}

async fn serve_stream(peer: PeerId, mut stream: RpcStream, handler: Arc<StreamFn>, limits: RpcLimits) -> Result<()> {
    let answer = stream.take_answer();
    if !answer.is_empty() {
        write_all(&mut stream, &answer).await?;
    }
    let (reader, mut writer) = stream.split();
    let (requests_tx, requests_rx) = mpsc::channel::<Result<Vec<u8>>>(STREAM_PREFETCH);
    let read_requests = async move {
        let mut reader = BufReader::new(reader);
        // Once the handler stops reading, the caller's remaining requests are read and dropped.
        let mut forwarding = true;
        loop {
            match read_frame(&mut reader, limits.max_frame_len, limits.read_timeout).await {
                Ok(Some(Frame::Message(bytes))) => {
                    if forwarding && requests_tx.send(Ok(bytes)).await.is_err() {
                        forwarding = false;
                    }
                }
                // Any error frame (the empty one included) ends the caller's input; so does EOF.
                Ok(Some(Frame::Error(_))) | Ok(None) => break,
                Err(e) => {
                    let _ = requests_tx.send(Err(e)).await;
                    drop(requests_tx);
                    // Swallow what the caller is still sending (bounded), so that it reads our error
                    // frame instead of failing on a reset stream.
                    let mut scratch = vec![0u8; 64 << 10];
                    let mut drained = 0usize;
                    while drained < MAX_DRAIN {
                        match reader.read(&mut scratch).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => drained += n,
                        }
                    }
                    return;
                }
            }
        }
    };
    let requests = ChannelStream(requests_rx).boxed();
    let mut replies = handler(peer, requests);
    // Writes the replies; `Ok(true)` if it ended the call with an error frame.
    let write_replies = async {
        while let Some(reply) = replies.next().await {
            match reply {
                Ok(bytes) if bytes.len() <= limits.max_frame_len => {
                    write_frame(&mut writer, FRAME_MESSAGE, &bytes).await?;
                    spare_buffers::recycle(bytes);
                }
                Ok(bytes) => {
                    let text = format!("reply of {} bytes exceeds the limit of {}", bytes.len(), limits.max_frame_len);
                    write_error_frame(&mut writer, &text).await?;
                    return Ok(true);
                }
                Err(e) => {
                    write_error_frame(&mut writer, e.message()).await?;
                    return Ok(true);
                }
            }
        }
        Ok::<_, Error>(false)
    };
    let outcome = {
        futures::pin_mut!(read_requests, write_replies);
        match futures::future::select(read_requests, write_replies).await {
            futures::future::Either::Left(((), write_replies)) => write_replies.await,
            futures::future::Either::Right((Ok(ended_with_error), read_requests)) => {
                // Before closing (which makes p2pd drop the caller's socket), let the caller finish
                // sending (or read our error and stop), so that it gets our replies or our error
                // rather than a broken pipe.
                let _ = tokio::time::timeout(DRAIN_GRACE, read_requests).await;
                Ok(ended_with_error)
            }
            futures::future::Either::Right((outcome, _)) => outcome,
        }
    };
    let _ = writer.close().await;
    outcome.map(|_| ())
}

/// A `Stream` over a tokio mpsc receiver.
struct ChannelStream<T>(mpsc::Receiver<T>);

impl<T> Stream for ChannelStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the node is shut down")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::framing::new_call_id;

    #[test]
    fn call_ids_are_uuid_v4() {
        let id = new_call_id();
        assert_eq!(id.len(), CALL_ID_LEN);
        assert_eq!(id[6] >> 4, 4);
        assert_eq!(id[8] >> 6, 0b10);
        assert_ne!(new_call_id(), id);
    }
}
