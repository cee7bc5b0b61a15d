//! hivemind's `MSGPackSerializer` format: msgpack with `use_bin_type=True, strict_types=True`,
//! tuples as ext type 0x40 wrapping the msgpack of the item list, floats always as float64.
//!
//! Values are [`rmpv::Value`]; this module adds the hivemind conventions and bounded decoding.

use rmpv::Value;

use crate::error::{Error, ErrorKind, Result};

/// Ext type code hivemind uses for tuples.
pub const TUPLE_EXT: i8 = 0x40;
/// Ext type code of `DictionaryDHTValue`.
pub const DICTIONARY_EXT: i8 = 0x50;
/// Ext type code of `BatchTensorDescriptor`.
pub const TENSOR_DESCRIPTOR_EXT: i8 = 0x51;
/// Nesting limit for decoding (ext payloads count as a level).
const MAX_DEPTH: usize = 64;

/// Encodes a value exactly as hivemind's `MSGPackSerializer.dumps` would.
pub fn pack(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    rmpv::encode::write_value(&mut out, value).expect("msgpack into a Vec");
    out
}

/// The reserved marker `0xc1`, which msgpack-python refuses wherever a value starts.
const RESERVED_MARKER: u8 = 0xc1;

/// Decodes one complete msgpack value; trailing bytes are an error, and so is the reserved
/// marker `0xc1` where a value starts (rmpv would read it as nil; hivemind refuses it).
pub fn unpack(bytes: &[u8]) -> Result<Value> {
    if let Some(position) = reserved_marker_position(bytes) {
        return Err(Error::new(ErrorKind::Protocol, format!("bad msgpack: reserved marker 0xc1 at byte {position}")));
    }
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad msgpack: {e}")))?;
    if !reader.is_empty() {
        return Err(Error::new(ErrorKind::Protocol, format!("{} trailing bytes after msgpack value", reader.len())));
    }
    if !strings_are_utf8(&value) {
        // hivemind unpacks with raw=False, which refuses such strings; keeping them would turn
        // them into binary when re-encoded.
        return Err(Error::new(ErrorKind::Protocol, "msgpack string is not valid UTF-8"));
    }
    Ok(value)
}

/// Where the first value of `bytes` uses the reserved marker: walks the markers (skipping
/// str, bin and ext payloads, which may hold any byte) until that value is complete. Truncated
/// input gives `None`; the decoder reports it.
fn reserved_marker_position(bytes: &[u8]) -> Option<usize> {
    let length = |at: usize, size: usize| -> Option<u64> {
        let field = bytes.get(at..at + size)?;
        Some(field.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
    };
    let mut position = 0usize;
    let mut pending: u64 = 1; // values still to read
    while pending > 0 {
        let marker = *bytes.get(position)?;
        pending -= 1;
        let here = position;
        position += 1;
        // (bytes of length field, bytes of fixed payload, how the length counts)
        let (size, fixed, counts) = match marker {
            RESERVED_MARKER => return Some(here),
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0, Count::Bytes),
            0x80..=0x8f => {
                pending = pending.saturating_add(2 * u64::from(marker & 0x0f));
                continue;
            }
            0x90..=0x9f => {
                pending = pending.saturating_add(u64::from(marker & 0x0f));
                continue;
            }
            0xa0..=0xbf => (0, usize::from(marker & 0x1f), Count::Bytes),
            0xc4 | 0xd9 => (1, 0, Count::Bytes),
            0xc5 | 0xda => (2, 0, Count::Bytes),
            0xc6 | 0xdb => (4, 0, Count::Bytes),
            0xc7 => (1, 1, Count::Bytes),
            0xc8 => (2, 1, Count::Bytes),
            0xc9 => (4, 1, Count::Bytes),
            0xca => (0, 4, Count::Bytes),
            0xcb => (0, 8, Count::Bytes),
            0xcc | 0xd0 => (0, 1, Count::Bytes),
            0xcd | 0xd1 => (0, 2, Count::Bytes),
            0xce | 0xd2 => (0, 4, Count::Bytes),
            0xcf | 0xd3 => (0, 8, Count::Bytes),
            0xd4 => (0, 2, Count::Bytes),
            0xd5 => (0, 3, Count::Bytes),
            0xd6 => (0, 5, Count::Bytes),
            0xd7 => (0, 9, Count::Bytes),
            0xd8 => (0, 17, Count::Bytes),
            0xdc => (2, 0, Count::Items(1)),
            0xdd => (4, 0, Count::Items(1)),
            0xde => (2, 0, Count::Items(2)),
            0xdf => (4, 0, Count::Items(2)),
        };
        let n = if size > 0 { length(position, size)? } else { 0 };
        position += size;
        match counts {
            Count::Bytes => position = position.checked_add(fixed)?.checked_add(usize::try_from(n).ok()?)?,
            Count::Items(per_item) => pending = pending.saturating_add(n.saturating_mul(per_item)),
        }
    }
    None
}

