//! Keeps every WebRTC data-channel message small enough for the native receiver.
//!
//! A libp2p WebRTC stream frames its writes as messages of up to 16 KiB and packs several into one
//! data-channel message. libp2p-webrtc's native side (0.10) reads each data-channel message into
//! an 8 KiB buffer (the capacity it sets is lost when it clones its channel) and resets the stream
//! on anything larger. [`BoundedWrites`] therefore hands the stream at most [`MAX_WRITE`] bytes at
//! a time and flushes each before the next, so that every data-channel message fits. Both ends use
//! it, through [`BoundedStreams`]: the node for what it sends over WebRTC, the browser for what it
//! sends to a node.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

/// The most bytes of one write: 8 KiB less room for the framing and a closing flag.
pub const MAX_WRITE: usize = 8192 - 64;

/// A stream whose writes go out as separate data-channel messages of at most [`MAX_WRITE`] bytes.
pub struct BoundedWrites<S> {
    inner: S,
    unflushed: bool,
}

impl<S> BoundedWrites<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        BoundedWrites { inner, unflushed: false }
    }
}

impl<S: AsyncWrite + Unpin> BoundedWrites<S> {
    /// Flushes what the last write left in the stream's buffer.
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BoundedWrites<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BoundedWrites<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_settle(cx))?;
        let limit = buf.len().min(MAX_WRITE);
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]))?;
        this.unflushed = written > 0;
        // Start sending at once; if that cannot finish now, the next write or flush finishes it.
        if this.poll_settle(cx).is_ready() {
            this.unflushed = false;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_settle(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

/// A connection's muxer whose streams, inbound and outbound, are [`BoundedWrites`].
pub struct BoundedStreams<M> {
    inner: M,
}

impl<M> BoundedStreams<M> {
    /// Wraps the muxer of a WebRTC connection.
    pub fn new(inner: M) -> Self {
        BoundedStreams { inner }
    }
}

impl<M> StreamMuxer for BoundedStreams<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = BoundedWrites<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, M::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_inbound(cx).map_ok(BoundedWrites::new)
    }

    fn poll_outbound(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, M::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_outbound(cx).map_ok(BoundedWrites::new)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), M::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, M::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;

    /// Records each flush as the end of one message.
    #[derive(Default)]
    struct Messages {
        pending: Vec<u8>,
        sent: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Messages {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().pending.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if !this.pending.is_empty() {
                this.sent.push(std::mem::take(&mut this.pending));
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[test]
    fn large_writes_go_out_as_bounded_messages_in_order() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = BoundedWrites::new(Messages::default());
        futures::executor::block_on(async {
            stream.write_all(&data).await.unwrap();
            stream.write_all(b"tail").await.unwrap();
            stream.close().await.unwrap();
        });
        let sent = &stream.inner.sent;
        assert!(sent.iter().all(|m| !m.is_empty() && m.len() <= MAX_WRITE), "{:?}", sent.iter().map(Vec::len));
        assert_eq!(sent.len(), 50_000usize.div_ceil(MAX_WRITE) + 1);
        assert_eq!(sent.concat(), [data, b"tail".to_vec()].concat());
    }
}
