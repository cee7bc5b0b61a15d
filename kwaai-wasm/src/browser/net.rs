//! The browser's connection to a kwaai node: libp2p over the browser's WebSocket with Noise and
//! yamux (`/ws` addresses), or over the browser's WebRTC (`/webrtc-direct/certhash/...`
//! addresses, whose data channels are the streams). Either way it is one muxer of streams.
//!
//! A task on the page's event loop drives the connection's muxer and refuses every inbound stream
//! (the browser serves nothing); over WebRTC it also pings the node, since the browser's WebRTC
//! stack does not report the node's end. Outbound streams negotiate hivemind's slash-less handler
//! names with multistream-select here; streams to other peers go through the node's
//! `kwaai.forward`.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{self, Either};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use kwaai_core::p2p::bounded_writes::BoundedStreams;
use kwaai_core::p2p::framing::{
    append_forward_request, io_error, new_call_id, read_forward_answer, read_negotiation_answer, write_all,
};
use kwaai_core::p2p::multistream::dialer_proposal;
use kwaai_core::wire::forward::FORWARD_PROTOCOL;
use kwaai_core::{Error, ErrorKind, Result};
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};
use libp2p::core::transport::{Boxed, DialOpts, PortUse};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Runs `work` for at most `limit`; a timeout error naming `what` after that.
pub async fn timeout<T>(limit: Duration, what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let millis = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
    let timer = gloo_timers::future::TimeoutFuture::new(millis);
    match future::select(std::pin::pin!(work), timer).await {
        Either::Left((outcome, _)) => outcome,
        Either::Right(_) => Err(Error::new(ErrorKind::Timeout, format!("{what} took over {limit:?}"))),
    }
}

/// Waits `delay` on the page's timers.
pub async fn sleep(delay: Duration) {
    gloo_timers::future::TimeoutFuture::new(u32::try_from(delay.as_millis()).unwrap_or(u32::MAX)).await;
}

/// A live connection to one kwaai node.
#[derive(Clone)]
pub struct Connection {
    peer: PeerId,
    muxer: Rc<RefCell<StreamMuxerBox>>,
}

/// The address without its `/p2p/<id>` suffix, and that peer ID.
pub fn split_peer(addr: &Multiaddr) -> Result<(Multiaddr, PeerId)> {
    let mut transport = addr.clone();
    match transport.pop() {
        Some(Protocol::P2p(peer)) => Ok((transport, peer)),
        _ => Err(Error::invalid_argument(format!("bootstrap address {addr} does not end with /p2p/<peer id>"))),
    }
}

impl Connection {
    /// Dials `addr` (a `/ws` or `/webrtc-direct/certhash/...` address ending with `/p2p/<id>`) as
    /// `key`; resolves once the connection is secured and multiplexed. The returned receiver fires
    /// with the reason when the connection ends.
    pub async fn dial(
        key: &Keypair,
        addr: &Multiaddr,
        limit: Duration,
    ) -> Result<(Connection, oneshot::Receiver<String>)> {
        let (transport_addr, expected) = split_peer(addr)?;
        let webrtc = transport_addr.iter().any(|p| matches!(p, Protocol::WebRTCDirect));
        let mut transport = transport_for(key, &transport_addr)?;
        let dialing = transport
            .dial(transport_addr.clone(), DialOpts { role: Endpoint::Dialer, port_use: PortUse::New })
            .map_err(|e| Error::new(ErrorKind::Network, format!("cannot dial {transport_addr}: {e}")))?;
        let (peer, muxer) = timeout(limit, &format!("connecting to {addr}"), async {
            dialing.await.map_err(|e| Error::new(ErrorKind::Network, format!("connecting to {addr}: {e}")))
        })
        .await?;
        if peer != expected {
            return Err(Error::new(ErrorKind::Network, format!("{addr} answered as {peer}")));
        }
        let connection = Connection { peer, muxer: Rc::new(RefCell::new(muxer)) };
        let (ended, ended_rx) = oneshot::channel();
        let driven = Rc::clone(&connection.muxer);
        let watched = webrtc.then(|| connection.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let reason =
                match watched {
                    // The browser's WebRTC stack does not tell libp2p when the node goes away.
                    Some(watched) => {
                        let reason =
                            match future::select(std::pin::pin!(drive(driven)), std::pin::pin!(heartbeat(&watched)))
                                .await
                            {
                                Either::Left((reason, _)) | Either::Right((reason, _)) => reason,
                            };
                        watched.close();
                        reason
                    }
                    None => drive(driven).await,
                };
            let _ = ended.send(reason);
        });
        Ok((connection, ended_rx))
    }

    /// The node's peer ID.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    async fn open_raw(&self) -> Result<SubstreamBox> {
        let muxer = Rc::clone(&self.muxer);
        future::poll_fn(move |cx| muxer.borrow_mut().poll_outbound_unpin(cx))
            .await
            .map_err(|e| Error::new(ErrorKind::Network, format!("opening a stream to {}: {e}", self.peer)))
    }

    /// A stream to the node's handler `name`, negotiated; `first` goes out with the proposal.
    pub async fn open(&self, name: &str, first: &[u8]) -> Result<SubstreamBox> {
        let mut stream = self.open_raw().await?;
        let mut out = dialer_proposal(name);
        out.extend_from_slice(first);
        write_all(&mut stream, &out).await?;
        read_negotiation_answer(&mut stream, name).await?;
        Ok(stream)
    }

    /// A stream to `peer`'s handler `name`: direct if `peer` is the node, else forwarded by it.
    /// `first` goes out as early as it can (with the proposal or the forward header).
    pub async fn open_to(&self, peer: PeerId, name: &str, first: &[u8]) -> Result<SubstreamBox> {
        if peer == self.peer {
            return self.open(name, first).await;
        }
        let mut message = Vec::new();
        append_forward_request(&peer, name, &mut message);
        message.extend_from_slice(first);
        let mut stream = self.open(FORWARD_PROTOCOL, &message).await?;
        read_forward_answer(&mut stream, &peer, name).await?;
        Ok(stream)
    }

    /// Closes the connection.
    pub fn close(&self) {
        let muxer = Rc::clone(&self.muxer);
        wasm_bindgen_futures::spawn_local(async move {
            let _ = future::poll_fn(move |cx| muxer.borrow_mut().poll_close_unpin(cx)).await;
        });
    }
}

