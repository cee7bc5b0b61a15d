//! p2pd's daemon-to-daemon unary call envelope (`p2pd.proto`, proto2, as shipped with hivemind
//! 1.1.10 in `hivemind/proto/p2pd.proto`).
//!
//! Between two p2pd peers a unary call is one `PersistentConnectionRequest` carrying `callUnary`,
//! answered by one `PersistentConnectionRequest` carrying `unaryResponse` with the same `callId`.
//! Go enforces proto2 `required` fields on unmarshal, so they are `required` here and always
//! encoded, even when empty.

use prost::Message;

/// `PersistentConnectionRequest`: what travels on a unary call's stream, in both directions.
#[derive(Clone, PartialEq, Message)]
pub struct PersistentConnectionRequest {
    /// A 16-byte UUID; the reply carries the caller's value.
    #[prost(bytes = "vec", required, tag = "1")]
    pub call_id: Vec<u8>,
    /// Which kind of request this is.
    #[prost(oneof = "persistent_connection_request::Message", tags = "2, 6, 3, 4, 5")]
    pub message: Option<persistent_connection_request::Message>,
}

/// The `message` oneof of [`PersistentConnectionRequest`].
pub mod persistent_connection_request {
    use prost::Oneof;

    /// One of the requests a persistent connection carries.
    #[derive(Clone, PartialEq, Oneof)]
    pub enum Message {
        /// Registers a unary handler (local socket only).
        #[prost(message, tag = "2")]
        AddUnaryHandler(super::AddUnaryHandlerRequest),
        /// Removes a unary handler (local socket only).
        #[prost(message, tag = "6")]
        RemoveUnaryHandler(super::RemoveUnaryHandlerRequest),
        /// A call: what the caller sends on the stream.
        #[prost(message, tag = "3")]
        CallUnary(super::CallUnaryRequest),
        /// A reply: what the handler sends back on the stream.
        #[prost(message, tag = "4")]
        UnaryResponse(super::CallUnaryResponse),
        /// Cancels a call (local socket only; on the wire a call is cancelled by closing it).
        #[prost(message, tag = "5")]
        Cancel(super::Cancel),
    }
}

/// `CallUnaryRequest`: the target (or, at the handler, the caller), the handler name and the data.
#[derive(Clone, PartialEq, Message)]
pub struct CallUnaryRequest {
    /// Raw peer-ID multihash bytes.
    #[prost(bytes = "vec", required, tag = "1")]
    pub peer: Vec<u8>,
    /// The handler name; Python dispatches on it, so it must equal the stream's protocol.
    #[prost(string, required, tag = "2")]
    pub proto: String,
    /// The serialized request message (decoded from a `Bytes` envelope, a view of its buffer).
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: bytes::Bytes,
}

/// `CallUnaryResponse`: the handler's reply or its error text.
#[derive(Clone, PartialEq, Message)]
pub struct CallUnaryResponse {
    /// Either the reply or the error.
    #[prost(oneof = "call_unary_response::Result", tags = "1, 2")]
    pub result: Option<call_unary_response::Result>,
}

/// The `result` oneof of [`CallUnaryResponse`].
pub mod call_unary_response {
    use prost::Oneof;

    /// A handler's outcome.
    #[derive(Clone, PartialEq, Oneof)]
    pub enum Result {
        /// The serialized reply message (decoded from a `Bytes` envelope, a view of its buffer).
        #[prost(bytes = "bytes", tag = "1")]
        Response(bytes::Bytes),
        /// The handler's error text (hivemind sends `repr(exc)`).
        #[prost(bytes, tag = "2")]
        Error(Vec<u8>),
    }
}

/// `AddUnaryHandlerRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct AddUnaryHandlerRequest {
    /// The handler name.
    #[prost(string, required, tag = "1")]
    pub proto: String,
    /// Whether several clients may serve the name round-robin.
    #[prost(bool, required, tag = "2")]
    pub balanced: bool,
}

/// `RemoveUnaryHandlerRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct RemoveUnaryHandlerRequest {
    /// The handler name.
    #[prost(string, required, tag = "1")]
    pub proto: String,
}

/// `Cancel` (no fields).
#[derive(Clone, PartialEq, Message)]
pub struct Cancel {}

/// `RPCError`: the payload of a streaming call's error frame (marker `0x01`).
#[derive(Clone, PartialEq, Message)]
pub struct RpcError {
    /// The error text (hivemind sends `str(exc)`).
    #[prost(string, optional, tag = "1")]
    pub message: Option<String>,
}

