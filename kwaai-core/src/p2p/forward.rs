//! Serving [`FORWARD_PROTOCOL`]: a node that listens on WebSockets pipes a caller's stream (a
//! browser's, typically) to a handler of any peer it can reach, Python p2pd peers included.
//!
//! The node reads the caller's [`ForwardRequest`], opens a stream to the target and negotiates the
//! handler there, answers with a [`ForwardResponse`], then copies bytes both ways. A side that
//! closes its writing half has the other side's writing half closed; an error on either side drops
//! both streams. Nothing is half-closed toward the target before the caller does so itself (p2pd
//! would take that for a cancellation).

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use prost::Message;

use super::framing::{read_length_prefixed, write_all};
use super::muxer::RpcStream;
use super::rpc::{Rpc, RpcLimits};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::forward::{
    check_forwarded_protocol, ForwardRequest, ForwardResponse, FORWARD_PROTOCOL, MAX_FORWARD_REQUEST,
};

/// How long reaching the target (dialing it, opening the stream, negotiating) may take.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one side may keep its stream open after the other ended its output.
const LINGER: Duration = Duration::from_secs(10);
/// Bytes copied per read.
const CHUNK: usize = 64 << 10;

/// Serves one inbound `kwaai.forward` stream from `caller`; `local` is this node's peer ID.
pub(super) async fn serve(rpc: Rpc, local: PeerId, caller: PeerId, mut stream: RpcStream, limits: RpcLimits) {
    let answer = stream.take_answer();
    let reached = reach(&rpc, local, &mut stream, limits).await;
    let (target, response) = match reached {
        Ok((peer, name, target)) => {
            tracing::debug!(%caller, %peer, name, "forwarding a stream");
            (Some(target), ForwardResponse::default())
        }
        Err(e) => {
            tracing::debug!(%caller, "not forwarding: {e}");
            (None, ForwardResponse { error: e.message().to_owned() })
        }
    };
    let mut out = answer;
    response.encode_length_delimited(&mut out).expect("a Vec grows as needed");
    if write_all(&mut stream, &out).await.is_err() {
        return;
    }
    match target {
        Some(target) => {
            if let Err(e) = pipe(stream, target, limits.handler_timeout).await {
                tracing::debug!(%caller, "forwarded stream ended with an error: {e}");
            }
        }
        None => {
            let _ = stream.close().await;
        }
    }
}

/// Reads the caller's request and opens the stream it asks for.
async fn reach(
    rpc: &Rpc,
    local: PeerId,
    stream: &mut RpcStream,
    limits: RpcLimits,
) -> Result<(PeerId, String, RpcStream)> {
    let request =
        tokio::time::timeout(limits.read_timeout, read_length_prefixed(stream, MAX_FORWARD_REQUEST))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, "the caller stalled while sending its forward request"))??;
    let request = ForwardRequest::decode(&request[..])
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad ForwardRequest: {e}")))?;
    let peer = PeerId::from_bytes(&request.peer)
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "bad target peer ID", e))?;
    check_forwarded_protocol(&request.protocol).map_err(Error::invalid_argument)?;
    if peer == local {
        return Err(Error::invalid_argument(format!(
            "call {} on this node directly, not through {FORWARD_PROTOCOL}",
            request.protocol
        )));
    }
    let target = tokio::time::timeout(REACH_TIMEOUT, rpc.open_handler(peer, &request.protocol))
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, format!("{peer} not reached within {REACH_TIMEOUT:?}")))??;
    Ok((peer, request.protocol, target))
}

/// Copies bytes both ways until both sides have ended their output (or either fails). Once one
/// side has, the other gets [`LINGER`] to follow, or `limit` if the caller's side was first.
async fn pipe(caller: RpcStream, target: RpcStream, limit: Duration) -> Result<()> {
    let (caller_in, caller_out) = caller.split();
    let (target_in, target_out) = target.split();
    let up = copy_then_close(caller_in, target_out);
    let down = copy_then_close(target_in, caller_out);
    futures::pin_mut!(up, down);
    let (rest, grace) = match futures::future::select(up, down).await {
        futures::future::Either::Left((up, down)) => {
            up?;
            (futures::future::Either::Left(down), limit)
        }
        futures::future::Either::Right((down, up)) => {
            down?;
            (futures::future::Either::Right(up), LINGER)
        }
    };
    match tokio::time::timeout(grace, rest).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::new(ErrorKind::Timeout, "the other side did not end its output")),
    }
}

/// Copies `from` into `to`, flushing after every read (calls are interactive), then closes `to`.
async fn copy_then_close<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut from: R, mut to: W) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| Error::with_source(ErrorKind::Network, "reading", e))?;
        if n == 0 {
            break;
        }
        write_all(&mut to, &buf[..n]).await?;
    }
    to.close().await.map_err(|e| Error::with_source(ErrorKind::Network, "closing", e))
}
