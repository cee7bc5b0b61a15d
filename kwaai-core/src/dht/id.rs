//! DHT identifiers: 160-bit SHA-1 values compared as big-endian integers, with XOR distance.

use std::fmt;

use rmpv::Value;
use sha1::{Digest, Sha1};

use crate::error::{Error, ErrorKind, Result};
use crate::wire::msgpack;

/// A node or key ID of hivemind's DHT (`DHTID`): 20 bytes, ordered as a big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DhtId([u8; DhtId::LEN]);

impl DhtId {
    /// Bytes in an ID (SHA-1 output).
    pub const LEN: usize = 20;
    /// The smallest ID (0), also what an empty `node_id` on the wire stands for.
    pub const MIN: DhtId = DhtId([0; DhtId::LEN]);
    /// The largest ID (2^160 - 1).
    pub const MAX: DhtId = DhtId([0xff; DhtId::LEN]);

    /// A uniformly random ID (a fresh node ID, as hivemind picks on every start).
    pub fn random() -> Self {
        DhtId(rand::random())
    }

    /// The ID of a key given as raw bytes: SHA-1 of the bytes (hivemind hashes `bytes` keys raw).
    pub fn of_bytes(key: &[u8]) -> Self {
        DhtId(Sha1::digest(key).into())
    }

    /// The ID of any other key: SHA-1 of its msgpack encoding (`DHTID.generate(key)`).
    pub fn of_key(key: &Value) -> Self {
        match key {
            Value::Binary(bytes) => Self::of_bytes(bytes),
            other => Self::of_bytes(&msgpack::pack(other)),
        }
    }

    /// Parses the 20-byte wire form (`DHTID.to_bytes()`).
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        <[u8; Self::LEN]>::try_from(bytes)
            .map(DhtId)
            .map_err(|_| Error::new(ErrorKind::Protocol, format!("a DHT ID has 20 bytes, got {}", bytes.len())))
    }

    /// The 20-byte wire form.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// XOR distance to `other`, itself an ID-sized number.
    pub fn distance(&self, other: &DhtId) -> DhtId {
        DhtId(std::array::from_fn(|i| self.0[i] ^ other.0[i]))
    }

    /// Bit `index` counted from the most significant (0) to the least significant (159).
    pub fn bit(&self, index: usize) -> bool {
        self.0[index / 8] & (0x80 >> (index % 8)) != 0
    }
}

impl fmt::Debug for DhtId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhtId({self})")
    }
}

impl fmt::Display for DhtId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_big_endian_integer_order() {
        let mut low = [0u8; 20];
        low[19] = 0xff;
        let mut high = [0u8; 20];
        high[0] = 0x01;
        assert!(DhtId(low) < DhtId(high));
        assert!(DhtId::MIN < DhtId(low) && DhtId(high) < DhtId::MAX);
    }

    #[test]
    fn distance_is_xor_and_symmetric() {
        let (a, b) = (DhtId::random(), DhtId::random());
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a), DhtId::MIN);
        assert_eq!(a.distance(&DhtId::MIN), a);
    }

    #[test]
    fn bytes_keys_are_hashed_raw_and_others_through_msgpack() {
        assert_eq!(DhtId::of_key(&Value::Binary(b"abc".to_vec())), DhtId::of_bytes(b"abc"));
        // sha1(msgpack("abc")) = sha1(a3 61 62 63)
        assert_eq!(DhtId::of_key(&Value::from("abc")), DhtId::of_bytes(&[0xa3, b'a', b'b', b'c']));
        assert_eq!(DhtId::of_bytes(b"abc").to_string(), "0xa9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn wire_form_must_be_20_bytes() {
        let id = DhtId::random();
        assert_eq!(DhtId::from_slice(id.as_bytes()).unwrap(), id);
        assert_eq!(DhtId::from_slice(&[1; 19]).unwrap_err().kind(), ErrorKind::Protocol);
        assert!(DhtId::from_slice(&[1; 21]).is_err());
    }

    #[test]
    fn bits_count_from_the_most_significant() {
        let mut bytes = [0u8; 20];
        bytes[0] = 0x80;
        bytes[19] = 0x01;
        let id = DhtId(bytes);
        assert!(id.bit(0) && !id.bit(1) && id.bit(159) && !id.bit(158));
    }
}
