//! Reading and writing hivemind RPC messages on a stream: unary envelopes, streaming frames and
//! the dialer's side of multistream-select. Every reader is bounded in size; the encodings live
//! in [`crate::wire::p2pd`] and [`super::multistream`]. Pure (generic over `futures` I/O, no
//! runtime): the browser client uses it as it is.

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message;

use super::multistream::{decode_message, HEADER, MAX_MESSAGE_LEN, NOT_AVAILABLE};
use super::spare_buffers;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::forward::{ForwardRequest, ForwardResponse, MAX_FORWARD_REQUEST};
use crate::wire::p2pd::{
    call_unary_response, decode_envelope_length, decode_frame_header, decode_rpc_error, decode_split_unary_envelope,
    encode_frame_header, persistent_connection_request as request, split_unary_envelope, CallUnaryRequest,
    CallUnaryResponse, EnvelopeSplit, PersistentConnectionRequest, FRAME_ERROR, FRAME_HEADER_LEN, SPLIT_MIN_BODY,
};

/// The length of a unary call ID (a UUID).
pub const CALL_ID_LEN: usize = 16;

/// One streaming frame.
pub enum Frame {
    /// A message of the call.
    Message(Vec<u8>),
    /// The handler's error text.
    Error(String),
}

/// Writes `bytes` and flushes.
pub async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<()> {
    writer.write_all(bytes).await.map_err(io_error)?;
    writer.flush().await.map_err(io_error)
}

/// Payload bytes that go out in the same write as a frame's header.
const FIRST_WRITE_PAYLOAD: usize = 16 << 10;

/// Writes one streaming frame. The header and the start of the payload go out in one write, so
/// that a small message travels as one yamux frame rather than a 9-byte one and the rest.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, marker: u8, payload: &[u8]) -> Result<()> {
    let (head, rest) = payload.split_at(payload.len().min(FIRST_WRITE_PAYLOAD));
    let mut first = Vec::with_capacity(FRAME_HEADER_LEN + head.len());
    first.extend_from_slice(&encode_frame_header(marker, payload.len()));
    first.extend_from_slice(head);
    writer.write_all(&first).await.map_err(io_error)?;
    write_all(writer, rest).await
}

#[cfg(feature = "native")]
pub(crate) async fn write_error_frame<W: AsyncWrite + Unpin>(writer: &mut W, text: &str) -> Result<()> {
    let payload = crate::wire::p2pd::RpcError { message: Some(text.to_owned()) }.encode_to_vec();
    write_frame(writer, FRAME_ERROR, &payload).await
}

/// Reads one streaming frame; `Ok(None)` on a clean end of stream between frames. Waiting for a
/// frame is unbounded; once its first byte is in, the rest must follow within `rest_timeout`.
#[cfg(feature = "native")]
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
    rest_timeout: std::time::Duration,
) -> Result<Option<Frame>> {
    let mut first = [0u8; 1];
    if reader.read(&mut first).await.map_err(io_error)? == 0 {
        return Ok(None);
    }
    tokio::time::timeout(rest_timeout, read_frame_rest(reader, first[0], max_len))
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "the peer stalled in the middle of a frame"))?
        .map(Some)
}

/// Reads the rest of a streaming frame whose first byte, `marker`, was already read.
pub async fn read_frame_rest<R: AsyncRead + Unpin>(reader: &mut R, marker: u8, max_len: usize) -> Result<Frame> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = marker;
    reader.read_exact(&mut header[1..]).await.map_err(io_error)?;
    let header = decode_frame_header(&header, max_len).map_err(|e| Error::new(ErrorKind::Protocol, e))?;
    let mut payload = spare_buffers::for_reading(header.len);
    reader.read_exact(&mut payload).await.map_err(io_error)?;
    if header.marker == FRAME_ERROR {
        let text = decode_rpc_error(&payload).map_err(|e| Error::new(ErrorKind::Protocol, e))?;
        return Ok(Frame::Error(text));
    }
    Ok(Frame::Message(payload))
}