/// What a msgpack length field counts.
enum Count {
    /// Payload bytes to skip.
    Bytes,
    /// Values to read (per counted item: 1 for arrays, 2 for maps).
    Items(u64),
}

fn strings_are_utf8(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_str(),
        Value::Array(items) => items.iter().all(strings_are_utf8),
        Value::Map(entries) => entries.iter().all(|(k, v)| strings_are_utf8(k) && strings_are_utf8(v)),
        _ => true,
    }
}

/// A tuple as hivemind packs it: ext 0x40 holding the msgpack of the item list.
pub fn tuple(items: Vec<Value>) -> Value {
    Value::Ext(TUPLE_EXT, pack(&Value::Array(items)))
}

/// The items of a hivemind tuple (ext 0x40), or `None` if `value` is not one.
pub fn as_tuple(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Ext(TUPLE_EXT, data) => match unpack(data).ok()? {
            Value::Array(items) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_use_minimal_ext_headers_like_hivemind() {
        assert_eq!(pack(&tuple(vec![])), [0xd4, 0x40, 0x90]);
        assert_eq!(pack(&tuple(vec![1.into(), 2.into()])), [0xc7, 0x03, 0x40, 0x92, 0x01, 0x02]);
        let nested = tuple(vec![tuple(vec![Value::from("a")])]);
        assert_eq!(as_tuple(&as_tuple(&nested).unwrap()[0]).unwrap(), vec![Value::from("a")]);
    }

    #[test]
    fn floats_are_float64_and_bytes_are_bin() {
        assert_eq!(pack(&Value::F64(1.5))[0], 0xcb);
        assert_eq!(pack(&Value::Binary(vec![1]))[..2], [0xc4, 0x01]);
        assert_eq!(pack(&Value::from("x"))[..2], [0xa1, b'x']);
    }

    #[test]
    fn decoding_is_bounded_and_complete() {
        assert!(unpack(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00]).is_err(), "bin32 claiming 4 GiB");
        assert!(unpack(&[0x01, 0x02]).is_err(), "trailing bytes");
        assert!(unpack(&[0x91; 200]).is_err(), "nesting too deep");
        assert!(unpack(&[0x91, 0xa2, 0x80, 0x02]).is_err(), "a str that is not UTF-8");
        assert_eq!(unpack(&pack(&Value::from(-33))).unwrap(), Value::from(-33));
    }

    #[test]
    fn the_reserved_marker_is_refused_where_a_value_starts_only() {
        for bad in [
            &[0xc1][..],
            &[0x92, 0x01, 0xc1],
            &[0x81, 0xc1, 0x01],
            &[0x81, 0xa1, b'k', 0xc1],
            &[0xdc, 0x00, 0x02, 0xc0, 0xc1],
            &[0xdf, 0x00, 0x00, 0x00, 0x01, 0xc4, 0x01, 0x00, 0xc1],
            &[0x92, 0xcb, 1, 2, 3, 4, 5, 6, 7, 8, 0xc1],
        ] {
            let err = unpack(bad).unwrap_err();
            assert!(err.message().contains("0xc1"), "{bad:02x?}: {err}");
        }
        // Inside payloads 0xc1 is just a byte.
        let inside = [
            pack(&Value::Binary(vec![0xc1; 3])),
            pack(&Value::Ext(0x33, vec![0xc1])),
            pack(&Value::Array(vec![Value::F64(f64::from_bits(0xc1c1_c1c1_c1c1_c1c1)), Value::from(0xc1u8)])),
            pack(&Value::from(-63)),
            [0xd6, 0x01, 0xc1, 0xc1, 0xc1, 0xc1].to_vec(),
            [0xa2, 0xc3, 0x81].to_vec(), // "Á" in UTF-8
        ];
        for bytes in inside {
            assert!(unpack(&bytes).is_ok(), "{bytes:02x?}");
        }
        // A tuple's payload is msgpack too, refused when unpacked.
        assert!(as_tuple(&Value::Ext(TUPLE_EXT, vec![0x91, 0xc1])).is_none());
    }
}