/// Marker byte of a streaming frame that carries a message.
pub const FRAME_MESSAGE: u8 = 0x00;
/// Marker byte of a streaming frame that carries an [`RpcError`] (empty: end of the input).
pub const FRAME_ERROR: u8 = 0x01;
/// Length of a streaming frame's header: marker, then a big-endian u64 length.
pub const FRAME_HEADER_LEN: usize = 9;
/// What a caller sends after its last request: an empty error frame.
pub const END_OF_STREAM: [u8; FRAME_HEADER_LEN] = [FRAME_ERROR, 0, 0, 0, 0, 0, 0, 0, 0];

/// A streaming frame's header: its marker and payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// [`FRAME_MESSAGE`] or [`FRAME_ERROR`].
    pub marker: u8,
    /// Payload length in bytes.
    pub len: usize,
}

/// Decodes a streaming frame header, refusing unknown markers and payloads over `max_len`.
pub fn decode_frame_header(header: &[u8; FRAME_HEADER_LEN], max_len: usize) -> Result<FrameHeader, String> {
    let marker = header[0];
    if marker != FRAME_MESSAGE && marker != FRAME_ERROR {
        return Err(format!("unknown frame marker {marker:#04x}"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[1..]);
    let len = u64::from_be_bytes(len);
    if len > max_len as u64 {
        return Err(format!("frame of {len} bytes exceeds the limit of {max_len}"));
    }
    Ok(FrameHeader { marker, len: len as usize })
}

/// Encodes a streaming frame header.
pub fn encode_frame_header(marker: u8, len: usize) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = marker;
    header[1..].copy_from_slice(&(len as u64).to_be_bytes());
    header
}

/// Decodes the payload of an error frame into its message text (empty for end of stream).
pub fn decode_rpc_error(payload: &[u8]) -> Result<String, String> {
    RpcError::decode(payload).map(|e| e.message.unwrap_or_default()).map_err(|e| format!("bad RPCError: {e}"))
}

/// Decodes one unary envelope (`uvarint(len) ‖ PersistentConnectionRequest`) at the start of
/// `buf`: `Ok(None)` if more bytes are needed, else the message and the bytes it took. Envelopes
/// over `max_len` are refused before any of their body is needed.
pub fn decode_unary_envelope(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(PersistentConnectionRequest, usize)>, String> {
    let Some((len, prefix)) = decode_envelope_length(buf, max_len)? else { return Ok(None) };
    let Some(body) = buf.get(prefix..prefix + len) else { return Ok(None) };
    let message =
        PersistentConnectionRequest::decode(body).map_err(|e| format!("bad PersistentConnectionRequest: {e}"))?;
    Ok(Some((message, prefix + len)))
}

/// Unary envelope bodies from this size on are worth reading as a head and then their data
/// ([`split_unary_envelope`]); smaller ones are read whole.
pub const SPLIT_MIN_BODY: usize = 64 << 10;
/// The most head bytes [`split_unary_envelope`] looks at.
const MAX_SPLIT_HEAD: usize = 1024;
/// Tags of `PersistentConnectionRequest`'s `message` oneof.
const ONEOF_TAGS: [u64; 5] = [2, 3, 4, 5, 6];
const CALL_UNARY_TAG: u64 = 3;
const UNARY_RESPONSE_TAG: u64 = 4;

/// What [`split_unary_envelope`] makes of the start of an envelope body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeSplit {
    /// At least this many more head bytes are needed to tell.
    NeedMore(usize),
    /// The body is a head, then the call's or the reply's data up to the body's end.
    Split(EnvelopeHead),
    /// Any other layout: the body is to be read and decoded whole.
    Whole,
}

/// Where a unary envelope's head ends and what it holds, from [`split_unary_envelope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHead {
    /// The fields before the nested message end here.
    outer_end: usize,
    /// The nested message's tag: `callUnary` or `unaryResponse`.
    tag: u64,
    /// The nested message's fields before the data field span `nested_start..nested_end`.
    nested_start: usize,
    nested_end: usize,
    /// Bytes before the data.
    pub head_len: usize,
    /// Bytes of data, which end the body.
    pub data_len: usize,
}

