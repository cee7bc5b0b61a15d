//! The few pieces of multistream-select 1.0 that hivemind's slash-less protocol names need.
//!
//! A message is `uvarint(len) ‖ bytes ‖ '\n'` where `len` counts the newline. The dialer sends the
//! header `/multistream/1.0.0` and its proposal; the listener answers the header and either echoes
//! the proposal or says `na`. This module only encodes and parses messages; the async code around
//! it lives in the muxer (listener side) and the RPC layer (dialer side). Public for fuzzing.

use crate::error::{Error, ErrorKind, Result};

/// The multistream-select 1.0 header line, without its newline.
pub const HEADER: &[u8] = b"/multistream/1.0.0";
/// The refusal of a proposal.
pub const NOT_AVAILABLE: &[u8] = b"na";
/// The longest message we accept (the newline included). Protocol names are far shorter.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Appends one message (`uvarint(len + 1) ‖ line ‖ '\n'`) to `out`.
pub fn encode_message(line: &[u8], out: &mut Vec<u8>) {
    encode_uvarint((line.len() + 1) as u64, out);
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// What a dialer sends to propose `name`: the header, then the proposal.
pub fn dialer_proposal(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 24);
    encode_message(HEADER, &mut out);
    encode_message(name.as_bytes(), &mut out);
    out
}

/// Parses one message at the start of `buf`: `Ok(None)` if more bytes are needed, else the line
/// (without its newline) and the number of bytes it took.
pub fn decode_message(buf: &[u8]) -> Result<Option<(&[u8], usize)>> {
    let Some((len, prefix)) = decode_uvarint(buf)? else { return Ok(None) };
    if len == 0 || len > MAX_MESSAGE_LEN as u64 {
        return Err(Error::new(ErrorKind::Protocol, format!("multistream message of {len} bytes")));
    }
    let end = prefix + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    match buf[end - 1] {
        b'\n' => Ok(Some((&buf[prefix..end - 1], end))),
        _ => Err(Error::new(ErrorKind::Protocol, "multistream message without its newline")),
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn encode_uvarint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Parses an unsigned varint at the start of `buf`: `Ok(None)` if it is not complete yet, else the
/// value and its length. At most 9 bytes (63 bits) are accepted, as multiformats requires.
pub fn decode_uvarint(buf: &[u8]) -> Result<Option<(u64, usize)>> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate() {
        if i == 9 {
            return Err(Error::new(ErrorKind::Protocol, "varint longer than 9 bytes"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && *byte == 0 {
                return Err(Error::new(ErrorKind::Protocol, "varint not minimally encoded"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 9 {
        return Err(Error::new(ErrorKind::Protocol, "varint longer than 9 bytes"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_matches_the_go_bytes() {
        let bytes = dialer_proposal("DHTProtocol.rpc_ping");
        assert_eq!(bytes[0], 0x13);
        assert_eq!(&bytes[1..20], b"/multistream/1.0.0\n");
        assert_eq!(bytes[20], 0x15, "the fact sheet's length byte for DHTProtocol.rpc_ping");
        assert_eq!(&bytes[21..], b"DHTProtocol.rpc_ping\n");
    }

    #[test]
    fn decodes_messages_incrementally() {
        let bytes = dialer_proposal("A.b");
        for cut in 0..20 {
            assert_eq!(decode_message(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
        let (line, used) = decode_message(&bytes).unwrap().unwrap();
        assert_eq!((line, used), (HEADER, 20));
        let (line, used) = decode_message(&bytes[20..]).unwrap().unwrap();
        assert_eq!((line, used), (&b"A.b"[..], 5));
    }

    #[test]
    fn rejects_bad_messages() {
        assert!(decode_message(&[0x00]).is_err(), "empty");
        assert!(decode_message(&[0x02, b'a', b'b']).is_err(), "no newline");
        let mut long = Vec::new();
        encode_uvarint(MAX_MESSAGE_LEN as u64 + 1, &mut long);
        assert!(decode_message(&long).is_err(), "too long");
        assert!(decode_uvarint(&[0xff; 10]).is_err());
        assert!(decode_uvarint(&[0x80, 0x00]).is_err(), "non-minimal");
    }

    #[test]
    fn uvarint_round_trips() {
        for value in [0u64, 1, 127, 128, 300, 4 << 20, (1 << 63) - 1] {
            let mut out = Vec::new();
            encode_uvarint(value, &mut out);
            assert_eq!(decode_uvarint(&out).unwrap(), Some((value, out.len())));
        }
    }
}
