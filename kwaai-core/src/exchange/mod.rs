//! Direct tensor exchange between peers: a node pushes a named [`Tensor`] to another, whose
//! handler receives it.
//!
//! The wire is hivemind RPC with runtime.proto messages; any hivemind peer can take part.
//! * [`TENSOR_PUSH`] (unary): one `ExpertRequest` with `uid` = the tensor's name, the tensors and
//!   metadata of [`crate::tensor::training`]'s wire form; the reply is an empty `ExpertResponse`.
//! * [`TENSOR_PUSH_STREAM`] (stream), used when the serialized tensors exceed
//!   [`STREAM_THRESHOLD`] bytes: the same request split as hivemind's `split_for_streaming` does,
//!   one part per `ExpertRequest`, `uid` on every message and `metadata` on the first; one empty
//!   `ExpertResponse` answers. The receiver joins parts under its [`DecodeLimits`] as they arrive.
//!
//! Compression is chosen per call ([`Compression`]); the schemes with error feedback keep one
//! residual per (receiving peer, tensor name) in the sending node.

mod feedback;
mod receive;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;

use crate::tensor::stream::PETALS_CHUNK_SIZE;
use crate::tensor::training::{encode_push, Compression};
use crate::tensor::{DecodeLimits, Tensor};
use crate::wire::runtime::{self, ExpertRequest, ExpertResponse};
use crate::{Error, ErrorKind, Node, PeerId, Result};

/// The handle name of the unary tensor push RPC.
pub const TENSOR_PUSH: &str = "kwaai.TensorExchange.rpc_push";

/// The handle name of the streaming tensor push RPC.
pub const TENSOR_PUSH_STREAM: &str = "kwaai.TensorExchange.rpc_push_stream";

/// Pushes whose serialized tensors hold more bytes than this are streamed (hivemind's
/// `MAX_UNARY_PAYLOAD_SIZE`, half the 4 MiB unary message limit).
pub const STREAM_THRESHOLD: usize = 2 << 20;

/// The buffer bytes per stream part (hivemind MoE's and Petals' 4 MiB).
pub const PUSH_CHUNK_SIZE: usize = PETALS_CHUNK_SIZE;

/// The longest tensor name accepted, in bytes.
pub const MAX_TENSOR_NAME: usize = 1024;

/// A tensor received from a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedTensor {
    /// Who pushed it.
    pub peer: PeerId,
    /// The name the sender gave it.
    pub name: String,
    /// The tensor.
    pub tensor: Tensor,
}

impl Node {
    /// Sends `tensor` under `name` to `peer`, compressed as `compression` says, and waits until
    /// its handler has taken it. Large tensors are streamed. With error feedback, what this call
    /// leaves unsent is added to the next push of `name` to `peer`; a failed push leaves that
    /// residual as it was. Fails with [`ErrorKind::Protocol`] when the peer has no tensor
    /// handler or refuses the tensor.
    pub fn push_tensor(
        &self,
        peer: PeerId,
        name: &str,
        tensor: &Tensor,
        compression: Compression,
        timeout: Duration,
    ) -> Result<()> {
        check_name(name)?;
        let key = (self.peer_id(), peer, name.to_owned());
        let residual = if compression.uses_feedback() { feedback::take(&key) } else { None };
        let encoded = match encode_push(&tensor.view(), compression, residual.as_deref()) {
            Ok(encoded) => encoded,
            Err(e) => {
                feedback::restore(key, residual);
                return Err(e);
            }
        };
        let bytes: usize = encoded.tensors.iter().map(|t| t.buffer.len()).sum();
        let sent = if bytes > STREAM_THRESHOLD {
            self.push_stream(peer, name, encoded.tensors, encoded.metadata, timeout)
        } else {
            let request = ExpertRequest { uid: name.to_owned(), tensors: encoded.tensors, metadata: encoded.metadata };
            self.call_unary(peer, TENSOR_PUSH, &request.encode_to_vec(), timeout).and_then(|reply| check_reply(&reply))
        };
        match sent {
            Ok(()) => feedback::restore(key, encoded.residual),
            Err(_) => feedback::restore(key, residual),
        }
        tracing::debug!(%peer, name, bytes, ok = sent.is_ok(), "tensor push");
        sent
    }

    /// Forgets the error-feedback residuals of every push this node made.
    pub fn clear_push_feedback(&self) {
        feedback::clear(self.peer_id());
    }

