//! kwaai's stream forwarding (`kwaai.forward`): how a peer that can reach only one node (a browser,
//! over WebSockets) calls any other peer of the swarm through it.
//!
//! The caller negotiates [`FORWARD_PROTOCOL`] with the node and sends one length-delimited
//! [`ForwardRequest`]; the node opens a stream to `peer`, negotiates `protocol` with it and answers
//! one length-delimited [`ForwardResponse`]. Without an error, the stream is from then on a byte
//! pipe to the target's stream: the caller speaks `protocol`'s RPC as if connected directly. The
//! caller may send its first RPC bytes right after the request, without waiting for the answer.

use prost::Message;

/// The handler name of the forwarding protocol (slash-less, like hivemind's handler names).
pub const FORWARD_PROTOCOL: &str = "kwaai.forward";
/// Largest [`ForwardRequest`] a node reads, in bytes.
pub const MAX_FORWARD_REQUEST: usize = 4096;

/// What the caller asks of the forwarding node.
#[derive(Clone, PartialEq, Message)]
pub struct ForwardRequest {
    /// The target's peer ID bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub peer: Vec<u8>,
    /// The handler to open on the target, e.g. `TransformerConnectionHandler.rpc_inference`.
    #[prost(string, tag = "2")]
    pub protocol: String,
}

/// The node's answer: empty when the pipe is open, else why it is not.
#[derive(Clone, PartialEq, Message)]
pub struct ForwardResponse {
    /// Why the stream could not be forwarded; empty on success.
    #[prost(string, tag = "1")]
    pub error: String,
}

/// Checks a handler name a caller asks to forward to: a hivemind handler name (printable ASCII,
/// no `/`, 1 to 128 bytes), and not the forwarding protocol itself.
pub fn check_forwarded_protocol(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("handler name of {} bytes (1 to 128 allowed)", name.len()));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(format!("{name:?} is not a hivemind handler name"));
    }
    if name == FORWARD_PROTOCOL {
        return Err("a forwarded stream cannot be forwarded again".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_protocols_are_hivemind_handler_names() {
        assert!(check_forwarded_protocol("TransformerConnectionHandler.rpc_inference").is_ok());
        assert!(check_forwarded_protocol("DHTProtocol.rpc_find").is_ok());
        for bad in ["", "/ipfs/id/1.0.0", "a b", "kwaai.forward", &"x".repeat(129)] {
            assert!(check_forwarded_protocol(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn requests_round_trip_with_protobuf_field_numbers() {
        let request = ForwardRequest { peer: vec![1, 2, 3], protocol: "A.b".into() };
        let bytes = request.encode_to_vec();
        assert_eq!(bytes, [0x0a, 3, 1, 2, 3, 0x12, 3, b'A', b'.', b'b']);
        assert_eq!(ForwardRequest::decode(&bytes[..]).unwrap(), request);
        assert!(ForwardResponse::default().encode_to_vec().is_empty());
    }
}
