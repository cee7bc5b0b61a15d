//! yamux (`/yamux/1.0.0`) as the connection upgrade, with data frames sized for RPC payloads.
//!
//! The yamux crate splits every write into data frames of at most 16 KiB by default, and its
//! connection flushes each frame on its own: one Noise message, one socket write and one wake-up
//! of the reading side per 16 KiB. libp2p's yamux upgrade does not let that size be changed, so
//! this module wraps `yamux::Connection` in a [`StreamMuxer`] itself and sends data frames that
//! just fill one Noise message. The bytes on the wire stay plain yamux: a frame may carry any
//! length up to the stream's window, which every yamux implementation (p2pd's included) accepts.

use std::collections::VecDeque;
use std::io;
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::future;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// The largest plaintext libp2p-noise puts in one Noise transport message (65535 bytes, less the
/// 1024 it keeps for the tag and spare room).
const NOISE_MAX_PLAINTEXT: usize = 65535 - 1024;
/// Bytes of a yamux frame header.
const YAMUX_HEADER_LEN: usize = 12;
/// Largest data frame payload we send: header and payload fill one Noise message.
const SPLIT_SEND_SIZE: usize = NOISE_MAX_PLAINTEXT - YAMUX_HEADER_LEN;
/// Inbound streams held while the swarm has not taken them yet; more are reset.
const MAX_BUFFERED_INBOUND: usize = 256;

/// The yamux upgrade for our transport.
#[derive(Debug, Clone)]
pub(crate) struct YamuxUpgrade(yamux::Config);

impl Default for YamuxUpgrade {
    fn default() -> Self {
        let mut config = yamux::Config::default();
        config.set_split_send_size(SPLIT_SEND_SIZE);
        YamuxUpgrade(config)
    }
}

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
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(YamuxMuxer::new(yamux::Connection::new(io, self.0, yamux::Mode::Server))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for YamuxUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = YamuxMuxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(YamuxMuxer::new(yamux::Connection::new(io, self.0, yamux::Mode::Client))))
    }
}

/// One yamux connection as a [`StreamMuxer`].
///
/// A yamux connection only makes progress while it is asked for its next inbound stream, which
/// [`StreamMuxer::poll`] does too: the streams that turn up there wait in `inbound` until
/// [`StreamMuxer::poll_inbound`] takes them.
pub(crate) struct YamuxMuxer<C> {
    connection: yamux::Connection<C>,
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> YamuxMuxer<C> {
    fn new(connection: yamux::Connection<C>) -> Self {
        YamuxMuxer { connection, inbound: VecDeque::new(), inbound_waker: None }
    }
}

impl<C> YamuxMuxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_next_stream(&mut self, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, yamux::ConnectionError>> {
        match self.connection.poll_next_inbound(cx) {
            Poll::Ready(Some(result)) => Poll::Ready(result),
            Poll::Ready(None) => Poll::Ready(Err(yamux::ConnectionError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C> StreamMuxer for YamuxMuxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    type Substream = yamux::Stream;
    type Error = yamux::ConnectionError;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, Self::Error>> {
        let this = self.get_mut();
        if let Some(stream) = this.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        let polled = this.poll_next_stream(cx);
        if polled.is_pending() {
            this.inbound_waker = Some(cx.waker().clone());
        }
        polled
    }

    fn poll_outbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, Self::Error>> {
        self.get_mut().connection.poll_new_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().connection.poll_close(cx)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        loop {
            let stream = match this.poll_next_stream(cx) {
                Poll::Ready(Ok(stream)) => stream,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if this.inbound.len() >= MAX_BUFFERED_INBOUND {
                tracing::warn!("dropping an inbound yamux stream: {MAX_BUFFERED_INBOUND} wait already");
                drop(stream);
                continue;
            }
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
    }
}