/// Reads one unary envelope of at most `max_len` bytes.
pub async fn read_unary_envelope<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<PersistentConnectionRequest> {
    let len = read_length_prefix(reader, max_len).await?;
    let mut head = Vec::new();
    if len >= SPLIT_MIN_BODY {
        // A large call or reply: its data goes into a buffer of its own, whole and at its start.
        loop {
            match split_unary_envelope(&head, len) {
                EnvelopeSplit::NeedMore(n) => {
                    let at = head.len();
                    head.resize(at + n, 0);
                    reader.read_exact(&mut head[at..]).await.map_err(io_error)?;
                }
                EnvelopeSplit::Split(at) => {
                    let mut data = spare_buffers::for_reading(at.data_len);
                    reader.read_exact(&mut data).await.map_err(io_error)?;
                    return decode_split_unary_envelope(&head, at, data.into())
                        .map_err(|e| Error::new(ErrorKind::Protocol, e));
                }
                EnvelopeSplit::Whole => break,
            }
        }
    }
    let mut body = spare_buffers::for_reading(len);
    body[..head.len()].copy_from_slice(&head);
    reader.read_exact(&mut body[head.len()..]).await.map_err(io_error)?;
    // Decoded from `Bytes`, the data field is a view of `body` rather than two fresh copies.
    PersistentConnectionRequest::decode(Bytes::from(body))
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad PersistentConnectionRequest: {e}")))
}

/// Reads one `uvarint(len) ‖ body` message of at most `max_len` bytes, without reading past it.
pub async fn read_length_prefixed<R: AsyncRead + Unpin>(reader: &mut R, max_len: usize) -> Result<Vec<u8>> {
    let len = read_length_prefix(reader, max_len).await?;
    let mut body = spare_buffers::for_reading(len);
    reader.read_exact(&mut body).await.map_err(io_error)?;
    Ok(body)
}

/// Reads a message's `uvarint` length prefix, refusing lengths over `max_len`.
async fn read_length_prefix<R: AsyncRead + Unpin>(reader: &mut R, max_len: usize) -> Result<usize> {
    let mut prefix = Vec::with_capacity(10);
    loop {
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte).await.map_err(io_error)?;
        prefix.push(byte[0]);
        if let Some((len, _)) =
            decode_envelope_length(&prefix, max_len).map_err(|e| Error::new(ErrorKind::Protocol, e))?
        {
            return Ok(len);
        }
    }
}

/// Reads the listener's header and its answer to our proposal of `name`.
pub async fn read_negotiation_answer<R: AsyncRead + Unpin>(reader: &mut R, name: &str) -> Result<()> {
    let header = read_multistream_message(reader).await?;
    if header != HEADER {
        return Err(Error::new(ErrorKind::Protocol, "peer did not answer with the multistream header"));
    }
    let answer = read_multistream_message(reader).await?;
    if answer == name.as_bytes() {
        Ok(())
    } else if answer == NOT_AVAILABLE {
        Err(Error::new(ErrorKind::Protocol, format!("protocol not supported: {name}")))
    } else {
        Err(Error::new(ErrorKind::Protocol, format!("peer answered {:?} to {name}", String::from_utf8_lossy(&answer))))
    }
}

async fn read_multistream_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(32);
    loop {
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte).await.map_err(io_error)?;
        buf.push(byte[0]);
        if let Some((line, _)) = decode_message(&buf)? {
            return Ok(line.to_vec());
        }
    }
}

/// Appends, after a proposal of [`crate::wire::forward::FORWARD_PROTOCOL`], the length-delimited
/// request that asks the node to forward the stream to `peer`'s handler `name`.
pub fn append_forward_request(peer: &libp2p::PeerId, name: &str, out: &mut Vec<u8>) {
    let request = ForwardRequest { peer: peer.to_bytes(), protocol: name.to_owned() };
    request.encode_length_delimited(out).expect("a Vec grows as needed");
}

/// Reads the forwarding node's answer to [`append_forward_request`]: `Ok` once the stream is a
/// pipe to `peer`'s handler `name`, else a network error with the node's reason.
pub async fn read_forward_answer<R: AsyncRead + Unpin>(
    reader: &mut R,
    peer: &libp2p::PeerId,
    name: &str,
) -> Result<()> {
    let answer = read_length_prefixed(reader, MAX_FORWARD_REQUEST).await?;
    let answer = ForwardResponse::decode(&answer[..])
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad ForwardResponse: {e}")))?;
    if answer.error.is_empty() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Network, format!("forwarding {name} to {peer}: {}", answer.error)))
    }
}

/// An I/O error of an RPC stream (an early end of stream is a protocol error).
pub fn io_error(e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof { ErrorKind::Protocol } else { ErrorKind::Network };
    Error::with_source(kind, "rpc stream", e)
}

