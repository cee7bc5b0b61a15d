//! The averager's DHT keys, its schema hash and its gather blob, as hivemind writes them
//! (hivemind 1.1.10.post2: hivemind/averaging/{key_manager,averager}.py).

use rmpv::Value;

use super::python_random::PythonRandom;
use crate::dht::DhtId;
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::DType;
use crate::wire::msgpack;

/// The group key `"{prefix}.0b{bits}"` under which averagers looking for a group declare themselves.
pub fn group_key(prefix: &str, bits: &str) -> String {
    format!("{prefix}.0b{bits}")
}

/// The key under which averagers that share their state declare their priority.
pub fn all_averagers_key(prefix: &str) -> String {
    format!("{prefix}.all_averagers")
}

/// Checks a prefix (no `.`, not empty) and group bits (only `0` and `1`), as hivemind asserts.
pub fn validate_prefix_and_bits(prefix: &str, bits: &str) -> Result<()> {
    if prefix.is_empty() || prefix.contains('.') {
        return Err(Error::invalid_argument(format!(
            "averaging prefix {prefix:?} must be non-empty and contain no '.'"
        )));
    }
    if !bits.chars().all(|c| c == '0' || c == '1') {
        return Err(Error::invalid_argument(format!("group bits {bits:?} may contain only '0' and '1'")));
    }
    Ok(())
}

/// Whether `key` is a valid group key (`^[^.]+[.]0b[01]*$`, hivemind's `is_valid_group`).
pub fn is_valid_group_key(key: &str) -> bool {
    match key.split_once(".0b") {
        Some((prefix, bits)) => {
            !prefix.is_empty() && !prefix.contains('.') && bits.chars().all(|c| c == '0' || c == '1')
        }
        None => false,
    }
}

/// The group bits after a round, as every member of the group computes them (hivemind's
/// `update_key_on_group_assembled`): member `index` of `group_size` takes bucket
/// `Random(group_id).sample(range(buckets), group_size)[index]`, where `buckets` is the target
/// group size (else the group size rounded up to a power of two), and appends its bits, keeping
/// the length. Empty bits stay empty.
pub fn next_group_bits(
    bits: &str,
    group_id: &[u8],
    group_size: usize,
    index: usize,
    target_group_size: Option<usize>,
) -> Result<String> {
    if bits.is_empty() {
        return Ok(String::new());
    }
    let buckets = target_group_size.unwrap_or_else(|| group_size.next_power_of_two());
    if index >= group_size || group_size > buckets || buckets > u32::MAX as usize {
        return Err(Error::invalid_argument(format!(
            "member {index} of a group of {group_size} cannot take one of {buckets} buckets"
        )));
    }
    let bucket = PythonRandom::from_bytes(group_id).sample_range(buckets as u32, group_size)[index];
    let width = (buckets as f64).log2().ceil() as usize;
    let combined = format!("{bits}{bucket:0width$b}");
    Ok(combined[combined.len() - bits.len()..].to_string())
}

/// What one averaged tensor looks like, for the schema hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSchema {
    /// The shape.
    pub shape: Vec<usize>,
    /// The element type.
    pub dtype: DType,
    /// Whether the tensor tracks gradients (torch parameters do).
    pub requires_grad: bool,
}

/// hivemind's `compute_schema_hash`: the DHT ID of the list of per-tensor descriptor maps
/// (every field as its Python `str`), 20 bytes. Peers only group with equal hashes.
pub fn schema_hash(tensors: &[TensorSchema]) -> Vec<u8> {
    let text = |s: &str| Value::String(s.into());
    let python_bool = |b: bool| if b { "True" } else { "False" };
    let maps = tensors
        .iter()
        .map(|t| {
            let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            Value::Map(vec![
                (text("size"), text(&format!("torch.Size([{}])", dims.join(", ")))),
                (text("dtype"), text(&format!("torch.{}", t.dtype.name()))),
                (text("layout"), text("torch.strided")),
                (text("device"), text("cpu")),
                (text("requires_grad"), text(python_bool(t.requires_grad))),
                (text("pin_memory"), text("False")),
                (text("compression"), text("0")),
            ])
        })
        .collect();
    DhtId::of_key(&Value::Array(maps)).as_bytes().to_vec()
}

/// How a peer takes part in all-reduce (`AveragingMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AveragingMode {
    /// Sends its tensors and reduces a share of the vector.
    Node = 0,
    /// Sends its tensors but reduces nothing (accepts no incoming calls).
    Client = 1,
    /// Reduces a share but sends no tensors of its own.
    Aux = 2,
}

impl AveragingMode {
    fn from_code(code: i64) -> Option<AveragingMode> {
        match code {
            0 => Some(AveragingMode::Node),
            1 => Some(AveragingMode::Client),
            2 => Some(AveragingMode::Aux),
            _ => None,
        }
    }
}

/// The blob every peer sends the leader: `msgpack([bandwidth, mode, msgpack(user data)])`.
#[derive(Clone, Debug, PartialEq)]
pub struct GatherInfo {
    /// The peer's bandwidth; `None` means "the mean of the others".
    pub bandwidth: Option<f64>,
    /// How the peer takes part.
    pub mode: AveragingMode,
    /// The user's gathered value, itself msgpack.
    pub user_data: Vec<u8>,
}

