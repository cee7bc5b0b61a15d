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

/// Decodes one complete msgpack value; trailing bytes are an error.
pub fn unpack(bytes: &[u8]) -> Result<Value> {
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
}