/// Finds, in `head` (the first bytes of a unary envelope body of `body_len` bytes), where the
/// call's request data or the reply's data starts when the body ends with it, as p2pd and kwaai
/// encode envelopes. Reading the data then into a buffer of its own spares a copy of a megabyte
/// to the front of the body. Layouts this does not recognise, which protobuf also allows (a field
/// repeated, another wire type, a reply's error), are `Whole`; a split decodes
/// ([`decode_split_unary_envelope`]) to what the whole body decodes to.
pub fn split_unary_envelope(head: &[u8], body_len: usize) -> EnvelopeSplit {
    // The nested message's tag and where its key and payload start, once found.
    let mut nested: Option<(u64, usize, usize)> = None;
    let mut pos = 0;
    loop {
        let limit = body_len.min(MAX_SPLIT_HEAD);
        if pos >= limit {
            return EnvelopeSplit::Whole;
        }
        // A varint the head ends in needs another byte, if the body and our limit have one.
        let one_more = || if head.len() < limit { EnvelopeSplit::NeedMore(1) } else { EnvelopeSplit::Whole };
        let (key, key_len) = match leading_varint(&head[pos..]) {
            Err(()) => return EnvelopeSplit::Whole,
            Ok(None) => return one_more(),
            Ok(Some(key)) => key,
        };
        let field = key >> 3;
        // Only length-delimited fields with valid keys; anything else is left to the full decoder.
        if key > u64::from(u32::MAX) || field == 0 || key & 7 != 2 {
            return EnvelopeSplit::Whole;
        }
        let len_at = pos + key_len;
        if len_at >= limit {
            return EnvelopeSplit::Whole;
        }
        let (len, len_len) = match leading_varint(&head[len_at..]) {
            Err(()) => return EnvelopeSplit::Whole,
            Ok(None) => return one_more(),
            Ok(Some(len)) => len,
        };
        let start = len_at + len_len;
        if len > (body_len - start.min(body_len)) as u64 {
            return EnvelopeSplit::Whole;
        }
        let end = start + len as usize;
        match nested {
            None if field == CALL_UNARY_TAG || field == UNARY_RESPONSE_TAG => {
                if end != body_len {
                    return EnvelopeSplit::Whole;
                }
                nested = Some((field, pos, start));
                pos = start;
                continue;
            }
            None if ONEOF_TAGS.contains(&field) => return EnvelopeSplit::Whole,
            None => {}
            Some((tag, outer_end, nested_start)) => {
                let data_field = if tag == CALL_UNARY_TAG { 3 } else { 1 };
                if field == data_field && end == body_len {
                    let at = EnvelopeHead {
                        outer_end,
                        tag,
                        nested_start,
                        nested_end: pos,
                        head_len: start,
                        data_len: len as usize,
                    };
                    return EnvelopeSplit::Split(at);
                }
                // An earlier data field, or a reply's error.
                if field == data_field || tag == UNARY_RESPONSE_TAG {
                    return EnvelopeSplit::Whole;
                }
            }
        }
        // A field before the nested message or before the data: wholly in the head.
        if end > MAX_SPLIT_HEAD {
            return EnvelopeSplit::Whole;
        }
        if head.len() < end {
            return EnvelopeSplit::NeedMore(end - head.len());
        }
        pos = end;
    }
}

/// The envelope whose body is `head` (as [`split_unary_envelope`] found it to be `at`) followed
/// by `data`.
pub fn decode_split_unary_envelope(
    head: &[u8],
    at: EnvelopeHead,
    data: bytes::Bytes,
) -> Result<PersistentConnectionRequest, String> {
    let bad = |e: prost::DecodeError| format!("bad PersistentConnectionRequest: {e}");
    let mut envelope = PersistentConnectionRequest::decode(&head[..at.outer_end]).map_err(bad)?;
    let nested = &head[at.nested_start..at.nested_end];
    envelope.message = Some(if at.tag == CALL_UNARY_TAG {
        let call = CallUnaryRequest::decode(nested).map_err(bad)?;
        persistent_connection_request::Message::CallUnary(CallUnaryRequest { data, ..call })
    } else {
        CallUnaryResponse::decode(nested).map_err(bad)?;
        let result = Some(call_unary_response::Result::Response(data));
        persistent_connection_request::Message::UnaryResponse(CallUnaryResponse { result })
    });
    Ok(envelope)
}

/// The protobuf varint at the start of `buf` and its length: `Ok(None)` if `buf` ends inside it,
/// `Err` where prost refuses it (over 10 bytes, or over 64 bits).
fn leading_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, ()> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        if i == 9 && byte > 1 {
            return Err(());
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(());
    }
    Ok(None)
}

