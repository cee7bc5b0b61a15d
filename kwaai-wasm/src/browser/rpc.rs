//! hivemind RPC as a caller over the browser's streams: unary calls and streaming calls, with the
//! same bytes as the native node (kwaai_core::p2p::framing).

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use kwaai_core::p2p::framing::{
    append_unary_envelope, check_name, io_error, read_frame_rest, read_unary_envelope, remote_error, unary_call,
    unary_reply, write_all, write_frame, Frame,
};
use kwaai_core::wire::p2pd::{END_OF_STREAM, FRAME_MESSAGE};
use kwaai_core::{Error, ErrorKind, PeerId, Result};
use libp2p::core::muxing::SubstreamBox;

use super::net::{timeout, Connection};

/// The largest unary reply or streaming frame accepted (hivemind's default limits).
pub const MAX_MESSAGE: usize = 256 << 20;

/// Calls `peer`'s unary handler `name` through `connection` (forwarded unless `peer` is the node).
pub async fn call_unary(
    connection: &Connection,
    peer: PeerId,
    name: &str,
    request: Vec<u8>,
    limit: Duration,
) -> Result<Vec<u8>> {
    check_name(name)?;
    timeout(limit, &format!("{name} on {peer}"), async {
        let (call, call_id) = unary_call(&peer, name, request);
        let mut envelope = Vec::new();
        append_unary_envelope(&call, &mut envelope);
        let mut stream = connection.open_to(peer, name, &envelope).await?;
        let reply = read_unary_envelope(&mut stream, MAX_MESSAGE).await?;
        let _ = stream.close().await;
        unary_reply(reply, &call_id)
    })
    .await
}

/// One streaming call in progress: requests go out as frames, replies come back as frames.
pub struct StreamCall {
    stream: Option<SubstreamBox>,
    peer: PeerId,
}

impl StreamCall {
    /// Opens `peer`'s streaming handler `name` through `connection`.
    pub async fn open(connection: &Connection, peer: PeerId, name: &str, limit: Duration) -> Result<StreamCall> {
        check_name(name)?;
        let stream = timeout(limit, &format!("opening {name} on {peer}"), connection.open_to(peer, name, &[])).await?;
        Ok(StreamCall { stream: Some(stream), peer })
    }

    fn stream(&mut self) -> Result<&mut SubstreamBox> {
        self.stream.as_mut().ok_or_else(|| Error::new(ErrorKind::Closed, format!("the call to {} is over", self.peer)))
    }

    /// Sends one request, waiting at most `limit` for the stream to take it.
    pub async fn send(&mut self, request: &[u8], limit: Duration) -> Result<()> {
        let peer = self.peer;
        let stream = self.stream()?;
        timeout(limit, &format!("sending a request to {peer}"), write_frame(stream, FRAME_MESSAGE, request)).await
    }

    /// The next reply, waiting at most `limit`; an error if the handler failed or the stream ended.
    pub async fn receive(&mut self, limit: Duration) -> Result<Vec<u8>> {
        let peer = self.peer;
        let stream = self.stream()?;
        let frame = timeout(limit, &format!("waiting for a reply from {peer}"), async {
            let mut first = [0u8; 1];
            if stream.read(&mut first).await.map_err(io_error)? == 0 {
                return Err(Error::new(ErrorKind::Network, format!("{peer} ended the call")));
            }
            read_frame_rest(stream, first[0], MAX_MESSAGE).await
        })
        .await?;
        match frame {
            Frame::Message(bytes) => Ok(bytes),
            Frame::Error(text) => Err(remote_error(&text)),
        }
    }

    /// Ends the call as a caller does: the end-of-stream frame, then waits (at most `limit`) for
    /// the handler to end its side.
    pub async fn finish(&mut self, limit: Duration) {
        let Some(mut stream) = self.stream.take() else { return };
        let _ = timeout(limit, "closing a call", async {
            write_all(&mut stream, &END_OF_STREAM).await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await.map_err(io_error)? > 0 {}
            stream.close().await.map_err(io_error)
        })
        .await;
    }
}