/// Hivemind handler names: non-empty, no leading `/` (those belong to libp2p protocols), no
/// newline, short enough for one multistream message.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('/') || name.contains('\n') || name.len() + 1 > MAX_MESSAGE_LEN {
        return Err(Error::invalid_argument(format!(
            "handler name {name:?} must be non-empty, without a leading '/' or a newline"
        )));
    }
    Ok(())
}

/// Appends `message` as a unary envelope (`uvarint(len) ‖ message`) to `out`; returns its length.
pub fn append_unary_envelope(message: &PersistentConnectionRequest, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.reserve(message.encoded_len() + 10);
    message.encode_length_delimited(out).expect("a Vec grows as needed");
    out.len() - start
}

/// Appends the head of `message`'s unary envelope to `out`: everything up to its big field (a
/// call's request or a handler's reply), which comes last in the encoding. Returns the envelope's
/// length and that field, to be written after the head: a megabyte reply is then not copied into
/// a buffer of its own. A message whose big field is small, or that has none, goes into `out`
/// whole.
pub fn append_unary_envelope_head(mut message: PersistentConnectionRequest, out: &mut Vec<u8>) -> (usize, Bytes) {
    use prost::encoding::{bytes as bytes_field, encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    // Field tags, as `crate::wire::p2pd` declares them.
    const CALL_UNARY: u32 = 3;
    const UNARY_RESPONSE: u32 = 4;
    const CALL_DATA: u32 = 3;
    const RESPONSE: u32 = 1;
    // The oneof's tag, the big field's tag inside it, and the nested fields before the big one.
    let mut nested_head = Vec::new();
    let (tag, data_tag, data) = match &mut message.message {
        Some(request::Message::CallUnary(call)) => {
            bytes_field::encode(1, &call.peer, &mut nested_head);
            prost::encoding::string::encode(2, &call.proto, &mut nested_head);
            (CALL_UNARY, CALL_DATA, std::mem::take(&mut call.data))
        }
        Some(request::Message::UnaryResponse(CallUnaryResponse {
            result: Some(call_unary_response::Result::Response(reply)),
        })) => (UNARY_RESPONSE, RESPONSE, std::mem::take(reply)),
        _ => return (append_unary_envelope(&message, out), Bytes::new()),
    };
    let data_len = data.len() as u64;
    let nested_len = nested_head.len() + key_len(data_tag) + encoded_len_varint(data_len) + data.len();
    let outer_len = bytes_field::encoded_len(1, &message.call_id)
        + key_len(tag)
        + encoded_len_varint(nested_len as u64)
        + nested_len;
    let start = out.len();
    encode_varint(outer_len as u64, out);
    bytes_field::encode(1, &message.call_id, out);
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(nested_len as u64, out);
    out.extend_from_slice(&nested_head);
    encode_key(data_tag, WireType::LengthDelimited, out);
    encode_varint(data_len, out);
    if data.len() <= FIRST_WRITE_PAYLOAD {
        // Small enough to copy: the envelope stays one write.
        out.extend_from_slice(&data);
        return (out.len() - start, Bytes::new());
    }
    (out.len() - start + data.len(), data)
}

/// A fresh call ID: 16 random bytes shaped as a UUID4, as hivemind makes them.
pub fn new_call_id() -> Vec<u8> {
    let mut id: [u8; CALL_ID_LEN] = rand::random();
    id[6] = (id[6] & 0x0f) | 0x40; // UUID version 4
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
    id.to_vec()
}

/// A unary call of `peer`'s handler `name` with `request`: the `PersistentConnectionRequest` to
/// send (after the proposal of `name`) and its call ID.
pub fn unary_call(peer: &libp2p::PeerId, name: &str, request: Vec<u8>) -> (PersistentConnectionRequest, Vec<u8>) {
    let call_id = new_call_id();
    let call = PersistentConnectionRequest {
        call_id: call_id.clone(),
        message: Some(request::Message::CallUnary(CallUnaryRequest {
            peer: peer.to_bytes(),
            proto: name.to_owned(),
            data: request.into(),
        })),
    };
    (call, call_id)
}

/// The reply bytes of a unary call from the envelope the handler answered; its error (or a reply
/// to another call) as an [`ErrorKind::Protocol`] error.
pub fn unary_reply(reply: PersistentConnectionRequest, call_id: &[u8]) -> Result<Vec<u8>> {
    if reply.call_id != call_id {
        return Err(Error::new(ErrorKind::Protocol, "reply carries another call ID"));
    }
    match reply.message {
        Some(request::Message::UnaryResponse(CallUnaryResponse { result: Some(result) })) => match result {
            call_unary_response::Result::Response(bytes) => Ok(into_vec(bytes)),
            call_unary_response::Result::Error(text) => Err(remote_error(&String::from_utf8_lossy(&text))),
        },
        _ => Err(Error::new(ErrorKind::Protocol, "reply without a unaryResponse")),
    }
}

/// `bytes` as a `Vec`, without copying them when they are the only view of their buffer (as the
/// data field of an envelope that [`read_unary_envelope`] decoded is): a megabyte copied into
/// fresh memory costs more in page faults than in the copy.
pub fn into_vec(bytes: Bytes) -> Vec<u8> {
    bytes.try_into_mut().map(Vec::from).unwrap_or_else(|shared| shared.to_vec())
}

/// The error of a remote handler, with its text.
pub fn remote_error(text: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("remote handler failed: {text}"))
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;
    use crate::wire::p2pd::{RpcError, FRAME_MESSAGE};

    /// Gives `data`, then either ends (`stall == false`) or never answers again.
    struct Feed {
        data: Vec<u8>,
        at: usize,
        stall: bool,
    }

    impl AsyncRead for Feed {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            if this.at == this.data.len() {
                return if this.stall { Poll::Pending } else { Poll::Ready(Ok(0)) };
            }
            let n = buf.len().min(this.data.len() - this.at);
            buf[..n].copy_from_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn feed(data: &[u8], stall: bool) -> Feed {
        Feed { data: data.to_vec(), at: 0, stall }
    }

    const SHORT: Duration = Duration::from_millis(50);

    #[test]
    fn an_envelope_head_and_its_data_make_the_whole_envelope() {
        let peer = libp2p::PeerId::random();
        for len in [0usize, 1, 127, 128, 300, 16383, 16384, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (call, call_id) = unary_call(&peer, "Test.echo", data.clone());
            let reply = PersistentConnectionRequest {
                call_id,
                message: Some(request::Message::UnaryResponse(CallUnaryResponse {
                    result: Some(call_unary_response::Result::Response(data.into())),
                })),
            };
            for message in [call, reply] {
                let mut whole = vec![7u8];
                let whole_len = append_unary_envelope(&message, &mut whole);
                let mut split = vec![7u8];
                let (split_len, data) = append_unary_envelope_head(message, &mut split);
                split.extend_from_slice(&data);
                assert_eq!((split_len, &split), (whole_len, &whole), "{len} bytes");
            }
        }
        let error = unary_reply_error_envelope();
        let mut whole = Vec::new();
        append_unary_envelope(&error, &mut whole);
        let mut split = Vec::new();
        let (_, data) = append_unary_envelope_head(error, &mut split);
        assert!(data.is_empty() && split == whole, "other messages go whole");
    }

    #[tokio::test]
    async fn large_and_small_envelopes_read_back_without_reading_past_them() {
        let peer = libp2p::PeerId::random();
        let big: Vec<u8> = (0..SPLIT_MIN_BODY + 5).map(|i| (i % 251) as u8).collect();
        let (call, _) = unary_call(&peer, "Test.echo", big.clone());
        let (small, _) = unary_call(&peer, "Test.echo", vec![1, 2, 3]);
        let mut error = unary_reply_error_envelope();
        if let Some(request::Message::UnaryResponse(CallUnaryResponse { result: Some(result) })) = &mut error.message {
            *result = call_unary_response::Result::Error(big.clone());
        }
        for message in [call, small, error] {
            let mut bytes = Vec::new();
            append_unary_envelope(&message, &mut bytes);
            bytes.extend_from_slice(b"next");
            let mut reader = feed(&bytes, false);
            assert_eq!(read_unary_envelope(&mut reader, 1 << 20).await.unwrap(), message);
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"next");
        }
        // A large call's request arrives whole and unshared, ready to hand over without a copy.
        let (call, _) = unary_call(&peer, "Test.echo", big.clone());
        let mut bytes = Vec::new();
        append_unary_envelope(&call, &mut bytes);
        let read = read_unary_envelope(&mut feed(&bytes, false), 1 << 20).await.unwrap();
        let Some(request::Message::CallUnary(CallUnaryRequest { data, .. })) = read.message else { panic!() };
        let address = data.as_ptr();
        let handed = into_vec(data);
        assert_eq!((handed.as_ptr(), &handed), (address, &big));
        // A body that ends early fails in its data.
        let err = read_unary_envelope(&mut feed(&bytes[..bytes.len() - 1], false), 1 << 20).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    }

    fn unary_reply_error_envelope() -> PersistentConnectionRequest {
        PersistentConnectionRequest {
            call_id: new_call_id(),
            message: Some(request::Message::UnaryResponse(CallUnaryResponse {
                result: Some(call_unary_response::Result::Error(b"boom".to_vec())),
            })),
        }
    }

    #[tokio::test]
    async fn frames_decode_and_end_cleanly() {
        let mut bytes = encode_frame_header(FRAME_MESSAGE, 3).to_vec();
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&encode_frame_header(FRAME_ERROR, 5));
        bytes.extend_from_slice(&RpcError { message: Some("bad".into()) }.encode_to_vec());
        let mut reader = feed(&bytes, false);
        assert!(matches!(read_frame(&mut reader, 16, SHORT).await, Ok(Some(Frame::Message(m))) if m == b"abc"));
        assert!(matches!(read_frame(&mut reader, 16, SHORT).await, Ok(Some(Frame::Error(t))) if t == "bad"));
        assert!(matches!(read_frame(&mut reader, 16, SHORT).await, Ok(None)));
    }

    #[tokio::test]
    async fn lying_stalling_and_oversized_frames_are_errors() {
        let mut lying = encode_frame_header(FRAME_MESSAGE, 1000).to_vec();
        lying.extend_from_slice(b"short");
        let err = read_frame(&mut feed(&lying, false), 4096, SHORT).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        let err = read_frame(&mut feed(&lying, true), 4096, SHORT).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        let err = read_frame(&mut feed(&lying, true), 999, SHORT).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Protocol, "refused from the header alone: {err}");
        let err = read_frame(&mut feed(&[7, 0, 0], false), 999, SHORT).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    }

    #[tokio::test]
    async fn lying_and_oversized_unary_envelopes_are_errors() {
        let err = read_unary_envelope(&mut feed(&[100, 1, 2, 3], false), 4096).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        let err = read_unary_envelope(&mut feed(&[0x80, 0x80, 0x80, 0x04], true), 4096).await.err().unwrap();
        assert!(err.message().contains("exceeds the limit"), "refused before the body: {err}");
        let err = read_unary_envelope(&mut feed(&[3, 0xff, 0xff, 0xff], false), 4096).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Protocol, "garbage body: {err}");
    }

    #[tokio::test]
    async fn negotiation_answers_are_checked() {
        let mut ok = Vec::new();
        crate::p2p::multistream::encode_message(HEADER, &mut ok);
        crate::p2p::multistream::encode_message(b"A.b", &mut ok);
        assert!(read_negotiation_answer(&mut feed(&ok, false), "A.b").await.is_ok());
        let mut na = Vec::new();
        crate::p2p::multistream::encode_message(HEADER, &mut na);
        crate::p2p::multistream::encode_message(NOT_AVAILABLE, &mut na);
        let err = read_negotiation_answer(&mut feed(&na, false), "A.b").await.unwrap_err();
        assert!(err.message().contains("protocol not supported"), "{err}");
        let err = read_negotiation_answer(&mut feed(&ok, false), "A.c").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        let err = read_negotiation_answer(&mut feed(b"\x05hello", false), "A.b").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }

    /// Records the bytes of every write call separately.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.get_mut().0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_frame_header_goes_out_with_the_start_of_its_payload() {
        for len in [0, 5, FIRST_WRITE_PAYLOAD, FIRST_WRITE_PAYLOAD + 1, 3 * FIRST_WRITE_PAYLOAD] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut writes = Writes::default();
            write_frame(&mut writes, FRAME_MESSAGE, &payload).await.unwrap();
            let mut expected = encode_frame_header(FRAME_MESSAGE, len).to_vec();
            expected.extend_from_slice(&payload);
            assert_eq!(writes.0.concat(), expected, "{len} bytes: same bytes on the wire");
            assert_eq!(writes.0[0].len(), FRAME_HEADER_LEN + len.min(FIRST_WRITE_PAYLOAD), "{len} bytes");
            assert!(writes.0.len() <= 2, "{len} bytes: {} writes", writes.0.len());
        }
    }
}