/// Decodes the uvarint length prefix of a unary envelope: `Ok(None)` if incomplete, else the body
/// length and the prefix length. Refuses lengths over `max_len` and varints over 10 bytes.
pub fn decode_envelope_length(buf: &[u8], max_len: usize) -> Result<Option<(usize, usize)>, String> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
        if byte & 0x80 == 0 {
            if value > max_len as u64 {
                return Err(format!("message of {value} bytes exceeds the limit of {max_len}"));
            }
            return Ok(Some((value as usize, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err("length varint longer than 10 bytes".into());
    }
    Ok(None)
}

/// Encodes a unary envelope: the uvarint length, then the message.
pub fn encode_unary_envelope(message: &PersistentConnectionRequest) -> Vec<u8> {
    message.encode_length_delimited_to_vec()
}

#[cfg(test)]
mod tests {
    use super::persistent_connection_request::Message as Kind;
    use super::*;

    #[test]
    fn empty_required_fields_are_still_encoded() {
        let call = PersistentConnectionRequest {
            call_id: vec![7; 16],
            message: Some(Kind::CallUnary(CallUnaryRequest {
                peer: vec![],
                proto: "A.b".into(),
                data: Default::default(),
            })),
        };
        let bytes = call.encode_to_vec();
        // callId(0a 10 ..16 bytes) callUnary(1a 09 (0a 00) (12 03 'A.b') (1a 00))
        let mut expected = vec![0x0a, 0x10];
        expected.extend([7; 16]);
        expected.extend([0x1a, 0x09, 0x0a, 0x00, 0x12, 0x03, b'A', b'.', b'b', 0x1a, 0x00]);
        assert_eq!(bytes, expected);
        assert_eq!(PersistentConnectionRequest::decode(&bytes[..]).unwrap(), call);
    }

    #[test]
    fn error_reply_uses_field_4_then_field_2() {
        let reply = PersistentConnectionRequest {
            call_id: vec![1; 16],
            message: Some(Kind::UnaryResponse(CallUnaryResponse {
                result: Some(call_unary_response::Result::Error(b"boom".to_vec())),
            })),
        };
        let bytes = reply.encode_to_vec();
        assert_eq!(&bytes[18..], &[0x22, 0x06, 0x12, 0x04, b'b', b'o', b'o', b'm']);
    }

    #[test]
    fn frame_headers_are_big_endian_and_bounded() {
        let header = encode_frame_header(FRAME_MESSAGE, 0x0102);
        assert_eq!(header, [0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(decode_frame_header(&header, 1 << 20).unwrap(), FrameHeader { marker: 0, len: 0x0102 });
        assert_eq!(decode_frame_header(&END_OF_STREAM, 0).unwrap(), FrameHeader { marker: FRAME_ERROR, len: 0 });
        assert!(decode_frame_header(&header, 0x0101).is_err(), "over the limit");
        assert!(decode_frame_header(&[2, 0, 0, 0, 0, 0, 0, 0, 0], 10).is_err(), "bad marker");
        assert!(decode_frame_header(&[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], usize::MAX >> 1).is_err());
    }

    #[test]
    fn unary_envelopes_decode_incrementally_and_refuse_lies() {
        let call = PersistentConnectionRequest { call_id: vec![3; 16], message: Some(Kind::Cancel(Cancel {})) };
        let bytes = encode_unary_envelope(&call);
        for cut in 0..bytes.len() {
            assert_eq!(decode_unary_envelope(&bytes[..cut], 1024).unwrap(), None, "cut {cut}");
        }
        assert_eq!(decode_unary_envelope(&bytes, 1024).unwrap(), Some((call, bytes.len())));
        assert!(decode_unary_envelope(&bytes, 4).is_err(), "over the limit");
        assert!(decode_envelope_length(&[0xff; 10], usize::MAX).is_err());
        assert!(decode_unary_envelope(&[0x02, 0xff, 0xff], 1024).is_err(), "garbage body");
    }

    #[test]
    fn rpc_error_round_trips() {
        let e = RpcError { message: Some("bad".into()) };
        assert_eq!(e.encode_to_vec(), vec![0x0a, 0x03, b'b', b'a', b'd']);
        assert_eq!(RpcError::decode(&e.encode_to_vec()[..]).unwrap(), e);
    }

    /// Splits `body` as a reader would, asking only for the head bytes the splitter wants, and
    /// checks that a split decodes to what the whole body decodes to; returns the split.
    fn split_as_read(body: &[u8]) -> Option<EnvelopeHead> {
        let mut have = 0;
        loop {
            match split_unary_envelope(&body[..have], body.len()) {
                EnvelopeSplit::NeedMore(n) => {
                    assert!(n > 0 && have + n <= body.len().min(MAX_SPLIT_HEAD), "asks for {n} past {have}");
                    have += n;
                }
                EnvelopeSplit::Whole => return None,
                EnvelopeSplit::Split(at) => {
                    assert_eq!(at.head_len, have, "the head is what was asked for");
                    assert_eq!(at.head_len + at.data_len, body.len());
                    let data = bytes::Bytes::copy_from_slice(&body[at.head_len..]);
                    let split = decode_split_unary_envelope(&body[..at.head_len], at, data);
                    let whole = PersistentConnectionRequest::decode(body);
                    assert_eq!(split.ok(), whole.ok(), "split and whole decode differ");
                    return Some(at);
                }
            }
        }
    }

    fn call(data: Vec<u8>) -> PersistentConnectionRequest {
        PersistentConnectionRequest {
            call_id: vec![5; 16],
            message: Some(Kind::CallUnary(CallUnaryRequest {
                peer: vec![0x12; 38],
                proto: "ConnectionHandler.rpc_forward".into(),
                data: data.into(),
            })),
        }
    }

    fn reply(result: call_unary_response::Result) -> PersistentConnectionRequest {
        PersistentConnectionRequest {
            call_id: vec![6; 16],
            message: Some(Kind::UnaryResponse(CallUnaryResponse { result: Some(result) })),
        }
    }

    #[test]
    fn large_calls_and_replies_split_before_their_data() {
        let data: Vec<u8> = (0..SPLIT_MIN_BODY + 3).map(|i| i as u8).collect();
        let response = call_unary_response::Result::Response(data.clone().into());
        for message in [call(data.clone()), reply(response)] {
            let body = message.encode_to_vec();
            let at = split_as_read(&body).expect("split");
            assert_eq!(at.data_len, data.len());
            let decoded = decode_split_unary_envelope(&body[..at.head_len], at, data.clone().into()).unwrap();
            assert_eq!(decoded, message);
        }
        // Small data splits too (the reader only asks from SPLIT_MIN_BODY on).
        assert!(split_as_read(&call(vec![1, 2, 3]).encode_to_vec()).is_some());
    }

    #[test]
    fn other_layouts_are_left_to_the_whole_decoder() {
        let data = vec![9u8; 300];
        // An error reply.
        assert_eq!(split_as_read(&reply(call_unary_response::Result::Error(data.clone())).encode_to_vec()), None);
        // Bytes after the message.
        let mut trailing = call(data.clone()).encode_to_vec();
        trailing.extend([0x0a, 0x00]);
        assert_eq!(split_as_read(&trailing), None);
        // The data field twice: the last one wins, which the whole decoder knows.
        let mut body = vec![0x0a, 0x00, 0x1a, 0x08, 0x1a, 0x01, 0xaa, 0x1a, 0x03, 1, 2, 3];
        assert_eq!(split_as_read(&body), None);
        // The nested message after another member of the oneof.
        body = vec![0x2a, 0x00, 0x1a, 0x03, 0x1a, 0x01, 7];
        assert_eq!(split_as_read(&body), None);
        // A varint field, a bad key, a varint over 64 bits, a length past the end.
        for bad in [
            &[0x08, 0x01, 0x1a, 0x00][..],
            &[0x02, 0x00],
            &[0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[0x1a, 0x05, 0x1a, 0x01],
        ] {
            assert_eq!(split_as_read(bad), None, "{bad:02x?}");
        }
        // A varint cut short by the end of the body.
        assert_eq!(split_as_read(&[0x0a, 0x01, 0x00, 0xff, 0xff]), None);
        assert_eq!(split_as_read(&[0x0a, 0x01, 0x00, 0x1a, 0xff]), None);
        // A head too long to look through.
        let mut long = vec![0x0a, 0x80, 0x10];
        long.extend(vec![0u8; 2048]);
        long.extend([0x22, 0x02, 0x0a, 0x00]);
        assert_eq!(split_as_read(&long), None);
    }

    #[test]
    fn unknown_fields_before_the_data_still_split() {
        // An unknown length-delimited field (15) before the nested message and inside a call.
        let body = [0x7a, 0x01, 0xee, 0x0a, 0x01, 0x07, 0x1a, 0x05, 0x7a, 0x00, 0x1a, 0x01, 0x42];
        let at = split_as_read(&body).expect("split");
        assert_eq!((at.head_len, at.data_len), (12, 1));
    }
}
