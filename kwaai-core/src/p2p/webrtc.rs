//! WebRTC-direct (`/udp/N/webrtc-direct/certhash/...`), which browsers dial without a TLS
//! certificate from an authority: libp2p-webrtc's transport, listening only, with each
//! connection's muxer made safe to open streams from several tasks at once.
//!
//! The transport needs a certificate whose hash goes into the listen address. A fresh one is
//! generated on every start, so the `/certhash/...` part of a node's address changes whenever the
//! node restarts and a browser needs the new address. Every stream's writes go through
//! [`super::bounded_writes`] so that its data-channel messages stay small enough for libp2p-webrtc.
//!
//! A node does not dial WebRTC-direct itself. The dialing end of webrtc-rs 0.17 (under
//! libp2p-webrtc) opens its negotiated Noise data channel only after the SCTP association is up;
//! when the listener's first Noise message arrives before that, the stream already exists, the
//! channel never opens and the dial times out after 10 s. That happens in about one dial in six on
//! a loaded machine, and a second dial from the same UDP port stalls as well. Browsers' WebRTC does
//! not have the problem, and native peers reach a node over TCP.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::task::{waker_ref, ArcWake};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent};
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::{Multiaddr, PeerId, Transport};
use libp2p_webrtc::tokio::{Certificate, Connection};

use super::bounded_writes::BoundedStreams;
use crate::error::{Error, ErrorKind, Result};

/// The WebRTC-direct transport for `keypair`, with a certificate generated now; it listens only.
pub(crate) fn transport(keypair: &libp2p::identity::Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>> {
    // webrtc-rs's DTLS takes rustls's process-wide crypto provider, which rustls can no longer pick
    // by itself once both of its providers are compiled in (libp2p's TLS and QUIC bring aws-lc-rs,
    // webrtc-rs brings ring). Install ring's, as before, unless the application installed one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificate = Certificate::generate(&mut rand_010::rng())
        .map_err(|e| Error::with_source(ErrorKind::Internal, "generating the WebRTC certificate", e))?;
    let transport = libp2p_webrtc::tokio::Transport::new(keypair.clone(), certificate)
        .map(|(peer, connection), _| (peer, StreamMuxerBox::new(BoundedStreams::new(SharedOutbound::new(connection)))))
        .boxed();
    Ok(ListenOnly(transport).boxed())
}

/// The message a refused WebRTC-direct dial fails with.
const NO_DIALS: &str = "this node does not dial WebRTC-direct (webrtc-rs 0.17, under libp2p-webrtc, \
     loses the race for the first data channel now and then): dial the peer's TCP or /ws address; \
     WebRTC-direct listeners are for browsers";

/// A transport that listens and accepts as the one it wraps does and refuses every WebRTC-direct
/// dial at once, so that neither a caller nor the swarm (with addresses learnt through identify or
/// the DHT) waits on a dial that may hang.
struct ListenOnly(Boxed<(PeerId, StreamMuxerBox)>);

impl Transport for ListenOnly {
    type Output = (PeerId, StreamMuxerBox);
    type Error = io::Error;
    type ListenerUpgrade = <Boxed<(PeerId, StreamMuxerBox)> as Transport>::ListenerUpgrade;
    type Dial = <Boxed<(PeerId, StreamMuxerBox)> as Transport>::Dial;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> std::result::Result<(), TransportError<io::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, _opts: DialOpts) -> std::result::Result<Self::Dial, TransportError<io::Error>> {
        if !addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::WebRTCDirect)) {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        Err(TransportError::Other(io::Error::new(io::ErrorKind::Unsupported, NO_DIALS)))
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

/// Every task waiting for an outbound stream of one connection.
#[derive(Default)]
struct Waiters(Mutex<Vec<Waker>>);

impl Waiters {
    fn add(&self, waker: &Waker) {
        let mut wakers = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

impl ArcWake for Waiters {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *arc_self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A WebRTC connection whose outbound streams may be asked for by several tasks.
///
/// libp2p-webrtc keeps one pending data-channel opening per connection and wakes only the task
/// that polled it last; the connection task (identify, ping) and forwarded calls both open streams,
/// so here every waiting task is woken, and those that did not get the stream ask again.
struct SharedOutbound {
    inner: Connection,
    waiters: Arc<Waiters>,
}

impl SharedOutbound {
    fn new(inner: Connection) -> Self {
        SharedOutbound { inner, waiters: Arc::default() }
    }
}

impl StreamMuxer for SharedOutbound {
    type Substream = <Connection as StreamMuxer>::Substream;
    type Error = io::Error;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<Self::Substream>> {
        Pin::new(&mut self.get_mut().inner).poll_inbound(cx).map_err(io::Error::other)
    }

    fn poll_outbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<Self::Substream>> {
        let this = self.get_mut();
        this.waiters.add(cx.waker());
        let waker = waker_ref(&this.waiters);
        let polled = Pin::new(&mut this.inner).poll_outbound(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            // The others start the next opening.
            ArcWake::wake_by_ref(&this.waiters);
        }
        polled.map_err(io::Error::other)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx).map_err(io::Error::other)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<StreamMuxerEvent>> {
        Pin::new(&mut self.get_mut().inner).poll(cx).map_err(io::Error::other)
    }
}
