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
