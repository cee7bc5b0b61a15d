//! An in-memory connection whose reads return at most a given number of bytes, and a way to run
//! futures over it to completion: for the security layers' tests and fuzz targets.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::{AsyncRead, AsyncWrite};

/// One direction of an in-memory connection.
#[derive(Default)]
pub(crate) struct Pipe {
    pub bytes: VecDeque<u8>,
    pub closed: bool,
    reader: Option<Waker>,
}

/// One end of an in-memory connection whose reads return at most `max_read` bytes: for the tests
/// and the fuzz target.
pub(crate) struct End {
    pub rx: Arc<Mutex<Pipe>>,
    pub tx: Arc<Mutex<Pipe>>,
    max_read: usize,
}

pub(crate) fn connection(max_read: usize) -> (End, End) {
    let (a, b) = (Arc::new(Mutex::new(Pipe::default())), Arc::new(Mutex::new(Pipe::default())));
    (End { rx: a.clone(), tx: b.clone(), max_read }, End { rx: b, tx: a, max_read })
}

impl AsyncRead for End {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut pipe = self.rx.lock().unwrap();
        if pipe.bytes.is_empty() {
            if pipe.closed {
                return Poll::Ready(Ok(0));
            }
            pipe.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(self.max_read).min(pipe.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.bytes.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut pipe = self.tx.lock().unwrap();
        pipe.bytes.extend(buf);
        if let Some(w) = pipe.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pipe = self.tx.lock().unwrap();
        pipe.closed = true;
        if let Some(w) = pipe.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

/// Completes a future over in-memory connections, which never wait for anything outside.
pub(crate) fn now<T>(future: impl std::future::Future<Output = T>) -> T {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    for _ in 0..10_000 {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("an in-memory exchange did not finish");
}

/// Acts out `steps` as the peer on an established secure connection (`ours` and `peer`, whose
/// underlying ends `end` gives): each 3-byte step writes (flushed or not), tampers with or cuts
/// the bytes in flight, lets our side read (through a buffer of any size) or write, or (step 6,
/// while the connection is not cut) runs `extra` on the peer with the step's second byte. Panics
/// unless our side reads exactly what the peer sent, in order: all of it, or a prefix once the
/// peer's bytes were tampered with. Returns how many bytes our side read. For the security layers'
/// fuzz targets.
pub(crate) fn act_out_peer_steps<S>(
    mut ours: S,
    mut peer: S,
    steps: &[u8],
    end: impl FnOnce(&S) -> &End,
    mut extra: impl FnMut(&mut S, u8),
) -> usize
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures::{AsyncReadExt, AsyncWriteExt};

    // The peer's direction of the connection, which the steps tamper with or cut.
    let in_flight = end(&peer).tx.clone();
    let in_flight = || in_flight.lock().unwrap_or_else(|p| p.into_inner());
    let closed = || in_flight().closed;
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let (mut sent, mut read, mut intact, mut failed) = (Vec::new(), Vec::new(), true, false);
    let mut buf = vec![0u8; 70_000];
    for step in steps.chunks_exact(3) {
        let arg = usize::from(u16::from_le_bytes([step[1], step[2]]));
        let bytes: Vec<u8> = (0..arg * 2).map(|i| (i * 7 + sent.len()) as u8).collect();
        match step[0] % 7 {
            0 | 1 => {
                now(peer.write_all(&bytes)).unwrap();
                sent.extend_from_slice(&bytes);
                if step[0] % 7 == 0 {
                    now(peer.flush()).unwrap();
                }
            }
            2 => {
                let mut pipe = in_flight();
                let len = pipe.bytes.len();
                if len > 0 {
                    pipe.bytes[arg % len] ^= 1 << (step[1] % 8);
                    intact = false;
                }
            }
            3 => {
                let mut pipe = in_flight();
                let keep = pipe.bytes.len().saturating_sub(arg % 17);
                intact &= keep == pipe.bytes.len();
                pipe.bytes.truncate(keep);
                pipe.closed = true;
            }
            4 if !failed => match Pin::new(&mut ours).poll_read(&mut cx, &mut buf[..arg % 70_000 + 1]) {
                Poll::Ready(Ok(n)) => read.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(_)) => failed = true,
                Poll::Pending => {}
            },
            5 if !failed => {
                now(ours.write_all(&bytes)).unwrap();
                now(ours.flush()).unwrap();
                let mut back = vec![0u8; bytes.len()];
                now(peer.read_exact(&mut back)).unwrap();
                assert_eq!(back, bytes, "what we send arrives intact");
            }
            6 if !closed() => extra(&mut peer, step[1]),
            _ => {}
        }
    }
    if !closed() {
        now(peer.flush()).unwrap();
    }
    while !failed {
        match Pin::new(&mut ours).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Pending => break,
            Poll::Ready(Ok(n)) => read.extend_from_slice(&buf[..n]),
            Poll::Ready(Err(_)) => failed = true,
        }
    }
    assert!(sent.starts_with(&read), "only what the peer sent is read, in order");
    if intact && !closed() {
        assert!(!failed && read.len() == sent.len(), "an untouched stream delivers everything");
    }
    read.len()
}
