//! Reading pushed tensors: one unary request, or a stream of parts joined under the receiver's
//! limits as they arrive.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message;

use super::{check_name, ReceivedTensor};
use crate::p2p::RequestStream;
use crate::tensor::stream::StreamJoiner;
use crate::tensor::training::decode_push;
use crate::tensor::{decode, DecodeLimits};
use crate::wire::runtime::ExpertRequest;
use crate::{Error, ErrorKind, PeerId, Result};

/// The user's tensor handler.
pub(super) type Handler = Arc<dyn Fn(ReceivedTensor) -> Result<()> + Send + Sync>;

/// The most tensors one push carries (top-k: values and indices).
const MAX_TENSORS: usize = 2;

fn decode_request(bytes: &[u8]) -> Result<ExpertRequest> {
    ExpertRequest::decode(bytes).map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding a tensor push", e))
}

/// Decodes a unary push.
pub(super) fn decode_unary(peer: PeerId, request: &[u8], limits: &DecodeLimits) -> Result<ReceivedTensor> {
    let request = decode_request(request)?;
    check_name(&request.uid)?;
    if request.tensors.len() > MAX_TENSORS {
        return Err(Error::invalid_argument(format!("a tensor push carries {} tensors", request.tensors.len())));
    }
    let tensors = request.tensors.iter().map(|t| decode(t, limits)).collect::<Result<Vec<_>>>()?;
    Ok(ReceivedTensor { peer, name: request.uid, tensor: decode_push(tensors, &request.metadata, limits)? })
}

/// Reads a streamed push: the name and metadata of its first message, every part joined as it
/// comes (a part past what its header allows ends the call at once).
pub(super) async fn join_stream(
    peer: PeerId,
    mut requests: RequestStream,
    limits: DecodeLimits,
) -> Result<ReceivedTensor> {
    let mut first: Option<(String, Vec<u8>)> = None;
    let mut joiner = StreamJoiner::new(limits);
    let mut tensors = Vec::new();
    let mut started = 0usize;
    while let Some(message) = requests.next().await {
        let message = message?;
        let request = decode_request(&message)?;
        match &first {
            None => {
                check_name(&request.uid)?;
                first = Some((request.uid, request.metadata));
            }
            Some((name, _)) if *name != request.uid => {
                return Err(Error::invalid_argument("the parts of a tensor push name different tensors"))
            }
            Some(_) => {}
        }
        for part in request.tensors {
            started += usize::from(!part.dtype.is_empty());
            if started > MAX_TENSORS {
                return Err(Error::invalid_argument("a tensor push carries more than two tensors"));
            }
            tensors.extend(joiner.push(part)?);
        }
    }
    let (name, metadata) = first.ok_or_else(|| Error::new(ErrorKind::Protocol, "an empty tensor push stream"))?;
    let tensor = tokio::task::spawn_blocking(move || {
        tensors.extend(joiner.finish()?);
        decode_push(tensors, &metadata, &limits)
    })
    .await
    .map_err(|e| Error::with_source(ErrorKind::Internal, "decoding a streamed tensor failed", e))??;
    Ok(ReceivedTensor { peer, name, tensor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{encode, CompressionType, DType, Tensor};

    fn push_bytes(name: &str, tensors: Vec<crate::wire::runtime::Tensor>) -> Vec<u8> {
        ExpertRequest { uid: name.into(), tensors, metadata: Vec::new() }.encode_to_vec()
    }

    #[test]
    fn a_push_decodes_to_its_name_and_tensor() {
        let tensor = Tensor::from_bytes(DType::F32, vec![2], &[0, 0, 128, 63, 0, 0, 0, 64]).unwrap();
        let wire = encode(&tensor.view(), CompressionType::None).unwrap();
        let peer = PeerId::random();
        let got = decode_unary(peer, &push_bytes("w", vec![wire]), &DecodeLimits::default()).unwrap();
        assert_eq!(got, ReceivedTensor { peer, name: "w".into(), tensor });
    }

    #[test]
    fn pushes_without_one_tensor_or_a_name_are_refused() {
        let peer = PeerId::random();
        let limits = DecodeLimits::default();
        let err = decode_unary(peer, &push_bytes("w", vec![]), &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let t = encode(&Tensor::from_bytes(DType::U8, vec![1], &[7]).unwrap().view(), CompressionType::None).unwrap();
        let err = decode_unary(peer, &push_bytes("", vec![t]), &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(decode_unary(peer, b"\xff\xff", &limits).unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn a_stream_over_the_limits_is_refused_at_its_header() {
        let big = Tensor::from_bytes(DType::U8, vec![8], &[1; 8]).unwrap();
        let wire = encode(&big.view(), CompressionType::None).unwrap();
        let requests = futures::stream::iter(vec![Ok(push_bytes("w", vec![wire]))]).boxed();
        let limits = DecodeLimits { max_elements: 4, ..DecodeLimits::default() };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = runtime.block_on(join_stream(PeerId::random(), requests, limits)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }
}
