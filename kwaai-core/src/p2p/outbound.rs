//! Sealed bytes waiting for the socket, shared by our Noise and TLS streams: messages are sealed
//! into the free space and several leave in one socket write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::AsyncWrite;

/// A fixed buffer whose `bytes[start..end]` wait for the socket.
pub(crate) struct Outbound {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Outbound {
    pub fn new(capacity: usize) -> Self {
        Outbound { bytes: vec![0u8; capacity].into_boxed_slice(), start: 0, end: 0 }
    }

    /// How many free bytes follow the waiting ones.
    pub fn room(&self) -> usize {
        self.bytes.len() - self.end
    }

    /// The free bytes, to seal into; [`Outbound::commit`] then queues the first `n`.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.bytes[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        self.end += n;
    }

    /// Writes the waiting bytes to `socket` until none are left (`Ready`) or it is full
    /// (`Pending`, the unwritten bytes moved to the front).
    pub fn poll_send<C: AsyncWrite + Unpin>(&mut self, socket: &mut C, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.end {
            match Pin::new(&mut *socket).poll_write(cx, &self.bytes[self.start..self.end]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.start += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.bytes.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    return Poll::Pending;
                }
            }
        }
        self.start = 0;
        self.end = 0;
        Poll::Ready(Ok(()))
    }
}
