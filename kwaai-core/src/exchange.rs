//! Direct tensor exchange between peers: a node pushes a named [`Tensor`] to another, whose
//! handler receives it.
//!
//! The wire is a hivemind unary RPC, [`TENSOR_PUSH`], whose request is a runtime.proto
//! `ExpertRequest` (`uid` = the tensor's name, one serialized tensor, no compression) and whose
//! reply is an empty `ExpertResponse`; any hivemind peer can push with
//! `p2p.call_protobuf_handler(peer, "kwaai.TensorExchange.rpc_push", request, ExpertResponse)`.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::tensor::{decode, encode, CompressionType, DecodeLimits, Tensor};
use crate::wire::runtime::{ExpertRequest, ExpertResponse};
use crate::{Error, ErrorKind, Node, PeerId, Result};

/// The handle name of the tensor push RPC.
pub const TENSOR_PUSH: &str = "kwaai.TensorExchange.rpc_push";

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
    /// Sends `tensor` under `name` to `peer` and waits until its handler has taken it. Fails with
    /// [`ErrorKind::Protocol`] when the peer has no tensor handler or refuses the tensor.
    pub fn push_tensor(&self, peer: PeerId, name: &str, tensor: &Tensor, timeout: Duration) -> Result<()> {
        check_name(name)?;
        let serialized = encode(&tensor.view(), CompressionType::None)?;
        let request = ExpertRequest { uid: name.to_owned(), tensors: vec![serialized], metadata: Vec::new() };
        let reply = self.call_unary(peer, TENSOR_PUSH, &request.encode_to_vec(), timeout)?;
        ExpertResponse::decode(reply.as_slice())
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding a tensor push reply", e))?;
        Ok(())
    }

    /// Receives the tensors that peers push to this node: `handler` runs on the node's runtime for
    /// each one, and its error is returned to the sender. Replaces an earlier handler; tensors
    /// larger than `limits` allow are refused.
    pub fn set_tensor_handler<F>(&self, limits: DecodeLimits, handler: F) -> Result<()>
    where
        F: Fn(ReceivedTensor) -> Result<()> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        self.remove_handler(TENSOR_PUSH)?;
        self.add_unary_handler(TENSOR_PUSH, move |peer, request| {
            let handler = Arc::clone(&handler);
            async move {
                let received = decode_push(peer, &request, &limits)?;
                handler(received)?;
                Ok(ExpertResponse::default().encode_to_vec())
            }
        })
    }

    /// Stops receiving pushed tensors; returns whether a handler was set.
    pub fn clear_tensor_handler(&self) -> Result<bool> {
        self.remove_handler(TENSOR_PUSH)
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TENSOR_NAME {
        return Err(Error::invalid_argument(format!(
            "a tensor name must have 1 to {MAX_TENSOR_NAME} bytes, not {}",
            name.len()
        )));
    }
    Ok(())
}

fn decode_push(peer: PeerId, request: &[u8], limits: &DecodeLimits) -> Result<ReceivedTensor> {
    let request = ExpertRequest::decode(request)
        .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding a tensor push", e))?;
    check_name(&request.uid)?;
    let [tensor] = <[_; 1]>::try_from(request.tensors)
        .map_err(|t: Vec<_>| Error::invalid_argument(format!("a tensor push carries one tensor, not {}", t.len())))?;
    Ok(ReceivedTensor { peer, name: request.uid, tensor: decode(&tensor, limits)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn push_bytes(name: &str, tensors: Vec<crate::wire::runtime::Tensor>) -> Vec<u8> {
        ExpertRequest { uid: name.into(), tensors, metadata: Vec::new() }.encode_to_vec()
    }

    #[test]
    fn a_push_decodes_to_its_name_and_tensor() {
        let tensor = Tensor::from_bytes(DType::F32, vec![2], &[0, 0, 128, 63, 0, 0, 0, 64]).unwrap();
        let wire = encode(&tensor.view(), CompressionType::None).unwrap();
        let peer = PeerId::random();
        let got = decode_push(peer, &push_bytes("w", vec![wire]), &DecodeLimits::default()).unwrap();
        assert_eq!(got, ReceivedTensor { peer, name: "w".into(), tensor });
    }

    #[test]
    fn pushes_without_one_tensor_or_a_name_are_refused() {
        let peer = PeerId::random();
        let limits = DecodeLimits::default();
        let err = decode_push(peer, &push_bytes("w", vec![]), &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let t = encode(&Tensor::from_bytes(DType::U8, vec![1], &[7]).unwrap().view(), CompressionType::None).unwrap();
        let err = decode_push(peer, &push_bytes("", vec![t]), &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(decode_push(peer, b"\xff\xff", &limits).unwrap_err().kind(), ErrorKind::Protocol);
    }
}