impl GatherInfo {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let bandwidth = self.bandwidth.map_or(Value::Nil, Value::F64);
        msgpack::pack(&Value::Array(vec![
            bandwidth,
            Value::from(self.mode as i64),
            Value::Binary(self.user_data.clone()),
        ]))
    }

    /// Parses a blob from any peer.
    pub fn decode(blob: &[u8]) -> Result<GatherInfo> {
        let bad = |what: &str| Error::new(ErrorKind::Protocol, format!("bad gather blob: {what}"));
        let value = msgpack::unpack(blob)?;
        let items = match value {
            Value::Array(items) if items.len() == 3 => items,
            Value::Ext(msgpack::TUPLE_EXT, _) => msgpack::as_tuple(&value).ok_or_else(|| bad("bad tuple"))?,
            _ => return Err(bad("not a list of 3")),
        };
        if items.len() != 3 {
            return Err(bad("not 3 items"));
        }
        let bandwidth = match &items[0] {
            Value::Nil => None,
            Value::F64(v) => Some(*v),
            Value::F32(v) => Some(f64::from(*v)),
            Value::Integer(n) => Some(n.as_f64().ok_or_else(|| bad("bandwidth"))?),
            _ => return Err(bad("bandwidth is not a number")),
        };
        if bandwidth.is_some_and(|b| !b.is_finite() || b < 0.0) {
            return Err(bad("bandwidth must be finite and non-negative"));
        }
        let mode = items[1].as_i64().and_then(AveragingMode::from_code).ok_or_else(|| bad("unknown mode"))?;
        let user_data = match &items[2] {
            Value::Binary(b) => b.clone(),
            _ => return Err(bad("user data is not bytes")),
        };
        Ok(GatherInfo { bandwidth, mode, user_data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // Expected hashes: hivemind's compute_schema_hash([torch.zeros(3, 4), torch.zeros(5)]) and
    // compute_schema_hash([torch.zeros(7, requires_grad=True), torch.zeros(())]).
    #[test]
    fn schema_hash_matches_hivemind() {
        let f32 = |shape: Vec<usize>, requires_grad| TensorSchema { shape, dtype: DType::F32, requires_grad };
        assert_eq!(
            hex(&schema_hash(&[f32(vec![3, 4], false), f32(vec![5], false)])),
            "8c38914140b34adad5026b8dae1516fdec6d771a"
        );
        assert_eq!(
            hex(&schema_hash(&[f32(vec![7], true), f32(vec![], false)])),
            "f193d5e37b3b59f575c9262bf6b6215eb9c272cf"
        );
    }

    // Expected blobs: MSGPackSerializer.dumps([None, 0, dumps(None)]) and
    // dumps([125.5, 1, dumps({"a": 1})]).
    #[test]
    fn gather_blobs_match_hivemind() {
        let plain = GatherInfo { bandwidth: None, mode: AveragingMode::Node, user_data: vec![0xc0] };
        assert_eq!(hex(&plain.encode()), "93c000c401c0");
        let client =
            GatherInfo { bandwidth: Some(125.5), mode: AveragingMode::Client, user_data: vec![0x81, 0xa1, 0x61, 0x01] };
        assert_eq!(hex(&client.encode()), "93cb405f60000000000001c40481a16101");
        assert_eq!(GatherInfo::decode(&client.encode()).unwrap(), client);
        assert_eq!(GatherInfo::decode(&plain.encode()).unwrap(), plain);
    }

    #[test]
    fn bad_gather_blobs_are_protocol_errors() {
        for blob in [&b"\x92\xc0\x00"[..], b"\x93\xc0\x07\xc4\x00", b"\x93\xa1x\x00\xc4\x00", b"\xc1"] {
            assert_eq!(GatherInfo::decode(blob).unwrap_err().kind(), ErrorKind::Protocol, "{blob:?}");
        }
    }

    // Expected bits: hivemind's GroupKeyManager.update_key_on_group_assembled for the same group.
    #[test]
    fn next_group_bits_match_hivemind() {
        let ids: Vec<u8> = (0..20).collect();
        assert_eq!(next_group_bits("0110", &ids, 3, 1, None).unwrap(), "1001");
        assert_eq!(next_group_bits("01", &[0xff; 20], 3, 2, Some(8)).unwrap(), "01");
        assert_eq!(next_group_bits("", b"abc", 2, 0, None).unwrap(), "");
        assert!(next_group_bits("1", b"abc", 2, 0, Some(1)).is_err());
    }

    #[test]
    fn group_keys_follow_hivemind_pattern() {
        assert_eq!(group_key("run", "0110"), "run.0b0110");
        assert_eq!(group_key("run", ""), "run.0b");
        assert_eq!(all_averagers_key("run"), "run.all_averagers");
        assert!(is_valid_group_key("run.0b0110") && is_valid_group_key("run.0b"));
        assert!(!is_valid_group_key("a.b.0b01") && !is_valid_group_key("run.0b012") && !is_valid_group_key(".0b1"));
        assert!(validate_prefix_and_bits("a.b", "").is_err() && validate_prefix_and_bits("a", "2").is_err());
    }
}