    /// Receives the tensors that peers push to this node (unary and streamed): `handler` runs on
    /// the node's runtime for each one, and its error is returned to the sender. Replaces an
    /// earlier handler; tensors larger than `limits` allow are refused, streamed ones as soon as
    /// a part shows it.
    pub fn set_tensor_handler<F>(&self, limits: DecodeLimits, handler: F) -> Result<()>
    where
        F: Fn(ReceivedTensor) -> Result<()> + Send + Sync + 'static,
    {
        let handler: receive::Handler = Arc::new(handler);
        self.clear_tensor_handler()?;
        let unary = Arc::clone(&handler);
        self.add_unary_handler(TENSOR_PUSH, move |peer, request| {
            let handler = Arc::clone(&unary);
            async move {
                let received = receive::decode_unary(peer, &request, &limits)?;
                handler(received)?;
                Ok(ExpertResponse::default().encode_to_vec())
            }
        })?;
        self.add_stream_handler(TENSOR_PUSH_STREAM, move |peer, requests| {
            let handler = Arc::clone(&handler);
            futures::stream::once(async move {
                let received = receive::join_stream(peer, requests, limits).await?;
                tokio::task::spawn_blocking(move || handler(received))
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Internal, "the tensor handler failed", e))??;
                Ok(ExpertResponse::default().encode_to_vec())
            })
        })
    }

    /// Stops receiving pushed tensors; returns whether a handler was set.
    pub fn clear_tensor_handler(&self) -> Result<bool> {
        let unary = self.remove_handler(TENSOR_PUSH)?;
        Ok(self.remove_handler(TENSOR_PUSH_STREAM)? || unary)
    }

    fn push_stream(
        &self,
        peer: PeerId,
        name: &str,
        tensors: Vec<runtime::Tensor>,
        metadata: Vec<u8>,
        timeout: Duration,
    ) -> Result<()> {
        let requests = stream_requests(name.to_owned(), tensors, metadata, PUSH_CHUNK_SIZE);
        let rpc = self.rpc()?;
        self.runtime_handle()?.block_on(async {
            let mut replies =
                rpc.call_stream(peer, TENSOR_PUSH_STREAM, futures::stream::iter(requests), timeout).await?;
            let mut answered = false;
            while let Some(reply) = replies.next().await {
                check_reply(&reply?)?;
                answered = true;
            }
            if !answered {
                return Err(Error::new(ErrorKind::Protocol, "the tensor stream ended without a reply"));
            }
            Ok(())
        })
    }
}

/// The serialized stream messages of a push, made one at a time as the stream is read: each
/// tensor split into parts of `chunk` buffer bytes (a zero-byte tensor still gives one part).
fn stream_requests(
    name: String,
    tensors: Vec<runtime::Tensor>,
    metadata: Vec<u8>,
    chunk: usize,
) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let tensors = Arc::new(tensors);
    let parts: Vec<(usize, usize)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(t, msg)| (0..msg.buffer.len().div_ceil(chunk).max(1)).map(move |c| (t, c * chunk)))
        .collect();
    let mut metadata = Some(metadata);
    parts.into_iter().map(move |(t, start)| {
        let msg = &tensors[t];
        let bytes = msg.buffer[start..(start + chunk).min(msg.buffer.len())].to_vec();
        let part = if start == 0 {
            runtime::Tensor {
                buffer: bytes,
                size: msg.size.clone(),
                requires_grad: msg.requires_grad,
                dtype: msg.dtype.clone(),
                compression: msg.compression,
                chunks: i32::try_from(msg.buffer.len().div_ceil(chunk)).unwrap_or(i32::MAX),
            }
        } else {
            runtime::Tensor { buffer: bytes, ..Default::default() }
        };
        ExpertRequest { uid: name.clone(), tensors: vec![part], metadata: metadata.take().unwrap_or_default() }
            .encode_to_vec()
    })
}

fn check_reply(reply: &[u8]) -> Result<()> {
    ExpertResponse::decode(reply)
        .map(drop)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding a tensor push reply", e))
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TENSOR_NAME {
        return Err(Error::invalid_argument(format!(
            "a tensor name must have 1 to {MAX_TENSOR_NAME} bytes, not {}",
            name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::stream::join;
    use crate::tensor::{encode, CompressionType, DType};

    #[test]
    fn stream_messages_split_like_hivemind_and_join_back() {
        let bytes: Vec<u8> = (0..40u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let tensor = Tensor::from_bytes(DType::F32, vec![4, 10], &bytes).unwrap();
        let empty = Tensor::from_bytes(DType::F32, vec![0], &[]).unwrap();
        let wire = vec![
            encode(&tensor.view(), CompressionType::None).unwrap(),
            encode(&empty.view(), CompressionType::None).unwrap(),
        ];
        let messages: Vec<ExpertRequest> = stream_requests("w".into(), wire, b"meta".to_vec(), 64)
            .map(|m| ExpertRequest::decode(m.as_slice()).unwrap())
            .collect();
        assert_eq!(messages.len(), 4);
        assert!(messages.iter().all(|m| m.uid == "w" && m.tensors.len() == 1));
        assert_eq!(messages[0].metadata, b"meta");
        assert!(messages[1..].iter().all(|m| m.metadata.is_empty()));
        assert_eq!((messages[0].tensors[0].chunks, messages[1].tensors[0].dtype.as_str()), (3, ""));
        let parts = messages.into_iter().flat_map(|m| m.tensors);
        assert_eq!(join(parts, &DecodeLimits::default()).unwrap(), vec![tensor, empty]);
    }
}