/// The browser's transport for `addr`: WebRTC for a `/webrtc-direct` address (its streams' writes
/// kept small enough for the node, see [`kwaai_core::p2p::bounded_writes`]), else WebSocket with
/// Noise and yamux.
fn transport_for(key: &Keypair, addr: &Multiaddr) -> Result<Boxed<(PeerId, StreamMuxerBox)>> {
    if addr.iter().any(|p| matches!(p, Protocol::WebRTCDirect)) {
        let config = libp2p::webrtc_websys::Config::new(key);
        return Ok(libp2p::webrtc_websys::Transport::new(config)
            .map(|(peer, connection), _| (peer, StreamMuxerBox::new(BoundedStreams::new(connection))))
            .boxed());
    }
    let noise =
        libp2p::noise::Config::new(key).map_err(|e| Error::with_source(ErrorKind::Internal, "setting up Noise", e))?;
    Ok(libp2p::websocket_websys::Transport::default()
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(libp2p::yamux::Config::default())
        .boxed())
}

/// How often the muxer is polled even when nothing woke it: libp2p-websocket-websys 0.6 does not
/// wake a pending read when the socket closes, so a closed connection is noticed at the next poll.
const CLOSE_CHECK: u32 = 500;

/// Drives the muxer until the connection fails or closes, dropping (refusing) inbound streams;
/// then says why.
async fn drive(muxer: Rc<RefCell<StreamMuxerBox>>) -> String {
    let mut ticks = gloo_timers::future::IntervalStream::new(CLOSE_CHECK);
    let reason = future::poll_fn(|cx| {
        // Only to be polled again soon (see CLOSE_CHECK); the ticks themselves mean nothing.
        while ticks.poll_next_unpin(cx).is_ready() {}
        loop {
            let mut muxer = muxer.borrow_mut();
            match muxer.poll_inbound_unpin(cx) {
                Poll::Ready(Ok(stream)) => drop(stream),
                Poll::Ready(Err(e)) => return Poll::Ready(e.to_string()),
                Poll::Pending => match muxer.poll_unpin(cx) {
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(e.to_string()),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    })
    .await;
    if reason.is_empty() {
        "connection closed".to_owned()
    } else {
        reason
    }
}

/// How often a WebRTC connection's node is pinged, and how long it has to answer.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// libp2p's ping protocol, which every kwaai node answers.
const PING_PROTOCOL: &str = "/ipfs/ping/1.0.0";

/// Pings the node over libp2p's ping protocol every [`HEARTBEAT`] until it fails to answer in
/// time; then says why. (The node does not count these streams as calls: an idle page still
/// relies on its `rpc_ping` keep-alive.)
async fn heartbeat(connection: &Connection) -> String {
    loop {
        sleep(HEARTBEAT).await;
        if let Err(e) = timeout(HEARTBEAT, "the node's ping answer", ping(connection)).await {
            return format!("the node stopped answering: {e}");
        }
    }
}

/// One libp2p ping: 32 random bytes that the node echoes.
async fn ping(connection: &Connection) -> Result<()> {
    let payload = [new_call_id(), new_call_id()].concat();
    let mut stream = connection.open(PING_PROTOCOL, &payload).await?;
    let mut echo = vec![0u8; payload.len()];
    stream.read_exact(&mut echo).await.map_err(io_error)?;
    let _ = stream.close().await;
    if echo == payload {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Protocol, "the node's ping echo differs"))
    }
}
